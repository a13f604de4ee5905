"""The dispatcher: the one thread that owns a pool's tables.

    caller threads                      dispatcher thread                  containers
    --------------                      -----------------                  ----------
    spawn(): Call ─► pending[kind] ───┐
    control(): ─────► commands ───────┤  wake-up pipe
                                      ▼
                         selector.select() on: wake-up pipe, every container's
                         pipe and process sentinel, until the nearest deadline
                                      │
                 ┌────────────────────┼───────────────────────────┐
           commands: interrupt,  results: complete the      sentinel: a container
           shutdown              Future, free the slot      died -> fail or retry
                                      │                     its calls, replace it
                                      ▼
                       schedule: queued calls -> containers with a free slot ──► pipe

The container records, the in-flight tables and the pool state change only
under ``_lock``, held by this thread for everything it does between two
``select`` calls, and by a caller thread for the few lines of the fast path
below. Other threads otherwise only append to ``pending``/``commands`` (deques
are safe for that) and write one byte to the wake-up pipe.

The fast path (``borrow``/``run_borrowed``): a blocking ``.call`` that finds
an idle container (one call per container, nothing queued, no timeout) takes
that container for the length of the call. Under the lock it records the
call as in flight and sends it; then it waits for the answer on the pipe
itself, and gives the container back under the lock. The dispatcher watches
a container's pipe only while it expects a message from it (see ``_watch``):
an idle container's pipe is not in its selector, so lending one and giving
it back cost no system call beyond the write and the reads. That saves two thread hand-offs per
round trip, which is most of a call's cost. Everything else (crashes,
interrupts, shutdown) still goes through the dispatcher: a container that dies
while borrowed is reaped when it is given back. It never polls: it
sleeps in ``select`` until a pipe has data, a process exits, or the nearest
deadline (a call timeout, an exit grace period, a kill after an interrupt)
comes due. Finding a container with a free slot is O(1): ``_free[kind]`` is
a deque of the containers that have one.

Calls come in *kinds*, each with its own per-container capacity: ``None`` for
ordinary calls (``max_inputs`` per container) and, for each ``@batched``
method, its name (``max(max_batch_size, max_inputs)`` per container, so a
batch can fill). Each kind has its own queue, so a full kind never blocks
another behind it.

A streaming call (``remote_gen``) has a *sink*: its items are handed to it as
they arrive; the consumer grants the container more items with ``credit``
commands, which is what bounds the buffering (back-pressure).

Every Future is completed by this thread, and every path out of it (normal
end, an unexpected error in the dispatcher itself) completes every Future it
still holds, so nothing waits forever.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import enum
import heapq
import logging
import os
import pickle
import selectors
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED
from concurrent.futures._base import PENDING as _PENDING
from typing import Any

from . import _shm, _wire, _worker
from ._exceptions import (
    CallTimeoutError,
    ContainerCrashedError,
    EnterError,
    LifepoolError,
    RemoteError,
    add_note,
    note_origin,
)

logger = logging.getLogger("lifepool")

# After a timed-out call is interrupted, how long it may take to unwind before
# its container is killed and replaced.
TIMEOUT_UNWIND_SECONDS = 2.0

# Calls a busy container (max_inputs=1) may be sent beyond the one it runs,
# while more than that many calls per container are queued: see _schedule_ahead.
SEND_AHEAD = 16


class PoolState(enum.Enum):
    RUNNING = "running"  # accepting and running calls
    BROKEN = "broken"  # an enter hook failed: calls fail with EnterError; containers still need an exit
    CLOSING = "closing"  # shutdown asked: queued calls finish (or were cancelled), then containers exit
    CLOSED = "closed"  # every container has exited and been reaped


class ContainerState(enum.Enum):
    STARTING = "starting"  # process launched, target not yet unpickled
    ENTERING = "entering"  # enter hooks running
    READY = "ready"  # serving, at least one free slot
    BUSY = "busy"  # serving, every slot taken
    RETIRING = "retiring"  # takes no new calls; exits when its in-flight calls are done
    EXITING = "exiting"  # exit hooks running (EXIT sent)
    DEAD = "dead"  # process gone and reaped


_SERVING = (ContainerState.READY, ContainerState.BUSY)
_NOT_STARTABLE = (CANCELLED_AND_NOTIFIED, FINISHED)  # Future states set_running_or_notify_cancel refuses


class _FutureCondition(_thread.RLock):
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

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _thread.allocate_lock()
        waiter.acquire()
        try:
            waiters = self._waiters
        except AttributeError:
            waiters = self._waiters = []
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
        super()._at_fork_reinit()
        self._waiters = []


class Call(Future):
    """One method call on its way through the pool, and the Future its caller gets.

    A ``concurrent.futures.Future`` in every respect, whose ``_condition`` is
    a :class:`_FutureCondition`: one object, besides the Future, where the
    stdlib makes eight. The call's own fields live beside the Future's, so a
    Future and its call never point at each other (a cycle only the
    collector frees). A blocking ``.call`` that runs on a borrowed container
    and ends normally never touches the Future's side (see
    :meth:`Dispatcher.run_borrowed`); every other path (queued calls, errors
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
        self._condition = _FutureCondition()
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

    def _invoke_callbacks(self) -> None:
        """Run on every completion (a result, an error, a cancel), by the thread that completes it.

        The encoded arguments are let go: a finished call is never sent again,
        and a caller keeping many finished Futures would keep them all. The
        callbacks run as the stdlib runs them, but a BaseException one of them
        raises (``sys.exit()``) on the dispatcher thread is logged like any
        error: it would otherwise end the dispatcher, and with it the pool.
        """
        self.body = b""
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                _futures_logger.exception("exception calling callback for %r", self)
            except BaseException:
                if not isinstance(threading.current_thread(), _DispatcherThread):
                    raise
                _futures_logger.exception("exception calling callback for %r (on lifepool's dispatcher thread)", self)


class _DispatcherThread(threading.Thread):
    """A pool's dispatcher thread (a class of its own: Call._invoke_callbacks tells it apart)."""


_futures_logger = logging.getLogger("concurrent.futures")  # where the stdlib reports failing callbacks


class ContainerRecord:
    """The parent's view of one container process (owned by the dispatcher thread)."""

    def __init__(self, index: int, generation: int) -> None:
        self.index = index
        self.generation = generation  # 0 for the first container at this index, +1 per replacement
        self.state = ContainerState.STARTING
        self.process: Any = None
        self.conn: Any = None
        self.fd = -1  # conn's file descriptor, written with _wire.send_bytes
        self.reader: _wire.Reader | None = None  # reads conn (by the dispatcher, or the borrower)
        self.pid: int | None = None
        self.inflight: dict[int, Call] = {}
        self.load: dict[str | None, int] = collections.defaultdict(int)  # in-flight calls per kind
        self.streams = 0  # streaming calls in flight (a container with one is sent nothing ahead)
        self.spare = False  # in the dispatcher's _spare deque: may be sent a call ahead
        self.offered: set[str | None] = set()  # kinds whose _free deque holds this record
        self.calls_done = 0
        self.entered = False  # reached READY: owes exactly one exit
        self.enter_failed = False  # reported ENTER_FAILED
        self.exited = False  # sent EXITED
        # SIGKILLs armed, by purpose ("exit", "stop", "unwind <call id>"): (when, reason).
        self.kills: dict[str, tuple[float, str]] = {}
        self.kill_reason = ""  # why it was SIGKILLed, once it was
        self.exit_errors: list[BaseException] = []
        self.borrowed = False  # lent to a caller thread for one call (the fast path)
        self.watched = False  # its pipe is in the dispatcher's selector (see Dispatcher._watch)
        self.dead_while_borrowed = False

    def describe(self) -> str:
        return f"container {self.index} (pid {self.pid})"


class Dispatcher:
    def __init__(
        self,
        pool_name: str,
        target_blob: bytes,
        class_name: str,
        options: dict[str, Any],
        on_closed: Callable[[Dispatcher], None],
    ) -> None:
        self._on_closed = on_closed
        self.name = pool_name
        self.class_name = class_name
        self.target_blob = target_blob
        self.containers_wanted: int = options["containers"]
        self.max_inputs: int = options["max_inputs"]
        # per-container capacity of each kind of call (see the module docstring)
        self.capacity: dict[str | None, int] = {None: self.max_inputs}
        for method, (batch_size, _) in options["batched"].items():
            self.capacity[method] = max(batch_size, self.max_inputs)
        self.grace: float = options["exit_grace_period"]
        self.timeout: float | None = options["timeout"]
        self.retries: int = options["retries"]
        self.max_calls: int | None = options["max_calls_per_container"]
        self.context = options["context"]
        self.worker_options = {
            "pool_name": pool_name,
            "max_inputs": self.max_inputs,
            "parent_pid": os.getpid(),
            "exit_grace_period": self.grace,
            "environment": options.get("environment"),  # env=/cwd= (see _worker._Worker.enter)
        }

        # Shared with other threads: append-only from them, drained here.
        self.pending: dict[str | None, collections.deque[Call]] = {kind: collections.deque() for kind in self.capacity}
        self.commands: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        # Why new calls are refused (a factory of the error to raise), set under
        # _submit_lock so that no call can slip into `pending` after the
        # dispatcher has decided it is finished.
        self._submit_lock = threading.Lock()
        self._refusal: Callable[[], BaseException] | None = None

        # Owned by the dispatcher thread.
        self.state = PoolState.RUNNING
        self.enter_failure: BaseException | None = None  # the first enter hook error, if any
        self._enter_failed_in: int | None = None
        self._in_hand: list[Call] = []  # calls taken out of a table, not yet put back (see _fail_everything)
        self.slots: list[ContainerRecord | None] = [None] * self.containers_wanted
        self._free: dict[str | None, collections.deque[ContainerRecord]] = {
            kind: collections.deque() for kind in self.capacity
        }
        # Deadlines, soonest first: (when, seq, call) for call timeouts and
        # (when, seq, record) for kills; stale entries are skipped when popped.
        self._timers: list[tuple[float, int, Any]] = []
        self._timer_seq = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._exit_blob: bytes | None = None
        self._abort = False  # stop now: interrupt running calls and entering containers
        self.exit_errors: list[BaseException] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()  # the tables' lock: see the module docstring
        self.fast_path = self.max_inputs == 1 and self.timeout is None and len(self.capacity) == 1
        # Calls a busy container may be sent ahead, to wait in its pipe (see _schedule_ahead).
        self.ahead = SEND_AHEAD if self.fast_path and self.max_calls is None else 0
        self._spare: collections.deque[ContainerRecord] = collections.deque()
        self._ahead_in: set[ContainerRecord] = set()  # containers that were sent calls ahead (see _steal)

        self.thread = _DispatcherThread(target=self._run, name=f"lifepool-dispatch-{pool_name}", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------
    # called from other threads
    # ------------------------------------------------------------------
    def wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full (a wake-up is pending anyway) or closed (finished)

    def submit(self, call: Call) -> None:
        with self._submit_lock:
            if self._refusal is not None:
                raise self._refusal()
            self.pending[call.kind].append(call)
        self.wake()

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
        recv = record.reader.recv
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
        return (False, None) if answer is None else _decode_answer(call, record, *answer)

    def _give_back(self, record: ContainerRecord) -> None:
        record.borrowed = False
        if record.inflight or record.state is not ContainerState.READY:
            # An answer is still due (an interrupted wait), or the container is
            # leaving: the dispatcher reads from here on. An idle container
            # stays unwatched: it sends nothing until it is sent a call.
            self._watch(record)
        if record.reader.buffered():
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

    @property
    def aborting(self) -> bool:
        """Stopping on an interrupt (queued calls dropped, running ones interrupted)."""
        return self._abort

    def refuse(self, make_error: Callable[[], BaseException]) -> None:
        """From now on, submit() raises ``make_error()`` (the first reason given wins)."""
        with self._submit_lock:
            if self._refusal is None:
                self._refusal = make_error

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
        owner = self.worker_options["parent_pid"]
        message = f"pool {self.name!r} belongs to process {owner}; a process forked from it cannot use it"
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
            if record.conn is not None:
                record.conn.close()
            _forget_process(record.process)
        self._selector.close()
        self.state = PoolState.CLOSED
        self.exit_errors = []
        self.closed = threading.Event()
        self.closed.set()
        for call in waiting:
            call._condition._at_fork_reinit()  # (another thread may have held it)
            if not call.done():
                call.set_exception(RuntimeError(message))

    # ------------------------------------------------------------------
    # the dispatcher thread
    # ------------------------------------------------------------------
    def _run(self) -> None:
        # Containers inherit this thread's signal mask: with SIGINT and SIGTERM
        # blocked here, a Ctrl-C cannot kill a container before it has set its
        # own policy (it unblocks them once SIGINT is ignored).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            with self._lock:
                for index in range(self.containers_wanted):
                    self._start_container(index, 0)
            while not self._finished():
                events = self._selector.select(self._next_timeout())
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
            # The wake-up pipe stays open until this object is collected: a
            # late wake() from another thread must never write into a reused fd.
            weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
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
                _end_of_input(record)
                if record.borrowed:
                    # Died while lent to a caller, who is reading its pipe: the
                    # caller sees EOF and hands it back, then it is reaped.
                    self._selector.unregister(record.process.sentinel)
                    record.dead_while_borrowed = True
                else:
                    self._reap(record)
        while self.commands:
            self._command(self.commands.popleft())
        self._check_deadlines()
        self._schedule()
        self._progress_shutdown()

    def _finished(self) -> bool:
        return (
            self.state is PoolState.CLOSING
            and all(c is None or c.state is ContainerState.DEAD for c in self.slots)
            and not self._any_pending()
        )

    # -- containers --------------------------------------------------------
    def _start_container(self, index: int, generation: int) -> None:
        record = ContainerRecord(index, generation)
        self.slots[index] = record
        with _starting:  # no fork of this process copies the start's descriptors (see _starting)
            parent_conn, child_conn = self.context.Pipe(duplex=True)
            process = self.context.Process(
                target=_worker.main,
                args=(child_conn, index, self.target_blob, self.worker_options),
                name=f"lifepool-{self.name}-{index}",
            )
            try:
                process.start()
            except BaseException as error:  # noqa: BLE001
                parent_conn.close()
                child_conn.close()
                record.state = ContainerState.DEAD
                self._enter_failed(record, error)
                return
            child_conn.close()
        record.process = process
        record.conn = parent_conn
        record.fd = parent_conn.fileno()
        record.reader = _wire.Reader(record.fd)
        record.pid = process.pid
        self._watch(record)
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("sentinel", record))
        if generation:
            logger.info("lifepool pool %r: started replacement container %d (pid %d)", self.name, index, record.pid)

    def _read_container(self, record: ContainerRecord, *, drain: bool = False) -> None:
        """Read a message, and those that came with it (the selector is level-triggered:
        more data in the socket wakes it again; data read ahead would not).

        With *drain*, read everything the container sent before it died.
        """
        try:
            while True:
                self._message(record, record.reader.recv())
                if record.conn is None or record.borrowed:
                    return
                if record.reader.ready():
                    continue  # read ahead: select would not report it
                # (no conn.poll() on the hot path: each call builds a new selector)
                if not drain or not record.conn.poll():
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
            record.conn.close()
            record.conn = None

    def _message(self, record: ContainerRecord, data: bytes) -> None:
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
                    call.sink(("error", _undecodable(call, error)))
        elif tag == _wire.ENTERING:
            record.state = ContainerState.ENTERING
            if self._abort:
                self._signal(record)
        elif tag == _wire.READY:
            record.entered = True
            record.state = ContainerState.READY
            self._offer(record)
        elif tag == _wire.ENTER_FAILED:
            record.enter_failed = True
            record.state = ContainerState.EXITING  # it leaves without exit hooks
            self._enter_failed(record, _wire.load_exception(bytes(body)))
        elif tag == _wire.EXITED:
            record.exited = True
            for blob in pickle.loads(body):
                error = _wire.load_exception(blob)
                add_note(error, f"lifepool: exit hook of {record.describe()} in pool {self.name!r}")
                record.exit_errors.append(error)

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
                self._fail(call, _undecodable(call, error), record)
                return
            if call.sink is not None:
                call.sink(("end", None))
            try:
                call.set_result(value)
            except InvalidStateError:
                pass  # (completed meanwhile by whoever holds the Future)
        else:
            self._fail(call, _wire.load_exception(bytes(body)), record)

    def _fail(self, call: Call, exc: BaseException, record: ContainerRecord | None) -> None:
        if record is not None:
            note_origin(exc, record.describe(), call.label)
        if not call.done():
            if call.sink is not None:
                call.sink(("error", exc))
            try:
                call.set_exception(exc)
            except InvalidStateError:
                pass  # (completed meanwhile by whoever holds the Future)

    def _offer(self, record: ContainerRecord) -> None:
        """Put *record* in the ``_free`` deque of every kind it has room for; READY or BUSY."""
        if record.state not in _SERVING and record.state not in (ContainerState.ENTERING, ContainerState.STARTING):
            return
        room = False
        for kind, capacity in self.capacity.items():
            if record.load[kind] < capacity:
                room = True
                if kind not in record.offered:
                    record.offered.add(kind)
                    self._free[kind].append(record)
        record.state = ContainerState.READY if room else ContainerState.BUSY
        if self.ahead and not record.spare and record.load[None] < self.max_inputs + self.ahead:
            record.spare = True
            self._spare.append(record)

    def _release_slot(self, record: ContainerRecord, call: Call) -> None:
        record.load[call.kind] -= 1
        if call.stream:
            record.streams -= 1
        if self.max_calls is not None and record.calls_done >= self.max_calls and record.state in _SERVING:
            record.state = ContainerState.RETIRING
            logger.info(
                "lifepool pool %r: recycling %s after %d calls", self.name, record.describe(), record.calls_done
            )
        if record.state is ContainerState.RETIRING:
            if not record.inflight:
                self._send_exit(record, None)
        else:
            self._offer(record)

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
        if record.pid is not None and record.state is not ContainerState.DEAD:
            try:
                os.kill(record.pid, _worker.INTERRUPT_SIGNAL)
            except ProcessLookupError:
                pass

    def _interrupt(self, record: ContainerRecord, call: Call) -> None:
        call.interrupted = True
        self._send(record, _wire.frame(_wire.INTERRUPT, call.id))
        self._signal(record)

    def _send(self, record: ContainerRecord, *frames: bytes) -> None:
        """Send *frames* (several: in one write); a container that is dying is left to its sentinel."""
        if record.conn is None:
            return
        if not record.watched:
            self._watch(record)  # (not while lent: the borrower reads the answer)
        try:
            if len(frames) == 1:
                _wire.send_bytes(record.fd, frames[0])
            else:
                _wire.send_many(record.fd, list(frames))
        except OSError:
            pass  # it is dying; its sentinel will tell

    def _send_exit(self, record: ContainerRecord, blob: bytes | None) -> None:
        record.state = ContainerState.EXITING
        body = blob or b""
        self._send(record, _wire.frame(_wire.EXIT, 0, 1 if blob else 0, body))
        reason = f"its exit hook did not finish within exit_grace_period={self.grace}s"
        self._arm_kill(record, "exit", self.grace, reason)

    def _add_timer(self, when: float, what: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, what))

    def _arm_kill(self, record: ContainerRecord, purpose: str, delay: float, reason: str) -> None:
        """SIGKILL *record* in *delay* seconds unless *purpose*'s kill is disarmed first (or armed sooner)."""
        at = time.monotonic() + delay
        armed = record.kills.get(purpose)
        if armed is None or at < armed[0]:
            record.kills[purpose] = (at, reason)
            self._add_timer(at, (record, purpose))

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
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap(self, record: ContainerRecord) -> None:
        """The process exited: finish its books, fail or retry its calls, replace it if needed."""
        if record.conn is not None:
            self._read_container(record, drain=True)  # what it sent before dying still counts
        self._unwatch_conn(record)
        if not record.dead_while_borrowed:
            self._selector.unregister(record.process.sentinel)
        record.process.join()
        code = record.process.exitcode
        # What it put in shared memory and nobody decoded (everything it sent has been read).
        _shm.sweep(os.getpid(), creator_pid=record.pid)
        was = record.state
        record.state = ContainerState.DEAD
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
                logger.error("lifepool pool %r: %s died (%s)", self.name, record.describe(), _describe_exit(code))
                if record.kill_reason and self.state is PoolState.CLOSING and not record.exit_errors:
                    # Killed on request while the pool stopped: its exit hook never ran.
                    record.exit_errors.append(self._crash_error(record, code, "before its exit hook could run"))
        if record.inflight:
            # (a container that ran its exit hooks by itself, believing its
            # parent gone, also leaves its calls: they must end all the same)
            self._crashed_calls(record, code)
        self.exit_errors.extend(record.exit_errors)
        if self.state is PoolState.RUNNING or (
            self.state is PoolState.CLOSING and self._any_pending() and not self._abort and self.enter_failure is None
        ):
            self._start_container(record.index, record.generation + 1)

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
                self._fail(call, self._crash_error(record, code, f"while running {call.label}"), None)
        self._in_hand.clear()

    def _crash_error(self, record: ContainerRecord, code: int | None, doing: str) -> ContainerCrashedError:
        reason = f"killed (SIGKILL) because {record.kill_reason}" if record.kill_reason else _describe_exit(code)
        return ContainerCrashedError(
            f"{record.describe()} of pool {self.name!r} died {doing}: {reason}",
            index=record.index,
            pid=record.pid,
            exitcode=code,
        )

    # -- calls -------------------------------------------------------------
    def _schedule(self) -> None:
        for kind, pending in self.pending.items():
            if pending:
                self._schedule_kind(kind, pending, self._free[kind], self.capacity[kind])
        pending = self.pending[None]
        if self.ahead and pending and (len(pending) > self.ahead * self.containers_wanted or pending[0].chunk):
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
            if record.state not in _SERVING or record.load[None] <= self.max_inputs:
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
        ahead, unless calls differ a lot in length), or for map's chunks
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
        nor is anything sent ahead to a container running a stream.
        """
        spare = self._spare
        limit = self.max_inputs + self.ahead
        keep = self.ahead * self.containers_wanted
        batches: dict[ContainerRecord, list[bytes]] = {}
        while pending and spare and (len(pending) > keep or pending[0].chunk):
            record = spare[0]
            load = record.load[None]
            # (stale, or not busy after all: its free slot is offered to queued calls first)
            if record.state not in _SERVING or not self.max_inputs <= load < limit or record.streams or record.borrowed:
                spare.popleft()
                record.spare = False
                continue
            if pending[0].stream:
                break  # a stream waits for a free slot
            call = self._take(pending, record, None)
            if call is None:
                continue
            if record.load[None] >= limit:
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
            if record.state not in _SERVING or record.load[kind] >= capacity:
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
        if call.attempts == 0 and not _start_running(call):
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
            self._add_timer(time.monotonic() + self.timeout, call)
        self._in_hand.clear()
        return call

    def _any_pending(self) -> bool:
        return any(self.pending.values())

    def _drain_pending(self) -> Iterator[Call]:
        for pending in self.pending.values():
            while pending:
                yield pending.popleft()

    def _next_timeout(self) -> float | None:
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            when, _, what = heapq.heappop(self._timers)
            if isinstance(what, tuple):
                record, purpose = what
                armed = record.kills.get(purpose)
                if armed is not None and armed[0] == when and record.state is not ContainerState.DEAD:
                    self._kill(record, armed[1], timed_out=True)
            else:
                self._call_timed_out(what)

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

    # -- commands from other threads --------------------------------------
    def _command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "reap":
            if command[1].state is not ContainerState.DEAD:
                self._reap(command[1])
        elif kind == "read":
            record = command[1]
            if record.conn is not None and not record.borrowed and record.reader.buffered():
                self._read_container(record)
        elif kind == "credit":
            call, count = command[1], command[2]
            record = call.container
            if record is not None and call.id in record.inflight:
                self._send(record, _wire.frame(_wire.CREDIT, call.id, 0, _wire.COUNT.pack(count)))
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
            _, cancel_futures, exit_blob, abort = command
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
        elif kind == "kill":
            self._stop_now(command[1])

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
            if _cancel_queued(call):
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
            if (record.state in _SERVING or record.state is ContainerState.RETIRING) and not record.inflight:
                self._send_exit(record, self._exit_blob)

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
            if record.pid is not None and record.state is not ContainerState.DEAD:
                try:
                    os.kill(record.pid, signal.SIGKILL)
                    record.process.join()
                except (ProcessLookupError, AttributeError):
                    pass


def _start_running(call: Call) -> bool:
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


def _cancel_queued(call: Call) -> bool:
    """Cancel a queued *call* and wake whoever waits for it now; False if it runs, or was done already."""
    if call.cancelled():
        _start_running(call)  # (cancelled by its holder: its waiters are woken now, not when it is taken)
        return False
    if call.done() or not call.cancel():
        return False
    _start_running(call)  # (a cancelled Future: marked notified, its waiters woken)
    return True


def _decode_answer(call: Call, record: ContainerRecord, ok: int, body: memoryview) -> tuple[bool, Any]:
    """A RESULT's outcome, as Dispatcher._result would set it on the Future."""
    if ok:
        try:
            return True, _wire.loads(body)
        except BaseException as error:  # noqa: BLE001
            return False, _undecodable(call, error)
    error = _wire.load_exception(bytes(body))
    note_origin(error, record.describe(), call.label)
    return False, error


def _undecodable(call: Call, error: BaseException) -> RemoteError:
    return RemoteError(
        "result", traceback.format_exc(), f"a value sent back by {call.label} could not be unpickled: {error!r}"
    )


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _end_of_input(record: ContainerRecord) -> None:
    """*record*'s process is dead: reading its pipe ends where what it wrote ends.

    EOF alone would wait for every copy of the container's end to close, and
    another process may hold one (a sibling container forked by
    multiprocessing's fork server, say). Or the process may not be dead at
    all: when the fork server dies, every sentinel it gave reports an exit.
    A reader blocked in ``recv`` (the dispatcher draining, a borrowing caller)
    would then wait forever.
    """
    if record.conn is not None:
        _wire.end_reading(record.fd)


def _forget_process(process: Any) -> None:
    """In a forked child: *process* is not this child's to join or terminate.

    multiprocessing would otherwise, at the child's exit, send SIGTERM to a
    daemonic container of the parent's (start methods other than "exec").
    """
    process_module = sys.modules.get("multiprocessing.process")
    if process is not None and process_module is not None:
        process_module._children.discard(process)  # type: ignore[attr-defined]


# Held while a container starts, and by every fork of this process (os.fork,
# multiprocessing's "fork") for its duration. A fork in another thread in the
# middle of a start would copy the start's descriptors into a child that never
# execs, and subprocess waits for EOF on its exec-status pipe: the dispatcher
# hung for as long as that child lived (a multiprocessing.Pool's worker: the
# pool's life). A fork waits for the start instead, a few milliseconds.
_starting = threading.RLock()


def _after_fork_in_child() -> None:
    _starting.release()  # (taken by this thread before the fork)


os.register_at_fork(before=_starting.acquire, after_in_parent=_starting.release, after_in_child=_after_fork_in_child)
