"""Large buffers through shared memory (lifepool._shm, _shmdir): round trips, segment lifetime, cleanup, fallback."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import select
import stat
import subprocess
import sys
import textwrap

import cloudpickle
import numpy as np
import pytest
from targets import on_shared_memory

from lifepool import _shm, _shmdir

pytestmark = pytest.mark.skipif(_shmdir.SHM_DIR is None, reason="no /dev/shm on this system")

MB = 1 << 20


def plain(obj, buffer_callback):
    return pickle.dumps(obj, 5, buffer_callback=buffer_callback)


def chooser(obj, buffer_callback):
    """Like lifepool's: plain pickle, cloudpickle when that fails or names __main__."""
    try:
        data = pickle.dumps(obj, 5, buffer_callback=buffer_callback)
    except Exception:
        return cloudpickle.dumps(obj, 5, buffer_callback=buffer_callback)
    if b"__main__" in data:
        return cloudpickle.dumps(obj, 5, buffer_callback=buffer_callback)
    return data


def dumps(obj, pickler_dumps=plain):
    return _shm.dumps(obj, pickler_dumps=pickler_dumps)


def ours(owner: int) -> list[str]:
    return sorted(name for name in os.listdir(_shmdir.SHM_DIR) if name.startswith(f"lifepool-{owner}-"))


@pytest.fixture(autouse=True)
def owner():
    """Segments of each test are named after this process; none may be left at the end."""
    pid = os.getpid()
    _shmdir.set_owner(pid)
    try:
        yield pid
        assert ours(pid) == [], "segments left in /dev/shm"
    finally:
        _shmdir.sweep(pid)
        _shmdir.set_owner(None)


def round_trip(obj, pickler_dumps=plain, *, expect_segments: int | None = None):
    message = dumps(obj, pickler_dumps)
    names = _shm.segment_names(message)
    if expect_segments is not None:
        assert len(names) == expect_segments
    value = _shm.loads(message)
    for name in names:
        assert not os.path.exists(os.path.join(_shmdir.SHM_DIR, name)), "loads left the name"
    return value


def assert_same_array(loaded, original):
    expected = pickle.loads(pickle.dumps(original, 5))  # what plain pickle gives
    assert type(loaded) is np.ndarray
    assert loaded.dtype == original.dtype
    assert loaded.shape == original.shape
    assert loaded.strides == expected.strides
    assert np.array_equal(loaded, original)


# -- round trips ----------------------------------------------------------------


def test_tiny_objects_are_the_plain_pickle():
    for obj in [(1, "x", None), {"a": [1, 2.5, b"xy"]}, np.arange(10), b"x" * 1000, "é" * 1000]:
        message = dumps(obj)
        assert message == pickle.dumps(obj, 5)
        loaded = _shm.loads(message)
        if isinstance(obj, np.ndarray):
            assert np.array_equal(loaded, obj)
        else:
            assert loaded == obj


def test_loads_is_pickle_loads():
    assert _shm.loads is pickle.loads


def test_size_counts_what_the_segments_hold():
    small = dumps([1, 2, 3])
    assert _shm.size(small) == len(small)
    message = dumps([np.zeros(2 * MB, dtype=np.uint8), b"x" * (3 * MB), "small"])
    try:
        assert len(_shm.segment_names(message)) == 2
        assert len(message) < 2000
        assert _shm.size(message) == len(message) + 5 * MB
    finally:
        _shm.discard(message)


def test_big_pickle_of_small_pieces_is_the_plain_pickle():
    obj = [b"%d" % i for i in range(300_000)] + [np.arange(i) for i in range(100)]
    message = dumps(obj)
    assert len(message) > _shm.THRESHOLD
    assert message == pickle.dumps(obj, 5)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(MB // 4, dtype=np.float64).reshape(512, 512),
        np.asfortranarray(np.arange(MB // 4, dtype=np.int32).reshape(512, 512)),
        np.arange(3 * MB // 8, dtype=np.complex64).reshape(3, 64, -1),
        np.zeros(MB // 8, dtype=[("a", "<i4"), ("b", ">f8")]),
    ],
    ids=["C float64", "Fortran int32", "3-D complex64", "structured"],
)
def test_numpy_arrays_arrive_without_copy(array):
    snapshot = array.tobytes()
    loaded = round_trip(array, expect_segments=1)
    assert_same_array(loaded, array)
    assert on_shared_memory(loaded)
    assert loaded.flags.writeable
    loaded.reshape(-1, order="A").view(np.uint8)[...] = 7  # the receiver's own memory: the sender's array is untouched
    assert array.tobytes() == snapshot


def test_non_contiguous_arrays_arrive_as_plain_pickle_makes_them():
    base = np.arange(2 * MB, dtype=np.int64).reshape(1024, -1)
    for view in [base[:, ::2], base[::2, ::3].T, base[::-1]]:
        assert_same_array(round_trip(view), view)


def test_bytes_bytearray_and_str():
    data = os.urandom(2 * MB)
    for obj in [data, bytearray(data), "ünïcode\ud800" * (MB // 4)]:
        loaded = round_trip(obj, expect_segments=1)
        assert type(loaded) is type(obj)
        assert loaded == obj


def test_nested_structures_mixing_small_and_big():
    big = np.random.default_rng(1).random((512, 300))
    blob = os.urandom(3 * MB)
    obj = {
        "arrays": [big, np.asfortranarray(big), np.arange(5)],
        "same": (big, big),
        "blobs": [blob, b"small", blob, bytearray(blob)],
        "text": "t" * (2 * MB),
        "numbers": list(range(1000)),
        "tuple": (1, "x", None),
    }
    loaded = round_trip(obj, expect_segments=5)  # big, its Fortran copy, blob, bytearray(blob), text
    for got, want in zip(loaded["arrays"], obj["arrays"]):
        assert_same_array(got, want)
    assert loaded["same"][0] is loaded["same"][1] is loaded["arrays"][0]
    assert loaded["blobs"][0] is loaded["blobs"][2]
    assert loaded["blobs"] == obj["blobs"]
    assert type(loaded["blobs"][3]) is bytearray
    assert {k: loaded[k] for k in ("text", "numbers", "tuple")} == {k: obj[k] for k in ("text", "numbers", "tuple")}


def test_many_mid_size_pieces_then_a_big_one():
    # Pieces of 64 KiB to 1 MiB are written outside frames too: the walk must go past them.
    obj = [os.urandom(100_000) for _ in range(40)] + [os.urandom(2 * MB)]
    assert round_trip(obj, expect_segments=1) == obj


def test_pure_python_pickler_output():
    obj = [np.arange(3), os.urandom(2 * MB), "s" * 70_000, os.urandom(MB)]

    def pure(o, buffer_callback):
        return pickle._dumps(o, 5, buffer_callback=buffer_callback)

    loaded = round_trip(obj, pure, expect_segments=2)
    assert np.array_equal(loaded[0], obj[0])
    assert loaded[1:] == obj[1:]


def test_pickle_buffer_exporters():
    readonly = pickle.PickleBuffer(os.urandom(2 * MB))
    loaded = round_trip(readonly, expect_segments=1)
    assert loaded.readonly and bytes(loaded) == bytes(readonly.raw())


def test_a_chooser_that_pickles_twice_keeps_buffers_in_order():
    first = np.full(MB // 8, 1.0)
    second = np.full(MB // 8, 2.0)
    # plain pickle takes `first` out-of-band, then fails on the lambda; cloudpickle starts over
    blob = os.urandom(2 * MB)
    fn, a, b, c = round_trip((lambda x: x + 1, first, second, blob), chooser, expect_segments=3)
    assert fn(1) == 2
    assert np.array_equal(a, first) and np.array_equal(b, second)
    assert c == blob


def test_segments_are_private_and_named_after_owner_and_creator(owner):
    message = dumps([np.ones(MB), os.urandom(2 * MB)])
    names = _shm.segment_names(message)
    assert len(names) == 2
    for name in names:
        st = os.stat(os.path.join(_shmdir.SHM_DIR, name))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert name.startswith(f"lifepool-{owner}-{os.getpid()}-")
    assert ours(owner) == sorted(names)
    _shm.loads(message)
    assert ours(owner) == []


def test_owner_from_the_environment(monkeypatch):
    _shmdir.set_owner(None)
    monkeypatch.setenv(_shmdir.OWNER_ENV, "424242")
    assert _shmdir.owner() == 424242
    message = dumps(os.urandom(2 * MB))
    try:
        assert _shm.segment_names(message)[0].startswith("lifepool-424242-")
    finally:
        assert _shm.discard(message) == 1
    monkeypatch.delenv(_shmdir.OWNER_ENV)
    assert _shmdir.owner() == os.getpid()


# -- lifetime --------------------------------------------------------------------------


class Vanishing:
    pass


def test_names_are_gone_even_when_unpickling_fails(owner, monkeypatch):
    message = dumps([np.ones(MB), Vanishing()])
    monkeypatch.delattr(sys.modules[__name__], "Vanishing")
    with pytest.raises(AttributeError):
        _shm.loads(message)
    assert ours(owner) == []


def test_a_message_decodes_once():
    message = dumps(np.ones(MB))
    _shm.loads(message)
    with pytest.raises(FileNotFoundError, match="gone"):
        _shm.loads(message)


def test_loads_keeping_then_discard(owner):
    array = np.arange(MB // 8)
    message = dumps(array)
    first = _shm.loads_keeping(message)
    assert np.array_equal(first, array) and first.flags.writeable
    first[:] = -1  # copy-on-write: the segment keeps the original for the next decoding
    assert np.array_equal(_shm.loads_keeping(message), array)
    assert len(ours(owner)) == 1
    assert _shm.discard(message) == 1
    assert _shm.discard(message) == 0
    assert _shm.discard(pickle.dumps(1)) == 0


def test_a_mapping_outlives_the_message_and_is_freed_with_the_array(owner):
    loaded = round_trip(np.arange(MB // 8))
    assert ours(owner) == []
    assert loaded.sum() == (MB // 8) * (MB // 8 - 1) // 2
    del loaded  # unmaps: nothing to check but that this does not crash


def test_across_processes(owner, tmp_path):
    """A child process decodes a message made here: it sees the data, and the names are gone after."""
    array = np.random.default_rng(2).random(MB // 2)
    blob = os.urandom(2 * MB)
    message = dumps({"array": array, "blob": blob})
    child = textwrap.dedent(
        """
        import hashlib, sys
        from lifepool import _shm
        value = _shm.loads(sys.stdin.buffer.read())
        print(hashlib.sha256(value["array"].tobytes() + value["blob"]).hexdigest())
        """
    )
    result = subprocess.run([sys.executable, "-c", child], input=message, capture_output=True, timeout=30, check=True)
    assert result.stdout.decode().strip() == hashlib.sha256(array.tobytes() + blob).hexdigest()
    assert ours(owner) == []


def test_sweep_after_the_creator_is_killed(owner):
    """A creator killed with SIGKILL before anyone decodes its message: sweep() removes what it left."""
    child = textwrap.dedent(
        f"""
        import os, pickle, sys, time
        from lifepool import _shm, _shmdir
        _shmdir.set_owner({owner})
        message = _shm.dumps([os.urandom(2 << 20), bytearray(2 << 20)],
                             pickler_dumps=lambda o, cb: pickle.dumps(o, 5, buffer_callback=cb))
        print(" ".join(_shm.segment_names(message)), flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE) as process:
        try:
            ready, _, _ = select.select([process.stdout], [], [], 20)
            assert ready, "the child did not create its segments in time"
            names = process.stdout.readline().decode().split()
        finally:
            process.kill()
            process.wait(timeout=10)
    assert len(names) == 2
    assert ours(owner) == sorted(names)
    for name in names:
        assert name.startswith(f"lifepool-{owner}-{process.pid}-")
    assert _shmdir.sweep(owner, creator_pid=os.getpid()) == 0  # only the dead creator's
    assert _shmdir.sweep(owner + 1) == 0
    assert _shmdir.sweep(owner, creator_pid=process.pid) == 2
    assert ours(owner) == []
    assert _shmdir.sweep(owner) == 0


def test_sweep_orphans_removes_segments_of_dead_owners(owner):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, timeout=30)
    dead_pid = int(dead.stdout)
    _shmdir.set_owner(dead_pid)
    try:
        orphan = dumps(os.urandom(2 * MB))
    finally:
        _shmdir.set_owner(owner)
    alive = dumps(os.urandom(2 * MB))
    try:
        assert len(ours(dead_pid)) == 1
        assert _shmdir.sweep_orphans() >= 1
        assert ours(dead_pid) == []
        assert len(ours(owner)) == 1  # a running owner's segments stay
    finally:
        _shm.discard(orphan)
        _shm.discard(alive)


# -- fallback -------------------------------------------------------------------------


def test_without_shared_memory_everything_is_in_band(monkeypatch, owner):
    monkeypatch.setattr(_shmdir, "SHM_DIR", None)
    obj = [np.arange(MB // 4), os.urandom(2 * MB), (1, "x", None)]
    message = dumps(obj)
    assert message == pickle.dumps(obj, 5)
    loaded = _shm.loads(message)
    assert np.array_equal(loaded[0], obj[0]) and loaded[1:] == obj[1:]
    assert _shmdir.sweep(owner) == 0
    assert _shmdir.sweep_orphans() == 0


def test_when_segments_cannot_be_made_buffers_travel_in_the_message(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(_shmdir, "SHM_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(_shmdir, "_warned_fallback", False)
    obj = [np.arange(MB // 4), os.urandom(2 * MB), "s" * (2 * MB)]
    with caplog.at_level(logging.WARNING, logger="lifepool"):
        message = dumps(obj)
    assert "in-band" in caplog.text
    assert _shm.segment_names(message) == []
    loaded = _shm.loads(message)
    assert np.array_equal(loaded[0], obj[0]) and loaded[0].flags.writeable
    assert loaded[1:] == obj[1:]


def test_a_full_shm_directory_falls_back(monkeypatch, owner):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shmdir, "_write_all", full)
    monkeypatch.setattr(_shmdir, "_warned_fallback", True)
    obj = (np.arange(MB // 4), os.urandom(2 * MB))
    loaded = _shm.loads(dumps(obj))
    assert np.array_equal(loaded[0], obj[0]) and loaded[1] == obj[1]
    assert ours(owner) == []  # the half-made segments were unlinked


def test_decoding_refuses_names_outside_the_prefix():
    meta = pickle.dumps((_shm.VERSION, [("../../etc/passwd", 10)], []), 5)
    with pytest.raises(pickle.UnpicklingError, match="not a lifepool"):
        _shm._decode(meta, pickle.dumps(None, 5), b"")


def test_inlined_carries_the_segments_in_the_message(owner):
    # For a receiver on another machine: the copy decodes without /dev/shm; the original's segments stay.
    obj = {"array": np.arange(MB // 4), "blob": os.urandom(2 * MB), "text": "ü" * MB, "small": [1, "x"]}
    message = dumps(obj)
    names = _shm.segment_names(message)
    assert len(names) == 3
    copy = _shm.inlined(message)
    assert _shm.segment_names(copy) == []
    assert len(copy) > 4 * MB
    assert _shm.inlined(copy) == copy  # nothing left to carry
    assert ours(owner) == sorted(names)
    loaded = _shm.loads(copy)
    assert ours(owner) == sorted(names)  # decoding the copy unlinks nothing
    assert np.array_equal(loaded["array"], obj["array"]) and loaded["array"].flags.writeable
    assert {k: loaded[k] for k in ("blob", "text", "small")} == {k: obj[k] for k in ("blob", "text", "small")}
    assert type(loaded["blob"]) is bytes and type(loaded["text"]) is str
    assert _shm.loads(message)["blob"] == obj["blob"]  # the original still decodes, and unlinks its names
    assert ours(owner) == []
    plain_message = pickle.dumps([1, 2], 5)
    assert _shm.inlined(plain_message) is plain_message
