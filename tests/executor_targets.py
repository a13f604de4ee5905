"""What ``test_executor_conformance.py`` and ``test_hygiene.py`` run in containers.

In a module of their own, so that a container imports this, not pytest and
the test module, when it unpickles them by reference; nor multiprocessing,
which ``test_hygiene`` checks a container does not import.
"""

from __future__ import annotations

import os
import time


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def wait_and_raise(event):
    event.wait()
    raise Exception("this is an exception")


def wait_then(value):
    """*value*, after waiting for it if it is an event (a Manager's ``Event`` proxy)."""
    if hasattr(value, "wait"):
        value.wait()
        return None
    time.sleep(value)
    return None


class EventfulGCObj:
    """Sets a Manager event when collected: wherever that happens, the parent sees it."""

    def __init__(self, manager):
        self.event = manager.Event()

    def __del__(self):
        self.event.set()


def raise_runtime_error():
    raise RuntimeError(123)  # some comment


class Empty:
    """A target with no methods: the Executor API (submit, map) runs plain callables."""


class Maker:
    """A target whose methods make fresh objects, fail, crash, or exit in ways the tests need."""

    def make(self, _):
        return make_dummy_object(None)

    def make2(self, a, b):
        return make_dummy_object(None)

    async def amake(self, _):
        return make_dummy_object(None)

    def ok(self, *_):
        return 1

    def crash(self):
        os._exit(7)

    def exits(self):
        raise SystemExit(3)

    def interrupts(self):
        raise KeyboardInterrupt("raised by the method")

    def set_event(self, event):
        event.set()
        return True

    def put(self, queue, mapping, x):
        queue.put(x)
        mapping[x] = x * 2
        return x


class FailingEnter:
    def __enter__(self):
        raise ValueError("no")

    def ok(self, *_):
        return 1
