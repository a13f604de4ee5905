"""The Ray backend: each container is a Ray actor hosting a real lifepool container process on its node.

    driver (the pool's dispatcher)              Ray actor _Host (any node)              container process
    ------------------------------              --------------------------              -----------------
    RayBackend.start()
      actor = _Host.options(...).remote()
      actor.start.remote(index, target, opts) ─► LocalBackend(exec).start() ──────────► _worker.main (same
    RayTransport                                   (the actor is the container's          program as locally)
      send(frames) ─ actor.io.remote(blob) ──────►  parent: a dead actor means exit
                     (group "io", two threads,     hooks with ParentExitedError)
                      writes in seq order)         writes the frames to its socket ───►
        io reply ◄──────────────────────────────── waits (50 ms) for what it writes back ◄──
      bridge thread: actor.poll.remote() ◄──────── the rest, batched (a long poll, ◄──
        writes chunks into a socketpair,           group "poll")
        in stream order (by offset)
      messages = the socketpair's driver end (the dispatcher's selector and Reader, as locally)
      sentinel = a pipe the bridge writes once the container exited (code) or the actor died (None)
      interrupt() = io(seq, [], INTERRUPT_SIGNAL): after the frames sent before it, as locally
      kill()      = actor.kill_child (group "ctl") then ray.kill(actor)
      reap()      = joins the bridge, closes the socketpair and pipe, ray.kill(actor)

On the driver's machine the relay is skipped (``_hand_over``): the actor
connects to a Unix socket the driver made for it in ``/dev/shm``, takes the
socketpair's other end (``SCM_RIGHTS``) and starts the container on it, so
the container reads and writes the driver's socketpair as a local container
does its socket; ``send`` writes there, and only interrupts, the kill and
the container's exit (a poll that waits for it) go through Ray.

Why an actor hosts a process instead of being the container. An actor runs
its methods on Ray's threads, in a worker Ray owns: Ray installs its own
signal handling there, never runs a teardown hook on ``ray.kill``,
``ray.shutdown()`` or a dead driver, and cannot interrupt a running sync
method (``ray.cancel`` does not). The container program (``_worker.py``)
already has all of that right: its signal policy, interrupts, exit hooks on
every path, batching and streams. Hosting it unchanged keeps one program for
every backend, so the guarantees are the same code, and the Ray side is only
a relay of bytes: the actor never decodes a frame.

The frame stream is relayed as raw bytes (whatever the container wrote to its
socket, in the order written); the driver's ``Reader`` parses it exactly as it
parses a local socket. Sends carry a sequence number and the actor applies
them in order, whatever order Ray runs them in. A send waits in the actor
for the container's answer and returns it (a sequential call is one Ray
round trip, like a raw actor call); what comes later comes with a poll.
A blocking call on a lent container (the fast path, ``Transport.lend``)
takes that reply with ``ray.get`` on the caller's own thread; other replies
arrive as callbacks on Ray's io thread.
Every chunk carries its offset in the stream, so the driver puts io replies
and polls back in order.

Shared memory (``_shm``) is node-local. A container whose actor can open a
probe file the driver made in its ``/dev/shm`` (same machine, same user)
shares it: a big argument or result is written once into a segment and
mapped by the other side, as locally, and only its name crosses Ray (a
256 MB array no longer makes four copies through frames). Elsewhere (another
node) the segments themselves are shipped (``_ship``): out-of-band buffers
of the io call or reply carrying the frame that names them (Ray's object
store moves them), written back as segments of the same name on the other
side. Without ``/dev/shm`` on either side, the container encodes inline and
the driver carries the segments' contents inside the frames it sends
(``_shm.inlined``). Until the actor's start reply says which, the transport
sends inline.

Ray's own restarts (``max_restarts``) are not used: a restarted actor would
run the enter hook behind the pool's back. A dead actor is a dead container;
the dispatcher fails (or retries) its calls and its capacity rule starts a
replacement, as for a local process.

The actor's side, ``_Host``, is ``lifepool/_ray_host.py``; this module is
the driver's (``RayTransport``, ``RayBackend``). Ray is imported only by
these two, and they only when ``backend="ray"`` or
``lifepool.RayBackend`` is used.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import secrets
import select
import socket
import struct
import threading
from typing import Any

from . import _ship, _shm, _shmdir, _wire, _worker
from ._backend import Backend, ReaderTransport

logger = logging.getLogger("lifepool")

try:
    import ray
except ImportError as error:  # pragma: no cover - exercised in a subprocess test without ray
    raise ImportError('backend="ray" needs Ray: pip install "lifepool[ray]" (or pip install "ray>=2.9")') from error

from ._ray_host import _IO, _OFFSET, _Actor  # noqa: E402 - after the import of ray above, whose error names the extra

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
                self._hand_over(self._rendezvous)
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

    def _hand_over(self, rendezvous: socket.socket) -> None:
        """Before the start reply: hand the container's end of the socketpair to an actor on this machine.

        Its actor connects to *rendezvous* (a Unix socket in this machine's
        ``/dev/shm``) if it can; one on another machine cannot, and its start
        reply comes first. Either way the start reply says which it took.
        """
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
        rendezvous = self._rendezvous
        if rendezvous is not None and rendezvous.fileno() >= 0:
            path = rendezvous.getsockname()
            rendezvous.close()
            _shmdir._unlink(os.path.basename(path))

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


def _make_probe() -> str | None:
    """A file in this machine's ``/dev/shm`` that only a process sharing it (and our user) can open."""
    if _shmdir.SHM_DIR is None:
        return None
    name = f"{_shmdir.PREFIX}{os.getpid()}-probe-{secrets.token_hex(8)}"  # (sweep_orphans takes it if we die)
    try:
        os.close(os.open(os.path.join(_shmdir.SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return None
    return name


def _make_rendezvous() -> socket.socket | None:
    """A Unix socket in this machine's ``/dev/shm`` where a container's actor on this machine takes its channel."""
    if _shmdir.SHM_DIR is None:
        return None
    name = f"{_shmdir.PREFIX}{os.getpid()}-rendezvous-{secrets.token_hex(8)}"  # (sweep_orphans takes it if we die)
    rendezvous = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        rendezvous.bind(os.path.join(_shmdir.SHM_DIR, name))
        os.chmod(os.path.join(_shmdir.SHM_DIR, name), 0o600)  # (and the peer's uid is checked: _hand_over)
        rendezvous.listen(1)
    except OSError:
        rendezvous.close()
        _shmdir._unlink(name)
        return None
    return rendezvous


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class RayBackend(Backend):
    """Containers as Ray actors (one per container), on an existing cluster or a local Ray.

    address
        A Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...);
        default ``RAY_ADDRESS`` when set, else a local Ray is started for the
        pool (and shut down with it).
    num_cpus, num_gpus, resources
        What each container's actor reserves on its node.
    runtime_env
        The actors' Ray runtime environment (``pip``, ``env_vars``, ...);
        lifepool must be importable there.
    namespace
        The Ray namespace to connect in (only when this backend connects).
    """

    name = "ray"
    # The pool encodes with shared memory; each transport carries the segments
    # inside its frames for a container that cannot map them (another machine).
    shared_memory = True
    _share_memory = True  # (False: every container is treated as remote; tests of that path)
    _ship_segments = True  # (False: a remote container's segments travel inside frames; tests of that path)
    _direct = True  # (False: a container on this machine is relayed too; tests and benchmarks of the relay)
    # An actor no node can place stays pending for ever (Ray's autoscaler only
    # logs it): a closing pool with nothing to run waits this long for it.
    closing_start_wait = 5.0

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        runtime_env: dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> None:
        for what, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{what} must be a number >= 0, not {value!r}")
        if resources is not None and not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict of resource name to amount, not {type(resources).__name__}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = resources
        self.runtime_env = runtime_env
        self.namespace = namespace
        self._users = 0
        self._started_ray = False
        self._probe: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, num_cpus={self.num_cpus}, num_gpus={self.num_gpus})"

    def open(self, containers: int) -> None:
        """A pool of up to *containers* uses this backend: connect to Ray (or start a local one) if not yet."""
        with self._lock:
            self._users += 1
            if self._probe is None and self._share_memory:
                self._probe = _make_probe()
            if ray.is_initialized():
                return
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"namespace": self.namespace, "log_to_driver": True}
            if address is None:
                # Sized for the pool: every container's actor can be placed at once.
                kwargs.update(
                    num_cpus=max(int(-(-containers * self.num_cpus // 1)), 1),
                    num_gpus=None if not self.num_gpus else int(-(-containers * self.num_gpus // 1)),
                    include_dashboard=False,
                )
                if self.resources:  # (else an actor asking for a custom resource could never be placed)
                    kwargs["resources"] = {name: containers * amount for name, amount in self.resources.items()}
            else:
                kwargs["address"] = address
            ray.init(**kwargs)
            self._started_ray = address is None
            logger.info("lifepool: %s Ray %s", "started" if self._started_ray else "connected to", address or "")

    def start(self, index: int, target_blob: bytes, options: dict[str, Any]) -> RayTransport:
        """Create container *index*'s actor, which starts the container process on its node."""
        actor_options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "max_restarts": 0,  # (a restart would re-run the enter hook behind the pool's back)
        }
        if self.resources:
            actor_options["resources"] = self.resources
        if self.runtime_env is not None:
            actor_options["runtime_env"] = self.runtime_env
        actor = _Actor.options(**actor_options).remote()
        ship = _shmdir.SHM_DIR is not None and self._ship_segments  # (else: inside the frames, _carried)
        rendezvous = _make_rendezvous() if self._probe is not None and self._direct else None
        options = {**options, "shm_probe": self._probe, "ship": ship}
        if rendezvous is not None:
            options["rendezvous"] = rendezvous.getsockname()
        try:
            started = actor.start.remote(index, target_blob, options)
            return RayTransport(actor, started, f"{options['pool_name']}-{index}", rendezvous)
        except BaseException:
            if rendezvous is not None:
                rendezvous.close()
                _shmdir._unlink(os.path.basename(options["rendezvous"]))
            raise

    def close(self) -> None:
        """A pool that used this backend has ended: shut Ray down with the last one, if this backend started it."""
        with self._lock:
            self._users -= 1
            if self._users <= 0:
                if self._probe is not None:
                    _shmdir._unlink(self._probe)  # (as a segment is)
                self._probe = None
            if self._users <= 0 and self._started_ray:
                self._started_ray = False
                ray.shutdown()


# The actor class. Methods get their concurrency groups here: "io" has two
# threads, so one io call can wait for its reply while the next one writes
# (writes apply one at a time, in seq order, whatever order Ray runs them
# in); the poll and the kill each have their own, so neither waits behind a
# write blocked on a full socket.
# (ray's own annotations do not cover decorating methods after the class: hence the ignores)
