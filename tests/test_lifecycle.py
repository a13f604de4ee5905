"""The container lifecycle: enter once, serve, exit once — with the right arguments."""

from __future__ import annotations

import os
import time
import traceback

import loky
import pytest
from conftest import assert_gone, markers
from targets import (
    AsyncProcessor,
    CrashingExit,
    ExitingExit,
    FailingEnter,
    FailingExit,
    LeavesAnExecutor,
    Ordered,
    Plain,
    Recorder,
    wait_for_path,
)

import lifepool

pytestmark = pytest.mark.usefixtures("backend")


@pytest.mark.on_ray
def test_enter_and_exit_run_once_per_container(hookdir):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=3) as pool:
        results = list(pool.double.map(range(30)))
        pids = {pool.pid.call() for _ in range(5)}
    assert results == [2 * i for i in range(30)]
    entered = markers(hookdir, "enter")
    exited = markers(hookdir, "exit")
    assert len(entered) == 3
    assert set(exited) == set(entered)
    assert pids <= set(entered)
    assert all(text.startswith("None|None|") for text in exited.values())
    assert_gone(entered)


def test_instance_target_is_not_reinitialised_in_containers(hookdir):
    recorder = Recorder(hookdir)  # writes one init marker, here
    with lifepool.LifecyclePool(recorder, containers=2) as pool:
        pool.echo.call(1)
    assert len(markers(hookdir, "init")) == 1
    assert len(markers(hookdir, "enter")) == 2


def test_class_target_is_instantiated_in_each_container():
    with lifepool.LifecyclePool(Plain, containers=2) as pool:
        assert pool.hello.call("world") == "hello world"


def test_default_container_count_is_loky_cpu_count():
    pool = lifepool.LifecyclePool(Plain)
    try:
        assert pool._max_containers == loky.cpu_count() and pool.status().state is lifepool.PoolState.RUNNING
    finally:
        pool.shutdown()


def test_decorated_hooks_run_in_definition_order_after_enter_and_before_exit(hookdir):
    with lifepool.LifecyclePool(Ordered(hookdir), containers=1) as pool:
        assert pool.events_so_far.call() == ["__enter__", "first", "second"]
    (events,) = markers(hookdir, "events").values()
    assert events == "__enter__,first,second,cleanup,__exit__"


def test_hooks_are_not_remote_methods(hookdir):
    with lifepool.LifecyclePool(Ordered(hookdir), containers=1) as pool:
        with pytest.raises(AttributeError, match="lifecycle hook"):
            pool.first  # noqa: B018


def test_async_lifecycle_shares_one_loop(hookdir):
    with lifepool.LifecyclePool(AsyncProcessor(hookdir), containers=2) as pool:
        assert list(pool.run.map(range(4))) == [(i, True) for i in range(4)]
        assert pool.sync_beside.call(1) == 2
    assert sorted(markers(hookdir, "aexit").values()) == ["None", "None"]


@pytest.mark.on_ray
def test_exit_hook_receives_the_exception_that_ended_the_block(hookdir):
    with pytest.raises(KeyError):
        with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as pool:
            pool.echo.call(1)
            raise KeyError("parent failed here")  # the line the exit hooks must see
    exited = markers(hookdir, "exit")
    assert len(exited) == 2
    for text in exited.values():
        type_name, value, tb_text = text.split("|", 2)
        assert type_name == "KeyError"
        assert "parent failed here" in value
        assert "test_exit_hook_receives_the_exception_that_ended_the_block" in tb_text
        assert 'raise KeyError("parent failed here")' in tb_text


def test_exit_hook_receives_an_error_that_came_back_from_a_container(hookdir):
    with pytest.raises(ValueError, match="bad input"):
        with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as pool:
            pool.fail.call()
    (text,) = markers(hookdir, "exit").values()
    type_name, _, tb_text = text.split("|", 2)
    assert type_name == "ValueError"
    assert "raise ValueError(message)" in tb_text  # the container's frame travelled both ways


def test_unpicklable_block_exception_reaches_exit_hooks_as_a_stand_in(hookdir):
    import threading

    class HoldsLock(Exception):
        def __init__(self):
            super().__init__("holds a lock")
            self.lock = threading.Lock()

    with pytest.raises(HoldsLock):
        with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as pool:
            pool.echo.call(1)
            raise HoldsLock()
    (text,) = markers(hookdir, "exit").values()
    type_name, value, _ = text.split("|", 2)
    assert type_name == "RemoteError"
    assert "HoldsLock" in value


def test_an_exit_hook_raising_a_base_exception_still_gives_exit_hook_error(hookdir):
    # An ExceptionGroup cannot hold a SystemExit: a stand-in carries it as its cause.
    pool = lifepool.LifecyclePool(ExitingExit(hookdir), containers=1)
    assert pool.ping.call() == "pong"
    with pytest.raises(lifepool.ExitHookError) as info:
        pool.shutdown()
    (error,) = info.value.exceptions
    assert isinstance(error, lifepool.LifepoolError) and "SystemExit: 3" in str(error)
    assert isinstance(error.__cause__, SystemExit) and error.__cause__.args == (3,)


def test_a_container_dying_in_its_exit_hook_is_reported_as_it_died(hookdir):
    # Not as the grace-period kill that was armed but never had to happen.
    pool = lifepool.LifecyclePool(CrashingExit(hookdir), containers=1, exit_grace_period=60)
    assert pool.ping.call() == "pong"
    with pytest.raises(lifepool.ExitHookError) as info:
        pool.shutdown()
    (error,) = info.value.exceptions
    assert isinstance(error, lifepool.ContainerCrashedError) and error.exitcode == 5
    assert "died during its exit hook: exit code 5" in str(error), error


def test_failing_exit_hook_raises_exit_hook_error(hookdir):
    pool = lifepool.LifecyclePool(FailingExit(hookdir), containers=2)
    assert pool.ping.call() == "pong"
    with pytest.raises(lifepool.ExitHookError) as info:
        pool.shutdown()
    group = info.value
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, lifepool.LifepoolError)
    assert len(group.exceptions) == 2
    for error in group.exceptions:
        assert isinstance(error, RuntimeError)
        assert "cleanup failed" in str(error)
        assert "raise RuntimeError" in "".join(traceback.format_exception(error))
        assert any("exit hook of container" in note for note in error.__notes__)
    pool.shutdown()  # idempotent, reports once


def test_failing_exit_hook_while_block_raises_attaches_notes(hookdir):
    with pytest.raises(ZeroDivisionError) as info:
        with lifepool.LifecyclePool(FailingExit(hookdir), containers=1):
            1 / 0  # noqa: B018
    assert any("exit hook failed" in note for note in info.value.__notes__)


@pytest.mark.on_ray
def test_enter_failure_fails_fast_and_entered_containers_still_exit(hookdir):
    with pytest.raises(lifepool.EnterError) as info:
        with lifepool.LifecyclePool(FailingEnter(hookdir), containers=2) as pool:
            # Some calls may run on the healthy container before the other one's
            # failure arrives (it enters second: the failing one enters first);
            # call until it has (bounded: the failure is certain to come).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pool.work.call(1)
    cause = info.value.__cause__
    assert isinstance(cause, OSError)
    assert "cannot load weights" in str(cause)
    assert "raise OSError" in "".join(traceback.format_exception(cause))
    entered = markers(hookdir, "enter")
    exited = markers(hookdir, "exit")
    assert set(exited) == set(entered)  # the healthy container (if it got in) exited once
    assert all(text == "<class 'lifepool.EnterError'>" for text in exited.values())


def test_enter_failure_fails_pending_calls(hookdir):
    pool = lifepool.LifecyclePool(FailingEnter(hookdir), containers=1)
    futures = [pool.work.spawn(i) for i in range(5)]
    for future in futures:
        with pytest.raises(lifepool.EnterError):
            future.result(timeout=60)
    with pytest.raises(lifepool.EnterError):
        pool.work.call(1)
    pool.shutdown()


def test_calls_after_shutdown_raise_runtime_error(hookdir):
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.echo.call(1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)


@pytest.mark.on_ray
def test_shutdown_lets_queued_calls_finish(hookdir):
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1)
    release, started = hookdir / "release", hookdir / "started"
    first = pool.block_until.spawn(str(release), str(started))
    queued = [pool.double.spawn(i) for i in range(5)]
    wait_for_path(started)
    pool.shutdown(wait=False)
    release.touch()
    assert first.result(timeout=60) == "released"
    assert [f.result(timeout=60) for f in queued] == [0, 2, 4, 6, 8]
    pool.shutdown()
    assert len(markers(hookdir, "exit")) == 1


def test_a_kill_while_queued_calls_would_finish_starts_no_replacement(hookdir):
    # What a second Ctrl-C does to a stopping pool: its containers die at once,
    # and what was still queued is dropped, never run on a new container.
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1)
    started = hookdir / "started"
    first = pool.block_until.spawn(str(hookdir / "never"), str(started))
    queued = [pool.double.spawn(i) for i in range(5)]
    wait_for_path(started)
    pool.shutdown(wait=False)  # queued calls would still run
    pool._dispatcher.control("kill", "the test asked")
    assert pool._dispatcher.closed.wait(60)
    with pytest.raises(lifepool.ContainerCrashedError, match="the test asked"):
        first.result(timeout=0)
    assert all(f.cancelled() or isinstance(f.exception(timeout=0), lifepool.ContainerCrashedError) for f in queued)
    assert len(markers(hookdir, "enter")) == 1
    with pytest.raises(lifepool.ExitHookError, match="exit hooks failed"):
        pool.shutdown()  # the killed container's exit hook never ran


def test_shutdown_cancel_futures_drops_queued_calls(hookdir):
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1)
    release, started = hookdir / "release", hookdir / "started"
    first = pool.block_until.spawn(str(release), str(started))
    queued = [pool.double.spawn(i) for i in range(5)]
    wait_for_path(started)
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)  # at once, as concurrent.futures executors do
    assert first.running()
    release.touch()
    assert first.result(timeout=60) == "released"  # running calls finish
    pool.shutdown()


def test_block_ending_by_exception_cancels_queued_calls(hookdir):
    release, started = hookdir / "release", hookdir / "started"
    with pytest.raises(KeyError):
        with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as pool:
            first = pool.block_until.spawn(str(release), str(started))
            queued = [pool.double.spawn(i) for i in range(5)]
            wait_for_path(started)
            release.touch()
            raise KeyError("stop")
    assert first.result(timeout=0) == "released"
    assert all(f.cancelled() or f.done() for f in queued)
    assert any(f.cancelled() for f in queued)


def test_pool_dropped_without_shutdown_still_exits_its_containers(hookdir):
    import gc

    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1)
    pid = pool.pid.call()
    del pool
    gc.collect()
    wait_for_path(hookdir / f"exit-{pid}")
    assert_gone([pid])


@pytest.mark.parametrize("bad", [0, -1])
def test_containers_must_be_positive(bad):
    with pytest.raises(ValueError, match="containers"):
        lifepool.LifecyclePool(Plain, containers=bad)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"containers": 1.5}, TypeError),
        ({"max_inputs": 0}, ValueError),
        ({"exit_grace_period": 0}, ValueError),
        ({"exit_grace_period": float("nan")}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"retries": -1}, ValueError),
        ({"max_calls_per_container": 0}, ValueError),
        ({"start_method": "telepathy"}, ValueError),
        ({"name": 3}, TypeError),
    ],
)
def test_bad_settings_are_rejected_at_construction(kwargs, error):
    with pytest.raises(error):
        lifepool.LifecyclePool(Plain, **{"containers": 1, **kwargs})


def test_unpicklable_target_is_rejected_at_construction():
    import threading

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    with pytest.raises(TypeError, match="cannot be pickled"):
        lifepool.LifecyclePool(Holder(), containers=1)


def test_a_function_is_not_a_target():
    with pytest.raises(TypeError, match="class or an instance"):
        lifepool.LifecyclePool(print, containers=1)


def test_an_exit_hook_past_the_grace_period_is_killed_and_reported(hookdir, caplog):
    import logging

    from targets import HangingExit

    caplog.set_level(logging.WARNING, logger="lifepool")
    pool = lifepool.LifecyclePool(HangingExit(), containers=1, exit_grace_period=0.5)
    pid = pool.ping.call()
    with pytest.raises(lifepool.ExitHookError) as info:
        pool.shutdown()
    (error,) = info.value.exceptions
    assert "killed (SIGKILL)" in str(error) and "exit_grace_period=0.5" in str(error)
    assert f"killing container 0 (pid {pid})" in caplog.text
    assert_gone([pid])


@pytest.mark.parametrize("start_method", ["exec", "loky", "spawn", "forkserver"])
@pytest.mark.local_only("start_method= chooses how local processes start (Ray containers always start with exec)")
def test_every_start_method_runs_the_lifecycle(hookdir, start_method):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1, start_method=start_method) as pool:
        assert pool.double.call(21) == 42
    assert len(markers(hookdir, "exit")) == 1


def test_processes_user_code_left_to_the_interpreters_exit_do_not_outlive_the_container():
    # A container leaves with os._exit, which skips the interpreter's exit
    # callbacks; the executor's own exit callback must still stop its workers.
    with lifepool.LifecyclePool(LeavesAnExecutor(), containers=1) as pool:
        pids = pool.executor_pids.call()
        container = pool.pid.call()
    assert pids
    assert_gone([container, *pids])


@pytest.mark.skipif(not os.path.exists("/proc/self/comm"), reason="process names are set through /proc (Linux)")
def test_containers_carry_the_pool_name_and_their_index_as_process_name(hookdir):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1, name="embedder-service") as pool:
        pid = pool.pid.call()
        with open(f"/proc/{pid}/comm") as comm:
            assert comm.read().strip() == "lp-embedder-s-0"  # (Linux keeps 15 bytes)
