"""A container's call server: makes the instance, runs its hooks, serves the parent's calls (see ``_worker``)."""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import pickle
import threading
import time

from . import _context, _hooks, _wire
from ._context import Container, _block_interrupts_in_this_thread, _state
from ._exceptions import ParentExitedError, add_note
from ._kinds import _CHUNK_RUN, CHUNK_FLUSH_SECONDS, STREAM_WINDOW, _Batcher, _Credit, _lost_stop_iteration, _segment
from ._loop import _Escaped, _loop_outcome, _LoopThread

TYPE_CHECKING = False
if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable
    from typing import Any


def _apply_environment(environment: dict[str, Any] | None, index: int) -> None:
    """The pool's ``env=``/``cwd=``, before the target is unpickled (its module may read them on import)."""
    if environment is None:
        return
    if environment["cwd"] is not None:
        os.chdir(environment["cwd"])
    if environment["env"] is not None:
        for key, value in environment["env"][index].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Worker:
    def __init__(self, conn: Any, index: int, options: dict[str, Any]) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.reader = _wire.Reader(self.fd)
        self.index = index
        self.options = options
        self.instance: Any = None
        self.info: _hooks.ClassInfo  # (set by enter(), before any call is served)
        self._loop: _LoopThread | None = None
        self._send_lock = threading.Lock()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: dict[int, concurrent.futures.Future[Any]] = {}  # calls on the loop or threads
        self._credits: dict[int, _Credit] = {}  # running streams
        self._stash: collections.deque[bytes | bytearray] = collections.deque()  # frames read ahead (run_user)
        self._revoked: set[int] = set()  # calls whose INTERRUPT frame was read ahead of their CALL
        self._skipped: set[int] = set()  # calls answered "interrupted" without being run
        self._stashed_calls: set[int] = set()  # CALL frames read ahead into the stash: not started
        self._returned: set[int] = set()  # calls given back (REVOKE) before they started: skipped
        self._to_return: list[int] = []  # given back, the answer not sent yet
        self._batchers: dict[str, _Batcher] = {}
        self._how: dict[str, str] = {}  # method name -> how it runs (see how_to_run), found once
        self.flush_output: Callable[[], None] | None = None  # forward_output: see send

    # -- plumbing ---------------------------------------------------------
    @property
    def loop(self) -> _LoopThread:
        if self._loop is None:
            self._loop = _LoopThread()
        return self._loop

    def send(self, data: bytes) -> None:
        if self.flush_output is not None:
            # What was printed goes into the output pipe before the frame into
            # the socket: the parent drains the pipe when the frame arrives.
            self.flush_output()
        with self._send_lock:
            _wire.send_bytes(self.fd, data)

    def run_user(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        call_id: int | None = None,
        is_async: bool | None = None,
    ) -> Any:
        """Call user code on the main thread, where the parent may interrupt it.

        The parent sends an INTERRUPT frame, then the signal. A signal that came
        before this call's user code started (the parent interrupted a call it
        had only just sent) was noted as missed: then the frames already
        waiting tell whether it was meant for this call (*call_id*; None for
        an enter hook, which only the stop of the whole pool interrupts) or for
        one that is over.
        """
        kwargs = kwargs or {}
        state = _state
        state.call_id = call_id
        state.in_user_code = True
        try:
            if state.missed:
                state.missed = False
                if call_id is None or self.signalled(call_id):
                    raise KeyboardInterrupt("interrupted by the lifepool parent")
            if is_async is None:
                is_async = _hooks.is_async(func)
            if is_async:
                return self.loop.run(func(*args, **kwargs))
            return func(*args, **kwargs)
        finally:
            state.in_user_code = False

    def signalled(self, call_id: int) -> bool:
        """After a signal, in user code: whether it interrupts *call_id*; calls asked back are given back.

        Signals that come meanwhile (they may nest in a handler) are not lost:
        they make this read the pipe again.
        """
        state = _state
        state.reading = True
        try:
            while True:
                state.again = False
                if self._interrupt_waiting(call_id):
                    if state.again:  # a later signal may be for a call after this one: check at its start
                        state.missed = True
                    return True
                self.send_returns(blocking=False)  # calls given back go to an idle container now
                if not state.again:
                    return False
        finally:
            state.reading = False

    def _interrupt_waiting(self, call_id: int) -> bool:
        """Read the frames already waiting; whether one interrupts *call_id* (others are kept)."""
        found = False
        while self.reader.ready() or self.conn.poll(0):
            try:
                data = self.reader.recv()
            except (EOFError, OSError):
                break  # the parent is gone: serve() finds out at its next read
            found = self._read_ahead(data, call_id) or found
        return found

    def _read_ahead(self, data: bytes | bytearray, call_id: int) -> bool:
        """Note a frame read ahead; whether it interrupts *call_id* (others are stashed for serve())."""
        tag, frame_call, _, _ = _wire.unframe(data)
        if tag == _wire.INTERRUPT and frame_call == call_id:
            return True
        if tag == _wire.REVOKE:
            if frame_call in self._stashed_calls:  # read ahead, so not started: give it back
                self._stashed_calls.discard(frame_call)
                self._returned.add(frame_call)
                self._to_return.append(frame_call)
            return False
        if tag == _wire.INTERRUPT:
            self._revoked.add(frame_call)  # (a call sent ahead, or one that is over)
        elif tag == _wire.CALL:
            self._stashed_calls.add(frame_call)
        self._stash.append(data)  # serve() handles it next, in order
        return False

    def send_returns(self, *, blocking: bool) -> None:
        """Answer RETURNED for the calls given back. From the signal handler (not *blocking*),
        only if the send lock is free: the main thread may hold it, interrupted mid-send."""
        if not self._to_return or not self._send_lock.acquire(blocking=blocking):
            return
        try:
            frames = [_wire.frame(_wire.RETURNED, call_id) for call_id in self._to_return]
            self._to_return.clear()
            _wire.send_many(self.fd, frames)
        except OSError:
            pass  # the parent is gone: serve() finds out at its next read
        finally:
            self._send_lock.release()

    # -- lifecycle --------------------------------------------------------
    def enter(self, target_blob: bytes | None, snapshot: Any = None) -> None:
        """Make the instance (or take the template's *snapshot* of it), then run its enter hooks.

        Order: instantiate, ``@enter(snap=True)`` hooks, ``__enter__``, the other
        ``@enter()`` hooks. With a snapshot the first two ran in the template.
        """
        _apply_environment(self.options.get("environment"), self.index)
        if snapshot is not None:
            if snapshot.error is not None:
                raise snapshot.error
            target = snapshot.target
        else:
            assert target_blob is not None  # (only a template's fork comes without one, and with a snapshot)
            _state.loading_target = True
            try:
                target = _wire.loads(target_blob)
            finally:
                _state.loading_target = False
        cls = target if isinstance(target, type) else type(target)
        self.info = _hooks.inspect_class(cls)
        if snapshot is not None:
            self.instance = snapshot.instance
        else:
            self.instance = self.run_user(cls) if isinstance(target, type) else target
        _context.set_current(Container(self.index, self.options["pool_name"], self.instance))
        self.send(_wire.frame(_wire.ENTERING, os.getpid()))
        snap = self.info.snap_hooks
        if snapshot is None:
            for name in snap:
                self.run_user(getattr(self.instance, name))
        if not self.info.dunder_hooks:
            pass  # App mode (lifepool.App): only decorated hooks run, as in today's Modal
        elif _hooks.is_async(getattr(cls, "__aenter__", _no_hook)):
            self.run_user(self.instance.__aenter__)
        elif hasattr(cls, "__enter__"):
            self.run_user(self.instance.__enter__)
        for name in self.info.enter_hooks[len(snap) :]:
            self.run_user(getattr(self.instance, name))

    def exit(self, exc: BaseException | None) -> list[bytes]:
        """Run every exit hook once; return the blobs of those that raised."""
        errors: list[bytes] = []
        cls = type(self.instance)
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)
        hooks: list[Callable[[], Any]] = [getattr(self.instance, n) for n in self.info.exit_hooks]
        if not self.info.dunder_hooks:
            pass
        elif _hooks.is_async(getattr(cls, "__aexit__", _no_hook)):
            hooks.append(lambda: self.instance.__aexit__(*exc_info))
        elif hasattr(cls, "__exit__"):
            hooks.append(lambda: self.instance.__exit__(*exc_info))
        for hook in hooks:
            try:
                result = hook()
                if inspect.iscoroutine(result):
                    self.loop.run(result)
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                errors.append(_wire.exception_blob(_trimmed(error)))
        return errors

    # -- calls ------------------------------------------------------------
    @property
    def threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for sync calls (max_inputs > 1) and for streams, made on first use."""
        if self._threads is None:
            import concurrent.futures

            self._threads = concurrent.futures.ThreadPoolExecutor(
                self.options["max_inputs"],
                thread_name_prefix="lifepool-call",
                initializer=_block_interrupts_in_this_thread,
            )
        return self._threads

    def drop_shipped(self, body: memoryview) -> None:
        """A call not run: the segments shipped with it (this container's own copies, see _ship) go.

        (The parent's own segments stay: it unlinks them when the call is over.)
        """
        if self.options.get("shm_dir"):
            from . import _ship, _shmdir

            for name in _ship.names_in(bytes(body)):  # (a map's chunk nests a message per input)
                _shmdir._unlink(name)

    def resolve(self, body: memoryview) -> tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        # The parent may send this body again (a retry after a crash): keep its
        # shared-memory segments; the parent unlinks them when the call is over.
        # (Shipped segments are this container's own copy: see _ship.)
        if _wire.has_segments(body) and not self.options.get("shm_dir"):
            what, args, kwargs = _wire.loads_keeping(body)
        else:
            what, args, kwargs = _wire.loads(body)
        func = getattr(self.instance, what) if what.__class__ is str else what
        return what, func, args, kwargs

    def how_to_run(self, what: Any, func: Callable[..., Any]) -> str:
        """ "chunk", "batched", "stream", "async" or "sync"; found once per method name."""
        if what.__class__ is str:
            how = self._how.get(what)
            if how is None:
                how = self._how[what] = self._classify(what, func)
            return how
        if isinstance(what, _wire.Chunk):
            return "chunk"
        return self._classify(None, func)

    def _classify(self, name: str | None, func: Callable[..., Any]) -> str:
        if name is not None and name in self.info.batched:
            return "batched"
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            return "stream"
        return "async" if _hooks.is_async(func) else "sync"

    def result_frame(self, call_id: int, ok: bool, value: Any) -> bytes:
        if ok:
            try:
                return _wire.frame(_wire.RESULT, call_id, 1, _wire.dumps(value))
            except BaseException as error:  # noqa: BLE001 - fails this call only
                add_note(
                    error,
                    f"lifepool: the result ({type(value).__qualname__}) could not be pickled "
                    "to send it back to the caller",
                )
                value = error
        return _wire.frame(_wire.RESULT, call_id, 0, _wire.exception_blob(_trimmed(value)))

    def send_result(self, call_id: int, ok: bool, value: Any) -> None:
        """From any thread; a vanished parent is noticed by the main thread's next read."""
        try:
            self.send(self.result_frame(call_id, ok, value))
        except OSError:
            pass

    def run_inline(
        self, call_id: int, func: Callable[..., Any], args: Any, kwargs: Any, is_async: bool | None = None
    ) -> BaseException | None:
        """Run one call on the main thread; returns ParentExitedError if that ended it."""
        try:
            value, ok = self.run_user(func, args, kwargs, call_id, is_async), True
        except BaseException as error:  # noqa: BLE001 - everything goes back to the caller
            value, ok = error, False
        if not ok and isinstance(value, ParentExitedError):
            return value
        try:
            self.send(self.result_frame(call_id, ok, value))
        except OSError:
            return ParentExitedError("the parent process is gone (pipe closed)")
        return None

    def start_concurrent(self, call_id: int, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        """Start a call on the loop (async) or a thread (sync); its result is sent when done."""
        try:
            if _hooks.is_async(func):
                future = self.loop.submit(func(*args, **kwargs))
            else:
                future = self.threads.submit(func, *args, **kwargs)
        except BaseException as error:  # noqa: BLE001
            self.send_result(call_id, False, error)
            return
        self._tasks[call_id] = future
        future.add_done_callback(lambda f: self._finish_concurrent(call_id, f))

    def _finish_concurrent(self, call_id: int, future: concurrent.futures.Future[Any]) -> None:
        self._tasks.pop(call_id, None)
        value: Any
        if future.cancelled():
            ok, value = False, KeyboardInterrupt("interrupted by the lifepool parent (task cancelled)")
        elif (error := future.exception()) is not None:
            ok, value = False, error.error if isinstance(error, _Escaped) else error
        else:
            ok, value = True, future.result()
        self.send_result(call_id, ok, value)

    def interrupt(self, call_id: int) -> None:
        credit = self._credits.get(call_id)
        if credit is not None:
            credit.close()  # a stream: it stops at its next item
        future = self._tasks.get(call_id)
        if future is not None:
            # An asyncio task is cancelled at its current await; a sync call on a
            # worker thread cannot be interrupted (Python has no safe way to raise
            # in another thread), so cancel() is a no-op there and the parent's
            # grace period and SIGKILL are the backstop.
            future.cancel()
        elif credit is None:
            # Not running here: finished already (the parent drops this answer),
            # or never received (a Ctrl-C cut the parent's send short): either
            # way the parent must hear that it is over.
            self.send_result(call_id, False, KeyboardInterrupt("interrupted before it ran in this container"))

    def run_stream(self, call_id: int, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        """Send a generator's items as they come, never more than the consumer granted."""
        credit = self._credits[call_id] = _Credit(STREAM_WINDOW)
        try:
            if inspect.isasyncgenfunction(func):
                agen = func(*args, **kwargs)
                loop = self.loop

                def next_item() -> Any:
                    return _loop_outcome(loop.submit(agen.__anext__()))

                def close() -> None:
                    _loop_outcome(loop.submit(agen.aclose()))

                end: type[BaseException] = StopAsyncIteration
            else:
                gen = func(*args, **kwargs)
                next_item, close, end = gen.__next__, gen.close, StopIteration
            while True:
                if not credit.take():
                    close()  # the consumer went away: run the generator's finally blocks
                    raise KeyboardInterrupt("the stream's consumer closed it")
                try:
                    item = next_item()
                except end:
                    break
                self.send(_wire.frame(_wire.ITEM, call_id, 0, _wire.dumps(item)))
        except BaseException as error:  # noqa: BLE001 - arrives after the items before it
            self.send_result(call_id, False, error)
        else:
            self.send_result(call_id, True, None)
        finally:
            del self._credits[call_id]

    def run_chunk(self, call_id: int, chunk: _wire.Chunk) -> tuple[int, float, tuple[bytes, dict[int, bytes]]]:
        """Run a chunk of map inputs in order; every input gets its own outcome.

        Outcomes travel in segments, ``(dumps(values), {position: exception
        blob})``: the values of a segment are pickled together (one pickle per
        segment, not per input), and an input that raised has its error at its
        position. Finished segments are sent ahead (ITEM frames) every
        CHUNK_FLUSH_SECONDS, so that if this container dies, the inputs it
        finished keep their results. An interrupt ends the whole chunk.
        Returns (inputs run, seconds, the last segment).
        """
        func = getattr(self.instance, chunk.what) if isinstance(chunk.what, str) else chunk.what
        apply = itertools.starmap if chunk.star else map
        values: list[Any] = []
        errors: dict[int, bytes] = {}
        start = last = time.monotonic()
        inputs = chunk.inputs
        total = len(inputs)
        for begin in range(0, total, _CHUNK_RUN):  # the clock is read once per run of inputs
            end = min(begin + _CHUNK_RUN, total)
            at = begin
            while at < end:
                # A run goes at C speed; list.extend keeps what was appended
                # before an input raised, which tells which input it was.
                before = len(values)
                try:
                    values.extend(apply(func, inputs[at:end]))
                    ran = len(values) - before
                    if ran == end - at:
                        at = end
                    else:  # an input raised StopIteration, which ends the built-in map quietly
                        at += ran + 1
                        errors[len(values)] = _wire.exception_blob(_lost_stop_iteration())
                        values.append(None)
                except KeyboardInterrupt:
                    raise
                except BaseException as error:  # noqa: BLE001 - this input's own error
                    at += len(values) - before + 1
                    errors[len(values)] = _wire.exception_blob(_trimmed(error))
                    values.append(None)
            now = time.monotonic()
            if now - last >= CHUNK_FLUSH_SECONDS and begin + _CHUNK_RUN < total:
                segment = pickle.dumps(_segment(values, errors), _wire.PROTOCOL)
                self.send(_wire.frame(_wire.ITEM, call_id, 0, segment))
                values, errors, last = [], {}, now
        return total, time.monotonic() - start, _segment(values, errors)

    def batcher(self, name: str) -> _Batcher:
        batcher = self._batchers.get(name)
        if batcher is None:
            size, wait_ms = self.info.batched[name]
            batcher = self._batchers[name] = _Batcher(self, name, getattr(self.instance, name), size, wait_ms)
        return batcher

    def take_call(self, call_id: int, body: Any, concurrent_mode: bool) -> BaseException | None:
        """Run (or start) a CALL; returns ParentExitedError if that ended it (see :meth:`serve`)."""
        self._stashed_calls.discard(call_id)
        if call_id in self._returned:  # given back to the parent unstarted
            self._returned.discard(call_id)
            self.drop_shipped(body)
            return None
        if call_id in self._revoked:  # interrupted while it waited in the pipe
            self._revoked.discard(call_id)
            self.drop_shipped(body)
            self._skipped.add(call_id)
            self.send_result(call_id, False, KeyboardInterrupt("interrupted before it ran in this container"))
            return None
        try:
            what, func, args, kwargs = self.resolve(body)
            how = self.how_to_run(what, func)
        except BaseException as error:  # noqa: BLE001
            self.send_result(call_id, False, error)
            return None
        if how == "sync" and not concurrent_mode:
            gone = self.run_inline(call_id, func, args, kwargs, False)
        elif how == "chunk":
            if concurrent_mode:
                self.start_concurrent(call_id, self.run_chunk, (call_id, what), {})
                return None
            gone = self.run_inline(call_id, self.run_chunk, (call_id, what), {}, False)
        elif how == "batched":
            self.batcher(what).add(call_id, args, kwargs)
            return None
        elif how == "stream":
            self.threads.submit(self.run_stream, call_id, func, args, kwargs)
            return None
        elif concurrent_mode:
            self.start_concurrent(call_id, func, args, kwargs)
            return None
        else:
            gone = self.run_inline(call_id, func, args, kwargs, True)
        return gone

    def serve(self) -> BaseException | None:
        """Serve calls until EXIT or the parent vanishes; return what the exit hooks get."""
        concurrent_mode = self.options["max_inputs"] > 1
        while True:
            try:
                data = self._stash.popleft() if self._stash else self.reader.recv()
            except (EOFError, OSError):
                return _raised(ParentExitedError("the parent process is gone (pipe closed)"))
            if self._to_return:
                self.send_returns(blocking=True)
            tag, call_id, flag, body = _wire.unframe(data)
            if tag == _wire.CALL:
                # (in a method of its own: no local of this loop keeps a call's
                # arguments alive until the next message comes)
                gone = self.take_call(call_id, body, concurrent_mode)
                if gone is not None:
                    return gone
            elif tag == _wire.CREDIT:
                credit = self._credits.get(call_id)
                if credit is not None:
                    credit.give(_wire.COUNT.unpack(body)[0])
            elif tag == _wire.INTERRUPT:
                self._revoked.discard(call_id)
                if call_id in self._skipped:
                    self._skipped.discard(call_id)  # answered already
                else:
                    self.interrupt(call_id)
            elif tag == _wire.EXIT:
                return _wire.load_exception(bytes(body)) if flag else None


def _raised(exc: BaseException) -> BaseException:
    """Give *exc* a traceback of its own, as if raised here."""
    try:
        raise exc
    except BaseException as error:  # noqa: BLE001
        return error


# Modules whose frames above the user's code in a container's traceback are
# only the way there: lifepool's, and those an async call goes through.
_PLUMBING = ("lifepool.", "concurrent.futures.", "asyncio.")


def _trimmed(exc: BaseException) -> BaseException:
    """Drop the plumbing's frames from the top of *exc*'s traceback (see _PLUMBING)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith(_PLUMBING):
        if tb.tb_next is None:
            break
        tb = tb.tb_next
    return exc.with_traceback(tb)


def _no_hook() -> None:
    """Stands for a hook a class does not define (not a coroutine function)."""
