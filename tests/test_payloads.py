"""Big payloads travel through shared memory, privately, and leave nothing behind."""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest
from targets import Fragile, Holding

import lifepool
from lifepool import _shm, _shmdir

SERVING = (lifepool.ContainerState.READY, lifepool.ContainerState.BUSY)

pytestmark = pytest.mark.skipif(_shmdir.SHM_DIR is None, reason="no /dev/shm here")


def leftovers() -> list[str]:
    return glob.glob(f"/dev/shm/lifepool-{os.getpid()}-*")


def test_big_arrays_and_bytes_round_trip_and_leave_no_segment(hookdir):
    array = np.arange(4_000_000, dtype=np.float64).reshape(2000, 2000)
    blob = os.urandom(3 << 20)
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as pool:
        echoed = pool.echo.call(array)  # the fast path
        assert echoed.dtype == array.dtype and echoed.shape == array.shape
        assert np.array_equal(echoed, array)
        assert pool.echo.spawn(blob).result(timeout=60) == blob  # the dispatcher's path
        assert [len(b) for b in pool.echo.map([blob] * 4)] == [len(blob)] * 4
        assert len(pool.big.call(5)) == 5 << 20
        assert leftovers() == []
    assert leftovers() == []


@pytest.mark.parametrize("start_method", ["template", "exec", "spawn"])
def test_an_instance_target_holding_a_big_array_reaches_every_container(start_method):
    # Every container decodes the target: it must not travel as segments a first decoding unlinks.
    array = np.ones(1 << 18)
    with lifepool.LifecyclePool(Holding(array), containers=2, start_method=start_method) as pool:
        deadline = time.monotonic() + 60
        while pool.status().state is lifepool.PoolState.RUNNING and time.monotonic() < deadline:
            serving = [c for c in pool.status().containers if c.state in SERVING]
            if len(serving) == 2:
                break
            time.sleep(0.01)
        assert pool.status().state is lifepool.PoolState.RUNNING  # (not BROKEN by a failed enter)
        assert len([c for c in pool.status().containers if c.state in SERVING]) == 2
        assert [f.result(timeout=60) for f in [pool.total.spawn() for _ in range(4)]] == [float(1 << 18)] * 4
    assert leftovers() == []


def test_a_big_argument_of_a_call_on_an_idle_container_leaves_no_segment(hookdir):
    array = np.ones(1 << 18)
    with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as pool:
        assert pool.echo.call(0) == 0  # (the container is up: the next calls borrow it)
        for _ in range(3):
            assert pool.echo.call(array).shape == array.shape
            assert leftovers() == []


def test_big_results_of_a_map_dropped_early_leave_no_segment(hookdir):
    import itertools
    import time

    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as pool:
        for _ in range(2):
            # islice drops the map with chunks still out: they finish, unread.
            assert [len(b) for b in itertools.islice(pool.big.map([2] * 40), 3)] == [2 << 20] * 3
        deadline = time.monotonic() + 30
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.02)  # (the dropped chunks are still finishing)
        assert leftovers() == []
        assert pool.echo.call(1) == 1


def test_segments_are_private_to_the_user():
    message = lifepool._wire.dumps(np.zeros(1 << 18))
    try:
        (name,) = _shm.segment_names(message)
        assert os.stat(f"/dev/shm/{name}").st_mode & 0o777 == 0o600
    finally:
        lifepool._wire.discard(message)


def test_a_retried_call_gets_its_big_argument_again_and_a_crash_leaks_nothing(hookdir):
    array = np.ones(1 << 18)
    with lifepool.LifecyclePool(Fragile(hookdir), containers=2, retries=1) as pool:
        result = pool.crash_once.call("big", array)  # crashes after decoding the argument once
        assert np.array_equal(result, array)
        with pytest.raises(lifepool.ContainerCrashedError):
            pool.maybe_crash.call(array, True)
    assert leftovers() == []
