"""The default start method, ``"template"``: containers forked from one template process per pool.

This module is the parent's side (``Template``, ``TemplateBackend``,
``TemplateTransport``); the template process's is ``lifepool/_snap.py``.

    parent (dispatcher thread)                 template (one per pool)              container
    --------------------------                 -----------------------              ---------
    Template(): _zygote.get().spawn_template ► forked from the parent's zygote
                (see lifepool/_zygote.py)      (a clean fork+exec'd interpreter):
                                               _snap.serve(): signal policy,
                                               unpickle the target (its module
                                               and imports load here),
                                               instantiate, snap hooks,
                                               gc.freeze()
    start(): socketpair + sentinel pipe
      (+ forward_output: 3 output pipes)
      ("fork", id, index, options, level)
      + SCM_RIGHTS [socket end, pipe w, 1, 2,
        (out w, err w, log w)] ──────────────► os.fork() ───────────────────────► _worker.main(conn, index,
                                               closes its copies of every end      output=the 3 ends,
                                                                                   snapshot=the instance):
                                                                                   _output.redirect first
           ◄──────────────────────────────── ("pid", id, pid)                      ordinary enter hooks, serve
      pidfd_open(pid) (not reaped yet: the
      pid is still this container's)
    sentinel = the pipe's read end: EOF once the container exited
    reap(): ("reap", id) ────────────────────► waitpid ─► ("status", id, code)

Why a template. A fresh interpreter per container (``"exec"``) pays the
interpreter start, every import and the enter hooks again in each container
and each replacement, and N containers hold N copies of whatever the enter
hooks loaded. A fork of a process that has done all that once costs a
fraction of a millisecond and shares its memory copy-on-write. Forking the
pool's parent would copy a threaded process (the dispatcher, the user's
threads) and run ``__main__``'s state in the child; forking a template that
was itself started clean by fork+exec and never ran more than one thread
keeps the guarantees of ``"exec"``.

What the container keeps of ``"exec"``'s guarantees, and how:

* Parent-death detection. The container's parent is the template, so
  ``getppid()`` says nothing about the pool's parent; the container watches a
  pidfd of the pool's parent instead (``_worker._watch_parent``), besides EOF
  on its socket, whose other end only the pool's parent holds.
* Sentinel and exit code. ``waitpid`` works only for one's own children, so
  the sentinel is the read end of a pipe whose write end only the container
  holds (closed in its forks, and on exec), and the exit status comes from
  the template, which reaps a container only when the parent asks: until
  then the pid (and the pidfd the parent opened, used for signals) is the
  container's. A container of a template that died was reparented and reaped
  by someone else: its status is unknown (None).
* Signal policy. The template ignores SIGINT and SIGTERM as a container does;
  the fork child inherits that until ``_worker.main`` sets its own.
* No orphans. The template has no thread of its own and sits in a blocking
  read of its control socket: EOF (the parent is gone, or closed the pool)
  ends it with ``os._exit``, running none of the user's hooks. Containers
  outlive a template that dies; the next start makes a new template.
* Output forwarding. The container's pipes are made in the parent and the
  read ends stay there (a ``ContainerOutput`` on the pool's ``Forwarder``,
  drained by ``recv`` and ``reap`` exactly as for ``LocalTransport``); the
  template holds the write ends only from the request to the fork. Its own
  load prints into the pipes of the container whose start made it, and
  gives them back before the first fork (``_output.lend``).
* Threads. A fork copies only the forking thread. If the template has more
  Python threads than one after the snap hooks (``threading.active_count()``),
  it warns once and starts each container by fork+exec instead, with the snap
  hooks run in every container. Native threads Python does not know of are
  not counted: OpenBLAS's pool (started by ``import numpy``) is idle and
  fork-safe through ``pthread_atfork``, and counting it would turn every NumPy
  user away; but an OpenMP runtime that ran a parallel region in a snap hook
  (GNU libgomp, torch's intra-op pool) is not fork-safe, and this check does
  not see it. Keep parallel work out of snap hooks (see the docs).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import threading
import weakref

from . import _launch, _local, _output, _wire
from ._local import LocalBackend, LocalTransport

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

logger = logging.getLogger("lifepool")

_REPLY_TIMEOUT = 30.0  # seconds a reply the template owes at once (a pid, a status) may take


def can_use() -> bool:
    """Whether the template start method works here (pidfds: Linux 5.3+)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and _launch._has_pidfd()


class Template:
    """The parent's handle on one template process and its control socket."""

    def __init__(self, target_blob: bytes, options: dict[str, Any], output: tuple[int, ...] = ()) -> None:
        from . import _zygote

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        context = _zygote.current_context()
        modules = modules_named(target_blob)
        self.warm_key = None if not modules else _zygote.warm_key(modules, options.get("environment"), context)
        try:
            pid = None
            warm = None if self.warm_key is None else _zygote.find_warm(self.warm_key)
            if warm is not None:
                # Forked from the process that has the target's modules imported: no import here.
                pid = warm.spawn_template(theirs.fileno(), target_blob, options, output, context)
                if pid is None:
                    _zygote.forget_warm(self.warm_key)  # type: ignore[arg-type]  # (set: warm came from it)
            if pid is None:
                # From the zygote; the template imports the modules and forks a module-warm process for later pools.
                from_zygote = options if not modules else {**options, "warm": modules}
                pid = _zygote.get().spawn_template(theirs.fileno(), target_blob, from_zygote, output, context)
                if pid is None:  # (the zygote died: once more with a new one)
                    pid = _zygote.get().spawn_template(theirs.fileno(), target_blob, from_zygote, output, context)
            if pid is None:
                raise OSError("lifepool could not start a template process (its zygote died)")
            # Its parent (the zygote, or a module-warm process) reaps it only when a later
            # request comes, which waits for our lock: still this one.
            self.pidfd = os.pidfd_open(pid)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pid = pid
        self.broken = False  # the control socket failed: the template is gone
        self._ids = itertools.count()
        self._replies: dict[int, Any] = {}
        self._lock = threading.Lock()  # one reader of the control socket at a time
        _live.add(self)

    def usable(self) -> bool:
        if not self.broken and select.select([self.pidfd], [], [], 0)[0]:
            self.broken = True
        return not self.broken

    def request(self, message: tuple[Any, ...], fds: list[int] | None = None) -> int:
        request_id = next(self._ids)
        try:
            socket.send_fds(self.sock, [pickle.dumps((message[0], request_id, *message[1:]))], fds or [])
        except OSError:
            self.broken = True
        return request_id

    def reply(self, request_id: int, timeout: float | None) -> tuple[bool, Any]:
        """(True, value) once the template answered *request_id*; (False, None) if not within *timeout* or never.

        With *timeout* 0 it never waits, not even for another thread reading the socket.
        """
        if not self._lock.acquire(blocking=timeout != 0):
            return False, None
        with _held(self._lock):
            while request_id not in self._replies:
                if self.broken or not select.select([self.sock], [], [], timeout)[0]:
                    return False, None
                try:
                    data, fds, _flags, _address = socket.recv_fds(self.sock, 65536, 2)
                except OSError:
                    data, fds = b"", []
                if not data:
                    for fd in fds:
                        os.close(fd)
                    self.broken = True
                    return False, None
                kind, answered, value = pickle.loads(data)
                if kind == "warn":
                    logger.warning("%s", value)
                elif kind == "warm":
                    self._take_warm(value, fds)
                else:
                    self._replies[answered] = value
            return True, self._replies.pop(request_id)

    def _take_warm(self, value: tuple[int, bytes], fds: list[int]) -> None:
        """The template forked a module-warm process: offer it to the parent's cache (see ``_zygote.Warm``)."""
        import zlib

        from . import _zygote

        if len(fds) != 2 or self.warm_key is None:
            for fd in fds:
                os.close(fd)
            return
        sock_fd, pidfd = fds
        pid, listing = value
        files = pickle.loads(zlib.decompress(listing))
        _zygote.offer(self.warm_key, _zygote.Warm(sock_fd, pidfd, pid, files))

    def kill(self) -> None:
        self.broken = True
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop the template now (it runs none of the user's code at exit); the zygote reaps it."""
        self.kill()
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        _live.discard(self)


def modules_named(blob: bytes, limit: int = 20_000) -> tuple[str, ...]:
    """The modules that unpickling *blob* imports, in order of first use (empty: none, or not known).

    Read from the pickle's opcodes without running it: the module of every
    ``GLOBAL``/``STACK_GLOBAL`` (a class or function pickled by reference),
    and the names cloudpickle's ``subimport`` imports (modules that code
    shipped by value refers to). ``__main__`` is never one: what a script
    defines travels by value. A pickle of more than *limit* opcodes is not
    read (an instance holding much data): such a target gets no module-warm
    process.
    """
    import pickletools

    modules: dict[str, None] = {}
    pushed: list[str | None] = []  # what each opcode pushed, if a string (memo stores included)
    memo: dict[int, str | None] = {}
    subimport = False
    try:
        for count, (op, argument, _position) in enumerate(pickletools.genops(blob)):
            arg: Any = argument
            if count > limit:
                return ()
            name = op.name
            value: str | None = None
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
                continue
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                value = arg
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(arg)
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, qualname = arg.partition(" ")
                elif len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                    module, qualname = str(pushed[-2]), str(pushed[-1])
                else:
                    return ()  # (not a pickle this reader follows: no warm process, nothing wrong)
                if not module.startswith(("__main__", "__mp_main__")):
                    modules[module] = None
                subimport = qualname == "subimport" and module.startswith("cloudpickle")
                pushed.append(None)
                continue
            if subimport and value is not None:
                modules[value] = None
            subimport = False
            pushed.append(value)
    except Exception:  # noqa: BLE001 - an _shm message or anything unexpected: no warm process
        return ()
    return tuple(modules)


@contextlib.contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release *lock*, acquired already, at the end of the block."""
    try:
        yield
    finally:
        lock.release()


_live: weakref.WeakSet[Template] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A fork of the parent holds no copy of a template's socket: EOF must still reach the template."""
    for template in list(_live):
        template.sock.close()
        template.broken = True
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TemplateTransport(LocalTransport):
    """A container forked by a template: signals through a pidfd, exit status from the template."""

    def __init__(
        self, template: Template, request_id: int, sentinel: int, conn: Any, output: _output.ContainerOutput | None
    ) -> None:
        self.template = template
        self.request_id = request_id
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._known = False  # the template answered (with a pid, or None: it could not start it)
        self._learning = threading.Lock()  # (the dispatcher, a borrower and the output's reader may ask)
        self.process = None
        self.messages = conn
        self.sentinel = sentinel
        self.fd = conn.fileno()
        self.reader = _wire.Reader(self.fd)
        self.recv = self.reader.recv  # type: ignore[method-assign]
        self.output = output
        if output is not None:
            output.learn_pid = self._learned_pid  # (a prefix may show the pid; log records carry it)
            self.recv = _output.receiving(self.reader, output)  # type: ignore[method-assign]  # (drains output first)
        self._recv = self.recv
        self.recv = self._first_recv  # type: ignore[method-assign]

    def _first_recv(self) -> bytes | bytearray:
        """The first frame: the container runs, so the template's answer with its pid is sent or about to be.

        The pid (and the pidfd) are known from here on, as for a container
        started by its Process; then ``recv`` is the reader's again.
        """
        data = self._recv()
        self.recv = self._recv  # type: ignore[method-assign]
        if not self._known:
            self._learn(_REPLY_TIMEOUT)
        return data

    def _learned_pid(self, wait: bool) -> int | None:
        """The pid if the template has said it (or, *wait*, once it says: it has forked the container, or will)."""
        if not self._known:
            self._learn(_REPLY_TIMEOUT if wait else 0)
        return self._pid

    @property
    def pid(self) -> int | None:  # type: ignore[override]
        """The container's pid once the template has reported it (never blocks)."""
        if not self._known:
            self._learn(0)
        return self._pid

    def _learn(self, timeout: float | None) -> None:
        # (without a timeout, never wait for another thread's learning either: the dispatcher must not block)
        if not self._learning.acquire(blocking=timeout != 0):
            return
        try:
            if self._known:
                return
            answered, pid = self.template.reply(self.request_id, timeout)
            if not answered:
                if self.template.broken:
                    self._known = True  # (never started, or its template died before saying)
                return
            if pid is not None:
                try:
                    # Not reaped before the parent says so: this is the container.
                    self._pidfd = os.pidfd_open(pid)
                except OSError:
                    self._pidfd = None
            self._pid = pid
            self._known = True
        finally:
            self._learning.release()

    def _signal(self, signum: int) -> None:
        if not self._known:
            self._learn(_REPLY_TIMEOUT)
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if not self._known:
            self._learn(0)
        if not self._known:
            # Still queued behind the template's start (snap hooks running):
            # the template goes, and with it the descriptors it was to hand on.
            self.template.kill()
            self._learn(0)
            if self._pid is None:
                _shutdown(self.fd)  # (forked in the instant before the kill, unreported: EOF makes it leave)
                return
        self._signal(signal.SIGKILL)

    def reap(self) -> int | None:
        code = None
        if not self._known:
            self._learn(_REPLY_TIMEOUT)
        if self._pid is not None:
            answered, code = self.template.reply(self.template.request(("reap", self._pid)), _REPLY_TIMEOUT)
            if not answered:
                code = None
        if self.output is not None:
            # What it printed before it died is forwarded before its calls fail (as LocalTransport.reap).
            self.output.drain()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None
        from . import _shm

        if self._pid is not None:
            _shm.sweep(os.getpid(), creator_pid=self._pid)
        return code

    def forget(self) -> None:
        if self.messages is not None:
            self.messages.close()


def _shutdown(fd: int) -> None:
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:  # (shuts the socket down for every copy)
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class TemplateBackend(LocalBackend):
    """The local backend with containers forked from a template (one per pool, remade if it dies)."""

    def __init__(self) -> None:
        super().__init__(_launch.ExecContext())
        self.template: Template | None = None
        self._old: list[Template] = []  # died; reaped at close (containers may still ask them)

    def start(self, index: int, target_blob: bytes, options: dict[str, Any]) -> LocalTransport:
        output_options = options.get("output")  # (the parent's: not sent to the template nor the container)
        options = {**options, "parent_pid": os.getpid(), "output": None}
        level = None
        if output_options is not None:
            level = _output.parent_log_level()
            if self._forwarder is None:
                self._forwarder = _output.Forwarder(options["pool_name"])
        with _local._starting:
            for _attempt in range(2):  # (a template found dead only when the request could not be sent: again)
                read_ends: tuple[int, ...] = ()
                write_ends: tuple[int, ...] = ()
                if self._forwarder is not None and output_options is not None:
                    # As for LocalBackend: three pipes, the read ends stay here, the write
                    # ends go to the template with the socket's end and are the child's after the fork.
                    read_ends, write_ends = self._forwarder.pipes()
                parent_conn, child_conn = self.context.Pipe(duplex=True)
                sentinel_r, sentinel_w = os.pipe()
                try:
                    template = self._template(target_blob, options, write_ends, level)
                    # (descriptors 1 and 2 too: a container writes to the parent's stdout and stderr of its
                    # start until it redirects them, or for good without forward_output)
                    request_id = template.request(
                        ("fork", index, options, level), [child_conn.fileno(), sentinel_w, 1, 2, *write_ends]
                    )
                except BaseException:
                    parent_conn.close()
                    os.close(sentinel_r)
                    for fd in read_ends:
                        os.close(fd)
                    raise
                finally:
                    child_conn.close()
                    os.close(sentinel_w)  # (the message in flight holds one; then only the container)
                    for fd in write_ends:
                        os.close(fd)  # (likewise: the container holds them, and its template while it loads)
                if not template.broken:
                    break
                parent_conn.close()
                os.close(sentinel_r)
                for fd in read_ends:
                    os.close(fd)
            else:
                raise OSError(f"lifepool could not reach a template process for pool {options['pool_name']!r}")
        output = None
        if self._forwarder is not None and output_options is not None:
            # (the pid comes later, from the template: a prefix showing it is made at the first line)
            prefix = (
                functools.partial(output_options.prefix, index)
                if output_options.uses_pid()
                else output_options.prefix(index, None)
            )
            output = _output.ContainerOutput(self._forwarder, read_ends, prefix, index)
        transport = TemplateTransport(template, request_id, sentinel_r, parent_conn, output)
        if output is not None and self._forwarder is not None:
            self._forwarder.add(output)
        return transport

    def _template(
        self, target_blob: bytes, options: dict[str, Any], output: tuple[int, ...], level: int | None
    ) -> Template:
        """The pool's template; a new one if there is none yet or it died.

        A new one prints and logs its load (the snap hooks) into *output*, the
        pipes of the container whose start made it (see ``_output.lend``).
        """
        template = self.template
        if template is None or not template.usable():
            if template is not None:
                logger.warning(
                    "lifepool pool %r: its template process (pid %s) is gone; starting a new one",
                    options["pool_name"],
                    template.pid,
                )
                self._old.append(template)
            template = self.template = Template(target_blob, _template_options(options, level), output)
        return template

    def close(self) -> None:
        for template in [*self._old, *([self.template] if self.template is not None else [])]:
            template.close()
        self._old.clear()
        self.template = None
        super().close()  # (the output forwarder: what the containers left in their pipes)


def _template_options(options: dict[str, Any], level: int | None) -> dict[str, Any]:
    environment = options.get("environment")
    if environment is not None and environment["env"] is not None:
        envs = environment["env"]
        # The module is imported once, in the template: only an env= shared by every container applies there.
        shared = envs[0] if all(env == envs[0] for env in envs) else None
        environment = {**environment, "env": None if shared is None else [shared]}
    return {**options, "environment": environment, "output_level": level}
