"""The Ray backend's own promises (the shared contract runs in the backend-parametrised modules).

Everything here but the import tests needs Ray (the ``lifepool[ray]`` extra)
and runs on the session's local Ray (see conftest.ray_session).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import assert_gone, interrupt_each_line, markers

import lifepool

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


def _python(code: str, timeout: float = 100.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_ADDRESS": ""},
    )


def test_importing_lifepool_never_imports_ray():
    result = _python(
        """
        import sys, lifepool
        lifepool.LifecyclePool, lifepool.PoolState  # (the lazy names a pool needs)
        from lifepool import _pool, _schedule, _local
        print("ray" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_backend_ray_without_ray_names_the_extra():
    result = _python(
        """
        import sys

        class NoRay:  # as if ray were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoRay())
        import lifepool

        class M:
            pass

        for attempt in (lambda: lifepool.LifecyclePool(M, containers=1, backend="ray"), lambda: lifepool.RayBackend):
            try:
                attempt()
            except ImportError as error:
                print(type(error).__name__, error)
            else:
                print("no error")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(("ImportError", "ModuleNotFoundError")) and "lifepool[ray]" in line


@needs_ray
def test_start_method_is_refused_with_the_ray_backend():
    with pytest.raises(ValueError, match="start_method"):
        lifepool.LifecyclePool(object, containers=1, backend="ray", start_method="spawn")
    with pytest.raises(ValueError, match="num_cpus"):
        lifepool.RayBackend(num_cpus=-1)


@needs_ray
@pytest.mark.parametrize("where", ["same-node", "same-node-relayed", "other-node"])
def test_a_dead_actor_fails_its_call_runs_the_exit_hook_and_is_replaced(hookdir, ray_session, where):
    from targets import Fragile

    started = hookdir / "started"
    backend = lifepool.RayBackend(num_cpus=0)
    elsewhere = where == "other-node"
    if elsewhere:
        backend._share_memory = False  # (its segments shipped, through a directory of its own: see _ship)
    backend._direct = where == "same-node"  # (else its frames cross Ray, as for another node's)
    dirs_before = _ship_dirs()
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, backend=backend) as pool:
        first = pool.pid.call()
        first_dirs = _ship_dirs() - dirs_before
        assert len(first_dirs) == (1 if elsewhere and os.path.isdir("/dev/shm") else 0)
        future = pool.sleep.spawn(60, str(started))
        deadline_wait(started.exists)
        # SIGKILL the actor's process (the container's parent), as the OOM killer or a lost node would.
        # (ray.kill is not this: it ends the actor in-process, and Ray then kills its child processes.)
        with open(f"/proc/{first}/stat") as stat:
            actor_pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        os.kill(actor_pid, signal.SIGKILL)
        with pytest.raises(lifepool.ContainerCrashedError) as crash:
            future.result(timeout=60)
        assert "container 0" in str(crash.value)
        # The container saw its parent (the actor) go: its exit hook ran, with ParentExitedError.
        deadline_wait(lambda: first in markers(hookdir, "exit"))
        assert markers(hookdir, "exit")[first] == "ParentExitedError"
        deadline_wait(lambda: not (first_dirs & _ship_dirs()))  # the orphan removed its actor's directory
        second = pool.pid.call()  # a replacement entered
        assert second != first
    assert set(markers(hookdir, "enter")) == {first, second}
    assert markers(hookdir, "exit")[second] == "None"
    assert_gone([first, second])


@needs_ray
@pytest.mark.parametrize("lent", [True, False], ids=["blocking-call", "spawned-call"])
def test_a_call_whose_relay_fails_in_the_actor_fails_as_a_crash_and_the_container_is_replaced(
    hookdir, ray_session, monkeypatch, lent
):
    # An io call that raises in the actor (not an actor death: its poll never
    # reports one) may have lost bytes of the stream; before this was handled,
    # the call and the pool's close waited for ever. A shipped segment that is
    # not a buffer makes the relay fail deterministically, before it writes.
    from targets import Fragile

    from lifepool import _ray

    send = _ray.RayTransport._io

    class Broken:
        armed = False

    def io(self, frames, signum, wait, shipped=None):
        if Broken.armed and frames:
            Broken.armed = False
            shipped = [("not-a-buffer", 0)]
        return send(self, frames, signum, wait, shipped)

    monkeypatch.setattr(_ray.RayTransport, "_io", io)
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, backend=_relayed()) as pool:
        first = pool.pid.call()
        Broken.armed = True
        with pytest.raises(lifepool.ContainerCrashedError) as crash:
            pool.echo.call(1) if lent else pool.echo.spawn(1).result(timeout=60)
        assert "container 0" in str(crash.value)
        assert pool.echo.spawn(2).result(timeout=60) == 2  # a replacement entered
        assert pool.pid.call() != first
    assert_gone([first])


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_a_container_on_this_machine_gets_its_frames_directly_and_its_interrupts_through_its_actor(
    hookdir, ray_session, monkeypatch
):
    import asyncio

    from targets import Fragile

    from lifepool import _ray, _worker

    crossed = []  # what went through the actor's io
    io = _ray.RayTransport._io

    def counting(self, frames, signum, wait, shipped=None):
        crossed.append((len(frames), signum))
        return io(self, frames, signum, wait, shipped)

    monkeypatch.setattr(_ray.RayTransport, "_io", counting)
    started = hookdir / "started"
    before = _lifepool_segments()

    async def main():
        with lifepool.LifecyclePool(Fragile(hookdir), containers=1, backend=lifepool.RayBackend(num_cpus=0)) as pool:
            assert pool.echo.call(1) == 1
            assert pool.echo.spawn(2).result(timeout=60) == 2
            assert list(pool.echo.map(range(5))) == list(range(5))
            assert not [name for name in _lifepool_segments() - before if "-rendezvous-" in name]  # taken: gone
            running = asyncio.create_task(pool.sleep.remote.aio(600, str(started)))
            await asyncio.to_thread(deadline_wait, started.exists)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert await pool.echo.remote.aio("after") == "after"

    asyncio.run(main())
    assert markers(hookdir, "interrupted")  # the running call got its KeyboardInterrupt
    assert crossed and set(crossed) == {(0, _worker.INTERRUPT_SIGNAL)}  # only the signal crossed Ray
    assert markers(hookdir, "exit") and set(markers(hookdir, "exit").values()) == {"None"}


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_a_container_whose_actor_cannot_take_its_channel_is_relayed(hookdir, ray_session, monkeypatch):
    from targets import Fragile

    from lifepool import _ray

    make = _ray._make_rendezvous

    def unreachable():
        rendezvous = make()
        os.unlink(rendezvous.getsockname())  # (as unreachable as from another machine)
        return rendezvous

    monkeypatch.setattr(_ray, "_make_rendezvous", unreachable)
    crossed = []
    io = _ray.RayTransport._io

    def counting(self, frames, signum, wait, shipped=None):
        crossed.append(len(frames))
        return io(self, frames, signum, wait, shipped)

    monkeypatch.setattr(_ray.RayTransport, "_io", counting)
    before = _lifepool_segments()
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, backend=lifepool.RayBackend(num_cpus=0)) as pool:
        assert pool.echo.call(1) == 1
        assert list(pool.echo.map(range(5))) == list(range(5))
        assert sum(crossed) >= 2  # its frames went through the actor
    assert set(markers(hookdir, "exit").values()) == {"None"}
    assert _lifepool_segments() - before == set()


@needs_ray
@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_what_is_sent_before_the_start_reply_goes_in_order_the_way_it_says(mode):
    # Until the actor's start reply says whether it took the container's
    # channel, sends and interrupts wait; then they go, in order, that way.
    import socket
    import threading

    from lifepool import _ray, _worker

    transport = _ray.RayTransport.__new__(_ray.RayTransport)  # (the sending half only: no actor, no bridge)
    transport._lock = threading.Lock()
    transport._mode, transport._pending = "undecided", []
    transport._ours, transport._theirs = socket.socketpair()
    went: list = []
    transport._send = lambda how, frames: went.append((how, frames))  # type: ignore[method-assign]
    transport._io = lambda frames, signum, wait: went.append(("io", frames, signum))  # type: ignore[method-assign]
    try:
        transport.send([b"a"])
        transport.interrupt()
        transport.send([b"b", b"c"])
        assert went == []
        transport._decide(mode)
        transport.send([b"d"])
        transport.interrupt()
        assert went == [
            (mode, [b"a"]),
            ("io", [], _worker.INTERRUPT_SIGNAL),
            (mode, [b"b", b"c"]),
            (mode, [b"d"]),
            ("io", [], _worker.INTERRUPT_SIGNAL),
        ]
        assert (transport._theirs.fileno() < 0) == (mode == "direct")  # (direct: the container's now)
    finally:
        transport._ours.close()
        transport._theirs.close()


def _relayed() -> lifepool.RayBackend:
    """A backend whose containers on this machine are relayed through their actors, as other machines' are."""
    backend = lifepool.RayBackend(num_cpus=0)
    backend._direct = False
    return backend


def _lifepool_segments() -> set[str]:
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if name.startswith("lifepool-")}


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "relayed"])
def test_big_arrays_cross_to_a_container_on_this_machine_through_shared_memory(ray_session, direct):
    numpy = pytest.importorskip("numpy")
    from targets import Buffers, on_shared_memory

    array = numpy.arange(3 * 2**20 // 8, dtype=numpy.float64)  # 3 MiB
    before = _lifepool_segments()
    backend = lifepool.RayBackend(num_cpus=0) if direct else _relayed()
    with lifepool.LifecyclePool(Buffers, containers=1, backend=backend) as pool:
        assert pool.mapped.call(array) is True  # mapped in the container, not copied out of a frame
        out = pool.echo.call(array)
        assert on_shared_memory(out) and numpy.array_equal(out, array)  # and the result, on the driver
        assert pool.echo.spawn(b"y" * (2 << 20)).result(timeout=60) == b"y" * (2 << 20)
        assert [a[-1] for a in pool.echo.map([array] * 3)] == [array[-1]] * 3
        del out
        left = _lifepool_segments() - before
        assert {name for name in left if "-probe-" not in name} == set()  # every segment decoded or discarded
    assert _lifepool_segments() - before == set()  # (the probe file too)


def _ship_dirs() -> set[str]:
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if name.startswith("lifepool_ship-")}


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_big_arrays_cross_to_a_container_elsewhere_as_shipped_segments(ray_session):
    # A container that cannot open the driver's /dev/shm (another machine):
    # the segments themselves travel through Ray (its object store) and are
    # mapped on the other side, both ways.
    numpy = pytest.importorskip("numpy")
    from targets import Buffers, on_shared_memory

    backend = lifepool.RayBackend(num_cpus=0)
    backend._share_memory = False  # (what a container on another node sees: no probe it can open)
    array = numpy.arange(3 * 2**20 // 8, dtype=numpy.float64)
    before, dirs_before = _lifepool_segments(), _ship_dirs()
    with lifepool.LifecyclePool(Buffers, containers=1, backend=backend) as pool:
        assert pool.mapped.call(array) is True  # mapped in the container, from its node's own segment
        out = pool.echo.call(array)
        assert on_shared_memory(out) and numpy.array_equal(out, array)  # and on the driver, from its own
        out[0] = -1.0  # (writable, as locally)
        assert pool.echo.spawn(b"y" * (2 << 20)).result(timeout=60) == b"y" * (2 << 20)
        assert pool.echo.call("z" * (2 << 20)) == "z" * (2 << 20)
        assert [a[-1] for a in pool.echo.map([array] * 5)] == [array[-1]] * 5  # (several in one reply)
        del out
        assert _lifepool_segments() - before == set()  # every segment decoded or discarded, on both sides
        assert len(_ship_dirs() - dirs_before) == 1  # the container's directory
    assert _lifepool_segments() - before == set()
    assert _ship_dirs() - dirs_before == set()  # removed with its container


@contextlib.contextmanager
def _one_busy_shipping(hookdir, containers: int):
    """An ``Ahead`` pool whose containers ship their segments (as on another node), one of them busy in
    ``block``: yields the pool, that call's future, and the file that releases it."""
    from targets import Ahead, wait_for_path

    backend = lifepool.RayBackend(num_cpus=0)
    backend._share_memory = False
    with lifepool.LifecyclePool(Ahead, containers=containers, backend=backend) as pool:
        release, started = hookdir / "release", hookdir / "started"
        first = pool.block.spawn(str(release), str(started))
        wait_for_path(started)
        yield pool, first, release


class _IoCalls:
    """Records the io calls a Ray transport submits from now on, to wait until its actor applied them."""

    def __init__(self, transport) -> None:
        self.refs: list = []
        self.transport, self.actor = transport, transport.actor
        actor, refs = transport.actor, self.refs

        class Io:
            def remote(self, *args):
                ref = actor.io.remote(*args)
                refs.append(ref)
                return ref

        class Actor:
            io = Io()

            def __getattr__(self, name):
                return getattr(actor, name)

        transport.actor = Actor()

    def wait_applied(self) -> None:
        import ray

        self.transport.actor = self.actor  # (ray.kill needs the real handle)
        assert self.refs, "nothing was sent"
        ray.get(self.refs, timeout=60)  # (an io call returns once its frames and signal are applied)


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_a_call_sent_ahead_and_interrupted_leaves_none_of_its_shipped_segments(hookdir, ray_session):
    # A call waiting in a busy container's pipe, interrupted, is never decoded:
    # the copies of its segments shipped to the container's node must go anyway.
    from lifepool._schedule._tables import DEEP_AHEAD, SEND_AHEAD

    dirs_before = _ship_dirs()
    with _one_busy_shipping(hookdir, containers=1) as (pool, first, release):
        (ship_dir,) = _ship_dirs() - dirs_before
        payload = b"y" * (2 << 20)  # (big: a segment of its own)
        count = 3 * SEND_AHEAD
        rest = [pool.run.spawn(str(hookdir), i, payload) for i in range(count)]
        dispatcher = pool._dispatcher
        ahead = min(count // 2, DEEP_AHEAD)  # (see test_ahead)
        deadline_wait(lambda: dispatcher.slots[0].load[None] - 1 == ahead)
        victim = rest[2]  # sent ahead: in the container's pipe
        assert victim.running()
        sent = _IoCalls(dispatcher.slots[0].transport)
        pool._abandon([victim], interrupt=True)  # what a Ctrl-C on victim.result() does
        deadline_wait(lambda: not dispatcher.commands)
        with dispatcher._lock:  # (the interrupt is sent: held while it carries out a command)
            pass
        sent.wait_applied()  # (on Ray, "sent" is "submitted": the release must not overtake it)
        release.touch()
        assert first.result(timeout=60) == "released"
        with pytest.raises(KeyboardInterrupt):
            victim.result(timeout=60)
        assert [f.result(timeout=60) for f in rest if f is not victim] == [i for i in range(count) if i != 2]
        assert not (hookdir / "ran-2").exists()
        assert os.listdir(os.path.join("/dev/shm", ship_dir)) == []


@needs_ray
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_calls_given_back_unstarted_leave_none_of_their_shipped_segments(hookdir, ray_session):
    # Calls sent ahead to a container stuck in a long call are asked back
    # (REVOKE) and run on the idle one; the stuck one skips them once free,
    # and must drop the copies of their segments shipped to it.
    from lifepool._schedule._tables import SEND_AHEAD

    dirs_before = _ship_dirs()
    with _one_busy_shipping(hookdir, containers=2) as (pool, first, release):
        payload = b"y" * (2 << 20)
        rest = [pool.run.spawn(str(hookdir), i, payload) for i in range(3 * SEND_AHEAD * 2)]
        assert [f.result(timeout=60) for f in rest] == list(range(len(rest)))
        release.touch()
        assert first.result(timeout=60) == "released"
        dirs = _ship_dirs() - dirs_before
        assert len(dirs) == 2
        deadline_wait(lambda: not any(os.listdir(os.path.join("/dev/shm", d)) for d in dirs), 30)


@needs_ray
def test_big_arrays_cross_to_a_container_elsewhere_inside_the_frames(ray_session):
    # Without shipping (a node or driver without /dev/shm), the segments'
    # contents travel in the frames and the container answers inline.
    numpy = pytest.importorskip("numpy")
    from targets import Buffers, on_shared_memory

    backend = lifepool.RayBackend(num_cpus=0)
    backend._share_memory = False
    backend._ship_segments = False
    array = numpy.arange(3 * 2**20 // 8, dtype=numpy.float64)
    before = _lifepool_segments()
    with lifepool.LifecyclePool(Buffers, containers=1, backend=backend) as pool:
        assert pool.mapped.call(array) is False
        out = pool.echo.call(array)
        assert not on_shared_memory(out) and numpy.array_equal(out, array)
        assert pool.echo.spawn(b"y" * (2 << 20)).result(timeout=60) == b"y" * (2 << 20)
        assert pool.echo.call("z" * (2 << 20)) == "z" * (2 << 20)
        # (a chunk of map is one message, its inputs inside; its results come back nested, inline)
        assert [a[-1] for a in pool.echo.map([array] * 5)] == [array[-1]] * 5
        assert _lifepool_segments() - before == set()  # the driver discarded its copies; the container made none
    assert _lifepool_segments() - before == set()


@needs_ray
def test_a_pool_starts_a_local_ray_and_stops_only_the_one_it_started():
    result = _python(
        """
        import ray, lifepool

        class M:
            def f(self, x):
                return x + 1

        with lifepool.LifecyclePool(M, containers=1, backend=lifepool.RayBackend(num_cpus=0.5)) as pool:
            print(pool.f.call(1), ray.is_initialized(), ray.cluster_resources().get("CPU"))
        print(ray.is_initialized())
        ray.init(num_cpus=1, include_dashboard=False)
        with lifepool.LifecyclePool(M, containers=1, backend="ray") as pool:
            print(pool.f.call(2))
        print(ray.is_initialized())
        ray.shutdown()
        """,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2", "True", "1.0", "False", "3", "True"]


def deadline_wait(condition, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@needs_ray
def test_the_driver_writes_relayed_bytes_in_stream_order_and_never_blocks_a_ray_thread():
    """Chunks of the container's stream arrive by two routes (io replies, polls) in any order.

    The bridge's blocking writes hold no lock: while a container is lent, the
    socket's only reader is the borrower, which takes the lock to store its
    own reply (a bridge blocked on a full socket while holding it would
    deadlock them both).
    """
    import socket
    import threading
    import time

    from lifepool import _ray

    relay = _ray.RayTransport.__new__(_ray.RayTransport)  # (the delivery half only: no actor, no bridge)
    relay._delivering = threading.Lock()
    relay._early, relay._written, relay._writing = {}, 0, False
    relay._ours, relay._theirs = socket.socketpair()
    try:
        relay._theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        relay._store(_ray._OFFSET.pack(3) + b"def")  # (arrived before the bytes in front of it)
        assert relay._flush() and relay._written == 0
        relay._store(_ray._OFFSET.pack(0) + b"abc")
        assert relay._flush() and relay._written == 6
        big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes without a reader
        relay._store(_ray._OFFSET.pack(6) + big)
        assert not relay._flush()  # would block: the rest is kept for the bridge
        kept = relay._written
        assert 6 < kept < 6 + len(big) and list(relay._early) == [kept]
        got = bytearray()

        def read() -> None:
            while len(got) < 6 + len(big):
                got.extend(relay._ours.recv(1 << 16))

        # The bridge's blocking write: it holds no lock while the socket is full,
        # so whoever reads the socket (a borrower) can still take the lock.
        bridge = threading.Thread(target=relay._write_through)
        bridge.start()
        deadline = time.monotonic() + 30
        while not relay._writing:
            assert bridge.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        assert relay._delivering.acquire(timeout=30)
        try:
            assert not relay._flush()  # (the bridge is writing: the stream is its own meanwhile)
        finally:
            relay._delivering.release()
        reader = threading.Thread(target=read)
        reader.start()
        bridge.join(timeout=30)
        reader.join(timeout=30)
        assert not reader.is_alive() and not bridge.is_alive()
        assert bytes(got) == b"abcdef" + big and not relay._early
    finally:
        relay._ours.close()
        relay._theirs.close()


@needs_ray
@pytest.mark.parametrize("step", ["recv", "_take_reply", "lend"])
def test_a_ctrl_c_on_any_line_of_the_lent_path_loses_no_answer(tmp_path, ray_session, step):
    # A blocking call on a lent Ray container takes its io reply with ray.get on
    # the caller's thread (RayTransport.lend/recv/_take_reply). A Ctrl-C on any
    # line of that must leave the reply on its way to the dispatcher: with one
    # container, a lost answer would leave the next call queued forever.
    from targets import Recorder

    from lifepool._ray import RayTransport

    code = getattr(RayTransport, step).__code__
    with lifepool.LifecyclePool(Recorder(tmp_path), containers=1, backend=_relayed()) as pool:
        assert pool.echo.call(0) == 0
        assert interrupt_each_line(pool, code) >= 1


class _FakeRef:
    """Stands in for a Ray ObjectRef: its outcome is a future the test completes."""

    def __init__(self) -> None:
        import concurrent.futures

        self.outcome: concurrent.futures.Future = concurrent.futures.Future()

    def future(self):
        return self.outcome


class _FakeMethod:
    def __init__(self) -> None:
        self.refs: list[_FakeRef] = []

    def remote(self, *args):
        ref = _FakeRef()
        self.refs.append(ref)
        return ref


@needs_ray
def test_the_end_of_the_stream_waits_for_an_io_reply_still_in_front_of_it(monkeypatch):
    # The container writes its last message (the exit hook's report) and
    # exits. The actor's io call reads the message and returns it; its poll
    # then reads EOF and returns "ended at offset N". Ray may deliver the
    # poll's reply first: the bridge must wait for the bytes in front of N
    # before it ends the stream, or the report is lost and a clean exit
    # (code 0) looks like a container that died during its exit hook (a CI
    # flake on the Ray leg before this was fixed).
    import queue
    import select
    import threading
    import types

    from lifepool import _ray, _ray_transport

    actor = types.SimpleNamespace(poll=_FakeMethod(), io=_FakeMethod())
    started = _FakeRef()
    started.outcome.set_result((12345, False, False, False))
    monkeypatch.setattr(_ray.ray, "get", lambda ref, timeout=None: ref.future().result(timeout))

    waiting_again = threading.Event()

    class Replies(queue.SimpleQueue):
        gets = 0

        def get(self, *args, **kwargs):
            Replies.gets += 1
            if Replies.gets == 2:  # (the bridge asks for more after the ended poll)
                waiting_again.set()
            return super().get(*args, **kwargs)

    monkeypatch.setattr(_ray_transport.queue, "SimpleQueue", Replies)
    relay = _ray.RayTransport(actor, started, "fake")
    try:
        deadline_wait(lambda: len(actor.poll.refs) == 2, 30)
        relay.send([b"\x00" * 8])  # (the exit message: its io call waits for the reply)
        (io,) = actor.io.refs
        report = b"the exit hook's report"
        actor.poll.refs[0].outcome.set_result((len(report), b"", True, 0, []))  # the poll's reply comes first
        assert _wait_until_either(waiting_again, relay.sentinel, 30)
        io.outcome.set_result(_ray._OFFSET.pack(0) + report)  # ... then the io reply in front of it
        got = bytearray()
        while True:
            assert select.select([relay.fd], [], [], 30)[0], "the stream neither delivered nor ended"
            chunk = relay._ours.recv(1 << 16)
            if not chunk:
                break
            got.extend(chunk)
        assert bytes(got) == report
        assert select.select([relay.sentinel], [], [], 30)[0]
    finally:  # (on a failure too: let the bridge end)
        for ref in actor.poll.refs + actor.io.refs:
            if not ref.outcome.done():
                ref.outcome.set_result((0, b"", True, None) if ref in actor.poll.refs else b"")
        relay._bridge.join(timeout=30)
        assert relay.reap() == 0


def _wait_until_either(event, fd, timeout):
    """The event is set or *fd* is readable, within *timeout* seconds."""
    import select
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event.wait(0.01) or select.select([fd], [], [], 0)[0]:
            return True
    return False
