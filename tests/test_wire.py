"""The pipe framing: lifepool's lean send and read-ahead Reader speak multiprocessing.connection's format."""

import os
import random
import socket
import threading
from multiprocessing.connection import Connection

import pytest

from lifepool import _wire

SIZES = [0, 1, 100, (1 << 16) - 5, 1 << 16, (1 << 16) + 1, 3 << 20]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left, right = Connection(a.detach()), Connection(b.detach())
    yield left, right
    left.close()
    right.close()


def _in_thread(func, *args):
    thread = threading.Thread(target=func, args=args)
    thread.start()
    return thread


@pytest.mark.parametrize("size", SIZES)
def test_lean_and_standard_framing_interoperate(pair, size):
    left, right = pair
    message = os.urandom(size)
    # Big messages do not fit in the socket buffer: the writer runs in a thread.
    writer = _in_thread(_wire.send_bytes, left.fileno(), message)
    assert right.recv_bytes() == message
    writer.join(30)
    writer = _in_thread(left.send_bytes, message)
    assert bytes(_wire.Reader(right.fileno()).recv()) == message
    writer.join(30)


def test_a_burst_of_messages_of_every_size_arrives_whole_and_in_order(pair):
    left, right = pair
    rng = random.Random(7)
    messages = [os.urandom(rng.choice([0, 1, 3, 100, 5000, 65535, 65536, 70000, 300_000])) for _ in range(200)]

    def send_all():
        for message in messages:
            _wire.send_bytes(left.fileno(), message)

    writer = _in_thread(send_all)
    reader = _wire.Reader(right.fileno())
    for message in messages:
        assert bytes(reader.recv()) == message
    writer.join(30)
    assert not reader.buffered()


def test_messages_split_into_small_writes_are_reassembled(pair):
    left, right = pair
    messages = [os.urandom(n) for n in (10, 200_000, 0, 70_000, 5)]
    stream = b"".join(len(m).to_bytes(4, "big") + m for m in messages)

    def trickle():
        for start in range(0, len(stream), 777):
            os.write(left.fileno(), stream[start : start + 777])

    writer = _in_thread(trickle)
    reader = _wire.Reader(right.fileno())
    assert [bytes(reader.recv()) for _ in messages] == messages
    writer.join(30)


def test_the_reader_says_what_it_read_ahead(pair):
    left, right = pair
    for message in (b"one", b"two"):
        _wire.send_bytes(left.fileno(), message)
    os.write(left.fileno(), (5).to_bytes(4, "big") + b"th")  # the start of a third
    reader = _wire.Reader(right.fileno())
    assert not reader.buffered() and not reader.ready()
    assert reader.recv() == b"one"  # one read took both, and the start of the third
    assert reader.ready() and reader.buffered()
    assert reader.recv() == b"two"
    assert reader.buffered() and not reader.ready()
    os.write(left.fileno(), b"ree")
    assert reader.recv() == b"three"
    assert not reader.buffered()


def test_recv_raises_eof_when_the_other_end_closes(pair):
    left, right = pair
    _wire.send_bytes(left.fileno(), b"last")
    left.close()
    reader = _wire.Reader(right.fileno())
    assert reader.recv() == b"last"
    with pytest.raises(EOFError):
        reader.recv()


@pytest.mark.parametrize("cut", [2, 7, 100_000])
def test_eof_in_the_middle_of_a_message(pair, cut):
    left, right = pair
    size = 200_000
    os.write(left.fileno(), (size.to_bytes(4, "big") + bytes(size))[:cut])
    left.close()
    with pytest.raises(EOFError):
        _wire.Reader(right.fileno()).recv()


def _raised(make):
    try:
        make()
    except BaseException as error:
        return error
    raise AssertionError("nothing raised")


def _round_trip(error):
    return _wire.load_exception(_wire.exception_blob(error))


def _undefined_name():
    return undefined_name  # noqa: F821


@pytest.mark.parametrize(
    ("make", "fields"),
    [
        (lambda: compile("x = = 1", "<cell>", "exec"), ("msg", "filename", "lineno", "offset", "text")),
        (lambda: b"\xff".decode("utf-8"), ("encoding", "object", "start", "end", "reason")),
        (lambda: exec("raise SystemExit(3)"), ("code",)),
        (lambda: exec("raise StopIteration(7)"), ("value",)),
        (_undefined_name, ("name",)),
        (lambda: object().nope, ("name",)),
        (lambda: open("/nonexistent/lifepool"), ("errno", "strerror", "filename")),
        (lambda: {}["key"], ()),
    ],
)
def test_built_in_exceptions_cross_with_the_fields_their_constructor_sets(make, fields):
    error = _raised(make)
    back = _round_trip(error)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    for field in fields:
        assert getattr(back, field) == getattr(error, field), field
    assert back.__traceback__ is not None


def test_a_user_exception_with_its_own_constructor_still_crosses_as_itself():
    class Odd(ValueError):
        def __init__(self, left, right):
            super().__init__(f"{left}-{right}")
            self.left, self.right = left, right

    back = _round_trip(_raised(lambda: (_ for _ in ()).throw(Odd(1, 2))))
    assert type(back).__name__ == "Odd" and str(back) == "1-2"
    assert (back.left, back.right) == (1, 2)


def test_a_base_exception_group_crosses_as_itself():
    group = _raised(lambda: exec("raise BaseExceptionGroup('stopped', [ValueError('bad'), SystemExit(2)])"))
    back = _round_trip(group)
    assert type(back) is BaseExceptionGroup and back.message == "stopped"
    assert [type(e) for e in back.exceptions] == [ValueError, SystemExit]
    assert back.exceptions[1].code == 2


def test_os_errors_keep_what_their_constructor_sets():
    error = BlockingIOError(11, "again", 5)
    back = _round_trip(error)
    assert type(back) is BlockingIOError and back.characters_written == 5
    missing = _round_trip(_raised(lambda: os.rename("/nonexistent/a", "/nonexistent/b")))
    assert type(missing) is FileNotFoundError
    assert (missing.filename, missing.filename2) == ("/nonexistent/a", "/nonexistent/b")
