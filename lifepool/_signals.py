"""The parent's signal policy: SIGTERM becomes an exception while a pool is alive.

The problem. A scheduler, ``timeout`` or ``docker stop`` ends a program with
SIGTERM, whose default action kills the process on the spot: no ``finally``
block, no ``with`` exit, so no container exit hook runs and the containers
are orphaned (they notice and exit by themselves, but their exit hooks then
get ParentExitedError instead of the stop the user asked for). SIGINT has no
such problem: Python already turns it into KeyboardInterrupt in the main
thread, and lifepool's ``with``/``shutdown`` handle that.

What does not work: installing a handler unconditionally (it would replace the
program's own, and a library must be a good neighbour); installing from any
thread (``signal.signal`` only works in the main thread); restoring SIG_DFL
blindly when the last pool closes (someone may have installed theirs since).

What lifepool does:

* When a pool is made in the main thread and SIGTERM's handler is the default
  one (SIG_DFL), it installs :func:`_on_sigterm`, which raises
  :class:`~lifepool.Terminated` (a KeyboardInterrupt naming the signal) in the
  main thread. ``with`` blocks then stop their pools as for Ctrl-C: queued
  calls are cancelled, running ones interrupted, every exit hook receives the
  Terminated exception.
* A program that installed its own SIGTERM handler (or ignores SIGTERM) is
  left alone, as is any pool made with ``handle_sigterm=False``.
* When the last pool is shut down from the main thread, the handler is put
  back to SIG_DFL -- only if it is still ours. A pool can also end where that
  is impossible: collected without shutdown, or shut down from another
  thread. So the handler asks ``_pool`` whether any pool is still alive; with
  none, it puts SIG_DFL back itself and re-sends the signal, and the process
  dies as it would have without lifepool.
* If Terminated ends the program uncaught, an ``atexit`` hook re-sends
  SIGTERM once everything has been cleaned up, so the process dies by the
  signal (status 143 in a shell) exactly as it would have without lifepool.
  The same hook ends a program by SIGINT or SIGTERM when one of them came
  while its exit waited for pools left open (``_lifetime._at_interpreter_exit``
  catches that interrupt to stop the pools, so nobody else would).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable

from ._exceptions import Terminated

# Whether any pool is still alive: given to install() by _pool, which owns the pools.
_pools_alive: Callable[[], bool] = bool  # (until then: bool() is False)
# The Ctrl-C or Terminated that interrupted the exit's wait for open pools.
_exit_interrupt: KeyboardInterrupt | None = None


def _on_sigterm(signum: int, frame: object) -> None:
    if not _pools_alive():
        # The last pool ended where the default could not be put back (see
        # the module docstring): SIGTERM does what it would without lifepool.
        _die_by(signal.SIGTERM)
    raise Terminated(signum)


def install(pools_alive: Callable[[], bool]) -> bool:
    """Install the SIGTERM handler if it is safe and useful; True if ours is in place.

    *pools_alive* is what the handler asks before raising (it must not take
    a lock: the handler runs in the main thread, between any two bytecodes).
    """
    global _pools_alive
    _pools_alive = pools_alive
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current is not signal.SIG_DFL:
        return False  # the program's own handler, or SIG_IGN: not ours to replace
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def restore() -> None:
    """Put SIG_DFL back, if the handler is still ours and we are in the main thread."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _last_shown() -> BaseException | None:
    return getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)


# The error noted last when a pool was made (see note_shown_errors). A strong
# reference: built-in exceptions take no weak one, and an id could be reused.
_shown_before: BaseException | None = None


def note_shown_errors() -> None:
    """Note the error an interactive session last showed, when a pool is made: it does not end the program."""
    global _shown_before
    _shown_before = _last_shown()


def uncaught_exception() -> BaseException | None:
    """The exception that is ending the program, if one is (valid at interpreter exit).

    CPython notes an uncaught exception in ``sys.last_exc``/``sys.last_value``
    before it runs the exit callbacks. So do interactive sessions (the REPL,
    IPython and Jupyter, ``code.InteractiveInterpreter``) for every error they
    show and carry on after: there, what is noted ends nothing. Hence None in
    an interactive session, and for an error that was already noted when a
    pool was last made (an error shown in an earlier cell).
    """
    last = _last_shown()
    if last is None or last is _shown_before or _interactive():
        return None
    return last


def _interactive() -> bool:
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return True
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def interrupted_at_exit(interrupt: KeyboardInterrupt) -> None:
    """Note the Ctrl-C or Terminated that came while the exit waited for pools: the process dies by it."""
    global _exit_interrupt
    _exit_interrupt = interrupt


def _die_by_the_ending_signal() -> None:
    """Die by SIGTERM if Terminated ends the program, or by the signal that interrupted the exit's wait.

    CPython itself dies by SIGINT after an uncaught KeyboardInterrupt, but it
    knows nothing of Terminated, nor of an interrupt lifepool caught at exit.
    """
    ending = _exit_interrupt or uncaught_exception()
    if isinstance(ending, Terminated):
        signum = signal.SIGTERM
    elif _exit_interrupt is not None:
        signum = signal.SIGINT
    else:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _die_by(signum)


def _die_by(signum: int) -> None:
    """Die by *signum* (status 128 + signum in a shell), its default action; call in the main thread."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# Registered at import, early, so that it runs late (atexit is last-in,
# first-out): the program's own exit handlers still run before the re-kill.
atexit.register(_die_by_the_ending_signal)
