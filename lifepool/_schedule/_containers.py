"""Containers: start, read, signal, stop, kill, reap; crashes, replacements and scaling.

Every container's life goes through here: started by the backend (a
Transport), its messages read, its exit asked for, its kills armed and
carried out, its death reaped, its calls failed or retried when it died,
and the pool's size kept to the rule in ``_capacity``.
"""

from __future__ import annotations

import logging
import selectors
import threading
import time

from .. import _wire
from .._exceptions import ContainerCrashedError, EnterError
from .._status import ContainerState, PoolState
from ._calls import Call
from ._records import COMING, LEAVING, SERVING, ContainerRecord, describe_exit
from ._records import transport as _transport
from ._tables import Tables

logger = logging.getLogger("lifepool")


class Containers(Tables):
    """Each container's life, from its start to its reaping, and how many there are."""

    def _start_container(self, index: int) -> None:
        previous = self.slots[index]
        generation = 0 if previous is None else previous.generation + 1
        record = ContainerRecord(index, generation, time.monotonic())
        self.slots[index] = record
        self._active += 1
        self._coming += 1
        try:
            transport = self.backend.start(index, self.target_blob, self.worker_options)
        except BaseException as error:  # noqa: BLE001 - the pool reports it as an enter failure
            self._leaving(record, ContainerState.DEAD)
            self._enter_failed(record, error)
            return
        record.transport = transport
        record.conn = transport.messages
        record.pid = transport.pid
        self._watch(record)
        self._selector.register(transport.sentinel, selectors.EVENT_READ, ("sentinel", record))
        if previous is not None and previous.entered and not previous.scaled_down:
            logger.info(
                "lifepool pool %r: started replacement container %d (pid %s) for pid %s",
                self.name,
                index,
                record.pid,
                previous.pid,
            )
        else:
            logger.info("lifepool pool %r: started %s", self.name, record.describe())

    def _entered(self, record: ContainerRecord) -> None:
        """READY: it serves from now on, and owes exactly one exit."""
        record.entered = True
        record.state = ContainerState.READY
        record.enter_seconds = now = time.monotonic()
        record.enter_seconds -= record.started
        record.idle_since = now
        self._coming -= 1
        logger.info("lifepool pool %r: %s entered in %.3f s", self.name, record.describe(), record.enter_seconds)
        self._offer(record)
        if self.rule.elastic:
            self._now_idle(record)

    def _leaving(self, record: ContainerRecord, state: ContainerState) -> None:
        """*record* moves to a leaving *state* (RETIRING, EXITING or DEAD): it no longer counts as active."""
        if record.state not in LEAVING:
            self._active -= 1
            if record.state in COMING:
                self._coming -= 1
        record.state = state

    # -- capacity (the rule: _capacity) ---------------------------------------
    def _scale(self) -> None:
        """Start what the rule asks for: the floor, and slots for the calls that wait."""
        if self._abort or self.enter_failure is not None:
            return
        if self.state is PoolState.RUNNING:
            floor = self.rule.minimum
        elif self.state is PoolState.CLOSING:
            floor = 0  # (only calls still queued at shutdown are started for)
        else:
            return
        if self._active >= self.rule.maximum or (self._active >= floor and not self._any_pending()):
            return  # (the common case, at no cost)
        count = self.rule.to_start(
            active=self._active,
            coming=self._coming,
            floor=floor,
            queued={kind: len(pending) for kind, pending in self.pending.items()},
            per_container=self.capacity,
        )
        # A slot frees when its container is reaped (a recycled or dying one
        # holds it until then; _scale runs again right after the reap).
        free = [i for i, slot in enumerate(self.slots) if slot is None or slot.state is ContainerState.DEAD]
        for index in free[:count]:
            self._start_container(index)
            if self.enter_failure is not None:
                return

    def _now_idle(self, record: ContainerRecord) -> None:
        """An elastic pool's container has no call left: it may leave after the window (see _scaledown_check)."""
        record.idle_since = time.monotonic()
        if not record.scaledown_armed:
            record.scaledown_armed = True
            self._timers.add(record.idle_since + self.rule.scaledown_window, (record, "scaledown"))
            if threading.current_thread() is not self.thread:
                # (a borrower gave it back: the dispatcher sleeps until its old
                # nearest deadline, and must learn of this one)
                self.wake()

    def _scaledown_check(self, record: ContainerRecord) -> None:
        """A scale-down timer came due: stop *record* if idle for the whole window, above the floor.

        One timer per container at a time, not one per call: a container that
        worked meanwhile is looked at again a window after it was last idle.
        """
        record.scaledown_armed = False
        if record.state not in SERVING or self.state is not PoolState.RUNNING:
            return  # leaving already, or the pool is stopping (it exits with the others)
        now = time.monotonic()
        window = self.rule.scaledown_window
        if record.inflight or record.borrowed or now < record.idle_since + window:
            # Busy, or idle for less than the window: look again a window on.
            record.scaledown_armed = True
            start = now if record.inflight or record.borrowed else record.idle_since
            self._timers.add(start + window, (record, "scaledown"))
            return
        if self._active <= self.rule.minimum:
            return  # the floor: it stays (looked at again once it has worked and is idle again)
        record.scaled_down = True
        logger.info(
            "lifepool pool %r: scaling down %s, idle for %.3g s (scaledown_window=%ss)",
            self.name,
            record.describe(),
            now - record.idle_since,
            window,
        )
        self._send_exit(record, None)

    def _read_container(self, record: ContainerRecord, *, drain: bool = False) -> None:
        """Read a message, and those that came with it (the selector is level-triggered:
        more data in the socket wakes it again; data read ahead would not).

        With *drain*, read everything the container sent before it died.
        """
        try:
            while True:
                self._message(record, _transport(record).recv())
                if record.conn is None or record.borrowed:
                    return
                if _transport(record).ready():
                    continue  # read ahead: select would not report it
                # (no poll() on the hot path: each call builds a new selector)
                if not drain or not _transport(record).poll():
                    return
        except (EOFError, OSError):
            # The container closed its end: it exited or died. The sentinel
            # tells us which; stop watching the pipe until then.
            self._unwatch_conn(record)

    def _unwatch_conn(self, record: ContainerRecord) -> None:
        if record.conn is not None:
            if record.watched:
                record.watched = False
                self._selector.unregister(record.conn)
            record.conn = None
            _transport(record).close_messages()

    def _enter_failed(self, record: ContainerRecord, error: BaseException) -> None:
        if self._abort or (self.state is PoolState.CLOSING and isinstance(error, KeyboardInterrupt)):
            return  # interrupted on purpose while entering: not a failure of the class
        if self.enter_failure is None:
            self.enter_failure = error
            self._enter_failed_in = record.index
            logger.error("lifepool pool %r: enter failed in %s: %r", self.name, record.describe(), error)
            self.refuse(self.enter_error)
            if self.state is PoolState.RUNNING:
                self.state = PoolState.BROKEN
        for call in self._drain_pending():
            self._fail(call, self.enter_error(), None)

    def enter_error(self) -> EnterError:
        """A fresh EnterError (each raise gets its own traceback) caused by the first enter failure."""
        error = EnterError(f"the enter hook of {self.class_name} failed in container {self._enter_failed_in}")
        error.__cause__ = self.enter_failure
        return error

    def _signal(self, record: ContainerRecord) -> None:
        if record.transport is not None and record.state is not ContainerState.DEAD:
            record.transport.interrupt()

    def _interrupt(self, record: ContainerRecord, call: Call) -> None:
        call.interrupted = True
        self._send(record, _wire.frame(_wire.INTERRUPT, call.id))
        self._signal(record)

    def _send(self, record: ContainerRecord, *frames: bytes) -> None:
        """Send *frames* (several: in one write); a container that is dying is left to its sentinel."""
        transport = record.transport
        if record.conn is None or transport is None:
            return
        if not record.watched:
            self._watch(record)  # (not while lent: the borrower reads the answer)
        try:
            transport.send(list(frames))
        except OSError:
            pass  # it is dying; its sentinel will tell

    def _send_exit(self, record: ContainerRecord, blob: bytes | None) -> None:
        self._leaving(record, ContainerState.EXITING)
        body = blob or b""
        self._send(record, _wire.frame(_wire.EXIT, 0, 1 if blob else 0, body))
        reason = f"its exit hook did not finish within exit_grace_period={self.grace}s"
        self._arm_kill(record, "exit", self.grace, reason)

    def _arm_kill(self, record: ContainerRecord, purpose: str, delay: float, reason: str) -> None:
        """SIGKILL *record* in *delay* seconds unless *purpose*'s kill is disarmed first (or armed sooner)."""
        at = time.monotonic() + delay
        armed = record.kills.get(purpose)
        if armed is None or at < armed[0]:
            record.kills[purpose] = (at, reason)
            self._timers.add(at, (record, purpose))

    def _kill(self, record: ContainerRecord, reason: str, *, timed_out: bool = False) -> None:
        """SIGKILL *record*; *timed_out* when a deadline ran out (an exit hook then failed with TimeoutError).

        A kill that was asked for (a second Ctrl-C) is no timeout: the exit
        hook it cuts short fails as a crash (see _reap), with the reason.
        """
        logger.warning("lifepool pool %r: killing %s: %s", self.name, record.describe(), reason)
        record.kill_reason = reason
        record.kills.clear()
        if timed_out and self.state is PoolState.CLOSING and record.entered and not record.exited:
            record.exit_errors.append(
                TimeoutError(f"lifepool: {record.describe()} was killed (SIGKILL) because {reason}")
            )
        _transport(record).kill()

    def _reap(self, record: ContainerRecord) -> None:
        """It is gone: finish its books, fail or retry its calls (``_scale`` then replaces it if the rule says so)."""
        transport = _transport(record)
        if record.conn is not None:
            self._read_container(record, drain=True)  # what it sent before dying still counts
        self._unwatch_conn(record)
        if not record.dead_while_borrowed:
            self._selector.unregister(transport.sentinel)
        code = transport.reap()  # (its handles are released here, not when the pool is collected)
        was = record.state
        self._leaving(record, ContainerState.DEAD)
        record.kills.clear()
        if not record.entered:
            if not record.enter_failed:  # died before it could report: a crash while entering
                self._enter_failed(record, self._crash_error(record, code, "while entering"))
            return
        if not record.exited:
            if was is ContainerState.EXITING:
                if not record.exit_errors:  # (a kill after the grace period already said so)
                    record.exit_errors.append(self._crash_error(record, code, "during its exit hook"))
            else:
                logger.warning("lifepool pool %r: %s died (%s)", self.name, record.describe(), describe_exit(code))
                if record.kill_reason and self.state is PoolState.CLOSING and not record.exit_errors:
                    # Killed on request while the pool stopped: its exit hook never ran.
                    record.exit_errors.append(self._crash_error(record, code, "before its exit hook could run"))
        if record.inflight:
            # (a container that ran its exit hooks by itself, believing its
            # parent gone, also leaves its calls: they must end all the same)
            self._crashed_calls(record, code)
        self.exit_errors.extend(record.exit_errors)

    def _crashed_calls(self, record: ContainerRecord, code: int | None) -> None:
        calls = list(record.inflight.values())  # in the order sent
        self._in_hand.extend(calls)
        record.inflight.clear()
        record.load.clear()
        record.streams = 0
        for position, call in reversed(list(enumerate(calls))):
            if call.done():
                continue
            if self.ahead and position > 0 and self.state is PoolState.RUNNING and not call.interrupted:
                # Sent ahead, never started (see _schedule_ahead): not a crash of its own.
                self.pending[call.kind].appendleft(call)
                continue
            call.crashes += 1
            if call.crashes <= self.retries and self.state is PoolState.RUNNING:
                logger.warning(
                    "lifepool pool %r: retrying %s (attempt %d) after %s died",
                    self.name,
                    call.label,
                    call.crashes + 1,
                    record.describe(),
                )
                self.pending[call.kind].appendleft(call)
            else:
                record.calls_failed += 1
                self._fail(call, self._crash_error(record, code, f"while running {call.label}"), None)
        self._in_hand.clear()

    def _crash_error(self, record: ContainerRecord, code: int | None, doing: str) -> ContainerCrashedError:
        reason = f"killed (SIGKILL) because {record.kill_reason}" if record.kill_reason else describe_exit(code)
        return ContainerCrashedError(
            f"{record.describe()} of pool {self.name!r} died {doing}: {reason}",
            index=record.index,
            pid=record.pid,
            exitcode=code,
        )
