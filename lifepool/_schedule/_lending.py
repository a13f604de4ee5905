"""The fast path: a blocking call borrows an idle container for its length.

A blocking ``.call`` that finds an idle container (one call per container,
nothing queued, no timeout, no batched methods) takes that container for the
length of the call: under the tables' lock it records the call as in flight
and sends it; then it waits for the answer on the container's transport
itself, and gives the container back under the lock. That saves two thread
hand-offs per round trip, which is most of a call's cost. The dispatcher
watches a container's messages only while it expects one (see ``_watch``):
an idle container is not in its selector, so lending one and giving it back
cost no system call beyond the write and the reads. Everything unusual
(crashes, interrupts, shutdown) still goes through the dispatcher: a
container that dies while borrowed is reaped when it is given back.
"""

from __future__ import annotations

import selectors
from typing import Any

from .. import _wire
from .._status import ContainerState, PoolState
from ._calls import Call, decode_answer
from ._records import ContainerRecord
from ._records import transport as _transport
from ._tables import Tables


class Lending(Tables):
    """The fast path: lend an idle container to a blocking caller for one call, and take it back."""

    def borrow(self, call: Call) -> ContainerRecord | None:
        """Fast path: lend an idle container to the calling thread for *call*, or None.

        On success the call is in flight on that container and already sent.
        If an exception (a Ctrl-C) cuts this short, the caller must call
        :meth:`abandon_borrow`: ``call.container`` says what was lent.
        """
        if not self.fast_path or call.kind is not None or call.sink is not None:
            return None
        with self._lock:
            free = self._free[None]
            if self._refusal is not None or self.pending[None] or self.state is not PoolState.RUNNING:
                return None
            # The container given back last: it is the likeliest still running
            # on a CPU, its caches warm (sequential calls stay on one container).
            # A Ctrl-C may land between any two lines from here on: each step
            # leaves what abandon_borrow can put right (a record listed in
            # _free twice is skipped as stale, never one left out of it).
            while free:
                record = free[-1]
                if record.state is ContainerState.READY and not record.inflight and record.conn is not None:
                    break
                record.offered.discard(None)
                free.pop()  # stale, exactly as _schedule_kind would find it
            else:
                return None
            call.container = record  # first: abandon_borrow finds the record from here on
            record.offered.discard(None)
            free.pop()
            record.load[None] = 1
            record.state = ContainerState.BUSY
            call.set_running_or_notify_cancel()  # (nobody else has it yet: it cannot be cancelled)
            call.attempts = 1
            record.inflight[call.id] = call  # on the books: an interrupt now reaches the container
            record.borrowed = True
            if record.watched:
                self._selector.unregister(record.conn)
                record.watched = False
            _transport(record).lend(True)
            self._send(record, _wire.frame(_wire.CALL, call.id, 0, call.body))
            return record

    def abandon_borrow(self, call: Call) -> None:
        """After an interrupt anywhere on the fast path (any line of :meth:`borrow`,
        :meth:`run_borrowed` or the caller's): leave the books whole.

        A container still lent for *call* is given back with the call in
        flight; the caller then interrupts it as usual. A container answers an
        interrupt for a call it is not running (finished, or never received
        because the interrupt came before the send) with an interrupted
        result, so the books always balance. A container the call was taking
        or leaving (not yet, or no longer, on its books) is put back on offer
        if it is idle; one lent to another thread meanwhile is left alone.
        """
        with self._lock:
            record = call.container
            if record is not None:
                watching = self._selector.get_map()  # (None once the dispatcher has closed it)
                if record.conn is not None and watching is not None:
                    # (the interrupt may have come between unregistering the pipe and noting it)
                    record.watched = watching.get(record.conn) is not None
                if record.borrowed:
                    if call.id in record.inflight:  # (not lent to another thread since)
                        self._give_back(record)
                elif not record.inflight:
                    self._unborrow(record, call)
        self.wake()

    def _unborrow(self, record: ContainerRecord, call: Call) -> None:
        """Put an idle *record* back on offer: *call*'s borrow was cut short before it was
        sent, or after its answer was taken off the books."""
        call.container = None
        record.load[None] = 0
        if record.state is ContainerState.BUSY:
            record.state = ContainerState.READY
        self._offer(record)
        if call.running():
            call.set_exception(KeyboardInterrupt("interrupted on the fast path"))  # (nobody waits for it)

    def run_borrowed(self, record: ContainerRecord, call: Call) -> tuple[bool, Any]:
        """Wait on the lent container's pipe until *call* is answered, then give it back.

        Returns ``(True, value)`` for a call answered with a value,
        ``(False, exception)`` for one answered with an error; and
        ``(False, None)`` when the call's Future tells the outcome instead
        (the container died, or something else made and completed the Future
        meanwhile). The answer is taken off the books and the container given
        back in one hold of the lock; it is decoded after. A KeyboardInterrupt
        gives the container back with the call still in flight, and the
        dispatcher reads the answer; so does a dying container, which the
        dispatcher reaps.
        """
        recv = _transport(record).recv
        answer = None  # (ok, body) of a RESULT this thread took off the books
        try:
            while True:
                try:
                    data: bytes | bytearray | None = recv()
                except (EOFError, OSError):
                    data = None
                with self._lock:
                    if data is None:
                        self._give_back(record)
                        break
                    tag, call_id, ok, body = _wire.unframe(data)
                    if tag != _wire.RESULT or call_id != call.id:
                        self._message(record, data)  # (a late answer to an earlier, abandoned call)
                        continue
                    if call.done():  # completed meanwhile (the dispatcher failed): the slow way
                        self._message(record, data)
                        self._give_back(record)
                        break
                    del record.inflight[call_id]
                    record.calls_done += 1
                    if not ok:
                        record.calls_failed += 1
                    self._release_slot(record, call)
                    self._give_back(record)
                    answer = ok, body
                    break
        except BaseException:
            with self._lock:  # the dispatcher finishes the call from here on
                if record.borrowed:
                    self._give_back(record)
            self.wake()
            raise
        if self.commands or self._any_pending():
            self.wake()
        return (False, None) if answer is None else decode_answer(call, record, *answer)

    def _give_back(self, record: ContainerRecord) -> None:
        # Taken back first, then off loan: a Ctrl-C in between leaves it borrowed,
        # and abandon_borrow gives it back again (a transport left lent would
        # keep a later answer for a borrower that never comes: Ray's).
        _transport(record).lend(False)  # (an answer still owed goes to the messages: the dispatcher reads)
        record.borrowed = False
        if record.inflight or record.state is not ContainerState.READY:
            # An answer is still due (an interrupted wait), or the container is
            # leaving: the dispatcher reads from here on. An idle container
            # stays unwatched: it sends nothing until it is sent a call.
            self._watch(record)
        if _transport(record).buffered():
            # Read ahead with the answer (rare: a late message behind it): no
            # select would report it, so the dispatcher is told.
            self._watch(record)
            self.commands.append(("read", record))
        if record.dead_while_borrowed:
            self.commands.append(("reap", record))

    def _watch(self, record: ContainerRecord) -> None:
        """Have the dispatcher read *record*'s pipe (it expects a message).

        A container's pipe is watched from its start until a caller borrows it,
        and again once the dispatcher sends it anything; an idle container's
        pipe stays unwatched, so borrowing it and giving it back cost no
        selector calls (two system calls a round trip).
        """
        if not record.watched and not record.borrowed and record.conn is not None:
            record.watched = True
            self._selector.register(record.conn, selectors.EVENT_READ, ("conn", record))
