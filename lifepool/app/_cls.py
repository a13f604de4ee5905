"""What the decorators make: ``Function`` (``@app.function()``), ``Cls``/``Obj`` (``@app.cls()``), Stub methods.

Each is a *service*: what the running app needs to make its pool (a key, a
target, options) and what its handles need (``raw_function``, ``local_call``).

    @app.cls() class Model ─► Cls ─► Model(size="large") ─► Obj (key: class, variant, parameters)
                                                            └─► .predict ─► Invoker ─► Run.pool(Obj)
    class Model: @stub.function def predict ─► StubFunction (a descriptor: Model().predict in the
                                                parent is an Invoker; in a container, the method)

The class a pool runs is the user's class itself: decorated names in its
module are wrappers, so cloudpickle ships it by value (the container does not
import the module), like a class of ``__main__``. A Stub class is not wrapped;
it travels by reference when its module is importable.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import threading
import types
from collections.abc import Callable
from typing import Any

from .. import _hooks
from . import _options
from ._invoke import Invoker
from .exception import InvalidError

_METHOD_ATTR = "__lifepool_method__"
_NO_DEFAULT = object()
_variants = itertools.count()


def method(_warn_parentheses_missing: Any = None, *, is_generator: bool | None = None) -> Callable[[Any], Any]:
    """Mark a method of an ``@app.cls()`` class as callable remotely: ``@modal.method()``."""
    if _warn_parentheses_missing is not None:
        raise InvalidError(
            "Positional arguments are not allowed. Did you forget parentheses? Suggestion: `@modal.method()`."
        )

    def mark(func: Any) -> Any:
        if not callable(func):
            raise InvalidError(f"@modal.method() decorates a method, not {func!r}")
        setattr(func, _METHOD_ATTR, True)
        return func

    return mark


class _Parameter:
    """A class parameter: ``size: str = modal.parameter(default="small")``."""

    def __init__(self, default: Any, init: bool) -> None:
        self.default = default
        self.init = init

    def __reduce__(self) -> Any:
        # In a container the instance has the value; the class attribute is only its default.
        return (copy.copy, (None if self.default is _NO_DEFAULT else self.default,))


def parameter(*, default: Any = _NO_DEFAULT, init: bool = True) -> Any:
    """A typed class attribute set per object: ``Model(size="large")`` gets its own pool."""
    return _Parameter(default, init)


def _parameters(cls: type) -> dict[str, _Parameter]:
    found: dict[str, _Parameter] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, _Parameter):
                found[name] = value
    return found


def _run_hook(result: Any) -> None:
    """Run an awaitable hook result to completion, even when called from a running loop."""
    if not inspect.isawaitable(result):
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(result)  # type: ignore[arg-type]  # (a coroutine: hooks are async def)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            failure.append(error)

    thread = threading.Thread(target=run, name="lifepool-local-hook")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class Service:
    """Common ground of Function, Obj and the Stub class service."""

    app: Any
    label: str
    options: _options.Options
    key: Any
    dunder_hooks: bool

    def __init__(self) -> None:
        self._local: Any = None
        self._local_lock = threading.Lock()

    def pool_target(self) -> Any:
        raise NotImplementedError

    def raw_function(self, name: str) -> Any:
        raise NotImplementedError

    def local_instance(self) -> Any:
        return None

    def local_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        instance = self._entered_local()
        func = self.raw_function(name)
        return func(*args, **kwargs) if instance is None else func.__get__(instance)(*args, **kwargs)

    def _entered_local(self) -> Any:
        with self._local_lock:
            if self._local is None:
                instance = self.local_instance()
                if instance is None:
                    return None
                info = _hooks.inspect_class(type(instance))
                cls = type(instance)
                if info.dunder_hooks and _hooks.is_async(getattr(cls, "__aenter__", _no_hook)):
                    _run_hook(instance.__aenter__())
                elif info.dunder_hooks and hasattr(cls, "__enter__"):
                    instance.__enter__()
                for hook in info.enter_hooks:
                    _run_hook(getattr(instance, hook)())
                self._local = instance
                run = self.app._running()
                if run is not None:
                    run.local_exits.append((instance, info))
            return self._local


class Function(Service):
    """``@app.function()``: a plain function run in its own pool of hook-less containers."""

    def __init__(self, func: Callable[..., Any], app: Any, options: _options.Options) -> None:
        super().__init__()
        self.raw_f = func
        self.app = app
        self.label = func.__name__
        self.options = options
        self.key = ("function", id(self))
        self.dunder_hooks = True
        self._invoker = Invoker(self, func.__name__)
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<lifepool Function {self.label}>"

    def pool_target(self) -> Any:
        func = self.raw_f
        holder = type(func.__name__, (), {func.__name__: staticmethod(func)})
        holder.__module__ = func.__module__
        holder.__qualname__ = f"{func.__qualname__}.<lifepool function>"  # (not importable: travels by value)
        return holder

    def raw_function(self, name: str) -> Any:
        return self.raw_f

    def get_raw_f(self) -> Callable[..., Any]:
        return self.raw_f

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._invoker, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


class Cls:
    """``@app.cls()``: call it with the class's parameters to get an object whose methods run remotely."""

    def __init__(
        self,
        user_cls: type,
        app: Any,
        options: _options.Options,
        *,
        batching: tuple[int, float] | None = None,
    ) -> None:
        self._user_cls = user_cls
        self._app = app
        self._options = options
        self._batching = batching
        self._variant = next(_variants)
        self._objs: dict[Any, Obj] = {}
        self._params = _parameters(user_cls)
        self.__name__ = user_cls.__name__
        self.__qualname__ = user_cls.__qualname__
        self.__doc__ = user_cls.__doc__
        self.__wrapped__ = user_cls

    def __repr__(self) -> str:
        return f"<lifepool Cls {self._user_cls.__qualname__}>"

    def __call__(self, *args: Any, **params: Any) -> Obj:
        if args:
            raise InvalidError(f"{self.__name__}() takes its parameters as keyword arguments only")
        values: dict[str, Any] = {}
        for name, param in self._params.items():
            if name in params:
                values[name] = params.pop(name)
            elif param.default is not _NO_DEFAULT:
                values[name] = param.default
            else:
                raise InvalidError(f"{self.__name__}() is missing the required parameter {name!r}")
        if params:
            raise InvalidError(f"{self.__name__}() got unknown parameters: {', '.join(sorted(params))}")
        try:
            key = tuple(sorted(values.items()))
            hash(key)
        except TypeError:
            raise InvalidError(f"{self.__name__}() parameters must be str, int, bool or bytes: {values!r}") from None
        obj = self._objs.get(key)
        if obj is None:
            obj = self._objs[key] = Obj(self, values)
        return obj

    def with_options(self, **kwargs: Any) -> Cls:
        """The same class with other options (a pool of its own): timeout, retries, max_containers, env, secrets, ..."""
        unknown = set(kwargs) - _WITH_OPTIONS
        if unknown:
            raise TypeError(f"with_options() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        given = _options.from_decorator("with_options", kwargs)
        changes = {
            field: getattr(given, field)
            for field, key in (
                ("min_containers", "min_containers"),
                ("max_containers", "max_containers"),
                ("scaledown_window", "scaledown_window"),
                ("timeout", "timeout"),
                ("retries", "retries"),
            )
            if kwargs.get(key) is not None
        }
        if given.env:
            changes["env"] = {**self._options.env, **given.env}
        return Cls(self._user_cls, self._app, self._options.with_overrides(**changes), batching=self._batching)

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Cls:
        _hooks.concurrent(max_inputs=max_inputs, target_inputs=target_inputs)  # (checks the values)
        return Cls(
            self._user_cls, self._app, self._options.with_overrides(max_inputs=max_inputs), batching=self._batching
        )

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Cls:
        _hooks.batched(max_batch_size=max_batch_size, wait_ms=wait_ms)  # (checks the values)
        if not _hooks.inspect_class(self._user_cls).batched:
            raise InvalidError(f"{self.__name__} has no @modal.batched() method to change")
        return Cls(self._user_cls, self._app, self._options, batching=(max_batch_size, float(wait_ms)))

    def _target_class(self) -> type:
        if self._batching is None:
            return self._user_cls
        # A subclass whose batched methods carry the new sizes (the user's class is left as it is).
        body: dict[str, Any] = {}
        for name in _hooks.inspect_class(self._user_cls).batched:
            func = inspect.getattr_static(self._user_cls, name)
            copied = types.FunctionType(
                func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
            )
            copied.__dict__.update(func.__dict__)
            copied.__qualname__ = func.__qualname__
            body[name] = _hooks.batched(max_batch_size=self._batching[0], wait_ms=self._batching[1])(copied)
        sub = type(self._user_cls.__name__, (self._user_cls,), body)
        sub.__qualname__ = f"{self._user_cls.__qualname__}.<with_batching>"
        return sub


_WITH_OPTIONS = frozenset(
    {
        "cpu",
        "memory",
        "gpu",
        "env",
        "secrets",
        "volumes",
        "retries",
        "max_containers",
        "buffer_containers",
        "min_containers",
        "scaledown_window",
        "timeout",
        "region",
        "cloud",
    }
)


class Obj(Service):
    """An object of an ``@app.cls()`` class: its ``@modal.method()`` methods are handles."""

    def __init__(self, cls: Cls, params: dict[str, Any]) -> None:
        super().__init__()
        self._cls = cls
        self._params = params
        self.app = cls._app
        self.options = cls._options
        self.label = cls.__name__
        self.key = ("cls", cls._variant, tuple(sorted(params.items())))
        self.dunder_hooks = False
        self._methods = {
            name
            for name in _hooks.inspect_class(cls._user_cls).methods
            if getattr(inspect.getattr_static(cls._user_cls, name), _METHOD_ATTR, False)
            or name in _hooks.inspect_class(cls._user_cls).batched
        }
        self._handles: dict[str, Invoker] = {}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"<lifepool {self.label}({shown})>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._params:
            return self._params[name]
        if name not in self._methods:
            raise AttributeError(
                f"{self.label} has no method {name!r} callable remotely (mark it with @modal.method())"
            )
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = Invoker(self, name)
        return handle

    def pool_target(self) -> Any:
        cls = self._cls._target_class()
        if not self._params:
            return cls
        instance: Any = object.__new__(cls)  # (as Modal: parameters, not __init__, make the object)
        for name, value in self._params.items():
            setattr(instance, name, value)
        return instance

    def raw_function(self, name: str) -> Any:
        return inspect.getattr_static(self._cls._user_cls, name)

    def local_instance(self) -> Any:
        instance: Any = object.__new__(self._cls._user_cls)
        for name, value in self._params.items():
            setattr(instance, name, value)
        return instance


class StubFunction:
    """``@stub.function`` (the reference's spelling): on a method, a descriptor; on a plain function, a Function."""

    def __init__(self, func: Callable[..., Any], stub: Any, options: _options.Options) -> None:
        self.__lifepool_wrapped__ = func  # (what _hooks.inspect_class looks at)
        self._func = func
        self._stub = stub
        self._options = options
        self._function: Function | None = None
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._stub._note_method(owner, self._options)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        from .._context import current_container

        if current_container() is not None or instance is None:
            # In a container (the module was imported there): the method itself.
            return self._func if instance is None else self._func.__get__(instance, owner)
        return Invoker(self._stub._class_service(type(instance)), self._func.__name__)

    def __reduce__(self) -> Any:
        # A class shipped by value carries the plain function: containers need no app layer for it.
        return (copy.copy, (self._func,))

    def __getattr__(self, name: str) -> Any:
        # A module-level @stub.function: f.call(x), f.remote(x), ...
        if name.startswith("_"):
            raise AttributeError(name)
        if self._function is None:
            self._function = Function(self._func, self._stub, self._options)
        return getattr(self._function, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)


class StubClass(Service):
    """A class with ``@stub.function`` methods: one pool, dunder hooks with the exception (the reference)."""

    def __init__(self, cls: type, stub: Any, options: _options.Options) -> None:
        super().__init__()
        self._user_cls = cls
        self.app = stub
        self.options = options
        self.label = cls.__name__
        self.key = ("stub", id(cls))
        self.dunder_hooks = True

    def pool_target(self) -> Any:
        return self._user_cls

    def raw_function(self, name: str) -> Any:
        attr = inspect.getattr_static(self._user_cls, name)
        return getattr(attr, "__lifepool_wrapped__", attr)

    def local_instance(self) -> Any:
        return self._user_cls()


def _no_hook() -> None:
    """Stands for a hook a class does not define (not a coroutine function)."""
