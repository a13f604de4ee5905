"""Method handles: ``pool.predict.call(x)``, ``.spawn``, ``.map``, ``.starmap``.

A handle only names a method; every call goes through the pool's
:meth:`~lifepool.LifecyclePool._spawn`, which encodes the arguments in the
caller's thread (so an unpicklable argument raises right here) and queues the
call for the dispatcher.

``map`` keeps a bounded window of calls in flight: it never reads more than
``window`` inputs ahead of what the consumer took, so an endless generator of
inputs works (stop reading the output, e.g. with ``itertools.islice``, and the
rest is cancelled), and memory stays flat on long inputs. The window is twice
the pool's capacity (containers x max_inputs), so every slot stays busy while
the next inputs queue up behind it.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pool import LifecyclePool


class RemoteMethod:
    """A method of the pool's target class, callable in the containers."""

    def __init__(self, pool: LifecyclePool, name: str) -> None:
        self._pool = pool
        self.name = name
        self.label = f"{pool._info.name}.{name}"

    def __repr__(self) -> str:
        return f"<lifepool method {self.label} of {self._pool!r}>"

    def spawn(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start the call in a container and return its ``concurrent.futures.Future``."""
        return self._pool._spawn(self.name, self.label, args, kwargs)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run the call in a container and return its result (or raise its error)."""
        return wait_for(self._pool, self._pool._spawn(self.name, self.label, args, kwargs))

    remote = call

    def map(
        self, *iterables: Iterable[Any], order_outputs: bool = True, return_exceptions: bool = False
    ) -> Iterator[Any]:
        """Call the method on each item (``zip`` of *iterables*), in parallel, lazily."""
        return self.starmap(zip(*iterables), order_outputs=order_outputs, return_exceptions=return_exceptions)

    def starmap(
        self, iterable: Iterable[Iterable[Any]], *, order_outputs: bool = True, return_exceptions: bool = False
    ) -> Iterator[Any]:
        """Like :meth:`map`, with each item unpacked as the call's arguments."""
        return map_calls(
            self._pool,
            self.name,
            self.label,
            iterable,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
        )


def wait_for(pool: LifecyclePool, future: Future[Any]) -> Any:
    """Block on *future*; a KeyboardInterrupt here cancels the call and leaves the pool alive."""
    try:
        error = future.exception()
    except KeyboardInterrupt:
        pool._abandon([future], interrupt=True)
        raise
    if error is not None:
        # Raised from here, the traceback reads: your line, then the container's
        # frames (future.result() would add concurrent.futures' frames between).
        raise error
    return future.result()


def map_calls(
    pool: LifecyclePool,
    what: Any,
    label: str,
    arg_tuples: Iterable[Iterable[Any]],
    *,
    order_outputs: bool = True,
    return_exceptions: bool = False,
    timeout: float | None = None,
) -> Iterator[Any]:
    """Submit calls lazily with a bounded window; the first window starts now, not at first ``next``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    inputs = iter(arg_tuples)
    window = max(2 * pool._capacity, 2)
    in_flight: collections.deque[Future[Any]] = collections.deque()
    finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    def submit_next() -> bool:
        for args in inputs:
            future = pool._spawn(what, label, tuple(args), {})
            if not order_outputs:
                future.add_done_callback(finished.put)
            in_flight.append(future)
            return True
        return False

    while len(in_flight) < window and submit_next():
        pass
    return _results(pool, in_flight, finished, submit_next, order_outputs, return_exceptions, deadline)


def _results(
    pool: LifecyclePool,
    in_flight: collections.deque[Future[Any]],
    finished: queue.SimpleQueue[Future[Any]],
    submit_next: Any,
    order_outputs: bool,
    return_exceptions: bool,
    deadline: float | None,
) -> Iterator[Any]:
    interrupted = False
    try:
        while in_flight:
            if order_outputs:
                future = in_flight[0]
                _wait_done(future, deadline)  # (still in in_flight: an interrupt here abandons it too)
                in_flight.popleft()
            else:
                future = _next_finished(finished, deadline)
                in_flight.remove(future)
            submit_next()
            error = future.exception()
            if error is None:
                yield future.result()
            elif return_exceptions:
                yield error
            else:
                raise error
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if in_flight:
            pool._abandon(list(in_flight), interrupt=interrupted)


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
