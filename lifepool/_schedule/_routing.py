"""Routing: queued calls to containers with a free slot, calls sent ahead, and asked back.

Tables (on the dispatcher, changed only under its lock): ``_free[kind]``, a
deque of the containers with room for a call of that kind (stale entries are
skipped when met: a record's ``offered`` says which deques hold it);
``_spare``, busy containers that may be sent a call ahead; ``_ahead_in``,
containers that were. Finding a slot is O(1).
"""

from __future__ import annotations

import collections
import logging
import time
import weakref

from .. import _wire
from .._status import ContainerState, PoolState
from ._calls import Call, start_running
from ._records import SERVING, ContainerRecord
from ._tables import Tables

logger = logging.getLogger("lifepool")


class Routing(Tables):
    """Where each queued call goes: a free slot, a busy container's pipe (sent ahead), or back."""

    def _schedule(self) -> None:
        for kind, pending in self.pending.items():
            if pending:
                self._schedule_kind(kind, pending, self._free[kind], self.capacity[kind])
        pending = self.pending[None]
        # (an elastic pool below its cap starts containers for queued calls instead: see _capacity)
        if (
            self.ahead
            and pending
            and (len(pending) > self.ahead * self._active or pending[0].chunk)
            and self._active >= self.rule.maximum
        ):
            self._schedule_ahead(pending)
        if self._ahead_in and not pending:
            self._steal()

    def _steal(self) -> None:
        """Ask busy containers for calls sent ahead that have not started, for the idle ones.

        With nothing queued and a container idle, a call waiting in another
        container's pipe behind a long call would wait for nothing: the
        dispatcher sends that container a REVOKE frame and a signal. The
        container gives the call back (RETURNED) if it has not started it, and
        the call is queued again (the next _schedule sends it to the idle
        container); if it has started, its answer comes as usual.
        """
        if self._abort or self.state is not PoolState.RUNNING:
            return
        idle = sum(1 for r in self._free[None] if r.state is ContainerState.READY and not r.inflight)
        candidates = []
        for record in list(self._ahead_in):
            if record.state not in SERVING or record.load[None] <= self.max_inputs:
                self._ahead_in.discard(record)
                continue
            waiting = list(record.inflight.values())[self.max_inputs :]  # (those behind the running call)
            idle -= sum(call.revoking for call in waiting)  # asked back already: an idle container each
            candidates.append((record, waiting))
        for record, waiting in candidates:
            for call in reversed(waiting):  # the last sent first: the furthest from starting
                if idle <= 0:
                    return
                if not call.revoking and not call.interrupted:
                    call.revoking = True
                    idle -= 1
                    self._send(record, _wire.frame(_wire.REVOKE, call.id))
                    self._signal(record)

    def _schedule_ahead(self, pending: collections.deque[Call]) -> None:
        """Send queued calls to busy containers, to wait in their pipes behind the call they run.

        Only while more calls are queued than SEND_AHEAD per container (a
        backlog: every call waits anyway, so none waits longer for being sent
        ahead, unless calls differ a lot in length), each container getting
        as many as are queued per container, from SEND_AHEAD up to DEEP_AHEAD
        (a deep queue of tiny calls keeps every container busy while the
        dispatcher reads the others' answers), or for map's chunks
        (each is a few milliseconds of work: waiting behind one costs little,
        and the container never idles between two chunks); only with
        max_inputs=1 (a container then runs its calls one at a time, in the
        order sent: so when it dies, the first call it had not answered is
        the one it ran, and those after it never started), no timeout and no
        max_calls_per_container. A container that finishes a call starts the
        next at once instead of waiting for the dispatcher, and several calls
        go out in one write. A call sent ahead counts as running; an
        interrupt still stops it before it starts (the container reads the
        interrupt ahead), and if its container dies before it started it is
        queued again, which counts as no retry. Streams are never sent ahead,
        nor is anything sent ahead to a container running a stream. An
        elastic pool sends ahead only at its cap: below it, queued calls are
        the demand that starts containers (see _capacity).
        """
        spare = self._spare
        active = max(self._active, 1)
        keep = self.ahead * active
        most = self.max_inputs + self.deep_ahead
        full = 0  # spare containers holding their share already (moved to the back)
        batches: dict[ContainerRecord, list[bytes]] = {}
        while pending and len(spare) > full and (len(pending) > keep or pending[0].chunk):
            record = spare[0]
            load = record.load[None]
            # (stale, or not busy after all: its free slot is offered to queued calls first)
            if record.state not in SERVING or not self.max_inputs <= load < most or record.streams or record.borrowed:
                spare.popleft()
                record.spare = False
                continue
            # Its share: as many as stay queued per container, from SEND_AHEAD to DEEP_AHEAD.
            if load >= self.max_inputs + max(self.ahead, len(pending) // active):
                spare.rotate(-1)  # (still spare: a deeper backlog may give it more)
                full += 1
                continue
            if pending[0].stream:
                break  # a stream waits for a free slot
            call = self._take(pending, record, None)
            if call is None:
                continue
            if record.load[None] >= most:
                spare.popleft()
                record.spare = False
            batches.setdefault(record, []).append(_wire.frame(_wire.CALL, call.id, 0, call.body))
        for record, frames in batches.items():
            self._ahead_in.add(record)
            self._send(record, *frames)

    def _schedule_kind(
        self,
        kind: str | None,
        pending: collections.deque[Call],
        free: collections.deque[ContainerRecord],
        capacity: int,
    ) -> None:
        while pending and free:
            record = free[0]
            if record.state not in SERVING or record.load[kind] >= capacity:
                free.popleft()  # stale: retiring, exiting, dead, or full
                record.offered.discard(kind)
                continue
            call = self._take(pending, record, kind)
            if call is None:
                continue
            if record.load[kind] >= capacity:
                free.popleft()
                record.offered.discard(kind)
                if record.state is ContainerState.READY and all(record.load[k] >= c for k, c in self.capacity.items()):
                    record.state = ContainerState.BUSY
            self._send(record, _wire.frame(_wire.CALL, call.id, 0, call.body))

    def _take(self, pending: collections.deque[Call], record: ContainerRecord, kind: str | None) -> Call | None:
        """Put the next queued call on *record*'s books (the caller sends it), or None if it was dropped."""
        call = pending.popleft()
        self._in_hand.append(call)
        if self.enter_failure is not None:
            self._fail(call, self.enter_error(), None)
            self._in_hand.clear()
            return None
        # (a retried call is already RUNNING: a running future cannot be cancelled)
        if call.attempts == 0 and not start_running(call):
            self._in_hand.clear()
            return None  # cancelled while queued (or completed by whoever holds the Future)
        call.attempts += 1
        call.revoking = False
        call.container = record
        record.inflight[call.id] = call
        record.load[kind] += 1
        if call.stream:
            record.streams += 1
        if self.timeout is not None:
            # A weak reference: a finished call must not wait here, with its result, for its deadline.
            self._timers.add(time.monotonic() + self.timeout, weakref.ref(call))
        self._in_hand.clear()
        return call

    def _offer(self, record: ContainerRecord) -> None:
        """Put *record* in the ``_free`` deque of every kind it has room for; READY or BUSY."""
        if record.state not in SERVING and record.state not in (ContainerState.ENTERING, ContainerState.STARTING):
            return
        room = False
        for kind, capacity in self.capacity.items():
            if record.load[kind] < capacity:
                room = True
                if kind not in record.offered:
                    record.offered.add(kind)
                    self._free[kind].append(record)
        record.state = ContainerState.READY if room else ContainerState.BUSY
        if self.ahead and not record.spare and record.load[None] < self.max_inputs + self.deep_ahead:
            record.spare = True
            self._spare.append(record)

    def _release_slot(self, record: ContainerRecord, call: Call) -> None:
        record.load[call.kind] -= 1
        if call.stream:
            record.streams -= 1
        if self.max_calls is not None and record.calls_done >= self.max_calls and record.state in SERVING:
            self._leaving(record, ContainerState.RETIRING)
            logger.info(
                "lifepool pool %r: recycling %s after %d calls", self.name, record.describe(), record.calls_done
            )
        if record.state is ContainerState.RETIRING:
            if not record.inflight:
                self._send_exit(record, None)
        else:
            self._offer(record)
            if self.rule.elastic and not record.inflight:
                self._now_idle(record)
