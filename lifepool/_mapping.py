"""``map`` and ``starmap``: the window of calls in flight, chunks of inputs, results in order or as they finish.

``map`` keeps a bounded window of calls in flight: it never reads more than
``window`` inputs ahead of what the consumer took, so an endless generator of
inputs works (stop reading the output, e.g. with ``itertools.islice``, and the
rest is cancelled), and memory stays flat on long inputs. The window is twice
the pool's capacity (containers x max_inputs), so every slot stays busy while
the next inputs queue up behind it.

Also how a Future is awaited from an event loop (``await_future``), which
the ``.aio`` forms of every handle share.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import queue
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

from . import _progress, _wire
from ._exceptions import note_origin
from ._schedule._calls import undecodable as _undecodable

if TYPE_CHECKING:
    from ._pool import LifecyclePool
    from ._schedule import Call


async def await_future(pool: LifecyclePool[Any], future: Future[Any]) -> Any:
    """Await *future* without blocking the loop; cancelling the awaiting task cancels the call."""
    try:
        return await _awaitable(future)
    except (asyncio.CancelledError, KeyboardInterrupt):
        pool._abandon([future], interrupt=True)
        raise


def _awaitable(future: Future[Any]) -> asyncio.Future[Any]:
    """``asyncio.wrap_future(future)`` that also carries a StopIteration.

    asyncio refuses to put a StopIteration into its Futures (it would end the
    awaiting coroutine quietly), and the awaiting task then waited forever.
    It arrives as a RuntimeError caused by it, as when a coroutine raises
    one (PEP 479). Cancelling the awaiting task is handled by the callers.
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def settle(done: Future[Any]) -> None:  # (on the loop's thread)
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
            return
        error = done.exception()
        if isinstance(error, StopIteration):
            carried = RuntimeError(f"{type(error).__name__} raised by a call awaited with .aio")
            carried.__cause__ = error
            waiter.set_exception(carried)
        elif error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def from_any_thread(done: Future[Any]) -> None:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
                loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(from_any_thread)
    return waiter


def map_calls(
    pool: LifecyclePool[Any],
    what: Any,
    label: str,
    arg_tuples: Iterable[Any],
    *,
    single: bool = False,
    kind: str | None = None,
    chunkable: bool = False,
    order_outputs: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
    progress: _progress.Progress | None = None,
) -> Iterator[Any]:
    """Submit calls lazily with a bounded window; the first window starts now, not at first ``next``.

    *arg_tuples* yields argument tuples, or with *single* the one argument of each call.
    *progress* (a bar) counts each call as it completes, and is closed when the results end.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        if chunkable and kind is None and pool._can_chunk():
            chunked = _ChunkedMap(
                pool, what, label, arg_tuples, single, order_outputs, return_exceptions, deadline, progress
            )
            return chunked.results()
        return _map_calls(
            pool, what, label, arg_tuples, single, kind, order_outputs, return_exceptions, deadline, progress
        )
    except BaseException:
        if progress is not None:
            progress.close()
        raise


def _map_calls(
    pool: LifecyclePool[Any],
    what: Any,
    label: str,
    arg_tuples: Iterable[Any],
    single: bool,
    kind: str | None,
    order_outputs: bool,
    return_exceptions: bool,
    deadline: float | None,
    progress: _progress.Progress | None,
) -> Iterator[Any]:
    inputs = iter(arg_tuples)
    window = pool._window(kind)
    in_flight: collections.deque[Future[Any]] = collections.deque()
    finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    input_error: list[Exception] = []  # raised by the inputs' iterator: raised after what came before

    def submit_next() -> bool:
        try:
            args = next(inputs)
        except StopIteration:
            return False
        except Exception as error:  # noqa: BLE001
            input_error.append(error)
            return False
        future = pool._spawn(what, label, (args,) if single else tuple(args), {}, kind)
        if counted is not None:
            future.add_done_callback(counted)
        if not order_outputs:
            future.add_done_callback(finished.put)
        in_flight.append(future)
        return True

    counted = None if progress is None else progress.counting(1)
    with _abandoning_on_error(pool, in_flight):
        while len(in_flight) < window and submit_next():
            pass
    return _results(
        pool, in_flight, finished, submit_next, order_outputs, return_exceptions, deadline, input_error, progress
    )


@contextlib.contextmanager
def _abandoning_on_error(pool: LifecyclePool[Any], futures: Iterable[Any]) -> Iterator[None]:
    """If submitting the first window fails (or is interrupted), drop what was submitted.

    The caller never gets the iterator, so nobody else will: a Ctrl-C landing
    here (a busy machine can make this window long) must still stop the calls.
    """
    try:
        yield
    except BaseException as error:
        pool._abandon(list(futures), interrupt=isinstance(error, KeyboardInterrupt))
        raise


class _ChunkedMap:
    """``map`` over many quick inputs: several inputs per call, results still one per input.

    Sending each tiny input as its own call costs a round trip per input; a
    chunk of inputs costs one. The chunk size adapts: the first chunks hold one
    input; after each chunk the container reports how long its inputs took,
    and later chunks hold about CHUNK_SECONDS worth of inputs, at most
    MAX_CHUNK of them and at most about CHUNK_BYTES of pickled inputs or
    results, shared-memory segments included (big inputs make small chunks).
    The values of a chunk travel as one pickle. Inputs that each take longer
    than CHUNK_SECONDS stay one per call. ``map`` over one iterable sends the
    inputs themselves, not a one-argument tuple each, and cuts a list, tuple
    or range into chunks by slicing (a slice of a range travels as a range,
    not as its numbers); the container runs a chunk through the built-in
    ``map``/``itertools.starmap`` in runs, at C speed. Results come out
    through ``itertools.chain``, a chunk's list at a time. Each input keeps
    its own result or error. A chunk whose container dies fails only the
    inputs whose outcomes had not come back yet (the container sends
    finished outcomes every few milliseconds). Chunking is
    used only when the pool has no ``timeout`` and no ``retries``, whose
    per-call guarantees it would blur.
    """

    CHUNK_SECONDS = 0.005
    MAX_CHUNK = 16384
    CHUNK_BYTES = 4 << 20
    # Exact types whose slices hold the same items as iterating them would give.
    SLICED = (list, tuple, range)

    def __init__(
        self,
        pool: LifecyclePool[Any],
        what: Any,
        label: str,
        inputs: Iterable[Any],
        single: bool,
        order_outputs: bool,
        return_exceptions: bool,
        deadline: float | None,
        progress: _progress.Progress | None = None,
    ) -> None:
        self.pool = pool
        self.progress = progress
        self.what = what
        self.label = label
        # Single inputs from a list, tuple or range are taken by slicing; anything else through its iterator.
        self.sequence: Sequence[Any] | None = inputs if single and type(inputs) in self.SLICED else None  # type: ignore[assignment]
        self.inputs: Iterator[Any] | None = None if self.sequence is not None else iter(inputs)
        self.position = 0  # of the next input in self.sequence
        self.input_error: Exception | None = None  # raised by the inputs' iterator: raised after what came before
        self.current = _HandedOut([])  # the values being handed out
        self.single = single  # inputs are single arguments, not argument tuples
        self.order_outputs = order_outputs
        self.return_exceptions = return_exceptions
        self.deadline = deadline
        self.size = 1
        self.byte_limit = self.MAX_CHUNK  # inputs per chunk that stay under CHUNK_BYTES, as seen so far
        self.window = pool._window(None)  # chunks in flight
        self.in_flight: collections.deque[tuple[Future[Any], list[Any], int]] = collections.deque()
        self.finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        try:
            while len(self.in_flight) < self.window and self.submit_next():
                pass
        except BaseException as error:  # (see _abandoning_on_error)
            self.abandon(interrupt=isinstance(error, KeyboardInterrupt))
            raise

    def take(self) -> Sequence[Any]:
        """The next chunk's inputs, up to ``self.size`` of them (argument tuples are unpacked in the container)."""
        if self.sequence is None:
            inputs: list[Any] = []
            try:
                inputs.extend(itertools.islice(self.inputs, self.size))  # type: ignore[arg-type]
            except Exception as error:  # noqa: BLE001 - raised after the results of the inputs before it
                self.input_error = error
                self.inputs = iter(())
            return inputs  # (extend keeps what came before the error)
        start = self.position
        sliced = self.sequence[start : start + self.size]
        self.position = start + len(sliced)
        return sliced

    def submit_next(self) -> bool:
        inputs = self.take()
        if not inputs:
            return False
        partial: list[Any] = []

        def sink(message: tuple[str, Any]) -> None:
            if message[0] == "item":
                partial.append(message[1])  # one segment of outcomes

        chunk = _wire.Chunk(self.what, inputs, star=not self.single)
        future = self.pool._make_call(chunk, self.label, (), {}, None, sink)
        self.limit_bytes(_wire.size(future.body), len(inputs))  # (before it is sent: a done call lets its body go)
        self.pool._submit(future)
        if self.progress is not None:
            future.add_done_callback(self.progress.counting(len(inputs)))  # (a chunk counts its inputs)
        if not self.order_outputs:
            future.add_done_callback(self.finished.put)
        self.in_flight.append((future, partial, len(inputs)))
        return True

    def results(self) -> Iterator[Any]:
        """The values, one per input: a C iterator over the lists :meth:`chunk_values` makes."""
        chunks = self.chunk_values()
        results = cast(_MapResults, _MapResults.from_iterable(chunks))
        results._chunks, results._map = chunks, self
        return results

    def chunk_values(self) -> Generator[Iterable[Any], None, None]:
        """The values of each chunk as it finishes; raise the first error unless ``return_exceptions``.

        Dropping the iterator before the end abandons the chunks still out.
        """
        interrupted = False
        try:
            self.pool._refuse_on_own_dispatcher("iterate a map's results")
            while self.in_flight:
                if self.order_outputs:
                    entry = self.in_flight[0]
                    _wait_done(entry[0], self.deadline)
                else:
                    done = _next_finished(self.finished, self.deadline)
                    entry = next(e for e in self.in_flight if e[0] is done)
                self.in_flight.remove(entry)
                values, errors = self.outcomes(*entry)
                del entry  # (nor its Future, once the chunk's values are out: see _HandedOut)
                self.submit_next()
                if not errors or self.return_exceptions:
                    self.current = _HandedOut(values)
                    yield self.current
                    continue
                first = min(errors)
                error = values[first]
                self.current = _HandedOut(values[:first])
                del values
                yield self.current
                raise error
            if self.input_error is not None:
                raise self.input_error
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.abandon(interrupt=interrupted)
            if self.progress is not None:
                self.progress.close()

    def abandon(self, *, interrupt: bool) -> None:
        """Drop the chunks still out (interrupt them with *interrupt*); their outcomes are never decoded.

        A chunk's values travel as a message of their own inside its result
        (see :meth:`outcomes`): one left undecoded would hold its shared-memory
        segments until the pool stops, so they are unlinked when it ends.
        """
        if not self.in_flight:
            return
        self.pool._abandon([future for future, _, _ in self.in_flight], interrupt=interrupt)
        for future, partial, _ in self.in_flight:
            future.add_done_callback(functools.partial(_discard_outcomes, partial))
        self.in_flight.clear()

    def outcomes(self, future: Future[Any], partial: list[Any], count: int) -> tuple[list[Any], set[int]]:
        """The values of a finished chunk, one per input, and the positions that hold an exception.

        Also adapts the chunk size to how long the inputs took.
        """
        error = future.exception()
        segments = list(partial)
        if error is None:
            ran, seconds, last = future.result()
            segments.append(last)
            self.limit_bytes(sum(_wire.size(blob) for blob, _ in segments), count)
            per_input = seconds / max(ran, 1)
            by_time = int(self.CHUNK_SECONDS / max(per_input, 1e-7))
            self.size = max(1, min(self.MAX_CHUNK, self.byte_limit, by_time))
        values: list[Any] = []
        failed: set[int] = set()
        for index, (values_blob, errors) in enumerate(segments):
            offset = len(values)
            try:
                values.extend(_wire.loads(values_blob))
            except Exception as decoding:  # noqa: BLE001 - those inputs fail, the map goes on
                # How many values it held went with it: the rest of the chunk gets the error.
                error = _undecodable(cast("Call", future), decoding)
                for blob, _ in segments[index + 1 :]:
                    _wire.discard(blob)
                break
            for position, blob in errors.items():
                values[offset + position] = self.error(cast("Call", future), _wire.load_exception(blob))
                failed.add(offset + position)
        # Inputs whose outcome never came back (the container died, or the chunk was interrupted).
        failed.update(range(len(values), count))
        values.extend(error for _ in range(count - len(values)))
        return values, failed

    def limit_bytes(self, size: int, count: int) -> None:
        """Keep chunks under CHUNK_BYTES, given *count* inputs (or results) that took *size* bytes."""
        self.byte_limit = min(self.byte_limit, max(1, self.CHUNK_BYTES * count // max(size, 1)))
        self.size = min(self.size, self.byte_limit)

    def error(self, call: Call, exc: BaseException) -> BaseException:
        note_origin(exc, call.container.describe() if call.container is not None else "a container", self.label)
        return exc


if TYPE_CHECKING:
    _Map_ = map[Any]
else:
    _Map_ = map  # (the built-in map cannot be subscripted at run time)


class _HandedOut(_Map_):
    """An iterator over a chunk's *values* that drops each value as it hands it out (bpo-14406).

    A list iterator would keep every value of the chunk alive until the last
    was taken: a map over large results (CPython's ``test_free_reference``)
    would hold a chunk of them. This pops them instead (the list is reversed
    once), at C speed: ``map(values.pop, repeat(-1, n))``.
    """

    _values: list[Any]
    _counts: Iterator[int]

    def __new__(cls, values: list[Any]) -> _HandedOut:
        values.reverse()
        counts = itertools.repeat(-1, len(values))
        self = super().__new__(cls, values.pop, counts)
        self._values, self._counts = values, counts
        return self

    def stop(self) -> None:
        """Hand out nothing more, and let the rest go."""
        self._values.clear()
        collections.deque(self._counts, maxlen=0)  # (exhausts the counts: map stops)


def _discard_outcomes(partial: list[Any], future: Future[Any]) -> None:
    """Unlink the shared memory of an abandoned chunk's outcomes (see _ChunkedMap.abandon)."""
    segments = list(partial)
    if not future.cancelled() and future.exception() is None:
        segments.append(future.result()[2])
    for values_blob, _errors in segments:
        _wire.discard(values_blob)


class _MapResults(itertools.chain[Any]):
    """What ``map`` returns for chunked inputs: a chain of each chunk's values, closable like a generator."""

    _chunks: Generator[Iterable[Any], None, None]
    _map: _ChunkedMap

    def close(self) -> None:
        """Stop: the chunks still out are abandoned, and nothing more is handed out."""
        self._chunks.close()
        self._map.current.stop()  # (the chain holds it)


def _results(
    pool: LifecyclePool[Any],
    in_flight: collections.deque[Future[Any]],
    finished: queue.SimpleQueue[Future[Any]],
    submit_next: Any,
    order_outputs: bool,
    return_exceptions: bool,
    deadline: float | None,
    input_error: list[Exception],
    progress: _progress.Progress | None = None,
) -> Iterator[Any]:
    interrupted = False
    try:
        pool._refuse_on_own_dispatcher("iterate a map's results")
        while in_flight:
            # The call handed out next is in_flight[0] (so an interrupt while
            # waiting abandons it too), and no local names it across the yield:
            # once its value is out, nothing here keeps it or its Future alive
            # (bpo-14406, CPython's test_free_reference).
            if order_outputs:
                _wait_done(in_flight[0], deadline)
            else:
                done = _next_finished(finished, deadline)
                in_flight.remove(done)
                in_flight.appendleft(done)
                del done
            submit_next()
            yield _outcome(in_flight.popleft(), return_exceptions)
        if input_error:
            raise input_error[0]
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if in_flight:
            pool._abandon(list(in_flight), interrupt=interrupted)
        if progress is not None:
            progress.close()


def _outcome(future: Future[Any], return_exceptions: bool) -> Any:
    """What ``map`` gives for a finished call: its value, or its error (yielded or raised)."""
    error = future.exception()
    if error is None:
        return future.result()
    if return_exceptions:
        return error
    raise error


def _wait_done(future: Future[Any], deadline: float | None) -> None:
    if deadline is None:
        future.exception()  # waits; does not raise the call's error
        return
    future.exception(timeout=max(0.0, deadline - time.monotonic()))


def _next_finished(finished: queue.SimpleQueue[Future[Any]], deadline: float | None) -> Future[Any]:
    if deadline is None:
        return finished.get()
    try:
        return finished.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise TimeoutError("map() did not produce its next result within its timeout") from None
