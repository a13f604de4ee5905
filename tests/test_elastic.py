"""Elastic pools: containers start on demand, grow to the cap, and leave when idle above the floor."""

from __future__ import annotations

import logging
import time

import pytest
from conftest import assert_gone, markers

import lifepool
from lifepool import ContainerState, PoolState

pytestmark = pytest.mark.usefixtures("backend")


def _wait(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.01)


def test_no_container_until_the_first_call_then_exactly_one(hookdir):
    from targets import Elastic

    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=4) as pool:
        status = pool.status()
        assert status.state is PoolState.RUNNING and status.containers == () and status.queued == 0
        assert markers(hookdir, "enter") == {}
        pid = pool.pid.call()
        assert set(markers(hookdir, "enter")) == {pid}
        for _ in range(5):  # sequential calls need no second container
            assert pool.pid.call() == pid
        (only,) = pool.status().containers
        assert only.pid == pid and only.index == 0
    assert set(markers(hookdir, "exit")) == {pid}
    assert_gone([pid])


def test_a_burst_grows_the_pool_to_the_cap_and_not_beyond(hookdir):
    from targets import Elastic

    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=3) as pool:
        # Three calls that each wait until three containers are inside at once:
        # they can only pass if the pool grew to three.
        futures = [pool.rendezvous.spawn(3) for _ in range(3)]
        pids = {future.result(timeout=90) for future in futures}
        assert len(pids) == 3
        # More calls than the cap: never a fourth container.
        results = [pool.double.spawn(i) for i in range(40)]
        assert [f.result(timeout=60) for f in results] == [2 * i for i in range(40)]
        assert len(pool.status().containers) <= 3
    assert len(markers(hookdir, "enter")) == 3
    assert set(markers(hookdir, "exit")) == set(markers(hookdir, "enter"))


def test_map_over_an_elastic_pool_loses_and_duplicates_nothing(hookdir):
    from targets import Elastic

    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=2) as pool:
        assert list(pool.double.map(range(2000))) == [2 * i for i in range(2000)]
        assert sorted(pool.echo.map(range(300), order_outputs=False)) == list(range(300))
    assert 1 <= len(markers(hookdir, "enter")) <= 2


def test_an_idle_container_above_the_floor_leaves_after_the_window_with_a_clean_exit(hookdir, caplog):
    from targets import Elastic

    caplog.set_level(logging.INFO, logger="lifepool")
    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=2, scaledown_window=0.2) as pool:
        first = pool.pid.call()
        exited = _wait(lambda: markers(hookdir, "exit"), what="the scale-down")
        assert set(exited) == {first}
        assert exited[first].startswith("None|None|")  # __exit__(None, None, None)
        _wait(lambda: pool.status().containers == (), what="the container gone from status")
        assert_gone([first])
        # Not a crash: nothing replaced it; the next call starts a new one.
        assert "died" not in caplog.text and "scaling down" in caplog.text
        second = pool.pid.call()
        assert second != first
    assert set(markers(hookdir, "enter")) == {first, second}
    assert set(markers(hookdir, "exit")) == {first, second}


def test_a_running_call_keeps_its_container_past_the_window(hookdir):
    from targets import Elastic

    window = 0.3
    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=1, scaledown_window=window) as pool:
        # The call outlasts the window several times over; the idle time starts when it ends.
        ended = pool.busy_for.call(4 * window)
        (pid,) = markers(hookdir, "enter")
        exit_at = _wait(lambda: markers(hookdir, "exitclock"), what="the scale-down")
        assert set(exit_at) == {pid}
        # (a container stopped while busy would have exited right after the call)
        assert float(exit_at[pid]) - ended >= window * 0.9


def test_the_floor_stays_when_the_extra_containers_leave(hookdir):
    from targets import Elastic

    window = 0.2
    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=1, max_containers=2, scaledown_window=window) as pool:
        floor_pid = _wait(lambda: [c.pid for c in pool.status().containers if c.state is ContainerState.READY])[0]
        futures = [pool.rendezvous.spawn(2) for _ in range(2)]
        pids = {future.result(timeout=90) for future in futures}
        assert floor_pid in pids and len(pids) == 2
        exited = _wait(lambda: markers(hookdir, "exit"), what="one scale-down")
        time.sleep(5 * window)  # (time for a wrong second scale-down to happen)
        assert len(markers(hookdir, "exit")) == 1
        (left,) = exited
        (stays,) = pool.status().containers
        assert stays.pid == (pids - {left}).pop() and stays.state is ContainerState.READY
        assert pool.pid.call() == stays.pid


def test_an_enter_failure_in_a_late_container_breaks_the_pool(hookdir):
    from targets import Elastic

    release, started = hookdir / "release", hookdir / "started"
    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=2) as pool:
        first = pool.pid.call()
        running = pool.block_until.spawn(str(release), str(started))
        _wait(started.exists, what="the first call to start")
        (hookdir / "fail-enter").touch()
        queued = pool.echo.spawn(1)  # no free slot: a second container starts, and fails to enter
        with pytest.raises(lifepool.EnterError) as caught:
            queued.result(timeout=60)
        assert "enter refused" in str(caught.value.__cause__)
        assert pool.status().state is PoolState.BROKEN
        with pytest.raises(lifepool.EnterError):
            pool.echo.call(2)
        release.touch()
        assert running.result(timeout=60) == "released"  # (the healthy container finishes what it runs)
    assert set(markers(hookdir, "enter")) == {first}
    assert set(markers(hookdir, "exit")) == {first}


def test_status_through_a_lifecycle(hookdir):
    from targets import Elastic

    release, started = hookdir / "release", hookdir / "started"
    pool = lifepool.LifecyclePool(Elastic(hookdir), min_containers=0, max_containers=1, name="seen")
    assert repr(pool) == "<LifecyclePool 'seen' of Elastic: running, 0/1 containers, 0 queued>"
    running = pool.block_until.spawn(str(release), str(started))
    _wait(started.exists, what="the call to start")
    waiting = [pool.echo.spawn(i) for i in range(2)]
    status = pool.status()
    assert status.state is PoolState.RUNNING and status.queued == 2
    (busy,) = status.containers
    assert busy.state is ContainerState.BUSY and busy.calls_done == 0 and busy.calls_failed == 0
    assert busy.index == 0 and busy.pid in markers(hookdir, "enter")
    assert busy.enter_seconds is not None and 0 < busy.enter_seconds <= busy.uptime_seconds
    assert repr(pool) == "<LifecyclePool 'seen' of Elastic: running, 1/1 containers, 2 queued>"
    release.touch()
    assert running.result(timeout=60) == "released" and [f.result(timeout=60) for f in waiting] == [0, 1]
    with pytest.raises(ValueError):
        pool.fail.call()
    (ready,) = pool.status().containers
    assert ready.state is ContainerState.READY and ready.calls_done == 4 and ready.calls_failed == 1
    assert ready.uptime_seconds >= busy.uptime_seconds
    pool.shutdown()
    status = pool.status()
    assert status.state is PoolState.CLOSED and status.containers == () and status.queued == 0
    assert repr(pool) == "<LifecyclePool 'seen' of Elastic: closed, 0/1 containers, 0 queued>"


def test_a_fixed_pool_starts_every_container_and_replaces_a_dead_one(hookdir):
    from targets import Recorder

    with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as pool:
        _wait(lambda: len(pool.status().containers) == 2, what="both containers")
        assert len(markers(hookdir, "init")) <= 1  # (the instance is shipped, not re-made)
        _wait(lambda: len(markers(hookdir, "enter")) == 2, what="both enters")


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"min_containers": 3, "max_containers": 2}, ValueError, "min_containers"),
        ({"containers": 2, "max_containers": 4}, ValueError, "containers="),
        ({"containers": 2, "min_containers": 1}, ValueError, "containers="),
        ({"min_containers": -1}, ValueError, "min_containers"),
        ({"max_containers": 0}, ValueError, "max_containers"),
        ({"scaledown_window": -1}, ValueError, "scaledown_window"),
        ({"scaledown_window": float("inf")}, ValueError, "scaledown_window"),
        ({"scaledown_window": "5"}, TypeError, "scaledown_window"),
        ({"max_containers": 2.0}, TypeError, "max_containers"),
        ({"backend": "nowhere"}, ValueError, "backend"),
        ({"backend": 3}, TypeError, "backend"),
    ],
)
def test_bad_capacity_options_name_the_option(options, error, names, tmp_path):
    from targets import Recorder

    with pytest.raises(error, match=names):
        lifepool.LifecyclePool(Recorder(tmp_path), **options)


def test_containers_serving_blocking_calls_still_scale_down(hookdir):
    # Blocking calls borrow an idle container (the fast path, on the caller's
    # thread), which gives it back with its idle clock restarted: the extra
    # container still leaves after the window, and the floor stays.
    from targets import Elastic

    window = 0.2
    with lifepool.LifecyclePool(Elastic(hookdir), min_containers=1, max_containers=2, scaledown_window=window) as pool:
        futures = [pool.rendezvous.spawn(2) for _ in range(2)]  # a second container joins
        pids = {future.result(timeout=90) for future in futures}
        assert len(pids) == 2
        served = {pool.pid.call() for _ in range(20)}  # borrowed calls, given back by this thread
        assert served <= pids
        _wait(lambda: markers(hookdir, "exit"), what="one container to scale down")
        _wait(lambda: len(pool.status().containers) == 1, what="one container left")
        assert pool.pid.call() in pids
