"""Ctrl-C, SIGTERM and notebook-style interrupts, driven with real signals at real processes.

Each test writes a small program, runs it in its own session (so that a
"terminal" Ctrl-C can go to its whole process group, containers included),
waits for marker files that say where the program is, sends the signal, and
then checks the exit status, stderr, the markers the hooks wrote, and that no
container process is left. Every wait is bounded; a program still running
when a test ends is killed.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import assert_gone, interrupt_each_line, markers

import lifepool

pytestmark = pytest.mark.usefixtures("backend")

PRELUDE = textwrap.dedent(
    """
    import logging, os, pathlib, sys, time, threading, traceback, signal
    import lifepool

    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s")
    DIR = pathlib.Path(sys.argv[1])
    if os.environ.get("LIFEPOOL_TEST_BACKEND") == "ray":  # the ray leg: the test session's Ray, at RAY_ADDRESS
        import lifepool._pool
        lifepool._pool.DEFAULT_BACKEND = lifepool.RayBackend(num_cpus=0)

    def mark(event, text=""):
        path = DIR / f"{event}-{os.getpid()}"
        tmp = DIR / f".{path.name}.tmp"  # (a name no "event-*" pattern matches)
        tmp.write_text(text)
        tmp.rename(path)

    class Worker:
        def __init__(self, hang_in_exit=False, hang_in_enter=False):
            self.hang_in_exit = hang_in_exit
            self.hang_in_enter = hang_in_enter

        def __enter__(self):
            mark("entering")
            if self.hang_in_enter:
                try:
                    time.sleep(600)
                finally:
                    mark("enter-interrupted")
            mark("enter")

        def pid(self):
            return os.getpid()

        def work(self, seconds=600):
            mark("started")
            try:
                time.sleep(seconds)
            finally:
                mark("finally")
            return "done"

        def __exit__(self, exc_type, exc_value, tb):
            text = "".join(traceback.format_tb(tb)) if tb is not None else ""
            mark("exit", f"{exc_type.__name__ if exc_type else None}|{exc_value!r}|{text}")
            if self.hang_in_exit:
                time.sleep(600)

    def wait_for(pattern, count=1):
        deadline = time.monotonic() + 60
        while len(list(DIR.glob(pattern))) < count:
            assert time.monotonic() < deadline, pattern
            time.sleep(0.01)
    """
)


class Program:
    """A test program run in its own session, killed if the test leaves it running."""

    def __init__(self, tmp_path: pathlib.Path, body: str, env: dict[str, str]) -> None:
        self.env = env
        self.dir = tmp_path / "markers"
        self.dir.mkdir()
        script = tmp_path / "program.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.dir)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_marker(self, name: str, count: int = 1) -> None:
        import time

        deadline = time.monotonic() + 60
        while len(markers(self.dir, name)) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"program ended early: {self.finish()}")
            assert time.monotonic() < deadline, f"no {name} marker within 60 s"
            time.sleep(0.01)

    def ctrl_c(self) -> None:
        """What a terminal does: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    @property
    def died_by_ctrl_c(self) -> int:
        """The status of a program a Ctrl-C ended: killed by SIGINT; under Ray, 1 (Ray's driver
        turns an uncaught KeyboardInterrupt into exit status 1, with or without lifepool)."""
        return 1 if self.env.get("LIFEPOOL_TEST_BACKEND") == "ray" else -signal.SIGINT

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()

    def container_pids(self, event: str = "entering") -> set[int]:
        return set(markers(self.dir, event))


@pytest.fixture
def program(tmp_path, request, backend):
    """Programs in their own session; on the ray leg they connect to the session's Ray (their Ctrl-C
    then reaches the driver only, never Ray's processes: the pool must stop the actors itself)."""
    programs = []
    env = {"LIFEPOOL_TEST_BACKEND": backend}
    if backend == "ray":
        env["RAY_ADDRESS"] = request.getfixturevalue("ray_session").get_runtime_context().gcs_address

    def make(body: str) -> Program:
        p = Program(tmp_path, body, env)
        programs.append(p)
        return p

    yield make
    for p in programs:
        p.kill()


def one_traceback(stderr: str) -> bool:
    return stderr.count("Traceback (most recent call last)") == 1


BLOCKING = {
    "call": "p.work.call()",
    "map": "list(p.work.map([600, 600]))",
    "result": "p.work.spawn().result()",
    "shutdown": "p.work.spawn(); wait_for('started-*'); p.shutdown()",
}


@pytest.mark.on_ray
@pytest.mark.parametrize("where", sorted(BLOCKING))
def test_ctrl_c_stops_everything_with_exit_hooks(program, where):
    prog = program(
        f"""
        with lifepool.LifecyclePool(Worker(), containers=2, exit_grace_period=30) as p:
            {BLOCKING[where]}
        """
    )
    prog.wait_marker("enter", 2)
    prog.wait_marker("started")
    prog.ctrl_c()
    code, _, err = prog.finish()
    assert code == prog.died_by_ctrl_c, err
    assert one_traceback(err), err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    pids = prog.container_pids()
    exits = markers(prog.dir, "exit")
    assert set(exits) == pids
    started = set(markers(prog.dir, "started"))
    for pid, text in exits.items():
        exc_type, _, tb_text = text.split("|", 2)
        if where == "shutdown" and pid not in started:
            # shutdown() had already sent the idle container its (clean) exit
            assert exc_type in ("None", "KeyboardInterrupt")
            continue
        assert exc_type == "KeyboardInterrupt"
        assert "program.py" in tb_text  # the parent's frames where it was raised
    assert started <= set(markers(prog.dir, "finally"))  # interrupted inside: finally ran
    assert_gone(pids)


def test_ctrl_c_while_entering_interrupts_the_enter_hook_and_skips_exit(program):
    prog = program(
        """
        with lifepool.LifecyclePool(Worker(hang_in_enter=True), containers=2) as p:
            p.pid.call()
        """
    )
    prog.wait_marker("entering", 2)
    prog.ctrl_c()
    code, _, err = prog.finish()
    assert code == prog.died_by_ctrl_c, err
    assert one_traceback(err), err
    pids = prog.container_pids()
    assert set(markers(prog.dir, "enter-interrupted")) == pids
    assert markers(prog.dir, "exit") == {}
    assert_gone(pids)


@pytest.mark.local_only("ray.init installs a SIGTERM handler of its own in the driver: no lifepool.Terminated")
@pytest.mark.parametrize("to_group", [False, True], ids=["parent", "process-group"])
def test_sigterm_stops_cleanly_and_the_program_dies_by_sigterm(program, to_group):
    prog = program(
        """
        with lifepool.LifecyclePool(Worker(), containers=2) as p:
            p.work.call()
        """
    )
    prog.wait_marker("enter", 2)
    prog.wait_marker("started")
    if to_group:  # as `timeout` or systemd do: containers ignore it, the parent stops them
        os.killpg(prog.proc.pid, signal.SIGTERM)
    else:  # the parent only, as docker stop or a scheduler would
        prog.proc.send_signal(signal.SIGTERM)
    code, _, err = prog.finish()
    assert code == -signal.SIGTERM, err
    assert one_traceback(err) and "lifepool.Terminated: received SIGTERM" in err, err
    pids = prog.container_pids()
    exits = markers(prog.dir, "exit")
    assert set(exits) == pids
    assert {text.split("|")[0] for text in exits.values()} == {"Terminated"}
    assert_gone(pids)


@pytest.mark.local_only("ray.init replaces the program's own SIGTERM handler with Ray's")
def test_a_program_with_its_own_sigterm_handler_keeps_it(program):
    prog = program(
        """
        def mine(signum, frame):
            raise SystemExit(3)
        signal.signal(signal.SIGTERM, mine)
        with lifepool.LifecyclePool(Worker(), containers=1) as p:
            assert signal.getsignal(signal.SIGTERM) is mine
            p.work.call(3)  # SystemExit is no interrupt: this running call finishes
        """
    )
    prog.wait_marker("started")
    prog.proc.send_signal(signal.SIGTERM)
    code, _, err = prog.finish()
    assert code == 3, err
    (text,) = markers(prog.dir, "exit").values()
    assert text.startswith("SystemExit|")


def test_hung_exit_hook_is_killed_after_the_grace_period(program):
    prog = program(
        """
        with lifepool.LifecyclePool(Worker(hang_in_exit=True), containers=2, exit_grace_period=1) as p:
            p.work.call()
        """
    )
    prog.wait_marker("enter", 2)
    prog.wait_marker("started")
    prog.ctrl_c()
    code, _, err = prog.finish()
    assert code == prog.died_by_ctrl_c, err
    assert "LOG WARNING" in err and "killing container" in err and "exit_grace_period=1" in err
    assert "was killed (SIGKILL)" in err  # attached to the KeyboardInterrupt as a note
    assert one_traceback(err), err
    assert_gone(prog.container_pids())


def test_second_ctrl_c_kills_the_containers_at_once(program):
    prog = program(
        """
        with lifepool.LifecyclePool(Worker(hang_in_exit=True), containers=2, exit_grace_period=300) as p:
            p.work.call()
        """
    )
    prog.wait_marker("enter", 2)
    prog.wait_marker("started")
    prog.ctrl_c()
    prog.wait_marker("exit", 2)  # both exit hooks are now hanging
    prog.ctrl_c()
    code, _, err = prog.finish(timeout=60)  # far below the 300 s grace period
    assert code == prog.died_by_ctrl_c, err
    assert "interrupted again; killing the containers now" in err
    # Asked for, not a timeout: the exit hooks it cut short are reported as such.
    assert "killed (SIGKILL) because a second interrupt arrived" in err, err
    assert "TimeoutError" not in err, err
    assert one_traceback(err), err
    assert_gone(prog.container_pids())


@pytest.mark.on_ray
def test_notebook_interrupt_cancels_the_operation_and_keeps_the_pool(program):
    prog = program(
        """
        p = lifepool.LifecyclePool(Worker(), containers=2)
        wait_for("enter-*", 2)
        before = {int(path.name.split("-")[1]) for path in DIR.glob("enter-*")}

        def interrupt_when_started(count):
            wait_for("started-*", count)
            os.kill(os.getpid(), signal.SIGINT)

        for count, operation in ((1, lambda: p.work.call()), (2, lambda: list(p.work.map([600] * 10)))):
            for old in [*DIR.glob("started-*"), *DIR.glob("finally-*")]:
                old.unlink()
            threading.Thread(target=interrupt_when_started, args=(count,), daemon=True).start()
            try:
                operation()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            wait_for("finally-*", count)  # the running calls were interrupted in their containers
        after = {p.pid.call() for _ in range(20)}
        print("same containers" if after <= before else f"new containers {before} {after}", flush=True)
        print(p.work.call(0), flush=True)
        p.shutdown()
        """
    )
    code, out, err = prog.finish()
    assert code == 0, err
    assert out.splitlines() == ["interrupted", "interrupted", "same containers", "done"], (out, err)
    pids = prog.container_pids()
    assert len(pids) == 2  # nothing was restarted
    exits = markers(prog.dir, "exit")
    assert {text.split("|")[0] for text in exits.values()} == {"None"}
    assert_gone(pids)


@pytest.mark.local_only("ray.init installs its own SIGTERM handler in the driver, and lifepool installs none over it")
def test_pool_installs_sigterm_handler_only_over_the_default_and_restores_only_its_own():
    from lifepool import _signals

    # (the session's Ray, once the Ray leg started it, left its own SIGTERM handler in this process)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _check_sigterm_handlers(_signals)
    finally:
        signal.signal(signal.SIGTERM, before)


def _check_sigterm_handlers(_signals):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    pool = lifepool.LifecyclePool(dict, containers=1)
    assert signal.getsignal(signal.SIGTERM) is _signals._on_sigterm
    pool.shutdown()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        pool = lifepool.LifecyclePool(dict, containers=1)
        assert signal.getsignal(signal.SIGTERM) is mine
        pool.shutdown()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    pool = lifepool.LifecyclePool(dict, containers=1, handle_sigterm=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    pool.shutdown()


@pytest.mark.on_ray  # (on Ray, a Ctrl-C in _give_back once left the transport lent: the pool's close hung)
@pytest.mark.parametrize("step", ["LifecyclePool._run_blocking", "borrow", "run_borrowed", "_give_back"])
def test_a_ctrl_c_on_any_line_of_the_fast_path_leaves_the_pool_whole(tmp_path, step):
    # A blocking call borrows an idle container, waits on its pipe and gives
    # it back (the fast path). A Ctrl-C may land between any two lines of it;
    # with one container, a container lost from the books would leave the
    # next call queued forever.
    from targets import Recorder

    from lifepool._schedule import Dispatcher

    owner, _, name = step.rpartition(".")
    code = getattr(lifepool.LifecyclePool if owner else Dispatcher, name).__code__
    lines = {line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno}

    with lifepool.LifecyclePool(Recorder(tmp_path), containers=1) as pool:
        assert pool.echo.call(0) == 0
        interrupted = interrupt_each_line(pool, code)
        assert interrupted >= len(lines) // 2, (interrupted, len(lines))


def test_a_late_ctrl_c_leaves_alone_the_container_another_thread_borrowed_meanwhile(tmp_path):
    # The Ctrl-C comes just after a fast call got its answer, when another
    # thread has already borrowed the same container: that thread keeps it.
    import inspect
    import threading

    from targets import Recorder, wait_for_path

    code = lifepool.LifecyclePool._run_blocking.__code__
    source, first = inspect.getsourcelines(lifepool.LifecyclePool._run_blocking)
    (line,) = [first + i for i, text in enumerate(source) if "if ok or outcome is not None" in text]
    release, started = tmp_path / "release", tmp_path / "started"
    other: list[object] = []

    with lifepool.LifecyclePool(Recorder(tmp_path), containers=1) as pool:
        assert pool.echo.call(0) == 0
        thread = threading.Thread(target=lambda: other.append(pool.block_until.call(str(release), str(started))))

        def local(frame, event, arg):
            if event == "line" and frame.f_lineno == line:
                sys.settrace(None)
                thread.start()
                wait_for_path(started)  # the other thread borrowed the container, its call runs
                raise KeyboardInterrupt
            return local

        sys.settrace(lambda frame, event, arg: local if frame.f_code is code else None)
        try:
            with pytest.raises(KeyboardInterrupt):
                pool.echo.call(1)
        finally:
            sys.settrace(None)
        release.touch()
        thread.join(timeout=30)
        assert other == ["released"]
        assert pool.echo.spawn(2).result(timeout=30) == 2
        assert pool.echo.call(3) == 3
