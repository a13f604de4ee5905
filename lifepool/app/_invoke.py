"""The handles of a function or a class's method: ``.remote``, ``.spawn``, ``.map``, ... and their ``.aio`` twins.

Without Retries, each goes straight to the pool's own handle (its fast path
for blocking calls, its chunked ``map``); with Retries or ``kwargs=``, calls
go one by one through ``_calls.Attempts`` / ``windowed_map``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from . import _calls
from .exception import InvalidError


class Invoker:
    """``Model().predict`` (or the function of ``@app.function()``): the ways to call it."""

    def __init__(self, service: Any, name: str) -> None:
        self._service = service  # _cls.Service: knows its app, pool options and how to run locally
        self._name = name

    def __repr__(self) -> str:
        return f"<lifepool handle {self._service.label}.{self._name}>"

    # -- plumbing -----------------------------------------------------------
    def _run(self) -> Any:
        return self._service.app._require_running(f"{self._service.label}.{self._name}")

    def _pool(self) -> Any:
        return self._run().pool(self._service)

    def _is_generator(self) -> bool:
        func = self._service.raw_function(self._name)
        return inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)

    def _not_generator(self, how: str) -> None:
        if self._is_generator():
            raise InvalidError(
                f"A generator function cannot be called with `.{how}(...)`. Use `.remote_gen(...)` instead."
            )

    def _spawn_future(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A started call: a Future, or an Attempts when the service has Retries; tracked by the running app."""
        run = self._run()
        pool = run.pool(self._service)
        handle = pool.method(self._name)
        retries = self._service.options.retries
        if retries is None or retries.max_retries == 0:
            future = handle.spawn(*args, **kwargs)
            run.track(future)
            return future
        attempts = _calls.Attempts(lambda: handle.spawn(*args, **kwargs), retries, run.timer)
        run.track(attempts.future)
        return attempts

    def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        self._pool()._abandon([future], interrupt=True)

    def _plain(self) -> bool:
        retries = self._service.options.retries
        return retries is None or retries.max_retries == 0

    # -- one call -----------------------------------------------------------
    @property
    def remote(self) -> _calls.Twin:
        return _calls.Twin(self._remote, self._remote_aio, None)

    def _remote(self, *args: Any, **kwargs: Any) -> Any:
        self._not_generator("remote")
        if self._plain():
            run = self._run()
            try:
                return run.pool(self._service).method(self._name).remote(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
                _calls.raise_translated(error)
            finally:
                run.count_done()
        item = self._spawn_future(args, kwargs)
        return _calls.outcome(item.future if isinstance(item, _calls.Attempts) else item)

    async def _remote_aio(self, *args: Any, **kwargs: Any) -> Any:
        self._not_generator("remote")
        if self._plain():
            run = self._run()
            try:
                return await run.pool(self._service).method(self._name).remote.aio(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
                _calls.raise_translated(error)
            finally:
                run.count_done()
        item = self._spawn_future(args, kwargs)
        try:
            return await _calls.await_outcome(item.future)
        except asyncio.CancelledError:
            item.cancel(self._abandon)
            raise

    @property
    def spawn(self) -> _calls.Twin:
        return _calls.Twin(self._spawn, self._spawn_aio, None)

    def _spawn(self, *args: Any, **kwargs: Any) -> _calls.FunctionCall:
        self._not_generator("spawn")
        return _calls.FunctionCall([self._spawn_future(args, kwargs)], self._abandon)

    async def _spawn_aio(self, *args: Any, **kwargs: Any) -> _calls.FunctionCall:
        return self._spawn(*args, **kwargs)

    @property
    def call(self) -> Any:
        """The reference's (2023) spelling: blocking, or in a running event loop an awaitable started at once."""
        return _calls.Twin(self._call, self._remote_aio, None)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            return self._remote(*args, **kwargs)
        # In an async entrypoint: start now and hand back an asyncio Future
        # (not a coroutine, so "never awaited" cannot drop the call; the app
        # waits for it before the exit hooks).
        self._not_generator("call")
        item = self._spawn_future(args, kwargs)
        return _on_loop(loop, item.future if isinstance(item, _calls.Attempts) else item)

    # -- streams ------------------------------------------------------------
    @property
    def remote_gen(self) -> _calls.Twin:
        return _calls.Twin(self._remote_gen, self._remote_gen_aio, None)

    def _remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if not self._is_generator():
            raise InvalidError("A non-generator function cannot be called with `.remote_gen(...)`.")
        stream = self._pool().method(self._name).remote_gen(*args, **kwargs)
        return _calls.translated_outcomes(stream, False)

    def _remote_gen_aio(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if not self._is_generator():
            raise InvalidError("A non-generator function cannot be called with `.remote_gen(...)`.")
        stream = self._pool().method(self._name).remote_gen.aio(*args, **kwargs)
        return _calls.atranslated_outcomes(stream, False)

    # -- many calls ---------------------------------------------------------
    @property
    def map(self) -> _calls.Twin:
        return _calls.Twin(self._map, self._map_aio, None)

    def _map(
        self,
        *input_iterators: Iterable[Any],
        kwargs: dict[str, Any] = {},  # noqa: B006 - Modal's signature
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool = True,
    ) -> Iterator[Any]:
        if not input_iterators:
            raise InvalidError("map() needs at least one input iterator")
        return self._many(
            zip(*input_iterators),
            kwargs,
            order_outputs,
            return_exceptions,
            star=len(input_iterators) > 1,
            single=input_iterators[0] if len(input_iterators) == 1 else None,
        )

    def _map_aio(
        self,
        *input_iterators: Any,
        kwargs: dict[str, Any] = {},  # noqa: B006
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool = True,
    ) -> AsyncIterator[Any]:
        if not input_iterators:
            raise InvalidError("map() needs at least one input iterator")
        self._not_generator("map")
        if self._plain() and not kwargs:
            handle = self._pool().method(self._name)
            results = handle.map.aio(*input_iterators, order_outputs=order_outputs, return_exceptions=return_exceptions)
            return _calls.atranslated_outcomes(results, return_exceptions)
        return self._amany(input_iterators, kwargs, order_outputs, return_exceptions)

    @property
    def starmap(self) -> _calls.Twin:
        return _calls.Twin(self._starmap, self._starmap_aio, None)

    def _starmap(
        self,
        input_iterator: Iterable[tuple[Any, ...]],
        *,
        kwargs: dict[str, Any] = {},  # noqa: B006
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool = True,
    ) -> Iterator[Any]:
        return self._many((tuple(a) for a in input_iterator), kwargs, order_outputs, return_exceptions, star=True)

    async def _starmap_aio(self, input_iterator: Any, **options: Any) -> AsyncIterator[Any]:
        for item in await asyncio.to_thread(lambda: list(self._starmap(input_iterator, **options))):
            yield item

    @property
    def for_each(self) -> _calls.Twin:
        return _calls.Twin(self._for_each, self._for_each_aio, None)

    def _for_each(
        self,
        *input_iterators: Iterable[Any],
        kwargs: dict[str, Any] = {},  # noqa: B006 - Modal's signature
        ignore_exceptions: bool = False,
    ) -> None:
        for _ in self._map(*input_iterators, kwargs=kwargs, order_outputs=False, return_exceptions=ignore_exceptions):
            pass

    async def _for_each_aio(
        self,
        *input_iterators: Any,
        kwargs: dict[str, Any] = {},  # noqa: B006 - Modal's signature
        ignore_exceptions: bool = False,
    ) -> None:
        async for _ in self._map_aio(
            *input_iterators, kwargs=kwargs, order_outputs=False, return_exceptions=ignore_exceptions
        ):
            pass

    @property
    def spawn_map(self) -> _calls.Twin:
        return _calls.Twin(self._spawn_map, self._spawn_map_aio, None)

    def _spawn_map(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] = {}) -> _calls.FunctionCall:  # noqa: B006
        self._not_generator("spawn_map")
        futures = [self._spawn_future(args, kwargs) for args in zip(*input_iterators)]
        return _calls.FunctionCall(futures, self._abandon)

    async def _spawn_map_aio(self, *input_iterators: Any, kwargs: dict[str, Any] = {}) -> _calls.FunctionCall:  # noqa: B006
        return self._spawn_map(*input_iterators, kwargs=kwargs)

    def _many(
        self,
        arg_tuples: Iterable[tuple[Any, ...]],
        kwargs: dict[str, Any],
        order_outputs: bool,
        return_exceptions: bool,
        *,
        star: bool,
        single: Iterable[Any] | None = None,
    ) -> Iterator[Any]:
        self._not_generator("map")
        pool = self._pool()
        if self._plain() and not kwargs:
            handle = pool.method(self._name)
            if single is not None:
                results = handle.map(single, order_outputs=order_outputs, return_exceptions=return_exceptions)
            else:
                results = handle.starmap(arg_tuples, order_outputs=order_outputs, return_exceptions=return_exceptions)
            return _calls.translated_outcomes(results, return_exceptions)

        def spawn(args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
            item = self._spawn_future(args, kwargs)
            return item.future if isinstance(item, _calls.Attempts) else item

        window = 2 * max(1, pool._capacity)
        return _calls.windowed_map(
            spawn,
            arg_tuples,
            window,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
            cancel=self._abandon,
        )

    async def _amany(
        self, input_iterators: tuple[Any, ...], kwargs: dict[str, Any], order_outputs: bool, return_exceptions: bool
    ) -> AsyncIterator[Any]:
        items = [await _collect(it) for it in input_iterators]
        futures = [self._spawn_future(args, kwargs) for args in zip(*items)]
        futures = [f.future if isinstance(f, _calls.Attempts) else f for f in futures]
        try:
            waiting = [asyncio.wrap_future(f) for f in futures]
            for next_done in waiting if order_outputs else asyncio.as_completed(waiting):
                try:
                    yield await next_done
                except Exception as error:  # noqa: BLE001 - translated and re-raised, or kept as an outcome
                    if not return_exceptions:
                        _calls.raise_translated(error)
                    yield _calls.translate(error)
        finally:
            for future in futures:
                if not future.done():
                    self._abandon(future)

    # -- in this process ------------------------------------------------------
    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run in this process, on an instance whose enter hooks ran (once per object)."""
        return self._service.local_call(self._name, args, kwargs)


async def _collect(iterable: Any) -> list[Any]:
    if hasattr(iterable, "__aiter__"):
        return [item async for item in iterable]
    return list(iterable)


def _on_loop(loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
    """An asyncio Future on *loop* settled from *future* (with Modal's error types); safe after the loop closed."""
    waiter = loop.create_future()

    def settle() -> None:
        if waiter.done():
            return
        if future.cancelled():
            waiter.cancel()
            return
        error = future.exception()
        if error is None:
            waiter.set_result(future.result())
        else:
            waiter.set_exception(_calls.translate(error))

    def from_any_thread(_: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits this any more (the app still waited for the call)

    future.add_done_callback(from_any_thread)
    return waiter
