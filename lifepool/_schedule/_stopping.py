"""Deadlines and stopping: call timeouts, armed kills, shutdown, abort, kill, and the dispatcher's own failure."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from concurrent.futures import CancelledError

from .. import _wire
from .._exceptions import CallTimeoutError, LifepoolError
from .._status import ContainerState, PoolState
from ._calls import Call, cancel_queued
from ._records import SERVING
from ._tables import Tables

logger = logging.getLogger("lifepool")

# After a timed-out call is interrupted, how long it may take to unwind before
# its container is killed and replaced.
TIMEOUT_UNWIND_SECONDS = 2.0


class Stopping(Tables):
    """Deadlines that come due, and every way a pool stops (shutdown, abort, kill, its own failure)."""

    def _check_deadlines(self) -> None:
        for when, what in self._timers.due():
            if isinstance(what, tuple):
                record, purpose = what
                if purpose == "scaledown":
                    self._scaledown_check(record)
                    continue
                armed = record.kills.get(purpose)
                if armed is not None and armed[0] == when and record.state is not ContainerState.DEAD:
                    self._kill(record, armed[1], timed_out=True)
            elif (call := what()) is not None:  # (a weak reference: see Routing._take)
                self._call_timed_out(call)

    def _call_timed_out(self, call: Call) -> None:
        record = call.container
        if call.done() or record is None or call.id not in record.inflight:
            return
        logger.warning(
            "lifepool pool %r: %s timed out after %ss in %s; interrupting it",
            self.name,
            call.label,
            self.timeout,
            record.describe(),
        )
        record.calls_failed += 1
        self._fail(
            call,
            CallTimeoutError(f"{call.label} did not finish within timeout={self.timeout}s in {record.describe()}"),
            None,
        )
        self._interrupt(record, call)
        self._arm_kill(
            record,
            f"unwind {call.id}",  # disarmed when its answer comes (see _result)
            TIMEOUT_UNWIND_SECONDS,
            f"a timed-out call ({call.label}) did not unwind within {TIMEOUT_UNWIND_SECONDS}s",
        )

    def _shutdown(self, cancel_futures: bool, exit_blob: bytes | None, abort: bool) -> None:
        """The "shutdown" command: stop taking calls; with *abort*, interrupt what runs and bound the stop."""
        if exit_blob is not None and self._exit_blob is None:
            self._exit_blob = exit_blob
        if cancel_futures or abort:
            self._cancel_pending()
        if abort and not self._abort:
            self._abort = True
            for record in self.slots:
                if record is None or record.state is ContainerState.DEAD:
                    continue
                if record.inflight:
                    # Every frame first, then one signal: the container reads
                    # them all when the signal comes, so none of the calls
                    # waiting in its pipe (sent ahead) starts afterwards.
                    for call in record.inflight.values():
                        call.interrupted = True
                    self._send(record, *[_wire.frame(_wire.INTERRUPT, c) for c in record.inflight])
                    self._signal(record)
                elif record.state is ContainerState.ENTERING:
                    self._signal(record)
                # The grace period bounds the whole stop: unwinding the
                # interrupted call (or enter hook) plus the exit hook.
                self._arm_kill(
                    record,
                    "stop",
                    self.grace,
                    f"it did not stop within exit_grace_period={self.grace}s after an interrupt",
                )
        self.state = PoolState.CLOSING

    def _stop_now(self, reason: str) -> None:
        """SIGKILL every container; what is queued is dropped, and nothing starts again.

        A kill means "stop now" (a second Ctrl-C), even when it comes while the
        pool was letting its queue finish: it must not be read as a crash, which
        a pool still running queued calls answers with a replacement container.
        """
        self.refuse(lambda: RuntimeError(f"cannot schedule new calls: pool {self.name!r} was killed"))
        self._cancel_pending()
        self._abort = True  # (so _reap starts no replacement)
        self.state = PoolState.CLOSING
        for record in self.slots:
            if record is not None and record.state is not ContainerState.DEAD:
                self._kill(record, reason)

    def _cancel_pending(self, *, drop: bool = True) -> None:
        """Cancel the queued calls; with *drop*, empty the queues.

        A queued call that was sent once already (sent ahead and given back,
        or queued again after its container died) is running, which a Future
        cannot leave for cancelled: dropped, it fails with CancelledError.
        Also from a caller's thread, without *drop*: cancelling is safe from
        any thread, and the dispatcher skips a cancelled call when it takes
        it (the running ones are left to the dispatcher).
        """
        if drop:
            calls: Iterable[Call] = self._drain_pending()
        else:
            calls = [call for pending in self.pending.values() for call in list(pending)]
        for call in calls:
            if cancel_queued(call):
                if call.sink is not None:
                    call.sink(("error", CancelledError()))
            elif drop and not call.done():
                dropped = CancelledError(f"{call.label} was queued again, then dropped by the pool's stop")
                self._fail(call, dropped, None)

    def _progress_shutdown(self) -> None:
        if self.state is not PoolState.CLOSING:
            return
        if self._any_pending() and not any(r is not None and r.state is not ContainerState.DEAD for r in self.slots):
            # No container left to run them (all failed to enter): fail, never hang.
            for call in self._drain_pending():
                error = self.enter_error() if self.enter_failure else LifepoolError("no container left to run it")
                self._fail(call, error, None)
        if self._any_pending():
            return
        for record in self.slots:
            if record is None:
                continue
            if (record.state in SERVING or record.state is ContainerState.RETIRING) and not record.inflight:
                self._send_exit(record, self._exit_blob)
            elif record.state is ContainerState.STARTING and self.backend.closing_start_wait is not None:
                wait = self.backend.closing_start_wait
                reason = f"it had not started {wait}s after its pool began closing with nothing to run"
                self._arm_kill(record, "start", wait, reason)  # (disarmed when it reports ENTERING)

    def _fail_everything(self, error: BaseException) -> None:
        failure = LifepoolError(f"the lifepool dispatcher of pool {self.name!r} failed: {error!r}")
        failure.__cause__ = error
        self.refuse(lambda: failure)
        for call in self._in_hand:
            self._fail(call, failure, None)
        for call in self._drain_pending():
            self._fail(call, failure, None)
        for record in self.slots:
            if record is None:
                continue
            for call in record.inflight.values():
                self._fail(call, failure, None)
            if record.transport is not None and record.state is not ContainerState.DEAD:
                record.transport.kill()
                with contextlib.suppress(Exception):  # (every call above is failed already; nothing may hang)
                    record.transport.reap()
