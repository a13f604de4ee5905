"""Method handles, the Executor API, map windows, and errors that cross the process boundary."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import traceback

import pytest
from targets import CustomInitError, Fragile, Recorder

import lifepool

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def pool(hookdir):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as p:
        yield p


def test_is_an_executor(pool):
    assert isinstance(pool, concurrent.futures.Executor)


def test_call_remote_and_spawn(pool):
    assert pool.add.call(1, b=2) == 3
    assert pool.add.remote(1, 2) == 3
    future = pool.add.spawn(4, b=5)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 9


def test_unknown_and_private_names_fail_at_once_in_the_caller(pool):
    with pytest.raises(AttributeError, match="no public method 'nope'"):
        pool.nope  # noqa: B018
    with pytest.raises(AttributeError, match="private"):
        pool.method("_private")
    with pytest.raises(AttributeError):
        pool._private  # noqa: B018
    with pytest.raises(AttributeError):
        pool.__enter__.call  # the pool's own __enter__ is not a remote method  # noqa: B018


def test_method_reaches_names_the_pool_uses(pool):
    assert pool.method("map").call(3) == ("method map", 3)
    assert pool.method("echo") is pool.echo  # handles are cached


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "one-call-per-input"])
def test_map_over_inputs_that_raise_gives_the_results_before_the_error_then_raises_it(hookdir, chunked):
    def inputs():
        yield from range(10)
        raise OSError("the input file went away")

    options = {} if chunked else {"timeout": 60}  # (a timeout turns chunking off)
    with lifepool.LifecyclePool(Recorder(hookdir), containers=2, **options) as p:
        results = []
        with pytest.raises(OSError, match="went away"):
            for value in p.echo.map(inputs()):
                results.append(value)
        assert results == list(range(10))  # as the built-in map gives them


def test_map_keeps_order_and_spreads_over_containers(pool):
    assert list(pool.double.map(range(50))) == [2 * i for i in range(50)]
    assert list(pool.add.map(range(5), range(5))) == [0, 2, 4, 6, 8]


def test_map_unordered_yields_everything(pool):
    assert sorted(pool.double.map(range(50), order_outputs=False)) == [2 * i for i in range(50)]


def test_map_raises_the_first_error_in_order(pool):
    results = pool.fail_if_odd.map([0, 2, 3, 4])
    assert next(results) == 0
    assert next(results) == 2
    with pytest.raises(ValueError, match="odd: 3"):
        next(results)


def test_map_return_exceptions(pool):
    results = list(pool.fail_if_odd.map(range(4), return_exceptions=True))
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)


def test_starmap(pool):
    assert list(pool.add.starmap([(1, 2), (3, 4)])) == [3, 7]


def test_map_over_an_endless_generator_is_lazy_and_windowed(pool):
    from lifepool._mapping import _ChunkedMap

    consumed = itertools.count()

    def endless():
        for i in itertools.count():
            next(consumed)
            yield i

    results = pool.double.map(endless())
    assert list(itertools.islice(results, 10)) == [2 * i for i in range(10)]
    results.close()
    with pytest.raises(StopIteration):  # closed, as a generator would be
        next(results)
    # bounded: the window is 2 x containers x max_inputs calls (plus the one being
    # yielded), and quick inputs travel in chunks of at most MAX_CHUNK inputs per call
    assert next(consumed) <= 10 + (2 * 2 * 1 + 1) * _ChunkedMap.MAX_CHUNK


def test_map_of_slow_inputs_reads_one_input_per_call_ahead(hookdir):
    consumed = itertools.count()

    def endless():
        for _ in itertools.count():
            next(consumed)
            yield 0.006  # slower than a chunk's target: one input per call

    with lifepool.LifecyclePool(Fragile(hookdir), containers=2) as p:
        results = p.sleep.map(endless())
        assert list(itertools.islice(results, 10)) == ["slept"] * 10
        results.close()
        assert next(consumed) <= 10 + 2 * 2 * 1 + 1


def test_map_window_never_smaller_than_capacity(hookdir):
    with lifepool.LifecyclePool(Recorder(hookdir), containers=2, max_inputs=3) as p:
        started = itertools.count()

        def inputs():
            for i in range(100):
                next(started)
                yield i

        results = p.echo.map(inputs())  # the first window is submitted at once
        assert next(started) >= 2 * 3
        assert list(results) == list(range(100))


def test_submit_runs_plain_callables_with_positional_only_fn(pool):
    assert pool.submit(pow, 2, 10).result(timeout=60) == 1024

    def kw(**kwargs):
        return kwargs

    assert pool.submit(kw, fn=1, self=2).result(timeout=60) == {"fn": 1, "self": 2}


def test_submit_sees_current_container(pool):
    def where():
        container = lifepool.current_container()
        return container.index, container.pid == os.getpid(), type(container.instance).__name__

    index, same_pid, instance_type = pool.submit(where).result(timeout=60)
    assert index in (0, 1) and same_pid and instance_type == "Recorder"
    assert lifepool.current_container() is None


def test_executor_map(pool):
    assert list(pool.map(pow, [2, 3], [2, 2])) == [4, 9]
    assert list(pool.map(abs, range(-3, 0), timeout=60, chunksize=4)) == [3, 2, 1]


def test_executor_map_times_out(pool, hookdir):
    release = hookdir / "release"
    results = pool.method("block_until").map([str(release)])
    # not through a method: use Executor.map on a blocking callable
    from targets import wait_for_path

    blocking = pool.map(wait_for_path, [str(release)], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(blocking)
    release.touch()
    assert list(results) == ["released"]


def test_lambda_and_closure_travel_by_value(pool):
    offset = 10
    assert pool.submit(lambda x: x + offset, 5).result(timeout=60) == 15


def test_errors_keep_their_type_traceback_and_a_note(pool):
    with pytest.raises(ValueError, match="bad input") as info:
        pool.fail.call()
    error = info.value
    text = "".join(traceback.format_exception(error))
    assert "targets.py" in text and "in fail" in text
    assert "raise ValueError(message)" in text  # the source line is shown
    (note,) = [n for n in error.__notes__ if n.startswith("lifepool:")]
    assert "container" in note and "pid" in note and "Recorder.fail" in note


def test_error_chains_survive(pool):
    with pytest.raises(RuntimeError) as info:
        pool.chained.call()
    assert isinstance(info.value.__cause__, KeyError)
    assert '{}["missing"]' in "".join(traceback.format_exception(info.value))
    with pytest.raises(ValueError) as info:
        pool.implicit_chain.call()
    assert isinstance(info.value.__context__, ZeroDivisionError)


def test_error_with_custom_init_arrives_as_itself(pool):
    with pytest.raises(CustomInitError) as info:
        pool.custom_init_error.call()
    assert info.value.name == "a" and info.value.count == 2


def test_unpicklable_error_becomes_remote_error(pool):
    with pytest.raises(lifepool.RemoteError) as info:
        pool.unpicklable_error.call()
    assert info.value.type_name.endswith("UnpicklableError")
    assert "raise UnpicklableError" in info.value.remote_traceback
    assert any("Recorder.unpicklable_error" in note for note in info.value.__notes__)  # (which container)
    assert pool.echo.call("still serving") == "still serving"


def test_an_error_whose_cause_cannot_travel_keeps_its_type(pool):
    with pytest.raises(ValueError, match="config is bad") as info:
        pool.error_with_unpicklable_cause.call()
    cause = info.value.__cause__
    assert isinstance(cause, lifepool.RemoteError) and cause.type_name.endswith("UnpicklableError")
    assert "raise UnpicklableError" in cause.remote_traceback
    assert info.value.__suppress_context__  # (raise ... from: the context stays hidden)
    assert any("a RemoteError stands in" in note for note in info.value.__notes__)
    shown = "".join(traceback.format_exception(info.value))
    assert "raise ValueError" in shown and "raise UnpicklableError" in shown


def test_an_unpicklable_link_in_the_middle_of_a_chain_keeps_the_links_around_it(pool):
    with pytest.raises(RuntimeError, match="while cleaning up") as info:
        pool.error_with_unpicklable_context.call()
    context = info.value.__context__
    assert isinstance(context, lifepool.RemoteError) and context.type_name.endswith("UnpicklableError")
    assert "KeyError" in context.remote_traceback  # the stand-in's own chain, as text
    assert not info.value.__suppress_context__
    assert pool.echo.call("still serving") == "still serving"


def test_a_map_input_raising_stop_iteration_gets_it_and_the_others_keep_their_results(pool):
    # The built-in map that runs a chunk stops quietly at a StopIteration.
    outcomes = list(pool.stop_at.map(range(1000), itertools.repeat((2, 700)), return_exceptions=True))
    assert [i for i, v in enumerate(outcomes) if v != i] == [2, 700]
    assert isinstance(outcomes[2], StopIteration) and isinstance(outcomes[700], StopIteration)
    with pytest.raises(StopIteration):
        pool.stop_at.call(2, (2,))


def test_an_error_that_takes_no_notes_still_arrives_as_itself(pool):
    caught = None
    try:  # (not pytest.raises: pytest itself trips over such an error's __notes__)
        pool.attribute_bag_error.call()
    except Exception as error:
        caught = error
    assert type(caught).__name__ == "AttributeBagError" and str(caught) == "status 500"
    [outcome] = pool.attribute_bag_error.starmap([()], return_exceptions=True)
    assert type(outcome).__name__ == "AttributeBagError"
    assert pool.echo.call("still serving") == "still serving"


def test_a_map_result_that_cannot_be_unpickled_fails_its_inputs_not_the_map(pool):
    outcomes = list(pool.unrebuildable_at.map(range(200), itertools.repeat(150), return_exceptions=True))
    assert isinstance(outcomes[150], lifepool.RemoteError)
    assert "could not be unpickled" in str(outcomes[150])
    kept = [i for i, v in enumerate(outcomes) if not isinstance(v, lifepool.RemoteError)]
    assert kept and all(outcomes[i] == i for i in kept)
    assert 0 in kept  # (the first chunk holds one input)
    with pytest.raises(lifepool.RemoteError):
        list(pool.unrebuildable_at.map(range(10), itertools.repeat(5)))


def test_error_whose_reduce_raises_becomes_remote_error(pool):
    with pytest.raises(lifepool.RemoteError) as info:
        pool.exploding_reduce_error.call()
    assert "ExplodingReduceError" in info.value.type_name
    assert pool.echo.call(1) == 1


def test_unpicklable_arguments_raise_in_the_caller_naming_the_method(pool):
    with pytest.raises(TypeError) as info:
        pool.echo.call(threading.Lock())
    assert any("Recorder.echo" in note for note in info.value.__notes__)
    assert pool.echo.call(2) == 2


def test_unpicklable_result_fails_that_call_only(pool):
    with pytest.raises(TypeError) as info:
        pool.unpicklable_result.call()
    assert any("could not be pickled" in note for note in info.value.__notes__)
    assert pool.echo.call(3) == 3


def test_spawned_future_can_be_cancelled_while_queued(hookdir):
    from targets import wait_for_path

    with lifepool.LifecyclePool(Recorder(hookdir), containers=1) as p:
        release, started = hookdir / "release", hookdir / "started"
        first = p.block_until.spawn(str(release), str(started))
        queued = p.echo.spawn("never")
        wait_for_path(started)
        assert queued.cancel()
        release.touch()
        assert first.result(timeout=60) == "released"
        assert p.echo.call("after") == "after"


def test_sequential_blocking_calls_stay_on_the_container_used_last(hookdir):
    from targets import wait_for_path

    with lifepool.LifecyclePool(Recorder(hookdir), containers=2) as p:
        release = hookdir / "release"
        started = [hookdir / f"started-{n}" for n in range(2)]
        both = [p.block_until.spawn(str(release), str(path)) for path in started]
        for path in started:
            wait_for_path(path)  # (both containers are up)
        release.touch()
        assert [f.result(timeout=60) for f in both] == ["released"] * 2
        # Each call borrows the idle container given back last, whose process
        # is the likeliest to be warm on a CPU.
        assert len({p.where.call() for _ in range(20)}) == 1


def test_many_threads_calling_at_once(pool):
    def worker(n):
        return [pool.add.call(n, i) for i in range(20)]

    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        results = list(threads.map(worker, range(8)))
    assert results == [[n + i for i in range(20)] for n in range(8)]


def test_quick_inputs_are_chunked_yet_keep_per_input_results_and_errors(pool):
    results = list(pool.fail_if_odd.map(range(5000), return_exceptions=True))
    assert len(results) == 5000
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, ValueError) and str(result) == f"odd: {i}"
            assert any("Recorder.fail_if_odd" in note for note in result.__notes__)
        else:
            assert result == i
    ordered = pool.fail_if_odd.map([0, 2, 4] * 1000 + [7] + [0] * 100)
    for _ in range(3000):
        assert next(ordered) in (0, 2, 4)
    with pytest.raises(ValueError, match="odd: 7"):
        next(ordered)
    assert sorted(pool.double.map(range(3000), order_outputs=False)) == [2 * i for i in range(3000)]
    assert list(pool.map(abs, range(-2000, 0))) == list(range(2000, 0, -1))


def test_an_unpicklable_value_in_a_chunk_fails_that_input_only(pool):
    results = list(pool.lock_at.map(range(1000), [500] * 1000, return_exceptions=True))
    assert isinstance(results[500], TypeError)
    assert any("could not be pickled" in note for note in results[500].__notes__)
    assert results[:500] + results[501:] == [i for i in range(1000) if i != 500]


@pytest.mark.parametrize("star", [False, True])
def test_every_input_of_a_chunk_keeps_its_own_outcome(pool, star):
    # Errors first, last, in a row and at run boundaries of a chunk (the
    # container runs chunks in runs of inputs at C speed and must still tell
    # which input raised); map over one iterable and starmap take different paths.
    count = 3000
    bad = {0, 1, 2, 255, 256, 257, 511, 512, 1000, 1001, 2047, 2048, count - 1} | set(range(1500, 1540))
    if star:
        results = pool.value_or_error.starmap([(i, i in bad) for i in range(count)], return_exceptions=True)
    else:
        results = pool.fail_if_odd.map([2 * i + (i in bad) for i in range(count)], return_exceptions=True)
    results = list(results)
    assert len(results) == count
    for i, result in enumerate(results):
        if i in bad:
            assert isinstance(result, ValueError), (i, result)
            assert str(result) == (f"bad {i}" if star else f"odd: {2 * i + 1}")
        else:
            assert result == (i if star else 2 * i), (i, result)
    from targets import value_or_error

    flags = [i == 5 for i in range(3000)]
    with pytest.raises(ValueError, match="bad 5"):
        list(pool.map(value_or_error, range(3000), flags))  # Executor.map over two iterables: tuples


def map_recording_chunks(pool, fn, inputs) -> tuple[list, list[int]]:
    """``list(pool.map(fn, inputs))`` through a _ChunkedMap, and the size of each chunk it sent."""
    from lifepool._mapping import _ChunkedMap

    sizes: list[int] = []

    class Recording(_ChunkedMap):
        def submit_next(self):
            went = super().submit_next()
            if went:
                sizes.append(self.in_flight[-1][2])
            return went

    return list(Recording(pool, fn, fn.__name__, inputs, True, True, False, None).results()), sizes


def test_big_inputs_make_small_chunks(pool):
    # By time alone, quick inputs go CHUNK_SECONDS' worth to a chunk; the
    # byte bound (CHUNK_BYTES) keeps the chunk of big inputs small.
    _, sizes = map_recording_chunks(pool, abs, iter(range(20_000)))
    assert max(sizes) > 50  # quick small inputs: big chunks
    blobs = [bytes([i % 256]) * 200_000 for i in range(300)]
    results, sizes = map_recording_chunks(pool, len, iter(blobs))
    assert results == [200_000] * 300
    assert max(sizes) <= 21  # 4 MiB (CHUNK_BYTES) of 200 kB inputs


def test_inputs_and_results_in_shared_memory_count_toward_a_chunks_bytes(pool):
    # Buffers of 1 MiB or more travel in shared-memory segments, so the pipe
    # carries only their names; the byte bound must count what they hold, or a
    # chunk of quick big inputs would put hundreds of megabytes in /dev/shm.
    big = 1_500_000
    results, sizes = map_recording_chunks(pool, len, [bytes([i]) * big for i in range(24)])
    assert results == [big] * 24
    assert max(sizes) <= 2, sizes  # 4 MiB of 1.5 MB inputs
    results, sizes = map_recording_chunks(pool, bytes, [big] * 24)
    assert results == [bytes(big)] * 24
    assert max(sizes) <= 2, sizes  # 4 MiB of 1.5 MB results


@pytest.mark.parametrize("kind", [list, tuple, range])
def test_map_cuts_lists_tuples_and_ranges_by_slicing(pool, kind):
    # No element-by-element iteration in the parent; a slice of a range
    # travels as a range (a few bytes), not as its numbers.
    from lifepool._mapping import _ChunkedMap

    taken: list = []
    bodies: list[int] = []

    class Recording(_ChunkedMap):
        def take(self):
            inputs = super().take()
            taken.append(inputs)
            return inputs

        def submit_next(self):
            went = super().submit_next()
            if went:
                bodies.append(len(self.in_flight[-1][0].body))
            return went

    count = 20_000
    inputs = range(-count, 0) if kind is range else kind(range(-count, 0))
    results = list(Recording(pool, abs, "abs", inputs, True, True, False, None).results())
    assert results == list(range(count, 0, -1))
    assert all(type(part) is kind for part in taken)
    assert sum(map(len, taken)) == count and len(taken[-1]) == 0  # (the last take finds the end)
    assert max(map(len, taken)) > 50  # chunks, not single inputs
    if kind is range:
        assert max(bodies) < 300


def test_closing_a_chunked_map_stops_it_at_once(pool):
    results = pool.double.map(range(100_000))
    assert [next(results) for _ in range(10)] == [2 * i for i in range(10)]
    results.close()
    with pytest.raises(StopIteration):  # nothing more, not even the rest of the chunk in hand
        next(results)
    assert pool.double.call(4) == 8


def test_an_error_with_a_traceback_too_deep_to_send_keeps_its_type(pool):
    # tblib pickles a traceback frame by frame, and a few hundred frames are
    # too deep for pickle: the middle frames are left out, not the error.
    with pytest.raises(ValueError, match="at the bottom") as info:
        pool.fail_deep.call(600)
    text = "".join(traceback.format_exception(info.value))
    assert 'raise ValueError("at the bottom")' in text and "in fail_deep" in text
    # (Python 3.13 pickles this one whole; older ones need the frames cut, and say so.)
    cut = any("frames of this traceback were left out" in note for note in info.value.__notes__)
    downs = [frame for frame in traceback.extract_tb(info.value.__traceback__) if frame.name == "down"]
    assert len(downs) < 50 if cut else len(downs) == 601
    with pytest.raises(RecursionError):
        pool.recurse.call()
    assert pool.double.call(2) == 4
