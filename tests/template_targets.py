"""Targets for the template tests (containers import this module by name)."""

from __future__ import annotations

import os
import threading

import lifepool
from tests.targets import mark


class Snapped:
    """A snap hook and an ordinary enter hook that each leave a marker; the snap hook's pid is kept."""

    def __init__(self, directory: str, megabytes: int = 0) -> None:
        self.directory = directory
        self.megabytes = megabytes

    @lifepool.enter(snap=True)
    def load(self) -> None:
        self.snap_pid = os.getpid()
        mark(self.directory, "snap")
        if self.megabytes:
            import numpy

            self.array = numpy.ones(self.megabytes * 2**20 // 8)  # every page written once, here

    @lifepool.enter()
    def setup(self) -> None:
        mark(self.directory, "enter")

    def where(self) -> tuple[int, int, int]:
        """(this container's pid, its parent's, the pid the snap hook ran in)."""
        return os.getpid(), os.getppid(), self.snap_pid

    def total(self) -> float:
        return float(self.array[:: 4096 // 8].sum())  # (reads a word of every page)

    def rollup(self) -> dict[str, int]:
        return rollup(os.getpid())

    def crash(self) -> None:
        os._exit(3)

    def wait_for(self, path: str) -> str:
        from tests.targets import wait_for_path

        mark(self.directory, "running")
        wait_for_path(path)
        return "done"


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in kB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


class ThreadedSnap:
    """A snap hook that leaves a thread running (as torch's or gRPC's pools would)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @lifepool.enter(snap=True)
    def load(self) -> None:
        mark(self.directory, "snap")
        self.stop = threading.Event()
        threading.Thread(target=self.stop.wait, daemon=True).start()

    def where(self) -> int:
        return os.getpid()


class FailingSnap:
    @lifepool.enter(snap=True)
    def load(self) -> None:
        raise ValueError("no weights here")

    def f(self) -> int:
        return 1


class Cwd:
    def where(self) -> tuple[str, str | None, int]:
        return os.getcwd(), os.environ.get("LIFEPOOL_TEST_LATER"), os.getppid()
