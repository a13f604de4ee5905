"""Calls through the app layer: ``FunctionCall``, the retry of calls that raised, and the invocation handles.

    Model().predict.remote(x) ─► Invoker ─► pool handle (no Retries: the pool's own fast paths)
                                   │
                                   └─► Attempts (Retries): pool.spawn ─► done? raised? ─► RetryTimer.call_later
                                                                            (one thread per running app,
                                                                             asleep on a Condition until the
                                                                             next retry is due; closed at stop)

Every call the app layer starts is tracked by the running app (``Run.track``),
which waits for them before the exit hooks run. Errors from lifepool's own
tree are raised as Modal's (``exception.translate``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import heapq
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from .._exceptions import ContainerCrashedError, EnterError
from .exception import translate as translate

_call_numbers = itertools.count(1)


class RetryTimer:
    """Runs callbacks after a delay on one thread, started on first use; ``close`` drops what is left."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None], Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], None], on_dropped: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                dropped = True
            else:
                dropped = False
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback, on_dropped))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"lifepool-retries-{self._name}", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
        if dropped:
            on_dropped()

    def close(self) -> None:
        """Stop the thread; what was still waiting gets its ``on_dropped``."""
        with self._cond:
            self._closed = True
            left, self._heap = self._heap, []
            self._cond.notify()
            thread = self._thread
        for _, _, _, on_dropped in sorted(left):
            on_dropped()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _, _, callback, _ = heapq.heappop(self._heap)
            callback()


def retryable(error: BaseException) -> bool:
    # A crash was retried by the pool already (its retries=); a broken pool stays broken.
    return isinstance(error, Exception) and not isinstance(
        error, (ContainerCrashedError, EnterError, concurrent.futures.CancelledError)
    )


class Attempts:
    """One call with Modal's Retries: the Future the caller sees, over the attempts made in the pool."""

    def __init__(self, spawn: Callable[[], concurrent.futures.Future[Any]], retries: Any, timer: RetryTimer) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # cancel() goes through FunctionCall.cancel
        self._spawn = spawn
        self._retries = retries
        self._timer = timer
        self._retry = 0
        self._cancelled = False
        self.current: concurrent.futures.Future[Any] | None = None
        self._start()

    def _start(self) -> None:
        if self._cancelled:
            self._settle(None, concurrent.futures.CancelledError())
            return
        try:
            attempt = self._spawn()
        except BaseException as error:  # noqa: BLE001 - the pool refused (shut down): the caller hears it
            self._settle(None, error)
            return
        self.current = attempt
        attempt.add_done_callback(self._done)

    def _done(self, attempt: concurrent.futures.Future[Any]) -> None:
        if attempt.cancelled():
            self._settle(None, concurrent.futures.CancelledError())
            return
        error = attempt.exception()
        if error is None:
            self._settle(attempt.result(), None)
        elif retryable(error) and self._retry < self._retries.max_retries and not self._cancelled:
            delay = self._retries.delay(self._retry)
            self._retry += 1
            self._timer.call_later(delay, self._start, lambda: self._settle(None, error))
        else:
            self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.set_result(value)
        else:
            self.future.set_exception(error)

    def cancel(self, abandon: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        self._cancelled = True
        if self.current is not None and not self.current.done():
            abandon(self.current)


class twin:
    """A method with an ``.aio`` twin, as Modal's: ``obj.m(...)`` and ``await obj.m.aio(...)``."""

    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any], *, static: bool = False) -> None:
        self._sync, self._aio, self._static = sync, aio, static
        self.__doc__ = sync.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None and not self._static:
            return self
        return Twin(self._sync, self._aio, None if self._static else obj)


class Twin:
    __slots__ = ("_aio", "_obj", "_sync")

    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any], obj: Any) -> None:
        self._sync, self._aio, self._obj = sync, aio, obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync(*args, **kwargs) if self._obj is None else self._sync(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        return self._aio(*args, **kwargs) if self._obj is None else self._aio(self._obj, *args, **kwargs)


class FunctionCall:
    """A call started with ``.spawn()`` (or the inputs of ``.spawn_map()``): ``modal.FunctionCall``."""

    def __init__(self, futures: list[Any], abandon: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        self._futures = futures  # concurrent.futures.Future or Attempts
        self._abandon = abandon
        self.object_id = f"fc-{next(_call_numbers)}"

    def __repr__(self) -> str:
        return f"<FunctionCall {self.object_id}, {len(self._futures)} input(s)>"

    def num_inputs(self) -> int:
        """How many inputs this call stands for (more than one for ``spawn_map``)."""
        return len(self._futures)

    def _future(self, index: int) -> concurrent.futures.Future[Any]:
        item = self._futures[index]
        return item.future if isinstance(item, Attempts) else item

    def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        """The result; waits at most *timeout* seconds (then ``lifepool.exception.TimeoutError``)."""
        return outcome(self._future(index), timeout)

    def iter(self, *, start: int = 0, end: int | None = None) -> Iterator[Any]:
        """The results of inputs *start* to *end*, in order, each as soon as it is there."""
        for index in range(start, len(self._futures) if end is None else end):
            yield self.get(index=index)

    def cancel(self, terminate_containers: bool = False) -> None:
        """Drop the call if queued, interrupt it in its container if running (a retry pending is dropped)."""
        for item in self._futures:
            if isinstance(item, Attempts):
                item.cancel(self._abandon)
            elif not item.done():
                self._abandon(item)

    @staticmethod
    def gather(*function_calls: FunctionCall) -> list[Any]:
        """The results of several calls, in order; the first error cancels the others and is raised."""
        try:
            return [call.get() for call in function_calls]
        except BaseException:
            for call in function_calls:
                call.cancel()
            raise

    async def _get_aio(self, timeout: float | None = None, *, index: int = 0) -> Any:
        return await await_outcome(self._future(index), timeout)

    @staticmethod
    async def _gather_aio(*function_calls: FunctionCall) -> list[Any]:
        try:
            return list(await asyncio.gather(*(call._get_aio() for call in function_calls)))
        except BaseException:
            for call in function_calls:
                call.cancel()
            raise

    get = twin(get, _get_aio)  # type: ignore[assignment]  # (a descriptor: .get(...) and .get.aio(...))
    gather = twin(gather.__func__, _gather_aio.__func__, static=True)  # type: ignore[assignment, attr-defined]


def outcome(future: concurrent.futures.Future[Any], timeout: float | None = None) -> Any:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done():
            raise_translated(future.exception())
        from .exception import TimeoutError as ModalTimeout

        raise ModalTimeout(f"no result within {timeout} s") from None
    except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
        raise_translated(error)


async def await_outcome(future: concurrent.futures.Future[Any], timeout: float | None = None) -> Any:
    try:
        if timeout is None:
            return await asyncio.wrap_future(future)
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
    except TimeoutError:
        from .exception import TimeoutError as ModalTimeout

        raise ModalTimeout(f"no result within {timeout} s") from None
    except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
        raise_translated(error)


def raise_translated(error: BaseException | None) -> Any:
    if error is None:
        raise AssertionError("raise_translated() of no error")  # (a done Future with no exception)
    mapped = translate(error)
    if mapped is error:
        raise error
    raise mapped from error.__cause__


def translated_outcomes(results: Iterator[Any], return_exceptions: bool) -> Iterator[Any]:
    try:
        for item in results:
            yield translate(item) if return_exceptions and isinstance(item, BaseException) else item
    except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
        raise_translated(error)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


async def atranslated_outcomes(results: AsyncIterator[Any], return_exceptions: bool) -> AsyncIterator[Any]:
    try:
        async for item in results:
            yield translate(item) if return_exceptions and isinstance(item, BaseException) else item
    except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
        raise_translated(error)
    finally:
        close = getattr(results, "aclose", None)
        if close is not None:
            await close()


def windowed_map(
    spawn: Callable[[tuple[Any, ...]], concurrent.futures.Future[Any]],
    arg_tuples: Iterable[tuple[Any, ...]],
    window: int,
    *,
    order_outputs: bool,
    return_exceptions: bool,
    cancel: Callable[[concurrent.futures.Future[Any]], None],
) -> Iterator[Any]:
    """A map over *spawn* keeping at most *window* calls in flight (the path with kwargs= or Retries)."""
    inputs = iter(arg_tuples)
    pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
    finished: queue.SimpleQueue[concurrent.futures.Future[Any]] = queue.SimpleQueue()
    input_error: list[BaseException] = []

    def fill() -> None:
        while not input_error and len(pending) < window:
            try:
                args = next(inputs)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 -the inputs' error comes after the results before it
                input_error.append(error)
                return
            future = spawn(args)
            if not order_outputs:
                future.add_done_callback(finished.put)
            pending.append(future)

    def take(future: concurrent.futures.Future[Any]) -> Any:
        if return_exceptions:
            try:
                return future.result()
            except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
                return translate(error)
        return outcome(future)

    fill()
    try:
        while pending:
            if order_outputs:
                future = pending.popleft()
            else:
                future = finished.get()
                pending.remove(future)
            fill()
            yield take(future)
        if input_error:
            raise input_error[0]
    finally:
        for future in pending:
            cancel(future)
