"""Lifecycle decorators and the discovery of hooks and remote methods on a class.

Two styles are supported, as in Modal:

* context-manager dunders: ``__enter__``/``__exit__``, or ``__aenter__``/``__aexit__``
  (which win when both are defined);
* ``@lifepool.enter()`` / ``@lifepool.exit()`` on methods taking only ``self``;
  they run after ``__enter__`` / before ``__exit__``, in definition order
  (base classes first).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_HOOK_ATTR = "__lifepool_hook__"


def enter() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method (``self`` only, sync or async) to run once when a container starts."""
    return _marker("enter")


def exit() -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # noqa: A001 - Modal's name
    """Mark a method (``self`` only, sync or async) to run once when a container stops."""
    return _marker("exit")


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


def inspect_class(cls: type) -> ClassInfo:
    enter_hooks: list[str] = []
    exit_hooks: list[str] = []
    methods: set[str] = set()
    for name in _ordered_names(cls):
        attr = inspect.getattr_static(cls, name)
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        kind = getattr(func, _HOOK_ATTR, None)
        if kind == "enter":
            enter_hooks.append(name)
        elif kind == "exit":
            exit_hooks.append(name)
        elif not name.startswith("_") and callable(func):
            methods.add(name)
    return ClassInfo(cls.__qualname__, frozenset(methods), tuple(enter_hooks), tuple(exit_hooks))


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
