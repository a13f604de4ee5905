"""Faults: crashed, hung, recycled and orphaned containers never take the pool or a call down."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import assert_gone, markers
from targets import CrashOnEnter, Fragile, wait_for_path

import lifepool

pytestmark = pytest.mark.usefixtures("backend")


@pytest.mark.on_ray
def test_crash_fails_the_call_with_details_and_the_pool_keeps_serving(hookdir, caplog):
    caplog.set_level(logging.INFO, logger="lifepool")
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as pool:
        with pytest.raises(lifepool.ContainerCrashedError) as info:
            pool.exit_now.call(3)
        error = info.value
        assert isinstance(error, lifepool.LifepoolError)
        assert error.exitcode == 3 and error.pid is not None and error.index in (0, 1)
        message = str(error)
        assert f"container {error.index}" in message and f"pid {error.pid}" in message
        assert "Fragile.exit_now" in message and "exit code 3" in message
        assert [pool.echo.call(i) for i in range(10)] == list(range(10))
        pids = {pool.pid.call() for _ in range(20)}
        assert error.pid not in pids
    entered, exited = markers(hookdir, "enter"), markers(hookdir, "exit")
    assert len(entered) == 3
    assert set(exited) == set(entered) - {error.pid}  # the dead one could not exit
    logged = caplog.text
    assert f"container {error.index} (pid {error.pid}) died (exit code 3)" in logged
    assert f"started replacement container {error.index}" in logged
    assert_gone(entered)


def test_sigkill_is_reported_by_signal_name(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as pool:
        with pytest.raises(lifepool.ContainerCrashedError, match="killed by SIGKILL"):
            pool.kill_self.call()
        assert pool.echo.call("back") == "back"


def test_crash_leaves_queued_calls_untouched(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as pool:
        crash = pool.exit_now.spawn(1)
        queued = [pool.echo.spawn(i) for i in range(20)]
        with pytest.raises(lifepool.ContainerCrashedError):
            crash.result(timeout=60)
        assert [f.result(timeout=60) for f in queued] == list(range(20))


@pytest.mark.on_ray
def test_retries_rerun_a_crashed_call_on_a_healthy_container(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2, retries=1) as pool:
        assert pool.crash_once.call("a") == "survived"
        # a call that crashes every time still fails after its one retry
        with pytest.raises(lifepool.ContainerCrashedError):
            pool.exit_now.call(2)


@pytest.mark.on_ray
def test_timeout_fails_the_call_and_the_container_serves_on(hookdir, caplog):
    caplog.set_level(logging.INFO, logger="lifepool")
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, timeout=0.5) as pool:
        pid = pool.pid.call()
        with pytest.raises(lifepool.CallTimeoutError) as info:
            pool.sleep.call(60)
        assert isinstance(info.value, TimeoutError)
        assert "Fragile.sleep" in str(info.value) and "timeout=0.5" in str(info.value)
        assert pool.echo.call("next") == "next"
        assert pool.pid.call() == pid  # interrupted, not killed
    assert markers(hookdir, "interrupted")
    assert "timed out" in caplog.text


def test_a_timed_out_call_that_unwinds_leaves_its_container_alone(hookdir, monkeypatch):
    # The kill armed in case a timed-out call does not unwind is disarmed when
    # it does; it used to fire anyway, in the middle of the next call.
    from lifepool._schedule import _stopping

    monkeypatch.setattr(_stopping, "TIMEOUT_UNWIND_SECONDS", 0.3)
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, timeout=3) as pool:
        pid = pool.pid.call()
        with pytest.raises(lifepool.CallTimeoutError):
            pool.sleep.call(60)
        assert pool.sleep.call(1.0) == "slept"  # well past the unwind deadline, well within the timeout
        assert pool.pid.call() == pid


def test_timeout_counts_from_start_not_from_queueing(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, timeout=3) as pool:
        first = pool.sleep.spawn(1.0)
        second = pool.sleep.spawn(1.0)  # queued ~1 s, runs ~1 s: within its own bound
        assert first.result(timeout=60) == "slept"
        assert second.result(timeout=60) == "slept"


def test_a_call_that_swallows_the_interrupt_gets_its_container_killed_and_replaced(hookdir, caplog, monkeypatch):
    from lifepool._schedule import _stopping

    caplog.set_level(logging.INFO, logger="lifepool")
    monkeypatch.setattr(_stopping, "TIMEOUT_UNWIND_SECONDS", 0.5)
    # The timeout must fire once the call runs: an interrupt that comes before
    # it starts (a container slower than the timeout to pick it up, on a loaded
    # machine) stops it before it can swallow anything. Hence 2 s, not less.
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1, timeout=2) as pool:
        pid = pool.pid.call()
        queued_after = None
        with pytest.raises(lifepool.CallTimeoutError):
            future = pool.stubborn_sleep.spawn(60)
            queued_after = pool.echo.spawn("not lost")
            future.result(timeout=60)
        assert queued_after.result(timeout=60) == "not lost"
        assert pool.pid.call() != pid
    assert "killing container 0" in caplog.text


def test_recycling_after_n_calls_loses_and_duplicates_nothing(hookdir, caplog):
    caplog.set_level(logging.INFO, logger="lifepool")
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2, max_calls_per_container=5) as pool:
        assert list(pool.echo.map(range(40))) == list(range(40))
    entered, exited = markers(hookdir, "enter"), markers(hookdir, "exit")
    assert len(entered) >= 8  # 40 calls / 5 per container
    assert set(exited) == set(entered)
    assert set(exited.values()) == {"None"}
    assert "recycling container" in caplog.text


@pytest.mark.on_ray
def test_crash_during_enter_is_an_enter_failure(hookdir):
    with lifepool.LifecyclePool(CrashOnEnter, containers=1) as pool:
        with pytest.raises(lifepool.EnterError) as info:
            pool.work.call()
        assert isinstance(info.value.__cause__, lifepool.ContainerCrashedError)
        assert "exit code 5" in str(info.value.__cause__)
        with pytest.raises(lifepool.EnterError):
            pool.work.call()  # and no crash loop: the pool stays broken


def test_several_hundred_megabyte_result(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as pool:
        assert len(pool.big.call(300)) == 300 * 1024 * 1024
        assert pool.echo.call(1) == 1


def test_private_and_dunder_names_are_refused(hookdir):
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as pool:
        for name in ("__enter__", "__exit__", "_private", "__init__"):
            with pytest.raises(AttributeError):
                pool.method(name)


@pytest.mark.slow
def test_soak_random_crashes_lose_nothing(hookdir):
    rng = random.Random(1234)
    crashes = {i for i in range(3000) if rng.random() < 0.003}
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as pool:
        futures = [pool.maybe_crash.spawn(i, i in crashes) for i in range(3000)]
        outcomes = [f.exception(timeout=120) or f.result() for f in futures]
    for i, outcome in enumerate(outcomes):
        if i in crashes:
            assert isinstance(outcome, lifepool.ContainerCrashedError), (i, outcome)
        else:
            # one call per container at a time: a crash takes no other call with it
            assert outcome == i, (i, outcome)


@pytest.mark.slow
def test_soak_map_with_random_crashes_gives_every_input_one_outcome(hookdir):
    from lifepool._mapping import _ChunkedMap

    rng = random.Random(4321)
    crashes = {i for i in range(20000) if rng.random() < 0.0005}
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as pool:
        results = list(pool.maybe_crash.starmap(((i, i in crashes) for i in range(20000)), return_exceptions=True))
    assert len(results) == 20000
    collateral = 0
    for i, result in enumerate(results):
        if i in crashes:
            assert isinstance(result, lifepool.ContainerCrashedError), (i, result)
        elif isinstance(result, lifepool.ContainerCrashedError):
            collateral += 1  # quick inputs travel in chunks: a crash fails the rest of its chunk
        else:
            assert result == i, (i, result)
    assert collateral <= len(crashes) * _ChunkedMap.MAX_CHUNK


def readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of *proc*'s stdout, or fail after *timeout* seconds."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from the script within {timeout}s")
    return proc.stdout.readline()


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import lifepool

    class Holder:
        def __init__(self, directory):
            self.directory = directory
        def __enter__(self):
            pass
        def pid(self):
            return os.getpid()
        def hang(self, started):
            open(started, "w").close()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    time.sleep(0.05)
                except KeyboardInterrupt:
                    if not os.environ.get("SWALLOW"):
                        raise
        def __exit__(self, exc_type, exc_value, tb):
            path = os.path.join(self.directory, f"exit-{os.getpid()}")
            with open(path + ".tmp", "w") as f:
                f.write(exc_type.__name__ + "|" + str(issubclass(exc_type, KeyboardInterrupt)))
            os.rename(path + ".tmp", path)
            if os.environ.get("HANG_IN_EXIT"):
                time.sleep(600)  # only the container's own grace timer ends this

    directory = sys.argv[1]
    pool = lifepool.LifecyclePool(Holder(directory), containers=2, exit_grace_period=2)
    pids = set()
    while len(pids) < 2:
        pids = {pool.pid.spawn().result() for _ in range(8)} | pids
    busy = pool.hang.spawn(os.path.join(directory, "started"))
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.local_only("driver SIGKILLed: Ray ends its actors in-process, and their containers: no exit hooks")
@pytest.mark.parametrize("how", ["clean-exit", "hung-exit-hook", "call-swallows-the-interrupt"])
def test_kill_minus_nine_of_the_parent_leaves_no_orphans(hookdir, tmp_path, how):
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    env = {
        **os.environ,
        "HANG_IN_EXIT": "1" if how == "hung-exit-hook" else "",
        "SWALLOW": "1" if how == "call-swallows-the-interrupt" else "",
    }
    command = [sys.executable, str(script), str(hookdir)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            line = readline(proc, timeout=60)
            pids = [int(p) for p in line.split()]
            assert len(pids) == 2, line
            wait_for_path(hookdir / "started")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert_gone(pids, timeout=2 + 5)  # exit_grace_period + 5 s
        finally:
            if proc.poll() is None:
                proc.kill()
    exited = markers(hookdir, "exit")
    if how == "call-swallows-the-interrupt":
        assert len(exited) == 1  # the idle one; the other was still in its call at the grace period's end
    else:
        assert set(exited) == set(pids)
    assert set(exited.values()) == {"ParentExitedError|True"}
