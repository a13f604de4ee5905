"""Lifecycle decorators and the discovery of hooks and remote methods on a class.

Two styles are supported, as in Modal:

* context-manager dunders: ``__enter__``/``__exit__``, or ``__aenter__``/``__aexit__``
  (which win when both are defined);
* ``@lifepool.enter()`` / ``@lifepool.exit()`` on methods taking only ``self``;
  they run after ``__enter__`` / before ``__exit__``, in definition order
  (base classes first); ``@lifepool.enter(snap=True)`` hooks run before
  ``__enter__`` and the other ``@lifepool.enter()`` hooks (once, in the
  template, with ``start_method="template"``).

A class marked ``__lifepool_dunder_hooks__ = False`` (what ``@app.cls()`` of
``lifepool.App`` sets, following today's Modal) runs only the decorated hooks:
its dunders are left alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

TYPE_CHECKING = False  # (typing is not imported at run time: containers need not pay for it)
if TYPE_CHECKING:
    from typing import Any

_HOOK_ATTR = "__lifepool_hook__"
_BATCHED_ATTR = "__lifepool_batched__"
_CONCURRENT_ATTR = "__lifepool_max_inputs__"
_SNAP_ATTR = "__lifepool_snap__"
_DUNDER_HOOKS_ATTR = "__lifepool_dunder_hooks__"  # False: __enter__/__exit__ & co. are not hooks
_WRAPPED_ATTR = "__lifepool_wrapped__"  # a descriptor in a class body standing for this function


def enter(*, snap: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method (``self`` only, sync or async) to run once when a container starts.

    ``snap=True`` (Modal's memory-snapshot hooks) runs the hook once, in the
    pool's template process, before any container is forked from it (then
    ``__enter__`` and the other enter hooks run in each container): what it
    builds is shared copy-on-write. With another start method, or when the
    template has threads after its snap hooks, it runs first in each container.
    """
    if not isinstance(snap, bool):
        raise TypeError(f"snap must be a bool, not {type(snap).__name__}")
    mark = _marker("enter")
    if not snap:
        return mark

    def mark_snap(func: Callable[..., Any]) -> Callable[..., Any]:
        mark(func)
        setattr(func, _SNAP_ATTR, True)
        return func

    return mark_snap


def exit() -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # noqa: A001 - Modal's name
    """Mark a method (``self`` only, sync or async) to run once when a container stops."""
    return _marker("exit")


def concurrent(*, max_inputs: int, target_inputs: int | None = None) -> Callable[[type], type]:
    """Class decorator: each container runs up to *max_inputs* calls of this class at once.

    Async methods run as tasks on the container's event loop, sync methods on
    that many threads. The pool uses the larger of this and its own ``max_inputs``.
    *target_inputs* (Modal's autoscaling hint) is checked and otherwise
    ignored. It may also decorate a function given to ``@app.function()``.
    """
    if not isinstance(max_inputs, int) or isinstance(max_inputs, bool) or max_inputs < 1:
        raise ValueError(f"max_inputs must be an int >= 1, not {max_inputs!r}")
    if target_inputs is not None and (
        not isinstance(target_inputs, int) or isinstance(target_inputs, bool) or not 1 <= target_inputs <= max_inputs
    ):
        raise ValueError(f"target_inputs must be an int from 1 to max_inputs, not {target_inputs!r}")

    def decorate(cls: type) -> type:
        if not isinstance(cls, type) and not inspect.isfunction(cls):
            raise TypeError(f"@lifepool.concurrent() decorates a class (or an @app.function), not {cls!r}")
        setattr(cls, _CONCURRENT_ATTR, max_inputs)
        return cls

    return decorate


def batched(*, max_batch_size: int, wait_ms: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Method decorator: callers pass one input, the container calls the method with lists.

    Waiting inputs are grouped into batches of at most *max_batch_size*,
    waiting at most *wait_ms* milliseconds for a batch to fill. Each parameter
    receives a list (one element per input) and the method must return a list
    of the same length, whose items go back to the callers in order.
    """
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, not {max_batch_size!r}")
    if not isinstance(wait_ms, (int, float)) or isinstance(wait_ms, bool) or not 0 <= wait_ms < float("inf"):
        raise ValueError(f"wait_ms must be a finite number >= 0, not {wait_ms!r}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise TypeError(f"@lifepool.batched() decorates a method, not {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError("@lifepool.batched() methods return a list; they cannot be generators")
        setattr(func, _BATCHED_ATTR, (max_batch_size, float(wait_ms)))
        return func

    return decorate


def _marker(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise TypeError(f"@lifepool.{kind}() decorates a method, not {func!r}")
        setattr(func, _HOOK_ATTR, kind)
        return func

    return mark


@dataclass(frozen=True)
class ClassInfo:
    """What the pool needs to know about a target class, computed once in the parent."""

    name: str
    methods: frozenset[str]  # public methods callable through handles
    enter_hooks: tuple[str, ...]  # @enter() methods, in order
    exit_hooks: tuple[str, ...]  # @exit() methods, in order
    generators: frozenset[str]  # methods that are (async) generators: called with remote_gen
    batched: dict[str, tuple[int, float]]  # @batched methods: (max_batch_size, wait_ms)
    max_inputs: int  # from @concurrent(max_inputs=N), else 1
    dunder_hooks: bool = True  # __enter__/__exit__ (and the async ones) are hooks (False in App mode)
    snap_hooks: tuple[str, ...] = ()  # @enter(snap=True) methods, in order (the first of enter_hooks)


def inspect_class(cls: type) -> ClassInfo:
    snap_hooks: list[str] = []
    enter_hooks: list[str] = []
    exit_hooks: list[str] = []
    methods: set[str] = set()
    generators: set[str] = set()
    batched: dict[str, tuple[int, float]] = {}
    for name in _ordered_names(cls):
        attr = inspect.getattr_static(cls, name)
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        func = getattr(func, _WRAPPED_ATTR, func)  # (the app layer's Stub methods are descriptors)
        kind = getattr(func, _HOOK_ATTR, None)
        if kind == "enter":
            (snap_hooks if getattr(func, _SNAP_ATTR, False) else enter_hooks).append(name)
        elif kind == "exit":
            exit_hooks.append(name)
        elif not name.startswith("_") and callable(func):
            methods.add(name)
            if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
                generators.add(name)
            if hasattr(func, _BATCHED_ATTR):
                batched[name] = getattr(func, _BATCHED_ATTR)
    return ClassInfo(
        cls.__qualname__,
        frozenset(methods),
        (*snap_hooks, *enter_hooks),
        tuple(exit_hooks),
        frozenset(generators),
        batched,
        getattr(cls, _CONCURRENT_ATTR, 1),
        getattr(cls, _DUNDER_HOOKS_ATTR, True) is not False,
        tuple(snap_hooks),
    )


def _ordered_names(cls: type) -> list[str]:
    """Attribute names of *cls* and its bases in definition order, base classes first.

    A name a subclass overrides keeps the place where a base class first defined it.
    """
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            names.update(dict.fromkeys(klass.__dict__))
    return list(names)


def has_async_enter(cls: type) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, "__aenter__", None))


def is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)
