"""Shared-memory segments shipped between machines: a Ray container on another node than the driver.

Locally a big buffer crosses as a segment (``_shm``): written once, mapped
by the receiver. A Ray container on another node cannot map the driver's
``/dev/shm``, but it shares its own node's with its actor. So the segments
themselves travel, each as an out-of-band buffer of the Ray call or reply
that carries the frame naming it (Ray puts buffers that big in its object
store and moves them between nodes itself), and are written back as segments
of the same name on the other side before that frame is written to its
reader. The frames are untouched; both ends encode and decode as locally.

* Driver to container: the driver's transport maps each segment a frame
  names (:func:`mapped`) and passes the buffers with the io call; the actor
  writes them (:func:`put`) into the container's own directory, a private
  subdirectory of its node's ``/dev/shm`` (:func:`make_dir`), then the frame.
  The container decodes them once and unlinks them (they are its copy: a
  retry ships them again), the actor removes the directory when the
  container has ended.
* Container to driver: the container writes its segments into that
  directory; the actor finds the names in the frames it relays
  (:class:`Scanner`, which looks for messages' shared-memory headers and
  reads nothing else), maps and unlinks them (:func:`taken`) and returns the
  buffers with the bytes; the driver writes them into its ``/dev/shm``
  before those bytes, where its reader decodes and unlinks them as any.

A segment is always complete before a message naming it is written, and a
message's header (where the names are) comes before its end, so a buffer
always arrives with or before the bytes that finish its frame.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import shutil
import tempfile
from typing import Any

from . import _shm, _shmdir

_DIR_PREFIX = "lifepool_ship-"  # (not _shmdir.PREFIX: a segment sweep never takes the directory)
_HEAD = _shm._START_LEN + 9  # a message's start, then its meta's length (BINBYTES8)


def make_dir() -> str | None:
    """A new private (0700) directory in this node's ``/dev/shm`` for one container's segments (None: none)."""
    if _shmdir.SHM_DIR is None:
        return None
    try:
        return tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=_shmdir.SHM_DIR)
    except OSError:
        return None


def remove_dir(directory: str | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def mapped(directory: str, names: list[str]) -> list[tuple[str, pickle.PickleBuffer]]:
    """The segments *names* of *directory*, mapped read-only (they stay; their owner unlinks them)."""
    return [(name, pickle.PickleBuffer(_open(directory, name, unlink=False))) for name in names]


def taken(directory: str, names: list[str]) -> list[tuple[str, pickle.PickleBuffer]]:
    """The segments *names* of *directory*, mapped and unlinked (they now travel); missing ones are left out."""
    shipped = []
    for name in names:
        try:
            shipped.append((name, pickle.PickleBuffer(_open(directory, name, unlink=True))))
        except FileNotFoundError:
            pass  # (in-band after all, or discarded: the receiver says what is missing)
    return shipped


def _open(directory: str, name: str, *, unlink: bool) -> mmap.mmap | bytes:
    path = os.path.join(directory, os.path.basename(name))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if unlink:
            os.unlink(path)
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else b""
    finally:
        os.close(fd)


def put(directory: str, shipped: list[tuple[str, object]]) -> None:
    """Write shipped buffers as segments of their names in *directory*.

    A segment that cannot be written (the directory full) is left out with
    an error logged: the frame naming it then fails to decode, and says so.
    """
    for name, buffer in shipped:
        with memoryview(buffer) as view:  # type: ignore[arg-type]
            try:
                _shmdir._write_new(os.path.join(directory, os.path.basename(name)), view)
            except FileExistsError:
                pass  # (delivered twice)
            except OSError as error:
                _log_failure(name, view.nbytes, error)


def _log_failure(name: str, size: int, error: OSError) -> None:
    import logging

    logging.getLogger("lifepool").error(
        "lifepool: a shipped segment (%s, %d bytes) was not written: %s", name, size, error
    )


_START = _shm._MESSAGE_START
_HEAD_MAX = 1 << 20  # a message's start and meta take less than this (a meta lists its segments: small)


def names_in(data: bytes) -> list[str]:
    """The segment names of every message in *data* (whole frames), nested ones included."""
    return _find(data)[0]


class Scanner:
    """Fed a frame stream's bytes in order, returns the names of the segments the messages in them name.

    A message may sit anywhere in a frame (a chunk of ``map`` results nests
    one per chunk), so the scan looks for every message's start
    (``_shm._MESSAGE_START``, found with ``bytes.find``) and reads its meta;
    a start or meta cut by the end of *data* is completed with the next
    bytes. A false start in other bytes (a user's value that holds those
    bytes) at worst names segments that do not exist, which are skipped.
    """

    def __init__(self) -> None:
        self._tail = b""  # the last bytes, when they may begin a message's head

    def feed(self, data: bytes) -> list[str]:
        names: list[str] = []
        if self._tail:  # (rare: a message's head cut between two reads)
            tail, self._tail = self._tail, b""
            window = tail + data[:_HEAD_MAX]
            found, keep = _find(window, stop=len(tail))
            names += found
            if keep < len(tail) and len(window) < _HEAD_MAX:
                self._tail = window[keep:]  # (still incomplete: wait for more)
                return names
        found, keep = _find(data)
        self._tail = data[keep:]
        return names + found


def _find(data: bytes, stop: int | None = None) -> tuple[list[str], int]:
    """``(the names in the heads of the messages starting in data[:stop], where a cut head begins)``.

    The second item is ``len(data)`` when no head is cut, else where the
    bytes to keep for the next read begin (a head, or what may begin a start).
    """
    names: list[str] = []
    end = len(data)
    limit = end if stop is None else stop
    pos = 0
    while True:
        at = data.find(_START, pos, limit + len(_START) - 1 if stop is not None else end)
        if at < 0:
            return names, _cut_start(data, max(pos, end - len(_START) + 1))
        meta_at = at + _HEAD
        if meta_at > end:
            return names, at
        pos = at + 1
        if data[at + _shm._START_LEN] != pickle.BINBYTES8[0]:
            continue  # (not a message after all)
        (meta_len,) = _shm._U64.unpack_from(data, at + _shm._START_LEN + 1)
        if meta_len > _HEAD_MAX:
            continue
        if meta_at + meta_len > end:
            return names, at
        try:
            _, buffers, objects = _MetaUnpickler(io.BytesIO(data[meta_at : meta_at + meta_len])).load()
            names += _shm._names(buffers, objects)
        except Exception:  # noqa: BLE001 - a false start: other bytes
            continue
        pos = meta_at + meta_len


class _MetaUnpickler(pickle.Unpickler):
    """A meta is tuples of ints and strings: bytes that only look like one never import or call anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("not a lifepool meta")


def _cut_start(data: bytes, start: int) -> int:
    """Where a message's start may begin, cut by the end of *data* (from *start* on); else ``len(data)``."""
    at = data.find(_START[:1], start)
    while at >= 0:
        if _START.startswith(data[at:]):
            return at
        at = data.find(_START[:1], at + 1)
    return len(data)
