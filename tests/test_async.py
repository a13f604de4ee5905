"""Async containers and concurrency: max_inputs, @concurrent, .aio, streaming, dynamic batching."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conftest import markers
from targets import (
    AsyncProcessor,
    AsyncRaiser,
    Batching,
    Concurrent,
    DecoratedConcurrent,
    Fragile,
    Recorder,
    Streams,
    wait_for_path,
)

import lifepool
from lifepool._kinds import STREAM_WINDOW

pytestmark = pytest.mark.usefixtures("backend")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# -- the reference's Processor, from async def main() ------------------------


def test_reference_processor_from_async_main(hookdir):
    async def main():
        with lifepool.LifecyclePool(AsyncProcessor(hookdir), containers=2) as p:
            assert await p.run.remote.aio(1) == (1, True)
            assert await p.run.call.aio(2) == (2, True)
            assert [y async for y in p.run.map.aio(range(5))] == [(i, True) for i in range(5)]
            assert p.sync_beside.call(1) == 2  # sync methods keep working beside async ones

    run(main())
    assert len(markers(hookdir, "aexit")) == 2


def test_aio_does_not_block_the_callers_loop(hookdir):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as p:
            task = asyncio.create_task(ticker())
            assert await p.sleep.remote.aio(0.3) == "slept"
            task.cancel()
        return ticks

    assert run(main()) > 1


def test_map_aio_accepts_async_iterables_and_starmap_aio(hookdir):
    async def numbers():
        for i in range(6):
            yield i

    async def main():
        with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as p:
            doubled = [y async for y in p.double.map.aio(numbers())]
            summed = [y async for y in p.add.map.aio(numbers(), range(6))]
            starred = [y async for y in p.add.starmap.aio([(1, 2), (3, 4)])]
            unordered = sorted([y async for y in p.double.map.aio(range(6), order_outputs=False)])
            errors = [y async for y in p.fail_if_odd.map.aio(range(3), return_exceptions=True)]
        return doubled, summed, starred, unordered, errors

    doubled, summed, starred, unordered, errors = run(main())
    assert doubled == unordered == [0, 2, 4, 6, 8, 10]
    assert summed == [0, 2, 4, 6, 8, 10]
    assert starred == [3, 7]
    assert errors[0] == 0 and isinstance(errors[1], ValueError) and errors[2] == 2


@pytest.mark.on_ray
def test_cancelling_an_aio_await_interrupts_the_running_call_and_drops_the_queued_one(hookdir):
    started = hookdir / "started"

    async def main():
        with lifepool.LifecyclePool(Fragile(hookdir), containers=1) as p:
            running = asyncio.create_task(p.sleep.remote.aio(600, str(started)))
            queued_future = p.echo.spawn("queued")
            queued = asyncio.create_task(p.echo.remote.aio("dropped"))
            await asyncio.to_thread(wait_for_path, started)
            running.cancel()
            queued.cancel()
            for task in (running, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await asyncio.wrap_future(queued_future) == "queued"  # the pool serves on
            assert await p.echo.remote.aio("after") == "after"

    run(main())
    assert markers(hookdir, "interrupted")  # KeyboardInterrupt inside the running call


# -- several inputs per container ---------------------------------------------


def test_max_inputs_runs_sync_calls_on_threads_at_once():
    with lifepool.LifecyclePool(Concurrent(4), containers=1, max_inputs=4) as p:
        assert sorted(p.meet.map(range(4))) == [0, 1, 2, 3]


@pytest.mark.on_ray
def test_max_inputs_runs_async_calls_as_tasks_at_once():
    with lifepool.LifecyclePool(Concurrent(8), containers=1, max_inputs=8) as p:
        assert list(p.ameet.map(range(8))) == list(range(8))


def test_concurrent_decorator_sets_max_inputs():
    with lifepool.LifecyclePool(DecoratedConcurrent, containers=1) as p:
        assert p._max_inputs == 4
        assert sorted(p.meet.map(range(4))) == [0, 1, 2, 3]


def test_parent_never_sends_a_container_more_than_max_inputs():
    with lifepool.LifecyclePool(Concurrent(1), containers=1, max_inputs=3) as p:
        for _ in p.probe.map(range(30)):
            pass
        assert p.get_peak.call() <= 3


def test_one_container_with_many_inputs_serves_many_async_calls():
    with lifepool.LifecyclePool(Concurrent(1), containers=1, max_inputs=200) as p:
        assert sum(p.nap.map([0.01] * 2000)) == pytest.approx(20.0)


# -- streaming ------------------------------------------------------------------


@pytest.mark.on_ray
def test_remote_gen_streams_items(hookdir):
    with lifepool.LifecyclePool(Streams(hookdir), containers=1) as p:
        assert list(p.count.remote_gen(40)) == list(range(40))
        assert list(p.acount.remote_gen(5)) == list(range(5))

        async def consume():
            return [i async for i in p.count.remote_gen.aio(20)], [i async for i in p.acount.remote_gen.aio(3)]

        assert run(consume()) == (list(range(20)), [0, 1, 2])


def test_exception_mid_stream_arrives_after_the_items_before_it(hookdir):
    with lifepool.LifecyclePool(Streams(hookdir), containers=1) as p:
        received = []
        with pytest.raises(ValueError, match="failed after 3"):
            for item in p.fail_after.remote_gen(3):
                received.append(item)
        assert received == [0, 1, 2]
        assert list(p.count.remote_gen(2)) == [0, 1]  # and the pool serves on


def test_closing_the_consumer_stops_the_generator_with_back_pressure(hookdir):
    with lifepool.LifecyclePool(Streams(hookdir), containers=1, max_inputs=2) as p:
        stream = p.endless.remote_gen()
        assert next(stream) == 1
        # the container runs at most one window ahead of what was consumed
        for _ in range(2000):  # until it has filled its window (bounded)
            if p.produced_so_far.call() >= STREAM_WINDOW:
                break
        assert p.produced_so_far.call() <= STREAM_WINDOW + 1
        stream.close()
        (finally_marker,) = _wait_markers(hookdir, "gen-finally")
        assert int(finally_marker) <= STREAM_WINDOW + 1


def _wait_markers(directory, event, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while not markers(directory, event):
        assert time.monotonic() < deadline, f"no {event} marker"
        time.sleep(0.01)
    return list(markers(directory, event).values())


def test_generator_methods_refuse_call_and_map(hookdir):
    with lifepool.LifecyclePool(Streams(hookdir), containers=1) as p:
        for attempt in (lambda: p.count.call(3), lambda: p.count.spawn(3), lambda: p.count.map([1])):
            with pytest.raises(TypeError, match="remote_gen"):
                attempt()
        with pytest.raises(TypeError, match="not a generator"):
            p.produced_so_far.remote_gen()


# -- dynamic batching -----------------------------------------------------------


@pytest.mark.on_ray
def test_batched_calls_are_grouped_and_routed_back():
    with lifepool.LifecyclePool(Batching, containers=1) as p:
        assert list(p.square.map(range(20))) == [i * i for i in range(20)]
        sizes = p.batch_sizes.call()
        assert sum(sizes) == 20
        assert max(sizes) == 4 and all(1 <= s <= 4 for s in sizes)
        assert p.square.call(3) == 9  # a single call still works (after wait_ms)


def test_batched_with_several_parameters_and_defaults():
    with lifepool.LifecyclePool(Batching, containers=1) as p:
        futures = [p.add.spawn(i, 10 * i) for i in range(6)] + [p.add.spawn(1, 1, offset=100)]
        assert [f.result(timeout=60) for f in futures] == [11 * i for i in range(6)] + [102]


def test_async_batched_method():
    with lifepool.LifecyclePool(Batching, containers=2) as p:
        assert list(p.asquare.map(range(10))) == [i * i for i in range(10)]


def test_a_failing_batch_fails_each_input_and_a_wrong_length_is_a_clear_error():
    with lifepool.LifecyclePool(Batching, containers=1) as p:
        results = list(p.broken.map(range(4), return_exceptions=True))
        assert all(isinstance(r, RuntimeError) and "failed" in str(r) for r in results)
        results = list(p.short.map(range(4), return_exceptions=True))
        assert all(isinstance(r, ValueError) and "one output per input" in str(r) for r in results)


def test_batched_decorator_validates():
    with pytest.raises(ValueError):
        lifepool.batched(max_batch_size=0, wait_ms=1)
    with pytest.raises(ValueError):
        lifepool.batched(max_batch_size=2, wait_ms=-1)
    with pytest.raises(ValueError):
        lifepool.concurrent(max_inputs=0)


def test_many_inputs_with_islice_on_an_async_method():
    with lifepool.LifecyclePool(Concurrent(1), containers=1, max_inputs=10) as p:
        assert list(itertools.islice(p.nap.map(itertools.repeat(0)), 50)) == [0] * 50


def test_async_decorated_hooks_run_on_the_containers_loop(hookdir):
    from targets import AsyncHooks

    with lifepool.LifecyclePool(AsyncHooks(hookdir), containers=1) as p:
        assert p.events.call() == ["__aenter__", "async-enter", "sync-enter"]
    (events,) = markers(hookdir, "events").values()
    assert events == "__aenter__,async-enter,sync-enter,async-exit,__aexit__"


def test_a_timed_out_async_call_is_cancelled_in_its_container(hookdir):
    from targets import AsyncHooks

    with lifepool.LifecyclePool(AsyncHooks(hookdir), containers=1, timeout=0.5) as p:
        with pytest.raises(lifepool.CallTimeoutError):
            p.hang.call()
        assert p.events.call()[:1] == ["__aenter__"]  # the same container serves on
    assert markers(hookdir, "cancelled")


@pytest.mark.parametrize("max_inputs", [1, 2])
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("exit", SystemExit), ("keyboard", KeyboardInterrupt), ("cancelled", asyncio.CancelledError)],
)
def test_an_async_method_raising_what_asyncio_treats_apart_fails_that_call_only(max_inputs, kind, expected):
    # asyncio lets SystemExit and KeyboardInterrupt end the event loop itself,
    # and a CancelledError reads as a cancelled task: the container's loop
    # stopped for good, or the caller got a made-up interrupt.
    with lifepool.LifecyclePool(AsyncRaiser, containers=1, max_inputs=max_inputs, exit_grace_period=10) as p:
        error = p.raise_.spawn(kind).exception(timeout=60)
        assert type(error) is expected
        assert "raised by the method" in str(error) or kind == "exit"
        assert p.raise_.spawn("ok").result(timeout=60) == "ok"
        assert p.raise_.call("still") == "still"


def test_a_stop_iteration_awaited_with_aio_arrives_instead_of_hanging():
    async def main():
        with lifepool.LifecyclePool(AsyncRaiser, containers=1) as p:
            with pytest.raises(RuntimeError) as info:
                await p.stop.call.aio()
            assert isinstance(info.value.__cause__, StopIteration)
            return await p.raise_.call.aio("after")

    assert run(main()) == "after"


@pytest.mark.parametrize("max_inputs", [1, 2])
def test_an_async_methods_error_shows_the_users_frames_not_the_event_loops(max_inputs):
    import traceback

    with lifepool.LifecyclePool(AsyncRaiser, containers=1, max_inputs=max_inputs) as p:
        with pytest.raises(ValueError, match="raised in an async method") as info:
            p.fail.call()
    frames = [frame.filename for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1].endswith("targets.py")
    assert not [f for f in frames if "concurrent" in f or "asyncio" in f], frames


def test_map_aio_over_inputs_that_raise_gives_the_results_before_the_error_then_raises_it(hookdir):
    async def inputs():
        for i in range(10):
            yield i
        raise OSError("the input stream went away")

    async def main():
        results = []
        with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as p:
            with pytest.raises(OSError, match="went away"):
                async for value in p.echo.map.aio(inputs()):
                    results.append(value)
        return results

    assert run(main()) == list(range(10))
