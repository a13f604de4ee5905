"""Method handles: ``pool.predict.call(x)``, ``.spawn``, ``.map``, ``.starmap``, ``.remote_gen``.

A handle only names a method; every call goes through the pool's
:meth:`~lifepool.LifecyclePool._spawn`, which encodes the arguments in the
caller's thread (so an unpicklable argument raises right here) and queues the
call for the dispatcher. Each blocking form has an ``.aio`` twin for callers
on an event loop: ``await p.m.remote.aio(x)``, ``async for y in
p.m.map.aio(xs)``, ``async for item in p.m.remote_gen.aio(x)``. They never
block the loop, and cancelling the awaiting task cancels the call: dropped if
still queued, interrupted in its container if running.

``map``'s machinery (its window, chunking, ordered and unordered results)
is in :mod:`lifepool._mapping`.

``remote_gen`` streams a generator method's items as they are produced. The
container may run at most ``STREAM_WINDOW`` items ahead of the consumer; the
consumer grants more as it takes them (half a window at a time), so a slow
consumer makes the container wait instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import queue
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from . import _progress
from ._kinds import STREAM_WINDOW
from ._mapping import _awaitable, _outcome, await_future, map_calls

if TYPE_CHECKING:
    from ._pool import LifecyclePool

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
            # As in _mapping._results: what is handed out next is in_flight[0], named by no local across the yield.
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
