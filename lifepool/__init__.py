"""lifepool: a pool of worker processes with a container lifecycle.

Each container runs your class's enter hook once, serves many method calls in
parallel with the others, and runs its exit hook once at the end -- even when
things go wrong::

    with lifepool.LifecyclePool(Model, containers=4) as p:
        y = p.predict.call(x)
        ys = list(p.predict.map(xs))
"""

from ._exceptions import (
    CallTimeoutError,
    ContainerCrashedError,
    EnterError,
    ExitHookError,
    LifepoolError,
    ParentExitedError,
    RemoteError,
    Terminated,
)
from ._hooks import batched, concurrent, enter, exit
from ._worker import Container, current_container

TYPE_CHECKING = False  # (not typing.TYPE_CHECKING: a container need not import typing)
if TYPE_CHECKING:
    from ._handles import RemoteMethod
    from ._pool import LifecyclePool
    from ._schedule import ContainerState, PoolState
    from ._status import ContainerStatus, PoolStatus
del TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "CallTimeoutError",
    "Container",
    "ContainerCrashedError",
    "ContainerState",
    "ContainerStatus",
    "EnterError",
    "ExitHookError",
    "LifecyclePool",
    "LifepoolError",
    "ParentExitedError",
    "PoolState",
    "PoolStatus",
    "RemoteError",
    "RemoteMethod",
    "Terminated",
    "batched",
    "concurrent",
    "current_container",
    "enter",
    "exit",
]

# The pool's side (loky, asyncio, the dispatcher) is imported on first use:
# a container imports this package too, and what it imports is on the path to
# every pool's first result.
_LAZY = {
    "ContainerState": "._schedule",
    "ContainerStatus": "._status",
    "LifecyclePool": "._pool",
    "PoolState": "._schedule",
    "PoolStatus": "._status",
    "RemoteMethod": "._handles",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lifepool' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
