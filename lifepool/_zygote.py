"""One clean process per parent that forks the pools' templates: a later pool starts in milliseconds.

    parent                                      zygote (fork+exec'd once per parent)     pool template
    ------                                      ------------------------------------     -------------
    spawn_template(control end, target, opts)   lifepool imported, no user code,
      ("template", target, opts, context)       one thread, blocking on its socket
      + SCM_RIGHTS [control end, payload, 1, 2,
        (forward_output: 3 output write ends)] ► os.fork() ──────────────────────────────► context applied,
                                                closes its copy of the control end       _template.serve(...)
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


class Zygote:
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

    def spawn_template(
        self, control_fd: int, target_blob: bytes, options: dict[str, Any], output: tuple[int, ...] = ()
    ) -> int | None:
        """Fork a template running ``_template.serve`` on *control_fd*; its pid, or None if the zygote is gone.

        *output*: the write ends of the output pipes the template's load
        prints and logs into (``forward_output``: see ``_output.lend``).
        """
        context = (os.getcwd(), dict(os.environ), _launch_path(), list(getattr(sys, "argv", [])))
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

    def close(self) -> None:
        self.sock.close()  # (EOF: it leaves)
        self.process.join(timeout=5)
        if self.process.exitcode is None:
            self.process._popen.kill()
            self.process.join()
        self.process.close()


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


def _after_fork_in_child() -> None:
    """A fork of the parent must not share the parent's zygote: its copy of the socket goes."""
    global _zygote
    if _zygote is not None:
        try:
            _zygote.sock.close()
        except OSError:
            pass
        _zygote = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit() -> None:
    """At the interpreter's exit (after the pools were stopped): let the zygote go and reap it.

    It would leave by itself at EOF once this process is gone; closing it
    here reaps it too, so no zombie or open socket is left to the end.
    """
    global _zygote
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
    from . import _template, _worker

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _worker._ignore_signal)
        signal.siginterrupt(signum, False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _worker._set_process_name("zygote", 0)
    sock = socket.socket(fileno=control.fileno())
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
                    _template.serve(_launch.ChildEnd(control_fd), target_blob, options, output)
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
