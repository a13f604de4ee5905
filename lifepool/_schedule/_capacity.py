"""How many containers a pool runs: a rule applied on each event, not a loop.

    min_containers ≤ active ≤ max_containers

- *Up*: on every event (a call queued, a container entered, one gone) the
  dispatcher asks :meth:`Capacity.to_start`. Calls that wait for a slot are
  "demand": enough containers are started that every waiting call has a slot
  in a container already serving or on its way (starting or entering), up to
  the cap; and the pool never has fewer than its floor. A call that waits
  while a container is entering that will take it starts nothing.
- *Down*: a container above the floor that has been idle (no call in flight,
  none sent ahead, not lent to a caller) for ``scaledown_window`` seconds
  runs its exit hook with ``None``s and goes; that is a clean exit, not a
  crash, so nothing replaces it. The dispatcher keeps one timer per idle
  container (see ``Containers._scaledown_check``), never one per call.

A fixed pool (``containers=N``: floor = cap) starts its N containers at once
and replaces one that dies or is recycled (its floor says so); scale-down
never applies to it, and none of the bookkeeping above costs it anything.
"""

from __future__ import annotations

from collections.abc import Mapping


class Capacity:
    def __init__(self, minimum: int, maximum: int, scaledown_window: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.scaledown_window = scaledown_window
        self.elastic = minimum < maximum  # whether containers above the floor exist, and leave when idle

    def to_start(
        self,
        *,
        active: int,
        coming: int,
        floor: int,
        queued: Mapping[str | None, int],
        per_container: Mapping[str | None, int],
    ) -> int:
        """Containers to start now.

        *active*: containers serving or on their way (not leaving); *coming*:
        those of them still starting or entering; *floor*: the fewest to keep
        (``min_containers`` while running, 0 while closing); *queued*: calls
        waiting per kind; *per_container*: how many of each kind one
        container takes at once.
        """
        demand = 0
        for kind, waiting in queued.items():
            if waiting:
                per = per_container[kind]
                demand = max(demand, -(-waiting // per))  # (containers these calls fill)
        wanted = max(floor - active, demand - coming)
        return max(0, min(wanted, self.maximum - active))
