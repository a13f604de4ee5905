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

The actor's side, ``_Host``, is ``lifepool/_ray_host.py``; the driver's end
of one container, ``RayTransport``, is ``lifepool/_ray_transport.py``; this
module is ``RayBackend``. Ray is imported only by these three, and they only
when ``backend="ray"`` or ``lifepool.RayBackend`` is used.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import Any

from . import _shmdir
from ._backend import Backend

logger = logging.getLogger("lifepool")

try:
    import ray
except ImportError as error:  # pragma: no cover - exercised in a subprocess test without ray
    raise ImportError('backend="ray" needs Ray: pip install "lifepool[ray]" (or pip install "ray>=2.9")') from error

# (after the import of ray above, whose error names the extra)
from ._ray_host import _OFFSET, _Actor  # noqa: E402, F401 - _OFFSET: the relay's stream offsets (tests)
from ._ray_transport import RayTransport, close_rendezvous  # noqa: E402


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
                close_rendezvous(rendezvous)
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
