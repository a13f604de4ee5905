"""Targets for tests/test_output.py (importable by containers under every start method)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import lifepool


class Speaker:
    def say(self, text: str, end: str = "\n") -> int:
        print(text, end=end)
        return lifepool.current_container().index

    def complain(self, text: str) -> None:
        print(text, file=sys.stderr)

    def raw(self, text: str) -> None:
        os.write(1, text.encode() + b"\n")  # below Python: as a C extension would

    def child(self, text: str) -> None:
        subprocess.run([sys.executable, "-c", f"print({text!r})"], check=True)

    def lines(self, count: int, width: int) -> None:
        tag = str(lifepool.current_container().index)
        for _ in range(count):
            print(tag * width)

    def log(self, name: str, level: int, message: str) -> int:
        logging.getLogger(name).log(level, message)
        return os.getpid()

    def log_error(self, name: str) -> None:
        try:
            raise ValueError("inside")
        except ValueError:
            logging.getLogger(name).exception("it failed")

    def die(self, last_words: str) -> None:
        print(last_words)
        print("and no newline", end="")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def square(self, x: int) -> int:
        if x == -1:
            raise ValueError("bad input")
        return x * x


class Snapper:
    """Prints and logs in a snap hook (once, in the template) and in ``__enter__`` (in each container)."""

    @lifepool.enter(snap=True)
    def load(self) -> None:
        print("loading once")
        logging.getLogger("from.snap").warning("loaded")

    def __enter__(self) -> Snapper:
        print("entered")
        return self

    def say(self, text: str) -> int:
        print(text)
        return lifepool.current_container().index
