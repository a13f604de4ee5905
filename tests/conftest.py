"""Shared fixtures: every test leaves no container process behind."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import pytest


def markers(directory: pathlib.Path, event: str) -> dict[int, str]:
    """{pid: text} of the ``<event>-<pid>`` markers containers wrote in *directory*."""
    found = {}
    for path in directory.glob(f"{event}-*"):
        if path.suffix == ".tmp":
            continue
        found[int(path.name.rsplit("-", 1)[1])] = path.read_text()
    return found


def process_fds() -> set[str]:
    """This process's descriptors, less those of what lives for the process, not for a pool.

    That is the template start method's zygote (its socket and sentinel) and
    the module-warm processes it keeps for later pools (a socket and a pidfd
    each; bounded, see ``lifepool/_zygote.py``).
    """
    from lifepool import _zygote

    kept = set()
    zygote = _zygote._zygote
    if zygote is not None:
        kept |= {zygote.sock.fileno(), zygote.process.sentinel}
    for warm in _zygote._warm.values():
        kept |= {warm.sock.fileno(), warm.pidfd}
    return set(os.listdir("/proc/self/fd")) - {str(fd) for fd in kept}


def stop_child(child) -> None:
    """Kill a test's subprocess (a script making pools) if it still runs, reap it, close its stdout."""
    if child.poll() is None:
        child.kill()
        child.wait(timeout=30)
    child.stdout.close()


def is_alive(pid: int) -> bool:
    """True while *pid* runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def assert_gone(pids, timeout: float = 10.0) -> None:
    """Every pid in *pids* has exited (bounded wait: reaping can lag the exit a little)."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if is_alive(pid)}
        if alive:
            time.sleep(0.02)
    assert not alive, f"container processes still alive: {sorted(alive)}"


def collected(ref) -> bool:
    """Whether *ref*'s object is collected, waiting (bounded) for the pool's dispatcher thread to let it go.

    The thread that completes a Future holds it until its completion returns,
    and the waiting thread may run first: that reference is gone a few
    bytecodes later (once that thread gets the GIL back). A reference kept
    for good keeps the object past the bound.
    """
    import gc

    deadline = time.monotonic() + 10.0
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # (lets the dispatcher thread run)


def interrupt_each_line(pool, code) -> int:
    """Make blocking calls on *pool*, each with a KeyboardInterrupt raised on the next line of *code*.

    After each, the pool must still answer a spawned and a blocking call (with
    one container, an answer lost from the books leaves the next call queued
    forever: the spawn's timeout catches it). Returns how many calls were
    interrupted (a line the call did not pass interrupts none).
    """
    import sys

    lines = sorted({line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno})

    def interrupt_at(line):
        def local(frame, event, arg):
            if event == "line" and frame.f_lineno == line:
                sys.settrace(None)
                raise KeyboardInterrupt(f"at line {line}")
            return local

        return lambda frame, event, arg: local if frame.f_code is code else None

    interrupted = 0
    for line in lines:
        sys.settrace(interrupt_at(line))
        try:
            pool.echo.call(line)
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(None)
        assert pool.echo.spawn(line).result(timeout=30) == line, f"interrupted at line {line}"
        assert pool.echo.call(-line) == -line
    return interrupted


@pytest.fixture
def hookdir(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "hooks"
    directory.mkdir()
    return directory


# The backends the contract tests run on: a test module that uses the
# ``backend`` fixture (``pytestmark = pytest.mark.usefixtures("backend")``)
# runs each of its tests once per backend, with pools made there defaulting
# to it (as anyio runs every test on every event loop). "ray" runs when Ray is
# installed (the ``lifepool[ray]`` extra), on one local Ray for the session.
# A test whose guarantee does not hold on Ray says why with
# ``@pytest.mark.local_only("reason")`` (the README's table lists them).
BACKENDS = ["local"]
if importlib.util.find_spec("ray") is not None:
    BACKENDS.append("ray")


# The Ray leg runs a representative part of the contract, to keep CI short:
# every pool on Ray starts one Ray worker process per container (seconds on
# 2 cores), so the whole contract on Ray would take as long again as the
# rest of the suite. It runs every test of these modules, and the tests
# marked ``on_ray`` elsewhere (crashes, retries, timeouts, Ctrl-C, exit
# hooks, async); LIFEPOOL_TEST_RAY=all runs every contract test on Ray, and
# LIFEPOOL_TEST_RAY_REMOTE=1 runs them as if each container were on another node,
# LIFEPOOL_TEST_RAY_RELAY=1 with this machine's containers relayed as another node's are.
RAY_LEG_MODULES = {"test_calls", "test_elastic"}
# A container on the driver's machine talks to it directly; one elsewhere is
# relayed through its actor. The relay runs these modules on this machine too
# ("ray-relay"; LIFEPOOL_TEST_RAY_RELAY=1 relays every Ray test).
RAY_RELAY_LEG_MODULES = {"test_calls"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = BACKENDS
        on_ray = (
            os.environ.get("LIFEPOOL_TEST_RAY") == "all"
            or metafunc.module.__name__ in RAY_LEG_MODULES
            or metafunc.definition.get_closest_marker("on_ray") is not None
        )
        if not on_ray:
            backends = [name for name in BACKENDS if name != "ray"]
        elif "ray" in backends and metafunc.module.__name__ in RAY_RELAY_LEG_MODULES:
            backends = [*backends, "ray-relay"]
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting one takes seconds), shut down at its end."""
    import ray

    # The test targets (tests/targets.py, ...) import by reference: the actors,
    # and the containers they start, need this directory on their path (on a
    # real cluster: runtime_env={"working_dir": ...} or an installed package).
    tests = str(pathlib.Path(__file__).parent)
    ray.init(
        num_cpus=2,
        resources={"lifepool_slot": 2},  # (a custom resource for test_ray_options: two actors' worth)
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    from lifepool import _options

    if request.param in ("ray", "ray-relay"):
        marker = request.node.get_closest_marker("local_only")
        if marker is not None:
            pytest.skip(f"local only: {marker.args[0]}")
        if request.node.get_closest_marker("slow") is not None:
            # CI time: every pool on Ray starts one Ray worker process per container
            # (seconds here); the soak tests' crashes and recycling run on the local leg.
            pytest.skip("soak test: run on the local backend only, to keep the Ray leg short")
        request.getfixturevalue("ray_session")
        import lifepool

        # num_cpus=0: the session's Ray has 2 CPUs and tests make pools of up
        # to 4 containers; the CPUs each actor reserves are not what is tested.
        ray_backend = lifepool.RayBackend(num_cpus=0)
        if os.environ.get("LIFEPOOL_TEST_RAY_REMOTE") == "1":
            # Every container treated as on another node (no shared /dev/shm):
            # the segments are shipped through Ray (lifepool/_ship.py).
            ray_backend._share_memory = False
        if os.environ.get("LIFEPOOL_TEST_RAY_RELAY") == "1" or request.param == "ray-relay":
            # Containers on this machine relayed through their actors too (as
            # another node's are), sharing this machine's /dev/shm.
            ray_backend._direct = False
        monkeypatch.setattr(_options, "DEFAULT_BACKEND", ray_backend)
    else:
        monkeypatch.setattr(_options, "DEFAULT_BACKEND", request.param)
    return "ray" if request.param == "ray-relay" else request.param  # (the same engine to the tests)
