"""Container output where the user looks: stdout, stderr and ``logging`` of every container, in the parent.

    parent (LocalBackend.start)                          container (_worker.main, first thing)
    ---------------------------                          -------------------------------------
    three pipes per container: out, err, log
    write ends ──(Process args, as Connections)──────►   dup2(out, 1), dup2(err, 2): prints, C code,
                                                         subprocesses all write into the pipes
                                                         logging: a root handler writes each record
                                                         (pickled, length-prefixed) into the log pipe
    read ends: held only here ◄───────── bytes ────────  sys.stdout/stderr flushed before each RESULT/ITEM
      Forwarder thread: one per pool, asleep in a selector on every read end
      ContainerOutput.drain(): on each RESULT/ITEM frame read (dispatcher or fast path)
        whole lines -> prefix -> the parent's *current* sys.stdout / sys.stderr
        log records -> logging.getLogger(name).handle(record) if enabled there

Why pipes the parent creates, rather than frames on the call socket. The
container's fd 1 and 2 must be pipes for C extensions and subprocesses to be
covered, and the parent holding the only read ends means nothing a container
wrote is lost when it is SIGKILLed: the bytes sit in the pipe until read.
Log records take a pipe of their own for the same reason, and because a
logging call may happen anywhere (a signal handler, a thread holding the
socket's send lock) where writing a frame could deadlock.

Ordering. A method's output printed before it returned must reach the
parent's ``sys.stdout`` before ``.call()`` returns (in a notebook: in the
cell that runs). The container flushes its ``sys.stdout``/``sys.stderr``
before it sends a frame, so the bytes are in the pipe before the frame is in
the socket; the parent's receiving side (``LocalTransport.recv``) drains the
container's pipes, without blocking, on every RESULT or ITEM frame, before
the frame is handled. The drain costs one ``poll(0)`` when nothing was
printed. Output written by C code through its own stdio buffer, or by a
subprocess, has no such guarantee: it arrives when it is written.

Lines. Bytes are split at newlines; a partial line is held until its newline
(or the pipe's end: a container's last words without a newline are still
printed). Each line gets the prefix, and the lines of one read go out in one
``write`` under one lock shared by all pools, so lines never interleave mid-line
with another container's. While a lifepool progress bar is open they go
through ``tqdm``'s external write mode, so the bar is redrawn under them.

Who reads. One thread per pool, made with its first container, sleeping in
a selector (no polling); it also reads a pipe to its end after its container
died (a grandchild may still hold it). The drain on a result runs in the
thread that read the frame (the dispatcher, or the caller on the fast path)
under the container's lock, so the reader thread and a drain never split a
read between them.
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import selectors
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import _worker

DEFAULT_PREFIX = "[{class}:{index}] "
_LENGTH = struct.Struct("!I")  # log records in the log pipe: length, then the pickled dict
_READ = 1 << 16
_emit_lock = threading.Lock()  # one line batch at a time, across every pool (lines never interleave)


# -- options (parent) ---------------------------------------------------------
class OutputOptions:
    """A pool's forwarding options: how each container's prefix is made."""

    def __init__(self, prefix: Any, class_name: str, pool_name: str) -> None:
        self.class_name = class_name
        self.pool_name = pool_name
        self._prefix = check_prefix(prefix, class_name, pool_name)

    def uses_pid(self) -> bool:
        """Whether the prefix shows the container's pid (``{pid}`` in a format string)."""
        return isinstance(self._prefix, str) and self.prefix(0, 1) != self.prefix(0, 2)

    def prefix(self, index: int, pid: int | None) -> str:
        prefix = self._prefix
        if prefix is None:
            return ""
        if isinstance(prefix, str):
            return prefix.format_map({"class": self.class_name, "index": index, "pid": pid, "pool": self.pool_name})
        text = prefix(index)
        if not isinstance(text, str):
            raise TypeError(f"output_prefix({index}) must return a str, not {type(text).__name__}")
        return text


def check_prefix(prefix: Any, class_name: str, pool_name: str) -> Any:
    """Validate ``output_prefix``: a format string, a callable ``prefix(index) -> str``, or None."""
    if prefix is None or callable(prefix):
        return prefix
    if not isinstance(prefix, str):
        raise TypeError(f"output_prefix must be a str, a callable or None, not {type(prefix).__name__}")
    try:
        prefix.format_map({"class": class_name, "index": 0, "pid": 0, "pool": pool_name})
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise ValueError(
            f"output_prefix {prefix!r} is not a valid format: {error!r} "
            "(the fields are {class}, {index}, {pid} and {pool}; double braces for a literal brace)"
        ) from None
    return prefix


def parent_log_level() -> int:
    """The lowest level any of this process's loggers would let through (containers drop less than that).

    The parent's loggers decide, but sending every DEBUG record of every
    library only to drop it in the parent would cost each container dearly.
    """
    import logging

    levels = [logging.getLogger().getEffectiveLevel()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        level = getattr(logger, "level", logging.NOTSET)
        if level != logging.NOTSET:
            levels.append(level)
    return min(levels)


# -- the parent's side ------------------------------------------------------------
class ContainerOutput:
    """The read ends of one container's pipes, and what was read of them that is not yet a whole line."""

    def __init__(
        self,
        forwarder: Forwarder,
        fds: tuple[int, ...],  # (out, err, log)
        prefix: str | Callable[[int | None], str],
        index: int,
    ) -> None:
        self.forwarder = forwarder
        self.index = index
        self.pid: int | None = None
        # A container whose pid the parent learns only later (a template's: see
        # _template.TemplateTransport) has learn_pid(wait); a prefix that shows
        # the pid is then prefix(pid), made at the first line, which waits for
        # the pid (the container is forked, or about to be: it is on its way).
        self.prefix = "" if callable(prefix) else prefix
        self._make_prefix = prefix if callable(prefix) else None
        self.learn_pid: Callable[[bool], int | None] | None = None
        out, err, log = fds
        self.kinds = {out: "stdout", err: "stderr", log: "log"}
        self.partial: dict[int, bytes] = {fd: b"" for fd in fds}
        self.open = set(fds)
        self.lock = threading.Lock()
        self.poller = select.poll()  # (only under self.lock: a poll object refuses concurrent use)
        for fd in fds:
            os.set_blocking(fd, False)
            self.poller.register(fd, select.POLLIN)

    def drain(self) -> None:
        """Forward what is in the pipes now, without waiting (before a result is handed on)."""
        with self.lock:
            if self.open and self.poller.poll(0):
                for fd in list(self.open):
                    self._pump(fd)

    def pump(self, fd: int) -> bool:
        """From the reader thread: read *fd*; False once it reached its end (and is closed)."""
        with self.lock:
            if fd in self.open:
                self._pump(fd)
            return fd in self.open

    def _pump(self, fd: int) -> None:
        chunks = []
        ended = False
        while True:
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            chunks.append(data)
            if len(data) < _READ:
                break
        if chunks:
            self._forward(fd, b"".join(chunks), ended)
        elif ended:
            self._forward(fd, b"", True)
        if ended:
            self._close(fd)

    def _learned_pid(self, wait: bool) -> int | None:
        """The pid of a container started without one (see __init__), if known (or, *wait*: once known)."""
        if self.pid is None and self.learn_pid is not None:
            self.pid = self.learn_pid(wait)
        return self.pid

    def _forward(self, fd: int, data: bytes, ended: bool) -> None:
        if self._make_prefix is not None:
            self.prefix = self._make_prefix(self._learned_pid(True))
            self._make_prefix = None
        data = self.partial[fd] + data
        kind = self.kinds[fd]
        if kind == "log":
            self.partial[fd] = self._records(data)
            return
        lines = data.split(b"\n")
        rest = lines.pop()
        if ended and rest:
            lines.append(rest)
            rest = b""
        self.partial[fd] = rest
        if lines:
            prefix = self.prefix
            text = "".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines)
            write(kind, text)

    def _records(self, data: bytes) -> bytes:
        import logging

        view = memoryview(data)
        while len(view) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(view)
            if len(view) < _LENGTH.size + size:
                break
            try:
                fields = pickle.loads(view[_LENGTH.size : _LENGTH.size + size])
            except Exception:  # noqa: BLE001 - a record that cannot be read is dropped, not the rest
                fields = None
            view = view[_LENGTH.size + size :]
            if fields is None:
                continue
            record = logging.makeLogRecord(fields)
            record.container_index = self.index
            record.container_pid = self._learned_pid(False)
            name = fields.get("name")
            logger = logging.getLogger(None if name == "root" else name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        return bytes(view)

    def _close(self, fd: int) -> None:
        self.open.discard(fd)
        self.poller.unregister(fd)
        self.forwarder.forget(fd)
        os.close(fd)

    def close(self) -> None:
        """Forward what is left (partial lines too) and close every read end."""
        with self.lock:
            for fd in list(self.open):
                self._pump(fd)
                if fd in self.open:
                    rest = self.partial[fd]
                    if rest and self.kinds[fd] != "log":
                        self._forward(fd, b"", True)
                    self._close(fd)


def write(kind: str, text: str) -> None:
    """Write whole lines to the parent's current ``sys.stdout``/``sys.stderr`` (above any progress bar)."""
    with _emit_lock:
        stream = sys.stdout if kind == "stdout" else sys.stderr
        if stream is None:
            return
        try:
            from . import _progress

            with _progress.writing_above_bars(stream):
                stream.write(text)
                stream.flush()
        except (OSError, ValueError):
            pass  # (the parent's stream is closed or broken: the output has nowhere to go)


class Forwarder:
    """One pool's reader thread: asleep in a selector on every container's read ends."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._outputs: list[ContainerOutput] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lifepool-output-{pool_name}", daemon=True)
        self._thread.start()

    def pipes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Three pipes: (read ends, write ends), every end close-on-exec."""
        pairs = [os.pipe() for _ in range(3)]
        return tuple(r for r, _ in pairs), tuple(w for _, w in pairs)  # type: ignore[return-value]

    def add(self, output: ContainerOutput) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool's output forwarder is closed")
            self._outputs.append(output)
            self._command("add", output)

    def forget(self, fd: int) -> None:
        """*fd* is being closed (under its output's lock): the selector drops it first.

        From another thread than the reader's too (a drain that found the
        end): the selector then may still report it once, and ``pump`` skips
        a descriptor its output no longer has open.
        """
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass  # (not registered yet, or the selector is closed)

    def _command(self, *command: Any) -> None:
        self._commands.append(command)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # (a wake-up is pending anyway)

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                key.data.pump(key.fd)
            while self._commands:
                kind, output = self._commands.popleft()
                if kind == "stop":
                    return
                with output.lock:
                    for fd in output.open:
                        self._selector.register(fd, selectors.EVENT_READ, output)

    def close(self) -> None:
        """The pool is closed: forward what is left of every container and close every pipe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._command("stop", None)
        self._thread.join()
        for output in self._outputs:
            output.close()
        self._outputs.clear()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def receiving(reader: Any, output: ContainerOutput) -> Callable[[], Any]:
    """*reader*'s ``recv`` that drains *output* before handing on a RESULT, ITEM, READY or EXITED frame, once per read.

    A container writes a frame's output to its pipes before it sends the
    frame, so one drain after a read of the socket covers every frame that
    read brought: a burst of pipelined results costs one ``poll(0)``, not one
    per result. (The reader, a ``_wire.Reader``, counts its socket reads.)
    """
    from ._wire import ENTER_FAILED, EXITED, ITEM, READY, RESULT

    # Frames after which what the container printed must be out: a call's
    # answer or item, and the ends of its enter and exit hooks (so that a
    # pool's status() showing a container READY comes after its enter's lines).
    after_output = frozenset((RESULT, ITEM, READY, ENTER_FAILED, EXITED))

    drain = output.drain
    recv = reader.recv
    drained = [reader.reads]  # the reader's count of socket reads at the last drain

    def recv_draining() -> Any:
        data = recv()
        if reader.reads != drained[0] and data[0] in after_output:
            drained[0] = reader.reads
            drain()
        return data

    return recv_draining


# -- the container's side -------------------------------------------------------
def redirect(ends: tuple[Any, Any, Any, int]) -> Callable[[], None]:
    """In the container, first thing: fd 1 and 2 become the pipes; logging goes to the third.

    Returns the function the container calls before sending a frame (flush
    ``sys.stdout``/``sys.stderr``, so what they hold is in the pipe first).
    """
    out, err, log, level = ends
    for end, fd in ((out, 1), (err, 2)):
        os.dup2(end.fileno(), fd)  # (inheritable: subprocesses write into the pipe too)
        end.close()
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)  # each line as it is printed, not at the end of the call
            except (ValueError, OSError):
                pass
    log_fd = os.dup(log.fileno())  # (not inheritable)
    log.close()
    # (a container imports logging only if its user code does: it costs every container's start)
    _worker.on_import("logging", lambda logging: _install_handler(logging, log_fd, level))
    return flush


def lend(ends: tuple[Any, Any, Any, int]) -> Callable[[], None]:
    """In a template: its output goes to the pipes of the container whose start made it, while it loads.

    What the snap hooks print or log is that container's output (once, where
    ``"exec"`` would print it in every container), ahead of the container's
    own in the same pipes. Returns the function that gives the pipes back
    once the snap hooks ran: the parent's descriptors of the template's start
    on 1 and 2 again, the log handler gone, no copy of the pipes left here,
    so that their end comes with the container's (and the containers forked
    later never inherit them).
    """
    import logging  # (imported already in a template: the handler is installed at once, not on import)

    saved = os.dup(1), os.dup(2)
    root = logging.getLogger()
    level = root.level
    before = list(root.handlers)
    redirect(ends)
    added = [handler for handler in root.handlers if handler not in before]

    def give_back() -> None:
        flush()
        for handler in added:
            root.removeHandler(handler)
            os.close(handler.fd)  # type: ignore[attr-defined]  # (a PipeHandler: see _handler_class)
        root.setLevel(level)
        for fd, target in zip(saved, (1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)

    return give_back


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _install_handler(logging: Any, fd: int, level: int) -> None:
    root = logging.getLogger()
    root.addHandler(_handler_class(logging)(fd))
    root.setLevel(level)


def _handler_class(logging: Any) -> Any:
    class PipeHandler(logging.Handler):  # type: ignore[misc]  # (logging is imported lazily, passed in)
        """Sends each record to the parent, whose logging handles it (``container_index``/``_pid`` added)."""

        def __init__(self, fd: int) -> None:
            super().__init__()
            self.fd = fd

        def emit(self, record: Any) -> None:
            try:
                fields = dict(record.__dict__)
                fields["msg"] = record.getMessage()
                fields["args"] = None
                if record.exc_info:
                    fields["exc_text"] = fields.get("exc_text") or logging.Formatter().formatException(record.exc_info)
                fields["exc_info"] = None
                for key, value in list(fields.items()):
                    if not isinstance(value, (str, int, float, bool, type(None))):
                        fields[key] = repr(value)
                data = pickle.dumps(fields)
                view = memoryview(_LENGTH.pack(len(data)) + data)
                while view:  # (under the handler's lock: records never interleave)
                    view = view[os.write(self.fd, view) :]
            except Exception:  # noqa: BLE001 - logging's own policy for a failing handler
                self.handleError(record)

    return PipeHandler
