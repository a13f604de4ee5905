"""RayBackend's actor options reach the actors, and a container Ray cannot place never hangs its pool.

On the session's local Ray (see conftest.ray_session: 2 CPUs, no GPU, the
custom resource ``lifepool_slot`` x 2), except the namespace test, which needs
a Ray the backend connects itself.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from concurrent import futures

import pytest
from conftest import markers
from targets import Recorder
from test_ray import _python

import lifepool

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


def _shutdown_within(pool: lifepool.LifecyclePool, seconds: float) -> None:
    """Close *pool* (cancelling what is queued) on a thread; fail if that takes longer than *seconds*."""
    closer = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    closer.start()
    closer.join(timeout=seconds)
    assert not closer.is_alive(), f"the pool's shutdown took more than {seconds}s"


def test_runtime_env_env_vars_reach_the_container(hookdir, ray_session):
    tests = os.path.dirname(__file__)
    # (an actor's env_vars replace the job's, so the targets' path is given again)
    env_vars = {"LIFEPOOL_TEST_VAR": "from runtime_env", "PYTHONPATH": tests}
    backend = lifepool.RayBackend(num_cpus=0, runtime_env={"env_vars": env_vars})
    with lifepool.LifecyclePool(Recorder(hookdir), containers=1, backend=backend) as pool:
        assert pool.env.spawn("LIFEPOOL_TEST_VAR").result(timeout=60) == "from runtime_env"


def test_custom_resources_place_as_many_containers_as_the_cluster_holds(hookdir, ray_session):
    backend = lifepool.RayBackend(num_cpus=0, resources={"lifepool_slot": 1})
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=3, backend=backend)
    try:
        # Two actors fit (two slots); every call is served by them.
        assert [f.result(timeout=60) for f in [pool.echo.spawn(i) for i in range(20)]] == list(range(20))
        assert 1 <= len({f.result(timeout=60) for f in [pool.pid.spawn() for _ in range(20)]}) <= 2
        deadline = time.monotonic() + 60
        while (states := [c.state.value for c in pool.status().containers]).count("starting") > 1:
            assert time.monotonic() < deadline, f"two containers did not start: {states}"
            time.sleep(0.05)
        assert states.count("starting") == 1  # the third can never be placed: Ray keeps it pending
    finally:
        _shutdown_within(pool, 60)  # (the pending one is given up on, after closing_start_wait)
    # (the third may be placed once the first two free their slots at the close: then it enters and exits too)
    entered = markers(hookdir, "enter")
    assert len(entered) >= 2 and set(markers(hookdir, "exit")) == set(entered)


@pytest.mark.parametrize(
    "options",
    [{"resources": {"lifepool_no_such_resource": 1}}, {"num_gpus": 1}],
    ids=["missing-resource", "gpu-on-a-cpu-only-ray"],
)
def test_a_container_no_node_can_hold_leaves_calls_queued_and_never_hangs_the_close(hookdir, ray_session, options):
    pool = lifepool.LifecyclePool(Recorder(hookdir), containers=1, backend=lifepool.RayBackend(num_cpus=0, **options))
    future = pool.echo.spawn(1)
    with pytest.raises(futures.TimeoutError):
        future.result(timeout=2)  # (it cannot complete: no actor of this pool can ever start)
    status = pool.status()
    assert status.queued == 1 and [c.state.value for c in status.containers] == ["starting"]
    _shutdown_within(pool, 60)
    with pytest.raises(futures.CancelledError):
        future.result(timeout=0)
    assert not markers(hookdir, "enter")  # no user code ran in it


def test_namespace_and_resources_apply_when_the_backend_starts_ray():
    result = _python(
        """
        import ray, lifepool

        class M:
            def f(self):
                return 1

        # (the Ray this backend starts also gets the custom resource its actors ask for)
        backend = lifepool.RayBackend(num_cpus=0.5, resources={"lifepool_custom": 1}, namespace="lifepool-ns")
        with lifepool.LifecyclePool(M, containers=1, backend=backend) as pool:
            pool.f.call()
            print(ray.get_runtime_context().namespace)
        """,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["lifepool-ns"]


def test_losing_a_node_fails_only_its_call_and_a_replacement_enters_on_a_new_node(tmp_path):
    """Two nodes (ray.cluster_utils.Cluster, one CPU each), one container on each; one node is removed."""
    result = _python(
        f"""
        import os, pathlib, time
        import ray
        from ray.cluster_utils import Cluster
        import lifepool

        release = pathlib.Path({str(tmp_path)!r}) / "release"

        class M:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def pid(self):
                return os.getpid()

            def wait_for_release(self, started):
                pathlib.Path(started).touch()
                deadline = time.monotonic() + 60
                while not release.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                return os.getpid()

        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        pool = lifepool.LifecyclePool(M, containers=2, backend=lifepool.RayBackend(num_cpus=1))
        # One call on each container (each actor holds its node's one CPU), both running.
        started = [pathlib.Path({str(tmp_path)!r}) / f"started-{{i}}" for i in range(2)]
        calls = [pool.wait_for_release.spawn(str(path)) for path in started]
        deadline = time.monotonic() + 90
        while not all(path.exists() for path in started):
            assert time.monotonic() < deadline, "the calls did not start"
            time.sleep(0.01)
        cluster.remove_node(second)
        cluster.add_node(num_cpus=1)  # (room for the replacement)
        import concurrent.futures
        done, running = concurrent.futures.wait(calls, timeout=120, return_when="FIRST_COMPLETED")
        outcomes = ["running"] * len(running)
        for call in done:
            try:
                call.result()
                outcomes.append("finished?")
            except lifepool.ContainerCrashedError:
                outcomes.append("crashed")
        print(" ".join(sorted(outcomes)))
        release.touch()
        assert next(iter(running)).result(timeout=60) > 0  # the other node's call went on
        [f.result(timeout=90) for f in [pool.pid.spawn() for _ in range(8)]]
        deadline = time.monotonic() + 90
        while [c.state.value for c in pool.status().containers].count("ready") < 2:
            assert time.monotonic() < deadline, pool.status()
            time.sleep(0.05)
        print("ready", len(pool.status().containers))
        pool.shutdown()
        ray.shutdown()
        cluster.shutdown()
        """,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.split()[:4] == ["crashed", "running", "ready", "2"]
