"""Modal's namespace over lifepool: change ``import modal`` to ``from lifepool import modal``.

Re-exports only; the names live in :mod:`lifepool` and :mod:`lifepool.app`.
"""

from . import batched, concurrent, current_container, enter, exit
from .app import (
    App,
    Cls,
    Function,
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
from .app.exception import Error

__all__ = [
    "App",
    "Cls",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "Retries",
    "Secret",
    "Stub",
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
    "parameter",
]
