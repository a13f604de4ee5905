"""The Futures that ``spawn`` and ``submit`` return: the whole ``concurrent.futures.Future`` contract.

They are lifepool's own subclass, with a lighter condition (see
``_schedule.Call``); these tests hold it to what the stdlib's Future does.
"""

from __future__ import annotations

import concurrent.futures
import gc
import sys
import threading
import weakref

import pytest
from targets import Recorder, wait_for_path

import lifepool
from lifepool._schedule._calls import _FutureCondition


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


def test_calls_queued_again_after_a_crash_fail_when_the_stop_drops_them(hookdir):
    # Calls sent ahead to a container that crashes are queued again, and are
    # running already (a Future cannot be cancelled then): dropped by
    # shutdown(cancel_futures=True), they must still end, not stay running.
    from targets import CrashThenSlowEnter

    pool = lifepool.LifecyclePool(CrashThenSlowEnter(hookdir), containers=1)
    try:
        futures = [pool.work.spawn(x) for x in range(40)]  # (more than 16 queued: some are sent ahead)
        assert isinstance(futures[0].exception(timeout=60), lifepool.ContainerCrashedError)
        pool.shutdown(wait=False, cancel_futures=True)
    finally:
        (hookdir / "enter").touch()  # (the replacement may enter, and the pool stop)
    pool.shutdown()
    _, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    requeued = [f for f in futures[1:] if not f.cancelled()]
    assert requeued, "no call was sent ahead"
    for future in requeued:
        assert isinstance(future.exception(), concurrent.futures.CancelledError)


@pytest.fixture
def blocked(hookdir):
    """A pool of one container, and a Future of a call it runs until ``release()``."""
    release, started = hookdir / "release", hookdir / "started"
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as p:
        future = p.block_until.spawn(str(release), str(started))
        wait_for_path(started)
        yield p, future, release.touch


@pytest.mark.parametrize(
    "wait_on_the_pool",
    [
        lambda p: p.echo.call(1),
        lambda p: p.shutdown(),
        lambda p: list(p.echo.map(range(3))),
    ],
    ids=["call", "shutdown", "map"],
)
def test_waiting_on_the_pool_in_its_own_done_callback_raises_instead_of_hanging(blocked, wait_on_the_pool):
    p, future, release = blocked
    raised = []
    called = threading.Event()

    def callback(_):
        try:
            wait_on_the_pool(p)
        except RuntimeError as error:
            raised.append(error)
        finally:
            called.set()

    future.add_done_callback(callback)  # (not done yet: it runs on the dispatcher thread)
    release()
    assert future.result(timeout=60) == "released"
    # (result() returns once the Future is set; the callbacks run after that, on their thread)
    assert called.wait(60)
    assert len(raised) == 1 and "done callback" in str(raised[0])
    assert p.echo.spawn(2).result(timeout=60) == 2
    assert p.echo.call(3) == 3


def test_a_done_callback_raising_system_exit_leaves_the_pool_alive(blocked, caplog):
    p, future, release = blocked
    future.add_done_callback(lambda _: sys.exit("from a callback"))
    release()
    assert future.result(timeout=60) == "released"
    assert p.echo.spawn(2).result(timeout=60) == 2
    assert "exception calling callback" in caplog.text


def test_a_queued_future_its_holder_completes_leaves_the_pool_alive(blocked):
    p, future, release = blocked
    queued = p.echo.spawn("never sent")
    queued.set_result("set by its holder")  # (allowed on any Future)
    release()
    assert future.result(timeout=60) == "released"
    assert queued.result(timeout=0) == "set by its holder"
    assert p.echo.spawn(2).result(timeout=60) == 2


def test_a_finished_future_lets_its_encoded_arguments_go(pool):
    future = pool.echo.spawn(b"x" * 500_000)
    assert len(future.result(timeout=60)) == 500_000
    assert len(future.body) == 0
