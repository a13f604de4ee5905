"""``App`` / ``Stub``: the decorators, ``local_entrypoint``, and ``app.run()``, the running app (``Run``).

    with app.run():            Run: pools made on first use (or at start with min_containers),
        main()                      one RetryTimer, the calls in flight
    (block ends)               clean end: wait for the calls in flight, close the timer,
                                          shut every pool down (exit hooks with Nones)
                               an error:  close the timer, stop every pool with it: queued
                                          calls dropped, exit hooks get it (Stub mode)

App mode follows today's Modal (only decorated hooks run, exit hooks take no
arguments); Stub mode follows the 2023 reference (``__enter__``/``__exit__``
with the exception). The app layer schedules nothing itself: every call is a
call of a ``LifecyclePool``.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import _hooks
from . import _options
from ._calls import RetryTimer
from ._cls import _NO_DEFAULT, Cls, Function, Service, StubClass, StubFunction
from ._options import Options
from .exception import ExecutionError, InvalidError

logger = logging.getLogger("lifepool")

_FUNCTION_OPTIONS = frozenset(
    {
        "env",
        "secrets",
        "min_containers",
        "max_containers",
        "scaledown_window",
        "timeout",
        "retries",
        "single_use_containers",
    }
    | _options.CLOUD_ONLY
)


class LocalEntrypoint:
    """The function ``lifepool run`` (or ``modal run``) calls: ``@app.local_entrypoint()``."""

    def __init__(self, func: Callable[..., Any], app: App, name: str) -> None:
        self.raw_f = func
        self.app = app
        self.name = name
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<lifepool local entrypoint {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


class App:
    """A Modal-style app: ``app = lifepool.App()``, ``@app.cls()``, ``@app.function()``, ``@app.local_entrypoint()``."""

    _dunder_hooks = False  # App mode: only decorated hooks (today's Modal)

    def __init__(self, name: str | None = None, *, image: Any = None, secrets: Any = (), **ignored: Any) -> None:
        if name is not None and not isinstance(name, str):
            raise InvalidError(f"App name must be a string, not {type(name).__name__}")
        if ignored:
            logger.info("lifepool: App(%s) ignored (cloud options)", ", ".join(f"{k}=..." for k in sorted(ignored)))
        self.name = name
        self._secrets = list(secrets or ())
        self._run: Run | None = None
        self._run_lock = threading.Lock()
        self.registered_functions: dict[str, Any] = {}
        self.registered_classes: dict[str, Any] = {}
        self.registered_entrypoints: dict[str, LocalEntrypoint] = {}
        self._stub_classes: dict[type, StubClass] = {}
        self._stub_options: dict[type, _options.Options] = {}

    def __repr__(self) -> str:
        return f"<lifepool {type(self).__name__} {self.name or '(unnamed)'}>"

    @property
    def description(self) -> str:
        return self.name or "lifepool app"

    # -- decorators ---------------------------------------------------------
    def _options(self, what: str, kwargs: dict[str, Any]) -> _options.Options:
        unknown = set(kwargs) - _FUNCTION_OPTIONS
        if unknown:
            raise TypeError(f"{what}() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        kwargs = dict(kwargs)
        kwargs["secrets"] = [*self._secrets, *(kwargs.get("secrets") or ())]
        return _options.from_decorator(what, kwargs)

    def function(self, _warn_parentheses_missing: Any = None, **kwargs: Any) -> Callable[[Any], Any]:
        """Register a plain function, run in its own pool of containers."""
        if _warn_parentheses_missing is not None:
            raise InvalidError(
                "Positional arguments are not allowed. Did you forget parentheses? Suggestion: `@app.function()`."
            )
        options = self._options("app.function", kwargs)

        def decorate(func: Any) -> Function:
            if isinstance(func, type):
                raise InvalidError("`@app.function()` cannot be used on a class; use `@app.cls()`")
            if not callable(func):
                raise InvalidError(f"`@app.function()` decorates a function, not {func!r}")
            concurrency = getattr(func, _hooks._CONCURRENT_ATTR, None)
            function = Function(func, self, options.with_overrides(max_inputs=concurrency) if concurrency else options)
            self.registered_functions[func.__name__] = function
            return function

        return decorate

    def cls(self, _warn_parentheses_missing: Any = None, **kwargs: Any) -> Callable[[type], Cls]:
        """Register a class: ``@modal.method()`` methods run in its containers, between its enter and exit hooks."""
        if _warn_parentheses_missing is not None:
            raise InvalidError(
                "Positional arguments are not allowed. Did you forget parentheses? Suggestion: `@app.cls()`."
            )
        options = self._options("app.cls", kwargs)

        def decorate(user_cls: type) -> Cls:
            if not isinstance(user_cls, type):
                raise InvalidError(f"`@app.cls()` decorates a class, not {user_cls!r}")
            setattr(user_cls, _hooks._DUNDER_HOOKS_ATTR, self._dunder_hooks)
            cls_options = options
            concurrency = getattr(user_cls, _hooks._CONCURRENT_ATTR, None)
            if concurrency:
                cls_options = options.with_overrides(max_inputs=concurrency)
            wrapped = Cls(user_cls, self, cls_options)
            self.registered_classes[user_cls.__name__] = wrapped
            return wrapped

        return decorate

    def local_entrypoint(
        self, _warn_parentheses_missing: Any = None, *, name: str | None = None
    ) -> Callable[[Any], Any]:
        """Register the function ``lifepool run`` calls (sync or async)."""
        if _warn_parentheses_missing is not None:
            raise InvalidError(
                "Positional arguments are not allowed. Did you forget parentheses? "
                "Suggestion: `@app.local_entrypoint()`."
            )
        return self._entrypoint(name)

    def _entrypoint(self, name: str | None) -> Callable[[Any], LocalEntrypoint]:
        def decorate(func: Any) -> LocalEntrypoint:
            if not callable(func):
                raise InvalidError(f"local_entrypoint decorates a function, not {func!r}")
            entry = LocalEntrypoint(func, self, name or func.__name__)
            self.registered_entrypoints[entry.name] = entry
            return entry

        return decorate

    # -- running ------------------------------------------------------------
    def run(
        self, *, detach: bool = False, interactive: bool = False, environment_name: str | None = None, **_: Any
    ) -> _Running:
        """``with app.run():`` (or ``async with``): the app's pools live for the block."""
        return _Running(self)

    def _running(self) -> Run | None:
        return self._run

    def _require_running(self, what: str) -> Run:
        run = self._run
        if run is None or run.closed:
            raise ExecutionError(
                f"{what} was called, but its app is not running. Run the program with `lifepool run file.py` "
                "(its @app.local_entrypoint() runs inside the app), or call it inside `with app.run():`."
            )
        return run

    # Stub mode helpers (see StubFunction)
    def _note_method(self, owner: type, options: Options) -> None:
        if options != _options.Options() or owner not in self._stub_options:
            self._stub_options[owner] = options

    def _class_service(self, cls: type) -> StubClass:
        service = self._stub_classes.get(cls)
        if service is None:
            options = self._stub_options.get(cls) or self._options("stub.function", {})
            service = self._stub_classes[cls] = StubClass(cls, self, options)
        return service


class Stub(App):
    """The reference's (2023) spelling: ``@stub.function`` on methods, ``@stub.local_entrypoint``, dunder hooks.

    Exit hooks (``__exit__``/``__aexit__``) receive the exception that ended
    the app, or ``None``s.
    """

    _dunder_hooks = True

    def function(self, _func: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """``@stub.function`` (with or without options) on a function, or on a method of a class (2023 spelling)."""
        options = self._options("stub.function", kwargs)

        def decorate(func: Any) -> StubFunction:
            return StubFunction(func, self, options)

        return decorate if _func is None else decorate(_func)

    def local_entrypoint(self, _func: Any = None, *, name: str | None = None) -> Any:
        """``@stub.local_entrypoint`` (with or without parentheses): the program's main, run by ``lifepool run``."""
        decorate = self._entrypoint(name)
        return decorate if _func is None else decorate(_func)


class _Running:
    """What ``app.run()`` returns: a context manager, sync or async."""

    def __init__(self, app: App) -> None:
        self._app = app

    def __enter__(self) -> App:
        app = self._app
        with app._run_lock:
            if app._run is not None:
                raise InvalidError(f"{app!r} is already running")
            app._run = Run(app)
        app._run.warm()
        return app

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        run = self._app._run
        assert run is not None  # (set by __enter__)
        try:
            run.stop(exc)
        finally:
            self._app._run = None

    async def __aenter__(self) -> App:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)


class Run:
    """A running app: its pools (one per service), its retry timer, its calls in flight."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.closed = False
        self.timer = RetryTimer(app.name or "app")
        self.local_exits: list[tuple[Any, Any]] = []
        self._pools: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self.calls_done = 0

    def pool(self, service: Service) -> Any:
        with self._lock:
            if self.closed:
                raise ExecutionError(f"the app {self.app.description!r} has stopped")
            pool = self._pools.get(service.key)
            if pool is None:
                name = f"{self.app.name}.{service.label}" if self.app.name else service.label
                pool = self._pools[service.key] = _options.make_pool(service.pool_target(), service.options, name=name)
            return pool

    def pools(self) -> list[Any]:
        with self._lock:
            return list(self._pools.values())

    def warm(self) -> None:
        """Services with ``min_containers`` start their containers with the app."""
        for function in self.app.registered_functions.values():
            if function.options.min_containers:
                self.pool(function)
        for cls in self.app.registered_classes.values():
            if cls._options.min_containers and all(p.default is not _NO_DEFAULT for p in cls._params.values()):
                self.pool(cls())

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)
            self.calls_done += 1

    def count_done(self) -> None:
        with self._lock:
            self.calls_done += 1

    def stop(self, exc: BaseException | None) -> None:
        interrupted = None
        if exc is None:
            try:
                while True:  # calls started without waiting (spawn, the reference's un-awaited .call)
                    with self._lock:
                        waiting = list(self._in_flight)
                    if not waiting:
                        break
                    concurrent.futures.wait(waiting)
            except BaseException as interrupt:  # noqa: BLE001 -a Ctrl-C while waiting: stop as on an error
                exc = interrupted = interrupt
        with self._lock:
            self.closed = True
            pools = list(self._pools.values())
        self.timer.close()
        errors: list[BaseException] = []
        for pool in pools:
            try:
                if exc is None:
                    pool.shutdown(wait=True)
                else:
                    pool.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException as error:  # noqa: BLE001 - every pool stops; the first error is raised
                errors.append(error)
        for instance, info in reversed(self.local_exits):
            _local_exit(instance, info, exc)
        if interrupted is not None:
            raise interrupted
        if errors and exc is None:
            raise errors[0]


def _local_exit(instance: Any, info: Any, exc: BaseException | None) -> None:
    from ._cls import _run_hook

    try:
        for hook in info.exit_hooks:
            _run_hook(getattr(instance, hook)())
        cls = type(instance)
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)
        if info.dunder_hooks and inspect.iscoroutinefunction(getattr(cls, "__aexit__", None)):
            _run_hook(instance.__aexit__(*exc_info))
        elif info.dunder_hooks and hasattr(cls, "__exit__"):
            instance.__exit__(*exc_info)
    except Exception:
        logger.exception("lifepool: an exit hook of a .local() instance of %s failed", type(instance).__qualname__)


def is_local() -> bool:
    """True outside containers (in the program that runs the app)."""
    from .._context import current_container

    return current_container() is None


def current_input_id() -> str | None:
    """An id of the input this container runs (``None`` outside containers; see the README for where it is known)."""
    from .._context import current_call_id

    call_id = current_call_id()
    return None if call_id is None else f"in-{call_id}"


def current_function_call_id() -> str | None:
    """Like :func:`current_input_id`, for the call (one input per call here, so the same number)."""
    from .._context import current_call_id

    call_id = current_call_id()
    return None if call_id is None else f"fc-{call_id}"
