"""The Futures that ``spawn`` and ``submit`` return: the whole ``concurrent.futures.Future`` contract.

They are lifepool's own subclass, with a lighter condition (see
``_dispatch.Call``); these tests hold it to what the stdlib's Future does.
"""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import weakref

import pytest
from targets import Recorder, wait_for_path

import lifepool
from lifepool._dispatch import _FutureCondition


@pytest.fixture
def pool(hookdir):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as p:
        yield p


def test_a_call_future_has_every_field_of_a_stdlib_future(pool):
    future = pool.echo.spawn(1)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 1
    # A stdlib that gave Future a new field would need it here too.
    assert set(vars(concurrent.futures.Future())) <= set(vars(future))


def test_result_with_a_timeout_times_out_then_gets_the_value(hookdir):
    release, started = hookdir / "release", hookdir / "started"
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as p:
        future = p.block_until.spawn(str(release), str(started))
        wait_for_path(started)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.05)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.exception(timeout=0)
        assert not future._condition._waiters  # (timed-out waiters are not left behind)
        release.touch()
        assert future.result(timeout=60) == "released"
        assert future.exception(timeout=0) is None


def test_every_thread_waiting_on_one_future_wakes(hookdir):
    release, started = hookdir / "release", hookdir / "started"
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as p:
        future = p.block_until.spawn(str(release), str(started))
        wait_for_path(started)
        results = []
        waiting = threading.Barrier(5)

        def wait() -> None:
            waiting.wait(timeout=30)
            results.append(future.result(timeout=60))

        threads = [threading.Thread(target=wait) for _ in range(4)]
        for thread in threads:
            thread.start()
        waiting.wait(timeout=30)
        release.touch()
        for thread in threads:
            thread.join(timeout=60)
        assert results == ["released"] * 4


def test_wait_and_as_completed_take_call_futures_beside_plain_ones(pool):
    plain = concurrent.futures.Future()
    spawned = [pool.echo.spawn(i) for i in range(20)]
    done, not_done = concurrent.futures.wait(spawned, timeout=60)
    assert done == set(spawned) and not not_done
    done, not_done = concurrent.futures.wait([*spawned, plain], timeout=0)
    assert done == set(spawned) and not_done == {plain}
    more = [pool.echo.spawn(i) for i in range(20, 40)]
    plain.set_result("plain")
    finished = [f.result() for f in concurrent.futures.as_completed([*more, plain], timeout=60)]
    assert sorted(finished, key=str) == sorted([*range(20, 40), "plain"], key=str)


def test_done_callbacks_run_once_with_the_future(pool):
    seen = []
    future = pool.echo.spawn("x")
    future.add_done_callback(seen.append)
    assert future.result(timeout=60) == "x"
    future.add_done_callback(seen.append)  # (done already: runs at once)
    assert seen == [future, future]


def test_a_finished_future_is_freed_without_the_garbage_collector(pool):
    pool.echo.call(0)  # (the pool is up)
    gc.collect()
    gc.disable()
    try:
        future = pool.echo.spawn(1)
        assert future.result(timeout=60) == 1
        ref = weakref.ref(future)
        del future
        assert ref() is None  # no reference cycle through the call
    finally:
        gc.enable()


def test_the_condition_refuses_to_wait_or_notify_unheld():
    condition = _FutureCondition()
    with pytest.raises(RuntimeError):
        condition.wait(0)
    with pytest.raises(RuntimeError):
        condition.notify()


def test_the_condition_wakes_as_many_waiters_as_asked():
    condition = _FutureCondition()
    woken = []
    waiting = threading.Semaphore(0)

    def wait(name: str) -> None:
        with condition:
            waiting.release()
            if condition.wait(timeout=60):
                woken.append(name)

    threads = [threading.Thread(target=wait, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert waiting.acquire(timeout=30)
    # Each waiter released the semaphore while holding the condition, so once
    # we hold it, all three are in wait().
    with condition:
        assert len(condition._waiters) == 3
        condition.notify(2)
    with condition:
        condition.notify_all()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(woken) == ["a", "b", "c"]
    with condition:
        assert condition.wait(timeout=0) is False
        assert not condition._waiters
