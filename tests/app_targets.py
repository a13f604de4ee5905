"""Stub-mode classes for test_app (an importable module: a Stub class travels by reference)."""

from __future__ import annotations

import os

from targets import mark

import lifepool

stub = lifepool.Stub("stub-tests")


class Recorded:
    """Writes ``exit-<pid>`` with the exception type its ``__exit__`` received."""

    def __enter__(self):
        self.directory = os.environ["HOOK_DIR"]

    @stub.function
    def ping(self, x):
        return x + 1

    def __exit__(self, exc_type, exc_value, traceback):
        mark(self.directory, "exit", getattr(exc_type, "__name__", "None"))
