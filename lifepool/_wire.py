"""What travels over a container's pipe, and how it is encoded.

Messages are small tuples whose first item is one of the tags below. Values
(arguments, results, the target, exceptions) are encoded by :func:`dumps`:

* plain :mod:`pickle` first, because it is several times faster than
  cloudpickle for ordinary data;
* :mod:`cloudpickle` when plain pickle fails (lambdas, closures) or when the
  pickle names ``__main__`` -- classes and functions defined in a script or a
  notebook cell must travel *by value*, because containers never import the
  parent's ``__main__``;
* code shipped by value keeps its real file name (cloudpickle writes
  ``<dynamic-code>`` instead), so tracebacks from it point at the user's file
  and line and show the source line;
* buffers of a megabyte or more (NumPy arrays, bytes, anything with
  protocol-5 pickle buffers) travel out-of-band in shared memory: see
  :mod:`lifepool._shm` for the format and who cleans up what.

Exceptions travel with their traceback, ``__cause__``/``__context__`` chain and
notes through :mod:`tblib`; one that cannot make the trip becomes a
:class:`~lifepool.RemoteError` carrying its type name and formatted traceback.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import types

from . import _shm
from ._exceptions import RemoteError

TYPE_CHECKING = False  # (not typing's: a container imports this module at start, and never typing)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# Every message is one frame: a fixed header (tag, call id, flag) followed by
# an optional body. The header is decoded without unpickling anything, so a
# body that fails to decode still tells which call it belonged to.
HEADER = struct.Struct("<BqB")

# parent -> container
CALL = 1  # call_id, body = dumps((method name or callable, args, kwargs))
INTERRUPT = 2  # call_id: stop that call if it is still running
EXIT = 3  # body = exception blob (flag 1) or empty: run the exit hooks and quit
CREDIT = 4  # call_id, body = COUNT: the stream consumer can take that many more items
REVOKE = 5  # call_id: give back this call sent ahead, if it has not started (answer: RETURNED)

# container -> parent
ENTERING = 11  # call_id = pid: the target is unpickled, the enter hooks run
READY = 12  # enter hooks done, calls may come
ENTER_FAILED = 13  # body = exception blob
RESULT = 14  # call_id, flag 1 = ok: body = dumps(value); flag 0: exception blob
EXITED = 15  # body = pickled list of exception blobs from failing exit hooks
ITEM = 16  # call_id, body = dumps(item): one item of a streaming call
RETURNED = 17  # call_id: a call sent ahead, given back unstarted after a REVOKE

COUNT = struct.Struct("<I")


def frame(tag: int, call_id: int = 0, flag: int = 0, body: bytes = b"") -> bytes:
    return HEADER.pack(tag, call_id, flag) + body


def unframe(data: bytes | bytearray) -> tuple[int, int, int, memoryview]:
    tag, call_id, flag = HEADER.unpack_from(data)
    return tag, call_id, flag, memoryview(data)[HEADER.size :]


PROTOCOL = pickle.HIGHEST_PROTOCOL

# Frames travel with multiprocessing.connection's framing (a signed 4-byte
# big-endian length, or -1 and an 8-byte length past 2 GiB), so either side
# may use Connection.recv_bytes/send_bytes; send_bytes and Reader do the same
# with less Python in between (the round trip of a call is mostly such overhead).
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_SMALL = 1 << 16  # messages below this are written with their header in one write()


def send_bytes(fd: int, data: bytes) -> None:
    """Write one message to the blocking socket *fd* (raises OSError if it is closed)."""
    size = len(data)
    head = _LENGTH.pack(size) if size <= 0x7FFFFFFF else _LENGTH.pack(-1) + _LONG_LENGTH.pack(size)
    if size < _SMALL:
        data = head + data
        if os.write(fd, data) == len(data):
            return
        _write_all(fd, memoryview(data))  # (a signal cut the write short)
    else:
        _write_all(fd, memoryview(head))
        _write_all(fd, memoryview(data).cast("B"))


def stream(messages: list[bytes], head: bytes = b"") -> bytes:
    """*head*, then the bytes :func:`send_many` would write for *messages* (for a relay to write as they are)."""
    parts: list[bytes] = [head]
    for data in messages:
        size = len(data)
        parts.append(_LENGTH.pack(size) if size <= 0x7FFFFFFF else _LENGTH.pack(-1) + _LONG_LENGTH.pack(size))
        parts.append(data)
    return b"".join(parts)


def write_stream(fd: int, data: bytes | memoryview) -> None:
    """Write bytes made by :func:`stream` to the blocking socket *fd*."""
    _write_all(fd, memoryview(data).cast("B"))


def send_many(fd: int, messages: list[bytes]) -> None:
    """Write several messages, the small ones together in one write()."""
    parts: list[bytes] = []
    for data in messages:
        if len(data) < _SMALL:
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        else:
            if parts:
                _write_all(fd, memoryview(b"".join(parts)))
                parts = []
            send_bytes(fd, data)
    if parts:
        _write_all(fd, memoryview(b"".join(parts)))


def end_reading(fd: int) -> None:
    """Reads of the socket *fd* return what is buffered, then EOF, whoever holds the other end.

    For a peer known to be gone, or to be given up on: EOF alone waits until
    every copy of the other end is closed, and another process may hold one.
    """
    import socket  # (containers import it only here)

    end = socket.socket(fileno=fd)
    try:
        end.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    finally:
        end.detach()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _read(fd: int, size: int, start: bytes = b"") -> bytes | bytearray:
    """*size* bytes from *fd*, the first of which are *start* (already read)."""
    got = len(start)
    if got == size:
        return start
    if size < _SMALL and not start:
        data = os.read(fd, size)
        if len(data) == size:
            return data
        if not data:
            raise EOFError
        start, got = data, len(data)
    buffer = bytearray(size)  # read in place: no big temporary per partial read
    buffer[:got] = start
    view = memoryview(buffer)
    while got < size:
        count = os.readv(fd, [view[got:]])
        if not count:
            raise EOFError
        got += count
    return buffer


class Reader:
    """The messages of one blocking socket, read as many at a time as have arrived.

    One ``read()`` takes up to 64 KiB, so a burst of small messages (results
    of calls sent ahead, say) costs one system call, not two per message. A
    message bigger than that is finished with exact reads. Whoever reads
    through a Reader must see :meth:`buffered` before waiting on the socket
    (select/poll): messages already read are no longer in the kernel's buffer.
    Not thread-safe: one reader at a time (see the dispatcher's borrowing).
    """

    __slots__ = ("_data", "_pos", "fd", "reads")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._data = b""
        self._pos = 0
        self.reads = 0  # times recv() had to read the socket (a read since a given moment: it changed)

    def buffered(self) -> bool:
        """Whether bytes were read ahead (a whole message, or the start of one)."""
        return self._pos < len(self._data)

    def ready(self) -> bool:
        """Whether a whole message was read ahead: :meth:`recv` returns it without reading."""
        data, pos = self._data, self._pos
        if len(data) - pos < 4:
            return False
        size: int = _LENGTH.unpack_from(data, pos)[0]
        return size >= 0 and len(data) - pos - 4 >= size

    def recv(self) -> bytes | bytearray:
        """The next message; blocks until it has arrived. EOFError when the other end closed."""
        data, pos = self._data, self._pos
        if len(data) - pos >= 4:
            (size,) = _LENGTH.unpack_from(data, pos)
            end = pos + 4 + size
            if size >= 0 and end <= len(data):
                self._pos = end
                return data[pos + 4 : end]
        return self._recv_more()

    def _recv_more(self) -> bytes | bytearray:
        self.reads += 1
        rest = self._data[self._pos :]
        self._data, self._pos = b"", 0
        while len(rest) < 4:
            chunk = os.read(self.fd, _SMALL)
            if not chunk:
                raise EOFError
            rest += chunk
        (size,) = _LENGTH.unpack_from(rest)
        head = 4
        if size == -1:
            rest = rest + _read(self.fd, 12 - len(rest)) if len(rest) < 12 else rest
            (size,) = _LONG_LENGTH.unpack_from(rest, 4)
            head = 12
        end = head + size
        if len(rest) >= end:
            self._data, self._pos = rest, end
            return rest[head:end]
        if size >= _SMALL:  # a big message: read exactly the rest of it
            return _read(self.fd, size, rest[head:])
        while len(rest) < end:
            chunk = os.read(self.fd, _SMALL)
            if not chunk:
                raise EOFError
            rest += chunk
        self._data, self._pos = rest, end
        return rest[head:end]


class Chunk:
    """Several inputs of one method (or callable), run one after the other as one call (map's chunks).

    With *star*, each input is a tuple of arguments; otherwise it is the one
    argument (``map`` over one iterable: no tuple per input to build and pickle).
    """

    __slots__ = ("inputs", "star", "what")

    def __init__(self, what: Any, inputs: Sequence[Any], star: bool = True) -> None:
        self.what = what  # method name, or a callable
        self.inputs = inputs
        self.star = star

    def __reduce__(self) -> tuple[Any, ...]:
        return (Chunk, (self.what, self.inputs, self.star))


_picklers: tuple[type, type] | None = None


def _cloud_picklers() -> tuple[type, type]:
    """lifepool's cloudpickle pickler and its exception pickler, made on first use.

    cloudpickle and tblib are imported here, not with this module: a container
    whose target and calls pickle by reference never needs them.
    """
    global _picklers
    if _picklers is None:
        from collections import ChainMap

        import cloudpickle  # type: ignore[import-untyped]
        from tblib import pickling_support

        cloudpickle_code_reduce = cloudpickle.Pickler._dispatch_table[types.CodeType]

        def code_reduce_keeping_filename(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
            reconstructor, args = cloudpickle_code_reduce(code)
            # cloudpickle blanks the file name to make payloads reproducible; put it back
            # so tracebacks and linecache find the user's source.
            args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
            return reconstructor, args

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # (cloudpickle ships no types)
            dispatch_table = ChainMap(
                {types.CodeType: code_reduce_keeping_filename}, cloudpickle.Pickler.dispatch_table
            )

        class ExceptionPickler(Pickler):
            """Pickles exceptions with their traceback, chain and notes (tblib).

            A private pickler rather than ``tblib.pickling_support.install()``, which
            would change how every exception pickles in the user's process.
            """

            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, BaseException):
                    if _rebuilt_from_args(obj):
                        return _reduce_builtin_exception(obj, pickling_support.unpickle_exception)
                    return pickling_support.pickle_exception(obj)
                if isinstance(obj, types.TracebackType):
                    return pickling_support.pickle_traceback(obj)
                return super().reducer_override(obj)

        _picklers = (Pickler, ExceptionPickler)
    return _picklers


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not built into CPython


def _rebuilt_from_args(exc: BaseException) -> bool:
    """Whether *exc* is a built-in exception best rebuilt by calling its class with its ``args``.

    tblib rebuilds an exception whose class has its own ``__init__`` but not
    its own ``__reduce__`` without calling ``__init__``, which suits user
    classes with odd constructors; but every built-in class has its own
    ``__init__``, and several set fields there from ``args``: a SyntaxError
    came back as "None" with no file or line, a UnicodeDecodeError as "",
    ``SystemExit.code`` and ``StopIteration.value`` as None (and its OSError
    branch dropped ``BlockingIOError.characters_written``). Plain pickle's
    way, the class called with ``args``, keeps them.
    """
    return not type(exc).__flags__ & _HEAP_TYPE


def _reduce_builtin_exception(exc: BaseException, rebuild: Any) -> tuple[Any, ...]:
    """tblib's reduction of *exc* that calls ``type(exc)(*exc.args)`` (see :func:`_rebuilt_from_args`)."""
    reduced: tuple[Any, ...] = exc.__reduce__()  # type: ignore[assignment]  # (an exception's: a tuple)
    cls, args, *rest = reduced
    state = rest[0] if rest else None
    if isinstance(exc, (NameError, AttributeError)) and exc.name is not None:
        state = {**(state or {}), "name": exc.name}  # (a keyword of __init__: not in args)
    chain = (exc.__cause__, exc.__traceback__, exc.__context__, exc.__suppress_context__)
    return rebuild, (cls, args, *chain, getattr(exc, "__notes__", None)), state


def cloud_dumps(obj: Any, buffer_callback: Any = None) -> bytes:
    """Encode *obj* with cloudpickle (by value for ``__main__`` code), keeping file names."""
    with io.BytesIO() as buf:
        _cloud_picklers()[0](buf, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        return buf.getvalue()


def _choose_pickler(obj: Any, buffer_callback: Any) -> bytes:
    """Plain pickle where it is enough, cloudpickle where it is not."""
    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    except Exception:  # noqa: BLE001 - whatever plain pickle refuses, cloudpickle gets a try
        return cloud_dumps(obj, buffer_callback)
    # A reference to __main__ would make the container look for the name in
    # its own __main__, which is not the user's script: ship it by value.
    if b"__main__" in data:
        return cloud_dumps(obj, buffer_callback)
    return data


def dumps(obj: Any) -> bytes:
    """Encode *obj*; buffers of a megabyte or more travel through shared memory (see _shm)."""
    return _shm.dumps(obj, pickler_dumps=_choose_pickler)


def dumps_inline(obj: Any) -> bytes:
    """Encode *obj* with every buffer in the message itself (for containers on other machines: no _shm)."""
    return _choose_pickler(obj, None)


loads = pickle.loads  # decodes plain pickles and _shm messages alike (unlinking their segments)
loads_keeping = _shm.loads_keeping  # for call bodies, which may be sent again (retries)
discard = _shm.discard  # a message that will not be decoded: unlink its segments
has_segments = _shm.has_segments
size = _shm.size  # bytes a message stands for, segments included


def format_exception(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def exception_blob(exc: BaseException) -> bytes:
    """Encode *exc* with its traceback and chain; fall back to a RemoteError.

    The blob is checked by decoding it once here: an exception class whose
    constructor cannot be replayed from ``args`` (a classic pickling trap) is
    caught on this side, where the original is still at hand.
    """
    text = format_exception(exc)
    data: bytes | None
    try:
        data = _dump_exception(exc)
    except BaseException as pickling_error:  # noqa: BLE001 - anything may be raised by user __reduce__
        # A traceback thousands of frames deep (a RecursionError, say) is too
        # deep to pickle; without its middle frames, the error itself may go.
        # An error whose cause (or context) cannot travel goes with a stand-in
        # for that link: it keeps its own type, so `except` clauses still match.
        data = _dump_with_short_tracebacks(exc)
        if data is None:
            data = _dump_with_stand_ins(exc)
        if data is None:
            stand_in = RemoteError(
                _type_name(exc),
                text,
                f"{_safe_str(exc)} (could not be sent between processes: "
                f"{type(pickling_error).__name__}: {_safe_str(pickling_error)})",
            )
            data = pickle.dumps(stand_in, PROTOCOL)
    return pickle.dumps((data, _type_name(exc), text), PROTOCOL)


def _dump_exception(exc: BaseException) -> bytes:
    with io.BytesIO() as buf:
        _cloud_picklers()[1](buf, protocol=PROTOCOL).dump(exc)
        data = buf.getvalue()
    loads(data)  # (see exception_blob)
    return data


KEPT_FRAMES = (10, 40)  # outermost and innermost frames kept of a traceback too deep to send


def _dump_with_short_tracebacks(exc: BaseException) -> bytes | None:
    """:func:`_dump_exception` with every long traceback in *exc*'s chain cut to KEPT_FRAMES; None if it still fails.

    The exceptions get their own tracebacks back afterwards (the container may
    still use them); what is sent carries a note saying how many frames were left out.
    """
    outer, inner = KEPT_FRAMES
    changed: list[tuple[BaseException, types.TracebackType | None, list[str] | None]] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        todo += [error.__cause__, error.__context__]
        entries = []
        tb = error.__traceback__
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        if len(entries) <= outer + inner:
            continue
        changed.append((error, error.__traceback__, getattr(error, "__notes__", None)))
        short = None
        for entry in reversed(entries[:outer] + entries[-inner:]):
            short = types.TracebackType(short, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        error.__traceback__ = short
        left_out = len(entries) - outer - inner
        error.__notes__ = [
            *(getattr(error, "__notes__", None) or []),
            f"lifepool: {left_out} frames of this traceback were left out (too deep to send)",
        ]
    if not changed:
        return None
    try:
        return _dump_exception(exc)
    except BaseException:  # noqa: BLE001
        return None
    finally:
        for error, tb, notes in changed:
            error.__traceback__ = tb
            _put_back_notes(error, notes)


def _dump_with_stand_ins(exc: BaseException) -> bytes | None:
    """*exc* encoded with each ``__cause__``/``__context__`` that cannot travel replaced by a RemoteError.

    A stand-in carries the link's type name and its formatted traceback (its
    own chain included), and the exception whose link it replaces gets a note
    saying so. None if *exc* cannot travel even then. The chain is put back
    as it was afterwards (the container may still use it).
    """
    changed: list[tuple[BaseException, BaseException | None, BaseException | None, bool, list[str] | None]] = []
    seen: set[int] = set()
    todo = [exc]
    try:
        while todo:
            error = todo.pop()
            if id(error) in seen:
                continue
            seen.add(id(error))
            cause, context = error.__cause__, error.__context__
            new_cause, new_context = cause, context
            replaced = []
            for link in {id(link): link for link in (cause, context) if link is not None}.values():
                if _travels_alone(link):
                    todo.append(link)
                    continue
                stand_in = stand_in_for(link)
                new_cause = stand_in if link is cause else new_cause
                new_context = stand_in if link is context else new_context
                replaced.append(
                    f"lifepool: {_type_name(link)} in this error's chain could not be sent "
                    "between processes; a RemoteError stands in for it"
                )
            if not replaced:
                continue
            suppress = error.__suppress_context__
            changed.append((error, cause, context, suppress, getattr(error, "__notes__", None)))
            error.__cause__, error.__context__ = new_cause, new_context
            error.__suppress_context__ = suppress  # (setting __cause__ sets it)
            error.__notes__ = [*(getattr(error, "__notes__", None) or []), *replaced]
        if not changed:
            return None
        try:
            return _dump_exception(exc)
        except BaseException:  # noqa: BLE001
            return _dump_with_short_tracebacks(exc)
    finally:
        for error, cause, context, suppress, notes in changed:
            error.__cause__, error.__context__ = cause, context
            error.__suppress_context__ = suppress
            _put_back_notes(error, notes)


def _travels_alone(exc: BaseException) -> bool:
    """Whether *exc* can be encoded without its own cause and context (those are checked one by one)."""
    cause, context, suppress = exc.__cause__, exc.__context__, exc.__suppress_context__
    exc.__cause__ = exc.__context__ = None
    try:
        _dump_exception(exc)
    except BaseException:  # noqa: BLE001
        return _dump_with_short_tracebacks(exc) is not None
    finally:
        exc.__cause__, exc.__context__ = cause, context
        exc.__suppress_context__ = suppress
    return True


def _put_back_notes(error: BaseException, notes: list[str] | None) -> None:
    if notes is None:
        del error.__notes__
    else:
        error.__notes__ = notes


def load_exception(blob: bytes) -> BaseException:
    """Decode what :func:`exception_blob` made; never raises."""
    data, type_name, text = pickle.loads(blob)
    try:
        exc = loads(data)
    except BaseException as error:  # noqa: BLE001
        return RemoteError(type_name, text, f"could not be decoded here: {error!r}")
    if not isinstance(exc, BaseException):
        return RemoteError(type_name, text, "decoded to a non-exception")
    return exc


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except BaseException:  # noqa: BLE001
        return f"<unprintable {type(obj).__name__}>"


def stand_in_for(exc: BaseException) -> RemoteError:
    """A picklable exception that carries *exc*'s type name and formatted traceback."""
    return RemoteError(_type_name(exc), format_exception(exc), _safe_str(exc))
