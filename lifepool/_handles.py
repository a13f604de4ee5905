"""Method handles: ``pool.predict.call(x)``, ``.spawn``, ``.map``, ``.starmap``, ``.remote_gen``.

A handle only names a method; every call goes through the pool's
:meth:`~lifepool.LifecyclePool._spawn`, which encodes the arguments in the
caller's thread (so an unpicklable argument raises right here) and queues the
call for the dispatcher. Each blocking form has an ``.aio`` twin for callers
on an event loop: ``await p.m.remote.aio(x)``, ``async for y in
p.m.map.aio(xs)``, ``async for item in p.m.remote_gen.aio(x)``. They never
block the loop, and cancelling the awaiting task cancels the call: dropped if
still queued, interrupted in its container if running.

``map`` keeps a bounded window of calls in flight: it never reads more than
``window`` inputs ahead of what the consumer took, so an endless generator of
inputs works (stop reading the output, e.g. with ``itertools.islice``, and the
rest is cancelled), and memory stays flat on long inputs. The window is twice
the pool's capacity (containers x max_inputs), so every slot stays busy while
the next inputs queue up behind it.

``remote_gen`` streams a generator method's items as they are produced. The
container may run at most ``STREAM_WINDOW`` items ahead of the consumer; the
consumer grants more as it takes them (half a window at a time), so a slow
consumer makes the container wait instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import itertools
import queue
import time
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from . import _progress, _wire
from ._exceptions import note_origin
from ._kinds import STREAM_WINDOW
from ._schedule._calls import undecodable as _undecodable

if TYPE_CHECKING:
    from ._pool import LifecyclePool
    from ._schedule import Call

P = ParamSpec("P")  # the method's parameters (without self)
R = TypeVar("R")  # what the method returns (for an async method: what it awaits to)


class RemoteMethod(Generic[P, R]):
    """A method of the pool's target class, callable in the containers.

    ``call``/``remote`` block and return the result, ``spawn`` returns a
    ``concurrent.futures.Future``, ``map``/``starmap`` return lazy iterators,
    ``remote_gen`` streams a generator method; each of ``call``, ``remote``,
    ``map``, ``starmap`` and ``remote_gen`` has an ``.aio`` twin.
    """

    def __init__(self, pool: LifecyclePool[Any], name: str) -> None:
        self._pool = pool
        self.name = name
        self.label = f"{pool._info.name}.{name}"
        self.is_generator = name in pool._info.generators
        self.is_async = inspect.iscoroutinefunction(inspect.getattr_static(pool._target_class, name, None))
        self._kind = name if name in pool._info.batched else None
        self.call: _Call[P, R] = _Call(self)
        self.remote: _Call[P, R] = self.call
        self.map: _Map[R] = _Map(self, star=False)
        self.starmap: _Map[R] = _Map(self, star=True)
        self.remote_gen: _Stream[P] = _Stream(self)

    def __repr__(self) -> str:
        return f"<lifepool method {self.label} of {self._pool!r}>"

    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Start the call in a container and return its ``concurrent.futures.Future``."""
        self._not_a_generator("spawn")
        return cast("Future[R]", self._pool._spawn(self.name, self.label, args, kwargs, self._kind))

    def _not_a_generator(self, how: str) -> None:
        if self.is_generator:
            raise TypeError(
                f"{self.label} is a generator method: stream it with "
                f"`for item in pool.{self.name}.remote_gen(...)` instead of .{how}()"
            )


class _Call(Generic[P, R]):
    """``handle.call(...)`` blocks; ``await handle.call.aio(...)`` does not."""

    def __init__(self, method: RemoteMethod[P, R]) -> None:
        self._method = method

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        method = self._method
        if method.is_generator:
            method._not_a_generator("call")
        ok, outcome = method._pool._run_blocking(method.name, method.label, args, kwargs)
        if ok:
            return cast(R, outcome)
        # Raised from here, the traceback reads: your line, this one, then the
        # container's frames.
        raise outcome

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, await await_future(self._method._pool, self._method.spawn(*args, **kwargs)))


class _Map(Generic[R]):
    """``handle.map(*iterables)`` / ``handle.starmap(iterable)``, and their ``.aio`` twins."""

    def __init__(self, method: RemoteMethod[Any, R], *, star: bool) -> None:
        self._method = method
        self._star = star

    def __call__(
        self, *iterables: Any, order_outputs: bool = True, return_exceptions: bool = False, progress: Any = False
    ) -> Iterator[R]:
        """Results in input order (or as they finish, ``order_outputs=False``); lazy, windowed.

        *return_exceptions* yields a failed input's exception instead of
        raising it. *progress* shows a tqdm bar: True, a label, or a dict
        of tqdm options (needs ``lifepool[progress]``).
        """
        method = self._method
        method._not_a_generator("starmap" if self._star else "map")
        single = not self._star and len(iterables) == 1
        return map_calls(
            method._pool,
            method.name,
            method.label,
            iterables[0] if single else self._arg_tuples(iterables),
            single=single,
            kind=method._kind,
            chunkable=not method.is_async,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
            progress=_progress.make(progress, method.label, _total(iterables, self._star)) if progress else None,
        )

    def aio(
        self, *iterables: Any, order_outputs: bool = True, return_exceptions: bool = False, progress: Any = False
    ) -> AsyncIterator[R]:
        """``async for`` twin of ``map``/``starmap``; the inputs may be async iterables."""
        method = self._method
        method._not_a_generator("starmap.aio" if self._star else "map.aio")
        if self._star or not any(isinstance(it, AsyncIterable) for it in iterables):
            source: AsyncIterator[Any] = _async_iter(self._arg_tuples(iterables))
        else:
            source = _async_zip(*iterables)
        bar = _progress.make(progress, method.label, _total(iterables, self._star)) if progress else None
        return _amap(method, source, order_outputs, return_exceptions, bar)

    def _arg_tuples(self, iterables: tuple[Any, ...]) -> Iterable[Any]:
        if self._star:
            if len(iterables) != 1:
                raise TypeError("starmap() takes one iterable of argument tuples")
            return cast(Iterable[Any], iterables[0])
        return zip(*iterables)


class _Stream(Generic[P]):
    """``for item in handle.remote_gen(...)``; ``async for item in handle.remote_gen.aio(...)``."""

    def __init__(self, method: RemoteMethod[P, Any]) -> None:
        self._method = method

    def _start(self, args: tuple[Any, ...], kwargs: dict[str, Any], sink: Any) -> Future[Any]:
        method = self._method
        if not method.is_generator:
            raise TypeError(f"{method.label} is not a generator method: call it with .call() or .spawn()")
        return method._pool._spawn(method.name, method.label, args, kwargs, None, sink)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
        items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        future = self._start(args, kwargs, items.put)
        return _stream(self._method._pool, future, items.get)

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def sink(message: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(items.put_nowait, message)

        future = self._start(args, kwargs, sink)
        return _astream(self._method._pool, future, items.get)


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


async def _amap(
    method: RemoteMethod[Any, Any],
    source: AsyncIterator[Any],
    order_outputs: bool,
    return_exceptions: bool,
    progress: _progress.Progress | None = None,
) -> AsyncIterator[Any]:
    pool = method._pool
    window = pool._window(method._kind)
    in_flight: collections.deque[tuple[Future[Any], asyncio.Future[Any]]] = collections.deque()
    # Unordered: each waiter as it finishes. Not asyncio.wait, whose callbacks
    # already scheduled for the other finished waiters hold them (and their
    # results) past the yield, until the loop runs again.
    finished: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()
    exhausted = False
    input_error: list[Exception] = []  # raised by the inputs' iterator: raised after what came before

    async def submit_next() -> None:
        nonlocal exhausted
        if exhausted:
            return
        try:
            args = await anext(source)
        except StopAsyncIteration:
            exhausted = True
            return
        except Exception as error:  # noqa: BLE001
            input_error.append(error)
            exhausted = True
            return
        future = pool._spawn(method.name, method.label, tuple(args), {}, method._kind)
        if progress is not None:
            future.add_done_callback(progress.counting(1))
        waiter = _awaitable(future)
        if not order_outputs:
            waiter.add_done_callback(finished.put_nowait)
        in_flight.append((future, waiter))

    interrupted = False
    try:
        while len(in_flight) < window and not exhausted:
            await submit_next()
        while in_flight:
            # As in _results: what is handed out next is in_flight[0], named by no local across the yield.
            if order_outputs:
                await asyncio.wait([in_flight[0][1]])
            else:
                done = await finished.get()
                entry = next(e for e in in_flight if e[1] is done)
                in_flight.remove(entry)
                in_flight.appendleft(entry)
                del entry, done
            await submit_next()
            yield _outcome(in_flight.popleft()[0], return_exceptions)
        if input_error:
            raise input_error[0]
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted = True
        raise
    finally:
        if in_flight:
            pool._abandon([f for f, _ in in_flight], interrupt=interrupted)
        if progress is not None:
            progress.close()


async def _async_iter(iterable: Any) -> AsyncIterator[Any]:
    if isinstance(iterable, AsyncIterable):
        async for item in iterable:
            yield item
    else:
        for item in iterable:
            yield item


async def _async_zip(*iterables: Any) -> AsyncIterator[tuple[Any, ...]]:
    iterators = [_async_iter(it).__aiter__() for it in iterables]
    while True:
        try:
            yield tuple([await anext(it) for it in iterators])
        except StopAsyncIteration:
            return


class _StreamReader:
    """What a stream's consumer does with each message, shared by the sync and async consumers."""

    def __init__(self, pool: LifecyclePool[Any], future: Future[Any]) -> None:
        self.pool = pool
        self.future = future
        self.taken = 0
        self.finished = False

    def item(self, message: tuple[str, Any]) -> tuple[bool, Any]:
        """(True, item) for an item; (False, None) at the end; raises the stream's error."""
        kind, value = message
        if kind == "item":
            self.taken += 1
            if self.taken % (STREAM_WINDOW // 2) == 0:
                self.pool._grant(self.future, STREAM_WINDOW // 2)  # the container may run further ahead
            return True, value
        self.finished = True
        if kind == "end":
            return False, None
        raise value

    def close(self) -> None:
        if not self.finished:  # closed early, interrupted, cancelled, or the consumer raised
            self.pool._abandon([self.future], interrupt=True)  # stops the generator in its container


def _stream(pool: LifecyclePool[Any], future: Future[Any], get: Any) -> Iterator[Any]:
    reader = _StreamReader(pool, future)
    try:
        while True:
            is_item, value = reader.item(get())
            if not is_item:
                return
            yield value
    finally:
        reader.close()


async def _astream(pool: LifecyclePool[Any], future: Future[Any], get: Any) -> AsyncIterator[Any]:
    reader = _StreamReader(pool, future)
    try:
        while True:
            is_item, value = reader.item(await get())
            if not is_item:
                return
            yield value
    finally:
        reader.close()


def _total(iterables: tuple[Any, ...], star: bool) -> int | None:
    """How many calls ``map(*iterables)`` makes, if the inputs have lengths (a bar's total)."""
    lengths = [_progress.length(iterable) for iterable in iterables]
    if not lengths or None in lengths:
        return None
    return min(lengths)  # type: ignore[type-var]
