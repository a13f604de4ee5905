"""The pipe framing: lifepool's lean send/recv speak multiprocessing.connection's format."""

import os
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
    assert bytes(_wire.recv_bytes(right.fileno())) == message
    writer.join(30)


def test_messages_split_into_small_writes_are_reassembled(pair):
    left, right = pair
    message = os.urandom(200_000)
    framed = len(message).to_bytes(4, "big") + message

    def trickle():
        for start in range(0, len(framed), 777):
            os.write(left.fileno(), framed[start : start + 777])

    writer = _in_thread(trickle)
    assert bytes(_wire.recv_bytes(right.fileno())) == message
    writer.join(30)


def test_recv_raises_eof_when_the_other_end_closes(pair):
    left, right = pair
    _wire.send_bytes(left.fileno(), b"last")
    left.close()
    assert _wire.recv_bytes(right.fileno()) == b"last"
    with pytest.raises(EOFError):
        _wire.recv_bytes(right.fileno())


def test_eof_in_the_middle_of_a_message(pair):
    left, right = pair
    os.write(left.fileno(), (10).to_bytes(4, "big") + b"abc")
    left.close()
    with pytest.raises(EOFError):
        _wire.recv_bytes(right.fileno())
