"""The tables one pool's dispatcher owns, and the small operations every part uses.

The dispatcher is one object with one owner (its lock, held by its thread
between two ``select`` calls and by a borrowing caller for a few lines). Its
behaviour is split by concern into the classes that build ``Dispatcher``:
``Routing`` (calls to slots), ``Lending`` (the fast path), ``Containers``
(a container's life, crashes, scaling), ``Stopping`` (deadlines, shutdown,
abort) and ``Dispatcher`` itself (the loop, messages, commands). They share
these tables, declared and built here, so each table has one definition and
each behaviour one home.
"""

from __future__ import annotations

import collections
import os
import selectors
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import InvalidStateError
from typing import TYPE_CHECKING, Any

from .._exceptions import note_origin
from .._status import ContainerState, PoolState
from ._calls import Call
from ._capacity import Capacity
from ._records import ContainerRecord
from ._timers import Timers

if TYPE_CHECKING:
    from .._backend import Backend

# Calls a busy container (max_inputs=1) may be sent beyond the one it runs,
# while more than that many calls per container are queued: see Routing._schedule_ahead.
SEND_AHEAD = 16
# With a deeper backlog, each may hold as many as are queued per container, up
# to this many: enough to keep it working while the dispatcher handles a burst
# of the other containers' answers.
DEEP_AHEAD = 128


class Tables:
    """The dispatcher's tables and the few operations every part of it uses."""

    def __init__(self, pool_name: str, target_blob: bytes, class_name: str, options: dict[str, Any]) -> None:
        self.name = pool_name
        self.owner_pid = os.getpid()  # the process the pool belongs to (see Dispatcher.forget_after_fork)
        self.class_name = class_name
        self.target_blob = target_blob
        self.backend: Backend = options["backend"]
        self.rule = Capacity(options["min_containers"], options["max_containers"], options["scaledown_window"])
        self.max_inputs: int = options["max_inputs"]
        # per-container capacity of each kind of call: None for ordinary calls,
        # the name of each @batched method for its own (see _dispatcher's docstring)
        self.capacity: dict[str | None, int] = {None: self.max_inputs}
        for method, (batch_size, _) in options["batched"].items():
            self.capacity[method] = max(batch_size, self.max_inputs)
        self.grace: float = options["exit_grace_period"]
        self.timeout: float | None = options["timeout"]
        self.retries: int = options["retries"]
        self.max_calls: int | None = options["max_calls_per_container"]
        self.worker_options = {
            "pool_name": pool_name,
            "max_inputs": self.max_inputs,
            "exit_grace_period": self.grace,
            "authkey": options.get("authkey"),  # multiprocessing's, for Manager proxies (_worker.share_authkey)
            "environment": options.get("environment"),  # env=/cwd= (see _serve._Worker.enter)
            "output": options.get("output"),  # forward_output (the backend's: see _local, _output)
            "shared_memory": self.backend.shared_memory,  # False: encode everything inline (see _worker.main)
        }

        # Shared with other threads: append-only from them, drained by the dispatcher.
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

        # Owned by the dispatcher (under _lock).
        self.state = PoolState.RUNNING
        self.enter_failure: BaseException | None = None  # the first enter hook error, if any
        self._enter_failed_in: int | None = None
        self._in_hand: list[Call] = []  # calls taken out of a table, not yet put back (see _fail_everything)
        # One slot per container index (at most max_containers); a dead record stays until its slot is reused.
        self.slots: list[ContainerRecord | None] = [None] * self.rule.maximum
        self._active = 0  # containers not leaving (starting, entering, ready, busy): see Containers._leaving
        self._coming = 0  # of those, the ones starting or entering
        self._free: dict[str | None, collections.deque[ContainerRecord]] = {
            kind: collections.deque() for kind in self.capacity
        }
        self._timers = Timers()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._exit_blob: bytes | None = None
        self._abort = False  # stop now: interrupt running calls and entering containers
        self.exit_errors: list[BaseException] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()  # the tables' lock: see _dispatcher's docstring
        self.fast_path = self.max_inputs == 1 and self.timeout is None and len(self.capacity) == 1
        # Calls a busy container may be sent ahead, to wait in its pipe (see Routing._schedule_ahead).
        self.ahead = SEND_AHEAD if self.fast_path and self.max_calls is None else 0
        self.deep_ahead = DEEP_AHEAD if self.ahead else 0  # (the most, with a deep backlog)
        self._spare: collections.deque[ContainerRecord] = collections.deque()
        self._ahead_in: set[ContainerRecord] = set()  # containers that were sent calls ahead (see _steal)

    # -- shared by every part ---------------------------------------------
    def wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            # Under _submit_lock: the finished dispatcher closes the pipe under
            # it (see Dispatcher._run), so a late wake() never writes into a reused fd.
            with self._submit_lock:
                if self._wake_w < 0:
                    return
                try:
                    os.write(self._wake_w, b"\0")
                except (BlockingIOError, OSError):
                    pass  # the pipe is full (a wake-up is pending anyway)

    def check_accepting(self) -> None:
        """Raise what submit() would raise now; a pre-check (without the lock) before a call is encoded."""
        refusal = self._refusal
        if refusal is not None:
            raise refusal()

    def refuse(self, make_error: Callable[[], BaseException]) -> None:
        """From now on, submit() raises ``make_error()`` (the first reason given wins)."""
        with self._submit_lock:
            if self._refusal is None:
                self._refusal = make_error

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

    def _any_pending(self) -> bool:
        return any(self.pending.values())

    def _drain_pending(self) -> Iterator[Call]:
        for pending in self.pending.values():
            while pending:
                yield pending.popleft()

    # -- provided by the parts (declared for type checkers) ------------------
    if TYPE_CHECKING:

        def _send(self, record: ContainerRecord, *frames: bytes) -> None: ...
        def _send_exit(self, record: ContainerRecord, blob: bytes | None) -> None: ...
        def _signal(self, record: ContainerRecord) -> None: ...
        def _interrupt(self, record: ContainerRecord, call: Call) -> None: ...
        def _watch(self, record: ContainerRecord) -> None: ...
        def _offer(self, record: ContainerRecord) -> None: ...
        def _release_slot(self, record: ContainerRecord, call: Call) -> None: ...
        def _message(self, record: ContainerRecord, data: bytes | bytearray) -> None: ...
        def _kill(self, record: ContainerRecord, reason: str, *, timed_out: bool = False) -> None: ...
        def _arm_kill(self, record: ContainerRecord, purpose: str, delay: float, reason: str) -> None: ...
        def _reap(self, record: ContainerRecord) -> None: ...
        def _scaledown_check(self, record: ContainerRecord) -> None: ...
        def _leaving(self, record: ContainerRecord, state: ContainerState) -> None: ...
        def _now_idle(self, record: ContainerRecord) -> None: ...
        def enter_error(self) -> BaseException: ...

        thread: threading.Thread
