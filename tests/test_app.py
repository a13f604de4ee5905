"""The Modal-style app layer in process: lifecycle modes, options, retries, errors, secrets."""

from __future__ import annotations

import os
import pathlib

import pytest
from conftest import markers
from targets import mark, wait_for_path

import lifepool
from lifepool import modal

app = modal.App("tests")


@app.cls(max_containers=1, env={"FROM_ENV": "yes"})
class Hooks:
    size: str = modal.parameter(default="small")

    def __enter__(self):  # App mode: never runs
        raise RuntimeError("a dunder ran in App mode")

    @modal.enter(snap=True)
    def first(self):
        self.order = ["snap"]

    @modal.enter()
    def second(self):
        self.order.append("enter")

    @modal.method()
    def state(self):
        return self.size, self.order, os.environ.get("FROM_ENV"), os.getpid(), modal.is_local()

    def not_a_method(self):
        return 1

    @modal.exit()
    def bye(self):  # no arguments in App mode
        mark(os.environ["HOOK_DIR"], "exit", self.size)


@app.function(max_containers=1, retries=modal.Retries(max_retries=2, initial_delay=0.0, backoff_coefficient=1.0))
def flaky(directory):
    attempt = len(list(pathlib.Path(directory).glob("attempt-*")))
    (pathlib.Path(directory) / f"attempt-{attempt}").touch()
    if attempt < 2:
        raise ValueError(f"attempt {attempt}")
    return attempt


@app.function(max_containers=1, retries=1)
def always_fails():
    raise KeyError("always")


@app.function(max_containers=1, timeout=0.5)
def stuck(path):
    wait_for_path(path, timeout=60)


def test_app_mode_runs_decorated_hooks_only_and_parameters_get_their_own_pool(hookdir, monkeypatch):
    monkeypatch.setenv("HOOK_DIR", str(hookdir))
    with app.run():
        size, order, env, pid, local = Hooks().state.remote()
        assert (size, order, env, local) == ("small", ["snap", "enter"], "yes", False)
        large = Hooks(size="large").state.remote()
        assert large[0] == "large" and large[3] != pid
        assert Hooks() is Hooks()  # the same parameters: the same object (and pool)
        with pytest.raises(AttributeError, match=r"modal\.method"):
            Hooks().not_a_method  # noqa: B018
    assert sorted(markers(hookdir, "exit").values()) == ["large", "small"]
    assert modal.is_local()


def test_retries_rerun_a_call_that_raised(tmp_path):
    with app.run():
        assert flaky.remote(str(tmp_path)) == 2
        with pytest.raises(KeyError, match="always"):
            always_fails.remote()
        call = always_fails.spawn()
        with pytest.raises(KeyError):
            call.get(timeout=60)
    assert len(list(tmp_path.glob("attempt-*"))) == 3


def test_a_timeout_is_modal_s_and_lifepool_s(tmp_path):
    with app.run():
        with pytest.raises(modal.exception.FunctionTimeoutError) as caught:
            stuck.remote(str(tmp_path / "never"))
    assert isinstance(caught.value, lifepool.CallTimeoutError)


def test_calling_outside_a_running_app_says_how_to_run():
    with pytest.raises(modal.exception.ExecutionError, match="lifepool run"):
        flaky.remote("x")


def test_options_are_checked_as_modal_checks_them(caplog):
    with pytest.raises(modal.exception.InvalidError, match="parentheses"):
        app.function(lambda: None)
    with pytest.raises(TypeError, match="concurrency_limit"):
        app.function(concurrency_limit=2)
    with pytest.raises(modal.exception.InvalidError, match="max_retries"):
        modal.Retries(max_retries=11)
    with pytest.raises(TypeError):
        modal.Retries(3)  # keyword-only, as in Modal
    with pytest.raises(modal.exception.InvalidError, match="min_containers"):
        app.function(min_containers=3, max_containers=2)
    with caplog.at_level("INFO", logger="lifepool"):
        app.function(gpu="A100-unique-test", image=modal.Image.debian_slim().pip_install("numpy"))(print)
    assert "gpu=" in caplog.text


def test_stub_mode_exit_hooks_receive_the_error(hookdir, monkeypatch):
    import app_targets

    monkeypatch.setenv("HOOK_DIR", str(hookdir))
    with pytest.raises(ZeroDivisionError):
        with app_targets.stub.run():
            assert app_targets.Recorded().ping.call(1) == 2
            1 / 0  # noqa: B018
    assert set(markers(hookdir, "exit").values()) == {"ZeroDivisionError"}


def test_secrets(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("# comment\nexport A=1\nB='two words'\n")
    assert modal.Secret.from_dotenv(tmp_path).env() == {"A": "1", "B": "two words"}
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db.env").write_text("DATABASE_URI=sqlite.db\n")
    monkeypatch.setenv("LIFEPOOL_SECRETS_DIR", str(secrets))
    assert modal.Secret.from_name("db").env() == {"DATABASE_URI": "sqlite.db"}
    assert modal.Secret.from_name("absent").env() == {}
    monkeypatch.setenv("LOCAL_ONE", "x")
    assert modal.Secret.from_local_environ(["LOCAL_ONE"]).env() == {"LOCAL_ONE": "x"}
    with pytest.raises(modal.exception.InvalidError):
        modal.Secret.from_local_environ(["SURELY_NOT_SET_ANYWHERE"])


def test_importing_lifepool_does_not_import_the_app_layer():
    import subprocess
    import sys

    code = "import sys, lifepool; print(any(m.startswith('lifepool.app') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout == "False\n"
