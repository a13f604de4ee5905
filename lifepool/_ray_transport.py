"""The driver's end of one Ray container: ``RayTransport`` (see :mod:`lifepool._ray` for the whole picture).

A socketpair the dispatcher reads as it reads a local container's socket:
for a relayed container (another machine) a bridge thread writes the
actor's replies into it in stream order; for a direct one (the driver's
machine) the container holds the other end itself. Imported only by
``lifepool._ray``, after its import of Ray.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import select
import socket
import struct
import threading
from typing import Any

import ray

from . import _ship, _shm, _shmdir, _wire, _worker
from ._backend import ReaderTransport
from ._ray_host import _IO, _OFFSET

logger = logging.getLogger("lifepool")

_POLL_SECONDS = 10.0  # a long poll returns at least this often (an idle container costs one call per period)
_KILL_WAIT = 10.0  # seconds kill() waits for the actor to SIGKILL its container before ray.kill
_REPLY_WAIT = 0.05  # seconds an io call waits for the container's reply (a slower one comes with a poll)
_TAKE_GRACE = 5.0  # seconds beyond _REPLY_WAIT a borrower waits for an io reply itself
_HANDOVER_WAIT = 10.0  # seconds the hand-over of a container's channel may take (see _hand_over)
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
_END_WAIT = 30.0  # seconds the bridge waits for bytes in front of the stream's end (an io reply Ray delivers late)


class RayTransport(ReaderTransport):
    """The driver's end of one actor-hosted container: a socketpair and a pipe fed by a bridge thread.

    The actor's replies (to polls, and to io calls that waited) arrive on
    Ray's threads as futures' callbacks. Their bytes go into the socketpair
    in stream order: an io reply that is next in order is written there at
    once if that cannot block; anything else is queued for the bridge
    thread, so no Ray thread ever blocks on a full socket.
    """

    def __init__(self, actor: Any, started: Any, name: str, rendezvous: socket.socket | None = None) -> None:
        self.actor = actor
        self._started = started  # the ref of actor.start(): the container's pid
        self._rendezvous = rendezvous  # where an actor on this machine takes the container's channel (see _hand_over)
        # "relay": frames cross Ray (io, poll); "direct": the container has the socketpair's other end;
        # "undecided" until the start reply says which (sends wait in _pending meanwhile).
        self._mode = "relay" if rendezvous is None else "undecided"
        self._pending: list[tuple[list[bytes], int]] = []
        self.pid: int | None = None  # (the container's pid is on its node; the container reports it itself)
        self.shared_memory = False  # whether it maps this machine's /dev/shm (known once its actor has started)
        self._shipping = False  # else, whether segments are shipped to and from its node (see _ship)
        self._ours, self._theirs = socket.socketpair()
        self.messages = self._ours
        self.fd = self._ours.fileno()
        self.reader = _wire.Reader(self.fd)
        self._lent = False  # a caller's thread waits for the answer (see lend)
        self._owed: Any = None  # the ref of the lent call's io, whose reply that thread takes
        self._sentinel_r, self._sentinel_w = os.pipe()
        self.sentinel = self._sentinel_r
        self.status: int | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._gone = False
        self._replies: queue.SimpleQueue[tuple[str, concurrent.futures.Future[Any] | None]] = queue.SimpleQueue()
        self._delivering = threading.Lock()  # the socketpair's writer, and the two below
        self._early: dict[int, memoryview] = {}  # bytes that arrived before the bytes in front of them
        self._written = 0  # bytes of the container's stream written into the socketpair (or being written)
        self._writing = False  # the bridge is in a blocking write, outside the lock: only it writes
        self._end: int | None = None  # where the stream ends, once a poll said so (the bridge then waits
        # for io replies still in front of it: Ray may deliver the poll's reply first)
        self._bridge = threading.Thread(target=self._relay, name=f"lifepool-ray-{name}", daemon=True)
        self._bridge.start()

    def _expect(self, kind: str, ref: Any) -> None:
        """Have *ref*'s outcome delivered once Ray has it (on a Ray thread: it never waits on I/O).

        (The lock ``_arrived`` takes is only ever held briefly: see ``_write_through``.)
        """
        ref.future().add_done_callback(lambda future: self._arrived(kind, future))

    def _arrived(self, kind: str, future: concurrent.futures.Future[Any]) -> None:
        """On Ray's thread: an io reply in stream order goes straight into the socketpair if that does
        not block (one thread hop less for a sequential call); everything else goes to the bridge."""
        if kind == "io" and future.exception() is None and future.result().__class__ is bytes:
            try:  # (a reply with shipped segments goes to the bridge: writing them takes a while)
                with self._delivering:  # (held only briefly: see _write_through)
                    self._store(future.result())
                    if self._flush() and self._end is None:
                        return
                kind = "flush"  # (the socket is full, the bridge writing, or waiting for the stream's end)
            except OSError:
                return  # the driver's end is closed (the pool gave up on it)
        self._replies.put((kind, future))

    def _store(self, reply: bytes | tuple[bytes, list[Any]]) -> None:
        """Keep an io reply's bytes (holding ``_delivering``) until the bytes in front of them are written.

        Segments shipped with them are written now (``_ship``), before any of
        the bytes of the frames that name them.
        """
        shipped = None
        if isinstance(reply, tuple):
            reply, shipped = reply
        if reply:
            (offset,) = _OFFSET.unpack_from(reply)
            if offset >= self._written and offset not in self._early:  # (not delivered twice: see _take_reply)
                if shipped:
                    _ship.put(_shmdir.SHM_DIR or "", shipped)
                self._early[offset] = memoryview(reply)[_OFFSET.size :]

    def _flush(self) -> bool:
        """Write the kept bytes that are next in the stream without blocking (holding ``_delivering``).

        False if that would block, or while the bridge is writing (it writes
        the rest). Nobody blocks while holding ``_delivering``: the bridge's
        blocking writes (``_write_through``) happen outside it.
        """
        if self._writing:
            return False
        while self._written in self._early:
            chunk = self._early.pop(self._written)
            try:
                sent = self._theirs.send(chunk, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            self._written += sent
            if sent < len(chunk):
                self._early[self._written] = chunk[sent:]
                return False
        return True

    def _write_through(self) -> None:
        """On the bridge: write the kept bytes that are next in the stream, blocking on a full socket
        without holding ``_delivering`` (the socket's reader may be a borrower that needs it)."""
        while True:
            with self._delivering:
                if self._flush():
                    return
                chunk = self._early.pop(self._written)  # (what the socket did not take)
                self._written += len(chunk)  # (claimed: others leave the stream to the bridge meanwhile)
                self._writing = True
            try:
                self._theirs.sendall(chunk)
            finally:
                with self._delivering:
                    self._writing = False

    def _relay(self) -> None:
        """Write the actor's replies into the socketpair in stream order; at the end, the sentinel."""
        try:
            if self._rendezvous is not None:
                self._hand_over()
            # (Before any frame: the pool learns the pid with ENTERED, and sends calls after READY.)
            self.pid, self.shared_memory, self._shipping, direct = ray.get(self._started)
            if self._rendezvous is not None:
                self._decide("direct" if direct else "relay")
            # Two polls in flight: when one returns, the next already waits in
            # the actor, so a reply is never held up by a poll's submission.
            for _ in range(1 if self._mode == "direct" else 2):  # (a direct container's poll only waits for its end)
                self._expect("poll", self.actor.poll.remote(_POLL_SECONDS))
            while True:
                try:
                    kind, future = self._replies.get(timeout=None if self._end is None else _END_WAIT)
                except queue.Empty:
                    logger.warning("lifepool: the last bytes of a Ray container's stream never came")
                    break
                failed = None
                with self._delivering:
                    if future is None:
                        pass  # a flush: bytes a borrower stored (see _take_reply)
                    elif kind == "poll":
                        offset, data, ended, code, shipped = future.result()
                        if shipped:
                            _ship.put(_shmdir.SHM_DIR or "", shipped)  # (before the bytes that name them)
                        if data:
                            self._early[offset] = memoryview(data)
                        if ended:
                            self._end, self.status = offset + len(data), code
                    elif kind == "io":
                        failed = future.exception()
                        if failed is None:
                            self._store(future.result())
                if failed is not None:  # (outside the lock: it submits the kill)
                    self._io_failed(failed)
                self._write_through()
                if self._end is not None:
                    with self._delivering:
                        if self._written >= self._end:
                            break  # (else an io reply holds bytes in front of the end: wait for it)
                elif kind == "poll":
                    self._expect("poll", self.actor.poll.remote(_POLL_SECONDS))
        except ray.exceptions.RayActorError as error:
            logger.warning("lifepool: the Ray actor of a container died: %s", _first_line(error))
        except ray.exceptions.RayTaskError as error:
            logger.error("lifepool: a container could not start in its Ray actor: %s", error)
        except OSError:
            pass  # the driver's end is closed (the pool gave up on it)
        except BaseException:
            logger.exception("lifepool: the bridge to a Ray container failed")
        finally:
            self._gone = True
            if self._rendezvous is not None:
                self._close_rendezvous()
            try:
                self._theirs.shutdown(socket.SHUT_WR)  # EOF after what was written (relay)
            except OSError:
                pass
            os.write(self._sentinel_w, b"x")

    def _hand_over(self) -> None:
        """Before the start reply: hand the container's end of the socketpair to an actor on this machine.

        Its actor connects to ``_rendezvous`` (a Unix socket in this machine's
        ``/dev/shm``) if it can; one on another machine cannot, and its start
        reply comes first. Either way the start reply says which it took.
        """
        rendezvous = self._rendezvous
        assert rendezvous is not None
        wake_r, wake_w = socket.socketpair()
        waking = threading.Lock()  # (the callback may come as the hand-over ends: never into a closed descriptor)

        def wake(_: Any) -> None:
            with waking:
                if wake_w.fileno() >= 0:
                    wake_w.send(b"x")

        self._started.future().add_done_callback(wake)
        try:
            readable, _, _ = select.select([rendezvous, wake_r], [], [])
            if rendezvous in readable:
                link, _ = rendezvous.accept()
                with link:
                    credentials = link.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
                    if _CREDENTIALS.unpack(credentials)[1] == os.getuid():  # (only our user's processes)
                        link.settimeout(_HANDOVER_WAIT)
                        socket.send_fds(link, [b"x"], [self._theirs.fileno()])
        except OSError:
            pass  # (the relay, then: the actor says so)
        finally:
            self._close_rendezvous()
            with waking:
                wake_w.close()
            wake_r.close()

    def _close_rendezvous(self) -> None:
        if self._rendezvous is not None:
            close_rendezvous(self._rendezvous)

    def _decide(self, mode: str) -> None:
        """The start reply came: send what waited for it, in order, then send the usual way."""
        if mode == "direct":
            self._theirs.close()  # (the container holds it now: EOF once the container is gone)
        while True:
            with self._lock:
                waiting, self._pending = self._pending, []
                if not waiting:
                    self._mode = mode
                    return
            for frames, signum in waiting:
                try:
                    if frames:
                        self._send(mode, frames)
                    if signum:
                        self._io([], signum, 0)
                except OSError:
                    pass  # (it is dying: its sentinel will tell)

    def send(self, frames: list[bytes]) -> None:
        mode = self._mode
        if mode == "undecided":
            with self._lock:
                if self._mode == "undecided":
                    self._pending.append((frames, 0))
                    return
            mode = self._mode
        self._send(mode, frames)

    def _send(self, mode: str, frames: list[bytes]) -> None:
        if mode == "direct":
            if len(frames) == 1:
                _wire.send_bytes(self.fd, frames[0])
            else:
                _wire.send_many(self.fd, frames)
        elif self.shared_memory:
            self._io(frames, 0, _REPLY_WAIT)
        elif self._shipping:  # (another node: the segments travel with the call, see _ship)
            shipped = _shipped(frames)
            try:
                self._io(frames, 0, _REPLY_WAIT, shipped)
            finally:
                for _, buffer in shipped:
                    buffer.release()  # (Ray has copied them: the call is submitted)
        else:
            self._io([_carried(data) for data in frames], 0, _REPLY_WAIT)

    def _io(self, frames: list[bytes], signum: int, wait: float, shipped: list[Any] | None = None) -> None:
        if self._gone:
            raise BrokenPipeError("the container has gone")
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            blob = _wire.stream(frames, head=_IO.pack(seq, signum, wait))
            ref = self.actor.io.remote(blob, shipped) if shipped else self.actor.io.remote(blob)
        if wait:
            if self._lent and self._owed is None:
                self._owed = ref  # the borrower takes the reply itself (see recv)
            else:
                self._expect("io", ref)

    def lend(self, lent: bool) -> None:
        """While lent, the borrower's thread gets the io reply with ``ray.get``: no callback on Ray's thread.

        (That callback, and the future it completes, cost the driver about as
        much CPU as the call itself.) Taken back with the reply still owed
        (an interrupt), the reply goes the usual way.
        """
        self._lent = lent
        if not lent and self._owed is not None:
            self._expect("io", self._owed)
            self._owed = None  # (only now: a Ctrl-C in between at worst delivers the reply twice)

    def recv(self) -> bytes | bytearray:
        if self._owed is not None and not self.reader.ready():
            self._take_reply()
        frame: bytes | bytearray = self.reader.recv()
        return frame

    def _take_reply(self) -> None:
        """Wait for the owed io reply on this thread and put its bytes in the stream.

        Whatever cuts this short (a Ctrl-C on any line), the reply is not
        lost: ``_owed`` is cleared only once its bytes are stored or on their
        way through a callback (lend(False) sends it that way if still set),
        and a reply delivered twice is dropped by its offset the second time.
        """
        ref = self._owed
        stored = flushed = False
        try:
            reply = ray.get(ref, timeout=_REPLY_WAIT + _TAKE_GRACE)
            with self._delivering:  # (never held across a blocking write: see _write_through)
                self._store(reply)
                stored = True
                flushed = self._flush() and self._end is None  # (else the bridge waits for it: tell it)
        except ray.exceptions.GetTimeoutError:
            pass  # (Ray is slow today: it comes the usual way)
        except ray.exceptions.RayError as error:
            stored = flushed = True
            self._io_failed(error)
        finally:
            if not stored:
                self._expect("io", ref)
            self._owed = None
            if not flushed:
                self._replies.put(("flush", None))  # (the socket is full: the bridge writes the rest)

    def _io_failed(self, error: BaseException) -> None:
        """An io call failed. The actor died: its poll says so. Anything else (the relay itself failed,
        the actor unreachable) may have lost bytes of the stream, so the container is lost: kill it."""
        if isinstance(error, ray.exceptions.RayActorError) and not isinstance(
            error, ray.exceptions.ActorUnavailableError
        ):
            return
        logger.error("lifepool: a call could not reach its Ray container, which is stopped: %s", _first_line(error))
        self.kill()

    def poll(self) -> bool:
        readable, _, _ = select.select([self.fd], [], [], 0)
        return bool(readable)

    def interrupt(self) -> None:
        if self._mode == "undecided":
            with self._lock:
                if self._mode == "undecided":
                    self._pending.append(([], _worker.INTERRUPT_SIGNAL))  # (after the frames sent before it)
                    return
        try:
            self._io([], _worker.INTERRUPT_SIGNAL, 0)
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL the container through its actor (no more of its code runs), then end the actor."""
        actor = self.actor
        started, _ = ray.wait([self._started], timeout=0)
        done = actor.kill_child.remote() if started else None  # (not placed yet: nothing to wait for)

        def finish() -> None:
            try:
                if done is not None:
                    ray.wait([done], timeout=_KILL_WAIT)
            finally:
                ray.kill(actor, no_restart=True)

        threading.Thread(target=finish, name="lifepool-ray-kill", daemon=True).start()

    def end_reading(self) -> None:
        _wire.end_reading(self.fd)

    def close_messages(self) -> None:
        self._ours.close()

    def reap(self) -> int | None:
        self._bridge.join()
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone (killed, or its node lost)
            pass
        self._theirs.close()
        self._ours.close()
        os.close(self._sentinel_r)
        os.close(self._sentinel_w)
        return self.status

    def forget(self) -> None:
        """In a forked child: close this copy's descriptors."""
        self._ours.close()
        self._theirs.close()
        if self._rendezvous is not None:
            self._rendezvous.close()  # (not unlinked: the parent's)


def _shipped(frames: list[bytes]) -> list[tuple[str, Any]]:
    """The segments *frames* name, mapped to ship with them (to a container on another node: ``_ship``)."""
    shipped: list[tuple[str, Any]] = []
    for data in frames:
        names = _ship.names_in(data)  # (a map's chunk nests a message per chunk)
        if names:
            shipped += _ship.mapped(_shmdir.SHM_DIR or "", names)
    return shipped


def _carried(data: bytes) -> bytes:
    """A frame for a container without this machine's shared memory: its body's segments carried inside."""
    head = _wire.HEADER.size
    if len(data) > head and _wire.has_segments(memoryview(data)[head:]):
        return data[:head] + _shm.inlined(memoryview(data)[head:])  # (the driver still discards the segments)
    return data


def close_rendezvous(rendezvous: socket.socket) -> None:
    """Close and unlink a rendezvous socket (see ``_hand_over``), once."""
    if rendezvous.fileno() >= 0:
        path = rendezvous.getsockname()
        rendezvous.close()
        _shmdir._unlink(os.path.basename(path))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
