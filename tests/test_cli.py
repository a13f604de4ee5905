"""``lifepool run``: the examples of examples/modal_style, option mapping, exit statuses (fresh processes)."""

from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from targets import wait_for_path

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "modal_style"
TIMEOUT = 90.0


def lifepool_run(*args: str, cwd: pathlib.Path, module: bool = False) -> subprocess.CompletedProcess[str]:
    command = (
        [sys.executable, "-m", "lifepool"] if module else [os.path.join(os.path.dirname(sys.executable), "lifepool")]
    )
    process = subprocess.Popen(
        [*command, "run", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("spelling", ["stub", "app"])
def test_model_example(spelling, tmp_path):
    out = ok(lifepool_run(str(EXAMPLES / f"model_{spelling}.py"), "--x", "4", cwd=tmp_path))
    assert "prediction: 9.0" in out
    assert out.count("exit:") == out.count("enter:") >= 1
    assert out.rindex("exit:") > out.index("prediction")


@pytest.mark.parametrize("spelling", ["stub", "app"])
def test_processor_example(spelling, tmp_path):
    out = ok(lifepool_run(str(EXAMPLES / f"processor_{spelling}.py"), cwd=tmp_path, module=spelling == "app"))
    assert "result: hello world" in out


@pytest.mark.parametrize("spelling", ["stub", "app"])
def test_etl_example_runs_its_unawaited_call_before_the_exit_hook(spelling, tmp_path):
    out = ok(lifepool_run(str(EXAMPLES / f"etl_{spelling}.py"), cwd=tmp_path))
    assert "exit: connection closed" in out
    (rows,) = sqlite3.connect(tmp_path / "etl.sqlite").execute("SELECT count(*) FROM runs").fetchone()
    assert rows == 1


def test_tour_example(tmp_path):
    out = ok(lifepool_run(str(EXAMPLES / "tour.py"), "--n", "3", "--workdir", str(tmp_path), cwd=tmp_path))
    for line in (
        "greet: hello world / hi there",
        "gen: [1, 2, 3]",
        "batched: ['A', 'B', 'C']",
        "map: [10, 11, 12]",
        "gather: [0, 2, 4]",
        "retries: succeeded on attempt 2",
    ):
        assert line in out, out


def test_a_modal_program_runs_with_only_its_import_line_changed(tmp_path):
    source = (EXAMPLES / "model_app.py").read_text()
    as_modal = source.replace("from lifepool import modal", "import modal")
    assert as_modal != source and "lifepool" not in as_modal.replace("lifepool run", "")
    ok(lifepool_run(str(EXAMPLES / "model_app.py"), cwd=tmp_path))


PROGRAM = """
    import datetime
    from typing import Literal, Optional

    import lifepool

    app = lifepool.App()

    @app.function(max_containers=1)
    def double(x):
        return 2 * x

    @app.local_entrypoint()
    def main(count: int, ratio: float = 0.5, name: str = "x", loud: bool = False,
             maybe: Optional[int] = None, mode: Literal["a", "b"] = "a",
             when: datetime.datetime = datetime.datetime(2020, 1, 1), fail_with: str = ""):
        if fail_with:
            raise ValueError(fail_with)
        print(repr((double.remote(count), ratio, name, loud, maybe, mode, when.year)))

    @app.local_entrypoint()
    def hang(marker: str):
        open(marker, "w").close()
        double.remote(lifepool.App)  # (cannot be pickled by plain pickle; cloudpickle ships it)
        import time
        while True:
            time.sleep(0.05)
"""


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(PROGRAM))
    return path


def test_options_map_like_modal_run(program, tmp_path):
    out = ok(
        lifepool_run(
            f"{program}::main",
            "--count",
            "3",
            "--ratio",
            "2",
            "--loud",
            "--maybe",
            "7",
            "--mode",
            "b",
            "--when",
            "2024-05-06",
            cwd=tmp_path,
        )
    )
    assert out.strip() == "(6, 2.0, 'x', True, 7, 'b', 2024)"
    assert "--no-loud" in ok(lifepool_run(f"{program}::main", "--help", cwd=tmp_path))


def test_exit_statuses(program, tmp_path):
    assert lifepool_run(f"{program}::main", cwd=tmp_path).returncode == 2  # --count is required
    assert lifepool_run(f"{program}::main", "--count", "x", cwd=tmp_path).returncode == 2
    assert lifepool_run(f"{program}::main", "--mode", "c", "--count", "1", cwd=tmp_path).returncode == 2
    assert lifepool_run(str(program), cwd=tmp_path).returncode == 2  # two entrypoints: pick one
    failed = lifepool_run(f"{program}::main", "--count", "1", "--fail-with", "boom", cwd=tmp_path)
    assert failed.returncode == 1
    assert "ValueError: boom" in failed.stderr and "prog.py" in failed.stderr
    assert "lifepool/app/" not in failed.stderr  # trimmed to the user's code


def test_ctrl_c_exits_130(program, tmp_path):
    marker = tmp_path / "started"
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "lifepool"), "run", f"{program}::hang", "--marker", str(marker)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_path(marker, timeout=60)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        process.communicate(timeout=TIMEOUT)
        assert process.returncode == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
