"""The states of a pool and of its containers, and the parent's record of one container."""

from __future__ import annotations

import collections
import signal
from typing import TYPE_CHECKING, Any

from .._backend import Transport
from .._status import ContainerState

if TYPE_CHECKING:
    from ._calls import Call


SERVING = (ContainerState.READY, ContainerState.BUSY)
COMING = (ContainerState.STARTING, ContainerState.ENTERING)  # will serve once entered
LEAVING = (ContainerState.RETIRING, ContainerState.EXITING, ContainerState.DEAD)


class ContainerRecord:
    """The parent's view of one container (owned by the dispatcher; see _dispatcher's docstring)."""

    def __init__(self, index: int, generation: int, started: float) -> None:
        self.index = index
        self.generation = generation  # 0 for the first container at this index, +1 per later one
        self.state = ContainerState.STARTING
        self.transport: Transport | None = None  # the backend's end of it
        self.conn: Any = None  # transport.messages while open (what the selector watches)
        self.pid: int | None = None
        self.inflight: dict[int, Call] = {}
        self.load: dict[str | None, int] = collections.defaultdict(int)  # in-flight calls per kind
        self.streams = 0  # streaming calls in flight (a container with one is sent nothing ahead)
        self.spare = False  # in the dispatcher's _spare deque: may be sent a call ahead
        self.offered: set[str | None] = set()  # kinds whose _free deque holds this record
        self.calls_done = 0  # calls it answered (either way)
        self.calls_failed = 0  # calls that failed there: raised, timed out, or lost when it died
        self.started = started  # time.monotonic() at its start
        self.enter_seconds: float | None = None  # from its start to READY
        self.idle_since = started  # when its last call ended (elastic pools: see _capacity)
        self.scaledown_armed = False  # a scale-down check is in the timers
        self.scaled_down = False  # left because it was idle above min_containers
        self.entered = False  # reached READY: owes exactly one exit
        self.enter_failed = False  # reported ENTER_FAILED
        self.exited = False  # sent EXITED
        # SIGKILLs armed, by purpose ("exit", "stop", "unwind <call id>"): (when, reason).
        self.kills: dict[str, tuple[float, str]] = {}
        self.kill_reason = ""  # why it was killed, once it was
        self.exit_errors: list[BaseException] = []
        self.borrowed = False  # lent to a caller thread for one call (the fast path)
        self.watched = False  # its messages are in the dispatcher's selector (see Lending._watch)
        self.dead_while_borrowed = False

    def describe(self) -> str:
        return f"container {self.index} (pid {self.pid})"


def transport(record: ContainerRecord) -> Transport:
    """*record*'s transport, for code that only runs once it has one (its start succeeded)."""
    found = record.transport
    assert found is not None, f"{record.describe()} has no transport"
    return found


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"
