"""``Secret`` (environment variables for containers) and ``Image`` (a chainable stand-in).

Locally, containers run in the local environment and inherit the parent's
environment variables; a Secret adds (or overrides) variables in the
containers of the functions and classes it is given to, through the pool's
``env=``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .exception import InvalidError, NotFoundError

logger = logging.getLogger("lifepool")

SECRETS_DIR_VARIABLE = "LIFEPOOL_SECRETS_DIR"


class Secret:
    """Environment variables for containers: ``modal.Secret``."""

    def __init__(self, env: dict[str, str | None], *, name: str | None = None) -> None:
        self._env = dict(env)
        self.name = name

    def env(self) -> dict[str, str | None]:
        """The variables this secret sets in each container (``None``: unset there)."""
        return dict(self._env)

    def __repr__(self) -> str:
        keys = ", ".join(sorted(self._env))
        return f"<Secret {self.name or ''}({keys})>"

    @staticmethod
    def from_dict(env_dict: dict[str, str | None] = {}) -> Secret:  # noqa: B006 - Modal's signature
        """Variables given as a dict (values ``None`` are left out, as in Modal)."""
        if not isinstance(env_dict, dict) or not all(isinstance(k, str) for k in env_dict):
            raise InvalidError(f"from_dict needs a dict of str to str, not {env_dict!r}")
        for key, value in env_dict.items():
            if value is not None and not isinstance(value, str):
                raise InvalidError(f"Secret.from_dict: the value of {key!r} must be a str, not {type(value).__name__}")
        return Secret({k: v for k, v in env_dict.items() if v is not None})

    @staticmethod
    def from_local_environ(env_keys: list[str]) -> Secret:
        """The named variables of this process's environment (each must be set)."""
        missing = [key for key in env_keys if key not in os.environ]
        if missing:
            raise InvalidError(f"Could not find local environment variables: {', '.join(missing)}")
        return Secret({key: os.environ[key] for key in env_keys})

    @staticmethod
    def from_dotenv(path: str | os.PathLike[str] | None = None, *, filename: str = ".env") -> Secret:
        """Variables of a ``.env`` file: *path* (a file, or a directory holding *filename*), else the cwd's."""
        if path is None:
            file = os.path.join(os.getcwd(), filename)
        elif os.path.isdir(path):
            file = os.path.join(path, filename)
        else:
            file = os.fspath(path)
        if not os.path.exists(file):
            return Secret({})  # as Modal: a missing .env file is an empty secret
        return Secret(dict(read_dotenv(file)))

    @staticmethod
    def from_name(name: str, *, environment_name: str | None = None, required_keys: list[str] = []) -> Secret:  # noqa: B006
        """``<name>.env`` in ``$LIFEPOOL_SECRETS_DIR`` (default ``./.secrets``), else nothing (logged once)."""
        directory = os.environ.get(SECRETS_DIR_VARIABLE, os.path.join(os.getcwd(), ".secrets"))
        file = os.path.join(directory, f"{name}.env")
        if os.path.exists(file):
            env: dict[str, str | None] = dict(read_dotenv(file))
        else:
            logger.info(
                "lifepool: Secret.from_name(%r): no %s; containers inherit this process's environment", name, file
            )
            env = {}
        missing = [key for key in required_keys if key not in env and key not in os.environ]
        if missing:
            raise NotFoundError(f"Secret {name!r} is missing required keys: {', '.join(missing)}")
        return Secret(env, name=name)


def read_dotenv(file: str) -> dict[str, str]:
    """``KEY=value`` lines (``export``, comments, blank lines and simple quotes allowed)."""
    env: dict[str, str] = {}
    with open(file, encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                raise InvalidError(f"{file}:{number}: expected KEY=value, got {raw.rstrip()!r}")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            elif " #" in value:
                value = value.split(" #", 1)[0].rstrip()
            env[key] = value
    return env


class Image:
    """A stand-in for ``modal.Image``: every builder method returns an image and changes nothing.

    Local code runs in the local environment: install what the image would
    install into your virtual environment.
    """

    def __init__(self, steps: tuple[str, ...] = ()) -> None:
        self._steps = steps

    def __repr__(self) -> str:
        return f"<lifepool Image stand-in: {' -> '.join(self._steps) or 'empty'}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def build(*args: Any, **kwargs: Any) -> Image:
            return Image((*self._steps, name))

        build.__name__ = name
        return build

    @staticmethod
    def _base(name: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Image:
            return Image((name,))

        make.__name__ = name
        make.__doc__ = f"Modal's ``Image.{name}(...)``: accepted, builds nothing (local code runs in this environment)."

        return staticmethod(make)

    debian_slim = _base("debian_slim")
    micromamba = _base("micromamba")
    from_registry = _base("from_registry")
    from_dockerfile = _base("from_dockerfile")
    from_aws_ecr = _base("from_aws_ecr")
    from_gcp_artifact_registry = _base("from_gcp_artifact_registry")
    from_id = _base("from_id")
    from_name = _base("from_name")

    def imports(self) -> Any:
        """``with image.imports():`` — a context that does nothing here (imports just run locally)."""
        import contextlib

        return contextlib.nullcontext()
