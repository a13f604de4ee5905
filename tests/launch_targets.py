"""Targets for tests/test_launch.py: what a container (or a bare launched process) inherited."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import lifepool


class Surroundings:
    """Reports what a container process sees of its start: path, directory, modules, signals."""

    def where(self):
        main = sys.modules["__main__"]
        return {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "argv": list(sys.argv),
            "main_file": getattr(main, "__file__", None),
            "pgrp": os.getpgrp(),
            "ppid": os.getppid(),
            "signals": process_signals(),
        }

    def pid(self):
        return os.getpid()

    def kill_self(self):
        os.kill(os.getpid(), 9)

    def exit_now(self, code):
        os._exit(code)

    def exit_if_index(self, index, code, meeting, callers):
        """Once *callers* calls have arrived in *meeting* (a directory), exit in container *index*.

        Elsewhere, say which container this is. The meeting makes each of
        *callers* concurrent calls run in a container of its own.
        """
        here = lifepool.current_container().index
        with open(os.path.join(meeting, str(here)), "w"):
            pass
        deadline = time.monotonic() + 30
        while len(os.listdir(meeting)) < callers and time.monotonic() < deadline:
            time.sleep(0.005)
        if here == index:
            os._exit(code)
        return here

    def sleep_deaf(self, seconds, marker):
        """Sleep deaf to the parent's interrupts, having written this pid to *marker*."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(seconds)

    def nap(self, seconds):
        time.sleep(seconds)
        return "rested"

    def pretend_orphaned(self):
        """Mid-call, do what the container's watcher does when the parent vanishes."""
        from lifepool import _worker

        _worker._state.parent_gone = True
        signal.pthread_kill(threading.main_thread().ident, _worker.INTERRUPT_SIGNAL)
        time.sleep(30)


def process_signals() -> dict[str, set[int]]:
    """The signal numbers this process blocks, ignores and catches (from /proc/self/status)."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("SigBlk", "SigIgn", "SigCgt"):
                mask = int(value.strip(), 16)
                found[key] = {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return found


def report_start(path: str, conn=None) -> None:
    """Target of a bare launched process: write what it inherited to *path*, echo one message."""
    import json

    state = {"signals": {k: sorted(v) for k, v in process_signals().items()}, "pgrp": os.getpgrp(), "cwd": os.getcwd()}
    state["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, path)
    if conn is not None:  # the container's end of its socket (lifepool._launch.ChildEnd)
        from lifepool import _wire

        _wire.send_bytes(conn.fileno(), _wire.Reader(conn.fileno()).recv() * 2)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self_with(signum: int) -> None:
    os.kill(os.getpid(), signum)
