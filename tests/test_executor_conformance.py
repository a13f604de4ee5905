"""CPython's generic executor tests, run against ``LifecyclePool`` for every start method.

Origin: the ``ExecutorTest`` (with the generic cases ``ProcessPoolExecutorTest``
adds), ``WaitTests``, ``AsCompletedTests`` and ``FutureTests`` families of
CPython's ``Lib/test/test_concurrent_futures/`` (``executor.py``,
``test_process_pool.py``, ``test_wait.py``, ``test_as_completed.py``,
``test_future.py``), Python 3.11 to 3.13. CPython is under the PSF License
(Python Software Foundation License Version 2). The cases are rewritten for
pytest here, not copied: each test is named after the CPython test it stands
for and checks the same behaviour, with the same inputs where they make
sense. What differs, and why:

- The executor is a ``LifecyclePool`` of 2 containers (CPython uses 5
  workers) with an empty target, made once per start method and shared by
  the tests that leave it as they found it (a pool of spawn or forkserver
  containers is slow to start on a loaded 2-core machine).
- Cross-process events are ``multiprocessing.Manager()`` events, as in
  CPython's process-pool tests; they need containers that share the
  parent's auth key (issue 14).
- Tests that slept so that a call "would still be running" wait on an event
  that is set only after the check instead; no test asserts a speed.
- ``max_workers`` is called ``containers`` here, and its message says so.
- ``test_traceback``: lifepool raises the container's exception with the
  container's frames in its own traceback (a note names the container),
  not with a ``_RemoteTraceback`` cause; the test checks that the remote
  source line is in the printed traceback either way.
- ``FutureTests`` run on lifepool's own Future (``_schedule.Call``, which has
  its own condition and callback runner), not on the standard library's.

Left out, because they encode the opposite of lifepool's design (one crashed
worker breaks the whole pool, ``BrokenProcessPool``; lifepool fails only the
calls the dead container ran and replaces it): ``test_killed_child``,
``test_broken_process_pool_traceback``,
``test_traceback_when_child_process_terminates_abruptly``. The crash
behaviour lifepool promises instead is tested in ``test_faults.py``. Also
left out are tests of ``ProcessPoolExecutor``'s internals or of options
lifepool does not have (``_processes``, ``max_tasks_per_child``,
``mp_context``, the Windows limit, ``sysconf``), and the thread-pool-only
``test_pending_calls_race`` is run here too since it costs nothing.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import re
import sys
import threading
import time
import traceback
import weakref
from concurrent import futures
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING

import pytest
from conftest import collected
from executor_targets import (
    Empty,
    EventfulGCObj,
    MyObject,
    capture,
    make_dummy_object,
    mul,
    raise_runtime_error,
    wait_and_raise,
    wait_then,
)

import lifepool
from lifepool._schedule import Call

START_METHODS = ("template", "exec", "loky", "spawn", "forkserver")
CONTAINERS = 2
BOUND = 60.0  # seconds: a bound on every wait, never reached unless something is broken


def _future(state=PENDING, exception=None, result=None, cls=futures.Future):
    future = cls()
    future._state = state
    future._exception = exception
    future._result = result
    return future


def _call(state=PENDING, exception=None, result=None):
    """A lifepool Future (``_schedule.Call``) in *state*."""
    return _future(state, exception, result, cls=lambda: Call(0, b"", "test"))


PENDING_FUTURE = _future(state=PENDING)
RUNNING_FUTURE = _future(state=RUNNING)
CANCELLED_FUTURE = _future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = _future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = _future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = _future(state=FINISHED, result=42)


@pytest.fixture(scope="module")
def manager():
    # spawn: a forked manager would copy a parent with threads (a DeprecationWarning on 3.12+).
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


@pytest.fixture(scope="module", params=START_METHODS)
def start_method(request):
    return request.param


@pytest.fixture(scope="module")
def shared_pool(start_method, manager):
    pool = lifepool.LifecyclePool(Empty, containers=CONTAINERS, start_method=start_method, name=f"conf-{start_method}")
    assert pool.submit(mul, 2, 3).result(timeout=BOUND) == 6  # (started)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def executor(shared_pool):
    yield shared_pool
    # What a test left running would hold up the next; each test waits for its calls.
    assert shared_pool.submit(mul, 1, 1).result(timeout=BOUND) == 1


@pytest.fixture
def create_event(manager):
    return manager.Event


# --- ExecutorTest (executor.py) and the generic part of ProcessPoolExecutorTest -------------


def test_submit(executor):
    future = executor.submit(pow, 2, 8)
    assert future.result(timeout=BOUND) == 256


def test_submit_keyword(executor):
    future = executor.submit(mul, 2, y=8)
    assert future.result(timeout=BOUND) == 16
    future = executor.submit(capture, 1, self=2, fn=3)
    assert future.result(timeout=BOUND) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor):
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(map(pow, range(10), range(10)))


def test_map_exception(executor):
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor, create_event):
    # CPython: map(time.sleep, [0, 0, 6], timeout=5). The third call waits for
    # an event set only after the TimeoutError, so it cannot finish in time.
    event = create_event()
    results = []
    try:
        with pytest.raises(futures.TimeoutError):
            for result in executor.map(wait_then, [0, 0, event], timeout=3):
                results.append(result)
    finally:
        event.set()
    assert results == [None, None]


def test_shutdown_race_issue12456(start_method):
    # A pool of its own: it is shut down with calls still queued.
    executor = lifepool.LifecyclePool(Empty, containers=CONTAINERS, start_method=start_method)
    executor.map(str, [2] * (CONTAINERS + 1))
    executor.shutdown()


def test_no_stale_references(executor):
    # Issue #16284: the executor must not keep a reference to what a call was given.
    my_object = MyObject()
    collected = threading.Event()
    my_object_callback = weakref.ref(my_object, lambda _: collected.set())  # noqa: F841 - kept alive for the callback
    executor.submit(my_object.my_method)  # the Future is dropped at once
    del my_object
    deadline = time.monotonic() + BOUND
    while not collected.wait(0.05) and time.monotonic() < deadline:
        gc.collect()
    assert collected.is_set(), "stale reference not collected within the bound"


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(number):
    with pytest.raises(ValueError, match="containers must be >= 1"):
        lifepool.LifecyclePool(Empty, containers=number)


def test_free_reference(executor):
    # Issue #14406: the results iterator must not keep a reference to the results.
    for obj in executor.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        # (bounded: the pool's thread that completed the call may not have returned yet; see conftest.collected)
        assert collected(wr)


def test_ressources_gced_in_workers(executor, manager):
    # The arguments of a call are collected in the container once it is done.
    obj = EventfulGCObj(manager)
    future = executor.submit(id, obj)
    future.result(timeout=BOUND)
    assert obj.event.wait(timeout=BOUND)
    # Collected here while the manager still runs (its __del__ talks to it).
    gc.collect()
    obj = None
    gc.collect()


def test_map_chunksize(executor):
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        list(executor.map(pow, range(40), range(40), chunksize=-1))


def test_traceback(executor, capsys):
    future = executor.submit(raise_runtime_error)
    with pytest.raises(Exception) as caught:
        future.result(timeout=BOUND)
    exc = caught.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    assert "raise RuntimeError(123)  # some comment" in "".join(traceback.format_exception(exc))
    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err


# --- WaitTests (test_wait.py) -------------------------------------------------------


def test_20369(executor):
    # bpo-20369: a future given twice is one future.
    future = executor.submit(mul, 1, 2)
    done, not_done = futures.wait([future, future], timeout=BOUND, return_when=futures.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_first_completed(executor, create_event):
    event = create_event()
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(event.wait)
    try:
        done, not_done = futures.wait(
            [CANCELLED_FUTURE, future1, future2], timeout=BOUND, return_when=futures.FIRST_COMPLETED
        )
        assert done == {future1}
        assert not_done == {CANCELLED_FUTURE, future2}
    finally:
        event.set()
    future2.result(timeout=BOUND)


def test_first_completed_some_already_completed(executor, create_event):
    event = create_event()
    future1 = executor.submit(event.wait)
    try:
        finished, pending = futures.wait(
            [CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, future1],
            timeout=BOUND,
            return_when=futures.FIRST_COMPLETED,
        )
        assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
        assert pending == {future1}
    finally:
        event.set()
    future1.result(timeout=BOUND)


def test_first_exception(executor, create_event):
    event1 = create_event()
    event2 = create_event()
    try:
        future1 = executor.submit(mul, 2, 21)
        future2 = executor.submit(wait_and_raise, event1)
        future3 = executor.submit(event2.wait)

        def wait_for_future1():  # future1 is done before future2 raises
            future1.result(timeout=BOUND)
            event1.set()

        thread = threading.Thread(target=wait_for_future1)
        thread.start()
        finished, pending = futures.wait(
            [future1, future2, future3], timeout=BOUND, return_when=futures.FIRST_EXCEPTION
        )
        assert finished == {future1, future2}
        assert pending == {future3}
        thread.join(BOUND)
        assert not thread.is_alive()
    finally:
        event1.set()
        event2.set()
    future3.result(timeout=BOUND)


def test_first_exception_some_already_complete(executor, create_event):
    event = create_event()
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(event.wait)
    try:
        finished, pending = futures.wait(
            [SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1, future2],
            timeout=BOUND,
            return_when=futures.FIRST_EXCEPTION,
        )
        assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1}
        assert pending == {CANCELLED_FUTURE, future2}
    finally:
        event.set()
    future2.result(timeout=BOUND)


def test_first_exception_one_already_failed(executor, create_event):
    event = create_event()
    future1 = executor.submit(event.wait)
    try:
        finished, pending = futures.wait(
            [EXCEPTION_FUTURE, future1], timeout=BOUND, return_when=futures.FIRST_EXCEPTION
        )
        assert finished == {EXCEPTION_FUTURE}
        assert pending == {future1}
    finally:
        event.set()
    future1.result(timeout=BOUND)


def test_all_completed(executor):
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    everything = {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, future1, future2}
    finished, pending = futures.wait(list(everything), timeout=BOUND, return_when=futures.ALL_COMPLETED)
    assert finished == everything
    assert pending == set()


def test_timeout(executor, create_event):
    event = create_event()
    future = executor.submit(event.wait)
    try:
        finished, pending = futures.wait(
            [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future],
            timeout=0.050,
            return_when=futures.ALL_COMPLETED,
        )
        assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
        assert pending == {future}
    finally:
        event.set()
    future.result(timeout=BOUND)


def test_pending_calls_race(executor, create_event):
    # bpo-14406 (ThreadPoolWaitTests in CPython): waiting on many futures while they complete.
    event = create_event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        fs = {executor.submit(event.wait) for _ in range(100)}
        event.set()
        _, not_done = futures.wait(fs, timeout=BOUND, return_when=futures.ALL_COMPLETED)
    finally:
        sys.setswitchinterval(interval)
        event.set()
    assert not not_done


# --- AsCompletedTests (test_as_completed.py) -------------------------------------------


def test_no_timeout(executor):
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    everything = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future1, future2}
    assert set(futures.as_completed(list(everything), timeout=BOUND)) == everything


@pytest.mark.parametrize("timeout", [0, 0.100])
def test_future_times_out(executor, create_event, timeout):
    already_completed = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    event = create_event()
    future = executor.submit(event.wait)  # CPython: time.sleep(1.0)
    completed = set()
    try:
        with pytest.raises(futures.TimeoutError):
            for f in futures.as_completed(already_completed | {future}, timeout):
                completed.add(f)
    finally:
        event.set()
    assert completed == already_completed
    future.result(timeout=BOUND)


def test_duplicate_futures(executor):
    # bpo-20367: duplicates give one answer; bpo-31641: any iterable.
    import itertools

    future1 = executor.submit(time.sleep, 0.2)
    completed = list(futures.as_completed(itertools.repeat(future1, 3), timeout=BOUND))
    assert len(completed) == 1


def test_free_reference_yielded_future(executor, create_event):
    # bpo-14406: as_completed keeps no reference to the futures it yielded;
    # here lifepool's futures, whose results the pool completes.
    event = create_event()
    futures_list = [executor.submit(mul, i, 2) for i in range(6)]
    futures.wait(futures_list, timeout=BOUND)
    futures_list.append(executor.submit(event.wait))
    futures_list.append(_future(state=CANCELLED_AND_NOTIFIED))
    futures_list.append(_future(state=FINISHED, result=42))
    try:
        with pytest.raises(futures.TimeoutError):
            for future in futures.as_completed(futures_list, timeout=0):
                futures_list.remove(future)
                wr = weakref.ref(future)
                del future
                gc.collect()
                assert wr() is None
        assert len(futures_list) == 1  # the one waiting for the event
    finally:
        event.set()
    for future in futures.as_completed(futures_list, timeout=BOUND):
        futures_list.remove(future)
        wr = weakref.ref(future)
        del future
        gc.collect()
        assert wr() is None


def test_correct_timeout_exception_msg(executor, create_event):
    # Pending and running futures of lifepool's own, where CPython makes them by hand.
    event = create_event()
    running = [executor.submit(event.wait) for _ in range(CONTAINERS)]
    queued = executor.submit(mul, 1, 1)
    try:
        with pytest.raises(futures.TimeoutError) as caught:
            fs = [CANCELLED_AND_NOTIFIED_FUTURE, running[0], queued, SUCCESSFUL_FUTURE]
            list(futures.as_completed(fs, timeout=0))
        assert str(caught.value) == "2 (of 4) futures unfinished"
    finally:
        event.set()
    for future in [*running, queued]:
        future.result(timeout=BOUND)


# --- FutureTests (test_future.py), on lifepool's Future -------------------------------------


def test_done_callback_with_result():
    seen = []
    f = _call()
    f.add_done_callback(lambda done: seen.append(done.result()))
    f.set_result(5)
    assert seen == [5]


def test_done_callback_with_exception():
    seen = []
    f = _call()
    f.add_done_callback(lambda done: seen.append(done.exception()))
    f.set_exception(Exception("test"))
    assert seen[0].args == ("test",)


def test_done_callback_with_cancel():
    seen = []
    f = _call()
    f.add_done_callback(lambda done: seen.append(done.cancelled()))
    assert f.cancel()
    assert seen == [True]


def test_done_callback_raises(caplog):
    called = []

    def raising_fn(_):
        called.append("raising")
        raise Exception("doh!")

    f = _call()
    f.add_done_callback(raising_fn)
    f.add_done_callback(lambda _: called.append("fn"))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.set_result(5)
    assert called == ["raising", "fn"]
    assert "Exception: doh!" in caplog.text


def test_done_callback_already_successful():
    seen = []
    f = _call()
    f.set_result(5)
    f.add_done_callback(lambda done: seen.append(done.result()))
    assert seen == [5]


def test_done_callback_already_failed():
    seen = []
    f = _call()
    f.set_exception(Exception("test"))
    f.add_done_callback(lambda done: seen.append(done.exception()))
    assert seen[0].args == ("test",)


def test_done_callback_already_cancelled():
    seen = []
    f = _call()
    assert f.cancel()
    f.add_done_callback(lambda done: seen.append(done.cancelled()))
    assert seen == [True]


def test_done_callback_raises_already_succeeded(caplog):
    def raising_fn(_):
        raise Exception("doh!")

    f = _call()
    f.set_result(5)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.add_done_callback(raising_fn)
    assert "exception calling callback for" in caplog.text
    assert "doh!" in caplog.text


def test_repr():
    shape = r"<\w+ at 0x[0-9a-f]+ state={}>"
    assert re.fullmatch(shape.format("pending"), repr(_call(state=PENDING)))
    assert re.fullmatch(shape.format("running"), repr(_call(state=RUNNING)))
    assert re.fullmatch(shape.format("cancelled"), repr(_call(state=CANCELLED)))
    assert re.fullmatch(shape.format("cancelled"), repr(_call(state=CANCELLED_AND_NOTIFIED)))
    assert re.fullmatch(shape.format("finished raised OSError"), repr(_call(state=FINISHED, exception=OSError())))
    assert re.fullmatch(shape.format("finished returned int"), repr(_call(state=FINISHED, result=42)))


def test_cancel():
    cases = [
        (_call(state=PENDING), True, CANCELLED),
        (_call(state=RUNNING), False, RUNNING),
        (_call(state=CANCELLED), True, CANCELLED),
        (_call(state=CANCELLED_AND_NOTIFIED), True, CANCELLED_AND_NOTIFIED),
        (_call(state=FINISHED, exception=OSError()), False, FINISHED),
        (_call(state=FINISHED, result=5), False, FINISHED),
    ]
    for future, cancelled, state in cases:
        assert future.cancel() is cancelled
        assert future._state == state


STATES = [  # state, kwargs, cancelled(), done(), running()
    (PENDING, {}, False, False, False),
    (RUNNING, {}, False, False, True),
    (CANCELLED, {}, True, True, False),
    (CANCELLED_AND_NOTIFIED, {}, True, True, False),
    (FINISHED, {"exception": OSError()}, False, True, False),
    (FINISHED, {"result": 42}, False, True, False),
]


def test_cancelled():
    for state, kwargs, cancelled, _, _ in STATES:
        assert _call(state=state, **kwargs).cancelled() is cancelled


def test_done():
    for state, kwargs, _, done, _ in STATES:
        assert _call(state=state, **kwargs).done() is done


def test_running():
    for state, kwargs, _, _, running in STATES:
        assert _call(state=state, **kwargs).running() is running


def test_result_with_timeout():
    with pytest.raises(futures.TimeoutError):
        _call(state=PENDING).result(timeout=0)
    with pytest.raises(futures.TimeoutError):
        _call(state=RUNNING).result(timeout=0)
    with pytest.raises(futures.CancelledError):
        _call(state=CANCELLED).result(timeout=0)
    with pytest.raises(futures.CancelledError):
        _call(state=CANCELLED_AND_NOTIFIED).result(timeout=0)
    with pytest.raises(OSError):
        _call(state=FINISHED, exception=OSError()).result(timeout=0)
    assert _call(state=FINISHED, result=42).result(timeout=0) == 42


def _from_thread(action):
    thread = threading.Thread(target=action)
    thread.start()
    return thread


def test_result_with_success():
    f1 = _call()
    thread = _from_thread(lambda: f1.set_result(42))  # CPython sleeps 1 s first; either order must work
    assert f1.result(timeout=BOUND) == 42
    thread.join(BOUND)


def test_result_with_cancel():
    f1 = _call()
    thread = _from_thread(f1.cancel)
    with pytest.raises(futures.CancelledError):
        f1.result(timeout=BOUND)
    thread.join(BOUND)


def test_exception_with_timeout():
    with pytest.raises(futures.TimeoutError):
        _call(state=PENDING).exception(timeout=0)
    with pytest.raises(futures.TimeoutError):
        _call(state=RUNNING).exception(timeout=0)
    with pytest.raises(futures.CancelledError):
        _call(state=CANCELLED).exception(timeout=0)
    with pytest.raises(futures.CancelledError):
        _call(state=CANCELLED_AND_NOTIFIED).exception(timeout=0)
    assert isinstance(_call(state=FINISHED, exception=OSError()).exception(timeout=0), OSError)
    assert _call(state=FINISHED, result=42).exception(timeout=0) is None


def test_exception_with_success():
    f1 = _call()

    def notification():
        with f1._condition:
            f1._state = FINISHED
            f1._exception = OSError()
            f1._condition.notify_all()

    thread = _from_thread(notification)
    assert isinstance(f1.exception(timeout=BOUND), OSError)
    thread.join(BOUND)


def test_multiple_set_result():
    f = _call()
    f.set_result(1)
    with pytest.raises(futures.InvalidStateError, match=r"FINISHED: <\w+ at 0x[0-9a-f]+ state=finished returned int>"):
        f.set_result(2)
    assert f.done()
    assert f.result() == 1


def test_multiple_set_exception():
    f = _call()
    e = ValueError()
    f.set_exception(e)
    with pytest.raises(
        futures.InvalidStateError, match=r"FINISHED: <\w+ at 0x[0-9a-f]+ state=finished raised ValueError>"
    ):
        f.set_exception(Exception())
    assert f.exception() is e
