"""Modal's exception names (``modal.exception``), and how lifepool's own errors map onto them.

An ``except`` clause written for Modal catches the same failures here. The
errors the app layer raises for lifepool's own failures are of both trees at
once, so ``except lifepool.CallTimeoutError`` keeps working too::

    Error                              base of Modal's errors
     ├── InvalidError                  a wrong use of the API (bad option, missing parentheses)
     ├── ExecutionError                something unexpected at run time: the app is not
     │                                 running, an enter hook failed (also EnterError), a
     │                                 container crashed (also ContainerCrashedError)
     ├── RemoteError                   an exception that could not cross processes
     │                                 (also lifepool.RemoteError)
     ├── TimeoutError
     │    └── FunctionTimeoutError     a call ran past ``timeout`` (also CallTimeoutError)
     └── NotFoundError, ...            cloud errors, defined so that ``except`` clauses resolve
    InputCancellation (BaseException)  named for compatibility; lifepool raises
                                       ``concurrent.futures.CancelledError`` for a cancelled call

Errors your own functions raise arrive as themselves (a ``ValueError`` stays a
``ValueError``), as in Modal.
"""

from __future__ import annotations

from .._exceptions import CallTimeoutError, ContainerCrashedError, EnterError
from .._exceptions import RemoteError as _LifepoolRemoteError

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "ClientClosed",
    "ConnectionError",
    "DeprecationError",
    "Error",
    "ExecutionError",
    "FunctionTimeoutError",
    "InputCancellation",
    "InteractiveTimeoutError",
    "InternalError",
    "InvalidError",
    "NotFoundError",
    "OutputExpiredError",
    "PendingDeprecationError",
    "RemoteError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "TimeoutError",
    "VersionError",
]


class Error(Exception):
    """Base class of Modal's errors."""


class InvalidError(Error):
    """Raised when the API is used in a way Modal rejects."""


class ExecutionError(Error):
    """Raised when something unexpected happened at run time."""


class RemoteError(Error):
    """Raised when an error happened on the other side (here: could not cross processes)."""


class TimeoutError(Error):  # noqa: A001 - Modal's name
    """Base class of Modal's timeouts."""


class FunctionTimeoutError(TimeoutError):
    """Raised when a call runs longer than its ``timeout``."""


class InputCancellation(BaseException):
    """Modal raises this in a container whose input was cancelled (named here for compatibility)."""


class NotFoundError(Error):
    """A named object was not found."""


class AlreadyExistsError(Error):
    """A named object exists already."""


class AuthError(Error):
    """Cloud authentication failed (never raised locally)."""


class ConnectionError(Error):  # noqa: A001 - Modal's name
    """Connecting to the cloud failed (never raised locally)."""


class VersionError(Error):
    """A client version problem (never raised locally)."""


class InternalError(Error):
    """An internal error."""


class ClientClosed(Error):
    """The client was closed."""


class SandboxTimeoutError(TimeoutError):
    """Sandboxes are not provided locally; named for compatibility."""


class SandboxTerminatedError(Error):
    """Sandboxes are not provided locally; named for compatibility."""


class InteractiveTimeoutError(TimeoutError):
    """Named for compatibility."""


class OutputExpiredError(TimeoutError):
    """Named for compatibility."""


class DeprecationError(UserWarning):
    """Modal's deprecation warning category."""


class PendingDeprecationError(UserWarning):
    """Modal's pending-deprecation warning category."""


# What the app layer raises for lifepool's own errors: both trees at once.
class _FunctionTimeout(FunctionTimeoutError, CallTimeoutError):
    pass


class _Crashed(ExecutionError, ContainerCrashedError):
    pass


class _EnterFailed(ExecutionError, EnterError):
    pass


class _Remote(RemoteError, _LifepoolRemoteError):
    pass


_MAPPED: dict[type[BaseException], type[BaseException]] = {
    CallTimeoutError: _FunctionTimeout,
    ContainerCrashedError: _Crashed,
    EnterError: _EnterFailed,
    _LifepoolRemoteError: _Remote,
}


def translate(error: BaseException) -> BaseException:
    """*error* as Modal's tree would have it: the same object when no mapping applies.

    The new exception keeps the original's message, attributes, notes,
    traceback and chain.
    """
    mapped = _MAPPED.get(type(error))
    if mapped is None:
        return error
    new: BaseException = mapped.__new__(mapped)  # (no __init__: the original's fields are copied below)
    new.args = error.args
    new.__dict__.update(error.__dict__)
    new.__traceback__ = error.__traceback__
    new.__cause__ = error.__cause__
    new.__context__ = error.__context__
    new.__suppress_context__ = error.__suppress_context__
    return new
