"""The template start method: containers forked from one template process per pool."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import lifepool
from lifepool import _template
from tests.conftest import assert_gone, is_alive, markers, stop_child
from tests.targets import wait_for_path
from tests.template_targets import Cwd, FailingSnap, Snapped, ThreadedSnap, rollup

pytestmark = pytest.mark.skipif(not _template.can_use(), reason="the template start method needs pidfds")


def test_containers_fork_from_one_template_that_ran_the_snap_hook_once(tmp_path):
    with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=3) as pool:
        seen = {pool.where.call() for _ in range(30)}
        assert pool.status()  # (served)
    snaps = markers(tmp_path, "snap")
    assert len(snaps) == 1, snaps
    (template,) = snaps
    entered = markers(tmp_path, "enter")
    assert len(entered) == 3
    assert template not in entered
    for pid, parent, snap_pid in seen:
        assert parent == template and snap_pid == template and pid in entered
    assert_gone([template, *entered])


def test_start_method_template_is_the_default_and_exec_still_runs_snap_hooks_per_container(tmp_path):
    with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=2, start_method="exec") as pool:
        pid, parent, snap_pid = pool.where.call()
    assert snap_pid == pid and parent == os.getpid()
    assert sorted(markers(tmp_path, "snap")) == sorted(markers(tmp_path, "enter"))


def test_replacement_forks_again_without_the_snap_hook_but_with_the_enter_hooks(tmp_path):
    with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=1) as pool:
        first, _, template = pool.where.call()
        with pytest.raises(lifepool.ContainerCrashedError) as raised:
            pool.crash.call()
        assert raised.value.exitcode == 3  # (the exit status comes from the template)
        second, parent, snap_pid = pool.where.call()
    assert second != first and parent == template and snap_pid == template
    assert list(markers(tmp_path, "snap")) == [template]
    assert sorted(markers(tmp_path, "enter")) == sorted([first, second])


def test_the_snapshotted_array_is_one_copy_in_shared_pages(tmp_path):
    megabytes = 96
    with lifepool.LifecyclePool(Snapped(str(tmp_path), megabytes), containers=3) as pool:
        assert pool.total.call() == megabytes * 2**20 // 4096  # a word of every page: ones
        _, _, template = pool.where.call()
        containers = wait_for_markers(tmp_path, "enter", 3)
        rollups = [rollup(pid) for pid in containers]
        template_rollup = rollup(template)
    size_kb = megabytes * 1024
    for container in rollups:
        # The array's pages are mapped (Rss) but shared with the template: each is not its own copy.
        assert container["Rss"] > size_kb
        assert container["Shared_Clean"] + container["Shared_Dirty"] > 0.9 * size_kb
        assert container["Private_Dirty"] + container["Private_Clean"] < 0.5 * size_kb
    assert template_rollup["Pss"] < 0.75 * size_kb  # (split with the containers that map it)
    total_pss = template_rollup["Pss"] + sum(container["Pss"] for container in rollups)
    assert total_pss < 1.5 * size_kb  # about one copy, where four containers of their own would hold 4


def wait_for_markers(directory, event: str, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := markers(directory, event)) < count:
        assert time.monotonic() < deadline, f"{count} {event} markers did not appear within {timeout}s: {found}"
        time.sleep(0.01)
    return sorted(found)


def test_a_snap_hook_that_leaves_a_thread_warns_once_and_runs_in_each_container(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lifepool")
    with lifepool.LifecyclePool(ThreadedSnap(str(tmp_path)), containers=2) as pool:
        pids = {pool.where.call() for _ in range(20)}
    warnings = [r for r in caplog.records if "snap=True" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "threads after" in warnings[0].getMessage() and "ordinary @lifepool.enter()" in warnings[0].getMessage()
    snaps = markers(tmp_path, "snap")
    assert len(snaps) == 3  # the template's, then each container's own
    assert pids <= set(snaps)


def test_a_failing_snap_hook_breaks_the_pool_with_enter_error():
    pool = lifepool.LifecyclePool(FailingSnap, containers=2)
    try:
        with pytest.raises(lifepool.EnterError) as raised:
            pool.f.call()
        assert isinstance(raised.value.__cause__, ValueError)
        assert "no weights here" in str(raised.value.__cause__)
        assert pool.status().state is lifepool.PoolState.BROKEN
    finally:
        pool.shutdown()


def test_template_death_fails_nothing_in_flight_and_the_next_start_makes_a_new_template(tmp_path):
    release = tmp_path / "release"
    with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=1) as pool:
        first, _, template = pool.where.call()
        running = pool.wait_for.spawn(str(release))
        wait_for_path(tmp_path / f"running-{first}")
        os.kill(template, signal.SIGKILL)
        assert_gone([template])
        release.touch()
        assert running.result(timeout=30) == "done"
        assert pool.where.call()[0] == first  # still the same container
        with pytest.raises(lifepool.ContainerCrashedError):
            pool.crash.call()
        second, parent, snap_pid = pool.where.call()
    assert second != first and parent == snap_pid != template
    assert sorted(markers(tmp_path, "snap")) == sorted([template, snap_pid])
    assert_gone([first, second, snap_pid])


def test_a_later_pool_forks_its_template_from_the_same_zygote_in_the_parents_directory(tmp_path, monkeypatch):
    from lifepool import _zygote

    with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=1) as pool:
        _, first_template, _ = pool.where.call()
    zygote = _zygote._zygote.pid
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIFEPOOL_TEST_LATER", "yes")
    with lifepool.LifecyclePool(Cwd, containers=1) as pool:
        cwd, env, template = pool.where.call()
    assert _zygote._zygote.pid == zygote
    assert template != first_template
    assert (cwd, env) == (str(tmp_path), "yes")  # the parent's now, not the zygote's
    with open(f"/proc/{template}/stat") as stat:
        assert int(stat.read().rsplit(")", 1)[1].split()[1]) == zygote  # (the template is the zygote's child)


SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import lifepool
    import lifepool._zygote
    from tests.template_targets import Snapped

    if __name__ == "__main__":
        pool = lifepool.LifecyclePool(Snapped({directory!r}), containers=2)
        print(pool.where.call()[2], lifepool._zygote._zygote.pid, flush=True)
        time.sleep(600)
    """
)


def test_parent_sigkill_leaves_no_zygote_no_template_and_no_container(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(root=root, directory=str(tmp_path)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        template, zygote = map(int, child.stdout.readline().split())  # (bounded by the test's timeout)
        pids = [zygote, template, *wait_for_markers(tmp_path, "enter", 2)]
        assert all(is_alive(pid) for pid in pids)
        child.kill()
        child.wait(timeout=30)
    finally:
        stop_child(child)
    assert_gone(pids, timeout=15)
