"""Behaviour that needs a fresh interpreter: each test writes a script and runs it as a subprocess.

The scripts define their classes in ``__main__`` at top level, with no
``if __name__ == "__main__":`` guard, exactly as a user's script would. Their
containers record what happened to them in marker files (``<event>-<pid>``,
one JSON line per event) in a directory passed as ``argv[1]``; the test reads
the markers once the script is over.

Every run is bounded: ``subprocess.run(timeout=...)`` kills the script when it
hangs, and the script runs in a session of its own so that the fixture's
teardown can kill the containers it started too (they share its process group). The script's output goes to
files, not pipes: a container that outlived its parent would otherwise hold
the pipe open and turn "a process leaked" into "the test timed out". After
every script, every container that entered must be gone.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest
from conftest import assert_gone, markers

SCRIPT_TIMEOUT = 60.0  # seconds; each script normally takes about one
GONE_TIMEOUT = 5.0  # seconds a container may take to disappear after its script ended

# Put in front of every script. ``mark`` runs in the containers too: it is
# defined in __main__, so it travels by value with the classes that use it.
PRELUDE = """\
import json
import os
import pathlib
import sys
import threading
import time
import traceback

import lifepool

MARKS = pathlib.Path(sys.argv[1])


def mark(event, **data):
    with open(MARKS / f"{event}-{os.getpid()}", "a") as f:
        f.write(json.dumps(data) + "\\n")


mark("script")
"""


@dataclass(repr=False)
class Run:
    script: pathlib.Path
    source_lines: list[str]
    marks: pathlib.Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __repr__(self) -> str:  # what a failed ``assert ..., run`` shows
        return f"script exit status {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"

    def events(self, event: str) -> dict[int, list[dict]]:
        """{pid: [data, ...]} of the ``mark(event, ...)`` calls made by each process."""
        return {
            pid: [json.loads(line) for line in text.splitlines()] for pid, text in markers(self.marks, event).items()
        }

    def line_of(self, tag: str) -> tuple[int, str]:
        """(line number, stripped source text) of the one script line ending with ``# <tag>``."""
        found = [(n, line.strip()) for n, line in enumerate(self.source_lines, 1) if line.endswith(tag)]
        assert len(found) == 1, f"the script should have one line tagged {tag!r}"
        return found[0]

    def json_output(self) -> dict:
        """The script's last stdout line, which it prints as JSON."""
        assert self.stdout.strip(), f"the script printed nothing\n{self}"
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_script(tmp_path: pathlib.Path):
    """Run ``PRELUDE + body`` as a fresh interpreter; kill its process group on the way out."""
    groups: list[int] = []

    def run(body: str) -> Run:
        script = tmp_path / "script.py"
        marks = tmp_path / "marks"
        marks.mkdir()
        source = PRELUDE + textwrap.dedent(body)
        script.write_text(source)
        out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        start = time.monotonic()
        with open(out_path, "w") as out, open(err_path, "w") as err:
            try:
                completed = subprocess.run(
                    [sys.executable, str(script), str(marks)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=tmp_path,
                    timeout=SCRIPT_TIMEOUT,
                    start_new_session=True,  # its own process group, shared with its containers
                )
            except subprocess.TimeoutExpired:
                # subprocess.run has killed the script itself; the fixture's
                # teardown kills what is left of its process group.
                pytest.fail(
                    f"the script did not finish within {SCRIPT_TIMEOUT}s\n"
                    f"--- stdout ---\n{out_path.read_text()}\n--- stderr ---\n{err_path.read_text()}"
                )
            finally:
                groups.extend(markers(marks, "script"))  # the script's pid is its group's id
        result = Run(
            script=script,
            source_lines=source.splitlines(),
            marks=marks,
            returncode=completed.returncode,
            stdout=out_path.read_text(),
            stderr=err_path.read_text(),
            seconds=time.monotonic() - start,
        )
        # Post-condition of every script: none of its containers outlived it.
        assert_gone(markers(marks, "enter"), timeout=GONE_TIMEOUT)
        return result

    yield run
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)  # normally a no-op: the group is empty by now
        except ProcessLookupError:
            pass


def container_pids(run: Run) -> set[int]:
    return set(run.events("enter"))


# ---------------------------------------------------------------------------
# a class defined in __main__, no main guard
# ---------------------------------------------------------------------------


def test_class_defined_in_main_runs_enter_and_exit_once_per_container(run_script):
    run = run_script(
        """
        mark("import")  # top-level code: must run once, in the script, never in a container


        class Counter:
            def __enter__(self):
                mark("enter", index=lifepool.current_container().index)

            def square(self, x):
                time.sleep(0.01)
                return x * x, os.getpid()

            def __exit__(self, exc_type, exc_value, tb):
                mark("exit", args=[repr(exc_type), repr(exc_value), repr(tb)])


        with lifepool.LifecyclePool(Counter, containers=2) as pool:
            results = list(pool.square.map(range(20)))
        print(json.dumps({"squares": [r[0] for r in results], "pids": sorted({r[1] for r in results})}))
        """
    )
    assert run.returncode == 0, run
    output = run.json_output()
    assert output["squares"] == [x * x for x in range(20)]

    entered, exited = run.events("enter"), run.events("exit")
    imports = run.events("import")
    assert len(imports) == 1 and not set(imports) & set(entered), f"__main__ ran again in a container\n{run}"
    assert len(entered) == 2, run
    assert sorted(e[0]["index"] for e in entered.values()) == [0, 1]
    assert all(len(events) == 1 for events in entered.values()), entered
    assert set(exited) == set(entered)
    assert all(events == [{"args": ["None", "None", "None"]}] for events in exited.values()), exited
    assert set(output["pids"]) <= set(entered)


# ---------------------------------------------------------------------------
# errors raised by methods of a __main__ class
# ---------------------------------------------------------------------------

RAISING_CLASS = """
class MainError(ValueError):
    pass


class Boom:
    def __enter__(self):
        mark("enter")

    def fail(self, x):
        where = {"index": lifepool.current_container().index, "pid": os.getpid()}
        raise ValueError(json.dumps(where))  # RAISE-LINE

    def fail_main_type(self):
        raise MainError("defined in __main__")  # MAIN-RAISE-LINE

    def __exit__(self, *exc):
        mark("exit")
"""


def test_error_from_main_class_keeps_type_and_points_at_the_real_file_and_line(run_script):
    run = run_script(
        RAISING_CLASS
        + """
with lifepool.LifecyclePool(Boom, containers=2) as pool:
    report = {}
    try:
        pool.fail.call(1)
    except ValueError as error:
        report["type"] = f"{type(error).__module__}.{type(error).__qualname__}"
        report["where"] = json.loads(str(error))
        report["notes"] = getattr(error, "__notes__", [])
        report["text"] = "".join(traceback.format_exception(error))
    try:
        pool.fail_main_type.call()
    except MainError as error:
        report["main_type"] = type(error) is MainError
        report["main_text"] = "".join(traceback.format_exception(error))
print(json.dumps(report))
"""
    )
    assert run.returncode == 0, run
    report = run.json_output()
    assert report["type"] == "builtins.ValueError"
    assert report["main_type"] is True, "a __main__ exception class should come back as that very class"

    line, text = run.line_of("# RAISE-LINE")
    assert f'File "{run.script}", line {line}, in fail\n    {text}\n' in report["text"], report["text"]
    line, text = run.line_of("# MAIN-RAISE-LINE")
    assert f'File "{run.script}", line {line}, in fail_main_type\n    {text}\n' in report["main_text"]

    index, pid = report["where"]["index"], report["where"]["pid"]
    assert pid in container_pids(run)
    naming = [note for note in report["notes"] if f"container {index}" in note and str(pid) in note and "fail" in note]
    assert naming, f"no note names container {index}, pid {pid} and the method: {report['notes']}"


def test_uncaught_error_from_main_class_prints_the_container_frame(run_script):
    run = run_script(
        RAISING_CLASS
        + """
with lifepool.LifecyclePool(Boom, containers=1) as pool:
    pool.fail.call(1)  # CALL-LINE
"""
    )
    assert run.returncode == 1, run
    assert any(line.startswith("ValueError: ") for line in run.stderr.splitlines()), run
    line, text = run.line_of("# RAISE-LINE")
    assert f'File "{run.script}", line {line}, in fail\n    {text}\n' in run.stderr, run
    line, text = run.line_of("# CALL-LINE")
    assert f'File "{run.script}", line {line}, in <module>\n    {text}\n' in run.stderr, run
    (pid,) = container_pids(run)
    assert "container 0" in run.stderr and str(pid) in run.stderr, "the note should name the container"
    assert set(run.events("exit")) == {pid}


def test_cause_and_context_chains_survive(run_script):
    run = run_script(
        """
        class Chains:
            def __enter__(self):
                mark("enter")

            def with_cause(self):
                try:
                    {}["missing"]  # CAUSE-LINE
                except KeyError as error:
                    raise ValueError("explicit") from error

            def with_context(self):
                try:
                    1 / 0  # CONTEXT-LINE
                except ZeroDivisionError:
                    raise RuntimeError("while handling")

            def __exit__(self, *exc):
                mark("exit")


        def describe(error):
            return {
                "type": type(error).__name__,
                "cause": type(error.__cause__).__name__ if error.__cause__ is not None else None,
                "context": type(error.__context__).__name__ if error.__context__ is not None else None,
                "suppress": error.__suppress_context__,
                "text": "".join(traceback.format_exception(error)),
            }


        report = {}
        with lifepool.LifecyclePool(Chains, containers=1) as pool:
            try:
                pool.with_cause.call()
            except ValueError as error:
                report["cause"] = describe(error)
                report["cause_of_cause"] = describe(error.__cause__)
            try:
                pool.with_context.call()
            except RuntimeError as error:
                report["context"] = describe(error)
                report["context_of_context"] = describe(error.__context__)
        print(json.dumps(report))
        """
    )
    assert run.returncode == 0, run
    report = run.json_output()

    cause = report["cause"]
    assert (cause["type"], cause["cause"], cause["suppress"]) == ("ValueError", "KeyError", True)
    assert "The above exception was the direct cause of the following exception" in cause["text"]
    line, text = run.line_of("# CAUSE-LINE")
    assert f'File "{run.script}", line {line}, in with_cause\n    {text}' in cause["text"], cause["text"]
    assert report["cause_of_cause"]["type"] == "KeyError"

    context = report["context"]
    assert (context["type"], context["cause"], context["context"]) == ("RuntimeError", None, "ZeroDivisionError")
    assert context["suppress"] is False
    assert "During handling of the above exception, another exception occurred" in context["text"]
    line, text = run.line_of("# CONTEXT-LINE")
    assert f'File "{run.script}", line {line}, in with_context\n    {text}' in context["text"], context["text"]
    assert report["context_of_context"]["type"] == "ZeroDivisionError"


# ---------------------------------------------------------------------------
# a pool left open at interpreter exit
# ---------------------------------------------------------------------------


def test_pool_left_open_at_exit_still_runs_every_exit_hook_once(run_script):
    run = run_script(
        """
        class Worker:
            def __enter__(self):
                mark("enter")

            def work(self, x):
                time.sleep(0.05)
                mark("done", x=x)
                return x

            def __exit__(self, exc_type, exc_value, tb):
                mark("exit", args=[repr(exc_type), repr(exc_value), repr(tb)])


        pool = lifepool.LifecyclePool(Worker, containers=2)
        print(sum(pool.work.map(range(4))))
        for x in range(4, 10):
            pool.work.spawn(x)  # still queued or running when the script ends
        print("end of script", flush=True)
        """
    )
    assert run.returncode == 0, run
    assert run.stdout.splitlines()[:2] == ["6", "end of script"], run
    assert run.seconds < 30, f"the script took {run.seconds:.1f}s to exit\n{run}"
    entered, exited = run.events("enter"), run.events("exit")
    assert len(entered) == 2, run
    assert set(exited) == set(entered), run
    assert all(events == [{"args": ["None", "None", "None"]}] for events in exited.values()), exited
    done = sorted(event["x"] for events in run.events("done").values() for event in events)
    assert done == list(range(10)), "calls queued at interpreter exit should still run"


# Left open at exit, with two calls running and more queued. A helper thread
# signals the main thread once the interpreter has started stopping the pool
# (the dispatcher reads "closing"): that is, while the exit waits for it.
OPEN_AT_EXIT = """
import signal

SIGNAL = signal.{signal}
HANG_IN_EXIT = {hang_in_exit}


class Sleeper:
    def __enter__(self):
        mark("enter")

    def work(self, x):
        mark("started", x=x)
        try:
            time.sleep(600)
        finally:
            mark("finally", x=x)

    def __exit__(self, exc_type, exc_value, tb):
        mark("exit", type=None if exc_type is None else exc_type.__name__)
        if HANG_IN_EXIT:
            time.sleep(600)


def wait_until(done):
    deadline = time.monotonic() + 30
    while not done():
        if time.monotonic() > deadline:
            os._exit(99)  # (the test then fails on the exit status)
        time.sleep(0.01)


def interrupt_the_exit():
    wait_until(lambda: pool._dispatcher.state.value == "closing")
    signal.pthread_kill(threading.main_thread().ident, SIGNAL)
    if HANG_IN_EXIT:
        wait_until(lambda: len(list(MARKS.glob("exit-*"))) == 2)
        signal.pthread_kill(threading.main_thread().ident, SIGNAL)


pool = lifepool.LifecyclePool(Sleeper, containers=2, exit_grace_period=300)
for x in range(8):
    pool.work.spawn(x)
wait_until(lambda: len(list(MARKS.glob("started-*"))) == 2)
threading.Thread(target=interrupt_the_exit, daemon=True).start()
print("end of script", flush=True)
"""

EXIT_HOOK_GETS = {"SIGINT": "KeyboardInterrupt", "SIGTERM": "Terminated"}


@pytest.mark.parametrize("signame", sorted(EXIT_HOOK_GETS))
def test_a_signal_while_exit_waits_for_an_open_pool_aborts_it_and_the_program_dies_by_it(run_script, signame):
    run = run_script(OPEN_AT_EXIT.format(signal=signame, hang_in_exit=False))
    assert run.returncode == -getattr(signal, signame), run
    assert "Exception ignored" not in run.stderr, run
    entered, exited = run.events("enter"), run.events("exit")
    assert len(entered) == 2, "no container may start after the interrupt"
    assert set(exited) == set(entered), run
    assert all(events == [{"type": EXIT_HOOK_GETS[signame]}] for events in exited.values()), exited
    started = sorted(event["x"] for events in run.events("started").values() for event in events)
    interrupted = sorted(event["x"] for events in run.events("finally").values() for event in events)
    assert len(started) == 2 and interrupted == started, "queued calls are cancelled, running ones interrupted"


@pytest.mark.parametrize("signame", sorted(EXIT_HOOK_GETS))
def test_a_second_signal_while_exit_waits_for_an_open_pool_kills_its_containers(run_script, signame):
    run = run_script(OPEN_AT_EXIT.format(signal=signame, hang_in_exit=True))
    assert run.returncode == -getattr(signal, signame), run
    assert "Exception ignored" not in run.stderr, run
    assert "interrupted again; killing the containers now" in run.stderr, run
    entered, exited = run.events("enter"), run.events("exit")
    assert len(entered) == 2, "no container may start after the interrupt"
    assert set(exited) == set(entered), run
    assert all(events == [{"type": EXIT_HOOK_GETS[signame]}] for events in exited.values()), exited


# ---------------------------------------------------------------------------
# what exit hooks receive when the with block raises
# ---------------------------------------------------------------------------

RECORDING_EXIT = """
class ParentError(Exception):
    pass


class Unpicklable(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()  # cannot be pickled


class Recorder:
    def __enter__(self):
        mark("enter")

    def fail(self):
        raise ValueError("from a container")  # CONTAINER-RAISE-LINE

    def __exit__(self, exc_type, exc_value, tb):
        mark(
            "exit",
            type=None if exc_type is None else f"{exc_type.__module__}.{exc_type.__qualname__}",
            type_is_value_type=exc_type is type(exc_value),
            is_parent_error=exc_type is ParentError,
            is_remote_error=exc_type is lifepool.RemoteError,
            args=[str(a) for a in getattr(exc_value, "args", ())],
            type_name=getattr(exc_value, "type_name", None),
            remote_traceback=getattr(exc_value, "remote_traceback", None),
            tb=None if tb is None else "".join(traceback.format_tb(tb)),
            tb_is_value_tb=tb is getattr(exc_value, "__traceback__", None),
        )
"""


def exit_events(run: Run) -> list[dict]:
    exited = run.events("exit")
    assert set(exited) == container_pids(run) and len(exited) == 2, f"{exited}\n{run}"
    assert all(len(events) == 1 for events in exited.values()), exited
    return [events[0] for events in exited.values()]


def test_exit_hooks_receive_the_error_raised_in_the_parent(run_script):
    run = run_script(
        RECORDING_EXIT
        + """
with lifepool.LifecyclePool(Recorder, containers=2) as pool:
    raise ParentError("raised in the parent")  # PARENT-RAISE-LINE
"""
    )
    assert run.returncode == 1, run
    assert "ParentError: raised in the parent" in run.stderr, run
    line, text = run.line_of("# PARENT-RAISE-LINE")
    for event in exit_events(run):
        assert event["type"] == "__main__.ParentError", event
        assert event["is_parent_error"] and event["type_is_value_type"], event
        assert event["args"] == ["raised in the parent"]
        assert event["tb_is_value_tb"], event
        assert event["tb"] is not None
        assert f'File "{run.script}", line {line}, in <module>\n    {text}\n' in event["tb"], event["tb"]


def test_exit_hooks_receive_an_error_that_came_back_from_a_container(run_script):
    run = run_script(
        RECORDING_EXIT
        + """
with lifepool.LifecyclePool(Recorder, containers=2) as pool:
    pool.fail.call()  # PARENT-CALL-LINE
"""
    )
    assert run.returncode == 1, run
    assert "ValueError: from a container" in run.stderr, run
    parent_line, parent_text = run.line_of("# PARENT-CALL-LINE")
    line, text = run.line_of("# CONTAINER-RAISE-LINE")
    for event in exit_events(run):
        assert event["type"] == "builtins.ValueError" and event["type_is_value_type"], event
        assert event["args"] == ["from a container"]
        tb = event["tb"]
        assert tb is not None
        assert f'File "{run.script}", line {parent_line}, in <module>\n    {parent_text}\n' in tb, tb
        assert f'File "{run.script}", line {line}, in fail\n    {text}\n' in tb, tb


def test_exit_hooks_receive_a_stand_in_for_an_error_that_cannot_be_pickled(run_script):
    run = run_script(
        RECORDING_EXIT
        + """
with lifepool.LifecyclePool(Recorder, containers=2) as pool:
    raise Unpicklable("holds a lock")  # PARENT-RAISE-LINE
"""
    )
    assert run.returncode == 1, run
    assert "Unpicklable: holds a lock" in run.stderr, "the original error should reach the user unchanged"
    line, text = run.line_of("# PARENT-RAISE-LINE")
    for event in exit_events(run):
        assert event["is_remote_error"], event
        assert event["type_is_value_type"], event
        assert event["type_name"] == "__main__.Unpicklable", event
        remote = event["remote_traceback"]
        assert remote is not None
        assert f'File "{run.script}", line {line}, in <module>\n    {text}\n' in remote, remote
        assert "Unpicklable: holds a lock" in remote, remote


def test_exit_hooks_receive_the_error_itself_when_only_its_cause_cannot_be_pickled(run_script):
    run = run_script(
        RECORDING_EXIT
        + """
with lifepool.LifecyclePool(Recorder, containers=2) as pool:
    try:
        raise Unpicklable("holds a lock")
    except Unpicklable as error:
        raise ParentError("raised from it") from error  # PARENT-RAISE-LINE
"""
    )
    assert run.returncode == 1, run
    assert "ParentError: raised from it" in run.stderr and "Unpicklable: holds a lock" in run.stderr, run
    for event in exit_events(run):
        assert event["is_parent_error"] and event["type_is_value_type"], event
        assert event["args"] == ["raised from it"], event


@pytest.mark.parametrize(
    "session",
    [
        # (an earlier cell's error, shown before the pool was made)
        'cells.runsource("1/0")\npool = lifepool.LifecyclePool(Recorder, containers=2)',
        # (a REPL: its errors, shown after the pool was made, end nothing)
        'pool = lifepool.LifecyclePool(Recorder, containers=2)\nsys.ps1 = ">>> "\ncells.runsource("1/0")',
        # (a SIGTERM that interrupted one cell of a REPL, which went on)
        'pool = lifepool.LifecyclePool(Recorder, containers=2)\nsys.ps1 = ">>> "\n'
        'cells.runsource("import os, signal; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")',
    ],
    ids=["shown-before-the-pool", "shown-in-a-repl", "sigterm-in-a-repl-cell"],
)
def test_an_error_an_interactive_session_showed_and_went_on_from_does_not_end_the_program(run_script, session):
    run = run_script(
        RECORDING_EXIT
        + """
import code
import __main__

cells = code.InteractiveInterpreter(__main__.__dict__)
"""
        + session
        + """
assert cells.runsource("pool.fail.spawn()") is False
print("the session ends normally, the pool left open")
"""
    )
    assert run.returncode == 0, run
    assert "the session ends normally" in run.stdout, run
    for event in exit_events(run):
        assert event["type"] is None, event


def test_a_module_that_makes_a_pool_when_imported_fails_to_enter_instead_of_recursing(run_script, tmp_path):
    # Each container imports the target's module to unpickle the target: a
    # pool made there would start containers that make pools, without end.
    (tmp_path / "models_with_pool.py").write_text(
        textwrap.dedent(
            """
            import lifepool

            class Model:
                def ping(self):
                    return "pong"

            pool = lifepool.LifecyclePool(Model, containers=1)
            """
        )
    )
    run = run_script(
        """
from models_with_pool import pool

try:
    pool.ping.call()
except lifepool.EnterError as error:
    print(json.dumps({"cause": f"{type(error.__cause__).__name__}: {error.__cause__}"}))
pool.shutdown()
"""
    )
    assert run.returncode == 0, run
    cause = run.json_output()["cause"]
    assert cause.startswith("RuntimeError: a lifepool pool cannot be made while a container imports"), cause


# ---------------------------------------------------------------------------
# forks: of a program with a pool open, and of a container
# ---------------------------------------------------------------------------

ECHO_CLASS = """
class Echo:
    def __enter__(self):
        mark("enter")

    def echo(self, x):
        return x

    def __exit__(self, *exc_info):
        mark("exit")
"""


def test_a_child_forked_while_a_pool_is_open_leaves_the_pool_to_its_parent(run_script):
    # The child refuses calls, fails what it waited for, and leaves the with
    # block and the interpreter at once: only the parent stops the containers.
    run = run_script(
        ECHO_CLASS
        + """
import signal
with lifepool.LifecyclePool(Echo, containers=1) as pool:
    waited = pool.echo.spawn(1)
    waited.result(timeout=30)
    pid = os.fork()
    if pid == 0:
        try:
            pool.echo.call(2)
        except RuntimeError as error:
            mark("child", refused=str(error), sigterm_default=signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    else:
        deadline = time.monotonic() + 20
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise SystemExit("the forked child did not exit")
            time.sleep(0.02)
        after = pool.echo.call(3)
if pid:
    print(json.dumps({"after": after}))
"""
    )
    assert run.returncode == 0, run
    assert run.json_output() == {"after": 3}
    (child,) = run.events("child").values()
    assert "belongs to process" in child[0]["refused"] and "forked" in child[0]["refused"], child
    assert child[0]["sigterm_default"], "the child should die by SIGTERM again, like a program without a pool"
    assert len(run.events("exit")) == 1, "the parent, and only the parent, stops its container"


def test_a_fork_multiprocessing_pool_beside_an_open_pool_terminates(run_script):
    # multiprocessing.Pool's exit sends SIGTERM to its forked workers; they
    # must die of it, not turn it into lifepool.Terminated and then wait at
    # exit for pools that are their parent's.
    run = run_script(
        ECHO_CLASS
        + """
import multiprocessing
import warnings

warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: fork() in a process with threads)


def square(x):
    return x * x


with lifepool.LifecyclePool(Echo, containers=1) as pool:
    with multiprocessing.get_context("fork").Pool(2) as mp_pool:
        squares = mp_pool.map(square, range(10))
    print(json.dumps({"squares": squares, "echo": pool.echo.call(5)}))
"""
    )
    assert run.returncode == 0, run
    assert run.json_output() == {"squares": [x * x for x in range(10)], "echo": 5}


def test_processes_a_container_starts_get_default_signal_handling(run_script):
    # A container ignores Ctrl-C and SIGTERM itself (the parent decides), but
    # what it starts -- subprocesses and forks -- must not inherit that.
    run = run_script(
        """
import signal
import subprocess

REPORT = (
    "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
    " signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"
)


class Starter:
    def __enter__(self):
        mark("enter")

    def subprocess_signals(self):
        return subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, timeout=30).stdout.split()

    def terminate_a_subprocess(self):
        sleeper = "import time; print(flush=True); time.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE)
        child.stdout.readline()  # started, past Python's start-up
        child.terminate()
        return child.wait(timeout=30)

    def fork_signals(self):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            seen = [
                signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
            ]
            os.write(w, json.dumps(seen).encode())
            os._exit(0)
        os.close(w)
        seen = json.loads(os.read(r, 1000))
        os.waitpid(pid, 0)
        return seen


with lifepool.LifecyclePool(Starter, containers=1) as pool:
    print(json.dumps({
        "subprocess": pool.subprocess_signals.call(),
        "terminated": pool.terminate_a_subprocess.call(),
        "fork": pool.fork_signals.call(),
    }))
"""
    )
    assert run.returncode == 0, run
    assert run.json_output() == {"subprocess": ["True", "True"], "terminated": -15, "fork": [True, True, True]}


def test_a_fork_waits_for_a_container_start_in_progress(run_script):
    # A fork in the middle of a start would copy its descriptors into a child
    # that never execs: subprocess then waits on its exec-status pipe for as
    # long as that child lives (a fork-started multiprocessing.Pool worker:
    # forever). Here the start is paused inside, and a thread forks meanwhile.
    run = run_script(
        ECHO_CLASS
        + """
import warnings

from lifepool import _launch

warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: fork() in a process with threads)
entered, proceed, forked = threading.Event(), threading.Event(), threading.Event()
start = _launch.ExecProcess.start


def paused_start(self):
    entered.set()
    proceed.wait(30)
    start(self)


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked.set()
    os.waitpid(pid, 0)


_launch.ExecProcess.start = paused_start
pool = lifepool.LifecyclePool(Echo, containers=1)
assert entered.wait(30)
forker = threading.Thread(target=fork)
forker.start()
during = forked.wait(0.5)  # (bounded: a fork that does not wait is done in microseconds)
proceed.set()
forker.join(30)
print(json.dumps({"forked_during_start": during, "forked": forked.is_set(), "echo": pool.echo.call(4)}))
pool.shutdown()
"""
    )
    assert run.returncode == 0, run
    assert run.json_output() == {"forked_during_start": False, "forked": True, "echo": 4}


def test_an_idle_container_leaves_when_its_parent_dies_even_if_its_pipe_stays_open(run_script):
    # The parent dies without a word while another process holds a copy of
    # its end of the pipe, so the container never reads EOF; its watcher sees
    # the parent gone (getppid) and must end the idle container's read.
    run = run_script(
        ECHO_CLASS
        + """
import subprocess

pool = lifepool.LifecyclePool(Echo, containers=1)
pool.echo.call(1)
(record,) = pool._dispatcher.slots
copy = os.dup(record.transport.fd)
holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(copy,))
mark("holder", pid=holder.pid)
os._exit(0)  # no shutdown, no exit hooks run by the parent
"""
    )
    (holder,) = run.events("holder").values()
    try:
        assert run.returncode == 0, run
        entered = run.events("enter")
        assert_gone(entered, timeout=GONE_TIMEOUT + 5)
        exited = run.events("exit")
        assert set(exited) == set(entered), "the container should have run its exit hook"
    finally:
        os.kill(holder[0]["pid"], signal.SIGKILL)


# ---------------------------------------------------------------------------
# SIGTERM once the last pool is gone
# ---------------------------------------------------------------------------

POOL_GONE = {
    "collected": "dispatcher = pool._dispatcher\ndel pool\ngc.collect()",
    "shut-down-in-a-thread": (
        "dispatcher = pool._dispatcher\n"
        "stopper = threading.Thread(target=pool.shutdown)\n"
        "stopper.start()\n"
        "stopper.join(30)"
    ),
}


@pytest.mark.parametrize("how", sorted(POOL_GONE))
def test_sigterm_after_the_last_pool_is_gone_kills_as_without_lifepool(run_script, how):
    # signal.signal only works in the main thread, so neither way can put the
    # default handler back when the pool closes.
    run = run_script(
        ECHO_CLASS
        + f"""
import gc
import signal

pool = lifepool.LifecyclePool(Echo, containers=1)
pool.echo.call(1)
{POOL_GONE[how]}
assert dispatcher.closed.wait(30), "the pool did not close"
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # (ends early: by the signal's handler, or by the process's death)
except BaseException as error:
    print(f"SIGTERM raised {{type(error).__name__}}", flush=True)
    sys.exit(0)
print("SIGTERM did nothing", flush=True)
"""
    )
    assert run.returncode == -signal.SIGTERM, run
    assert run.stdout == "" and "Traceback" not in run.stderr, run
    assert len(run.events("exit")) == 1, run
