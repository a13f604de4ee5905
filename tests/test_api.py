"""The public surface: exports, the error tree, decorators."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import subprocess
import sys

import pytest

import lifepool


def test_all_is_complete_and_exact():
    public = {name for name in dir(lifepool) if not name.startswith("_")}
    assert set(lifepool.__all__) == public - {"__version__"}
    for name in lifepool.__all__:
        if name == "RayBackend" and importlib.util.find_spec("ray") is None:
            continue  # (imports ray: tests/test_ray.py checks the error without it)
        assert getattr(lifepool, name) is not None


@pytest.mark.parametrize("name", sorted(set(lifepool.__all__) - {"RayBackend"}))
def test_each_public_name_works_as_the_first_one_a_program_touches(name):
    # (the lazy exports import their module on first use: ContainerStatus first once hit a circular import)
    code = f"import lifepool; print(lifepool.{name} is not None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_error_tree():
    for cls in (
        lifepool.EnterError,
        lifepool.ContainerCrashedError,
        lifepool.CallTimeoutError,
        lifepool.RemoteError,
        lifepool.ExitHookError,
    ):
        assert issubclass(cls, lifepool.LifepoolError)
    assert issubclass(lifepool.CallTimeoutError, TimeoutError)
    assert issubclass(lifepool.ExitHookError, ExceptionGroup)
    assert issubclass(lifepool.Terminated, KeyboardInterrupt)
    assert issubclass(lifepool.ParentExitedError, KeyboardInterrupt)
    assert issubclass(lifepool.LifecyclePool, concurrent.futures.Executor)


def test_exit_hook_error_splits_keep_its_type():
    group = lifepool.ExitHookError("exit hooks failed", [ValueError("a"), KeyError("b")])
    matched, rest = group.split(ValueError)
    assert isinstance(matched, lifepool.ExitHookError) and isinstance(rest, lifepool.ExitHookError)


def test_errors_pickle_round_trip():
    import pickle

    crash = lifepool.ContainerCrashedError("died", index=1, pid=2, exitcode=-9)
    copy = pickle.loads(pickle.dumps(crash))
    assert (copy.index, copy.pid, copy.exitcode, str(copy)) == (1, 2, -9, "died")
    remote = pickle.loads(pickle.dumps(lifepool.RemoteError("x.Y", "tb text", "msg")))
    assert remote.type_name == "x.Y" and "tb text" in str(remote)
    term = pickle.loads(pickle.dumps(lifepool.Terminated()))
    assert term.signum == 15 and "SIGTERM" in str(term)
