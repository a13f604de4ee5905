"""Every ``examples/*.py`` runs to completion, as a newcomer would run it: ``python examples/NAME.py``.

Each example runs in a fresh interpreter under a hard timeout, in a session of
its own so that, when it fails or hangs, the process group (the script and the
containers it started) is killed. Output goes to files rather than pipes, so a
container that outlives its script cannot keep the test waiting for EOF.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
from conftest import assert_gone

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60.0  # seconds; the examples take a few


def run_example(path: pathlib.Path, tmp_path: pathlib.Path) -> tuple[str, str]:
    """Run one example; return (stdout, stderr) after asserting it exited with status 0."""
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(
            [sys.executable, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=path.parent.parent,
            start_new_session=True,  # its own process group, shared with its containers
        )
        try:
            returncode = process.wait(timeout=TIMEOUT)
        except BaseException:
            process.kill()
            process.wait()
            _kill_group(process.pid)
            raise
    if returncode != 0:
        _kill_group(process.pid)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert returncode == 0, (
        f"{path.name} exited with status {returncode}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )
    return stdout, stderr


def _kill_group(group: int) -> None:
    """Kill whatever is left of a failed example's process group (its containers)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_runs(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run_example(path, tmp_path)


def test_quickstart_shows_the_lifecycle(tmp_path: pathlib.Path) -> None:
    stdout, stderr = run_example(EXAMPLES / "quickstart.py", tmp_path)
    shown = f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"

    # (printed in the containers: forwarded with their "[Model:<index>] " prefix)
    enters = re.findall(r"^\[Model:(\d+)\] enter: container \1 \(pid (\d+)\)$", stdout, re.MULTILINE)
    exits = re.findall(r"^\[Model:(\d+)\] exit: container \1 \(pid (\d+)\)$", stdout, re.MULTILINE)
    calls = {
        int(i): int(n) for i, n in re.findall(r"^calls: container (\d+) served (\d+) of \d+$", stdout, re.MULTILINE)
    }

    # One enter and one exit per container, by the same processes.
    assert len(enters) == 2 and len(set(enters)) == 2, shown
    assert {int(index) for index, _ in enters} == {0, 1}, shown
    assert collections.Counter(exits) == collections.Counter(enters), shown
    # Calls went to more than one container.
    assert len([n for n in calls.values() if n > 0]) > 1, shown
    # Each container exited after the calls were done, and before the script ended.
    lines = stdout.splitlines()
    last_call = max(i for i, line in enumerate(lines) if line.startswith("calls:"))
    first_exit = min(i for i, line in enumerate(lines) if "] exit:" in line)
    assert last_call < first_exit, shown
    assert lines[-1].startswith("pool closed"), shown
    assert_gone({int(pid) for _, pid in enters}, timeout=5.0)


def test_the_batch_job_stops_cleanly_on_ctrl_c(tmp_path: pathlib.Path) -> None:
    import csv
    import time

    target = tmp_path / "scored.csv"
    out_path = tmp_path / "stdout.txt"
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "batch_csv.py"),
                str(EXAMPLES / "data" / "elements.csv"),
                str(target),
                "--delay",
                "0.2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and process.poll() is None:
                if target.exists() and len(target.read_text().splitlines()) >= 3:  # header + 2 rows
                    break
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the script and its containers
            returncode = process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            _kill_group(process.pid)
    stdout = out_path.read_text()
    assert returncode == 130, stdout
    with target.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert 2 <= len(rows) < 36, stdout
    assert f"interrupted: {len(rows)} of 36 rows written" in stdout, stdout
    assert len(re.findall(r"^\[Scorer:[01]\] model unloaded \(interrupted\)$", stdout, re.MULTILINE)) == 2, stdout
    assert "Traceback" not in stdout, stdout
