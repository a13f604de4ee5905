"""lifepool: a pool of worker processes with a container lifecycle.

Each container runs your class's enter hook once, serves many method calls in
parallel with the others, and runs its exit hook once at the end -- even when
things go wrong::

    with lifepool.LifecyclePool(Model, containers=4) as p:
        y = p.predict.call(x)
        ys = list(p.predict.map(xs))
"""

from ._context import Container, current_container
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

TYPE_CHECKING = False  # (not typing.TYPE_CHECKING: a container need not import typing)
if TYPE_CHECKING:
    from . import app, modal
    from ._handles import RemoteMethod
    from ._pool import LifecyclePool
    from ._ray import RayBackend
    from ._status import ContainerState, ContainerStatus, PoolState, PoolStatus
    from .app import (
        App,
        FunctionCall,
        Image,
        Retries,
        Secret,
        Stub,
        current_function_call_id,
        current_input_id,
        exception,
        is_local,
        method,
        parameter,
    )
del TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "App",
    "CallTimeoutError",
    "Container",
    "ContainerCrashedError",
    "ContainerState",
    "ContainerStatus",
    "EnterError",
    "ExitHookError",
    "FunctionCall",
    "Image",
    "LifecyclePool",
    "LifepoolError",
    "ParentExitedError",
    "PoolState",
    "PoolStatus",
    "RayBackend",
    "RemoteError",
    "RemoteMethod",
    "Retries",
    "Secret",
    "Stub",
    "Terminated",
    "app",
    "batched",
    "concurrent",
    "current_container",
    "current_function_call_id",
    "current_input_id",
    "enter",
    "exception",
    "exit",
    "is_local",
    "method",
    "modal",
    "parameter",
]

# The pool's side (loky, asyncio, the dispatcher) and the Modal-style app layer
# are imported on first use: a container imports this package too, and what it
# imports is on the path to every pool's first result.
_APP_NAMES = (
    "App",
    "FunctionCall",
    "Image",
    "Retries",
    "Secret",
    "Stub",
    "current_function_call_id",
    "current_input_id",
    "exception",
    "is_local",
    "method",
    "parameter",
)
_LAZY = {
    "ContainerState": "._status",
    "ContainerStatus": "._status",
    "LifecyclePool": "._pool",
    "PoolState": "._status",
    "PoolStatus": "._status",
    "RayBackend": "._ray",  # (imports ray: only when asked for)
    "RemoteMethod": "._handles",
    **dict.fromkeys(_APP_NAMES, ".app"),
}
_SUBMODULES = ("app", "modal")


def __getattr__(name: str) -> object:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # (the import sets the attribute too)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lifepool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
