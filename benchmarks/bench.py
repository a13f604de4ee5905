"""Benchmarks comparing lifepool with other Python process pools.

Run from the repository root::

    python benchmarks/bench.py                  # full run, about 12 minutes on 2 cores
    python benchmarks/bench.py --quick          # smoke run, well under a minute
    python benchmarks/bench.py --only latency,map --peers ppe,mp.Pool
    python benchmarks/bench.py --write          # also write benchmarks/RESULTS.md

Every measurement runs in a fresh driver process of its own, started as
``python -c "from benchmarks.bench import measure_main; measure_main()" REQUEST``,
so no two pools ever share a parent, a leftover worker or a heap, and a
measurement that hangs is killed (with its whole process group) after
``--timeout`` seconds and reported as a timeout.  Within a scenario the
contestants alternate (lifepool, peer1, peer2, ..., then lifepool again)
for ``--repeat`` rounds.  The tables give the median over the rounds, and
each ratio lifepool/peer is the median of the ratios taken within one round,
so slow drifts of a noisy machine cancel out.  benchmarks/README.md explains
the scenarios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import faulthandler
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Self

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
MARKER = "BENCH-RESULT "
LOWER = "↓"
HIGHER = "↑"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and time limits of one run; ``--quick`` swaps in smaller ones."""

    repeat: int
    timeout: float
    latency_seconds: float
    latency_max_calls: int
    pipelined_calls: int
    map_items: int
    cold_containers: int
    payload_mb: int
    scaling_calls: int
    scaling_containers: tuple[int, ...]
    memory_containers: int
    batching_items: int
    idle_seconds: float
    pid_delay: float
    snap_mb: int = 400
    snap_containers: int = 4


FULL = Settings(
    repeat=3,
    timeout=120.0,
    latency_seconds=0.5,
    latency_max_calls=50_000,
    pipelined_calls=20_000,
    map_items=200_000,
    cold_containers=2,
    payload_mb=256,
    scaling_calls=5_000,
    scaling_containers=(1, 2, 8, 32),
    memory_containers=8,
    batching_items=2_000,
    idle_seconds=0.5,
    pid_delay=0.05,
)

QUICK = dataclasses.replace(
    FULL,
    repeat=1,
    timeout=20.0,
    latency_seconds=0.1,
    pipelined_calls=2_000,
    map_items=10_000,
    payload_mb=16,
    scaling_calls=500,
    scaling_containers=(1, 2, 8),
    batching_items=400,
    idle_seconds=0.2,
    snap_mb=64,
)


# --------------------------------------------------------------------------
# The workload: what every contestant runs in its workers.
# --------------------------------------------------------------------------


class Echo:
    """The lifepool (and Ray actor) workload: trivial setup, echo, pid probe."""

    def __enter__(self) -> Self:
        """Do nothing: the benchmarks measure the pool, not the setup."""
        return self

    def echo(self, x: object) -> object:
        """Return the argument unchanged."""
        return x

    def getpid(self, delay: float) -> int:
        """Sleep ``delay`` seconds (so calls spread over workers), return the pid."""
        time.sleep(delay)
        return os.getpid()

    def __exit__(self, *exc_info: object) -> None:
        """Do nothing."""


try:
    from lifepool import batched as _batched
except ImportError:  # lifepool missing: the batching scenario is skipped with the rest of lifepool

    def _batched(**_: object) -> Callable[[Callable], Callable]:
        return lambda func: func


class Model:
    """The batching workload: each call to the model costs a fixed 2 ms, whatever the batch size.

    Stands in for a GPU model, whose cost per call is mostly launching the work.
    """

    def __enter__(self) -> Self:
        """Nothing to load."""
        return self

    def predict_one(self, x: float) -> float:
        """One input per model call."""
        time.sleep(0.002)
        return 2 * x

    @_batched(max_batch_size=32, wait_ms=5)
    def predict(self, xs: list[float]) -> list[float]:
        """Up to 32 inputs per model call (lifepool groups the waiting ones)."""
        time.sleep(0.002)
        return [2 * x for x in xs]

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to release."""


class Crashy(Echo):
    """Echo, plus a method that kills its container (the replacement scenario)."""

    def crash(self) -> None:
        """Leave at once, as a segfault would."""
        os._exit(3)


SNAP_MB = int(os.environ.get("LIFEPOOL_BENCH_SNAP_MB", "400"))  # (set by the driver from Settings.snap_mb)
_snapped: object = None


def load_weights() -> object:
    """The "model": a float64 array of SNAP_MB MB, every page written."""
    import numpy

    return numpy.ones(SNAP_MB * 2**20 // 8)


try:
    from lifepool import enter as _enter
except ImportError:

    def _enter(**_: object) -> Callable[[Callable], Callable]:
        return lambda func: func


class Snapped(Echo):
    """Echo with the model loaded by a snap hook (lifepool's template shares it)."""

    @_enter(snap=True)
    def load(self) -> None:
        """Load the weights once, before the containers fork."""
        self.weights = load_weights()


def init_weights() -> None:
    """The peers' way: an ``initializer`` loading the model in each worker."""
    global _snapped
    _snapped = load_weights()


def echo(x: object) -> object:
    """Return the argument unchanged (the peers' module-level workload)."""
    return x


def getpid(delay: float) -> int:
    """Sleep ``delay`` seconds, then return the worker's pid."""
    time.sleep(delay)
    return os.getpid()


def pipe_server(conn: object) -> None:
    """Echo every object received on ``conn`` until ``None`` arrives."""
    while (x := conn.recv()) is not None:
        conn.send(x)


# --------------------------------------------------------------------------
# Contestants: each pool library behind the same few operations.
# --------------------------------------------------------------------------


class Pool:
    """One pool library seen through the operations the scenarios use.

    ``prepare`` imports the library before any clock starts; entering the
    object builds the pool (``create``) and leaving it shuts the pool down.
    """

    name = ""
    module = ""  # the module that must be importable, if any

    def __init__(self, containers: int) -> None:
        """Remember how many worker processes to start."""
        self.containers = containers

    def prepare(self) -> None:
        """Import the library; runs before any timing starts."""

    def create(self) -> contextlib.AbstractContextManager:
        """Return the library's pool object (a context manager)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Build and enter the pool."""
        self._pool = self.create()
        self._pool.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Shut the pool down."""
        self._pool.__exit__(*exc_info)

    def warm(self, item: object) -> None:
        """Make sure every worker is up and has echoed ``item``."""
        self.pipelined([item] * 4 * self.containers)


class LifepoolPool(Pool):
    """``lifepool.LifecyclePool(Echo)``: method calls on long-lived containers."""

    name = "lifepool"
    module = "lifepool"

    def prepare(self) -> None:
        """Import lifepool, the pool's side included (lifepool imports it on first use)."""
        import lifepool

        self._lib = lifepool
        assert lifepool.LifecyclePool is not None

    workload: type = Echo
    options: dict = {}  # LifecyclePool options (subclasses replace it)

    def create(self) -> contextlib.AbstractContextManager:
        """Build a LifecyclePool of Echo containers."""
        return self._lib.LifecyclePool(self.workload, containers=self.containers, **self.options)

    def call(self, x: object) -> object:
        """One blocking round trip."""
        return self._pool.echo.call(x)

    def pipelined(self, xs: Iterable) -> list:
        """Spawn every call, then collect every result."""
        futures = [self._pool.echo.spawn(x) for x in xs]
        return [f.result() for f in futures]

    def map(self, xs: Iterable) -> list:
        """Ordered map with lifepool's own windowing."""
        return list(self._pool.echo.map(xs))

    def pids(self, tasks: int, delay: float) -> set[int]:
        """Pids of the containers that served ``tasks`` concurrent calls."""
        futures = [self._pool.getpid.spawn(delay) for _ in range(tasks)]
        return {f.result() for f in futures}


class LifepoolExec(LifepoolPool):
    """lifepool with ``start_method="exec"``: a fresh interpreter per container (the pre-template default)."""

    name = "lifepool-exec"
    options: dict = {"start_method": "exec"}


class LifepoolRay(LifepoolPool):
    """``LifecyclePool(Echo, backend=lifepool.RayBackend(num_cpus=0))``: lifepool on the same local Ray as ``ray``."""

    name = "lifepool-ray"
    module = "ray"

    def prepare(self) -> None:
        """Import lifepool and Ray and start Ray as the ``ray`` peer does (untimed)."""
        super().prepare()
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self._backend = self._lib.RayBackend(num_cpus=0)  # (as the ray peer's actors: num_cpus=0)

    def create(self) -> contextlib.AbstractContextManager:
        """Build a LifecyclePool of Echo containers, one Ray actor each."""
        return self._lib.LifecyclePool(Echo, containers=self.containers, backend=self._backend)

    def __exit__(self, *exc_info: object) -> None:
        """Shut the pool down, then Ray (the pool did not start it, so it leaves it running)."""
        super().__exit__(*exc_info)
        self._ray.shutdown()


class LifepoolRayRelay(LifepoolRay):
    """lifepool on Ray with its containers relayed through their actors, as a container on another machine is.

    On the driver's machine a container talks to the driver directly
    (``lifepool-ray``); this one's frames cross Ray both ways, so it shows
    what a call to a container on another node costs over raw Ray.
    """

    name = "lifepool-ray-relay"

    def prepare(self) -> None:
        """As ``lifepool-ray``, with the direct channel switched off."""
        super().prepare()
        self._backend._direct = False


class LifepoolBatched(LifepoolPool):
    """lifepool calling ``Model.predict``, a ``@lifepool.batched`` method, one input at a time."""

    name = "lifepool"  # the same contestant: the batching scenario compares it with "unbatched"

    def create(self) -> contextlib.AbstractContextManager:
        """Build a LifecyclePool of Model containers."""
        return self._lib.LifecyclePool(Model, containers=self.containers)

    def pipelined(self, xs: Iterable) -> list:
        """Spawn one-input calls, then collect them (warms every container up)."""
        futures = [self._pool.predict_one.spawn(x) for x in xs]
        return [f.result() for f in futures]

    def map(self, xs: Iterable) -> list:
        """Ordered map through the batched method."""
        return list(self._pool.predict.map(xs))


class LifepoolUnbatched(LifepoolBatched):
    """The same pool and model, one input per model call (``Model.predict_one``)."""

    name = "unbatched"

    def map(self, xs: Iterable) -> list:
        """Ordered map through the one-input method."""
        return list(self._pool.predict_one.map(xs))


class PipeFloor(Pool):
    """The floor: one child process echoing over a bare ``multiprocessing.Pipe``."""

    name = "pipe"

    def prepare(self) -> None:
        """Import multiprocessing."""
        import multiprocessing

        self._mp = multiprocessing

    def __enter__(self) -> Self:
        """Start the echoing child (always one, whatever ``containers`` says)."""
        self._conn, child_conn = self._mp.Pipe()
        self._proc = self._mp.Process(target=pipe_server, args=(child_conn,), daemon=True)
        self._proc.start()
        child_conn.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the child."""
        self._conn.send(None)
        self._proc.join()
        self._conn.close()

    def warm(self, item: object) -> None:
        """Make a few round trips."""
        for _ in range(8):
            self.call(item)

    def call(self, x: object) -> object:
        """One round trip over the pipe."""
        self._conn.send(x)
        return self._conn.recv()


class ExecutorPool(Pool):
    """A ``concurrent.futures.Executor`` running the module-level ``echo``."""

    def call(self, x: object) -> object:
        """One blocking round trip."""
        return self._pool.submit(echo, x).result()

    def pipelined(self, xs: Iterable) -> list:
        """Submit every call, then collect every result."""
        futures = [self._pool.submit(echo, x) for x in xs]
        return [f.result() for f in futures]

    def map(self, xs: Iterable) -> list:
        """``Executor.map`` with its default chunksize."""
        return list(self._pool.map(echo, xs))

    def pids(self, tasks: int, delay: float) -> set[int]:
        """Pids of the workers that served ``tasks`` concurrent calls."""
        futures = [self._pool.submit(getpid, delay) for _ in range(tasks)]
        return {f.result() for f in futures}


class ProcessPool(ExecutorPool):
    """``concurrent.futures.ProcessPoolExecutor`` with the default start method."""

    name = "ppe"
    start_method: str | None = None

    def prepare(self) -> None:
        """Import concurrent.futures and multiprocessing."""
        import concurrent.futures
        import multiprocessing

        self._context = multiprocessing.get_context(self.start_method)
        self._cls = concurrent.futures.ProcessPoolExecutor

    def create(self) -> contextlib.AbstractContextManager:
        """Build the executor."""
        return self._cls(max_workers=self.containers, mp_context=self._context)


class SpawnProcessPool(ProcessPool):
    """``ProcessPoolExecutor`` with the 'spawn' start method (cold start only)."""

    name = "ppe-spawn"
    start_method = "spawn"


class ForkserverProcessPool(ProcessPool):
    """``ProcessPoolExecutor`` with 'forkserver' (the standard library's answer to fork+exec's start cost)."""

    name = "ppe-forkserver"
    start_method = "forkserver"


class LokyPool(ExecutorPool):
    """``loky.get_reusable_executor`` (a fresh one: every driver is a new process)."""

    name = "loky"
    module = "loky"

    def prepare(self) -> None:
        """Import loky."""
        import loky

        self._lib = loky

    def create(self) -> contextlib.AbstractContextManager:
        """Get the reusable executor."""
        return self._lib.get_reusable_executor(max_workers=self.containers)


class MultiprocessingPool(Pool):
    """``multiprocessing.Pool`` with the default start method."""

    name = "mp.Pool"

    def prepare(self) -> None:
        """Import multiprocessing."""
        import multiprocessing

        self._mp = multiprocessing

    def create(self) -> contextlib.AbstractContextManager:
        """Build the pool."""
        return self._mp.Pool(self.containers)

    def call(self, x: object) -> object:
        """One blocking round trip (``apply``)."""
        return self._pool.apply(echo, (x,))

    def pipelined(self, xs: Iterable) -> list:
        """``apply_async`` every call, then ``get`` every result."""
        results = [self._pool.apply_async(echo, (x,)) for x in xs]
        return [r.get() for r in results]

    def map(self, xs: Iterable) -> list:
        """``Pool.map`` with its default chunking."""
        return self._pool.map(echo, xs)

    def pids(self, tasks: int, delay: float) -> set[int]:
        """Pids of the workers that served ``tasks`` concurrent calls."""
        results = [self._pool.apply_async(getpid, (delay,)) for _ in range(tasks)]
        return {r.get() for r in results}


class MpirePool(Pool):
    """``mpire.WorkerPool`` with its defaults."""

    name = "mpire"
    module = "mpire"

    def prepare(self) -> None:
        """Import mpire."""
        import mpire

        self._lib = mpire

    def create(self) -> contextlib.AbstractContextManager:
        """Build the pool."""
        return self._lib.WorkerPool(n_jobs=self.containers)

    def warm(self, item: object) -> None:
        """Warm up with ``map``: mpire 2.10 fails a ``map`` after ``apply_async``."""
        self._pool.map(echo, [item] * 4 * self.containers)

    def call(self, x: object) -> object:
        """One blocking round trip (``apply``)."""
        return self._pool.apply(echo, args=(x,))

    def pipelined(self, xs: Iterable) -> list:
        """``apply_async`` every call, then ``get`` every result."""
        results = [self._pool.apply_async(echo, args=(x,)) for x in xs]
        return [r.get() for r in results]

    def map(self, xs: Iterable) -> list:
        """``WorkerPool.map`` with its default chunking."""
        return self._pool.map(echo, xs)

    def pids(self, tasks: int, delay: float) -> set[int]:
        """Pids of the workers that served ``tasks`` concurrent calls."""
        results = [self._pool.apply_async(getpid, args=(delay,)) for _ in range(tasks)]
        return {r.get() for r in results}


class RayActors(Pool):
    """Ray actors of ``Echo``; ``ray.init`` happens in ``prepare``, untimed."""

    name = "ray"
    module = "ray"
    # ActorPool.map does about 1,100 items/s here: 200k items would outlast
    # the row's timeout, so its rate is measured over the first 20k.
    max_map_items = 20_000

    def prepare(self) -> None:
        """Import Ray and start its local runtime."""
        import ray
        import ray.util

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self._actor_pool_cls = ray.util.ActorPool
        self._actor_cls = ray.remote(num_cpus=0)(Echo)

    def __enter__(self) -> Self:
        """Create the actors."""
        self._actors = [self._actor_cls.remote() for _ in range(self.containers)]
        self._next = 0
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill the actors and stop the runtime."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._ray.shutdown()

    def call(self, x: object) -> object:
        """One blocking round trip, actors taken in turn."""
        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        return self._ray.get(actor.echo.remote(x))

    def pipelined(self, xs: Iterable) -> list:
        """Send every call (round robin over actors), then get every result."""
        n = len(self._actors)
        return self._ray.get([self._actors[i % n].echo.remote(x) for i, x in enumerate(xs)])

    def map(self, xs: Iterable) -> list:
        """Ordered ``ray.util.ActorPool.map``."""
        actor_pool = self._actor_pool_cls(self._actors)
        return list(actor_pool.map(lambda actor, x: actor.echo.remote(x), xs))

    def pids(self, tasks: int, delay: float) -> set[int]:
        """Pids of the actors."""
        n = len(self._actors)
        return set(self._ray.get([self._actors[i % n].getpid.remote(delay) for i in range(tasks)]))


POOLS: dict[str, type[Pool]] = {
    cls.name: cls
    for cls in (
        LifepoolPool,
        LifepoolRay,
        LifepoolRayRelay,
        LifepoolUnbatched,
        PipeFloor,
        LifepoolExec,
        ProcessPool,
        SpawnProcessPool,
        ForkserverProcessPool,
        MultiprocessingPool,
        LokyPool,
        MpirePool,
        RayActors,
    )
}


# --------------------------------------------------------------------------
# Scenarios: each runs inside a driver process and returns {row label: value}.
# --------------------------------------------------------------------------


def label(title: str, unit: str, lower_is_better: bool) -> str:
    """Row label such as ``latency [µs/call] ↓`` (the arrow marks the better side)."""
    return f"{title} [{unit}] {LOWER if lower_is_better else HIGHER}"


def plural(n: int, noun: str) -> str:
    """``1 container``, ``2 containers``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def short(n: int) -> str:
    """Write 200000 as 200k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@contextlib.contextmanager
def opened(pool_cls: type[Pool], containers: int, warm_item: object = 0) -> Iterator[Pool]:
    """Prepare, start and warm a pool (with ``warm_item``); shut it down afterwards."""
    pool = pool_cls(containers)
    pool.prepare()
    with pool:
        pool.warm(warm_item)
        yield pool


def all_started(pool: Pool, containers: int, s: Settings) -> None:
    """Return once every one of the ``containers`` workers has answered a call (bounded by s.timeout)."""
    seen: set[int] = set()
    deadline = time.monotonic() + s.timeout
    while len(seen) < containers and time.monotonic() < deadline:
        seen |= pool.pids(2 * containers, s.pid_delay)
    if len(seen) < containers:
        print(f"only {len(seen)} of {containers} workers answered", file=sys.stderr)


def expect(got: object, wanted: object) -> None:
    """Fail the measurement if a pool returned something else than expected."""
    if got != wanted:
        raise AssertionError(f"wrong results: {str(got)[:80]} != {str(wanted)[:80]}")


def measure_latency(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Sequential blocking round trips for ``latency_seconds`` (at most ``latency_max_calls``)."""
    with opened(pool_cls, containers) as pool:
        calls = 0
        start = time.perf_counter()
        deadline = start + s.latency_seconds
        while calls < s.latency_max_calls:
            pool.call(calls)
            calls += 1
            if calls % 64 == 0 and time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - start
    return {label("latency, sequential calls", "µs/call", True): elapsed / calls * 1e6}


def measure_pipelined(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Spawn ``pipelined_calls`` calls at once, then wait for all results."""
    xs = range(s.pipelined_calls)
    with opened(pool_cls, containers) as pool:
        start = time.perf_counter()
        out = pool.pipelined(xs)
        elapsed = time.perf_counter() - start
    expect(out, list(xs))
    title = f"pipelined, {short(len(xs))} spawn"
    return {label(title, "calls/s", False): len(xs) / elapsed}


def measure_map(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Map the trivial function over ``map_items`` ints with default chunking (a rate: see ``max_map_items``)."""
    xs = range(min(s.map_items, getattr(pool_cls, "max_map_items", s.map_items)))
    with opened(pool_cls, containers) as pool:
        start = time.perf_counter()
        out = pool.map(xs)
        elapsed = time.perf_counter() - start
    expect(out, list(xs))
    return {label(f"map, {short(s.map_items)} items", "items/s", False): len(xs) / elapsed}


def measure_map_generator(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """As measure_map, but the ints come from a generator: no length, no slicing."""
    count = s.map_items
    with opened(pool_cls, containers) as pool:
        start = time.perf_counter()
        out = pool.map(i for i in range(count))
        elapsed = time.perf_counter() - start
    expect(out, list(range(count)))
    return {label(f"map, {short(count)} items from a generator", "items/s", False): count / elapsed}


def measure_batching(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Inputs/s through a model whose every call costs 2 ms: batched vs one input per call."""
    if pool_cls is POOLS["lifepool"]:
        pool_cls = LifepoolBatched
    xs = [float(i) for i in range(s.batching_items)]
    with opened(pool_cls, containers, warm_item=1.0) as pool:
        start = time.perf_counter()
        out = pool.map(xs)
        elapsed = time.perf_counter() - start
    expect(out, [2 * x for x in xs])
    return {label(f"batching, {short(len(xs))} inputs, 2 ms per model call", "inputs/s", False): len(xs) / elapsed}


def measure_cold(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Seconds from constructing the pool to the first result (imports excluded)."""
    pool = pool_cls(containers)
    pool.prepare()
    start = time.perf_counter()
    with pool:
        out = pool.call(1)
        elapsed = time.perf_counter() - start
    expect(out, 1)
    return {label(f"cold start, {plural(containers, 'container')}", "s", True): elapsed}


def later_pool(pool_cls: type[Pool], containers: int) -> Pool:
    """A pool not yet started, made after a first pool of the process came and went."""
    first = pool_cls(containers)
    first.prepare()
    with first:
        first.call(0)
    pool = pool_cls(containers)
    pool.prepare()
    return pool


def measure_later(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """A second pool of the process: construction to first result, after a first one came and went."""
    pool = later_pool(pool_cls, containers)
    start = time.perf_counter()
    with pool:
        out = pool.call(1)
        elapsed = time.perf_counter() - start
    expect(out, 1)
    return {label(f"later pool, {plural(containers, 'container')}, to first result", "s", True): elapsed}


def measure_later_tiny(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """``measure_later`` with lifepool's target in a small module of its own (``benchmarks/tiny.py``)."""
    if issubclass(pool_cls, LifepoolPool):
        from benchmarks.tiny import Tiny

        pool_cls = type(pool_cls.__name__, (pool_cls,), {"workload": Tiny})
    values = measure_later(pool_cls, containers, s)
    return {key.replace("later pool", "later pool (small module)"): value for key, value in values.items()}


def measure_all_serving(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """A second pool of the process: construction until every container has answered."""
    pool = later_pool(pool_cls, containers)
    start = time.perf_counter()
    with pool:
        all_started(pool, containers, dataclasses.replace(s, pid_delay=0.005))
        elapsed = time.perf_counter() - start
    return {label(f"later pool, {plural(containers, 'container')}, all serving", "s", True): elapsed}


def measure_replacement(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """lifepool: a container crashes, until the next call is served; mp.Pool: starting a one-worker pool."""
    title = label("replacement after a crash (lifepool) / one-worker start (peers)", "ms", True)
    if issubclass(pool_cls, LifepoolPool):
        pool = pool_cls(1)
        pool.prepare()
        with pool._lib.LifecyclePool(Crashy, containers=1, **pool.options) as lp:
            lp.echo.call(0)
            start = time.perf_counter()
            with contextlib.suppress(pool._lib.ContainerCrashedError):
                lp.crash.call()
            out = lp.echo.call(1)
            elapsed = time.perf_counter() - start
    else:
        pool = later_pool(pool_cls, 1)  # (the later start is the one measured, as lifepool's replacement is)
        start = time.perf_counter()
        with pool:
            out = pool.call(1)
            elapsed = time.perf_counter() - start
    expect(out, 1)
    return {title: elapsed * 1e3}


def measure_snap(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """``containers`` workers after loading a ``snap_mb`` MB array: time until all serve, and their PSS."""
    os.environ["LIFEPOOL_BENCH_SNAP_MB"] = str(s.snap_mb)
    global SNAP_MB
    SNAP_MB = s.snap_mb
    import numpy  # noqa: F401 - imported before the clock, as the parent would have it

    start = time.perf_counter()
    if issubclass(pool_cls, LifepoolPool):
        pool = pool_cls(containers)
        pool.prepare()
        made = pool._lib.LifecyclePool(Snapped, containers=containers, **pool.options)
        pids = lambda: {f.result() for f in [made.getpid.spawn(s.pid_delay) for _ in range(2 * containers)]}  # noqa: E731
    else:
        import concurrent.futures
        import multiprocessing

        made = concurrent.futures.ProcessPoolExecutor(
            containers, mp_context=multiprocessing.get_context("fork"), initializer=init_weights
        )
        pids = lambda: {f.result() for f in [made.submit(getpid, s.pid_delay) for _ in range(2 * containers)]}  # noqa: E731
    with made:
        seen: set[int] = set()
        deadline = time.monotonic() + s.timeout
        while len(seen) < containers and time.monotonic() < deadline:
            seen |= pids()
        elapsed = time.perf_counter() - start
        time.sleep(s.idle_seconds)
        pss = [read_kb(f"/proc/{pid}/smaps_rollup", "Pss") for pid in descendants(os.getpid())]
    title = f"snap, {containers} containers after a {s.snap_mb} MB load:"
    return {
        label(f"{title} all serving", "s", True): elapsed,
        label(f"{title} PSS of every descendant, sum", "MB", True): sum(filter(None, pss)) / 1024,
    }


def measure_payload(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """One round trip of a ``payload_mb`` MB float64 array through ``echo``.

    The warm-up echoes a tiny array, so every worker has imported NumPy.
    """
    import numpy

    array = numpy.arange(s.payload_mb * 2**20 // 8, dtype=numpy.float64)
    with opened(pool_cls, containers, warm_item=array[:1]) as pool:
        start = time.perf_counter()
        out = pool.call(array)
        elapsed = time.perf_counter() - start
    expect((out.shape, out[-1]), (array.shape, array[-1]))
    return {label(f"payload, {s.payload_mb} MB array echo", "s", True): elapsed}


def measure_scaling(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """Overhead per call of ``scaling_calls`` pipelined calls on ``containers`` workers."""
    xs = range(s.scaling_calls)
    with opened(pool_cls, containers) as pool:
        all_started(pool, containers, s)  # steady state: no worker is still starting
        start = time.perf_counter()
        out = pool.pipelined(xs)
        elapsed = time.perf_counter() - start
    expect(out, list(xs))
    title = f"scaling, {short(len(xs))} spawn on {plural(containers, 'container')}"
    return {label(title, "µs/call", True): elapsed / len(xs) * 1e6}


def proc_table() -> dict[int, tuple[str, int, int]]:
    """Map every pid in /proc to (state, parent pid, process group)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            table[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root``."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (state, ppid, _) in table.items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        kids = children.get(stack.pop(), [])
        found += kids
        stack += kids
    return found


def read_kb(path: str, key: str) -> int | None:
    """The number on the ``key:`` line of a /proc file (in kB), or None if unreadable."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def measure_memory(pool_cls: type[Pool], containers: int, s: Settings) -> dict[str, float]:
    """RSS of the parent and of each worker with ``containers`` idle workers."""
    with opened(pool_cls, containers) as pool:
        workers = pool.pids(4 * containers, s.pid_delay)
        time.sleep(s.idle_seconds)
        parent = read_kb(f"/proc/{os.getpid()}/status", "VmRSS")
        rss = [read_kb(f"/proc/{pid}/status", "VmRSS") for pid in workers]
        pss = [read_kb(f"/proc/{pid}/smaps_rollup", "Pss") for pid in workers]
        everything = [read_kb(f"/proc/{pid}/status", "VmRSS") for pid in descendants(os.getpid())]
    if len(workers) < containers:
        print(f"memory: only {len(workers)} of {containers} workers answered", file=sys.stderr)
    title = f"memory, {containers} idle containers:"
    return {
        label(f"{title} parent RSS", "MB", True): parent / 1024,
        label(f"{title} worker RSS, median", "MB", True): statistics.median(filter(None, rss)) / 1024,
        label(f"{title} worker PSS, median", "MB", True): statistics.median(filter(None, pss)) / 1024,
        label(f"{title} all descendants RSS, sum", "MB", True): sum(filter(None, everything)) / 1024,
    }


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A scenario: its measure function, contestants and container counts."""

    name: str
    summary: str
    measure: Callable[[type[Pool], int, Settings], dict[str, float]]
    contestants: tuple[str, ...]
    containers: Callable[[Settings], tuple[int, ...]]


POOL_PEERS = ("ppe", "mp.Pool", "loky", "mpire", "ray", "lifepool-ray", "lifepool-ray-relay")
SCENARIOS = {
    sc.name: sc
    for sc in (
        Scenario(
            "latency",
            "sequential blocking round trips",
            measure_latency,
            ("lifepool", "pipe", *POOL_PEERS),
            lambda s: (2,),
        ),
        Scenario(
            "pipelined",
            "spawn/submit many calls, then wait for all",
            measure_pipelined,
            ("lifepool", *POOL_PEERS),
            lambda s: (2,),
        ),
        Scenario(
            "map",
            "ordered map of tiny items, default chunking",
            measure_map,
            ("lifepool", *POOL_PEERS),
            lambda s: (2,),
        ),
        Scenario(
            "map-generator",
            "the same map over a generator (ppe and loky, at ~5k items/s, left out)",
            measure_map_generator,
            ("lifepool", "mp.Pool", "mpire", "ray", "lifepool-ray", "lifepool-ray-relay"),
            lambda s: (2,),
        ),
        Scenario(
            "cold",
            "pool construction to first result",
            measure_cold,
            ("lifepool", "lifepool-exec", "ppe", "ppe-spawn", "ppe-forkserver", "mp.Pool", "loky", "mpire", "ray"),
            lambda s: (s.cold_containers,),
        ),
        Scenario(
            "later",
            "a later pool of the process: construction to first result",
            measure_later,
            ("lifepool", "lifepool-exec", "ppe", "ppe-forkserver", "mp.Pool"),
            lambda s: (2, 8),
        ),
        Scenario(
            "later-tiny",
            "the same, with lifepool's target class in a small module of its own",
            measure_later_tiny,
            ("lifepool", "lifepool-exec", "mp.Pool"),
            lambda s: (2, 8),
        ),
        Scenario(
            "all-serving",
            "a later pool of the process: construction until every container answered",
            measure_all_serving,
            ("lifepool", "lifepool-exec", "ppe", "mp.Pool"),
            lambda s: (8,),
        ),
        Scenario(
            "replacement",
            "lifepool: crash to next call served; peers: a one-worker pool's start",
            measure_replacement,
            ("lifepool", "lifepool-exec", "mp.Pool"),
            lambda s: (1,),
        ),
        Scenario(
            "snap",
            "workers sharing a model loaded once (snap hook) vs an initializer in each (ppe, fork)",
            measure_snap,
            ("lifepool", "lifepool-exec", "ppe"),
            lambda s: (s.snap_containers,),
        ),
        Scenario(
            "payload",
            "round trip of a large NumPy array",
            measure_payload,
            ("lifepool", "pipe", *POOL_PEERS),
            lambda s: (2,),
        ),
        Scenario(
            "scaling",
            "pipelined overhead per call on 1..32 containers",
            measure_scaling,
            ("lifepool", "ppe"),
            lambda s: s.scaling_containers,
        ),
        Scenario(
            "batching",
            "@lifepool.batched vs one input per call, 2 ms per model call",
            measure_batching,
            ("lifepool", "unbatched"),
            lambda s: (2,),
        ),
        Scenario(
            "memory",
            "parent and worker memory with idle containers",
            measure_memory,
            ("lifepool", "lifepool-exec", *POOL_PEERS),
            lambda s: (s.memory_containers,),
        ),
    )
}


def measure_main() -> None:
    """Driver entry point: run the one measurement described by ``sys.argv[1]``."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks on timeout
    request = json.loads(sys.argv[1])
    settings = Settings(**request["settings"])
    scenario = SCENARIOS[request["scenario"]]
    values = scenario.measure(POOLS[request["contestant"]], request["containers"], settings)
    print(MARKER + json.dumps(values), flush=True)


# --------------------------------------------------------------------------
# The parent: runs drivers in alternation, then tabulates.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one driver produced: row values, or why it failed."""

    values: dict[str, float]
    failure: str = ""
    wall: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the driver ran


def stop_group(pgid: int) -> int:
    """SIGKILL the live members of process group ``pgid``; return how many there were."""
    live = [pid for pid, (state, _, group) in proc_table().items() if group == pgid and state != "Z"]
    if live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return len(live)


def run_driver(scenario: str, contestant: str, containers: int, settings: Settings) -> Outcome:
    """Run one measurement in a fresh driver process, bounded by ``settings.timeout``."""
    request = {
        "scenario": scenario,
        "contestant": contestant,
        "containers": containers,
        "settings": dataclasses.asdict(settings),
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = "from benchmarks.bench import measure_main; measure_main()"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(request)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # the driver dumps its threads' stacks
        time.sleep(1.0)
        stop_group(proc.pid)
        _, err = proc.communicate()
        print("    " + "\n    ".join(err.strip().splitlines()[-40:]), file=sys.stderr)
        return Outcome({}, f"timeout after {settings.timeout:g} s", time.perf_counter() - start, (load_before, NOISY))
    wall = time.perf_counter() - start
    time.sleep(0.2)  # let exiting workers finish before looking for leftovers
    if leftovers := stop_group(proc.pid):
        print(f"    note: {contestant} left {leftovers} process(es) behind; killed", file=sys.stderr)
    results = [line for line in out.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not results:
        lines = err.strip().splitlines() or [f"exit status {proc.returncode}"]
        print("    " + "\n    ".join(lines[-6:]), file=sys.stderr)
        return Outcome({}, f"error: {lines[-1][:120]}", wall, (load_before, os.getloadavg()[0]))
    return Outcome(json.loads(results[-1][len(MARKER) :]), "", wall, (load_before, os.getloadavg()[0]))


NOISY = 1.0  # a row measured while the 1-minute load average was above this is marked noisy


def fmt(value: float) -> str:
    """Three significant digits, or a whole number with thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 999.5 else f"{value:.3g}"


@dataclasses.dataclass
class Results:
    """Every outcome of a run, keyed by (scenario, containers, contestant)."""

    outcomes: dict[tuple[str, int, str], list[Outcome]] = dataclasses.field(default_factory=dict)

    def add(self, key: tuple[str, int, str], outcome: Outcome) -> None:
        """Record one round's outcome."""
        self.outcomes.setdefault(key, []).append(outcome)

    def contestants(self) -> list[str]:
        """Contestants that took part, in the canonical order."""
        seen = {key[2] for key in self.outcomes}
        return [name for name in POOLS if name in seen]

    def rows(self) -> list[tuple[str, int, str]]:
        """(scenario, containers, label) of every row, in the order they arrived."""
        rows: dict[tuple[str, int, str], None] = {}
        for (scenario, containers, _), outcomes in self.outcomes.items():
            for outcome in outcomes:
                for row_label in outcome.values:
                    rows[(scenario, containers, row_label)] = None
        return list(rows)

    def samples(self, row: tuple[str, int, str], contestant: str) -> list[float | None]:
        """The row's value in each round (None where the driver failed)."""
        scenario, containers, row_label = row
        outcomes = self.outcomes.get((scenario, containers, contestant), [])
        return [o.values.get(row_label) for o in outcomes]

    def failures(self) -> list[str]:
        """One line per distinct failure."""
        lines = {
            f"{scenario} ({plural(containers, 'container')}), {name}: {o.failure}": None
            for (scenario, containers, name), outcomes in self.outcomes.items()
            for o in outcomes
            if o.failure
        }
        return list(lines)

    def median_table(self) -> str:
        """Markdown table of the median of each row for each contestant."""
        names = self.contestants()
        lines = [
            "| metric | " + " | ".join(names) + " | load avg |",
            "|---|" + "---:|" * len(names) + "---|",
        ]
        for row in self.rows():
            cells = []
            for name in names:
                samples = self.samples(row, name)
                good = [v for v in samples if v is not None]
                cell = fmt(statistics.median(good)) if good else ("failed" if samples else "–")
                if good and len(good) < len(samples):
                    cell += f" ({len(samples) - len(good)} failed)"
                cells.append(cell)
            lines.append(f"| {row[2]} | " + " | ".join(cells) + f" | {self.load_cell(row)} |")
        return "\n".join(lines)

    def load_cell(self, row: tuple[str, int, str]) -> str:
        """The highest 1-minute load average seen around the row's drivers; "noisy" above NOISY."""
        scenario, containers, _ = row
        loads = [
            value
            for (name, count, _), outcomes in self.outcomes.items()
            if (name, count) == (scenario, containers)
            for outcome in outcomes
            for value in outcome.load
        ]
        if not loads:
            return "–"
        highest = max(loads)
        return f"{highest:.2f} noisy" if highest > NOISY else f"{highest:.2f}"

    def ratio_table(self) -> str:
        """Markdown table of lifepool/peer: median of per-round ratios [min–max]."""
        peers = [name for name in self.contestants() if name != "lifepool"]
        lines = [
            "| metric | " + " | ".join(f"lifepool/{p}" for p in peers) + " |",
            "|---|" + "---:|" * len(peers),
        ]
        for row in self.rows():
            ours = self.samples(row, "lifepool")
            cells = []
            for peer in peers:
                ratios = [
                    a / b for a, b in zip(ours, self.samples(row, peer)) if a is not None and b is not None and b != 0
                ]
                if not ratios:
                    cells.append("–")
                elif len(ratios) == 1:
                    cells.append(f"{ratios[0]:.3g}")
                else:
                    low, high = min(ratios), max(ratios)
                    cells.append(f"{statistics.median(ratios):.3g} [{low:.3g}–{high:.3g}]")
            lines.append(f"| {row[2]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def run_suite(scenarios: list[Scenario], contestants: list[str], settings: Settings) -> Results:
    """Run every scenario, alternating contestants within each round."""
    results = Results()
    for scenario in scenarios:
        names = [name for name in scenario.contestants if name in contestants]
        for round_no in range(1, settings.repeat + 1):
            for containers in scenario.containers(settings):
                for name in names:
                    outcome = run_driver(scenario.name, name, containers, settings)
                    results.add((scenario.name, containers, name), outcome)
                    shown = outcome.failure or ", ".join(fmt(v) for v in outcome.values.values())
                    print(
                        f"[{scenario.name} {round_no}/{settings.repeat}] {name:<9} "
                        f"{plural(containers, 'container')}: {shown} ({outcome.wall:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def lifepool_source() -> str:
    """The commit, whether lifepool/ has uncommitted changes, and a digest of its source."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "lifepool").rglob("*.py")):
        digest.update(path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "lifepool"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, changed = "unknown", ""
    return f"commit {commit}{' + uncommitted changes' if changed else ''}, source digest {digest.hexdigest()[:12]}"


def package_version(name: str) -> str:
    """Installed version of ``name``, or a note saying why there is none."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if name == "lifepool" and importlib.util.find_spec("lifepool"):
            return "working tree (not installed)"
        return "not installed"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_description() -> list[tuple[str, str]]:
    """(item, value) pairs describing the machine, Python and the packages."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    mem_kb = read_kb("/proc/meminfo", "MemTotal")
    packages = ("lifepool", "numpy", "cloudpickle", "tblib", "loky", "mpire", "ray")
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", models[0] if models else platform.processor() or "unknown"),
        ("cores", f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable"),
        ("memory", f"{mem_kb / 2**20:.1f} GiB" if mem_kb else "unknown"),
        ("load average at start", load_average()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("default start method", multiprocessing.get_start_method()),
        ("packages", ", ".join(f"{p} {package_version(p)}" for p in packages)),
        ("lifepool source", lifepool_source()),
    ]


HOW_TO_READ = f"""\
How to read the tables: each cell of the first table is the median over the
rounds of one driver process each. Each ratio is lifepool's value divided by
the peer's, computed within each round (the contestants ran one after the
other in that round) and then reduced to the median, with the lowest and
highest per-round ratio in brackets. On rows marked {LOWER} (times, memory)
lower is better, so a ratio below 1 means lifepool is better; on rows marked
{HIGHER} (throughputs) a ratio above 1 means lifepool is better. The column
lifepool/pipe compares with a bare Pipe ping-pong between two processes: the
floor that no pool can beat. Single runs on a shared 2-core machine are
noisy; trust ratios whose bracket stays on one side of 1."""


def report(results: Results, machine: list[tuple[str, str]], command: str) -> str:
    """The Markdown report: machine, command, both tables, how to read them."""
    parts = [
        "# lifepool benchmark results",
        "",
        f"Command: `{command}`",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine),
        "",
        "## Medians",
        "",
        results.median_table(),
        "",
    ]
    if "lifepool" in results.contestants() and len(results.contestants()) > 1:
        parts += ["## Ratios lifepool / peer", "", results.ratio_table(), "", HOW_TO_READ]
    else:
        parts += ["No ratios: they need lifepool and at least one peer."]
    if failures := results.failures():
        parts += ["", "## Failures", "", *(f"- {line}" for line in failures)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    scenarios = "\n".join(f"  {sc.name:<10} {sc.summary}" for sc in SCENARIOS.values())
    peers = ", ".join(n for n in POOLS if n != "lifepool")
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"scenarios:\n{scenarios}\npeers: {peers}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    parser.add_argument("--repeat", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    parser.add_argument(
        "--peers",
        help="comma-separated peers to compare with, or 'none' (default: all installed)",
    )
    parser.add_argument(
        "--payload-mb",
        type=int,
        help="payload array size in MB (default 256, quick 16)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds before a measurement is killed (default 120, quick 20)",
    )
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS_PATH.relative_to(ROOT)}")
    return parser.parse_args(argv)


def split_names(text: str | None, known: Iterable[str], what: str) -> list[str] | None:
    """Parse a comma-separated list, rejecting unknown names; None if not given."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    if unknown := [n for n in names if n not in known]:
        sys.exit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def available(name: str) -> str:
    """Empty if contestant ``name`` can run here, else the reason it cannot."""
    module = POOLS[name].module
    if not module:
        return ""
    sys.path.insert(0, str(ROOT))
    try:
        if name == "lifepool":
            import lifepool

            lifepool.LifecyclePool  # noqa: B018 - the attribute must exist
        elif importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    except Exception as exc:
        return f"import {module} failed: {type(exc).__name__}: {exc}"
    finally:
        sys.path.remove(str(ROOT))
    return ""


def main(argv: list[str]) -> None:
    """Run the suite as the command line asks and print (and maybe write) the report."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        "repeat": args.repeat,
        "payload_mb": args.payload_mb,
        "timeout": args.timeout,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    scenario_names = split_names(args.only, SCENARIOS, "scenario") or list(SCENARIOS)
    peers = split_names(args.peers, [n for n in POOLS if n != "lifepool"], "peer")
    wanted = [
        "lifepool",
        *(peers if peers is not None else [n for n in POOLS if n != "lifepool"]),
    ]
    contestants = []
    for name in wanted:
        if reason := available(name):
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            contestants.append(name)

    machine = machine_description()
    for key, value in machine:
        print(f"{key}: {value}")
    command = shlex.join(["python", "benchmarks/bench.py", *argv])
    print(f"command: {command}\n", flush=True)

    start = time.perf_counter()
    results = run_suite([SCENARIOS[n] for n in scenario_names], contestants, settings)
    machine += [("load average at end", load_average()), ("run time", f"{time.perf_counter() - start:.0f} s")]
    if (source := lifepool_source()) != dict(machine)["lifepool source"]:
        machine.append(("WARNING", f"lifepool changed during the run (now {source}): results mix versions"))
    text = report(results, machine, command)
    print("\n" + text)
    if args.write:
        RESULTS_PATH.write_text(text)
        print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main(sys.argv[1:])
