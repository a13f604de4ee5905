"""The errors lifepool raises itself.

Errors raised by *your* methods reach the caller as their own type (a
``ValueError`` stays a ``ValueError``) with the container's frames in the
traceback; the classes here describe what went wrong around them::

    LifepoolError                 base of every error below
     ├── EnterError               a container's enter hook failed; the pool is broken
     │                            (__cause__: the original exception, with its traceback)
     ├── ContainerCrashedError    a container process died while it held the call
     ├── CallTimeoutError         a call ran past the pool's ``timeout`` (also a TimeoutError)
     ├── RemoteError              an exception that could not cross the process
     │                            boundary: its type name and formatted traceback
     └── ExitHookError            exit hooks that raised or were killed after the
                                  grace period (also an ExceptionGroup of them)

    KeyboardInterrupt
     ├── Terminated               raised in the main thread by the SIGTERM handler a
     │                            pool installs (see the README, "Signals")
     └── ParentExitedError        what exit hooks receive when the parent process
                                  vanished without shutting the pool down
"""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: a container imports this module at start, and never typing)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Self

__all__ = [
    "CallTimeoutError",
    "ContainerCrashedError",
    "EnterError",
    "ExitHookError",
    "LifepoolError",
    "ParentExitedError",
    "RemoteError",
    "Terminated",
]


class LifepoolError(Exception):
    """Base class of the errors lifepool raises itself."""


class EnterError(LifepoolError):
    """A container's enter hook raised; every pending and later call fails with this.

    ``__cause__`` is the exception the hook raised, with its container traceback.
    """


class ContainerCrashedError(LifepoolError):
    """The container process running a call died (segfault, ``os._exit``, kill -9, OOM)."""

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:  # keep the keyword attributes across pickling
        return (_rebuild_crash, (self.args, self.index, self.pid, self.exitcode))


def _rebuild_crash(
    args: tuple[Any, ...], index: int | None, pid: int | None, exitcode: int | None
) -> ContainerCrashedError:
    return ContainerCrashedError(*args, index=index, pid=pid, exitcode=exitcode)


class CallTimeoutError(LifepoolError, TimeoutError):
    """A call ran longer than the pool's ``timeout`` (counted from when it started running)."""


class RemoteError(LifepoolError):
    """An exception that could not be carried across processes as itself.

    ``type_name`` is the original exception's qualified type name and
    ``remote_traceback`` its traceback, formatted where it was raised.
    """

    def __init__(self, type_name: str, remote_traceback: str, message: str = "") -> None:
        super().__init__(type_name, remote_traceback, message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.message = message

    def __str__(self) -> str:
        head = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{head}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"


class ExitHookError(LifepoolError, ExceptionGroup):
    """Exit hooks that raised, or that were killed after ``exit_grace_period``.

    An ``ExceptionGroup``: ``.exceptions`` holds one error per failing container,
    each with its container traceback and a note naming the container. An
    exit hook that raised a ``BaseException`` that is not an ``Exception``
    (``SystemExit``, ``KeyboardInterrupt``, ``asyncio.CancelledError``), which
    an ``ExceptionGroup`` cannot hold, is there as a :class:`LifepoolError`
    whose ``__cause__`` is what it raised.
    """

    def __new__(cls, message: str, exceptions: Sequence[BaseException]) -> Self:
        return super().__new__(cls, message, [_as_exception(error) for error in exceptions])

    def __init__(self, message: str, exceptions: Sequence[BaseException]) -> None:
        super().__init__(message, self.exceptions)

    def derive(self, excs: Sequence[Exception]) -> ExitHookError:  # type: ignore[override]
        """An ExitHookError with the same message over *excs* (what ``ExceptionGroup.split`` uses)."""
        return ExitHookError(self.message, excs)


def _as_exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    stand_in = LifepoolError(f"the exit hook raised {type(error).__name__}: {error}")
    stand_in.__cause__ = error
    return stand_in


class ParentExitedError(KeyboardInterrupt):
    """Passed to a container's exit hook when its parent process is gone (for example kill -9)."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM: a KeyboardInterrupt that names the signal.

    Raised in the main thread by the handler a pool installs over the default
    one, so that ``with`` blocks unwind and exit hooks run; when it ends the
    program uncaught, the process then dies by SIGTERM as it would have.
    """

    def __init__(self, signum: int = 15, message: str = "") -> None:
        import signal

        self.signum = signum
        super().__init__(message or f"received {signal.Signals(signum).name}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signum, str(self)))


# Show the public names in tracebacks ("lifepool.EnterError"); pickling finds
# them there too, since the package re-exports every one.
for _name in __all__:
    globals()[_name].__module__ = "lifepool"
del _name


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, unless *exc* will not take one (its ``__notes__`` is not a list).

    An exception class with a catch-all ``__getattr__``, or one whose
    ``__notes__`` was set to a tuple, makes ``add_note`` raise TypeError; a
    note lifepool adds must never turn the user's error into another one.
    """
    try:
        exc.add_note(note)
    except (TypeError, AttributeError):
        pass


def note_origin(error: BaseException, where: str, label: str) -> None:
    """Note on *error* the container (*where*) and method (*label*) it came from, unless it says so itself.

    lifepool's own errors name their container in their message; a
    RemoteError, standing in for the user's error, does not.
    """
    if not isinstance(error, LifepoolError) or isinstance(error, RemoteError):
        add_note(error, f"lifepool: raised in {where} by {label}")
