"""Scheduling: one owner per pool (the dispatcher) that routes calls to containers, keeps their
number to the capacity rule, and reacts to what a backend's transports report.

It never imports a pipe, a pid or an engine: containers are ``_backend.Transport`` objects.
"""

from ._calls import Call
from ._dispatcher import Dispatcher

__all__ = ["Call", "Dispatcher"]
