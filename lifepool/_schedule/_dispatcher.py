"""The dispatcher: the one thread that owns a pool's tables (declared in ``_tables``).

    caller threads                      dispatcher thread                  containers (Transports)
    --------------                      -----------------                  -----------------------
    spawn(): Call ─► pending[kind] ───┐
    control(): ─────► commands ───────┤  wake-up pipe
                                      ▼
                         selector.select() on: the wake-up pipe, every container's
                         messages and sentinel, until the nearest deadline (_timers)
                                      │
                 ┌────────────────────┼───────────────────────────┐
           commands: interrupt,  messages: complete the     sentinel: a container
           credit, shutdown,     Future, free the slot      is gone -> fail or retry
           kill (_stopping)      (here; _routing)           its calls (_containers)
                                      │
                                      ▼
             deadlines (_stopping) ─► routing: queued calls -> free slots (_routing)
                                  ─► capacity: start what the rule asks (_containers, _capacity)
                                  ─► shutdown progress (_stopping)

The container records, the in-flight tables and the pool state change only
under ``_lock``, held by this thread for everything it does between two
``select`` calls, and by a caller thread for the few lines of the fast path
(``_lending``: a blocking call borrows an idle container). Other threads
otherwise only append to ``pending``/``commands`` (deques are safe for that)
and write one byte to the wake-up pipe. It never polls: it sleeps in
``select`` until a container sends something, one is gone, or the nearest
deadline (a call timeout, an exit grace period, a kill after an interrupt, a
scale-down check) comes due.

Calls come in *kinds*, each with its own per-container capacity: ``None`` for
ordinary calls (``max_inputs`` per container) and, for each ``@batched``
method, its name (``max(max_batch_size, max_inputs)`` per container, so a
batch can fill). Each kind has its own queue, so a full kind never blocks
another behind it.

A streaming call (``remote_gen``) has a *sink*: its items are handed to it as
they arrive; the consumer grants the container more items with ``credit``
commands, which is what bounds the buffering (back-pressure).

Every Future is completed by this thread (or, on the fast path, by the
borrowing caller), and every path out of it (normal end, an unexpected error
in the dispatcher itself) completes every Future it still holds, so nothing
waits forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from typing import Any

from .. import _wire
from .._exceptions import add_note
from .._status import ContainerState, ContainerStatus, PoolState, PoolStatus
from ._calls import Call, DispatcherThread, undecodable
from ._containers import Containers
from ._lending import Lending
from ._records import ContainerRecord
from ._records import transport as _transport
from ._routing import Routing
from ._stopping import Stopping

logger = logging.getLogger("lifepool")


class Dispatcher(Routing, Lending, Containers, Stopping):
    """One pool's owner: its thread runs the loop below; see the module docstring."""

    def __init__(
        self,
        pool_name: str,
        target_blob: bytes,
        class_name: str,
        options: dict[str, Any],
        on_closed: Callable[[Dispatcher], None],
    ) -> None:
        super().__init__(pool_name, target_blob, class_name, options)
        self._on_closed = on_closed
        self.thread = DispatcherThread(target=self._run, name=f"lifepool-dispatch-{pool_name}", daemon=True)
        self.thread.start()

    def submit(self, call: Call) -> None:
        with self._submit_lock:
            if self._refusal is not None:
                raise self._refusal()
            self.pending[call.kind].append(call)
        self.wake()

    @property
    def aborting(self) -> bool:
        """Stopping on an interrupt (queued calls dropped, running ones interrupted)."""
        return self._abort

    def shutdown(self, cancel_futures: bool, exit_blob: bytes | None, abort: bool) -> None:
        self.refuse(lambda: RuntimeError(f"cannot schedule new calls after shutdown (pool {self.name!r})"))
        if cancel_futures or abort:
            # Now, as concurrent.futures executors do, not when the dispatcher
            # gets to it: shutdown(wait=False) returns with them cancelled.
            self._cancel_pending(drop=False)
        self.control("shutdown", cancel_futures, exit_blob, abort)

    def control(self, *command: Any) -> None:
        self.commands.append(command)
        self.wake()

    def forget_after_fork(self) -> None:
        """In a child forked from this process: the pool and its containers stay the parent's.

        Only the forking thread exists in the child, so locks another thread
        held at the fork are made anew, never waited for. New calls are
        refused; the calls the child was waiting for fail at once (no thread
        of the child would ever complete them); shutting the pool down in the
        child returns at once, since only the parent stops its containers.
        The child's copies of the containers' pipes and of the selector are
        closed: a container must see its pipe close when its parent goes, not
        when the last fork of the parent goes. Nothing is written to any
        container or to the dispatcher's wake-up pipe.
        """
        message = f"pool {self.name!r} belongs to process {self.owner_pid}; a process forked from it cannot use it"
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._refusal = lambda: RuntimeError(message)
        self._wake_pending = True  # wake() writes nothing (the pipe is the parent dispatcher's)
        self.commands.clear()
        waiting = [call for pending in self.pending.values() for call in pending] + self._in_hand
        for record in self.slots:
            if record is None:
                continue
            waiting.extend(record.inflight.values())
            if record.transport is not None:
                record.transport.forget()
        self._selector.close()
        self.state = PoolState.CLOSED
        self.exit_errors = []
        self.closed = threading.Event()
        self.closed.set()
        for call in waiting:
            call._condition._at_fork_reinit()  # type: ignore[attr-defined]  # (another thread may have held it)
            if not call.done():
                call.set_exception(RuntimeError(message))

    def _run(self) -> None:
        # Containers inherit this thread's signal mask: with SIGINT and SIGTERM
        # blocked here, a Ctrl-C cannot kill a container before it has set its
        # own policy (it unblocks them once SIGINT is ignored).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            with self._lock:
                self._scale()  # min_containers, started back to back
            while not self._finished():
                events = self._selector.select(self._timers.next_timeout())
                with self._lock:
                    self._step(events)
        except BaseException as error:
            logger.critical("lifepool pool %r: dispatcher failed", self.name, exc_info=True)
            with self._lock:
                self._fail_everything(error)
        finally:
            self.refuse(lambda: RuntimeError(f"cannot schedule new calls: pool {self.name!r} is closed"))
            for call in self._drain_pending():  # (only after a dispatcher failure)
                self._fail(call, RuntimeError(f"pool {self.name!r} closed"), None)
            self.state = PoolState.CLOSED
            self._selector.close()
            self.backend.close()
            # The wake-up pipe is closed now, not at collection (shutdown()
            # must leave no descriptor behind), under _submit_lock, after the
            # refusal above: a late wake() from another thread takes that lock
            # and finds it closed, so it never writes into a reused fd.
            with self._submit_lock:
                self._wake_pending = True
                wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
                _close_fds(*wake_fds)
            self._on_closed(self)
            self.closed.set()

    def _step(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _mask in events:
            data = key.data
            if data is None:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                # Cleared only after draining: a wake() that wrote during the
                # drain must not leave the flag set with no byte in the pipe
                # (the next wake() would then skip its write and nobody wakes us).
                # Everything appended before this line is handled below.
                self._wake_pending = False
            elif data[0] == "conn":
                # (not closed earlier in this batch, nor lent to a caller meanwhile)
                if data[1].conn is not None and not data[1].borrowed:
                    self._read_container(data[1])
            elif data[1].state is not ContainerState.DEAD:
                record = data[1]
                if record.conn is not None:
                    record.transport.end_reading()
                if record.borrowed:
                    # Died while lent to a caller, who is reading its pipe: the
                    # caller sees EOF and hands it back, then it is reaped.
                    self._selector.unregister(record.transport.sentinel)
                    record.dead_while_borrowed = True
                else:
                    self._reap(record)
        while self.commands:
            self._command(self.commands.popleft())
        self._check_deadlines()
        self._schedule()
        self._scale()
        self._progress_shutdown()

    def _finished(self) -> bool:
        return (
            self.state is PoolState.CLOSING
            and all(c is None or c.state is ContainerState.DEAD for c in self.slots)
            and not self._any_pending()
        )

    def _message(self, record: ContainerRecord, data: bytes | bytearray) -> None:
        tag, call_id, flag, body = _wire.unframe(data)
        if tag == _wire.RESULT:
            self._result(record, call_id, flag, body)
        elif tag == _wire.RETURNED:
            call = record.inflight.pop(call_id, None)
            if call is not None:
                call.revoking = False
                self._release_slot(record, call)
                if call.interrupted:  # (the interrupt crossed the REVOKE): it ends here, unstarted
                    self._fail(call, KeyboardInterrupt("interrupted before it ran"), None)
                elif not call.done():
                    self.pending[call.kind].appendleft(call)  # sent again: not a retry
        elif tag == _wire.ITEM:
            call = record.inflight.get(call_id)
            if call is None or call.sink is None or call.done():
                _wire.discard(body)
            else:
                try:
                    call.sink(("item", _wire.loads(body)))
                except BaseException as error:  # noqa: BLE001 - the consumer raises it in order
                    call.sink(("error", undecodable(call, error)))
        elif tag == _wire.ENTERING:
            record.state = ContainerState.ENTERING
            record.kills.pop("start", None)  # (it started: a closing pool lets it enter, then exit)
            # Its own pid, as the container says it: every engine's, including those that
            # learn it only once the container runs (a template's container, a Ray actor's).
            record.pid = call_id
            if self._abort:
                self._signal(record)
        elif tag == _wire.READY:
            self._entered(record)
        elif tag == _wire.ENTER_FAILED:
            record.enter_failed = True
            if record.pid is None:
                record.pid = _transport(record).pid
            self._leaving(record, ContainerState.EXITING)  # it leaves without exit hooks
            self._enter_failed(record, _wire.load_exception(bytes(body)))
        elif tag == _wire.EXITED:
            record.exited = True
            logger.info("lifepool pool %r: %s exit done", self.name, record.describe())
            for blob in pickle.loads(body):
                failure = _wire.load_exception(blob)
                add_note(failure, f"lifepool: exit hook of {record.describe()} in pool {self.name!r}")
                record.exit_errors.append(failure)

    def _result(self, record: ContainerRecord, call_id: int, ok: int, body: memoryview) -> None:
        call = record.inflight.pop(call_id, None)
        if call is None:
            _wire.discard(body)
            return
        record.calls_done += 1
        self._release_slot(record, call)
        if call.done():
            _wire.discard(body)
            if record.kills:
                record.kills.pop(f"unwind {call_id}", None)  # a timed-out call that did unwind
            return  # timed out or abandoned: the late answer is dropped
        if ok:
            try:
                value = _wire.loads(body)
            except BaseException as error:  # noqa: BLE001
                record.calls_failed += 1
                self._fail(call, undecodable(call, error), record)
                return
            if call.sink is not None:
                call.sink(("end", None))
            try:
                call.set_result(value)
            except InvalidStateError:
                pass  # (completed meanwhile by whoever holds the Future)
        else:
            record.calls_failed += 1
            self._fail(call, _wire.load_exception(bytes(body)), record)

    def _command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "reap":
            if command[1].state is not ContainerState.DEAD:
                self._reap(command[1])
        elif kind == "read":
            record = command[1]
            if record.conn is not None and not record.borrowed and _transport(record).buffered():
                self._read_container(record)
        elif kind == "credit":
            streaming: Call = command[1]
            record = streaming.container
            if record is not None and streaming.id in record.inflight:
                self._send(record, _wire.frame(_wire.CREDIT, streaming.id, 0, _wire.COUNT.pack(command[2])))
        elif kind == "interrupt":
            call: Call = command[1]
            record = call.container
            if record is not None and call.id in record.inflight:
                self._interrupt(record, call)
            elif call.attempts and not call.done():
                # Sent, then queued again unstarted (given back, or its container
                # died): it is dropped from the queue instead of running later.
                with contextlib.suppress(ValueError):
                    self.pending[call.kind].remove(call)
                    self._fail(call, KeyboardInterrupt("interrupted before it ran"), None)
        elif kind == "shutdown":
            self._shutdown(*command[1:])
        elif kind == "kill":
            self._stop_now(command[1])

    def status(self) -> PoolStatus:
        """A snapshot of the pool and of every live container (see ``LifecyclePool.status``)."""
        if threading.current_thread() is self.thread:
            return self._snapshot()  # (a done callback: this thread holds the lock already)
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> PoolStatus:
        now = time.monotonic()
        containers = tuple(
            ContainerStatus(
                index=record.index,
                pid=record.pid,
                state=record.state,
                calls_done=record.calls_done,
                calls_failed=record.calls_failed,
                enter_seconds=record.enter_seconds,
                uptime_seconds=now - record.started,
            )
            for record in self.slots
            if record is not None and record.state is not ContainerState.DEAD
        )
        queued = sum(len(pending) for pending in self.pending.values())
        return PoolStatus(state=self.state, queued=queued, containers=containers)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
