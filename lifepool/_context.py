"""Where code runs in a container: the container, the call on its main thread, and the state its threads share.

Kept apart from the container program (``_worker``) and its call server
(``_serve``), which both read and write it; the parent's side imports only
:func:`current_container` from here (``lifepool.current_container``).
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._serve import _Worker

INTERRUPT_SIGNAL = signal.SIGUSR1


class Container:
    """The container a piece of code runs in: see :func:`lifepool.current_container`."""

    def __init__(self, index: int, pool_name: str, instance: Any) -> None:
        self.index = index  #: position of this container in its pool (replacements reuse it)
        self.pid = os.getpid()  #: this container's process id
        self.pool_name = pool_name  #: the pool's ``name``
        self.instance = instance  #: the entered instance of the target class

    def __repr__(self) -> str:
        return f"<lifepool container {self.index} of {self.pool_name!r} (pid {self.pid})>"


_current: Container | None = None


def current_container() -> Container | None:
    """The container this code runs in, or ``None`` outside any container."""
    return _current


def set_current(container: Container) -> None:
    global _current
    _current = container


class _State:
    """What the signal handler and the watcher thread need to see (main thread writes)."""

    in_user_code = False  # main thread runs an inline call or an enter hook
    call_id: int | None = None  # the inline call it runs (None: an enter hook)
    parent_gone = False
    orphan_kill_armed = False  # see _leave_when_orphaned
    loading_target = False  # the target is being unpickled: its module may be imported (see importing_target)
    missed = False  # an interrupt signal came while no user code ran (see run_user)
    reading = False  # signalled() is reading the pipe (a nested handler must not read too)
    again = False  # a signal came while it read: read again before returning
    worker: _Worker | None = None


_state = _State()


def current_call_id() -> int | None:
    """The pool's id of the call on this container's main thread (None elsewhere: threads, the loop, batches)."""
    return _state.call_id if _state.in_user_code else None


def importing_target() -> bool:
    """Whether this is a container importing its target's module (where making a pool is refused)."""
    return _state.loading_target


def _block_interrupts_in_this_thread() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL, signal.SIGINT})
