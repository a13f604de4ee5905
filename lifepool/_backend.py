"""The seam between scheduling and an engine: what the dispatcher needs from "a container".

    scheduling (lifepool/_schedule/)                 a backend (lifepool/_local.py, ...)
    --------------------------------                 -----------------------------------
    Backend.start(index, target, options) ─────────► a Transport: the parent's end of one
                                                     container that runs lifepool/_worker.py
    select() on transport.messages ◄──────────────── readable: frames arrived (recv, ready)
    select() on transport.sentinel ◄──────────────── readable: the container is gone
    transport.send(frames) ────────────────────────► CALL / INTERRUPT / REVOKE / CREDIT / EXIT
    transport.lend(True / False) ──────────────────► a caller's thread reads the answer (fast path)
    transport.interrupt() ─────────────────────────► "read your INTERRUPT/REVOKE frames now"
    transport.kill() ──────────────────────────────► stop now (SIGKILL locally)
    transport.reap() ──────────────────────────────► exit status, every handle released

The dispatcher speaks lifepool's frame protocol (``_wire``) over the
transport and never sees a pid, a pipe or an engine's API: the container
program on the far end is the same for every backend, so the lifecycle,
interrupts and errors behave the same everywhere.

What a second engine implements is this module's two classes. Its transport
must give the dispatcher two objects it can ``select()`` on (anything with a
``fileno()``): one readable when messages may be waiting, one readable once
the container has died. An engine without file descriptors of its own (Ray)
bridges into a socketpair from a thread of its own; the dispatcher stays one
thread sleeping in one ``select``, with no polling.
"""

from __future__ import annotations

import abc
from typing import Any


class Transport(abc.ABC):
    """The parent's end of one container: owned by the dispatcher (and, for one call, a borrower)."""

    pid: int | None  # shown in errors and status (None where an engine has no process id)
    messages: Any  # selectable: readable when recv() may return without blocking
    sentinel: Any  # selectable: readable once the container is gone
    # Forwarding of the container's stdout/stderr/logging (see _output), or None: the
    # backend's business; a transport that forwards drains it before handing on a result.
    output: Any = None

    @abc.abstractmethod
    def send(self, frames: list[bytes]) -> None:
        """Send *frames* in order (one write where possible); raise OSError if the container is gone."""

    @abc.abstractmethod
    def recv(self) -> bytes | bytearray:
        """The next frame (blocking); EOFError or OSError once the container has gone."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether a whole frame was read ahead (``select`` would not report it)."""

    @abc.abstractmethod
    def buffered(self) -> bool:
        """Whether any bytes were read ahead."""

    def lend(self, lent: bool) -> None:  # noqa: B027 - optional: most engines need nothing here
        """The fast path lends the container to a caller's thread for one call (True), then takes it back (False).

        While lent, that thread sends the call and reads its answer with
        :meth:`recv` itself; an engine may hand the answer to it directly
        instead of through ``messages``. From ``lend(False)`` on, every
        answer still owed must reach ``messages`` as usual.
        """

    @abc.abstractmethod
    def poll(self) -> bool:
        """Whether more data can be read without blocking (only used while draining a dead container)."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Make the container read the INTERRUPT and REVOKE frames sent to it, now."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the container at once, running no more of its code."""

    @abc.abstractmethod
    def end_reading(self) -> None:
        """The container is dead: from now on recv() ends where what it sent ends."""

    @abc.abstractmethod
    def close_messages(self) -> None:
        """Close the message channel (after EOF, or at the end)."""

    @abc.abstractmethod
    def reap(self) -> int | None:
        """After the sentinel fired: wait for the end, release every handle, return the exit status.

        The status is the exit code, or minus the signal that killed it, or
        None where the engine cannot tell.
        """

    @abc.abstractmethod
    def forget(self) -> None:
        """In a process forked from the parent: close this copy's handles, touch nothing else."""


class ReaderTransport(Transport):
    """A transport whose frames arrive on a socket this process reads with a ``_wire.Reader``.

    The local backend's (the container's own socket) and the Ray backend's
    (a socketpair its bridge thread feeds) both are; the subclass sets
    ``self.reader``, and may set ``self.recv`` to a bound method of its own
    (the fast path calls it once per call).
    """

    reader: Any  # a _wire.Reader over the socket

    def recv(self) -> bytes | bytearray:
        frame: bytes | bytearray = self.reader.recv()
        return frame

    def ready(self) -> bool:
        return bool(self.reader.ready())

    def buffered(self) -> bool:
        return bool(self.reader.buffered())


class Backend(abc.ABC):
    """An engine that starts containers."""

    name: str
    # Whether the pool encodes big buffers into this machine's shared memory
    # (``_shm``). When False, it encodes its calls inline and tells the
    # containers to do the same. An engine with containers elsewhere may keep
    # it True if its transports carry the segments' contents to those (Ray's).
    shared_memory: bool = True
    # Seconds a container that is still starting (none of the user's code has
    # run in it: its target is not even unpickled) may keep a closing pool
    # waiting once nothing is left to run; then it is killed. None: wait for
    # it, for an engine whose starts always end (a local process boots or
    # fails). An engine that can leave a start pending for ever (Ray, for an
    # actor no node can place) sets a bound, so a pool's close never hangs.
    closing_start_wait: float | None = None

    def open(self, containers: int) -> None:  # noqa: B027 - optional: most engines need no set-up
        """A pool of up to *containers* containers will use this engine (called once per pool, before any start)."""

    @abc.abstractmethod
    def start(self, index: int, target_blob: bytes, options: dict[str, Any]) -> Transport:
        """Start container *index* running ``_worker.main`` with the pool's target and options.

        Called on the dispatcher thread (SIGINT and SIGTERM blocked); returns
        once the container is on its way, without waiting for it to boot.
        An exception here counts as the container failing to enter.
        """

    def close(self) -> None:  # noqa: B027 - optional: most engines hold nothing per pool
        """The pool is closed: release what the engine holds for it (nothing, by default).

        Called once per :meth:`open`, when the pool's dispatcher ends.
        """
