"""Functions the conformance tests (``test_executor_conformance.py``) run in containers.

In a module of their own, so that a container imports this, not pytest and
the test module, when it unpickles them by reference.
"""

from __future__ import annotations

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
