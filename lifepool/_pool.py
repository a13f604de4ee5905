"""LifecyclePool: options, validation, the Executor API, ``with`` and shutdown.

The pool object itself holds no scheduling state: it validates and encodes in
the caller's thread, then hands calls and commands to its
:class:`~lifepool._schedule.Dispatcher`, whose thread owns everything else.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypedDict, TypeVar, Unpack, cast, overload

from . import _hooks, _lifetime, _options, _output, _progress, _signals, _wire, _worker
from ._backend import Backend
from ._exceptions import ExitHookError, add_note
from ._handles import RemoteMethod
from ._mapping import map_calls
from ._schedule import Call, Dispatcher
from ._status import PoolState, PoolStatus

logger = logging.getLogger("lifepool")


T = TypeVar("T")  # the target's class
P = ParamSpec("P")  # a method's parameters (without self)
R = TypeVar("R")  # a method's result

_call_ids = itertools.count(1)
_pool_names = itertools.count(1)



class PoolOptions(TypedDict, total=False):
    """The pool's keyword options, for the overloads of ``LifecyclePool.__init__`` (see it for their meaning)."""

    min_containers: int | None
    max_containers: int | None
    scaledown_window: float
    max_inputs: int
    exit_grace_period: float
    start_method: str | None
    name: str | None
    timeout: float | None
    retries: int
    max_calls_per_container: int | None
    handle_sigterm: bool
    backend: str | Backend | None
    env: dict[str, str | None] | Callable[[int], dict[str, str | None]] | None
    cwd: str | os.PathLike[str] | None
    forward_output: bool
    output_prefix: str | Callable[[int], str] | None


class LifecyclePool(concurrent.futures.Executor, Generic[T]):
    """A pool of containers, each running *target*'s enter hook once, many calls, and its exit hook once.

    See the README for the whole contract; the arguments:

    target
        A class (instantiated with no arguments in each container) or an
        instance (shipped to each container with cloudpickle; its ``__init__``
        does not run again there).
    containers
        A fixed pool of this many containers (``min_containers = max_containers
        = containers``); default ``loky.cpu_count()``. Not together with
        *min_containers* / *max_containers*.
    min_containers, max_containers
        An elastic pool: at least *min_containers* (default 0) are kept
        entered; more start on demand while calls wait, up to
        *max_containers* (default ``max(min_containers, loky.cpu_count())``).
    scaledown_window
        Seconds an idle container above *min_containers* lives before it runs
        its exit hook (with ``None`` arguments) and goes. Default 60.
    max_inputs
        Calls one container runs at once (async methods as tasks on its event
        loop, sync methods on that many threads). Default 1.
    exit_grace_period
        Seconds each container's exit (hooks included) may take before SIGKILL.
    start_method
        ``"template"`` (default: containers are forked from one template
        process per pool, itself a fresh interpreter started by fork+exec, that
        imported the target's module and ran its ``@lifepool.enter(snap=True)``
        hooks once; see ``lifepool/_template.py``. Where pidfds are missing it
        is ``"exec"``), ``"exec"`` (fork+exec of a fresh interpreter per
        container running a small bootstrap, see ``lifepool/_launch.py``; it
        never imports ``__main__``),
        ``"loky"`` (fork+exec through loky's process context: the same
        guarantees, a slower start), or ``"spawn"``/``"forkserver"`` (the
        standard library's, which re-import ``__main__`` in the container).
    name
        Shown in logs, errors and process names.
    timeout
        Seconds a call may run in a container before it fails with
        :class:`~lifepool.CallTimeoutError` (time spent queued does not count).
    retries
        Times a call is retried on another container when its container dies
        under it. Default 0.
    max_calls_per_container
        Recycle a container (exit hook, fresh process, enter hook) after this
        many calls. Default: never.
    handle_sigterm
        Turn SIGTERM into :class:`~lifepool.Terminated` (a KeyboardInterrupt)
        while pools are alive, if the program has no SIGTERM handler of its own
        (see ``lifepool/_signals.py``). Default True.
    backend
        What runs the containers: ``"local"`` (the default: processes on this
        machine, started with *start_method*), ``"ray"`` (one Ray actor per
        container, on the cluster at ``RAY_ADDRESS`` or a local Ray; needs
        ``pip install "lifepool[ray]"``), or a backend object such as
        ``lifepool.RayBackend(address=..., num_gpus=1)``.
    env
        Environment variables set in each container before its target is
        unpickled: a dict (``None`` as a value unsets the variable), or a
        callable ``env(index) -> dict`` called in the parent once per
        container index (replacements of container *i* get the same).
    cwd
        Working directory of each container, entered before its target is unpickled.
    forward_output
        Forward what each container writes to its stdout and stderr (prints,
        C extensions, subprocesses) to this process's *current*
        ``sys.stdout``/``sys.stderr``, whole lines, each with *output_prefix*,
        and its ``logging`` records to this process's ``logging`` (with
        ``container_index`` and ``container_pid`` attributes). Default True;
        False leaves the containers' file descriptors 1 and 2 the parent's,
        unprefixed, and their logging their own. See ``docs/architecture.md``.
    output_prefix
        The prefix of each forwarded line: a format string with the fields
        ``{class}``, ``{index}``, ``{pid}`` and ``{pool}`` (default
        ``"[{class}:{index}] "``), a callable ``prefix(index) -> str``, or
        None for no prefix.
    """

    _dispatcher: Dispatcher  # set last in __init__: __getattr__ and __repr__ look for it

    # Two overloads bind T, the target's class, for a class and for an instance
    # (LifecyclePool(Model) and LifecyclePool(Model(size="large")) are both
    # LifecyclePool[Model]); the implementation below has the real signature.
    @overload
    def __init__(self, target: type[T], /, containers: int | None = None, **options: Unpack[PoolOptions]) -> None: ...
    @overload
    def __init__(self, target: T, /, containers: int | None = None, **options: Unpack[PoolOptions]) -> None: ...
    def __init__(
        self,
        target: Any,
        /,
        containers: int | None = None,
        *,
        min_containers: int | None = None,
        max_containers: int | None = None,
        scaledown_window: float = 60.0,
        max_inputs: int = 1,
        exit_grace_period: float = 240.0,
        start_method: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        max_calls_per_container: int | None = None,
        handle_sigterm: bool = True,
        backend: str | Backend | None = None,
        env: dict[str, str | None] | Callable[[int], dict[str, str | None]] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        forward_output: bool = True,
        output_prefix: str | Callable[[int], str] | None = _output.DEFAULT_PREFIX,
    ) -> None:
        if _worker.importing_target():
            raise RuntimeError(
                "a lifepool pool cannot be made while a container imports its target's module: the module "
                "makes a pool when imported, so every container would make its own, without end. Make the "
                'pool in a function, or under `if __name__ == "__main__":`'
            )
        cls = target if isinstance(target, type) else type(target)
        minimum, maximum = _options.container_counts(containers, min_containers, max_containers)
        _options.check_window(scaledown_window)
        _options.check_int("max_inputs", max_inputs, minimum=1)
        _options.check_int("retries", retries, minimum=0)
        if max_calls_per_container is not None:
            _options.check_int("max_calls_per_container", max_calls_per_container, minimum=1)
        _options.check_seconds("exit_grace_period", exit_grace_period)
        if timeout is not None:
            _options.check_seconds("timeout", timeout)
        if start_method is not None and start_method not in _options.START_METHODS:
            raise ValueError(f"start_method must be one of {_options.START_METHODS} or None, not {start_method!r}")
        engine = _options.engine(backend, start_method)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, not {type(name).__name__}")
        environment = _options.environment(env, cwd, maximum)
        if not isinstance(forward_output, bool):
            raise TypeError(f"forward_output must be a bool, not {type(forward_output).__name__}")
        if inspect.isroutine(target) or inspect.ismodule(target):
            raise TypeError(f"target must be a class or an instance of one, not {target!r}")
        # Containers on other machines cannot map this machine's shared memory.
        self._dumps = _wire.dumps if engine.shared_memory else _wire.dumps_inline
        try:
            # Inline: every container decodes the target, and a decoding unlinks segments.
            target_blob = _wire.dumps_inline(target)
        except Exception as error:
            raise TypeError(f"the pool's target {target!r} cannot be pickled: {error}") from error

        self._info = _hooks.inspect_class(cls)
        self._target_class = cls
        max_inputs = max(max_inputs, self._info.max_inputs)  # @lifepool.concurrent on the class
        self._max_containers = maximum
        self._max_inputs = max_inputs
        self._capacity = maximum * max_inputs
        self.name = name or f"pool-{next(_pool_names)}"
        output: _output.OutputOptions | None = _output.OutputOptions(output_prefix, self._info.name, self.name)
        if not forward_output:
            output = None  # (the prefix is validated either way)
        self._handles: dict[str, RemoteMethod[..., Any]] = {}
        self._exit_errors_reported = False
        _signals.note_shown_errors()  # (an error shown before this pool existed cannot end the program at exit)
        engine.open(maximum)  # (closed by the dispatcher when it ends)
        dispatcher = Dispatcher(
            self.name,
            target_blob,
            self._info.name,
            {
                "backend": engine,
                "min_containers": minimum,
                "max_containers": maximum,
                "scaledown_window": float(scaledown_window),
                "max_inputs": max_inputs,
                "exit_grace_period": float(exit_grace_period),
                "timeout": None if timeout is None else float(timeout),
                "retries": retries,
                "max_calls_per_container": max_calls_per_container,
                "batched": self._info.batched,
                "authkey": _options.authkey(),
                "environment": environment,
                "output": output,
            },
            on_closed=_lifetime.forget,
        )
        _lifetime.add(dispatcher)
        self._dispatcher = dispatcher
        if handle_sigterm:
            _signals.install(_lifetime.any_alive)
        # A pool dropped without shutdown still lets its containers exit cleanly.
        weakref.finalize(self, _lifetime.abandoned, dispatcher)

    def __repr__(self) -> str:
        dispatcher: Dispatcher | None = self.__dict__.get("_dispatcher")
        if dispatcher is None:
            return f"<LifecyclePool (not made) at {id(self):#x}>"
        # (read without the tables' lock: a repr must never wait, nor hang in a done callback)
        live = dispatcher._active if dispatcher.state is not PoolState.CLOSED else 0
        queued = sum(len(pending) for pending in dispatcher.pending.values())
        return (
            f"<LifecyclePool {self.name!r} of {self._info.name}: {dispatcher.state.value}, "
            f"{live}/{self._max_containers} containers, {queued} queued>"
        )

    def status(self) -> PoolStatus:
        """A snapshot: the pool's :class:`~lifepool.PoolState`, calls queued, and each live container.

        ``status().containers`` holds one :class:`~lifepool.ContainerStatus`
        per container that is starting, entering, ready, busy, retiring or
        exiting; it is empty once the pool is closed.
        """
        return self._dispatcher.status()

    # -- method handles ---------------------------------------------------
    def __getattr__(self, name: str) -> RemoteMethod[..., Any]:
        """``pool.NAME``: the handle of the target's public method NAME (see :meth:`method` for a typed one)."""
        if name.startswith("_") or self.__dict__.get("_dispatcher") is None:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
                + ("" if name.startswith("__") else " (private names are not remote methods)")
            )
        handle = self.method(name)
        # Found by plain attribute lookup from now on (__getattr__ only runs
        # for names the pool itself does not have, so nothing is hidden).
        self.__dict__[name] = handle
        return handle

    @overload
    def method(self, name: Callable[Concatenate[T, P], Awaitable[R]], /) -> RemoteMethod[P, R]: ...
    @overload
    def method(self, name: Callable[Concatenate[T, P], R], /) -> RemoteMethod[P, R]: ...
    @overload
    def method(self, name: str, /) -> RemoteMethod[..., Any]: ...
    def method(self, name: Any, /) -> RemoteMethod[..., Any]:
        """The handle of a public method of the target, by *name* or as the function itself.

        ``pool.method("map")`` reaches a method whose name the pool itself uses.
        ``pool.method(Model.predict)`` is the same handle as ``pool.predict``,
        typed for a checker: ``pool.method(Model.predict).call(x)`` has the
        type ``Model.predict`` returns, and its arguments are checked.
        """
        if not isinstance(name, str):
            name = self._method_name(name)
        handle = self._handles.get(name)
        if handle is None:
            if name not in self._info.methods:
                raise AttributeError(_no_method(self._info, name))
            handle = self._handles[name] = RemoteMethod(self, name)
        return handle

    def _method_name(self, function: Any) -> str:
        """The name of the target's method *function* (``Model.predict``), checked to be that method."""
        name = getattr(function, "__name__", None)
        found = None if not isinstance(name, str) else inspect.getattr_static(self._target_class, name, None)
        if isinstance(found, (staticmethod, classmethod)):
            found = found.__func__
        if name is None or found is not function:
            raise TypeError(
                f"method() takes a method name or a method of {self._info.name} (such as "
                f"{self._info.name}.{next(iter(self._info.methods), 'predict')}), not {function!r}"
            )
        return str(name)

    # -- Executor API -------------------------------------------------------
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in some container; ``lifepool.current_container()`` works there."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {fn!r}")
        return cast("Future[R]", self._spawn(fn, _label(fn), args, kwargs))

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: Any = False,
    ) -> Iterator[R]:
        """``concurrent.futures``-style map of a plain callable over the containers (lazy, windowed).

        *progress* shows a tqdm bar: True, a label, or a dict of tqdm options
        (needs ``lifepool[progress]``). *chunksize* is accepted for
        compatibility; lifepool sizes chunks by itself.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        single = len(iterables) == 1
        bar = None
        if progress:
            lengths = [_progress.length(iterable) for iterable in iterables]
            total = None if not lengths or None in lengths else min(lengths)  # type: ignore[type-var]
            bar = _progress.make(progress, _label(fn), total)
        return map_calls(
            self,
            fn,
            _label(fn),
            iterables[0] if single else zip(*iterables),
            single=single,
            chunkable=not inspect.iscoroutinefunction(fn),
            timeout=timeout,
            progress=bar,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Finish (or with *cancel_futures*, drop) queued calls, then run every exit hook and reap.

        With *wait*, raises :class:`~lifepool.ExitHookError` if exit hooks failed.
        Calling it again is harmless. A Ctrl-C while it waits interrupts the
        running calls and stops the containers (exit hooks get the
        KeyboardInterrupt), then raises it; a second Ctrl-C kills them at once.
        """
        request = _lifetime.stopping(cancel_futures=cancel_futures)
        if not wait:
            request(self._dispatcher)
            return
        interrupt = self._stop(request, aborting=False)
        if interrupt is not None:
            raise interrupt
        errors = self._take_exit_errors()
        if errors:
            raise ExitHookError(f"exit hooks failed in pool {self.name!r}", errors)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.shutdown(wait=True)
            return
        # The block is raising: queued calls are dropped, running ones finish
        # (a KeyboardInterrupt interrupts them), and every exit hook gets exc.
        # A Ctrl-C while the pool stops is folded into exc (one traceback).
        aborting = isinstance(exc, KeyboardInterrupt)
        self._stop(_lifetime.stopping(cancel_futures=True, exit_exc=exc, abort=aborting), aborting=aborting)
        for error in self._take_exit_errors():
            add_note(exc, f"lifepool: while exiting, an exit hook failed too: {type(error).__name__}: {error}")
            logger.error("lifepool pool %r: exit hook failed", self.name, exc_info=error)

    # -- internals --------------------------------------------------------
    def _spawn(
        self,
        what: Any,
        label: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: str | None = None,
        sink: Callable[[tuple[str, Any]], None] | None = None,
    ) -> Call:
        call = self._make_call(what, label, args, kwargs, kind, sink)
        self._submit(call)
        return call

    def _run_blocking(self, what: Any, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """A blocking call: ``(True, value)`` or ``(False, exception)``.

        It runs on a borrowed idle container if there is one (see _schedule._lending),
        else it is queued and waited for. A KeyboardInterrupt cancels the call
        (interrupts it if it runs) and leaves the pool alive.
        """
        self._refuse_on_own_dispatcher("make a blocking call")
        dispatcher = self._dispatcher
        call = self._make_call(what, label, args, kwargs, None, None)
        try:
            record = dispatcher.borrow(call)
            if record is None:
                self._submit(call)
            else:
                ok, outcome = dispatcher.run_borrowed(record, call)
                if ok or outcome is not None:
                    # Answered without completing the Future, which would unlink
                    # the arguments' shared memory (see Call._let_go).
                    if _wire.has_segments(call.body):
                        _wire.discard(call.body)
                    return ok, outcome
            error = call.exception()
        except KeyboardInterrupt:
            # It may land anywhere, even between lending the container and
            # waiting on it (a busy machine makes that window long).
            dispatcher.abandon_borrow(call)
            self._abandon([call], interrupt=True)
            raise
        return (False, error) if error is not None else (True, call.result())

    def _make_call(
        self,
        what: Any,
        label: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: str | None,
        sink: Callable[[tuple[str, Any]], None] | None,
    ) -> Call:
        """Encode a call (also the Future its caller gets).

        A pool that refuses calls raises before anything is encoded: a big
        argument would otherwise be written to shared memory for nothing.
        """
        self._dispatcher.check_accepting()
        try:
            body = self._dumps((what, args, kwargs))
        except Exception as error:
            add_note(error, f"lifepool: the arguments of {label} could not be pickled")
            raise
        chunk = isinstance(what, _wire.Chunk)
        call = Call(next(_call_ids), body, label, kind, sink, stream=sink is not None and not chunk, chunk=chunk)
        return call  # (its body's shared memory lives until the call is over: it may be retried; see Call._let_go)

    def _submit(self, call: Call) -> None:
        try:
            self._dispatcher.submit(call)  # raises if the pool refuses calls (shut down, broken)
        except KeyboardInterrupt:
            # Queued or not, nobody will ever see this future: make sure it never runs.
            self._abandon([call], interrupt=True)
            raise
        except BaseException:
            # Refused (the pool stopped since _make_call's check): cancelling
            # the call that was never queued runs its done callbacks, which
            # unlink its arguments' shared memory (see _make_call).
            call.cancel()
            raise

    def _abandon(self, futures: Iterable[Future[Any]], *, interrupt: bool) -> None:
        """Cancel queued calls among *futures*; with *interrupt*, interrupt the running ones."""
        for future in futures:
            if not future.cancel() and interrupt and not future.done():
                self._dispatcher.control("interrupt", future)

    def _window(self, kind: str | None) -> int:
        """Calls ``map`` keeps in flight: twice what the containers can hold at once."""
        if kind is None:
            return 2 * self._capacity
        return 2 * self._max_containers * max(self._max_inputs, self._info.batched[kind][0])

    def _can_chunk(self) -> bool:
        """Whether ``map`` may put several inputs in one call (see _mapping._ChunkedMap)."""
        dispatcher = self._dispatcher
        return dispatcher.timeout is None and dispatcher.retries == 0 and dispatcher.max_calls is None

    def _grant(self, future: Future[Any], count: int) -> None:
        """Let a stream's container send *count* more items."""
        self._dispatcher.control("credit", future, count)

    def _stop(self, request: Callable[[Dispatcher], None], *, aborting: bool) -> KeyboardInterrupt | None:
        """Stop the pool with *request* and wait for its containers to be gone (see _lifetime.stop_pools)."""
        self._refuse_on_own_dispatcher("wait for the pool to stop (use shutdown(wait=False))")
        interrupt = _lifetime.stop_pools([self._dispatcher], request, aborting=aborting)
        if not _lifetime.any_alive():
            _signals.restore()  # (elsewhere than in the main thread, the handler itself sees to it)
        return interrupt

    def _refuse_on_own_dispatcher(self, doing: str) -> None:
        """Raise RuntimeError on the pool's own dispatcher thread (a done callback), where waiting on the pool hangs."""
        if threading.current_thread() is self._dispatcher.thread:
            raise RuntimeError(
                f"cannot {doing} in a done callback of pool {self.name!r}: the pool completes its Futures, "
                "and runs their callbacks, on its own dispatcher thread, which would then wait for itself; "
                "spawn() and add_done_callback() work there"
            )

    def _take_exit_errors(self) -> list[BaseException]:
        if self._exit_errors_reported:
            return []
        self._exit_errors_reported = True
        return list(self._dispatcher.exit_errors)


def _label(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _no_method(info: _hooks.ClassInfo, name: str) -> str:
    if name in info.enter_hooks or name in info.exit_hooks:
        return f"{info.name}.{name} is a lifecycle hook, not a remote method"
    if name.startswith("_"):
        return f"{info.name}.{name} is private; only public methods can be called remotely"
    return f"{info.name} has no public method {name!r}"
