"""Progress bars on map/starmap/map.aio/Executor.map (see lifepool/_progress.py)."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import textwrap

import pytest
from output_targets import Speaker

import lifepool
from lifepool import _progress


def bar(buffer: io.StringIO) -> dict[str, object]:
    # (tqdm draws nothing on a stream that is not a terminal unless told to)
    return {"file": buffer, "disable": False, "mininterval": 0}


def last_state(buffer: io.StringIO) -> str:
    return re.split(r"[\r\n]", buffer.getvalue().rstrip("\n"))[-1]


@pytest.fixture
def pool():
    with lifepool.LifecyclePool(Speaker, containers=2, output_prefix=None) as pool:
        yield pool
    assert _progress._open == 0


@pytest.mark.parametrize("inputs", [list(range(10)), range(1000)], ids=["calls", "chunks"])
def test_map_counts_every_item(pool, inputs) -> None:
    buffer = io.StringIO()
    assert list(pool.square.map(inputs, progress=bar(buffer))) == [x * x for x in inputs]
    assert f"{len(inputs)}/{len(inputs)}" in last_state(buffer)
    assert last_state(buffer).startswith("Speaker.square: 100%")


def test_a_generator_has_no_total(pool) -> None:
    buffer = io.StringIO()
    assert sum(pool.square.map((x for x in range(7)), progress=bar(buffer))) == 91
    assert re.search(r"\b7item", last_state(buffer)), last_state(buffer)


def test_starmap_executor_map_and_map_aio(pool) -> None:
    buffer = io.StringIO()
    assert list(pool.square.starmap([(2,), (3,)], progress=bar(buffer))) == [4, 9]
    assert "2/2" in last_state(buffer)

    buffer = io.StringIO()
    assert list(pool.map(abs, [-1, -2, -3], progress={**bar(buffer), "desc": "abs"})) == [1, 2, 3]
    assert last_state(buffer).startswith("abs: 100%") and "3/3" in last_state(buffer)

    async def gather() -> list[int]:
        return [y async for y in pool.square.map.aio(range(5), progress=bar(buffer))]

    buffer = io.StringIO()
    assert asyncio.run(gather()) == [0, 1, 4, 9, 16]
    assert "5/5" in last_state(buffer)


def test_the_bar_closes_on_an_error_and_on_an_early_stop(pool) -> None:
    buffer = io.StringIO()
    with pytest.raises(ValueError, match="bad input"):
        list(pool.square.map([1, 2, -1, 3], progress=bar(buffer)))
    assert _progress._open == 0
    results = pool.square.map(range(10**6), progress=bar(buffer))
    assert next(results) == 0
    assert _progress._open == 1
    results.close()
    assert _progress._open == 0


def test_progress_options() -> None:
    assert _progress.options(False, "M.f", 3) is None
    assert _progress.options(True, "M.f", 3)["desc"] == "M.f"
    assert _progress.options("label", "M.f", 3) == {
        "total": 3, "desc": "label", "unit": "item", "disable": None, "dynamic_ncols": True
    }
    assert _progress.options({"desc": "x", "leave": False}, "M.f", None)["leave"] is False
    with pytest.raises(TypeError, match="progress must be a bool, a label"):
        _progress.options(3, "M.f", 3)


def test_without_tqdm_progress_names_the_extra(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["tqdm"] = None  # as if tqdm were not installed
            import lifepool
            class Model:
                def f(self, x):
                    return x
            with lifepool.LifecyclePool(Model, containers=1) as pool:
                assert list(pool.f.map([1, 2])) == [1, 2]  # (no bar asked: no tqdm needed)
                try:
                    pool.f.map([1, 2], progress=True)
                except ImportError as error:
                    print("ImportError:", error)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ImportError: progress=... needs tqdm: install lifepool[progress] (or tqdm)\n"
