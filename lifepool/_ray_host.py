"""The Ray actor's side of the Ray backend: ``_Host``, the parent of one container process on its node.

It relays bytes between the driver and the container (see :mod:`lifepool._ray`
for the whole picture): ``start`` launches the container with the exec start
method, ``io`` applies the driver's sends in sequence order and waits a moment
for the reply, ``poll`` is the long poll for everything else, ``kill_child``
stops the container. It never decodes a frame (for a container on another
node than the driver it looks for the shared-memory headers of the messages
it relays, to ship the segments they name: :mod:`lifepool._ship`). ``_Actor`` is the class as a
Ray actor, with its concurrency groups (here, so that a Ray worker importing
this module gets the same class the driver made).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import threading
import time
from typing import Any

import ray

from . import _launch, _ship, _shmdir, _wire, _worker

_BATCH_BYTES = 64 << 20  # a poll returns at most about this much (the rest comes with the next one)
_BULK = 64 << 10  # a poll that has read this much is relaying a big frame: it waits for more ...
_TRICKLE = 0.005  # ... up to this many seconds at a time
_REPLY_BYTES = 1 << 20  # an io call's reply carries at most about this much (the rest: polls)
_STEP_ASIDE = 0.002  # seconds the poll stays off the socket after an io call's wait
_WRITE_STUCK = 0.01  # seconds a waiting io call's write may take before the poll drains the container (see io)
_HANDOVER_WAIT = 10.0  # seconds the actor waits for the driver to hand it the container's channel (see start)
_IO = struct.Struct("<Qid")  # an io call's head: its seq, a signal to send after its frames (0: none), the wait
_OFFSET = struct.Struct("<Q")  # an io reply's head: where its bytes start in the container's stream

_UNKNOWN = object()


class _Host:
    """The Ray actor: parent of one container process, relaying bytes between it and the driver.

    Two readers share the container's socket, one at a time (``_reading``):
    an ``io`` call that asked to wait for the reply, and the long ``poll``,
    which steps aside while such a waiter is waiting. Every chunk read is
    returned with its offset in the container's byte stream, so the driver
    puts the chunks back in order whichever reply Ray delivers first.
    """

    def __init__(self) -> None:
        self._started = threading.Event()
        self._transport: Any = None
        self._error: BaseException | None = None
        self._writing = threading.Lock()  # sends apply in seq order, one at a time
        self._next_seq = 0
        self._held: dict[int, tuple[memoryview, int]] = {}
        self._reading = threading.Condition()  # the socket's one reader at a time; the waiter flag
        self._waiter = False  # an io call is waiting for its reply: poll steps aside
        self._writing_since: float | None = None  # ... but not once its write has gone on for _WRITE_STUCK (see io)
        self._waited = 0.0  # when the last waiter stopped waiting
        self._offset = 0  # bytes read from the container so far
        self._eof = False
        self._shut = False  # end_reading done (its sentinel fired)
        self._code: Any = _UNKNOWN  # its exit status once reaped
        self._ship_dir: str | None = None  # the container's segments, shipped to and from the driver (see _ship)
        self._scanner = _ship.Scanner()
        self._direct = False  # the container talks to the driver over a channel of its own (see start)

    def start(self, index: int, target_blob: bytes, options: dict[str, Any]) -> tuple[int, bool, bool, bool]:
        """Start the container on this node (exec start method).

        Returns its pid, whether it shares the driver's ``/dev/shm``, whether
        its segments are shipped (it has a directory of its own in this
        node's: ``_ship``), and whether it is direct: on the driver's machine,
        the driver hands over its end of a socketpair (``rendezvous``, a Unix
        socket the driver listens on), and the container reads and writes
        that as a local container does its socket. Its calls then never
        cross Ray; this actor stays its parent (its exit, its kill, its
        interrupts).
        """
        from ._local import LocalBackend

        shared = _can_open_probe(options.pop("shm_probe", None))
        rendezvous = options.pop("rendezvous", None)
        if options.pop("ship", False) and not shared:
            self._ship_dir = _ship.make_dir()
        options = {**options, "shared_memory": shared, "shm_dir": self._ship_dir}
        try:
            channel = _take_channel(rendezvous) if shared and rendezvous else None
            context: Any = _launch.ExecContext() if channel is None else _HandedContext(channel)
            self._direct = channel is not None
            # The container inherits this thread's mask: blocked until it has its own policy (see _worker.main).
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self._transport = LocalBackend(context).start(index, target_blob, options)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            return int(self._transport.pid), shared, self._ship_dir is not None, self._direct
        except BaseException as error:
            self._error = error
            _ship.remove_dir(self._ship_dir)
            raise
        finally:
            self._started.set()

    def _ready(self) -> Any:
        self._started.wait()
        if self._transport is None:
            raise RuntimeError(f"the container did not start: {self._error!r}")
        return self._transport

    def io(self, blob: bytes, shipped: list[tuple[str, Any]] | None = None) -> bytes | tuple[bytes, list[Any]]:
        """Apply one send: ``_IO`` (seq, signal, wait) then the frames' bytes, in seq order.

        Writes the frames to the container, then sends it the signal (0:
        none). With wait > 0 and no other io call waiting, waits up to that
        many seconds for the container to write, and returns what it wrote
        (its stream offset, ``_OFFSET``, then the bytes; ``b""`` for
        nothing): a sequential call's result comes back in this reply, one
        Ray round trip, instead of through the next poll. (One bytes
        argument and a bytes result: Ray serializes those fastest.)
        *shipped*: the segments the frames name, written first; a reply
        whose bytes name segments is ``(reply, their buffers)`` (``_ship``).
        """
        transport = self._ready()
        if shipped:
            _ship.put(self._ship_dir or "", shipped)
        seq, signum, wait = _IO.unpack_from(blob)
        waiting = False
        if wait > 0:
            with self._reading:
                if not self._waiter and not self._eof:
                    self._waiter = waiting = True  # (before the write: the reply is this call's to read)
                    self._writing_since = time.monotonic()
        try:
            self._write(transport, seq, memoryview(blob)[_IO.size :], signum)
            if not waiting:
                return b""
            with self._reading:
                # A write that blocks (a big frame, the container busy writing
                # a big result) needs the poll to drain the container's output
                # meanwhile, or both block: the poll steps aside only from here
                # on, or while the write is quick (a small call's: no extra wake).
                self._writing_since = None
            fd = transport.fd
            readable, _, _ = select.select([fd, transport.sentinel], [], [], wait)
            with self._reading:
                waiting = self._waiter = False
                self._waited = time.monotonic()
                if fd not in readable:
                    self._reading.notify_all()  # (the reply comes through the poll: no need to wait for it)
                    return b""
                data = os.read(fd, _REPLY_BYTES)  # (no one else reads while we wait, so this does not block)
                if not data:
                    self._eof = True
                    return b""
                offset = self._offset
                self._offset += len(data)
                shipped = self._shipped(data)
            return (_OFFSET.pack(offset) + data, shipped) if shipped else _OFFSET.pack(offset) + data
        finally:
            if waiting:  # (the write or the select failed)
                with self._reading:
                    self._waiter, self._writing_since = False, None
                    self._reading.notify_all()

    def _write(self, transport: Any, seq: int, data: memoryview, signum: int) -> None:
        with self._writing:
            self._held[seq] = (data, signum)
            while self._next_seq in self._held:
                data, signum = self._held.pop(self._next_seq)
                self._next_seq += 1
                try:
                    if data:
                        _wire.write_stream(transport.fd, data)
                    if signum:
                        transport.interrupt() if signum == _worker.INTERRUPT_SIGNAL else transport._signal(signum)
                except OSError:
                    pass  # it is dying: the poll reports its end

    def _take(self, fd: int, limit: int) -> tuple[int, bytes]:
        """Read what is there (holding ``_reading``): ``(its offset, the bytes)``.

        Never blocks on an empty socket; once a read fills its buffer (a big
        frame on its way), keeps reading while more comes within
        ``_TRICKLE`` seconds, so a big result crosses in a few large replies
        instead of one per socket buffer's worth.
        """
        parts: list[bytes] = []
        size = 0
        wait = 0.0
        while size < limit and not self._eof and select.select([fd], [], [], wait)[0]:
            data = os.read(fd, 1 << 20)
            if not data:
                self._eof = True
                break
            parts.append(data)
            size += len(data)
            wait = _TRICKLE if size >= _BULK else 0.0
        start, self._offset = self._offset, self._offset + size
        return start, b"".join(parts)

    def _shipped(self, data: bytes) -> list[Any]:
        """The segments named in the frames of *data*, next in the stream (holding ``_reading``), taken to ship."""
        if self._ship_dir is None:
            return []
        names = self._scanner.feed(data)
        return _ship.taken(self._ship_dir, names) if names else []

    def _aside_for(self) -> float:
        """How long the poll stays off the socket from now (0: it may read).

        It sleeps on its own timer, not woken by each io call's end: a wake
        per call would take the GIL just as that call returns its reply.
        """
        now = time.monotonic()
        if not self._waiter:
            return max(self._waited + _STEP_ASIDE - now, 0.0)
        if self._writing_since is None:
            return _STEP_ASIDE  # (its select: it wakes the poll if it ends without the reply)
        return max(self._writing_since + _WRITE_STUCK - now, 0.0)

    def _write_stuck(self) -> bool:
        return self._writing_since is not None and time.monotonic() >= self._writing_since + _WRITE_STUCK

    def kill_child(self) -> None:
        if self._transport is not None:
            self._transport.kill()
        _ship.remove_dir(self._ship_dir)  # (before ray.kill, which runs nothing)

    def poll(self, timeout: float) -> tuple[int, bytes, bool, int | None, list[Any]]:
        """``(offset, bytes the container wrote, whether it has ended, its exit status, shipped segments)``,
        waiting up to *timeout*."""
        transport = self._ready()
        if self._direct:
            return self._watch(transport, timeout)
        fd, sentinel = transport.fd, transport.sentinel
        deadline = time.monotonic() + timeout
        while True:
            with self._reading:
                # Step aside while an io call waits, and for a moment after
                # one (the next call's io comes soon): two readers woken by
                # the same reply would only fight over it.
                while (aside := self._aside_for()) > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._reading.wait(min(left, aside))
                if not self._waiter or self._write_stuck():
                    start, data = self._take(fd, _BATCH_BYTES)
                    if data:
                        return start, data, False, None, self._shipped(data)
                    if self._eof:
                        if self._code is _UNKNOWN:
                            self._code = transport.reap()  # (the socket closed: it has exited, or is about to)
                            _ship.remove_dir(self._ship_dir)
                        return self._offset, b"", True, self._code, []
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._offset, b"", False, None, []
            readable, _, _ = select.select([fd, sentinel], [], [], remaining)
            if sentinel in readable and not self._shut:
                self._shut = True
                _wire.end_reading(fd)  # (what it wrote, then EOF, whoever else holds a copy)

    def _watch(self, transport: Any, timeout: float) -> tuple[int, bytes, bool, int | None, list[Any]]:
        """A direct container's poll: nothing to relay, only its end (up to *timeout*)."""
        if self._code is _UNKNOWN:
            readable, _, _ = select.select([transport.sentinel], [], [], timeout)
            if not readable:
                return 0, b"", False, None, []
            self._code = transport.reap()
        return 0, b"", True, self._code, []


class _HandedContext(_launch.ExecContext):
    """The exec launcher, with the container's end of its channel handed over by the driver (a descriptor).

    The actor's own end of the channel is a spare socket nobody writes to:
    a direct container's bytes go to the driver and come from it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def Pipe(self, duplex: bool = True) -> tuple[Any, Any]:  # type: ignore[override]  # (multiprocessing's names)
        from multiprocessing.connection import Connection

        spare, other = socket.socketpair()
        other.close()
        return Connection(spare.detach()), Connection(self._fd)


def _take_channel(rendezvous: str) -> int | None:
    """The container's channel, handed over by the driver through the Unix socket *rendezvous*; None if not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as link:
            link.settimeout(_HANDOVER_WAIT)
            link.connect(rendezvous)
            _, fds, _, _ = socket.recv_fds(link, 16, 1)
    except OSError:
        return None  # (another machine after all, or the driver gave up: the relay)
    return fds[0] if fds else None


def _can_open_probe(name: str | None) -> bool:
    if name is None or _shmdir.SHM_DIR is None or not name.startswith(_shmdir.PREFIX) or "/" in name:
        return False
    try:
        os.close(os.open(os.path.join(_shmdir.SHM_DIR, name), os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)))
    except OSError:
        return False
    return True


_Host.io = ray.method(concurrency_group="io")(_Host.io)  # type: ignore[method-assign]
_Host.poll = ray.method(concurrency_group="poll")(_Host.poll)  # type: ignore[method-assign, assignment]
_Host.kill_child = ray.method(concurrency_group="ctl")(_Host.kill_child)  # type: ignore[method-assign, assignment]
_Actor = ray.remote(concurrency_groups={"io": 2, "poll": 1, "ctl": 1})(_Host)  # type: ignore[call-overload]
