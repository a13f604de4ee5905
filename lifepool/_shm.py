"""Large buffers travel out-of-band, through POSIX shared memory.

A pickled 256 MB array pushed through a pipe is copied several times and
trickles through the pipe's 64 KiB window. Here the pickle stays on the pipe
but every large buffer goes into a shared-memory segment of its own
(``/dev/shm/lifepool-<owner pid>-<creator pid>-<16 hex digits>``); the
receiver maps it and a NumPy array is rebuilt on the mapping without a copy.

What goes out-of-band (every piece of at least :data:`THRESHOLD` bytes):

* protocol-5 pickle buffers (NumPy arrays, anything whose reducer makes a
  ``PickleBuffer``): the receiver gets a writable ``memoryview`` of the
  mapping, no copy;
* ``bytes``, ``bytearray`` and ``str``: the C pickler writes them in-band and
  shows them to no hook (``reducer_override`` and dispatch tables are skipped
  for these types), so their payloads are cut out of the finished pickle. A
  payload that big is always written outside pickle frames, so the stream's
  top level is walked frame by frame (one step per 64 KiB frame), never opcode
  by opcode. The cut becomes ``BININT i, BINPERSID`` and the receiver rebuilds
  the object with one copy (``bytes`` own their memory).

Pickling. The hot path is one call of the pickler with a stateless buffer
callback, then a length test: a pickle under :data:`THRESHOLD` with no big
buffer is returned as it is. The callback keeps small buffers in-band; at the
first big one it raises (a ``BaseException``, which a pickler chooser's
``except Exception`` lets through) and the object is pickled again with a
callback that collects buffers, wrapped in an object whose reduction clears the
collection: a chooser that starts over (plain pickle, then cloudpickle) leaves
exactly the buffers of the pickle it returns, in order.

Format. Every message is a pickle, so :func:`loads` *is* :func:`pickle.loads`
(no cost on the hot path, and any ``pickle.loads`` decodes a message):

* nothing big: the pickler's own bytes, untouched;
* otherwise a short pickle that calls ``_decode(meta, body, inline)``, always
  starting with the same bytes (``_MESSAGE_START``): ``meta`` is a pickle of
  ``(VERSION, buffers, objects)``; ``buffers`` lists the out-of-band buffers
  in the order the body's ``NEXT_BUFFER`` opcodes take them, each
  ``(where, size)``; ``objects`` lists the cut-out payloads by persistent id,
  each ``(kind, where, size)``, kind ``"b"``/``"a"``/``"s"`` for
  bytes/bytearray/str. ``where`` is a segment name, or an offset into
  ``inline`` for a buffer whose segment could not be made (``/dev/shm`` full):
  that one travels in the message; :func:`inlined` makes a copy of a message
  with every segment's content in ``inline`` (objects too: ``where`` is then
  an offset), for a receiver on another machine. ``body`` is the real
  protocol-5 pickle.

Lifetime and cleanup. The segment files themselves (names, owner, making,
unlinking, sweeping) are :mod:`lifepool._shmdir`'s; finding the big payloads
in a pickle is :mod:`lifepool._pickscan`'s.

* The sender writes each segment whole and closes it, keeping no mapping.
* Decoding a message opens every segment and unlinks its name at once, before
  anything is unpickled, so the names are gone even when unpickling fails. The
  memory lives on in the receiver's mappings (a NumPy array keeps its mapping)
  and is freed with them. A message is therefore decoded once;
  :func:`loads_keeping` leaves the names for a later :func:`discard` (a call
  body that may be sent again).
* A message that is never decoded (a dropped result, a call body whose
  container died) leaves its segments until :func:`discard` or :func:`sweep`
  unlinks them: ``sweep(owner)`` removes all a pool left (names carry the
  pool's parent pid, see :func:`set_owner`), ``sweep(owner, creator_pid)``
  what one process created, :func:`sweep_orphans` the segments of pools whose
  parent no longer runs.
* No ``/dev/shm`` (macOS, say): ``_shmdir.SHM_DIR`` is None and everything is
  pickled in-band, the pickler's bytes as they are. A segment that cannot be
  made (``/dev/shm`` full: 64 MB in a default Docker container) sends that
  buffer in-band instead, with one warning per process.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading

from . import _shmdir
from ._shmdir import (
    _MAX_RW,
    _OPEN_OLD,
    PREFIX,
    _create_segment,
    _map,
    _path,
    _unlink,
    owner,
    set_owner,
    sweep,
    sweep_orphans,
)

TYPE_CHECKING = False  # (not typing's: a container imports this module at start, and never typing)
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Any

    PicklerDumps = Callable[[Any, Any], bytes]  # (obj, buffer_callback) -> a protocol-5 pickle

__all__ = [
    "THRESHOLD",
    "discard",
    "dumps",
    "inlined",
    "loads",
    "loads_keeping",
    "owner",
    "segment_names",
    "set_owner",
    "size",
    "sweep",
    "sweep_orphans",
]  # (owner, set_owner, sweep and sweep_orphans live in _shmdir, with the segment files)

THRESHOLD = 1 << 20  # buffers smaller than this stay in-band

VERSION = 1

_U64 = struct.Struct("<Q")


# -- dumps ------------------------------------------------------------------


class _Restart(BaseException):
    """A big out-of-band buffer showed up: pickle again, collecting buffers.

    A BaseException, so that a pickler chooser's ``except Exception`` fallback
    does not catch it and run a second pickling on the same callback.
    """


def _probe(buf: pickle.PickleBuffer) -> bool:
    # The hot-path buffer callback: no state, so no per-call allocation.
    if memoryview(buf).nbytes < THRESHOLD:
        return True  # small: in-band
    raise _Restart


def _unwrap(obj: Any) -> Any:
    return obj


class _Root:
    """Wraps the object pickled by the collecting pass.

    Its reduction runs first in every pickling of it, so it clears what a
    previous attempt collected: a chooser that pickles twice (plain pickle,
    then cloudpickle) leaves exactly the last attempt's buffers, in order.
    """

    __slots__ = ("buffers", "obj")

    def __init__(self, obj: Any, buffers: list[pickle.PickleBuffer]) -> None:
        self.obj = obj
        self.buffers = buffers

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        self.buffers.clear()
        return _unwrap, (self.obj,)


def dumps(obj: Any, *, pickler_dumps: PicklerDumps) -> bytes:
    """Pickle *obj* (protocol 5) with every buffer of at least THRESHOLD bytes in shared memory.

    ``pickler_dumps(obj, buffer_callback)`` does the pickling with protocol 5
    and returns bytes; ``buffer_callback`` goes to the pickler as it is (it
    may be None: everything in-band). It may pickle more than once (plain
    pickle, then cloudpickle) with the same callback, but must not use
    persistent ids (this module uses them in the messages it makes).

    When nothing is big the result is exactly what ``pickler_dumps`` returned.
    Otherwise it is a small message naming one new segment per big buffer; it
    must be decoded once (or passed to :func:`discard`), or :func:`sweep` cleans up.
    """
    # The hot path is the first call and the length test: nothing else runs when nothing is big.
    try:
        data = pickler_dumps(obj, _probe)
    except _Restart:
        if _shmdir.SHM_DIR is None:
            return pickler_dumps(obj, None)
        buffers: list[pickle.PickleBuffer] = []

        def collect(buf: pickle.PickleBuffer) -> bool:
            if memoryview(buf).nbytes < THRESHOLD:
                return True
            buffers.append(buf)
            return False

        data = pickler_dumps(_Root(obj, buffers), collect)
        return _encode(data, buffers)
    if len(data) < THRESHOLD:
        return data
    return _encode(data, [])


def _encode(data: bytes, buffers: list[pickle.PickleBuffer]) -> bytes:
    if _shmdir.SHM_DIR is None:
        return data
    view = memoryview(data)
    items: list[tuple[str, int, int, int]] = []
    if len(data) >= THRESHOLD:
        from ._pickscan import _big_items  # (here: only a pickle this big is walked)

        items = _big_items(view, THRESHOLD)
    if not buffers and not items:
        return data
    created: list[str] = []
    try:
        entries: list[tuple[str | int, int]] = []  # (segment name, or offset in the inline part; size)
        inline: list[memoryview] = []
        inline_size = 0
        for buf in buffers:
            raw = buf.raw()  # contiguous (C or Fortran) as 1-D unsigned bytes
            name = _create_segment(raw)
            if name is None:
                entries.append((inline_size, raw.nbytes))
                inline.append(raw)
                inline_size += raw.nbytes
            else:
                created.append(name)
                entries.append((name, raw.nbytes))
        objects: list[tuple[str, str, int]] = []  # (kind, segment name, size)
        body_parts: list[memoryview | bytes] = []
        done = 0
        for kind, start, payload, end in items:
            name = _create_segment(view[payload:end])
            if name is None:
                continue  # stays in-band
            created.append(name)
            body_parts.append(view[done:start])
            body_parts.append(_persistent_ref(len(objects)))
            objects.append((kind, name, end - payload))
            done = end
        if not entries and not objects:
            return data  # no segment could be made and nothing was out-of-band
        body_parts.append(view[done:])
        return _message(body_parts, entries, objects, inline)
    except BaseException:
        for name in created:
            _unlink(name)
        raise


def _message(body_parts: list[Any], buffers: list[Any], objects: list[Any], inline: list[memoryview]) -> bytes:
    """A pickle of ``_decode(meta, body, inline)``, written by hand to copy the body once."""
    meta = pickle.dumps((VERSION, buffers, objects), 5)
    body_len = sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in body_parts)
    inline_len = sum(part.nbytes for part in inline)
    return b"".join(
        [
            _MESSAGE_START,
            _BINBYTES8,
            _U64.pack(len(meta)),
            meta,
            _BINBYTES8,
            _U64.pack(body_len),
            *body_parts,
            _BINBYTES8,
            _U64.pack(inline_len),
            *inline,
            b"\x87R.",  # TUPLE3, REDUCE, STOP
        ]
    )


def _persistent_ref(index: int) -> bytes:
    if index < 256:
        return b"K" + bytes([index]) + b"Q"  # BININT1 index, BINPERSID
    return b"J" + index.to_bytes(4, "little") + b"Q"  # BININT index, BINPERSID


# -- loads -------------------------------------------------------------------

# A message is a pickle whose decoding calls _decode(): loads(data) -> object is
# pickle.loads itself, so the hot path pays nothing for this module.
loads = pickle.loads

_keeping = threading.local()


def loads_keeping(data: bytes | memoryview) -> Any:
    """Like :func:`loads`, but leave the segments' names for a later :func:`discard`.

    For a message that may be decoded again (a call body resent after its
    container died). Arrays are then mapped copy-on-write: what one decoding
    writes into them stays its own, the next decoding sees the original.
    """
    _keeping.on = True
    try:
        return pickle.loads(data)
    finally:
        _keeping.on = False


def _decode(meta: bytes, body: bytes, inline: bytes) -> Any:
    """Rebuild the value of a message: map its segments, unlink their names, unpickle the body."""
    version, buffer_entries, object_entries = pickle.loads(meta)
    if version != VERSION:
        raise pickle.UnpicklingError(f"lifepool shared-memory message version {version}, this is {VERSION}")
    unlink = not getattr(_keeping, "on", False)
    fds: dict[str, int] = {}
    try:
        missing = []
        for name in _names(buffer_entries, object_entries):  # open all and drop the names first
            path = _path(name)
            try:
                fds[name] = os.open(path, _OPEN_OLD)
            except FileNotFoundError:
                missing.append(name)
                continue
            if unlink:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if missing:
            raise FileNotFoundError(
                f"shared memory segment(s) {', '.join(missing)} are gone: "
                "the message was decoded, discarded or swept already"
            )
        buffers: list[memoryview | bytearray] = []
        for where, size in buffer_entries:
            if isinstance(where, str):
                # Unlinked, the segment is the receiver's alone: writes go to it, no copy. Kept for
                # another decoding, each decoding writes into copy-on-write pages of its own.
                buffers.append(memoryview(_map(fds[where], size, writable=True, private=not unlink)))
            else:  # it travelled in-band: a writable copy, as plain pickle gives
                buffers.append(bytearray(memoryview(inline)[where : where + size]))
        objects = [_object(kind, where, size, fds, inline) for kind, where, size in object_entries]
    finally:
        for fd in fds.values():
            os.close(fd)
    if objects:
        return _ObjectsUnpickler(io.BytesIO(body), objects, buffers).load()
    return pickle.loads(body, buffers=buffers)


class _ObjectsUnpickler(pickle.Unpickler):
    """Resolves the cut-out payloads (persistent ids are their positions).

    A subclass rather than an instance attribute: Python 3.13 made
    ``persistent_load`` read-only on the C unpickler's instances.
    """

    def __init__(self, file: io.BytesIO, objects: list[Any], buffers: list[Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._objects = objects

    def persistent_load(self, pid: int) -> object:
        return self._objects[pid]


def _short_unicode(text: str) -> bytes:
    encoded = text.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded  # SHORT_BINUNICODE


_BINBYTES8 = b"\x8e"
# PROTO 5, the global _decode (STACK_GLOBAL); then come its three bytes arguments, TUPLE3, REDUCE, STOP.
_MESSAGE_START = b"\x80\x05" + _short_unicode(__name__) + _short_unicode(_decode.__name__) + b"\x93"
_START_LEN = len(_MESSAGE_START)


def _names(buffer_entries: list[Any], object_entries: list[Any]) -> list[str]:
    names = [where for where, _ in buffer_entries if isinstance(where, str)]
    names += [where for _, where, _ in object_entries if isinstance(where, str)]
    for name in names:
        if not name.startswith(PREFIX) or "/" in name or "\0" in name:
            raise pickle.UnpicklingError(f"not a lifepool shared memory segment name: {name!r}")
    return names


def _object(kind: str, where: str | int, size: int, fds: dict[str, int], inline: bytes) -> Any:
    if isinstance(where, str):
        return _read_object(kind, fds[where], size)
    data = memoryview(inline)[where : where + size]  # carried in the message (see inlined)
    if kind == "s":
        return str(data, "utf-8", "surrogatepass")
    return bytearray(data) if kind == "a" else bytes(data)


def _read_object(kind: str, fd: int, size: int) -> Any:
    if kind == "s":
        mapping = _map(fd, size, writable=False)
        try:
            return str(mapping, "utf-8", "surrogatepass")
        finally:
            mapping.close()
    if kind == "b" and size <= _MAX_RW:
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    target = bytearray(size)
    view = memoryview(target)
    done = 0
    while done < size:
        got = os.preadv(fd, [view[done : done + _MAX_RW]], done)
        if got <= 0:
            raise pickle.UnpicklingError(f"shared memory segment ended after {done} of {size} bytes")
        done += got
    view.release()
    return target if kind == "a" else bytes(target)


# -- cleanup -----------------------------------------------------------------


def _meta(view: memoryview) -> tuple[list[Any], list[Any]]:
    """The (buffers, objects) entries of a message (see the module docstring)."""
    (meta_len,) = _U64.unpack_from(view, _START_LEN + 1)
    _, buffers, objects = pickle.loads(view[_START_LEN + 9 : _START_LEN + 9 + meta_len])
    return buffers, objects


def inlined(data: bytes | memoryview) -> bytes:
    """*data* with its segments' contents carried in the message itself (for a receiver on another machine).

    The segments stay (their names are the sender's to discard, as for the
    original); the copy decodes anywhere, with or without ``/dev/shm``.
    """
    view = memoryview(data)
    if view[:_START_LEN] != _MESSAGE_START:
        return data if isinstance(data, bytes) else bytes(data)
    buffers, objects = _meta(view)
    pos = _START_LEN + 9 + _U64.unpack_from(view, _START_LEN + 1)[0]  # past the meta: the body's BINBYTES8
    (body_len,) = _U64.unpack_from(view, pos + 1)
    body = view[pos + 9 : pos + 9 + body_len]
    pos += 9 + body_len
    inline: list[memoryview] = [view[pos + 9 : pos + 9 + _U64.unpack_from(view, pos + 1)[0]]]
    inline_size = inline[0].nbytes
    mappings: list[mmap.mmap] = []

    def carry(name: str, size: int) -> int:
        nonlocal inline_size
        fd = os.open(_path(name), _OPEN_OLD)
        try:
            mappings.append(_map(fd, size, writable=False))
        finally:
            os.close(fd)
        inline.append(memoryview(mappings[-1])[:size])
        inline_size, offset = inline_size + size, inline_size
        return offset

    try:
        buffers = [(carry(where, n) if isinstance(where, str) else where, n) for where, n in buffers]
        objects = [(kind, carry(where, n) if isinstance(where, str) else where, n) for kind, where, n in objects]
        return _message([body], buffers, objects, inline)
    finally:
        for part in inline[1:]:
            part.release()
        for mapping in mappings:
            mapping.close()


def segment_names(data: bytes | memoryview) -> list[str]:
    """The names of the segments a message refers to ([] for a plain pickle)."""
    view = memoryview(data)
    if view[:_START_LEN] != _MESSAGE_START:
        return []
    return _names(*_meta(view))


def size(data: bytes | memoryview) -> int:
    """The bytes a message stands for: its own, and those of its segments."""
    if data[:_START_LEN] != _MESSAGE_START:
        return len(data)
    buffers, objects = _meta(memoryview(data))
    in_segments: int = sum(n for where, n in buffers if isinstance(where, str))
    in_segments += sum(n for _, where, n in objects if isinstance(where, str))
    return len(data) + in_segments


def has_segments(data: bytes | memoryview) -> bool:
    """Whether *data* is a message with shared-memory segments (cheap: a prefix test)."""
    return data[:_START_LEN] == _MESSAGE_START  # (bytes or memoryview: no copy either way)


def discard(data: bytes | memoryview) -> int:
    """Unlink the segments of a message that will not be decoded (again); returns how many were removed."""
    return sum(_unlink(name) for name in segment_names(data))
