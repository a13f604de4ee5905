"""Target classes for the tests, in an importable module (containers import it by name).

Containers report what happened to them through marker files in a directory
the test owns: ``<event>-<pid>`` files, whose content is a short text.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import threading
import time

import lifepool


def mark(directory: str | os.PathLike[str], event: str, text: str = "") -> None:
    path = pathlib.Path(directory) / f"{event}-{os.getpid()}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # atomic: a reader never sees half a marker


def wait_for_path(path: str | os.PathLike[str], timeout: float = 30.0) -> None:
    """Block until *path* exists (bounded)."""
    deadline = time.monotonic() + timeout
    path = pathlib.Path(path)
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.005)


class Recorder:
    """Writes a marker for each lifecycle event; its methods are trivial."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = str(directory)
        mark(self.directory, "init")

    def __enter__(self):
        mark(self.directory, "enter")
        self.entered = True
        return self

    def __exit__(self, exc_type, exc_value, tb):
        import traceback

        tb_text = "".join(traceback.format_tb(tb)) if tb is not None else ""
        mark(
            self.directory,
            "exit",
            f"{exc_type.__name__ if exc_type else None}|{exc_value!r}|{tb_text}",
        )

    def pid(self) -> int:
        return os.getpid()

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def echo(self, x):
        return x

    def double(self, x):
        return 2 * x

    def add(self, a, b=0):
        return a + b

    def where(self) -> tuple[int, int]:
        container = lifepool.current_container()
        assert container is not None and container.instance is self
        return container.index, os.getpid()

    def fail(self, message: str = "bad input"):
        raise ValueError(message)

    def fail_deep(self, depth):
        """Raise ValueError *depth* frames down."""

        def down(n):
            if n == 0:
                raise ValueError("at the bottom")
            return down(n - 1)

        return down(depth)

    def recurse(self):
        def forever(n):
            return forever(n + 1)

        return forever(0)

    def fail_if_odd(self, x):
        if x % 2:
            raise ValueError(f"odd: {x}")
        return x

    def value_or_error(self, x, fail):
        return value_or_error(x, fail)

    def block_until(self, path: str, started: str | None = None):
        """Announce the start (marker *started*), then wait for *path* to exist."""
        if started:
            pathlib.Path(started).touch()
        wait_for_path(path)
        return "released"

    def chained(self):
        try:
            _ = {}["missing"]
        except KeyError as key_error:
            raise RuntimeError("while looking up") from key_error

    def implicit_chain(self):
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            raise ValueError("during handling")

    def lock_at(self, i, at):
        return threading.Lock() if i == at else i

    def unpicklable_result(self):
        return threading.Lock()

    def unpicklable_error(self):
        raise UnpicklableError(threading.Lock())

    def stop_at(self, x, stops):
        if x in stops:
            raise StopIteration  # (a stray next() on an empty iterator, say)
        return x

    def attribute_bag_error(self):
        raise AttributeBagError("status 500")

    def unrebuildable_at(self, x, at):
        return Unrebuildable() if x == at else x

    def error_with_unpicklable_cause(self):
        try:
            raise UnpicklableError(threading.Lock())
        except UnpicklableError as error:
            raise ValueError("config is bad") from error

    def error_with_unpicklable_context(self):
        try:
            try:
                _ = {}["missing"]
            except KeyError:
                raise UnpicklableError(threading.Lock())  # (an implicit chain)
        except UnpicklableError:
            raise RuntimeError("while cleaning up")

    def custom_init_error(self):
        raise CustomInitError("a", 2)

    def exploding_reduce_error(self):
        raise ExplodingReduceError("boom")

    def map(self, x):  # a name the pool itself uses
        return ("method map", x)

    def _private(self):
        return "no"

    @lifepool.enter()
    def _hook_marked(self):
        pass


class UnpicklableError(Exception):
    def __init__(self, lock):
        super().__init__("holds a lock")
        self.lock = lock


def _refuse_to_rebuild():
    raise RuntimeError("cannot be rebuilt here")


class Unrebuildable:
    """A value that pickles, and fails to unpickle."""

    def __reduce__(self):
        return (_refuse_to_rebuild, ())


class AttributeBagError(Exception):
    """An error answering every attribute (``__notes__`` included: not a list, so add_note raises)."""

    def __getattr__(self, name):
        return None


class CustomInitError(Exception):
    def __init__(self, name, count):
        super().__init__(f"{name} x {count}")
        self.name = name
        self.count = count


class ExplodingReduceError(Exception):
    def __reduce__(self):
        raise RuntimeError("__reduce__ exploded")


class Plain:
    """No hooks at all."""

    def hello(self, name):
        return f"hello {name}"


class Ordered:
    """Records the order hooks ran in, per container."""

    directory = ""

    def __init__(self, directory):
        self.directory = str(directory)
        self.events = []

    def __enter__(self):
        self.events.append("__enter__")

    @lifepool.enter()
    def first(self):
        self.events.append("first")

    @lifepool.enter()
    def second(self):
        self.events.append("second")

    @lifepool.exit()
    def cleanup(self):
        self.events.append("cleanup")

    def __exit__(self, *exc):
        self.events.append("__exit__")
        mark(self.directory, "events", ",".join(self.events))

    def events_so_far(self):
        return list(self.events)


class AsyncProcessor:
    """The reference's Processor: __aenter__ makes something the async method uses."""

    def __init__(self, directory):
        self.directory = str(directory)

    async def __aenter__(self):
        self.loop = asyncio.get_running_loop()
        self.cache = {"ready": True}

    async def run(self, x):
        assert asyncio.get_running_loop() is self.loop  # the container's one loop
        await asyncio.sleep(0)
        return (x, self.cache["ready"])

    def sync_beside(self, x):
        return x + 1

    async def __aexit__(self, exc_type, exc_value, tb):
        assert asyncio.get_running_loop() is self.loop
        mark(self.directory, "aexit", repr(exc_type))


class FailingEnter:
    """Fails to enter in the one container that wins the marker race."""

    def __init__(self, directory):
        self.directory = str(directory)

    def __enter__(self):
        try:
            fd = os.open(os.path.join(self.directory, "failer"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            mark(self.directory, "enter")
            return
        os.close(fd)
        raise OSError("cannot load weights")

    def work(self, x):
        return x

    def __exit__(self, *exc):
        mark(self.directory, "exit", repr(exc[0]))


class FailingExit:
    def __init__(self, directory):
        self.directory = str(directory)

    def __enter__(self):
        pass

    def ping(self):
        return "pong"

    def __exit__(self, *exc):
        raise RuntimeError(f"cleanup failed in {os.getpid()}")


class CrashingExit(FailingExit):
    def __exit__(self, *exc):
        os._exit(5)


class ExitingExit(FailingExit):
    def __exit__(self, *exc):
        sys.exit(3)  # a BaseException that is no Exception


class Fragile:
    """Methods that crash, hang or misbehave on purpose; hooks leave markers."""

    def __init__(self, directory):
        self.directory = str(directory)

    def __enter__(self):
        mark(self.directory, "enter")

    def __exit__(self, exc_type, exc_value, tb):
        mark(self.directory, "exit", exc_type.__name__ if exc_type else "None")

    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x

    def exit_now(self, code=3):
        os._exit(code)

    def kill_self(self):
        os.kill(os.getpid(), 9)

    def crash_once(self, name, value=None):
        """Crash the first time this name is seen (marker file), succeed on the retry."""
        try:
            fd = os.open(os.path.join(self.directory, f"crashed-{name}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return value if value is not None else "survived"
        os.close(fd)
        os._exit(7)

    def maybe_crash(self, x, crash):
        if crash:
            os._exit(9)
        return x

    def sleep(self, seconds, started=None):
        if started:
            pathlib.Path(started).touch()
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            mark(self.directory, "interrupted")
            raise
        return "slept"

    def stubborn_sleep(self, seconds, started=None):
        """Swallows interrupts: only a kill ends it."""
        if started:
            pathlib.Path(started).touch()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                mark(self.directory, "ignored-interrupt")
        return "stubborn"

    def big(self, megabytes):
        return b"x" * (megabytes * 1024 * 1024)


class CrashOnEnter:
    def __enter__(self):
        os._exit(5)

    def work(self):
        return 1


class Concurrent:
    """Proves concurrency without timing: calls meet at a barrier only N of them can pass together."""

    def __init__(self, parties: int):
        self.parties = parties

    def __enter__(self):
        self.barrier = threading.Barrier(self.parties, timeout=30)
        self.lock = threading.Lock()
        self.active = self.peak = 0

    async def __aenter__(self):
        self.__enter__()
        self.abarrier = asyncio.Barrier(self.parties)

    def meet(self, i):
        self.barrier.wait()  # BrokenBarrierError after 30 s unless all parties run at once
        return i

    async def ameet(self, i):
        await asyncio.wait_for(self.abarrier.wait(), 30)
        return i

    def probe(self, _i=None):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)
        with self.lock:
            self.active -= 1

    def get_peak(self):
        return self.peak

    async def nap(self, seconds):
        await asyncio.sleep(seconds)
        return seconds


@lifepool.concurrent(max_inputs=4)
class DecoratedConcurrent(Concurrent):
    def __init__(self):
        super().__init__(4)


class Streams:
    def __init__(self, directory):
        self.directory = str(directory)
        self.produced = 0

    def __enter__(self):
        pass

    def count(self, n):
        yield from range(n)

    async def acount(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def fail_after(self, n):
        yield from range(n)
        raise ValueError(f"failed after {n}")

    def endless(self):
        try:
            while True:
                self.produced += 1
                yield self.produced
        finally:
            mark(self.directory, "gen-finally", str(self.produced))

    def produced_so_far(self):
        return self.produced


class Batching:
    def __enter__(self):
        self.sizes = []

    @lifepool.batched(max_batch_size=4, wait_ms=1000)
    def square(self, xs):
        self.sizes.append(len(xs))
        return [x * x for x in xs]

    @lifepool.batched(max_batch_size=4, wait_ms=1000)
    def add(self, xs, ys, offset=0):
        self.sizes.append(len(xs))
        return [x + y + o for x, y, o in zip(xs, ys, offset, strict=True)]

    @lifepool.batched(max_batch_size=3, wait_ms=50)
    async def asquare(self, xs):
        await asyncio.sleep(0)
        return [x * x for x in xs]

    @lifepool.batched(max_batch_size=4, wait_ms=50)
    def broken(self, xs):
        raise RuntimeError(f"batch of {len(xs)} failed")

    @lifepool.batched(max_batch_size=4, wait_ms=50)
    def short(self, xs):
        return xs[:-1]

    def batch_sizes(self):
        return list(self.sizes)


class AsyncHooks:
    """Async and sync decorated hooks around __aenter__/__aexit__, all on the container's loop."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.log = []

    async def __aenter__(self):
        self.loop = asyncio.get_running_loop()
        self.log.append("__aenter__")

    @lifepool.enter()
    async def async_enter(self):
        assert asyncio.get_running_loop() is self.loop
        self.log.append("async-enter")

    @lifepool.enter()
    def sync_enter(self):
        self.log.append("sync-enter")

    @lifepool.exit()
    async def async_exit(self):
        assert asyncio.get_running_loop() is self.loop
        self.log.append("async-exit")

    async def __aexit__(self, *exc):
        self.log.append("__aexit__")
        mark(self.directory, "events", ",".join(self.log))

    def events(self):
        return list(self.log)

    async def hang(self):
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            mark(self.directory, "cancelled")
            raise


class HangingExit:
    def ping(self):
        return os.getpid()

    def __exit__(self, *exc):
        time.sleep(600)


def value_or_error(x, fail):
    """x, or a ValueError naming x when *fail* (for map's per-input outcomes)."""
    if fail:
        raise ValueError(f"bad {x}")
    return x


class Ahead:
    """For calls sent ahead: a call that blocks (or crashes) on demand, calls that leave a marker."""

    def block(self, release: str, started: str) -> str:
        pathlib.Path(started).touch()
        wait_for_path(release)
        return "released"

    def crash(self, release: str, started: str) -> None:
        pathlib.Path(started).touch()
        wait_for_path(release)
        os._exit(3)

    def run(self, directory: str, i: int, payload: object = None) -> int:
        pathlib.Path(directory, f"ran-{i}").touch()
        return i


class LeavesAnExecutor:
    """Makes a ProcessPoolExecutor in its enter hook and never shuts it down."""

    def __enter__(self):
        import concurrent.futures
        import multiprocessing

        self.executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        assert self.executor.submit(abs, -1).result(timeout=60) == 1
        return self

    def executor_pids(self):
        return list(self.executor._processes)  # (no public way to name an executor's workers)

    def pid(self):
        return os.getpid()


class CrashThenSlowEnter:
    """``work(0)`` crashes its container; the replacement waits in ``__enter__`` for the file ``enter``."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def __enter__(self):
        if (self.directory / "crashed").exists():
            wait_for_path(self.directory / "enter")

    def work(self, x):
        if x == 0:
            (self.directory / "crashed").touch()
            os._exit(1)
        return x


class AsyncRaiser:
    """An async method raising what asyncio treats specially; a sync one raising StopIteration."""

    async def raise_(self, kind):
        if kind == "exit":
            sys.exit(3)
        if kind == "keyboard":
            raise KeyboardInterrupt("raised by the method")
        if kind == "cancelled":
            raise asyncio.CancelledError("raised by the method")
        return kind

    def stop(self):
        raise StopIteration("done early")

    async def fail(self):
        raise ValueError("raised in an async method")


class Elastic(Recorder):
    """For elastic pools: a rendezvous only N concurrent calls can pass, timestamps, a late enter failure."""

    def __enter__(self):
        if os.path.exists(os.path.join(self.directory, "fail-enter")):
            raise RuntimeError("enter refused: fail-enter exists")
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, tb):
        mark(self.directory, "exitclock", repr(time.time()))
        return super().__exit__(exc_type, exc_value, tb)

    def rendezvous(self, parties: int, timeout: float = 60.0) -> int:
        """Return once *parties* different containers are inside this method at once (bounded)."""
        mark(self.directory, "arrived")
        deadline = time.monotonic() + timeout

        def arrived() -> int:
            return len([p for p in os.listdir(self.directory) if p.startswith("arrived-") and not p.endswith(".tmp")])

        while arrived() < parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {parties} containers ran at once")
            time.sleep(0.005)
        return os.getpid()

    def busy_for(self, seconds: float) -> float:
        """Work for *seconds* (time must pass during a call: the point of the test), return when it ended."""
        time.sleep(seconds)
        ended = time.time()
        mark(self.directory, "call-ended", repr(ended))
        return ended


class Holding:
    """An instance target that carries a big buffer to every container."""

    def __init__(self, array):
        self.array = array

    def total(self):
        return float(self.array.sum())


def on_shared_memory(array) -> bool:
    """Whether *array* lives on a shared-memory mapping (it crossed as a segment, not inside a frame)."""
    import mmap

    base = array
    while base is not None:
        if isinstance(base, memoryview):
            return isinstance(base.obj, mmap.mmap)
        base = getattr(base, "base", None)
    return False


class Buffers:
    """Tells how big arrays reached it."""

    def mapped(self, array) -> bool:
        return on_shared_memory(array)

    def echo(self, value):
        return value
