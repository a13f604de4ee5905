"""The start method ``"exec"`` (and how the template starts): fork+exec of a fresh interpreter, and nothing else.

    dispatcher thread (SIGINT/SIGTERM blocked)        container
    ------------------------------------------        ---------
    Pipe(duplex=True): a socketpair (the container's end: a ChildEnd)
    payload -> an anonymous file (memfd)
    subprocess.Popen([python, -P, -c, BOOT], pass_fds=(conn, payload[, sentinel]))
      (vfork+exec: no copy of a threaded parent runs Python code)
                                                      BOOT: marshal-load the payload,
                                                      sys.path[:] = the parent's sys.path,
                                                      import lifepool._launch, wrap the
                                                      socket in a ChildEnd, run the target
    sentinel = pidfd_open(pid), or the read end of a pipe whose write end
    only the child holds: readable once the container has exited

Why not multiprocessing's or loky's contexts. A loky child runs ``python -m
loky.backend.popen_loky_posix``, which imports the whole loky package, then
talks to loky's resource tracker (a third process, started on first use);
a spawn child imports ``multiprocessing.spawn`` and re-imports the parent's
``__main__``. A container needs none of that: it needs the parent's
``sys.path`` (so user modules import by reference), its working directory
(inherited through exec), one socket, and the target. So the bootstrap is a
few lines of ``-c`` code, and what it imports is what a container uses anyway.

What the child inherits: the signal mask of the thread that starts it (the
dispatcher blocks SIGINT and SIGTERM; ``_worker.main`` unblocks them once they
are ignored), the process group and session, the environment and the working
directory. stdin is ``/dev/null``; stdout and stderr are the parent's. Every
other descriptor is closed (``close_fds``). The child gets the parent's
``sys.argv`` (as with spawn) and never imports the parent's ``__main__``.

The payload travels in an anonymous file rather than through the socket, so
starting a container never waits on the container reading a large target:
the dispatcher starts all containers back to back and they boot in parallel.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The bootstrap, run with ``python -P -c``. Before sys.path is the parent's, it
# imports only built-in modules (-P: not even from the working directory).
_BOOT = (
    "import marshal,sys\n"
    "with open({fd},'rb') as f: h=marshal.load(f)\n"
    "sys.path[:]=h[0]\n"
    "from lifepool._launch import _child\n"
    "_child(h)\n"
)


class ExecContext:
    """The part of a multiprocessing context the dispatcher uses: ``Pipe`` and ``Process``."""

    @staticmethod
    def Pipe(duplex: bool = True) -> tuple[Any, Any]:  # (multiprocessing's names)
        from multiprocessing import Pipe

        return Pipe(duplex)

    @staticmethod
    def Process(target: Any, args: tuple[Any, ...] = (), name: str | None = None) -> ExecProcess:
        return ExecProcess(target, args, name)


class ExecProcess:
    """A container process started by fork+exec, with what the dispatcher uses of ``multiprocessing.Process``.

    ``start()``, ``pid``, ``sentinel`` (a descriptor that becomes readable when
    the process exits), ``join()`` and ``exitcode`` (negative signal number
    when a signal killed it). Connections among *args* are passed as
    descriptors; the rest of *args* and *target* travel pickled (by reference
    for functions).
    """

    def __init__(self, target: Any, args: tuple[Any, ...] = (), name: str | None = None) -> None:
        self._target = target
        self._args = args
        self.name = name or "lifepool-container"
        self._popen: Any = None
        self.pid: int | None = None
        self.sentinel: int | None = None
        self._finalizer: Any = None

    def start(self) -> None:
        import subprocess
        import weakref

        if self._popen is not None:
            raise RuntimeError("a process can be started only once")
        if not sys.executable:
            raise RuntimeError("cannot start a container: sys.executable is unknown")
        body, fds = _pickle_call(self._target, self._args)
        sentinel_r = sentinel_w = -1
        if not _has_pidfd():
            sentinel_r, sentinel_w = os.pipe()
            fds.append(sentinel_w)
        # (the import system skips entries that are not strings or bytes; marshal could not send them)
        path = [entry for entry in sys.path if isinstance(entry, (str, bytes))]
        payload = (path, list(getattr(sys, "argv", [])), self.name, body, fds)
        payload_fd = _anonymous_file(marshal.dumps(payload))
        try:
            self._popen = subprocess.Popen(
                [sys.executable, *_interpreter_flags(), "-P", "-c", _BOOT.format(fd=payload_fd)],
                stdin=subprocess.DEVNULL,
                pass_fds=(payload_fd, *fds),
            )
        except BaseException:
            if sentinel_r >= 0:
                os.close(sentinel_r)
            raise
        finally:
            os.close(payload_fd)
            if sentinel_w >= 0:
                os.close(sentinel_w)  # only the child holds it now: EOF when it exits
        self.pid = self._popen.pid
        if sentinel_r >= 0:
            self.sentinel = sentinel_r
        else:
            try:
                # The pid cannot be reused before we wait for it, so this is the child.
                self.sentinel = os.pidfd_open(self.pid)
            except BaseException:
                self._popen.kill()
                self._popen.wait()
                raise
        self._finalizer = weakref.finalize(self, os.close, self.sentinel)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the process to exit (at most *timeout* seconds) and reap it."""
        if self._popen is None:
            raise ValueError("cannot join a process that was not started")
        if timeout is not None and self._popen.returncode is None:
            import select

            # (Popen.wait with a timeout would poll; the sentinel says when it exits)
            assert self.sentinel is not None  # (set by start)
            if not select.select([self.sentinel], [], [], max(timeout, 0))[0]:
                return
        self._popen.wait()

    @property
    def exitcode(self) -> int | None:
        """None while it runs; its exit status, or minus the signal that killed it."""
        return None if self._popen is None else self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def close(self) -> None:
        """Close the sentinel (the process must have been reaped)."""
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:
        code = self.exitcode
        state = "not started" if self._popen is None else "running" if code is None else f"exitcode={code}"
        return f"<ExecProcess {self.name!r} pid={self.pid} {state}>"


def close_process(process: Any) -> None:
    """Close a reaped container's process handle (its pidfd or sentinel pipe) now.

    Left to garbage collection, each container that died kept one descriptor
    open for the pool's life, and a stopped pool kept its containers' until
    it was collected. ``ExecProcess`` and multiprocessing's processes have
    ``close()``. loky's process object has one too, but its popen does not
    (its sentinel is closed by a ``multiprocessing.util.Finalize`` when the
    popen is collected); that popen gets a ``close`` that runs the Finalize.
    """
    popen = getattr(process, "_popen", None)
    if popen is not None and not hasattr(popen, "close"):
        popen.close = lambda: _run_finalizers_of(popen)
    process.close()


def _run_finalizers_of(obj: Any) -> None:
    """Run now the ``multiprocessing.util.Finalize`` callbacks registered for *obj* (each runs only once)."""
    from multiprocessing import util

    for finalizer in list(util._finalizer_registry.values()):  # type: ignore[attr-defined]
        ref = getattr(finalizer, "_weakref", None)
        if ref is not None and ref() is obj:
            finalizer()


def _pickle_call(target: Any, args: tuple[Any, ...]) -> tuple[bytes, list[int]]:
    """Pickle ``(target, args)``, with every Connection replaced by its descriptor number."""
    import io
    import pickle
    from multiprocessing.connection import Connection

    fds: list[int] = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, (Connection, ChildEnd)):
                fds.append(obj.fileno())
                return ("connection", obj.fileno(), True, True)
            return None

    with io.BytesIO() as buffer:
        Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((target, args))
        return buffer.getvalue(), fds


def _anonymous_file(data: bytes) -> int:
    """A descriptor of a nameless file holding *data*, positioned at its start."""
    try:
        fd = os.memfd_create("lifepool-boot", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        fd = os.dup(tempfile.TemporaryFile().fileno())
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


_pidfd: bool | None = None


def _has_pidfd() -> bool:
    """Whether ``os.pidfd_open`` works here (Linux 5.3+, and not refused by a sandbox)."""
    global _pidfd
    if _pidfd is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _pidfd = True
        except (AttributeError, OSError):
            _pidfd = False
    return _pidfd


def _interpreter_flags() -> list[str]:
    import subprocess

    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return flags


class ChildEnd:
    """The container's end of its socket, with what the container uses of a Connection.

    ``fileno()``, ``poll()`` and ``close()``: messages go through
    ``_wire.send_bytes`` and ``_wire.Reader``. It spares each container
    importing ``multiprocessing`` (about 30 ms of its start).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a read would not block (data, or the other end closed)."""
        import select

        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _child(header: tuple[Any, ...]) -> None:
    """In the container, called by the bootstrap once ``sys.path`` is the parent's."""
    import pickle

    _path, argv, _name, body, fds = header
    sys.argv[:] = argv
    for fd in fds:
        # Not inherited by what the container execs (the sentinel pipe, if
        # any, must close when this process exits).
        os.set_inheritable(fd, False)

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            kind, fd, _readable, _writable = pid
            if kind != "connection":
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            return ChildEnd(fd)

    import io

    target, args = Unpickler(io.BytesIO(body)).load()
    target(*args)
