"""The pools alive in this process: the registry, how they are stopped, and what happens at exit and after fork.

``LifecyclePool`` adds its dispatcher here (``add``) and is forgotten when it
closes. At interpreter exit, the pools left open are stopped as a ``with``
block ending the same way would stop them; a Ctrl-C or SIGTERM during any
stop turns it into an abort, and a second one kills (``stop_pools``). A
child forked while pools are alive forgets them.
"""

from __future__ import annotations

import copy as copy_module
import functools
import logging
import os
import sys
import threading
import types
from collections.abc import Callable

from . import _signals, _wire
from ._schedule import Dispatcher
from ._status import PoolState

logger = logging.getLogger("lifepool")

# Pools whose dispatcher still runs; shut down (waiting) at interpreter exit.
_live: set[Dispatcher] = set()
_live_lock = threading.Lock()


def add(dispatcher: Dispatcher) -> None:
    """A new pool's dispatcher (unless it closed already: a pool whose start failed)."""
    with _live_lock:
        if dispatcher.state is not PoolState.CLOSED:
            _live.add(dispatcher)


def abandoned(dispatcher: Dispatcher) -> None:
    if dispatcher.state is not PoolState.CLOSED:
        dispatcher.shutdown(False, None, False)


def forget(dispatcher: Dispatcher) -> None:
    with _live_lock:
        _live.discard(dispatcher)


def any_alive() -> bool:
    """Whether a pool is alive; read without _live_lock, for the SIGTERM handler (see _signals.install)."""
    return bool(_live)


def stopping(
    *, cancel_futures: bool, exit_exc: BaseException | None = None, abort: bool = False
) -> Callable[[Dispatcher], None]:
    """The request that stops a pool: see Dispatcher.shutdown (*exit_exc* is pickled once, when first needed)."""
    exit_blob = functools.cache(lambda: None if exit_exc is None else _wire.exception_blob(exit_exc))
    return lambda dispatcher: dispatcher.shutdown(cancel_futures, exit_blob(), abort)


def _aborting_on(interrupt: KeyboardInterrupt) -> Callable[[Dispatcher], None]:
    """The request a first Ctrl-C makes of a stopping pool: abort, and give the exit hooks *interrupt*."""
    abort = stopping(cancel_futures=True, exit_exc=_as_if_propagated(interrupt), abort=True)

    def request(dispatcher: Dispatcher) -> None:
        logger.warning("lifepool pool %r: interrupted; stopping the containers", dispatcher.name)
        abort(dispatcher)

    return request


def _kill_now(dispatcher: Dispatcher) -> None:
    """The request a second Ctrl-C makes of a stopping pool."""
    logger.warning("lifepool pool %r: interrupted again; killing the containers now", dispatcher.name)
    dispatcher.control("kill", "a second interrupt arrived while the pool was stopping")


def stop_pools(
    dispatchers: list[Dispatcher], request: Callable[[Dispatcher], None], *, aborting: bool
) -> KeyboardInterrupt | None:
    """Make *request* of each pool, then wait until all are closed; return the first Ctrl-C that came meanwhile.

    A Ctrl-C (or Terminated) may come at any point, while the requests are
    made too. The first (unless already *aborting*) turns the stop into an
    abort: queued calls are cancelled, running calls interrupted, and the exit
    hooks get the interrupt. The next kills the containers at once. Each new
    request goes to every pool not yet closed (one that had it already takes
    it again harmlessly). Either way the wait goes on until the containers are
    reaped (the kill makes that immediate), so no process is left.
    """
    interrupt = None
    while True:
        try:
            for dispatcher in dispatchers:
                if not dispatcher.closed.is_set():
                    request(dispatcher)
            for dispatcher in dispatchers:
                dispatcher.closed.wait()
            return interrupt
        except KeyboardInterrupt as error:
            interrupt = interrupt or error
            request = _kill_now if aborting else _aborting_on(error)
            aborting = True


def _at_interpreter_exit() -> None:
    """Pools left open at exit: stop them like a ``with`` block ending the same way.

    A normal end lets queued and running calls finish; an uncaught exception is
    passed to the exit hooks (a KeyboardInterrupt, Terminated included, also
    cancels queued calls and interrupts running ones). A Ctrl-C or SIGTERM
    while the exit waits is handled as in a ``with`` block (see stop_pools),
    and the program then dies by that signal, as it would have had it come
    before the end: nothing else would raise it (see _signals).
    """
    uncaught = _signals.uncaught_exception()
    aborting = isinstance(uncaught, KeyboardInterrupt)
    stop = stopping(cancel_futures=uncaught is not None, exit_exc=uncaught, abort=aborting)

    def request(dispatcher: Dispatcher) -> None:
        if aborting and dispatcher.aborting:
            # Already stopping on an interrupt, yet the program is ending on one:
            # a second Ctrl-C cut that stop short. It means "now".
            _kill_now(dispatcher)
        else:
            stop(dispatcher)

    with _live_lock:
        dispatchers = list(_live)
    interrupt = stop_pools(dispatchers, request, aborting=aborting)
    for dispatcher in dispatchers:
        for error in dispatcher.exit_errors:
            logger.error("lifepool pool %r: exit hook failed", dispatcher.name, exc_info=error)
    if interrupt is not None:
        _signals.interrupted_at_exit(interrupt)


threading._register_atexit(_at_interpreter_exit)  # type: ignore[attr-defined]  # (before the interpreter's own exit waits)


def _after_fork_in_child() -> None:
    """A child forked while pools are alive (``os.fork``, multiprocessing's "fork").

    The pools and their containers stay the parent's: the child forgets them
    (see Dispatcher.forget_after_fork), so that its exit neither waits for
    them nor stops them, and it leaves SIGTERM to its default action.
    """
    global _live_lock
    _live_lock = threading.Lock()
    dispatchers = list(_live)
    _live.clear()
    for dispatcher in dispatchers:
        dispatcher.forget_after_fork()
    _signals.restore()  # (the forking thread is the child's main thread)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _as_if_propagated(error: BaseException) -> BaseException:
    """A copy of *error* whose traceback also has the frames it has yet to unwind through.

    An interrupt caught inside shutdown() has only the frames below the catch;
    the exit hooks should see the user's line that called shutdown() too.
    """
    copy = copy_module.copy(error)
    tb = error.__traceback__
    frame = tb.tb_frame.f_back if tb is not None else sys._getframe(1)
    while frame is not None:
        tb = types.TracebackType(tb, frame, frame.f_lasti, frame.f_lineno)
        frame = frame.f_back
    return copy.with_traceback(tb)
