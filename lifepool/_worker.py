"""The container program: what runs inside each worker process.

    parent ──pipe──► main thread: recv ─► run call ─► send result ─► recv ...
                        │   (max_inputs == 1: the call runs right here, on the
                        │    main thread, so an interrupt can raise inside it)
                        │   (max_inputs > 1: calls go to N threads / the loop,
                        │    the main thread keeps reading)
                        ├── loop thread: the container's one asyncio event loop,
                        │   made on first use and kept for the container's life
                        └── watcher thread: notices the parent vanish (pipe hang-up,
                            or getppid() change as a fallback) and interrupts main

Signal policy, set before anything else runs:

* SIGINT and SIGTERM are ignored. A terminal Ctrl-C reaches the whole
  process group, and so does the SIGTERM of ``timeout`` or of systemd
  stopping a service; what a container does about them is the parent's
  decision: the parent sends an interrupt (or an exit) when it wants one, and
  a container whose parent is gone notices its pipe close. This is also why
  containers never print a KeyboardInterrupt traceback of their own. (SIGKILL
  still ends a container at once.)
* SIGUSR1 is the parent's "interrupt the running call" signal. Its handler
  raises KeyboardInterrupt only while user code of an inline call or an enter
  hook runs on the main thread; anywhere else it does nothing, so a late signal
  cannot hit the wrong call (the parent never sends the next call before it
  has seen the interrupted one finish).
* Other threads block SIGUSR1 so that it always lands on the main thread and
  breaks it out of a blocking system call.

Lifecycle: unpickle the target (instantiate it when it is a class), run the
enter hooks, serve calls until the parent says EXIT (or vanishes), run the
exit hooks exactly once, report, and leave with ``os._exit`` so that stray
non-daemon threads in user code cannot keep a finished container alive.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

from . import _hooks, _shm, _wire
from ._exceptions import ParentExitedError, add_note

TYPE_CHECKING = False
if TYPE_CHECKING:
    import concurrent.futures
    import queue
    from typing import Any

# asyncio, concurrent.futures, queue (and typing) are imported where they are
# first needed, if ever: a container that runs only sync code with
# max_inputs=1 never pays for them, and each container's start-up is on the
# path to the pool's first result.

INTERRUPT_SIGNAL = signal.SIGUSR1
_WATCH_INTERVAL = 1.0  # seconds between getppid() checks, the fallback parent watch


class Container:
    """The container a piece of code runs in: see :func:`lifepool.current_container`."""

    def __init__(self, index: int, pool_name: str, instance: Any) -> None:
        self.index = index  #: position of this container in its pool (replacements reuse it)
        self.pid = os.getpid()  #: this container's process id
        self.pool_name = pool_name  #: the pool's ``name``
        self.instance = instance  #: the entered instance of the target class

    def __repr__(self) -> str:
        return f"<lifepool container {self.index} of {self.pool_name!r} (pid {self.pid})>"


_current: Container | None = None


def current_container() -> Container | None:
    """The container this code runs in, or ``None`` outside any container."""
    return _current


class _State:
    """What the signal handler and the watcher thread need to see (main thread writes)."""

    in_user_code = False  # main thread runs an inline call or an enter hook
    call_id: int | None = None  # the inline call it runs (None: an enter hook)
    parent_gone = False
    orphan_kill_armed = False  # see _leave_when_orphaned
    loading_target = False  # the target is being unpickled: its module may be imported (see importing_target)
    missed = False  # an interrupt signal came while no user code ran (see run_user)
    reading = False  # signalled() is reading the pipe (a nested handler must not read too)
    again = False  # a signal came while it read: read again before returning
    worker: _Worker | None = None


_state = _State()


def current_call_id() -> int | None:
    """The pool's id of the call on this container's main thread (None elsewhere: threads, the loop, batches)."""
    return _state.call_id if _state.in_user_code else None


def importing_target() -> bool:
    """Whether this is a container importing its target's module (where making a pool is refused)."""
    return _state.loading_target


def _ignore_signal(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM in a container: nothing to do (see main)."""


def share_authkey(key: bytes | None) -> None:
    """Take the parent's multiprocessing auth key as this process's.

    A proxy of the parent's ``multiprocessing.Manager()`` (an ``Event``, a
    ``Queue``, a ``dict``) passed as an argument connects to the manager with
    ``current_process().authkey``: with a key of its own, the container's
    connection was refused ("digest sent was rejected"), where the standard
    library's pools work. The key comes in the container's start payload
    (never argv nor the environment, which other users can read).

    A container does not import multiprocessing at start (its package pulls
    in ``socket`` and ``selectors``: about 4 ms of a container's start, where
    ``multiprocessing.process`` alone is 0.3 ms). So unless it is already
    imported (the spawn, forkserver and loky start methods import it), the
    key is set the moment ``multiprocessing.process`` is, by a finder at the
    front of ``sys.meta_path`` that lets go of it once done: before anything
    can read the key, even a proxy unpickled among a call's arguments (which
    is what imports multiprocessing then).
    """
    if key is None:
        return

    def set_key(process: Any) -> None:
        process.current_process().authkey = key

    on_import("multiprocessing.process", set_key)


def on_import(name: str, callback: Callable[[Any], None]) -> None:
    """Call *callback(module)* once module *name* has run (now, if it is already imported).

    A finder at the front of ``sys.meta_path`` finds nothing itself, but
    wraps the module's ``exec_module``, and lets go of itself once used.
    (Also how a container's ``logging`` gets its forwarding handler only if
    user code imports ``logging``: see ``_output.redirect``.)
    """
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    else:
        # (a new list, never one changed in place: another thread may be iterating it in an import)
        sys.meta_path = [_OnImport(name, callback), *sys.meta_path]


class _OnImport:
    """The finder of :func:`on_import`: finds nothing, but calls back once its module ran."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self._name = name
        self._callback = callback

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self._name:
            return None
        sys.meta_path = [finder for finder in sys.meta_path if finder is not self]
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or isinstance(spec.loader, type):  # (shared by many modules: never for CPython's)
            return spec
        run = spec.loader.exec_module
        callback = self._callback

        def exec_module(module: Any) -> None:
            run(module)
            callback(module)

        spec.loader.exec_module = exec_module  # (this spec's own loader instance)
        return spec


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


def _signals_after_fork() -> None:
    """A process forked in a container (multiprocessing's "fork", ``os.fork``) starts with Python's defaults."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(INTERRUPT_SIGNAL, signal.SIG_DFL)


def _on_interrupt_signal(signum: int, frame: object) -> None:
    state = _state
    if state.reading:
        state.again = True  # a handler (or run_user) below is reading: it looks again
        return
    if not state.in_user_code:
        state.missed = True
        return
    if state.parent_gone:
        state.in_user_code = False
        raise ParentExitedError("the parent process exited without shutting the pool down")
    # The parent writes the INTERRUPT (or REVOKE) frame before it signals:
    # read ahead to see which call the signal is for. It may be one sent
    # ahead, waiting in the pipe behind this one: that one is skipped when
    # its turn comes, or given back to the parent at once.
    if state.call_id is not None and state.worker is not None and not state.worker.signalled(state.call_id):
        return
    state.in_user_code = False  # one interrupt per call
    raise KeyboardInterrupt("interrupted by the lifepool parent")


def _block_interrupts_in_this_thread() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL, signal.SIGINT})


class _LoopThread:
    """The container's single event loop, running in its own thread for the container's life."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lifepool-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        _block_interrupts_in_this_thread()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run *coro* on the loop; read the outcome with :func:`_loop_outcome` (see _Escaped)."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(_carrying(coro), self.loop)

    def run(self, coro: Any) -> Any:
        """Run *coro* on the loop and wait; an interrupt cancels the task and waits it out."""
        done = threading.Event()
        future = self.submit(_signal_when_done(coro, done))
        try:
            done.wait()
        except KeyboardInterrupt:
            future.cancel()
            done.wait()  # let the task's finally blocks run; the grace period bounds this
            raise
        return _loop_outcome(future)


class _Escaped(Exception):
    """A KeyboardInterrupt, SystemExit or CancelledError that user code raised on the loop, carried off it.

    asyncio lets the first two end ``run_forever`` itself rather than the
    task: the container's loop would stop for good, with the call never
    answered. A CancelledError would read as the task cancelled, that is as
    the parent's interrupt.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


async def _carrying(coro: Any) -> Any:
    import asyncio

    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as error:
        raise _Escaped(error) from None
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # (cancelled: the parent's interrupt)
        raise _Escaped(error) from None  # raised by the user's code: an error like any other


def _loop_outcome(future: concurrent.futures.Future[Any]) -> Any:
    """The result of a coroutine run by _LoopThread.submit; what it raised is raised as itself."""
    try:
        return future.result()
    except _Escaped as escaped:
        error = escaped.error
    raise error


async def _signal_when_done(coro: Any, done: threading.Event) -> Any:
    try:
        return await coro
    finally:
        done.set()


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
        global _current
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
        _current = Container(self.index, self.options["pool_name"], self.instance)
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

    def resolve(self, body: memoryview) -> tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        # The parent may send this body again (a retry after a crash): keep its
        # shared-memory segments; the parent unlinks them when the call is over.
        if _wire.has_segments(body):
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
            return None
        if call_id in self._revoked:  # interrupted while it waited in the pipe
            self._revoked.discard(call_id)
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


STREAM_WINDOW = 16  # items a stream may send ahead of its consumer (see _handles.stream)
CHUNK_FLUSH_SECONDS = 0.005  # how often a running map chunk sends the outcomes it has
_CHUNK_RUN = 256  # inputs a chunk runs between two looks at the clock


class _Credit:
    """How many more items a stream may send; closing it stops the stream."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def give(self, count: int) -> None:
        with self._cond:
            self._count += count
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def take(self) -> bool:
        """Wait for one credit; False once the consumer closed the stream."""
        with self._cond:
            while self._count == 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._count -= 1
            return True


class _Batcher:
    """Groups the waiting inputs of one @batched method and calls it with lists.

    Runs in its own thread: it takes the first waiting input, then keeps
    taking until the batch is full or ``wait_ms`` has passed since that first
    input, calls the method once with one list per parameter, and sends each
    input's output back to its caller.
    """

    def __init__(self, worker: _Worker, name: str, func: Callable[..., Any], size: int, wait_ms: float) -> None:
        self.worker = worker
        self.name = name
        self.func = func
        self.size = size
        self.wait = wait_ms / 1000
        self.signature = inspect.signature(func)
        import queue

        self.inputs: queue.SimpleQueue[tuple[int, tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"lifepool-batch-{name}", daemon=True).start()

    def add(self, call_id: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.inputs.put((call_id, args, kwargs))

    def _run(self) -> None:
        import queue

        _block_interrupts_in_this_thread()
        while True:
            batch = [self.inputs.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.size:
                try:
                    batch.append(self.inputs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._call(batch)

    def _call(self, batch: list[tuple[int, tuple[Any, ...], dict[str, Any]]]) -> None:
        ids: list[int] = []
        columns: dict[str, list[Any]] = {name: [] for name in self.signature.parameters}
        for call_id, args, kwargs in batch:
            try:
                bound = self.signature.bind(*args, **kwargs)
                bound.apply_defaults()
            except TypeError as error:
                self.worker.send_result(call_id, False, error)
                continue
            ids.append(call_id)
            for name, value in bound.arguments.items():
                columns[name].append(value)
        if not ids:
            return
        try:
            outputs = self.func(**columns)
            if inspect.iscoroutine(outputs):
                outputs = _loop_outcome(self.worker.loop.submit(outputs))
            outputs = list(outputs)
            if len(outputs) != len(ids):
                raise ValueError(
                    f"@batched method {self.name} returned {len(outputs)} outputs for a batch of "
                    f"{len(ids)} inputs; it must return one output per input, in order"
                )
        except BaseException as error:  # noqa: BLE001 - every input of the batch fails with it
            for call_id in ids:
                self.worker.send_result(call_id, False, error)
            return
        for call_id, output in zip(ids, outputs, strict=True):
            self.worker.send_result(call_id, True, output)


def _lost_stop_iteration() -> StopIteration:
    """What a map input that raised StopIteration gets: the built-in map swallowed the original."""
    stop = StopIteration()
    add_note(
        stop,
        "lifepool: raised by this input of a map; map stops quietly at a StopIteration, "
        "so its value and traceback were lost (.call gives them)",
    )
    return stop


def _segment(values: list[Any], errors: dict[int, bytes]) -> tuple[bytes, dict[int, bytes]]:
    """Encode a chunk segment; a value that cannot be pickled becomes that input's error."""
    try:
        return _wire.dumps(values), errors
    except BaseException:  # noqa: BLE001 - find the culprits one by one
        for position, value in enumerate(values):
            if position in errors:
                continue
            try:
                _wire.dumps(value)
            except BaseException as error:  # noqa: BLE001
                add_note(error, f"lifepool: the result ({type(value).__qualname__}) could not be pickled")
                errors[position] = _wire.exception_blob(error)
                values[position] = None
        return _wire.dumps(values), errors


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


def _watch_parent(conn_fd: int, parent_pid: int | None, options: dict[str, Any], parent_fd: int | None) -> None:
    """Notice the parent vanish while the main thread is busy; interrupt it, and bound the stop.

    *parent_pid* is this process's parent when it started, which is not the
    pool's parent under multiprocessing's fork server: the fork server is.
    A change means the process was reparented: its parent died. A container
    of a template (whose parent is the template, which may die and be
    replaced while the pool runs on) watches *parent_fd* instead, a pidfd of
    the pool's parent: readable once it exited.
    """
    _block_interrupts_in_this_thread()
    poller = select.poll()
    # POLLRDHUP: wake on the parent's end closing, not on ordinary data.
    poller.register(conn_fd, getattr(select, "POLLRDHUP", 0) | select.POLLHUP)
    if parent_fd is not None:
        poller.register(parent_fd, select.POLLIN)
    while True:
        events = poller.poll(None if parent_pid is None else _WATCH_INTERVAL * 1000)
        if events or (parent_pid is not None and os.getppid() != parent_pid):
            break
    _state.parent_gone = True
    _leave_when_orphaned(options)
    # An idle main thread waits in a read that would end only when every copy
    # of the parent's end is closed: end it here, whoever holds a copy.
    _wire.end_reading(conn_fd)
    main_ident = threading.main_thread().ident
    assert main_ident is not None  # (the main thread has started: it runs this program)
    signal.pthread_kill(main_ident, INTERRUPT_SIGNAL)


def _set_process_name(pool_name: str, index: int | str) -> None:
    """Name this process ``lp-<pool name>-<index>`` where ``top`` and ``ps -o comm`` look (Linux; 15 bytes)."""
    suffix = f"-{index}"
    name = f"lp-{pool_name}".encode(errors="replace")[: 15 - len(suffix)] + suffix.encode()
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass  # (not Linux, or no /proc: the name stays the interpreter's)


def _leave_when_orphaned(options: dict[str, Any]) -> None:
    """The parent is gone, and nobody is left to SIGKILL this container after the grace period: do it here.

    Armed once, by whichever thread finds the parent gone first (the watcher,
    or the main thread reading EOF), as soon as it does: the running call may
    swallow its interrupt, or sit deaf in C code, and the exit hooks get what
    is left of ``exit_grace_period``, as when the parent stops the pool. The
    shared memory of the pool's messages in flight is swept before leaving.
    """
    if _state.orphan_kill_armed:
        return
    _state.orphan_kill_armed = True

    def leave() -> None:
        _shm.sweep(options["parent_pid"])
        _leave(1)

    timer = threading.Timer(options["exit_grace_period"], leave)
    timer.daemon = True
    timer.start()


def main(
    conn: Any,
    index: int,
    target_blob: bytes | None,
    options: dict[str, Any],
    output: Any = None,
    snapshot: Any = None,
) -> None:
    """Entry point of a container process (the target of its Process object, or forked by a template).

    *output*: with ``forward_output``, the write ends of this container's
    output pipes and the parent's log level (see ``lifepool/_output.py``).
    *snapshot* (a ``_template.Snapshot``) is what the template made before
    forking this process: the instance, its snap hooks already run.
    """
    flush_output = None
    if output is not None:
        from . import _output

        flush_output = _output.redirect(output)  # first: what follows may print
    # Ctrl-C and SIGTERM reach the containers too (they share the parent's
    # process group); the parent decides what they mean. They are ignored by a
    # handler that does nothing, not by SIG_IGN, which would outlive exec: the
    # user's subprocesses would ignore Ctrl-C and terminate() for good. Exec
    # resets a handler; _signals_after_fork resets it in forks.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore_signal)
        signal.siginterrupt(signum, False)  # system calls restart: no EINTR for C code
    os.register_at_fork(after_in_child=_signals_after_fork)
    sentinel = options.get("sentinel")  # (a template's container: the pipe whose EOF tells the parent it exited)
    if sentinel is not None:
        os.register_at_fork(after_in_child=sentinel.close)  # only this process holds it, not its forks
    share_authkey(options.get("authkey"))
    _set_process_name(options["pool_name"], index)
    _shm.set_owner(options["parent_pid"])  # shared-memory segments are named after the pool's parent
    if options.get("shared_memory") is False:
        # The pool's parent is on another machine (a Ray backend): its /dev/shm is not ours.
        _shm.SHM_DIR = None
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt_signal)
    # The parent blocked SIGINT while starting us (a Ctrl-C then must not kill a
    # container that has no policy yet); the mask is inherited, undo it now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, INTERRUPT_SIGNAL, signal.SIGTERM})
    parent_pid: int | None = os.getppid()
    parent_fd = None
    if options.get("template_child"):
        parent_pid = None
        try:
            parent_fd = os.pidfd_open(options["parent_pid"])
        except OSError:  # (gone already: the pipe has hung up too)
            parent_fd = None
    threading.Thread(
        target=_watch_parent,
        args=(conn.fileno(), parent_pid, options, parent_fd),
        name="lifepool-watch",
        daemon=True,
    ).start()
    worker = _state.worker = _Worker(conn, index, options)
    worker.flush_output = flush_output
    try:
        worker.enter(target_blob, snapshot)
        snapshot = None
    except BaseException as error:  # noqa: BLE001 - reported; a failed enter gets no exit hook
        try:
            worker.send(_wire.frame(_wire.ENTER_FAILED, body=_wire.exception_blob(_trimmed(error))))
        except OSError:
            pass
        _finish(1, options["exit_grace_period"])
    try:
        worker.send(_wire.frame(_wire.READY))
        exit_exc = worker.serve()
    except OSError:
        exit_exc = _raised(ParentExitedError("the parent process is gone (pipe closed)"))
    if isinstance(exit_exc, ParentExitedError):
        _leave_when_orphaned(options)
    if worker._threads is not None:
        worker._threads.shutdown(wait=True)
    errors = worker.exit(exit_exc)
    try:
        worker.send(_wire.frame(_wire.EXITED, body=pickle.dumps(errors)))
    except OSError:
        pass
    if isinstance(exit_exc, ParentExitedError):
        _shm.sweep(options["parent_pid"])  # nobody is left to decode or discard what is in flight
    _finish(0, options["exit_grace_period"])


def _finish(code: int, grace: float) -> None:
    """Leave as the interpreter would at exit, within *grace* seconds, but never waiting for non-daemon threads.

    A container ends with ``os._exit``, which skips the interpreter's exit
    callbacks; what user code left to them would outlive the container. A
    ``ProcessPoolExecutor`` or ``multiprocessing.Pool`` made in an enter hook
    and never shut down kept its workers alive forever, reparented to init.
    So threading's exit callbacks (``concurrent.futures`` stops its executors
    there) and ``atexit``'s (multiprocessing's, logging's, the user's) run
    first. Non-daemon threads are not joined, as before: a thread left
    running must not hold up the pool's shutdown. A callback that hangs is
    cut short after *grace* (the parent's kill would do the same).
    """
    import atexit

    timer = threading.Timer(grace, _leave, (code,))
    timer.daemon = True
    timer.start()
    for callback in reversed(getattr(threading, "_threading_atexits", [])):
        try:
            callback()
        except BaseException:  # noqa: BLE001 - reported, as the interpreter would
            sys.excepthook(*sys.exc_info())
    atexit._run_exitfuncs()
    _leave(code)


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _no_hook() -> None:
    """Stands for a hook a class does not define (not a coroutine function)."""
