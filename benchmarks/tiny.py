"""A target class in a module of its own, small as a user's module can be (the later-tiny scenario).

A template imports its target's module once per pool; ``benchmarks/bench.py``
is a large module to import, which a fork of the parent gets for free.
"""

from __future__ import annotations

import os
import time


class Tiny:
    """Echo and a pid probe, as ``bench.Echo``."""

    def echo(self, x: object) -> object:
        """Return the argument unchanged."""
        return x

    def getpid(self, delay: float) -> int:
        """Sleep ``delay`` seconds, return the pid."""
        time.sleep(delay)
        return os.getpid()
