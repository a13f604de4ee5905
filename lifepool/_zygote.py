"""One clean process per parent that forks the pools' templates: a later pool starts in milliseconds.

    parent                                      zygote (fork+exec'd once per parent)     pool template
    ------                                      ------------------------------------     -------------
    spawn_template(control end, target, opts)   lifepool imported, no user code,
      ("template", target, opts, context)       one thread, blocking on its socket
      + SCM_RIGHTS [control end, payload, 1, 2,
        (forward_output: 3 output write ends)] ► os.fork() ──────────────────────────────► context applied,
                                                closes its copy of the control end       _snap.serve(...)
           ◄─────────────────────────────────── ("pid", pid)
      pidfd_open(pid): the template's sentinel

The first template of a parent is a fresh interpreter anyway (the zygote's
start); every later pool's template is a fork of the zygote instead of an
interpreter start and lifepool's imports (about 0.1-0.2 s on 2 cores), which
is what ``multiprocessing.Pool`` with ``fork`` is compared against. The
zygote runs no user code and never has a second thread, so its forks are as
clean as an exec: the template then imports the target's module itself.

What a fork of the zygote would get wrong, and is set from the request: the
parent's working directory, environment, ``sys.path``, ``sys.argv``, stdout
and stderr (descriptors 1 and 2) *now* (the zygote has the parent's of when
the first pool started).

Reaping. The zygote's children (templates) are reaped with ``WNOHANG`` each
time a request comes. A template that died between two requests stays a
zombie until the next one, so its pid is not reused while the parent may
still open a pidfd from it: requests come one at a time, under
``_local._starting``, and the parent opens the pidfd before it lets go.

Lifetime. EOF on its socket (the parent exited, or forked: see
``_after_fork_in_child``) ends the zygote with ``os._exit``; the templates
it forked outlive it only as long as their own parent (the pool's) does.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import socket
import sys

from . import _launch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_REPLY_TIMEOUT = 30.0


class _Forker:
    """A process that forks templates on request: the zygote, or a module-warm process."""

    sock: socket.socket
    broken: bool

    def spawn_template(
        self,
        control_fd: int,
        target_blob: bytes,
        options: dict[str, Any],
        output: tuple[int, ...] = (),
        context: tuple[Any, ...] | None = None,
    ) -> int | None:
        """Fork a template running ``_snap.serve`` on *control_fd*; its pid, or None if this process is gone.

        *output*: the write ends of the output pipes the template's load
        prints and logs into (``forward_output``: see ``_output.lend``).
        *context*: ``current_context()``, if the caller has it already.
        """
        if context is None:
            context = current_context()
        # (in a file, not the message: a datagram is bounded by the socket's buffer, a target is not)
        payload = _launch._anonymous_file(pickle.dumps((target_blob, options, context), pickle.HIGHEST_PROTOCOL))
        try:
            # (with the parent's stdout and stderr of now: the zygote's are those of the first pool's start)
            socket.send_fds(self.sock, [b"template"], [control_fd, payload, 1, 2, *output])
            if not select.select([self.sock], [], [], _REPLY_TIMEOUT)[0]:
                raise OSError("no answer")
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        finally:
            os.close(payload)
        if not data:
            self.broken = True
            return None
        pid: int | None = pickle.loads(data)[1]
        return pid


class Zygote(_Forker):
    """The parent's handle on its zygote."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = _launch.ExecProcess(serve, (_launch.ChildEnd(theirs.fileno()),), name="lifepool-zygote")
        try:
            self.process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.process.pid
        self.broken = False

    def usable(self) -> bool:
        if not self.broken and select.select([self.process.sentinel], [], [], 0)[0]:  # type: ignore[type-var]
            self.broken = True
        return not self.broken

    def close(self) -> None:
        self.sock.close()  # (EOF: it leaves)
        self.process.join(timeout=5)
        if self.process.exitcode is None:
            self.process._popen.kill()
            self.process.join()
        self.process.close()


def current_context() -> tuple[Any, ...]:
    """What a fork of the zygote must take from the parent now: cwd, environment, ``sys.path``, ``sys.argv``."""
    return (os.getcwd(), dict(os.environ), _launch_path(), list(getattr(sys, "argv", [])))


def _launch_path() -> list[Any]:
    return [entry for entry in sys.path if isinstance(entry, (str, bytes))]


_zygote: Zygote | None = None


def get() -> Zygote:
    """This process's zygote, started on first use (or again, if it died). Call under ``_local._starting``."""
    global _zygote
    if _zygote is None or not _zygote.usable():
        old, _zygote = _zygote, Zygote()
        if old is not None:
            old.close()
    return _zygote


class Warm(_Forker):
    """The parent's handle on a module-warm process: a zygote that has imported one target's modules.

    Made by the first template of a target (``_snap._make_warm``), which
    forks it after importing the modules its target names and before it
    unpickles the target, so it holds the zygote's state plus those imports
    and nothing of any pool: no instance, no snap state, no container's pipe.
    Later pools with the same key fork their template from it instead of
    from the zygote, and skip those imports.
    """

    def __init__(self, sock_fd: int, pidfd: int, pid: int, files: list[tuple[str, int, int]]) -> None:
        self.sock = socket.socket(fileno=sock_fd)
        self.pidfd = pidfd
        self.pid = pid
        self.files = files  # (path, mtime_ns, size) of every module file it imported
        self.broken = False

    def usable(self) -> bool:
        """Alive, and no file of a module it imported has changed since (else it would serve stale code)."""
        if not self.broken and select.select([self.pidfd], [], [], 0)[0]:
            self.broken = True
        if not self.broken:
            for path, mtime_ns, size in self.files:
                try:
                    info = os.stat(path)
                except OSError:
                    self.broken = True
                    break
                if info.st_mtime_ns != mtime_ns or info.st_size != size:
                    self.broken = True
                    break
        return not self.broken

    def close(self, wait: float = 0.0) -> None:
        """Let it go (EOF on its socket: it leaves); with *wait*, until it is gone, at most that long."""
        self.sock.close()
        if self.pidfd >= 0:
            if wait:
                select.select([self.pidfd], [], [], wait)
            os.close(self.pidfd)
            self.pidfd = -1


WARM_LIMIT = 2  # module-warm processes kept per parent, least recently used first to go

_warm: dict[bytes, Warm] = {}  # key -> its process, least recently used first (see warm_key)


def warm_key(modules: tuple[str, ...], environment: Any, context: tuple[Any, ...]) -> bytes:
    """What a module-warm process depends on: the modules, the pool's env=/cwd=, the parent's context."""
    cwd, environ, path, argv = context
    return pickle.dumps((modules, environment, cwd, sorted(environ.items()), path, argv), pickle.HIGHEST_PROTOCOL)


def offer(key: bytes, warm: Warm) -> None:
    """A template made a module-warm process: keep it, closing the least recently used beyond ``WARM_LIMIT``.

    Called by whichever thread reads the template's messages; under
    ``_local._starting``, as every use of the cache, so that no start is
    sending to a process closed here.
    """
    from . import _local

    with _local._starting:
        old = _warm.pop(key, None)
        if old is not None:
            old.close()
        _warm[key] = warm
        while len(_warm) > WARM_LIMIT:
            _warm.pop(next(iter(_warm))).close()


def find_warm(key: bytes) -> Warm | None:
    """The module-warm process for *key*, if one is alive and fresh. Call under ``_local._starting``."""
    warm = _warm.pop(key, None)
    if warm is None:
        return None
    if not warm.usable():
        warm.close()
        return None
    _warm[key] = warm  # (the most recently used now)
    return warm


def forget_warm(key: bytes) -> None:
    """Close the module-warm process for *key* (it failed). Call under ``_local._starting``."""
    warm = _warm.pop(key, None)
    if warm is not None:
        warm.close()


def clear_warm(wait: float = 0.0) -> None:
    """Close every module-warm process (at exit: waiting up to *wait* seconds each for it to be gone)."""
    while _warm:
        _warm.popitem()[1].close(wait)


def _after_fork_in_child() -> None:
    """A fork of the parent must not share the parent's zygote: its copy of the socket goes."""
    global _zygote
    if _zygote is not None:
        try:
            _zygote.sock.close()
        except OSError:
            pass
        _zygote = None
    clear_warm()  # (the same for the module-warm processes: EOF must still reach them)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit() -> None:
    """At the interpreter's exit (after the pools were stopped): let the zygote go and reap it.

    It would leave by itself at EOF once this process is gone; closing it
    here reaps it too, so no zombie or open socket is left to the end. The
    module-warm processes go first, and are waited for (briefly): they are
    not this process's children to reap.
    """
    global _zygote
    try:
        clear_warm(wait=2.0)
    except OSError:
        pass
    zygote, _zygote = _zygote, None
    if zygote is not None:
        try:
            zygote.close()
        except OSError:
            pass


atexit.register(_close_at_exit)


# -- the zygote's side -----------------------------------------------------


def serve(control: Any) -> None:
    """The zygote program: import what a template needs, then fork templates on request."""
    from . import _worker

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _worker._ignore_signal)
        signal.siginterrupt(signum, False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _worker._set_process_name("zygote", 0)
    serve_requests(socket.socket(fileno=control.fileno()))


def serve_requests(sock: socket.socket) -> None:
    """Fork a template for each request on *sock* (the zygote's loop, and a module-warm process's)."""
    # (_template is not used here: imported so that the templates forked from here, and their containers,
    # start with what it imports, logging and traceback among them, as before _snap was split off from it)
    from . import _snap, _template  # noqa: F401

    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(sock, 64, 7)
        except OSError:
            data, fds = b"", []
        if not data:
            os._exit(0)
        _sweep()
        pid = None
        if len(fds) in (4, 7):
            control_fd, payload, stdout, stderr, *output = fds
            with open(payload, "rb", closefd=False) as file:
                target_blob, options, context = pickle.load(file)
            try:
                pid = os.fork()
            except OSError:
                pid = None
            if pid == 0:
                try:
                    sock.close()
                    os.close(payload)
                    os.dup2(stdout, 1)
                    os.dup2(stderr, 2)
                    _apply_context(context)
                    os.set_inheritable(control_fd, False)
                    _snap.serve(_launch.ChildEnd(control_fd), target_blob, options, output)
                finally:
                    os._exit(1)
        for fd in fds:
            os.close(fd)
        sock.send(pickle.dumps(("pid", pid)))


def _apply_context(context: tuple[Any, ...]) -> None:
    cwd, environ, path, argv = context
    try:
        os.chdir(cwd)
    except OSError:
        pass  # (gone since: the template reports what fails next)
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    sys.argv[:] = argv


def _sweep() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
