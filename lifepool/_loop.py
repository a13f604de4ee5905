"""The container's one asyncio event loop, in a thread of its own, and how outcomes leave it."""

from __future__ import annotations

import threading

from ._context import _block_interrupts_in_this_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    import concurrent.futures
    from typing import Any


class _LoopThread:
    """The container's single event loop, running in its own thread for the container's life."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lifepool-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        _block_interrupts_in_this_thread()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run *coro* on the loop; read the outcome with :func:`_loop_outcome` (see _Escaped)."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(_carrying(coro), self.loop)

    def run(self, coro: Any) -> Any:
        """Run *coro* on the loop and wait; an interrupt cancels the task and waits it out."""
        done = threading.Event()
        future = self.submit(_signal_when_done(coro, done))
        try:
            done.wait()
        except KeyboardInterrupt:
            future.cancel()
            done.wait()  # let the task's finally blocks run; the grace period bounds this
            raise
        return _loop_outcome(future)


class _Escaped(Exception):
    """A KeyboardInterrupt, SystemExit or CancelledError that user code raised on the loop, carried off it.

    asyncio lets the first two end ``run_forever`` itself rather than the
    task: the container's loop would stop for good, with the call never
    answered. A CancelledError would read as the task cancelled, that is as
    the parent's interrupt.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


async def _carrying(coro: Any) -> Any:
    import asyncio

    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as error:
        raise _Escaped(error) from None
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # (cancelled: the parent's interrupt)
        raise _Escaped(error) from None  # raised by the user's code: an error like any other


def _loop_outcome(future: concurrent.futures.Future[Any]) -> Any:
    """The result of a coroutine run by _LoopThread.submit; what it raised is raised as itself."""
    try:
        return future.result()
    except _Escaped as escaped:
        error = escaped.error
    raise error


async def _signal_when_done(coro: Any, done: threading.Event) -> Any:
    try:
        return await coro
    finally:
        done.set()
