"""Finding the segments a frame stream names, for shipping them between machines (lifepool._ship)."""

from __future__ import annotations

import os
import random

import pytest

from lifepool import _ship, _shm, _shmdir, _wire

pytestmark = pytest.mark.skipif(_shmdir.SHM_DIR is None, reason="no /dev/shm here")


def _stream(rng: random.Random) -> tuple[bytes, list[str]]:
    """Frames as a container writes them: plain ones, messages with segments, and a map chunk nesting one."""
    frames, names = [], []
    for i in range(40):
        kind = rng.choice(["plain", "message", "nested", "big"])
        if kind == "plain":
            body = _wire.dumps(("x" * rng.randrange(50), i))
        elif kind == "big":
            body = _wire.dumps_inline(b"z" * rng.randrange(70_000, 200_000))  # (in-band: no segment)
        else:
            message = _wire.dumps(bytearray(os.urandom(8)) * (_shm.THRESHOLD // 8 + 1))
            names += _shm.segment_names(message)
            body = message if kind == "message" else _wire.dumps_inline((message, {}))
        frames.append(_wire.frame(_wire.RESULT, i, 1, body))
    return _wire.stream(frames), names


@pytest.mark.parametrize("seed", range(8))
def test_the_scanner_finds_every_segment_name_however_the_stream_is_cut(seed):
    rng = random.Random(seed)
    data, names = _stream(rng)
    try:
        assert names and _ship.names_in(data) == names
        for cuts in ([1] * 200, [7, 3, 40], [4096], [65_536, 1], [len(data)]):
            scanner, found, pos, step = _ship.Scanner(), [], 0, 0
            while pos < len(data):
                size = cuts[step % len(cuts)] if step < len(cuts) * 50 else rng.randrange(1, 100_000)
                found += scanner.feed(data[pos : pos + size])
                pos, step = pos + size, step + 1
            assert found == names
    finally:
        for name in names:
            _shmdir._unlink(name)


def test_bytes_that_only_look_like_a_message_name_nothing_and_run_nothing():
    fake = _shm._MESSAGE_START + b"\x8e" + (20).to_bytes(8, "little") + b"cos\nsystem\n(S'true'\ntR."
    assert _ship.names_in(b"abc" + fake + b"def") == []
    assert _ship.Scanner().feed(fake[:10]) == []
