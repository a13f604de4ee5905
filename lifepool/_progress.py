"""Progress bars for ``map``/``starmap`` (and their ``.aio``, and ``Executor.map``): ``progress=True``.

    map(xs, progress=...) ──► Progress(total=len(xs) if it has one)
    each call's Future done (a chunk: by its number of inputs) ──► bar.update(n)   (any thread)
    the results iterator ends, raises, is interrupted or dropped ──► bar.close()

The bar is ``tqdm.auto``'s: a widget in Jupyter, text on a terminal. tqdm is
imported only when a bar is asked for, and is an optional extra
(``lifepool[progress]``). By default ``disable=None``: on a stream that is not
a terminal (a log file, CI) the text bar draws nothing rather than a garbled
run of carriage returns (tqdm's notebook bar is always drawn). A dict of tqdm
options overrides any of that; a string is the bar's label.

Counting happens in done callbacks, so the bar counts completed items, not
items handed out: with ordered outputs, a slow first item does not hold the
bar at zero while the others finish. Updates after the bar closed (calls
abandoned by an early stop that finish later) are dropped.

While any lifepool bar is open, container output is written in tqdm's
external write mode (``writing_above_bars``), which clears the bars, writes
the lines, and redraws them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

_open = 0  # lifepool bars open now, across pools
_open_lock = threading.Lock()


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("progress=... needs tqdm: install lifepool[progress] (or tqdm)") from error
    return tqdm


def length(inputs: Any) -> int | None:
    """The number of inputs, when the iterable(s) say so without being iterated."""
    try:
        return len(inputs)
    except TypeError:
        return None


def options(progress: Any, label: str, total: int | None) -> dict[str, Any] | None:
    """tqdm's keyword arguments for *progress* (True, a label, a dict), or None for no bar."""
    if progress is None or progress is False:
        return None
    kwargs: dict[str, Any] = {"total": total, "desc": label, "unit": "item", "disable": None, "dynamic_ncols": True}
    if progress is True:
        pass
    elif isinstance(progress, str):
        kwargs["desc"] = progress
    elif isinstance(progress, dict):
        kwargs.update(progress)
    else:
        raise TypeError(
            f"progress must be a bool, a label (str) or a dict of tqdm options, not {type(progress).__name__}"
        )
    return kwargs


class Progress:
    """One bar, updated from any thread, closed once."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        global _open
        tqdm = _tqdm()
        self._lock = threading.Lock()
        self._closed = False
        self.bar = tqdm(**kwargs)
        with _open_lock:
            _open += 1

    def update(self, count: int) -> None:
        with self._lock:
            if not self._closed:
                self.bar.update(count)

    def counting(self, count: int) -> Any:
        """A done callback that counts *count* items when its call is done (not when cancelled)."""

        def done(future: Any) -> None:
            if not future.cancelled():
                self.update(count)

        return done

    def close(self) -> None:
        global _open
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.bar.close()
            finally:
                with _open_lock:
                    _open -= 1


def make(progress: Any, label: str, total: int | None) -> Progress | None:
    kwargs = options(progress, label, total)
    return None if kwargs is None else Progress(kwargs)


@contextlib.contextmanager
def writing_above_bars(stream: Any) -> Iterator[None]:
    """While lifepool bars are open, clear them around a write (tqdm's ``external_write_mode``)."""
    tqdm_module = sys.modules.get("tqdm") if _open else None
    if tqdm_module is None:
        yield
        return
    with tqdm_module.tqdm.external_write_mode(file=stream):
        yield
