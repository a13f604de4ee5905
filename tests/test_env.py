"""LifecyclePool(env=, cwd=): applied in each container before the target is unpickled, on every start method."""

from __future__ import annotations

import os

import pytest

import lifepool


class Seen:
    """Its module reads the environment when a container imports it (see test_env_is_set_before_unpickling)."""

    def __init__(self) -> None:
        self.at_init = os.environ.get("LP_TEST_VALUE")

    def report(self):
        return self.at_init, os.environ.get("LP_TEST_VALUE"), os.environ.get("LP_TEST_GONE"), os.getcwd()


@pytest.mark.parametrize("start_method", ["exec", "loky", "spawn", "forkserver"])
def test_env_and_cwd_per_container(start_method, tmp_path, monkeypatch):
    monkeypatch.setenv("LP_TEST_GONE", "parent")
    env = lambda index: {"LP_TEST_VALUE": f"container-{index}", "LP_TEST_GONE": None}  # noqa: E731
    with lifepool.LifecyclePool(Seen, containers=2, start_method=start_method, env=env, cwd=tmp_path) as pool:
        reports = [pool.report.spawn() for _ in range(4)]
        values = {f.result(timeout=60) for f in reports}
    assert os.environ["LP_TEST_GONE"] == "parent"
    for at_init, now, gone, cwd in values:
        assert at_init == now and now in ("container-0", "container-1")
        assert gone is None and cwd == str(tmp_path)


def _whoami():
    return lifepool.current_container().index, os.environ["LP_TEST_VALUE"]


def test_env_index_matches_container(tmp_path):
    with lifepool.LifecyclePool(Seen, containers=2, env=lambda i: {"LP_TEST_VALUE": f"container-{i}"}) as pool:
        results = {pool.submit(_whoami).result(timeout=60) for _ in range(6)}
    assert all(value == f"container-{index}" for index, value in results)


def test_env_and_cwd_are_checked(tmp_path):
    with pytest.raises(TypeError, match="env"):
        lifepool.LifecyclePool(Seen, containers=1, env={"A": 1})
    with pytest.raises(ValueError, match="environment variable name"):
        lifepool.LifecyclePool(Seen, containers=1, env={"A=B": "x"})
    with pytest.raises(ValueError, match="not a directory"):
        lifepool.LifecyclePool(Seen, containers=1, cwd=tmp_path / "missing")
