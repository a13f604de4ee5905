"""examples/notebook.ipynb runs in a real Jupyter kernel (nbclient, in tests/notebook_driver.py): container
output lands in the cell that runs, with its prefix, and a kernel interrupt stops the call but keeps the pool."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK = HERE.parent / "examples" / "notebook.ipynb"


def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_the_notebook_runs_and_survives_an_interrupt(tmp_path) -> None:
    out = tmp_path / "executed.ipynb"
    done = subprocess.run(
        [sys.executable, str(HERE / "notebook_driver.py"), str(NOTEBOOK), str(out), str(tmp_path / "slow-started")],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, f"status {done.returncode}\n{done.stdout}\n{done.stderr}"
    cells = {cell.source.splitlines()[0]: cell for cell in nbformat.read(out, as_version=4).cells}
    created = stdout_of(cells["pool = lifepool.LifecyclePool(Model, containers=2)"])
    assert "[Model:" in created and "] model loaded\n" in created, created
    # The container's line is in the cell that ran the call, between the cell's own lines.
    lines = stdout_of(cells['print("cell: before")']).splitlines()
    assert lines[0] == "cell: before" and lines[-1] == "cell: result 40", lines
    assert [line for line in lines[1:-1] if line.endswith("] predicting 4")], lines
    slow = cells["pool.slow.call(60)"]
    assert [o.ename for o in slow.outputs if o.output_type == "error"] == ["KeyboardInterrupt"]
    alive = stdout_of(cells['print("cell: still alive", pool.predict.call(5))'])
    assert "cell: still alive 50\nPoolState.RUNNING\n" in alive, alive
    assert "] model unloaded\n" in stdout_of(cells["pool.shutdown()"])
