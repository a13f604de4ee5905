"""The default start method ("exec", lifepool/_launch.py) and every other one."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import textwrap
import threading

import pytest
from conftest import assert_gone
from launch_targets import Surroundings, exit_with, kill_self_with, report_start

import lifepool
from lifepool import _launch, _template, _worker
from lifepool._options import START_METHODS


@pytest.mark.parametrize("start_method", [None, "exec"])
def test_template_is_the_default_exec_is_selectable_and_containers_never_import_main(start_method):
    with lifepool.LifecyclePool(Surroundings, containers=2, start_method=start_method) as pool:
        seen = pool.where.call()  # (all containers are started before the first call can run)
        transports = [r.transport for r in pool._dispatcher.slots]
        if start_method is None:
            assert all(isinstance(t, _template.TemplateTransport) for t in transports)
            parent = transports[0].template.pid
        else:
            assert all(isinstance(t.process, _launch.ExecProcess) for t in transports)
            parent = os.getpid()
        pids = {pool.pid.call() for _ in range(4)} | {r.pid for r in pool._dispatcher.slots}
    assert seen["main_file"] is None  # the bootstrap's ``-c``, not the parent's __main__ (pytest's)
    assert seen["argv"] == sys.argv
    assert seen["ppid"] == parent
    assert seen["pgrp"] == os.getpgrp()  # Ctrl-C in a terminal reaches the containers too
    # Caught by a handler that does nothing, not ignored: SIG_IGN would outlive exec in the user's subprocesses.
    assert {signal.SIGINT, signal.SIGTERM} <= seen["signals"]["SigCgt"]
    assert not {signal.SIGINT, signal.SIGTERM} & seen["signals"]["SigIgn"]
    assert signal.SIGINT not in seen["signals"]["SigBlk"]  # _worker.main unblocked what the parent blocked
    assert_no_process(pids)


def test_containers_get_the_parents_sys_path_and_working_directory(tmp_path, monkeypatch):
    modules = tmp_path / "user_code"
    modules.mkdir()
    (modules / "user_model.py").write_text(
        textwrap.dedent(
            """
            import os

            class UserModel:
                def __enter__(self):
                    self.cwd = os.getcwd()

                def where(self):
                    return self.cwd, __file__
            """
        )
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(workdir)
    import user_model

    with lifepool.LifecyclePool(user_model.UserModel, containers=1) as pool:
        cwd, file = pool.where.call()
        # The class went by reference (plain pickle), so the container imported the module itself.
        assert file == str(modules / "user_model.py")
        assert cwd == str(workdir)
    with lifepool.LifecyclePool(Surroundings, containers=1) as pool:
        assert pool.where.call()["sys_path"] == sys.path


def test_killed_container_is_reported_by_signal_and_leaves_no_zombie():
    with lifepool.LifecyclePool(Surroundings, containers=1) as pool:
        first = pool.pid.call()
        with pytest.raises(lifepool.ContainerCrashedError, match="killed by SIGKILL") as info:
            pool.kill_self.call()
        assert info.value.exitcode == -signal.SIGKILL
        with pytest.raises(lifepool.ContainerCrashedError, match="exit code 5") as info:
            pool.exit_now.call(5)
        assert info.value.exitcode == 5
        last = pool.pid.call()  # replacements serve on
    assert_no_process({first, last})


@pytest.mark.parametrize("start_method", START_METHODS)
def test_every_start_method_runs_calls_and_reports_crashes(start_method):
    with lifepool.LifecyclePool(Surroundings, containers=2, start_method=start_method) as pool:
        seen = pool.where.call()
        # (forkserver's containers are children of its server, a template's of the template)
        assert seen["ppid"] == os.getpid() or start_method in ("forkserver", "template")
        pids = {pool.pid.call()}
        with pytest.raises(lifepool.ContainerCrashedError, match="killed by SIGKILL"):
            pool.kill_self.call()
        pids |= {r.pid for r in pool._dispatcher.slots}
    assert_no_process(pids)


def test_under_the_fork_server_a_long_call_is_not_taken_for_an_orphan():
    # A container's watcher compares getppid() with the parent it started
    # with, every _WATCH_INTERVAL; under the fork server that parent is the
    # server, not the pool's process, and a call running at the watcher's
    # first look was interrupted as if the parent had died.
    with lifepool.LifecyclePool(Surroundings, containers=1, start_method="forkserver") as pool:
        pid = pool.pid.call()
        assert pool.nap.spawn(1.5 * _worker._WATCH_INTERVAL).result(timeout=30) == "rested"
        assert pool.pid.call() == pid  # the same container, not a replacement


def test_a_container_that_exits_by_itself_mid_call_fails_the_call_and_is_replaced():
    with lifepool.LifecyclePool(Surroundings, containers=1) as pool:
        first = pool.pid.call()
        future = pool.pretend_orphaned.spawn()
        with pytest.raises(lifepool.ContainerCrashedError, match=r"while running Surroundings\.pretend_orphaned"):
            future.result(timeout=30)
        assert pool.pid.call() != first


def test_a_dead_containers_pipe_ends_even_when_a_sibling_holds_a_copy(tmp_path):
    # Fork-server containers may inherit copies of their elder siblings' pipe
    # ends, so a dead container's pipe need not reach EOF; the parent must
    # still finish reading it, fail its call and replace it.
    with lifepool.LifecyclePool(Surroundings, containers=2, start_method="forkserver") as pool:
        calls = [pool.exit_if_index.spawn(0, 3, str(tmp_path), 2) for _ in range(2)]  # one per container
        outcomes = [future.exception(timeout=30) or future.result() for future in calls]
        crashed = [o for o in outcomes if isinstance(o, lifepool.ContainerCrashedError)]
        assert len(crashed) == 1 and crashed[0].exitcode == 3, outcomes
        assert 1 in outcomes, outcomes
        assert pool.pid.spawn().result(timeout=30) > 0


def test_a_pool_stops_even_when_the_fork_server_dies(tmp_path):
    # The server's death makes every sentinel it gave report an exit, while
    # the containers still run and hold their pipes open (here one sleeps,
    # deaf to interrupts): reading a pipe to its end must not wait for EOF.
    from multiprocessing import forkserver

    pool = lifepool.LifecyclePool(Surroundings, containers=2, start_method="forkserver")
    pids = {pool.pid.call()} | {r.pid for r in pool._dispatcher.slots}
    marker = tmp_path / "sleeping"
    pool.sleep_deaf.spawn(60, str(marker))
    for _ in range(1500):  # (bounded: 30 s)
        if marker.exists() and marker.read_text():
            break
        threading.Event().wait(0.02)
    sleeper = int(marker.read_text())
    os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
    outcome: list[BaseException | None] = []

    def stop():
        try:
            pool.shutdown()
            outcome.append(None)
        except BaseException as error:  # (their exit hooks' fate is not the point)
            outcome.append(error)

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    stopper.join(20)
    os.kill(sleeper, signal.SIGKILL)  # (its parent is gone: nobody else will)
    assert not stopper.is_alive(), "shutdown hung after the fork server died"
    assert outcome and not isinstance(outcome[0], (TimeoutError, RuntimeError)), outcome
    assert_gone(pids)


def test_unknown_start_method_names_the_choices():
    with pytest.raises(ValueError, match="'template', 'exec', 'loky', 'spawn', 'forkserver'"):
        lifepool.LifecyclePool(Surroundings, start_method="fork")


@pytest.fixture(params=["pidfd", "pipe"])
def sentinel_kind(request, monkeypatch):
    """Both sentinels: a pidfd where the kernel has it, else a pipe only the child writes."""
    if request.param == "pidfd" and not _launch._has_pidfd():
        pytest.skip("os.pidfd_open is not available here")
    monkeypatch.setattr(_launch, "_pidfd", request.param == "pidfd")
    return request.param


def start_blocked(process: _launch.ExecProcess) -> None:
    """Start *process* from a thread that blocks SIGINT and SIGTERM, as the dispatcher does."""
    errors = []

    def run():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            process.start()
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def wait_sentinel(process: _launch.ExecProcess) -> None:
    readable, _, _ = select.select([process.sentinel], [], [], 30)
    assert readable, "the sentinel did not become readable"


def test_launched_process_inherits_mask_group_and_directory_and_nothing_else(tmp_path, sentinel_kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "state.json"
    parent, child = _launch.ExecContext.Pipe(duplex=True)
    process = _launch.ExecContext.Process(target=report_start, args=(str(out), child), name="probe")
    start_blocked(process)
    child.close()
    parent.send_bytes(b"ping")
    assert parent.poll(30)
    assert parent.recv_bytes() == b"pingping"
    wait_sentinel(process)
    process.join()
    assert process.exitcode == 0
    state = json.loads(out.read_text())
    assert {signal.SIGINT, signal.SIGTERM} <= set(state["signals"]["SigBlk"])
    assert state["pgrp"] == os.getpgrp()
    assert state["cwd"] == str(tmp_path)
    # stdin, stdout, stderr, the socket, the listing's own descriptor; and the sentinel pipe's write end
    assert len(state["fds"]) == (6 if sentinel_kind == "pipe" else 5)
    parent.close()
    process.close()


@pytest.mark.parametrize(("target", "arg", "code"), [(exit_with, 0, 0), (exit_with, 7, 7), (kill_self_with, 9, -9)])
def test_launched_process_exit_codes(sentinel_kind, target, arg, code):
    process = _launch.ExecProcess(target, (arg,))
    assert process.exitcode is None
    process.start()
    wait_sentinel(process)
    process.join()
    assert process.exitcode == code
    assert not os.path.exists(f"/proc/{process.pid}")  # reaped: no zombie
    process.close()


def test_launch_failure_is_an_enter_failure(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(lifepool.EnterError) as info:
        # (the exec launcher: a template's containers are forks, and its zygote may be up already)
        with lifepool.LifecyclePool(Surroundings, containers=1, start_method="exec") as pool:
            pool.pid.call()
    assert isinstance(info.value.__cause__, FileNotFoundError)


def assert_no_process(pids) -> None:
    """Every pid has exited and been reaped (no zombie left behind)."""
    assert_gone(pids)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_join_with_a_timeout_returns_while_the_process_runs(tmp_path):
    parent, child = _launch.ExecContext.Pipe(duplex=True)
    process = _launch.ExecProcess(report_start, (str(tmp_path / "state.json"), child))
    process.start()
    child.close()
    process.join(timeout=0.01)  # it waits for our message
    assert process.exitcode is None and process.is_alive()
    parent.send_bytes(b"x")
    assert parent.recv_bytes() == b"xx"
    process.join(timeout=30)
    assert process.exitcode == 0
    parent.close()
    process.close()
