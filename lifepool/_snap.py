"""The template process of the ``"template"`` start method: load the target once, then fork containers.

What runs in the process the zygote (or a module-warm process) forks for a
pool: ``serve`` loads the target and runs its snap hooks once (``_load``, the
``Snapshot``), forks a module-warm process off first when asked
(``_make_warm``), then forks (or, with threads, fork+execs) a container per
request on its control socket and reaps them when the parent asks. The
parent's side, and why a template at all, is ``lifepool/_template.py``.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading

# (_output at the top: the zygote imports it once, a container forked with forward_output has it already)
from . import _context, _launch, _output, _serve, _wire, _worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Snapshot:
    """What the template made once: the instance containers serve, or why it could not make it."""

    def __init__(self) -> None:
        self.target: Any = None  # the unpickled target (a class, or an instance)
        self.instance: Any = None
        self.error: BaseException | None = None  # raised while loading or in a snap hook
        self.threads_warning: str | None = None  # set: fork is unsafe, containers are exec'd


def serve(control: Any, target_blob: bytes, options: dict[str, Any], output: list[int] | None = None) -> None:
    """The template program (forked by the zygote): load once, then fork on request.

    *output*: with ``forward_output``, the write ends of the pipes of the
    container whose start made this template: the load prints into them.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _worker._ignore_signal)
        signal.siginterrupt(signum, False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _worker._set_process_name(options["pool_name"], "t")
    _worker.share_authkey(options.get("authkey"))
    sock = socket.socket(fileno=control.fileno())
    if output:
        ends = (*(_launch.ChildEnd(fd) for fd in output), options["output_level"])
        give_back = _output.lend(ends)
        try:
            snapshot = _load(sock, target_blob, options, give_back)
        finally:
            give_back()
    else:
        snapshot = _load(sock, target_blob, options, None)
    if snapshot.threads_warning is not None:
        sock.send(pickle.dumps(("warn", None, snapshot.threads_warning)))
    children: dict[int, Any] = {}  # pid -> an ExecProcess (exec'd containers), or None (forked)
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(sock, 65536, 7)
        except OSError:
            data, fds = b"", []
        if not data:
            os._exit(0)  # the parent is gone, or closed the pool: take nothing with us
        if _warm_children:
            _reap_warm()
        kind, request_id, *rest = pickle.loads(data)
        if kind == "fork":
            index, child_options, level = rest
            pid = _start(sock, snapshot, target_blob, index, child_options, level, fds, children)
            sock.send(pickle.dumps(("pid", request_id, pid)))
        elif kind == "reap":
            sock.send(pickle.dumps(("status", request_id, _reap(rest[0], children))))


def _load(sock: socket.socket, target_blob: bytes, options: dict[str, Any], give_back: Any) -> Snapshot:
    """Import the target's module, make the instance, run the snap hooks, freeze the heap.

    With ``options["warm"]`` (the modules the target's pickle names), those
    are imported first and a module-warm process is forked off before the
    target is unpickled (``_make_warm``).
    """
    import gc

    from . import _hooks

    snapshot = Snapshot()
    _serve._apply_environment(options.get("environment"), 0)
    if options.get("warm"):
        _make_warm(sock, options["warm"], give_back)
    try:
        _context._state.loading_target = True
        try:
            snapshot.target = target = _wire.loads(target_blob)
        finally:
            _context._state.loading_target = False
        cls = target if isinstance(target, type) else type(target)
        info = _hooks.inspect_class(cls)
        instance = cls() if isinstance(target, type) else target
        for name in info.snap_hooks:
            result = getattr(instance, name)()
            if _hooks.is_async(getattr(cls, name)):
                import asyncio

                asyncio.run(result)
        snapshot.instance = instance
    except BaseException as error:  # noqa: BLE001 - each container reports it as its enter failure
        snapshot.error = error
        return snapshot
    threads = threading.active_count()
    if threads > 1:
        snapshot.threads_warning = (
            f"lifepool pool {options['pool_name']!r}: the template process has {threads} "
            "threads after its @lifepool.enter(snap=True) hooks, so forking containers from it is unsafe; each "
            "container is started as a fresh interpreter and runs the snap hooks itself (no memory is shared). "
            "To share it, start no threads in snap hooks (load the model there, start thread pools, CUDA or "
            "clients in an ordinary @lifepool.enter() hook), or set e.g. OMP_NUM_THREADS=1 while loading"
        )
        snapshot.instance = None
    gc.freeze()  # what the snapshot made is never touched by the collector: its pages stay shared
    return snapshot


_warm_children: list[int] = []  # module-warm processes this template forked (reaped once they leave)


def _make_warm(sock: socket.socket, modules: tuple[str, ...], give_back: Any) -> None:
    """Import *modules*, then fork a module-warm process and hand it to the parent (see ``_zygote.Warm``).

    It is forked before the target is unpickled, so it holds the zygote's
    state, the parent's context and the pool's env=/cwd= (its cache key) and
    these imports: no instance, no snap state, no descriptor of a container
    (the lent output pipes are given back in it at once). The parent gets
    its socket's other end, a pidfd, its pid and the list of the module
    files it imported, in one message. Nothing is forked if an
    import fails (the unpickling raises it again, as the pool's enter
    failure) or leaves a thread running.
    """
    import importlib

    before = set(sys.modules)
    _context._state.loading_target = True
    try:
        for name in modules:
            importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - raised again, and reported, when the target is unpickled
        return
    finally:
        _context._state.loading_target = False
    if threading.active_count() > 1:
        return
    files = []
    for name in set(sys.modules) - before:
        path = getattr(sys.modules[name], "__file__", None)
        if isinstance(path, str):
            try:
                info = os.stat(path)
            except OSError:
                continue
            files.append((path, info.st_mtime_ns, info.st_size))
    import zlib

    # (one datagram, read into 64 KiB: the paths compress well; a bigger list gets no warm process)
    listing = zlib.compress(pickle.dumps(files, pickle.HIGHEST_PROTOCOL))
    if len(listing) > 60_000:
        return
    parent_end, warm_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        parent_end.close()
        warm_end.close()
        return
    if pid == 0:
        try:
            sock.close()
            parent_end.close()
            if give_back is not None:
                give_back()  # (the pipes of the container whose start made the template: not ours to hold)
            from . import _zygote

            _worker._set_process_name("warm", 0)
            _zygote.serve_requests(warm_end)
        finally:
            os._exit(1)
    warm_end.close()
    _warm_children.append(pid)
    try:
        pidfd = os.pidfd_open(pid)  # (our child, not reaped: this is it)
        try:
            message = pickle.dumps(("warm", None, (pid, listing)))
            socket.send_fds(sock, [message], [parent_end.fileno(), pidfd])
        finally:
            os.close(pidfd)
    except OSError:
        pass  # (the parent is gone, or refused it: the warm process sees EOF and leaves)
    finally:
        parent_end.close()


def _reap_warm() -> None:
    for pid in list(_warm_children):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _warm_children.remove(pid)


def _start(
    sock: socket.socket,
    snapshot: Snapshot,
    target_blob: bytes,
    index: int,
    options: dict[str, Any],
    level: int | None,
    fds: list[int],
    children: dict[int, Any],
) -> int | None:
    """Start container *index* on the descriptors the parent sent; return its pid (None: it could not).

    The descriptors: the container's socket end, its sentinel pipe's write
    end, the parent's stdout and stderr, and with ``forward_output`` (*level*
    not None) the write ends of its three output pipes, which the child
    redirects onto (``_worker.main`` -> ``_output.redirect``).
    """
    if len(fds) != (4 if level is None else 7):
        for fd in fds:
            os.close(fd)
        return None
    conn_fd, sentinel_fd, stdout, stderr, *pipes = fds
    for fd in fds:
        os.set_inheritable(fd, False)
    options = {**options, "template_child": True, "sentinel": _launch.ChildEnd(sentinel_fd)}
    output = None if level is None else (*(_launch.ChildEnd(fd) for fd in pipes), level)
    try:
        if snapshot.threads_warning is not None:
            process = _launch.ExecProcess(
                _worker.main,
                (_launch.ChildEnd(conn_fd), index, target_blob, options, output),
                name="lifepool-container",
            )
            saved = os.dup(1), os.dup(2)
            try:
                os.dup2(stdout, 1)
                os.dup2(stderr, 2)
                process.start()
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            started: int = process.pid  # type: ignore[assignment]  # (set: it started)
            children[started] = process
            return started
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()  # (this copy: the template's end stays the template's alone)
                os.dup2(stdout, 1)
                os.dup2(stderr, 2)
                os.close(stdout)
                os.close(stderr)
                _worker.main(_launch.ChildEnd(conn_fd), index, None, options, output, snapshot=snapshot)
            finally:
                os._exit(1)
        children[pid] = None
        return pid
    except OSError:
        return None
    finally:
        # The container holds these now; the template never keeps a copy.
        for fd in fds:
            os.close(fd)


def _reap(pid: int, children: dict[int, Any]) -> int | None:
    if pid not in children:
        return None
    process = children.pop(pid)
    if process is not None:
        process.join()
        code: int | None = process.exitcode
        process.close()
        return code
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
