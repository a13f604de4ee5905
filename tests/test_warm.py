"""Module-warm processes: a later pool whose target names the same modules forks its template
from a process that imported them already (see ``lifepool/_zygote.py``, ``Warm``)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest

import lifepool
from lifepool import _template, _zygote
from tests.conftest import assert_gone, is_alive, markers, stop_child
from tests.template_targets import Snapped

pytestmark = pytest.mark.skipif(not _template.can_use(), reason="the template start method needs pidfds")

MODULE = textwrap.dedent(
    """
    import os
    from tests.targets import mark

    mark({directory!r}, "import")  # once per process that imports this module

    VERSION = {version!r}


    class Target:
        def version(self):
            return VERSION, os.getpid(), os.getppid()
    """
)


def _write_module(directory, name: str, version: str, bump: int = 0) -> None:
    path = directory / f"{name}.py"
    path.write_text(MODULE.format(directory=str(directory), version=version))
    if bump:
        info = path.stat()
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + bump))


def _imports(directory) -> list[int]:
    """Pids of the processes (not this one) that imported a generated module."""
    return sorted(pid for pid in markers(directory, "import") if pid != os.getpid())


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("lpwarm_")]:
        del sys.modules[name]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_modules_named_reads_the_modules_a_pickle_imports():
    from lifepool import _wire

    assert _template.modules_named(_wire.dumps(Snapped("/nowhere"))) == ("tests.template_targets",)
    assert _template.modules_named(_wire.dumps(lifepool.LifecyclePool)) == ("lifepool._pool",)
    assert _template.modules_named(b"not a pickle") == ()


def test_a_later_pool_with_the_same_target_does_not_import_its_module_again(module_dir):
    _write_module(module_dir, "lpwarm_same", "v1")
    module = importlib.import_module("lpwarm_same")
    seen = []
    for _ in range(3):
        with lifepool.LifecyclePool(module.Target, containers=2) as pool:
            version, _, template = pool.version.call()
            seen.append((version, template, _parent(template)))
    assert [version for version, _, _ in seen] == ["v1"] * 3
    # The first template imported it; the warm process it forked holds it; no later template imports it.
    (first_template,) = _imports(module_dir)
    templates = [template for _, template, _ in seen]
    assert templates[0] == first_template and len(set(templates)) == 3
    (process,) = [w for w in _zygote._warm.values() if w.pid == seen[1][2]]
    assert seen[2][2] == process.pid and seen[0][2] == _zygote._zygote.pid


def test_a_module_changed_on_disk_is_not_served_stale(module_dir):
    _write_module(module_dir, "lpwarm_edit", "v1")
    module = importlib.import_module("lpwarm_edit")
    with lifepool.LifecyclePool(module.Target, containers=1) as pool:
        assert pool.version.call()[0] == "v1"
    _write_module(module_dir, "lpwarm_edit", "v2", bump=10**9)  # (an editor's save: new contents, new mtime)
    module = importlib.reload(module)
    with lifepool.LifecyclePool(module.Target, containers=1) as pool:
        assert pool.version.call()[0] == "v2"
    assert len(_imports(module_dir)) == 2  # imported again, by the second pool's template


def test_snap_hooks_still_run_once_per_pool_with_a_warm_process(tmp_path):
    templates = []
    for _ in range(2):
        with lifepool.LifecyclePool(Snapped(str(tmp_path)), containers=2) as pool:
            seen = {pool.where.call() for _ in range(10)}
        (template,) = {snap_pid for _, _, snap_pid in seen}
        templates.append(template)
    assert sorted(markers(tmp_path, "snap")) == sorted(templates) and templates[0] != templates[1]


def test_the_cache_is_bounded_and_the_processes_it_drops_leave(module_dir):
    from lifepool import _local

    with _local._starting:
        _zygote.clear_warm()  # (what earlier tests left)
    pids = []
    for number in range(_zygote.WARM_LIMIT + 2):
        name = f"lpwarm_bounded{number}"
        _write_module(module_dir, name, name)
        module = importlib.import_module(name)
        with lifepool.LifecyclePool(module.Target, containers=1) as pool:
            assert pool.version.call()[0] == name
        with lifepool.LifecyclePool(module.Target, containers=1) as pool:  # (takes what the first made)
            pool.version.call()
        (made,) = [w.pid for w in _zygote._warm.values() if w.pid not in pids]
        pids.append(made)
        assert len(_zygote._warm) <= _zygote.WARM_LIMIT
    kept = {w.pid for w in _zygote._warm.values()}
    assert kept == set(pids[-_zygote.WARM_LIMIT :])
    assert_gone(pids[: -_zygote.WARM_LIMIT])


def test_an_environment_change_gets_its_own_warm_process(module_dir, monkeypatch):
    _write_module(module_dir, "lpwarm_env", "v1")
    module = importlib.import_module("lpwarm_env")
    with lifepool.LifecyclePool(module.Target, containers=1) as pool:
        pool.version.call()
    monkeypatch.setenv("LIFEPOOL_TEST_WARM", "other")  # (a module may read it when imported)
    with lifepool.LifecyclePool(module.Target, containers=1) as pool:
        pool.version.call()
    assert len(_imports(module_dir)) == 2


SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import lifepool
    from lifepool import _zygote
    from tests.template_targets import Snapped

    if __name__ == "__main__":
        with lifepool.LifecyclePool(Snapped({directory!r}), containers=1) as pool:
            template = pool.where.call()[2]
        with lifepool.LifecyclePool(Snapped({directory!r}), containers=1) as pool:
            pid, later, _ = pool.where.call()
            (warm,) = [w.pid for w in _zygote._warm.values()]
            print(warm, later, pid, _zygote._zygote.pid, flush=True)
            if sys.argv[1] == "kill":
                time.sleep(600)
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_no_warm_process_outlives_its_parent(tmp_path, how):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(root=root, directory=str(tmp_path)))
    child = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, text=True)
    try:
        pids = list(map(int, child.stdout.readline().split()))  # (bounded by the test's timeout)
        assert len(pids) == 4, pids
        warm, later_template = pids[:2]
        assert _parent(later_template) == warm
        if how == "kill":
            assert all(is_alive(pid) for pid in pids)
            child.kill()
        child.wait(timeout=30)
    finally:
        stop_child(child)
    assert_gone(pids, timeout=15)
