"""``lifepool run file.py[::entry]`` (also ``python -m lifepool run``): a Modal-style program, run locally.

    import file.py as a module (its directory first on sys.path, as ``python file.py`` would)
      └─ find the app and its local entrypoint (or ``::name``, ``::Cls.method``, ``::function``)
         └─ options from the entrypoint's signature, as ``modal run`` maps them
            └─ with app.run(): entrypoint(**options)        (async: asyncio.run)

Exit status: 0 done, 1 the entrypoint raised (traceback trimmed to user code),
2 a usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import inspect
import os
import sys
import threading
import traceback
import types
import typing
from typing import Any

USAGE_ERROR = 2
_LIFEPOOL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="lifepool", description="Run Modal-style programs on local containers.")
    commands = top.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a program's local entrypoint (or a function) inside its app")
    run_parser.add_argument("target", help="path/to/file.py, or file.py::entrypoint, file.py::Cls.method")
    run_parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "run":
        top.parse_args(argv)  # prints help or the usage error (status 2)
        return USAGE_ERROR
    # Ours come before the target, the entrypoint's own after it (--help too).
    args = argv[1:]
    split = next((i for i, arg in enumerate(args) if not arg.startswith("-")), len(args) - 1)
    ours, rest = run_parser.parse_args(args[: split + 1]), args[split + 1 :]
    try:
        app, func, label = _load(ours.target)
        kwargs = _parse_entry_args(func, label, ours.target, rest)
    except UsageError as error:
        print(f"lifepool run: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    progress = None if ours.quiet or not sys.stderr.isatty() else _Progress(app)
    try:
        with app.run():
            if progress is not None:
                progress.start()
            result = func(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
    except KeyboardInterrupt:
        _stop(progress)
        print("lifepool run: interrupted", file=sys.stderr)
        return 130
    except BaseException as error:  # noqa: BLE001 - shown, trimmed, as the status
        _stop(progress)
        if isinstance(error, SystemExit):
            return error.code if isinstance(error.code, int) else 1
        _print_trimmed(error)
        return 1
    _stop(progress)
    return 0


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _load(target: str) -> tuple[Any, Any, str]:
    path, _, entry = target.partition("::")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise UsageError(f"{path!r} is not a Python file")
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # as `python file.py`: its neighbours import (the containers get it too)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # (an error here is the program's: exit status 1, traceback shown)
    from ._app import App, LocalEntrypoint
    from ._cls import Cls, Function

    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if not apps:
        raise UsageError(f"{path} defines no lifepool App (or Stub)")
    entries = {e.name: e for app in apps for e in app.registered_entrypoints.values()}
    if not entry:
        if len(entries) == 1:
            (only,) = entries.values()
            return only.app, only.raw_f, only.name
        functions = {n: f for app in apps for n, f in app.registered_functions.items()}
        if not entries and len(functions) == 1:
            name_, function = next(iter(functions.items()))
            return function.app, function.remote, name_
        found = ", ".join(sorted(entries)) or "none"
        raise UsageError(f"pick one entrypoint with {path}::NAME (found: {found})")
    if entry in entries:
        return entries[entry].app, entries[entry].raw_f, entry
    head, _, method_name = entry.partition(".")
    value = getattr(module, head, None)
    if isinstance(value, Function) and not method_name:
        return value.app, value.remote, entry
    if isinstance(value, Cls) and method_name:
        obj = value()
        return value._app, getattr(obj, method_name).remote, entry
    if isinstance(value, LocalEntrypoint):
        return value.app, value.raw_f, entry
    raise UsageError(f"{path} has no entrypoint, function or Cls.method named {entry!r}")


def _parse_entry_args(func: Any, label: str, target: str, argv: list[str]) -> dict[str, Any]:
    """``--name value`` options from *func*'s parameters, as ``modal run`` maps them."""
    raw = getattr(func, "__wrapped__", None) or getattr(getattr(func, "__self__", None), "_service", None)
    signature_of = func
    if hasattr(func, "__self__") and hasattr(func.__self__, "_service"):
        signature_of = func.__self__._service.raw_function(func.__self__._name)
    elif raw is not None and callable(raw):
        signature_of = raw
    signature = inspect.signature(signature_of)
    try:
        hints = typing.get_type_hints(signature_of)
    except Exception:  # noqa: BLE001 - unresolvable annotations: strings
        hints = {}
    parser = _ArgumentParser(prog=f"lifepool run {target}", description=inspect.getdoc(signature_of))
    for name, param in signature.parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        option = "--" + name.replace("_", "-")
        annotation = hints.get(name, param.annotation)
        required = param.default is param.empty
        default = None if required else param.default
        _, annotation = _unwrap_optional(annotation)
        if annotation is bool:
            parser.add_argument(
                option, dest=name, action=argparse.BooleanOptionalAction, required=required, default=default
            )
            continue
        kind = _converter(annotation)
        extra: dict[str, Any] = {}
        if typing.get_origin(annotation) is typing.Literal:
            extra["choices"] = list(typing.get_args(annotation))
        parser.add_argument(
            option,
            dest=name,
            type=kind,
            required=required,
            default=default,
            help=f"{_type_name(annotation)}{'' if required else f' (default: {default!r})'}",
            **extra,
        )
    namespace = parser.parse_args(argv)
    return vars(namespace)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _unwrap_optional(annotation: Any) -> tuple[bool, Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, annotation


def _converter(annotation: Any) -> Any:
    if annotation in (int, float, str):
        return annotation
    if annotation is datetime.datetime:
        return _datetime
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        kind = type(values[0]) if values else str
        return kind
    if annotation is inspect.Parameter.empty:
        return str
    raise UsageError(f"lifepool run cannot take a parameter of type {annotation!r} from the command line")


def _datetime(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time") from None


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "str"
    return getattr(annotation, "__name__", None) or str(annotation)


def _print_trimmed(error: BaseException) -> None:
    """The traceback without lifepool's own frames (the user's code and the container's frames stay)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_LIFEPOOL_DIR):
        tb = tb.tb_next
    error.__traceback__ = tb
    traceback.print_exception(error, file=sys.stderr)


class _Progress:
    """A status line on the terminal: pools, containers, calls done (refreshed twice a second)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._show, name="lifepool-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    def _show(self) -> None:
        while not self._done.wait(0.5):
            run = self._app._running()
            if run is None:
                continue
            pools = run.pools()
            containers = sum(_containers_up(pool) for pool in pools)
            sys.stderr.write(
                f"\r\033[K{len(pools)} pool(s), {containers} container(s) up, {run.calls_done} call(s) done"
            )
            sys.stderr.flush()


def _containers_up(pool: Any) -> int:
    dispatcher = getattr(pool, "_dispatcher", None)
    slots = getattr(dispatcher, "slots", None) or ()
    return sum(1 for slot in slots if slot is not None and getattr(slot, "pid", None) is not None)


def _stop(progress: _Progress | None) -> None:
    if progress is not None:
        progress.stop()
