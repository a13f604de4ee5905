"""The call kinds beyond a plain call, in a container: streams' credit, ``@batched`` groups, map chunks' segments."""

from __future__ import annotations

import inspect
import threading
import time

from . import _wire
from ._context import _block_interrupts_in_this_thread
from ._exceptions import add_note
from ._loop import _loop_outcome

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._serve import _Worker


STREAM_WINDOW = 16  # items a stream may send ahead of its consumer (see _handles.stream)
CHUNK_FLUSH_SECONDS = 0.005  # how often a running map chunk sends the outcomes it has
_CHUNK_RUN = 256  # inputs a chunk runs between two looks at the clock


class _Credit:
    """How many more items a stream may send; closing it stops the stream."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def give(self, count: int) -> None:
        with self._cond:
            self._count += count
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def take(self) -> bool:
        """Wait for one credit; False once the consumer closed the stream."""
        with self._cond:
            while self._count == 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._count -= 1
            return True


class _Batcher:
    """Groups the waiting inputs of one @batched method and calls it with lists.

    Runs in its own thread: it takes the first waiting input, then keeps
    taking until the batch is full or ``wait_ms`` has passed since that first
    input, calls the method once with one list per parameter, and sends each
    input's output back to its caller.
    """

    def __init__(self, worker: _Worker, name: str, func: Callable[..., Any], size: int, wait_ms: float) -> None:
        self.worker = worker
        self.name = name
        self.func = func
        self.size = size
        self.wait = wait_ms / 1000
        self.signature = inspect.signature(func)
        import queue

        self.inputs: queue.SimpleQueue[tuple[int, tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"lifepool-batch-{name}", daemon=True).start()

    def add(self, call_id: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.inputs.put((call_id, args, kwargs))

    def _run(self) -> None:
        import queue

        _block_interrupts_in_this_thread()
        while True:
            batch = [self.inputs.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.size:
                try:
                    batch.append(self.inputs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._call(batch)

    def _call(self, batch: list[tuple[int, tuple[Any, ...], dict[str, Any]]]) -> None:
        ids: list[int] = []
        columns: dict[str, list[Any]] = {name: [] for name in self.signature.parameters}
        for call_id, args, kwargs in batch:
            try:
                bound = self.signature.bind(*args, **kwargs)
                bound.apply_defaults()
            except TypeError as error:
                self.worker.send_result(call_id, False, error)
                continue
            ids.append(call_id)
            for name, value in bound.arguments.items():
                columns[name].append(value)
        if not ids:
            return
        try:
            outputs = self.func(**columns)
            if inspect.iscoroutine(outputs):
                outputs = _loop_outcome(self.worker.loop.submit(outputs))
            outputs = list(outputs)
            if len(outputs) != len(ids):
                raise ValueError(
                    f"@batched method {self.name} returned {len(outputs)} outputs for a batch of "
                    f"{len(ids)} inputs; it must return one output per input, in order"
                )
        except BaseException as error:  # noqa: BLE001 - every input of the batch fails with it
            for call_id in ids:
                self.worker.send_result(call_id, False, error)
            return
        for call_id, output in zip(ids, outputs, strict=True):
            self.worker.send_result(call_id, True, output)


def _lost_stop_iteration() -> StopIteration:
    """What a map input that raised StopIteration gets: the built-in map swallowed the original."""
    stop = StopIteration()
    add_note(
        stop,
        "lifepool: raised by this input of a map; map stops quietly at a StopIteration, "
        "so its value and traceback were lost (.call gives them)",
    )
    return stop


def _segment(values: list[Any], errors: dict[int, bytes]) -> tuple[bytes, dict[int, bytes]]:
    """Encode a chunk segment; a value that cannot be pickled becomes that input's error."""
    try:
        return _wire.dumps(values), errors
    except BaseException:  # noqa: BLE001 - find the culprits one by one
        for position, value in enumerate(values):
            if position in errors:
                continue
            try:
                _wire.dumps(value)
            except BaseException as error:  # noqa: BLE001
                add_note(error, f"lifepool: the result ({type(value).__qualname__}) could not be pickled")
                errors[position] = _wire.exception_blob(error)
                values[position] = None
        return _wire.dumps(values), errors
