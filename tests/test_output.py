"""Container output: stdout/stderr/logging of the containers reach the parent (see lifepool/_output.py)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import process_fds
from output_targets import Snapper, Speaker

import lifepool


def test_a_print_is_in_sys_stdout_when_the_call_returns(capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1) as pool:
        capsys.readouterr()
        pool.say.call("hello")  # (the fast path: this thread reads the answer)
        assert capsys.readouterr().out == "[Speaker:0] hello\n"
        pool.say.spawn("queued").result()  # (the dispatcher reads the answer)
        assert capsys.readouterr().out == "[Speaker:0] queued\n"
        pool.complain.call("oops")
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", "[Speaker:0] oops\n")


def test_descriptor_writes_and_subprocesses_are_forwarded(capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1) as pool:
        capsys.readouterr()
        pool.raw.call("from fd 1")
        assert capsys.readouterr().out == "[Speaker:0] from fd 1\n"
        pool.child.call("from a subprocess")
        assert capsys.readouterr().out == "[Speaker:0] from a subprocess\n"


def test_a_partial_line_waits_for_its_newline(capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1) as pool:
        capsys.readouterr()
        pool.say.call("half ", end="")
        assert capsys.readouterr().out == ""
        pool.say.call("and the rest")
        assert capsys.readouterr().out == "[Speaker:0] half and the rest\n"
        pool.say.call("at the end", end="")
    assert capsys.readouterr().out == "[Speaker:0] at the end\n"  # the pipe's end ends the line


@pytest.mark.parametrize("start_method", ["template", "exec", "spawn", "forkserver", "loky"])
def test_every_start_method_forwards(start_method: str, capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=2, start_method=start_method) as pool:
        indices = [pool.say.spawn(f"line {i}").result() for i in range(4)]
        out = capsys.readouterr().out
    for i, index in enumerate(indices):
        assert f"[Speaker:{index}] line {i}\n" in out


def test_prefix_options(capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1, name="p", output_prefix="<{pool}/{index}/{pid}> ") as pool:
        pid = pool.log.call("x", logging.DEBUG, "")
        capsys.readouterr()
        pool.say.call("a")
        assert capsys.readouterr().out == f"<p/0/{pid}> a\n"
    with lifepool.LifecyclePool(Speaker, containers=1, output_prefix=lambda i: f"worker {i}: ") as pool:
        capsys.readouterr()
        pool.say.call("b")
        assert capsys.readouterr().out == "worker 0: b\n"
    with lifepool.LifecyclePool(Speaker, containers=1, output_prefix=None) as pool:
        capsys.readouterr()
        pool.say.call("c")
        assert capsys.readouterr().out == "c\n"


def test_bad_prefixes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"output_prefix '\[\{klass\}\] ' is not a valid format.*\{class\}"):
        lifepool.LifecyclePool(Speaker, containers=1, output_prefix="[{klass}] ")
    with pytest.raises(TypeError, match="output_prefix must be a str, a callable or None, not int"):
        lifepool.LifecyclePool(Speaker, containers=1, output_prefix=3)
    with pytest.raises(TypeError, match="forward_output must be a bool"):
        lifepool.LifecyclePool(Speaker, containers=1, forward_output="yes")


def test_lines_of_containers_never_mix(capsys: pytest.CaptureFixture[str]) -> None:
    width = 5000  # longer than one read of a busy pipe may return at once
    with lifepool.LifecyclePool(Speaker, containers=2) as pool:
        capsys.readouterr()
        for future in [pool.lines.spawn(200, width) for _ in range(4)]:
            future.result()
        out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 800
    for line in lines:
        assert re.fullmatch(rf"\[Speaker:([01])\] \1{{{width}}}", line), line[:80]


def test_logging_goes_through_the_parents_logging(caplog: pytest.LogCaptureFixture) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1) as pool:
        with caplog.at_level(logging.INFO, logger="from.container"):
            pid = pool.log.call("from.container", logging.WARNING, "careful")
            pool.log.call("from.container", logging.DEBUG, "not enabled in the parent")
            pool.log_error.call("from.container")
    records = [r for r in caplog.records if r.name == "from.container"]
    assert [(r.levelname, r.getMessage()) for r in records] == [("WARNING", "careful"), ("ERROR", "it failed")]
    assert {(r.container_index, r.container_pid) for r in records} == {(0, pid)}
    assert "ValueError: inside" in records[1].exc_text


def test_a_killed_container_loses_nothing_it_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1) as pool:
        capsys.readouterr()
        with pytest.raises(lifepool.ContainerCrashedError):
            pool.die.call("last words")
        # Forwarded before the call failed: the pipe's end came with the process's.
        assert capsys.readouterr().out == "[Speaker:0] last words\n[Speaker:0] and no newline\n"


def test_forward_output_false_leaves_the_descriptors(capfd: pytest.CaptureFixture[str]) -> None:
    with lifepool.LifecyclePool(Speaker, containers=1, forward_output=False) as pool:
        capfd.readouterr()
        pool.say.call("straight to fd 1")
        pool.raw.call("raw")
        assert capfd.readouterr().out == "straight to fd 1\nraw\n"


def test_no_descriptor_is_left_open() -> None:
    before = process_fds()  # (the zygote's and the module-warm processes' are the process's, not a pool's)
    with lifepool.LifecyclePool(Speaker, containers=2) as pool:
        pool.say.call("x")
    assert process_fds() <= before


def test_a_script_shows_prefixed_lines(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import lifepool
            class Model:
                def __enter__(self):
                    print("entered")
                def f(self, x):
                    print("computing", x)
                    return x
            with lifepool.LifecyclePool(Model, containers=1) as pool:
                print("result", pool.f.call(1))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[Model:0] entered\n[Model:0] computing 1\nresult 1\n"


def test_a_template_forwards_its_snap_hooks_once_then_each_container(capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="from.snap"):
        with lifepool.LifecyclePool(Snapper, containers=2, start_method="template") as pool:
            indices = [pool.say.spawn(f"line {i}").result() for i in range(4)]
            pool.say.call("last")
            first = pool.status().containers[0].pid
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.endswith("loading once")] == ["[Snapper:0] loading once"], out
    assert out.index("[Snapper:0] loading once") < out.index("[Snapper:0] entered")
    assert sorted(line for line in out if line.endswith("entered")) == ["[Snapper:0] entered", "[Snapper:1] entered"]
    for i, index in enumerate(indices):
        assert f"[Snapper:{index}] line {i}" in out
    records = [r for r in caplog.records if r.name == "from.snap"]
    assert [(r.getMessage(), r.container_index) for r in records] == [("loaded", 0)]
    assert first is not None


def test_a_template_leaves_no_descriptor_open_and_replacements_forward() -> None:
    before = process_fds()
    with lifepool.LifecyclePool(Speaker, containers=1, start_method="template") as pool:
        for _ in range(3):
            with pytest.raises(lifepool.ContainerCrashedError):
                pool.die.call("bye")
        assert pool.square.call(3) == 9
    assert process_fds() <= before
