"""Calls sent ahead: a busy container is sent queued calls to wait in its pipe.

With a backlog (more than SEND_AHEAD queued calls per container), the
dispatcher sends each busy container as many more calls as are queued per
container, from SEND_AHEAD up to DEEP_AHEAD: with one container and n queued
calls, n // 2 go ahead and n // 2 stay queued (while that is at most
DEEP_AHEAD). These tests pin what must not change because of it: an
interrupt stops the call it was meant for and no other, a crash fails only
the call that was running, and an abort starts nothing new.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from targets import Ahead, wait_for_path

import lifepool
from lifepool._schedule._tables import DEEP_AHEAD, SEND_AHEAD


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _settle(pool) -> None:
    """Wait until the dispatcher has carried out the commands given so far."""
    dispatcher = pool._dispatcher
    _wait_until(lambda: not dispatcher.commands)
    with dispatcher._lock:  # held while it carries out what it took from `commands`
        pass


def _sent_ahead(pool) -> int:
    dispatcher = pool._dispatcher
    with dispatcher._lock:
        record = dispatcher.slots[0]
        return record.load[None] - 1


def _backlog(pool, hookdir, method="block", count=3 * SEND_AHEAD):
    """One container busy with *method* (waiting for the 'release' file), *count* calls queued behind it."""
    release, started = hookdir / "release", hookdir / "started"
    first = getattr(pool, method).spawn(str(release), str(started))
    wait_for_path(started)
    rest = [pool.run.spawn(str(hookdir), i) for i in range(count)]
    _wait_until(lambda: _sent_ahead(pool) == min(count // 2, DEEP_AHEAD))
    _settle(pool)
    assert _sent_ahead(pool) == min(count // 2, DEEP_AHEAD)  # (and no more)
    return first, rest, release


def test_a_backlog_is_sent_ahead_and_runs_in_order(hookdir):
    with lifepool.LifecyclePool(Ahead, containers=1) as pool:
        first, rest, release = _backlog(pool, hookdir)
        assert not list(hookdir.glob("ran-*"))  # waiting in the pipe, not running
        release.touch()
        assert first.result(timeout=30) == "released"
        assert [f.result(timeout=30) for f in rest] == list(range(len(rest)))


def test_an_interrupt_for_a_call_sent_ahead_stops_that_call_only(hookdir):
    with lifepool.LifecyclePool(Ahead, containers=1) as pool:
        first, rest, release = _backlog(pool, hookdir)
        victim = rest[2]  # sent ahead: in the container's pipe
        assert victim.running()
        pool._abandon([victim], interrupt=True)  # what a Ctrl-C on victim.result() does
        _settle(pool)  # the interrupt is sent and the container signalled, before the release
        # The container reads the interrupt ahead (the frame tells it which
        # call the signal is for); the running call goes on.
        worker_pid = pool._dispatcher.slots[0].pid
        release.touch()
        assert first.result(timeout=30) == "released"
        with pytest.raises(KeyboardInterrupt):
            victim.result(timeout=30)
        assert pool._dispatcher.slots[0].pid == worker_pid
        others = [f for f in rest if f is not victim]
        assert [f.result(timeout=30) for f in others] == [i for i in range(len(rest)) if i != 2]
        assert not (hookdir / "ran-2").exists()


def test_a_crash_fails_the_running_call_only(hookdir):
    with lifepool.LifecyclePool(Ahead, containers=1) as pool:
        first, rest, release = _backlog(pool, hookdir, method="crash")
        release.touch()
        with pytest.raises(lifepool.ContainerCrashedError):
            first.result(timeout=30)
        # The calls sent ahead had not started: they run in the replacement.
        assert [f.result(timeout=30) for f in rest] == list(range(len(rest)))


def test_an_abort_starts_none_of_the_calls_sent_ahead(hookdir):
    pool = lifepool.LifecyclePool(Ahead, containers=1)
    with pytest.raises(KeyboardInterrupt), pool:
        first, rest, _ = _backlog(pool, hookdir)
        raise KeyboardInterrupt  # as a Ctrl-C in the with block: stop now
    with pytest.raises(KeyboardInterrupt):
        first.result(timeout=30)
    for future in rest:
        with pytest.raises((KeyboardInterrupt, concurrent.futures.CancelledError)):
            future.result(timeout=30)
    assert not list(hookdir.glob("ran-*"))


def test_a_deep_backlog_is_sent_ahead_up_to_the_cap(hookdir):
    with lifepool.LifecyclePool(Ahead, containers=1) as pool:
        first, rest, release = _backlog(pool, hookdir, count=3 * DEEP_AHEAD)
        assert _sent_ahead(pool) == DEEP_AHEAD
        with pool._dispatcher._lock:
            assert len(pool._dispatcher.pending[None]) == 2 * DEEP_AHEAD
        release.touch()
        assert first.result(timeout=30) == "released"
        assert [f.result(timeout=30) for f in rest] == list(range(len(rest)))


def test_no_backlog_no_sending_ahead(hookdir):
    with lifepool.LifecyclePool(Ahead, containers=1) as pool:
        release, started = hookdir / "release", hookdir / "started"
        first = pool.block.spawn(str(release), str(started))
        wait_for_path(started)
        queued = [pool.run.spawn(str(hookdir), i) for i in range(SEND_AHEAD)]
        assert _sent_ahead(pool) == 0
        assert not any(f.running() for f in queued)  # still cancellable
        assert queued[0].cancel()
        release.touch()
        assert first.result(timeout=30) == "released"
        assert [f.result(timeout=30) for f in queued[1:]] == list(range(1, SEND_AHEAD))


def test_calls_waiting_behind_a_long_call_move_to_an_idle_container(hookdir):
    # Two containers: one is stuck in a long call with calls sent ahead behind
    # it; the other runs out of work. Those calls are asked back (REVOKE) and
    # run on the idle container, while the long call still runs.
    with lifepool.LifecyclePool(Ahead, containers=2) as pool:
        release, started = hookdir / "release", hookdir / "started"
        first = pool.block.spawn(str(release), str(started))
        wait_for_path(started)
        rest = [pool.run.spawn(str(hookdir), i) for i in range(3 * SEND_AHEAD * 2)]
        assert [f.result(timeout=30) for f in rest] == list(range(len(rest)))
        assert not first.done()
        release.touch()
        assert first.result(timeout=30) == "released"
