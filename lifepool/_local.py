"""The local backend: each container is a process on this machine, talking over one socket.

    LocalBackend.start()                               container process
    --------------------                               -----------------
    context.Pipe(duplex=True): a socketpair
    context.Process(_worker.main, child end, ...) ──►  _worker.main(conn, index, target, options)
    LocalTransport: the parent's end
      messages = the socket          ◄── frames ──►    the container's end
      sentinel = pidfd (or a pipe)   ◄── readable once the process exited
      interrupt() = INTERRUPT_SIGNAL, kill() = SIGKILL, reap() = waitpid + close + sweep shm
    with forward_output (see _output): three pipes ─►  fd 1, fd 2, a logging handler
      the read ends stay here (a Forwarder thread;     (write ends, passed as Connections so
      recv() drains them on RESULT/ITEM frames)         that every start method hands them over)

The context is lifepool's own launcher (``_launch.ExecContext``, the default
``start_method="exec"``) or loky's / the standard library's; all of them give
a ``Process`` with ``sentinel``, ``pid``, ``join`` and ``exitcode``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from . import _launch, _output, _shmdir, _wire, _worker
from ._backend import Backend, ReaderTransport


class LocalTransport(ReaderTransport):
    """One container process and the parent's end of its socket."""

    def __init__(self, process: Any, conn: Any, output: Any = None) -> None:
        self.process = process
        self.output = output  # an _output.ContainerOutput, or None (forward_output=False)
        self.pid: int = process.pid
        self.messages = conn
        self.sentinel = process.sentinel
        self.fd = conn.fileno()  # written with _wire.send_bytes
        self.reader = _wire.Reader(self.fd)
        self.recv = self.reader.recv  # type: ignore[method-assign]  # (the fast path calls it once per call)
        if output is not None:
            output.pid = self.pid
            self.recv = _output.receiving(self.reader, output)  # type: ignore[method-assign]

    def send(self, frames: list[bytes]) -> None:
        if len(frames) == 1:
            _wire.send_bytes(self.fd, frames[0])
        else:
            _wire.send_many(self.fd, frames)

    def poll(self) -> bool:
        return bool(self.messages.poll())

    def interrupt(self) -> None:
        self._signal(_worker.INTERRUPT_SIGNAL)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def end_reading(self) -> None:
        """EOF alone would wait for every copy of the container's end to close.

        Another process may hold one (a sibling container forked by
        multiprocessing's fork server, say). Or the process may not be dead at
        all: when the fork server dies, every sentinel it gave reports an
        exit. A reader blocked in ``recv`` (the dispatcher draining, a
        borrowing caller) would then wait forever.
        """
        _wire.end_reading(self.fd)

    def close_messages(self) -> None:
        self.messages.close()

    def reap(self) -> int | None:
        process = self.process
        process.join()
        code: int | None = process.exitcode
        if self.output is not None:
            # What it printed before it died is forwarded before its calls fail
            # (the pipe's end may come later: a subprocess of it may hold it).
            self.output.drain()
        # Its process handle (a pidfd) goes now, not when the pool is collected:
        # a long-lived pool would otherwise keep one descriptor per crash.
        _launch.close_process(process)
        # What it put in shared memory and nobody decoded (everything it sent has been read).
        _shmdir.sweep(os.getpid(), creator_pid=self.pid)
        return code

    def forget(self) -> None:
        """In a forked child: *process* is not this child's to join or terminate.

        multiprocessing would otherwise, at the child's exit, send SIGTERM to
        a daemonic container of the parent's (start methods other than "exec").
        """
        if self.messages is not None:
            self.messages.close()
        process_module = sys.modules.get("multiprocessing.process")
        if process_module is not None:
            process_module._children.discard(self.process)


class LocalBackend(Backend):
    """Containers as local processes, started through *context* (see ``_options.context``)."""

    name = "local"

    def __init__(self, context: Any) -> None:
        self.context = context
        self._forwarder: _output.Forwarder | None = None

    def start(self, index: int, target_blob: bytes, options: dict[str, Any]) -> LocalTransport:
        output_options = options.get("output")  # (the parent's: not sent to the container)
        options = {**options, "parent_pid": os.getpid(), "output": None}
        with _starting:  # no fork of this process copies the start's descriptors (see _starting)
            parent_conn, child_conn = self.context.Pipe(duplex=True)
            read_ends: tuple[int, ...] = ()
            write_ends: list[Any] = []
            args: tuple[Any, ...] = (child_conn, index, target_blob, options)
            if output_options is not None:
                if self._forwarder is None:
                    self._forwarder = _output.Forwarder(options["pool_name"])
                from multiprocessing.connection import Connection  # (not at import: a template imports this module)

                read_ends, writes = self._forwarder.pipes()
                # As Connections, every start method hands them over as it does
                # the socket: pass_fds for "exec" and spawn, fd passing for the
                # fork server and loky.
                write_ends = [Connection(fd, readable=False) for fd in writes]
                args = (*args, (*write_ends, _output.parent_log_level()))
            process = self.context.Process(
                target=_worker.main,
                args=args,
                name=f"lifepool-{options['pool_name']}-{index}",
            )
            try:
                process.start()
            except BaseException:
                parent_conn.close()
                child_conn.close()
                for end in write_ends:
                    end.close()
                for fd in read_ends:
                    os.close(fd)
                raise
            child_conn.close()
            for end in write_ends:
                end.close()  # (only the container holds them now: EOF when it and its children are gone)
        output = None
        if output_options is not None and self._forwarder is not None:
            output = _output.ContainerOutput(
                self._forwarder, read_ends, output_options.prefix(index, process.pid), index
            )
            self._forwarder.add(output)
        return LocalTransport(process, parent_conn, output)

    def close(self) -> None:
        """Forward what the containers left in their pipes, close the pipes, stop the reader thread."""
        if self._forwarder is not None:
            self._forwarder.close()


# Held while a container starts, and by every fork of this process (os.fork,
# multiprocessing's "fork") for its duration. A fork in another thread in the
# middle of a start would copy the start's descriptors into a child that never
# execs, and subprocess waits for EOF on its exec-status pipe: the dispatcher
# hung for as long as that child lived (a multiprocessing.Pool's worker: the
# pool's life). A fork waits for the start instead, a few milliseconds.
_starting = threading.RLock()


def _after_fork_in_child() -> None:
    _starting.release()  # (taken by this thread before the fork)


os.register_at_fork(before=_starting.acquire, after_in_parent=_starting.release, after_in_child=_after_fork_in_child)
