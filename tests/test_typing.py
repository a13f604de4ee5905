"""The public API is typed: ``mypy --strict`` follows a user program through it (``assert_type``), and
catches wrong arguments. Skipped where mypy is not installed (it is in the ``test`` extra)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("mypy")

PROGRAM = pathlib.Path(__file__).parent / "typing" / "user_program.py"
ROOT = pathlib.Path(__file__).parent.parent


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir=/dev/null", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_user_program_is_typed_through_the_api_and_its_mistakes_are_caught():
    result = _mypy("--strict", "--show-error-codes", "--no-error-summary", str(PROGRAM))
    lines = PROGRAM.read_text().splitlines()
    expected = {number for number, text in enumerate(lines, 1) if "# E:" in text}
    errors: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        found = re.match(r".*user_program\.py:(\d+): (error|note): (.*)", line)
        if found and found.group(2) == "error":
            errors.setdefault(int(found.group(1)), []).append(found.group(3))
    unexpected = {number: text for number, text in errors.items() if number not in expected}
    assert not unexpected, f"mypy found errors where none were expected:\n{result.stdout}"
    assert set(errors) == expected, f"mistakes mypy did not catch: {sorted(expected - set(errors))}\n{result.stdout}"


def test_the_package_passes_mypy_strict():
    result = _mypy()  # (the settings: [tool.mypy] in pyproject.toml, strict, files = lifepool)
    assert result.returncode == 0, result.stdout + result.stderr
