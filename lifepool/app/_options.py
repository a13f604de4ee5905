"""The options of ``@app.function()`` / ``@app.cls()``, checked as Modal checks them, and the one place pools are made.

    decorator kwargs ──► Options (checked; cloud-only ones logged once and dropped)
                           │  .with_overrides(...)   (Cls.with_options & co.)
                           ▼
                     make_pool(target, options) ──► LifecyclePool(...)

Retries of calls that *raised* (with Modal's backoff) are the app layer's
(see _calls.py); a container crash is retried by the pool's own ``retries=``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .exception import InvalidError

logger = logging.getLogger("lifepool")

# Accepted and ignored: they describe cloud machines. One log line each.
CLOUD_ONLY = frozenset(
    {
        "image",
        "gpu",
        "cpu",
        "memory",
        "ephemeral_disk",
        "volumes",
        "network_file_systems",
        "cloud",
        "region",
        "nonpreemptible",
        "proxy",
        "schedule",
        "buffer_containers",
        "startup_timeout",
        "enable_memory_snapshot",
        "block_network",
        "restrict_modal_access",
        "include_source",
        "serialized",
        "name",
        "is_generator",
        "i6pn",
        "cloud_bucket_mounts",
    }
)
DEFAULT_TIMEOUT = 300.0  # seconds per attempt, as in Modal

_logged: set[str] = set()


class Retries:
    """Retry policy of a function or class: ``modal.Retries`` (keyword-only, as in Modal).

    A call that raised (or timed out) is run again after
    ``initial_delay * backoff_coefficient ** n`` seconds (at most *max_delay*),
    at most *max_retries* times. A call whose container crashed is retried at
    once by the pool, up to *max_retries* times.
    """

    def __init__(
        self,
        *,
        max_retries: int,
        backoff_coefficient: float = 2.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        # The bounds Modal enforces, with its exception type.
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or not 0 <= max_retries <= 10:
            raise InvalidError(f"Invalid max_retries: {max_retries!r}. Must be an int between 0 and 10.")
        if not _number(backoff_coefficient) or not 1.0 <= backoff_coefficient <= 10.0:
            raise InvalidError(
                f"Invalid backoff_coefficient: {backoff_coefficient!r}. Must be between 1.0 and 10.0 (inclusive)."
            )
        if not _number(initial_delay) or not 0.0 <= initial_delay <= 60.0:
            raise InvalidError(f"Invalid initial_delay: {initial_delay!r}. Must be between 0 and 60 seconds.")
        if not _number(max_delay) or not 1.0 <= max_delay <= 60.0:
            raise InvalidError(f"Invalid max_delay: {max_delay!r}. Must be between 1 and 60 seconds.")
        self.max_retries = max_retries
        self.backoff_coefficient = float(backoff_coefficient)
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number *retry* (0 for the first)."""
        return min(self.initial_delay * self.backoff_coefficient**retry, self.max_delay)

    def __repr__(self) -> str:
        return (
            f"Retries(max_retries={self.max_retries}, backoff_coefficient={self.backoff_coefficient}, "
            f"initial_delay={self.initial_delay}, max_delay={self.max_delay})"
        )


@dataclasses.dataclass(frozen=True)
class Options:
    """What a function's or class's pools are made with (checked)."""

    min_containers: int | None = None
    max_containers: int | None = None
    scaledown_window: float | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: Retries | None = None
    single_use_containers: bool = False
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)
    max_inputs: int | None = None  # with_concurrency / @concurrent
    batching: tuple[int, float] | None = None  # with_batching

    def with_overrides(self, **changes: Any) -> Options:
        return check(dataclasses.replace(self, **changes))


def from_decorator(what: str, kwargs: dict[str, Any]) -> Options:
    """Options from the keyword arguments of ``@app.function()``/``@app.cls()``/``with_options``."""
    ignored = sorted(k for k in kwargs if k in CLOUD_ONLY and kwargs[k] not in (None, False, {}, [], ()))
    for key in ignored:
        if key not in _logged:
            _logged.add(key)
            logger.info("lifepool: %s(%s=...) is a cloud option; it is ignored locally", what, key)
    env: dict[str, str | None] = {}
    if kwargs.get("env") is not None:
        env.update(_check_env(kwargs["env"]))
    for secret in kwargs.get("secrets") or ():
        from ._secrets import Secret

        if not isinstance(secret, Secret):
            raise InvalidError(f"secrets must be a list of Secret objects, not {secret!r}")
        env.update(secret.env())
    retries = kwargs.get("retries")
    if retries is not None and not isinstance(retries, Retries):
        if not isinstance(retries, int) or isinstance(retries, bool):
            raise InvalidError(f"Retries parameter must be an integer or instance of modal.Retries. Found: {retries!r}")
        retries = Retries(max_retries=retries, backoff_coefficient=1.0, initial_delay=1.0)
    options = Options(
        min_containers=kwargs.get("min_containers"),
        max_containers=kwargs.get("max_containers"),
        scaledown_window=kwargs.get("scaledown_window"),
        timeout=DEFAULT_TIMEOUT if kwargs.get("timeout") is None else kwargs["timeout"],
        retries=retries,
        single_use_containers=bool(kwargs.get("single_use_containers", False)),
        env=env,
    )
    return check(options)


def check(options: Options) -> Options:
    for name in ("min_containers", "max_containers"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidError(f"{name} must be a non-negative int, not {value!r}")
    if options.max_containers is not None and options.max_containers < 1:
        raise InvalidError(f"max_containers must be positive, not {options.max_containers}")
    if (
        options.min_containers is not None
        and options.max_containers is not None
        and options.min_containers > options.max_containers
    ):
        raise InvalidError(
            f"min_containers ({options.min_containers}) cannot be greater than max_containers "
            f"({options.max_containers})"
        )
    if options.scaledown_window is not None and (
        not _number(options.scaledown_window) or options.scaledown_window <= 0
    ):
        raise InvalidError(f"scaledown_window must be a positive number of seconds, not {options.scaledown_window!r}")
    if not _number(options.timeout) or options.timeout <= 0:
        raise InvalidError(f"timeout must be a positive number of seconds, not {options.timeout!r}")
    return options


def make_pool(target: Any, options: Options, *, name: str, dunder_hooks: bool = True) -> Any:
    """The one place the app layer makes a pool: every option of the face maps here."""
    from .. import LifecyclePool

    retries = options.retries.max_retries if options.retries is not None else 0
    return LifecyclePool(
        target,
        name=name,
        # Elastic as on Modal: no container until a call needs one (min 0 by default), up to the cap.
        min_containers=options.min_containers or 0,
        max_containers=options.max_containers,
        scaledown_window=60.0 if options.scaledown_window is None else options.scaledown_window,  # (Modal's default)
        timeout=float(options.timeout),
        retries=retries,  # crashes: the pool retries at once on another container
        max_calls_per_container=1 if options.single_use_containers else None,
        max_inputs=options.max_inputs or 1,
        env=options.env or None,
    )


def _check_env(env: Any) -> dict[str, str | None]:
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise InvalidError(f"env must be a dict of str to str, not {env!r}")
    for key, value in env.items():
        if value is not None and not isinstance(value, str):
            raise InvalidError(f"env[{key!r}] must be a str or None, not {type(value).__name__}")
    return dict(env)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
