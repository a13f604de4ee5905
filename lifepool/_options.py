"""The pool's options: validation with errors that name the option, and what they resolve to.

``LifecyclePool.__init__`` checks everything here before it starts anything,
so a bad value raises at construction (``ValueError``, or ``TypeError`` for a
wrong type) and no process or thread is left behind.
"""

from __future__ import annotations

import math
import os
from typing import Any

from . import _launch
from ._backend import Backend

START_METHODS = ("template", "exec", "loky", "spawn", "forkserver")
BACKENDS = ("local", "ray")
DEFAULT_BACKEND = "local"  # what backend=None means (the test suite runs its contract tests on each backend)


def authkey() -> bytes:
    """This process's multiprocessing auth key, which containers take as theirs (see _worker.share_authkey)."""
    import multiprocessing.process  # (already imported: the containers' pipes are multiprocessing's)

    return bytes(multiprocessing.process.current_process().authkey)


def container_counts(containers: Any, minimum: Any, maximum: Any) -> tuple[int, int]:
    """(min_containers, max_containers) from the pool's three ways of saying it."""
    if containers is not None:
        if minimum is not None or maximum is not None:
            raise ValueError(
                "containers= makes a fixed pool; give either containers= or min_containers=/max_containers=, not both"
            )
        check_int("containers", containers, minimum=1)
        return containers, containers
    if minimum is not None:
        check_int("min_containers", minimum, minimum=0)
    if maximum is not None:
        check_int("max_containers", maximum, minimum=1)
    if minimum is None or maximum is None:
        import loky  # (only for this: the containers are not started through loky by default)

        cpus = loky.cpu_count()
        if minimum is None and maximum is None:
            return cpus, cpus  # (a fixed pool, one container per CPU)
        if minimum is None:
            minimum = 0
        if maximum is None:
            maximum = max(minimum, cpus, 1)
    if minimum > maximum:
        raise ValueError(f"min_containers ({minimum}) must be <= max_containers ({maximum})")
    return minimum, maximum


def check_window(value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"scaledown_window must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"scaledown_window must be a finite number of seconds >= 0, not {value}")


def engine(backend: Any, start_method: str | None) -> Backend:
    """The engine that runs the containers (see lifepool/_backend.py)."""
    if backend is None:
        backend = DEFAULT_BACKEND
    if isinstance(backend, Backend):
        if start_method is not None and backend.name != "local":
            raise ValueError(f"start_method is for the local backend, not for {backend!r}")
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {BACKENDS} or a lifepool backend object, not {backend!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "ray":
        if start_method is not None:
            raise ValueError('start_method is for backend="local"; Ray containers always start with "exec"')
        from ._ray import RayBackend  # (the ImportError without ray names the extra)

        return RayBackend()
    from ._local import LocalBackend

    if start_method in (None, "template"):
        from . import _template

        if _template.can_use():
            return _template.TemplateBackend()
        start_method = "exec"  # (no pidfds here: see _template.can_use)
    return LocalBackend(context(start_method))


def context(start_method: str) -> Any:
    """What starts the containers: an object with ``Pipe`` and ``Process``, like a multiprocessing context."""
    if start_method == "exec":
        return _launch.ExecContext()
    from loky.backend.context import get_context  # "loky", and the standard library's "spawn"/"forkserver"

    return get_context(start_method)


def environment(env: Any, cwd: Any, containers: int) -> dict[str, Any] | None:
    """The per-container ``env=``/``cwd=`` the containers apply before unpickling the target (see _worker).

    A callable *env* is called here, in the parent, once per container index:
    the containers get plain dicts, so nothing of the user's has to be
    unpickled before the environment is in place.
    """
    if env is None and cwd is None:
        return None
    envs = None
    if env is not None:
        if callable(env):
            envs = [check_env(env(index), f"env({index})") for index in range(containers)]
        else:
            envs = [check_env(env, "env")] * containers
    if cwd is not None:
        if not isinstance(cwd, (str, os.PathLike)):
            raise TypeError(f"cwd must be a path, not {type(cwd).__name__}")
        cwd = os.path.abspath(os.fspath(cwd))
        if not os.path.isdir(cwd):
            raise ValueError(f"cwd {cwd!r} is not a directory")
    return {"env": envs, "cwd": cwd}


def check_env(env: Any, what: str) -> dict[str, str | None]:
    if not isinstance(env, dict):
        raise TypeError(f"{what} must be a dict of str to str (or None), not {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"{what}: {key!r} is not an environment variable name")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{what}[{key!r}] must be a str or None, not {type(value).__name__}")
    return dict(env)


def check_int(what: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, not {value}")


def check_seconds(what: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive, finite number of seconds, not {value}")
