"""The container program: what runs inside each worker process.

    parent ──pipe──► main thread: recv ─► run call ─► send result ─► recv ...
                        │   (max_inputs == 1: the call runs right here, on the
                        │    main thread, so an interrupt can raise inside it)
                        │   (max_inputs > 1: calls go to N threads / the loop,
                        │    the main thread keeps reading)
                        ├── loop thread: the container's one asyncio event loop,
                        │   made on first use and kept for the container's life
                        └── watcher thread: notices the parent vanish (pipe hang-up,
                            or getppid() change as a fallback) and interrupts main

Signal policy, set before anything else runs:

* SIGINT and SIGTERM are ignored. A terminal Ctrl-C reaches the whole
  process group, and so does the SIGTERM of ``timeout`` or of systemd
  stopping a service; what a container does about them is the parent's
  decision: the parent sends an interrupt (or an exit) when it wants one, and
  a container whose parent is gone notices its pipe close. This is also why
  containers never print a KeyboardInterrupt traceback of their own. (SIGKILL
  still ends a container at once.)
* SIGUSR1 is the parent's "interrupt the running call" signal. Its handler
  raises KeyboardInterrupt only while user code of an inline call or an enter
  hook runs on the main thread; anywhere else it does nothing, so a late signal
  cannot hit the wrong call (the parent never sends the next call before it
  has seen the interrupted one finish).
* Other threads block SIGUSR1 so that it always lands on the main thread and
  breaks it out of a blocking system call.

Lifecycle: unpickle the target (instantiate it when it is a class), run the
enter hooks, serve calls until the parent says EXIT (or vanishes), run the
exit hooks exactly once, report, and leave with ``os._exit`` so that stray
non-daemon threads in user code cannot keep a finished container alive.

This module is the process: its entry point, signal policy, parent watch and
way out. The call server it runs is ``_serve._Worker`` (with ``_kinds`` for
streams, batches and map chunks, and ``_loop`` for the event loop); what
they both read is in ``_context``.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import threading
from collections.abc import Callable

from . import _shmdir, _wire
from ._context import (  # (the names other modules and tests reach through _worker)
    INTERRUPT_SIGNAL,
    Container,
    _block_interrupts_in_this_thread,
    _state,
    current_call_id,
    current_container,
    importing_target,
)
from ._exceptions import ParentExitedError
from ._serve import _raised, _trimmed, _Worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# asyncio, concurrent.futures, queue (and typing) are imported where they are
# first needed, if ever: a container that runs only sync code with
# max_inputs=1 never pays for them, and each container's start-up is on the
# path to the pool's first result.

__all__ = [
    "INTERRUPT_SIGNAL",
    "Container",
    "current_call_id",
    "current_container",
    "importing_target",
    "main",
    "on_import",
    "share_authkey",
]

_WATCH_INTERVAL = 1.0  # seconds between getppid() checks, the fallback parent watch


def _ignore_signal(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM in a container: nothing to do (see main)."""


def share_authkey(key: bytes | None) -> None:
    """Take the parent's multiprocessing auth key as this process's.

    A proxy of the parent's ``multiprocessing.Manager()`` (an ``Event``, a
    ``Queue``, a ``dict``) passed as an argument connects to the manager with
    ``current_process().authkey``: with a key of its own, the container's
    connection was refused ("digest sent was rejected"), where the standard
    library's pools work. The key comes in the container's start payload
    (never argv nor the environment, which other users can read).

    A container does not import multiprocessing at start (its package pulls
    in ``socket`` and ``selectors``: about 4 ms of a container's start, where
    ``multiprocessing.process`` alone is 0.3 ms). So unless it is already
    imported (the spawn, forkserver and loky start methods import it), the
    key is set the moment ``multiprocessing.process`` is, by a finder at the
    front of ``sys.meta_path`` that lets go of it once done: before anything
    can read the key, even a proxy unpickled among a call's arguments (which
    is what imports multiprocessing then).
    """
    if key is None:
        return

    def set_key(process: Any) -> None:
        process.current_process().authkey = key

    on_import("multiprocessing.process", set_key)


def on_import(name: str, callback: Callable[[Any], None]) -> None:
    """Call *callback(module)* once module *name* has run (now, if it is already imported).

    A finder at the front of ``sys.meta_path`` finds nothing itself, but
    wraps the module's ``exec_module``, and lets go of itself once used.
    (Also how a container's ``logging`` gets its forwarding handler only if
    user code imports ``logging``: see ``_output.redirect``.)
    """
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    else:
        # (a new list, never one changed in place: another thread may be iterating it in an import)
        sys.meta_path = [_OnImport(name, callback), *sys.meta_path]


class _OnImport:
    """The finder of :func:`on_import`: finds nothing, but calls back once its module ran."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self._name = name
        self._callback = callback

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self._name:
            return None
        sys.meta_path = [finder for finder in sys.meta_path if finder is not self]
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or isinstance(spec.loader, type):  # (shared by many modules: never for CPython's)
            return spec
        run = spec.loader.exec_module
        callback = self._callback

        def exec_module(module: Any) -> None:
            run(module)
            callback(module)

        spec.loader.exec_module = exec_module  # (this spec's own loader instance)
        return spec


def _signals_after_fork() -> None:
    """A process forked in a container (multiprocessing's "fork", ``os.fork``) starts with Python's defaults."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(INTERRUPT_SIGNAL, signal.SIG_DFL)


def _on_interrupt_signal(signum: int, frame: object) -> None:
    state = _state
    if state.reading:
        state.again = True  # a handler (or run_user) below is reading: it looks again
        return
    if not state.in_user_code:
        state.missed = True
        return
    if state.parent_gone:
        state.in_user_code = False
        raise ParentExitedError("the parent process exited without shutting the pool down")
    # The parent writes the INTERRUPT (or REVOKE) frame before it signals:
    # read ahead to see which call the signal is for. It may be one sent
    # ahead, waiting in the pipe behind this one: that one is skipped when
    # its turn comes, or given back to the parent at once.
    if state.call_id is not None and state.worker is not None and not state.worker.signalled(state.call_id):
        return
    state.in_user_code = False  # one interrupt per call
    raise KeyboardInterrupt("interrupted by the lifepool parent")


def _watch_parent(conn_fd: int, parent_pid: int | None, options: dict[str, Any], parent_fd: int | None) -> None:
    """Notice the parent vanish while the main thread is busy; interrupt it, and bound the stop.

    *parent_pid* is this process's parent when it started, which is not the
    pool's parent under multiprocessing's fork server: the fork server is.
    A change means the process was reparented: its parent died. A container
    of a template (whose parent is the template, which may die and be
    replaced while the pool runs on) watches *parent_fd* instead, a pidfd of
    the pool's parent: readable once it exited.
    """
    _block_interrupts_in_this_thread()
    poller = select.poll()
    # POLLRDHUP: wake on the parent's end closing, not on ordinary data.
    poller.register(conn_fd, getattr(select, "POLLRDHUP", 0) | select.POLLHUP)
    if parent_fd is not None:
        poller.register(parent_fd, select.POLLIN)
    while True:
        events = poller.poll(None if parent_pid is None else _WATCH_INTERVAL * 1000)
        if events or (parent_pid is not None and os.getppid() != parent_pid):
            break
    _state.parent_gone = True
    _leave_when_orphaned(options)
    # An idle main thread waits in a read that would end only when every copy
    # of the parent's end is closed: end it here, whoever holds a copy.
    _wire.end_reading(conn_fd)
    main_ident = threading.main_thread().ident
    assert main_ident is not None  # (the main thread has started: it runs this program)
    signal.pthread_kill(main_ident, INTERRUPT_SIGNAL)


def _set_process_name(pool_name: str, index: int | str) -> None:
    """Name this process ``lp-<pool name>-<index>`` where ``top`` and ``ps -o comm`` look (Linux; 15 bytes)."""
    suffix = f"-{index}"
    name = f"lp-{pool_name}".encode(errors="replace")[: 15 - len(suffix)] + suffix.encode()
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass  # (not Linux, or no /proc: the name stays the interpreter's)


def _leave_when_orphaned(options: dict[str, Any]) -> None:
    """The parent is gone, and nobody is left to SIGKILL this container after the grace period: do it here.

    Armed once, by whichever thread finds the parent gone first (the watcher,
    or the main thread reading EOF), as soon as it does: the running call may
    swallow its interrupt, or sit deaf in C code, and the exit hooks get what
    is left of ``exit_grace_period``, as when the parent stops the pool. The
    shared memory of the pool's messages in flight is swept before leaving.
    """
    if _state.orphan_kill_armed:
        return
    _state.orphan_kill_armed = True

    def leave() -> None:
        _sweep_orphaned(options)
        _leave(1)

    timer = threading.Timer(options["exit_grace_period"], leave)
    timer.daemon = True
    timer.start()


def main(
    conn: Any,
    index: int,
    target_blob: bytes | None,
    options: dict[str, Any],
    output: Any = None,
    snapshot: Any = None,
) -> None:
    """Entry point of a container process (the target of its Process object, or forked by a template).

    *output*: with ``forward_output``, the write ends of this container's
    output pipes and the parent's log level (see ``lifepool/_output.py``).
    *snapshot* (a ``_snap.Snapshot``) is what the template made before
    forking this process: the instance, its snap hooks already run.
    """
    flush_output = None
    if output is not None:
        from . import _output

        flush_output = _output.redirect(output)  # first: what follows may print
    # Ctrl-C and SIGTERM reach the containers too (they share the parent's
    # process group); the parent decides what they mean. They are ignored by a
    # handler that does nothing, not by SIG_IGN, which would outlive exec: the
    # user's subprocesses would ignore Ctrl-C and terminate() for good. Exec
    # resets a handler; _signals_after_fork resets it in forks.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore_signal)
        signal.siginterrupt(signum, False)  # system calls restart: no EINTR for C code
    os.register_at_fork(after_in_child=_signals_after_fork)
    sentinel = options.get("sentinel")  # (a template's container: the pipe whose EOF tells the parent it exited)
    if sentinel is not None:
        os.register_at_fork(after_in_child=sentinel.close)  # only this process holds it, not its forks
    share_authkey(options.get("authkey"))
    _set_process_name(options["pool_name"], index)
    _shmdir.set_owner(options["parent_pid"])  # shared-memory segments are named after the pool's parent
    if options.get("shm_dir"):
        # The pool's parent is on another machine (a Ray backend) and our actor
        # ships the segments of this directory to it and from it (see _ship).
        _shmdir.SHM_DIR = options["shm_dir"]
    elif options.get("shared_memory") is False:
        # The pool's parent is on another machine (a Ray backend): its /dev/shm is not ours.
        _shmdir.SHM_DIR = None
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt_signal)
    # The parent blocked SIGINT while starting us (a Ctrl-C then must not kill a
    # container that has no policy yet); the mask is inherited, undo it now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, INTERRUPT_SIGNAL, signal.SIGTERM})
    parent_pid: int | None = os.getppid()
    parent_fd = None
    if options.get("template_child"):
        parent_pid = None
        try:
            parent_fd = os.pidfd_open(options["parent_pid"])
        except OSError:  # (gone already: the pipe has hung up too)
            parent_fd = None
    threading.Thread(
        target=_watch_parent,
        args=(conn.fileno(), parent_pid, options, parent_fd),
        name="lifepool-watch",
        daemon=True,
    ).start()
    worker = _state.worker = _Worker(conn, index, options)
    worker.flush_output = flush_output
    try:
        worker.enter(target_blob, snapshot)
        snapshot = None
    except BaseException as error:  # noqa: BLE001 - reported; a failed enter gets no exit hook
        try:
            worker.send(_wire.frame(_wire.ENTER_FAILED, body=_wire.exception_blob(_trimmed(error))))
        except OSError:
            pass
        _finish(1, options["exit_grace_period"])
    try:
        worker.send(_wire.frame(_wire.READY))
        exit_exc = worker.serve()
    except OSError:
        exit_exc = _raised(ParentExitedError("the parent process is gone (pipe closed)"))
    if isinstance(exit_exc, ParentExitedError):
        _leave_when_orphaned(options)
    if worker._threads is not None:
        worker._threads.shutdown(wait=True)
    errors = worker.exit(exit_exc)
    try:
        worker.send(_wire.frame(_wire.EXITED, body=pickle.dumps(errors)))
    except OSError:
        pass
    if isinstance(exit_exc, ParentExitedError):
        _sweep_orphaned(options)
    _finish(0, options["exit_grace_period"])


def _sweep_orphaned(options: dict[str, Any]) -> None:
    """The parent is gone: nobody is left to decode or discard the segments in flight, so they go.

    A Ray container shipping its segments (``_ship``) removes its directory
    too: its actor, which would have, is what died.
    """
    _shmdir.sweep(options["parent_pid"])
    if options.get("shm_dir"):
        from . import _ship

        _ship.remove_dir(options["shm_dir"])


def _finish(code: int, grace: float) -> None:
    """Leave as the interpreter would at exit, within *grace* seconds, but never waiting for non-daemon threads.

    A container ends with ``os._exit``, which skips the interpreter's exit
    callbacks; what user code left to them would outlive the container. A
    ``ProcessPoolExecutor`` or ``multiprocessing.Pool`` made in an enter hook
    and never shut down kept its workers alive forever, reparented to init.
    So threading's exit callbacks (``concurrent.futures`` stops its executors
    there) and ``atexit``'s (multiprocessing's, logging's, the user's) run
    first. Non-daemon threads are not joined, as before: a thread left
    running must not hold up the pool's shutdown. A callback that hangs is
    cut short after *grace* (the parent's kill would do the same).
    """
    import atexit

    timer = threading.Timer(grace, _leave, (code,))
    timer.daemon = True
    timer.start()
    for callback in reversed(getattr(threading, "_threading_atexits", [])):
        try:
            callback()
        except BaseException:  # noqa: BLE001 - reported, as the interpreter would
            sys.excepthook(*sys.exc_info())
    atexit._run_exitfuncs()
    _leave(code)


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
