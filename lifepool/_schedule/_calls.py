"""Calls: a call is its own ``concurrent.futures.Future``, and the helpers that complete one.

A ``Call`` is made by the caller's thread (``LifecyclePool._make_call``), queued,
taken by the dispatcher, sent to a container, and completed by whoever gets its
answer: the dispatcher thread, or the caller itself on the fast path (see
``_lending``). Nothing here knows about containers beyond the record a call is
on.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED
from concurrent.futures._base import PENDING as _PENDING
from typing import TYPE_CHECKING, Any

from .. import _wire
from .._exceptions import RemoteError, note_origin

if TYPE_CHECKING:
    from ._records import ContainerRecord

_NOT_STARTABLE = (CANCELLED_AND_NOTIFIED, FINISHED)  # Future states set_running_or_notify_cancel refuses


class _FutureCondition(_thread.RLock):  # type: ignore[misc]  # (final in typeshed; subclassable at run time)
    """A Future's ``_condition``: ``threading.Condition``'s interface on one C lock.

    ``concurrent.futures.Future`` makes a ``threading.Condition`` per Future:
    a Python object holding an RLock, a deque and five bound methods, eight
    objects for the garbage collector to track. A pipelined ``spawn`` loop
    keeps thousands of Futures alive, and the collections that their
    allocations trigger cost more than the rest of the call. This is the
    lock itself, with ``wait``/``notify``/``notify_all`` on top (the
    Condition's own algorithm: one short-lived lock per waiter); its waiter
    list is made by the first ``wait``.
    """

    __slots__ = ("_waiters",)
    _waiters: list[_thread.LockType]
    # The C RLock's private helpers that threading.Condition uses (not in typeshed).
    _is_owned: Callable[[], bool]
    _release_save: Callable[[], Any]
    _acquire_restore: Callable[[Any], None]

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _thread.allocate_lock()
        waiter.acquire()
        try:
            waiters = self._waiters
        except AttributeError:
            waiters = self._waiters = []  # (the first wait: most Futures are never waited on)
        waiters.append(waiter)
        saved = self._release_save()
        got = False
        try:
            if timeout is None:
                got = waiter.acquire()
            elif timeout > 0:
                got = waiter.acquire(True, timeout)
            else:
                got = waiter.acquire(False)
            return got
        finally:
            self._acquire_restore(saved)
            if not got:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = getattr(self, "_waiters", None)
        while waiters and n > 0:
            waiter = waiters[0]
            try:
                waiter.release()
            except RuntimeError:
                pass  # released by a notify that a signal cut short before it removed it
            else:
                n -= 1
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)

    def notify_all(self) -> None:
        self.notify(sys.maxsize)

    def _at_fork_reinit(self) -> None:
        super()._at_fork_reinit()  # type: ignore[misc]  # (the C RLock has it; typeshed does not say)
        self._waiters = []


class Call(Future[Any]):
    """One method call on its way through the pool, and the Future its caller gets.

    A ``concurrent.futures.Future`` in every respect, whose ``_condition`` is
    a :class:`_FutureCondition`: one object, besides the Future, where the
    stdlib makes eight. The call's own fields live beside the Future's, so a
    Future and its call never point at each other (a cycle only the
    collector frees). A blocking ``.call`` that runs on a borrowed container
    and ends normally never touches the Future's side (see
    :meth:`Lending.run_borrowed`); every other path (queued calls, errors
    on the way, interrupts, crashes) completes it.
    """

    __slots__ = (
        "attempts",
        "body",
        "chunk",
        "container",
        "crashes",
        "id",
        "interrupted",
        "kind",
        "label",
        "revoking",
        "sink",
        "stream",
    )

    def __init__(
        self,
        call_id: int,
        body: bytes,
        label: str,
        kind: str | None = None,
        sink: Callable[[tuple[str, Any]], None] | None = None,
        stream: bool = False,
        chunk: bool = False,
    ) -> None:
        # Future.__init__'s fields (the same in 3.11 to 3.13), with the cheaper condition.
        self._condition = _FutureCondition()  # type: ignore[assignment]  # (Condition's interface, see above)
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.id = call_id
        self.body = body  # dumps((name or callable, args, kwargs)), made by the caller
        self.label = label  # "Model.predict", for error notes
        self.kind = kind  # None, or the name of a @batched method (its own capacity)
        self.sink = sink  # streams: receives ("item", value), ("end", None), ("error", exc)
        self.stream = stream  # a remote_gen call: runs beside other calls in its container
        self.chunk = chunk  # a chunk of map inputs: a few milliseconds of work
        self.revoking = False  # sent ahead, and asked back for an idle container (see _steal)
        self.interrupted = False  # the parent asked its container to interrupt it: never sent again
        self.attempts = 0  # times sent to a container
        self.crashes = 0  # times its container died while it ran
        self.container: ContainerRecord | None = None

    def set_result(self, result: Any) -> None:
        self._let_go()
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        self._let_go()
        super().set_exception(exception)

    def _let_go(self) -> None:
        """Drop the encoded arguments and unlink their shared memory, before anyone can see the call done.

        A finished call is never sent again, and a caller keeping many
        finished Futures would keep them all. (Before: the stdlib wakes the
        waiters first and runs the callbacks after, so a caller could see
        the result while the segments were still there.)
        """
        body, self.body = self.body, b""
        if body and _wire.has_segments(body):
            _wire.discard(body)

    def _invoke_callbacks(self) -> None:
        """Run on every completion (a result, an error, a cancel), by the thread that completes it.

        The callbacks run as the stdlib runs them, but a BaseException one of
        them raises (``sys.exit()``) on the dispatcher thread is logged like
        any error: it would otherwise end the dispatcher, and with it the pool.
        """
        if self.body:
            self._let_go()  # (a cancel: set_result and set_exception did it already)
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                futures_logger.exception("exception calling callback for %r", self)
            except BaseException:
                if not isinstance(threading.current_thread(), DispatcherThread):
                    raise
                futures_logger.exception("exception calling callback for %r (on lifepool's dispatcher thread)", self)


class DispatcherThread(threading.Thread):
    """A pool's dispatcher thread (a class of its own: Call._invoke_callbacks tells it apart)."""


futures_logger = logging.getLogger("concurrent.futures")  # where the stdlib reports failing callbacks


def start_running(call: Call) -> bool:
    """``set_running_or_notify_cancel``; False also for a Future its holder completed while it was queued.

    A cancelled Future becomes "cancelled and notified" (``wait`` and
    ``as_completed`` see it done) the first time; False again after that.
    """
    if call._state in _NOT_STARTABLE:  # (no "unexpected state" logged)
        return False
    try:
        return call.set_running_or_notify_cancel()
    except RuntimeError:  # (Future.set_result/set_exception by the user: allowed on any Future)
        return False


def cancel_queued(call: Call) -> bool:
    """Cancel a queued *call* and wake whoever waits for it now; False if it runs, or was done already."""
    if call.cancelled():
        start_running(call)  # (cancelled by its holder: its waiters are woken now, not when it is taken)
        return False
    if call.done() or not call.cancel():
        return False
    start_running(call)  # (a cancelled Future: marked notified, its waiters woken)
    return True


def decode_answer(call: Call, record: ContainerRecord, ok: int, body: memoryview) -> tuple[bool, Any]:
    """A RESULT's outcome, as Dispatcher._result would set it on the Future."""
    if ok:
        try:
            return True, _wire.loads(body)
        except BaseException as error:  # noqa: BLE001
            return False, undecodable(call, error)
    raised = _wire.load_exception(bytes(body))
    note_origin(raised, record.describe(), call.label)
    return False, raised


def undecodable(call: Call, error: BaseException) -> RemoteError:
    return RemoteError(
        "result", traceback.format_exc(), f"a value sent back by {call.label} could not be unpickled: {error!r}"
    )
