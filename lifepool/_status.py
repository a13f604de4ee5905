"""What ``pool.status()`` returns: a snapshot of a pool and of each of its live containers."""

from __future__ import annotations

import dataclasses
import enum


class PoolState(enum.Enum):
    """Where a pool is in its life (``pool.status().state``)."""

    RUNNING = "running"  # accepting and running calls
    BROKEN = "broken"  # an enter hook failed: calls fail with EnterError; containers still need an exit
    CLOSING = "closing"  # shutdown asked: queued calls finish (or were cancelled), then containers exit
    CLOSED = "closed"  # every container has exited and been reaped


class ContainerState(enum.Enum):
    """Where a container is in its life (``ContainerStatus.state``)."""

    STARTING = "starting"  # process launched, target not yet unpickled
    ENTERING = "entering"  # enter hooks running
    READY = "ready"  # serving, at least one free slot
    BUSY = "busy"  # serving, every slot taken
    RETIRING = "retiring"  # takes no new calls; exits when its in-flight calls are done (recycling)
    EXITING = "exiting"  # exit hooks running (EXIT sent)
    DEAD = "dead"  # process gone and reaped


@dataclasses.dataclass(frozen=True)
class ContainerStatus:
    """One live container, as ``pool.status()`` saw it."""

    index: int  # its slot, 0 to max_containers - 1 (a replacement takes the index of the one it replaces)
    pid: int | None  # its process id (None while its engine has none to tell)
    state: ContainerState  # starting, entering, ready, busy, retiring (recycled) or exiting
    calls_done: int  # calls it answered, with a result or an error
    calls_failed: int  # calls that failed there: raised, timed out, or lost when it died
    enter_seconds: float | None  # from its start until its enter hooks were done; None until then
    uptime_seconds: float  # since it was started


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    """A pool at one moment: ``pool.status()``."""

    state: PoolState  # running, broken (an enter hook failed), closing or closed
    queued: int  # calls waiting for a container
    containers: tuple[ContainerStatus, ...]  # every live container, by index; empty once closed
