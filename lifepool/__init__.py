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
from ._handles import RemoteMethod
from ._hooks import batched, concurrent, enter, exit
from ._pool import LifecyclePool
from ._worker import Container, current_container

__version__ = "0.1.0"

__all__ = [
    "CallTimeoutError",
    "Container",
    "ContainerCrashedError",
    "EnterError",
    "ExitHookError",
    "LifecyclePool",
    "LifepoolError",
    "ParentExitedError",
    "RemoteError",
    "RemoteMethod",
    "Terminated",
    "batched",
    "concurrent",
    "current_container",
    "enter",
    "exit",
]
