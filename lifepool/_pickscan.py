"""Finding the big ``bytes``, ``bytearray`` and ``str`` payloads in a finished pickle.

The C pickler writes these in-band and shows them to no hook, so
:mod:`lifepool._shm` cuts their payloads out of the pickle it got. A payload
that big is always written outside pickle frames, so only the stream's top
level is walked, frame by frame. Imported on the slow path only (a pickle of
at least ``_shm.THRESHOLD`` bytes), as ``pickletools`` is.
"""

from __future__ import annotations

import struct

_U64 = struct.Struct("<Q")

_FRAME = 0x95
_STOP = 0x2E
# Opcodes whose big payload is cut out, and what the receiver rebuilds.
_KINDS = {0x42: "b", 0x8E: "b", 0x96: "a", 0x58: "s", 0x8D: "s"}  # BINBYTES(8), BYTEARRAY8, BINUNICODE(8)
# Argument layout per opcode: n >= 0 fixed size; else (size of the length prefix, signed).
_ARGS: dict[int, int | tuple[int, bool]] = {}
_MAX_SMALL_RUN = 16  # framed pickles only leave runs of < 4 bytes outside frames
_FRAME_SIZE_TARGET = 64 * 1024  # picklers write payloads of this size or more outside frames


def _argument_layouts() -> dict[int, int | tuple[int, bool]]:
    import pickletools  # only on the slow path

    prefixed = {
        pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
        pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
        pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
        pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
    }
    layouts: dict[int, int | tuple[int, bool]] = {}
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        if n >= 0:
            layouts[ord(op.code)] = n
        elif n in prefixed:
            layouts[ord(op.code)] = prefixed[n]
        # else: text arguments (protocol 0): not walked
    return layouts


def _big_items(data: memoryview, threshold: int) -> list[tuple[str, int, int, int]]:
    """``(kind, opcode start, payload start, end)`` of the bytes/bytearray/str payloads of *threshold* bytes or more.

    Walks only the top level of a framed (protocol >= 4) pickle: a FRAME is
    skipped whole, and big payloads are never framed. Anything unexpected
    (no framing, text opcodes) ends the walk early; what was found so far
    stands, the rest simply stays in-band.
    """
    global _ARGS
    n = len(data)
    if n < 2 or data[0] != 0x80 or data[1] < 4:
        return []
    layouts = _ARGS or (_ARGS := _argument_layouts())
    items = []
    pos = 2
    small_run = 0
    while pos < n:
        op = data[pos]
        if op == _FRAME:
            pos += 9 + _U64.unpack_from(data, pos + 1)[0]
            small_run = 0
            continue
        layout = layouts.get(op)
        if layout is None:
            break
        if isinstance(layout, int):
            if op == _STOP:
                break
            pos += 1 + layout
            small_run += 1
            if small_run > _MAX_SMALL_RUN:
                break  # not framed: walking every opcode would be slow
            continue
        width, signed = layout
        size = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=signed)
        payload = pos + 1 + width
        end = payload + size
        if size >= threshold and op in _KINDS and end <= n:
            items.append((_KINDS[op], pos, payload, end))
        if size >= _FRAME_SIZE_TARGET:
            small_run = 0  # payloads this big are written outside frames
        else:
            small_run += 1
            if small_run > _MAX_SMALL_RUN:
                break
        pos = end
    return items
