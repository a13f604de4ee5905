"""What a pool holds and lets go: results after ``map`` yields them, process handles, shared memory,
descriptors, threads and children across many pools, memory across many calls (issue 14).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import glob
import multiprocessing
import os
import tempfile
import threading
import weakref

import pytest
from conftest import collected
from executor_targets import Empty, FailingEnter, Maker, make_dummy_object

import lifepool
from lifepool import _shmdir

BOUND = 60.0
BIG = b"x" * (2 << 20)  # over the shared-memory threshold (1 MiB)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _segments() -> set[str]:
    return set(glob.glob(f"/dev/shm/{_shmdir.PREFIX}{os.getpid()}-*")) if _shmdir.SHM_DIR else set()


def _children() -> set[int]:
    found: set[int] = set()
    for path in glob.glob("/proc/self/task/*/children"):
        with open(path) as f:
            found.update(int(pid) for pid in f.read().split())
    return found


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _assert_allcollected(iterator):
    """Every value *iterator* yields is unreachable once the loop drops it (bpo-14406)."""
    count = 0
    for obj in iterator:
        ref = weakref.ref(obj)
        del obj
        assert collected(ref), f"the value yielded at position {count} is still alive"
        count += 1
    return count


@pytest.fixture(scope="module")
def pool():
    with lifepool.LifecyclePool(Maker, containers=2) as p:
        yield p


@pytest.fixture(scope="module")
def unchunked():
    # A timeout turns chunking off: map runs one call per input (_mapping._results).
    with lifepool.LifecyclePool(Maker, containers=2, timeout=BOUND) as p:
        yield p


# --- map lets each result go once yielded --------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        "executor map, range",
        "executor map, generator",
        "handle map, list",
        "handle map, generator",
        "handle map, unordered",
        "starmap",
        "map over two iterables",
    ],
)
def test_map_keeps_no_yielded_result_alive(pool, how):
    results = {
        "executor map, range": lambda: pool.map(make_dummy_object, range(40)),
        "executor map, generator": lambda: pool.map(make_dummy_object, (i for i in range(40))),
        "handle map, list": lambda: pool.make.map(list(range(40))),
        "handle map, generator": lambda: pool.make.map(i for i in range(40)),
        "handle map, unordered": lambda: pool.make.map(range(40), order_outputs=False),
        "starmap": lambda: pool.make2.starmap([(i, i) for i in range(40)]),
        "map over two iterables": lambda: pool.make2.map(range(40), range(40)),
    }[how]()
    assert _assert_allcollected(results) == 40


@pytest.mark.parametrize("order_outputs", [True, False])
def test_unchunked_map_keeps_no_yielded_result_nor_future_alive(unchunked, order_outputs):
    assert _assert_allcollected(unchunked.make.map(range(20), order_outputs=order_outputs)) == 20
    assert _assert_allcollected(unchunked.map(make_dummy_object, range(20))) == 20


@pytest.mark.parametrize("order_outputs", [True, False])
def test_map_aio_keeps_no_yielded_result_alive(pool, order_outputs):
    async def consume():
        count = 0
        async for obj in pool.amake.map.aio(range(20), order_outputs=order_outputs):
            ref = weakref.ref(obj)
            del obj
            assert collected(ref), f"the value yielded at position {count} is still alive"
            count += 1
        return count

    assert asyncio.run(consume()) == 20


def test_as_completed_over_lifepool_futures_keeps_none_alive(pool):
    futures = [pool.make.spawn(i) for i in range(20)]
    for future in concurrent.futures.as_completed(futures, timeout=BOUND):
        futures.remove(future)
        ref = weakref.ref(future)
        del future
        assert collected(ref)


def test_closing_a_chunked_map_early_still_stops_it(pool):
    results = pool.make.map(range(1000))
    assert next(results) is not None
    results.close()
    with pytest.raises(StopIteration):
        next(results)


# --- a Manager's proxies work as arguments ---------------------------------------------


@pytest.fixture(scope="module")
def manager():
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


@pytest.mark.parametrize("start_method", ["exec", "loky", "spawn", "forkserver"])
def test_manager_proxies_work_as_arguments_and_the_key_stays_private(manager, start_method):
    key = bytes(multiprocessing.current_process().authkey)
    with lifepool.LifecyclePool(Maker, containers=1, start_method=start_method) as p:
        event, queue, mapping = manager.Event(), manager.Queue(), manager.dict()
        assert p.set_event.call(event) is True
        assert event.is_set()
        assert p.put.call(queue, mapping, 21) == 21
        assert queue.get(timeout=BOUND) == 21
        assert mapping[21] == 42
        # Never through argv nor the environment (other users read /proc/<pid>/cmdline).
        pid = p.submit(os.getpid).result(timeout=BOUND)
        for what in ("cmdline", "environ"):
            with open(f"/proc/{pid}/{what}", "rb") as f:
                text = f.read()
            assert key not in text and key.hex().encode() not in text


def test_a_container_does_not_import_multiprocessing_to_hold_the_key(pool):
    def imported():
        import sys

        return "multiprocessing" in sys.modules

    assert pool.submit(imported).result(timeout=BOUND) is False


# --- handles, shared memory and descriptors ----------------------------------------------


def test_a_crashed_container_leaves_no_descriptor_behind():
    with lifepool.LifecyclePool(Maker, containers=1) as p:
        assert p.ok.call() == 1
        # One replacement first: the first start's descriptors come in another order (the
        # template's own, and the module-warm process it hands over, fill holes), so the numbers
        # compared are those of a replacement's layout.
        with pytest.raises(lifepool.ContainerCrashedError):
            p.crash.call()
        assert p.ok.call() == 1
        before = _fds()
        for _ in range(5):
            with pytest.raises(lifepool.ContainerCrashedError):
                p.crash.call()
            assert p.ok.call() == 1  # (on the replacement)
        assert _fds() == before


def _refused(call, *args):
    with pytest.raises((RuntimeError, lifepool.LifepoolError)):
        call(*args)


def test_a_refused_big_argument_writes_no_shared_memory():
    p = lifepool.LifecyclePool(Maker, containers=1)
    p.shutdown()
    before = _segments()
    for call in (p.ok.call, p.ok.spawn, lambda x: asyncio.run(p.ok.call.aio(x)), lambda x: p.submit(len, x)):
        _refused(call, BIG)
    _refused(lambda x: list(p.ok.map([x])), BIG)
    _refused(lambda x: list(p.ok.starmap([(x,)] * 3)), BIG)
    assert _segments() == before


def test_a_big_argument_refused_by_a_broken_pool_writes_no_shared_memory():
    p = lifepool.LifecyclePool(FailingEnter, containers=1)
    try:
        with pytest.raises(lifepool.EnterError):
            p.ok.call()
        before = _segments()
        for _ in range(3):
            with pytest.raises(lifepool.EnterError):
                p.ok.call(BIG)
        assert _segments() == before
    finally:
        p.shutdown()


def test_a_call_refused_after_it_was_encoded_unlinks_its_segment(monkeypatch):
    # The pool stops between _make_call's check and the submit: the segment is made, then must go.
    p = lifepool.LifecyclePool(Maker, containers=1)
    p.shutdown()
    monkeypatch.setattr(p._dispatcher, "check_accepting", lambda: None)
    before = _segments()
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.ok.spawn(BIG)
    assert _segments() == before


def test_shutdown_leaves_no_descriptor_of_the_pool_behind():
    # What the first pool of a process brings for good (the template start method's zygote:
    # its socket and pidfd, one per parent) is not the pool's.
    with lifepool.LifecyclePool(Maker, containers=1) as p:
        p.ok.call()
    before = _fds()
    p = lifepool.LifecyclePool(Maker, containers=2)
    assert list(p.ok.map(range(10))) == [1] * 10
    with pytest.raises(lifepool.ContainerCrashedError):
        p.crash.call()
    p.shutdown(wait=True)
    assert _fds() == before  # (the pool object is still alive: nothing waits for its collection)
    del p


# --- many pools, many calls -------------------------------------------------------------


def test_a_hundred_pools_leave_nothing_behind():
    def census():
        gc.collect()
        return (
            _fds(),
            {t.ident for t in threading.enumerate()},
            _children(),
            _segments(),
            set(os.listdir(tempfile.gettempdir())),
        )

    # One pool first: what the first pool of a process brings for good (imports, loky's
    # resource tracker for other start methods, the interpreter-exit hook) is not a leak.
    with lifepool.LifecyclePool(Empty, containers=1) as p:
        p.submit(len, BIG).result(timeout=BOUND)
    before = census()
    for _ in range(100):
        p = lifepool.LifecyclePool(Empty, containers=1)
        assert p.submit(len, BIG).result(timeout=BOUND) == len(BIG)  # (its argument through shared memory)
        p.shutdown(wait=True)
    del p
    after = census()
    names = ("descriptors", "threads", "child processes", "shared-memory segments", "temporary files")
    for name, old, new in zip(names, before, after, strict=True):
        assert new <= old, f"{name} left behind: {sorted(new - old)}"


def test_a_hundred_thousand_calls_grow_the_parent_by_less_than_20_mb(pool):
    def batch(n):
        futures = [pool.ok.spawn(i) for i in range(n)]
        for future in futures:
            assert future.result(timeout=BOUND) == 1

    batch(5_000)  # warm: allocator arenas, the tables' high-water marks
    gc.collect()
    before = _rss()
    for _ in range(100):
        batch(1_000)
    gc.collect()
    grown = _rss() - before
    assert grown < 20 << 20, f"the parent grew by {grown / 2**20:.1f} MB over 100,000 calls"


# --- what held up under probing, kept holding --------------------------------------------


@pytest.mark.parametrize(("method", "error"), [("exits", SystemExit), ("interrupts", KeyboardInterrupt)])
def test_system_exit_and_keyboard_interrupt_from_a_method_come_back_as_themselves(pool, method, error):
    with pytest.raises(error):
        pool.method(method).call()
    future = pool.method(method).spawn()
    assert isinstance(future.exception(timeout=BOUND), error)
    assert pool.ok.call() == 1  # the pool keeps serving


def test_sixteen_threads_of_three_hundred_blocking_calls_each_get_their_own_results():
    class Echo:
        def echo(self, thread, i):
            return thread, i

    with lifepool.LifecyclePool(Echo, containers=2) as p:

        def worker(thread):
            return [p.echo.call(thread, i) for i in range(300)]

        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            results = list(threads.map(worker, range(16)))
    assert results == [[(t, i) for i in range(300)] for t in range(16)]


@pytest.mark.parametrize("target", [len, os, lambda: None])
def test_a_bad_target_gets_a_clear_type_error(target):
    with pytest.raises(TypeError, match="target must be a class or an instance of one"):
        lifepool.LifecyclePool(target, containers=1)


@pytest.mark.parametrize(
    ("containers", "error"), [("2", TypeError), (2.0, TypeError), (True, TypeError), (-1, ValueError)]
)
def test_a_bad_container_count_gets_a_clear_error(containers, error):
    with pytest.raises(error, match="containers must be"):
        lifepool.LifecyclePool(Empty, containers=containers)
