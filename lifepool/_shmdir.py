"""The segment files in the shared-memory directory: their names, making and removing them.

A segment is a file of its own in :data:`SHM_DIR` (``/dev/shm``), named
``lifepool-<owner pid>-<creator pid>-<16 hex digits>``: the owner is the
pool's parent (:func:`set_owner`), the creator the process that wrote it. The
names are what cleanup goes by: :func:`sweep` removes what one pool (or one
process of it) left, :func:`sweep_orphans` what pools whose parent no longer
runs left. What goes into segments and when they are unlinked is the message
format's business (:mod:`lifepool._shm`).

* A segment is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600,
  written with ``write()`` (``ENOSPC`` is an error, not a ``SIGBUS``) and
  closed, keeping no mapping. Nothing is registered with multiprocessing's
  resource tracker.
* :data:`SHM_DIR` lives here only, and every reader reads it here at call
  time: it is assigned (None turns shared memory off) by a container whose
  pool's parent is on another machine (``_worker``, for the Ray backend) and
  by tests.
"""

from __future__ import annotations

import os
import pickle
import sys

TYPE_CHECKING = False  # (not typing's: a container imports this module at start, and never typing)
if TYPE_CHECKING:
    import mmap

__all__ = ["OWNER_ENV", "PREFIX", "SHM_DIR", "owner", "set_owner", "sweep", "sweep_orphans"]

# Where segments live; None turns shared memory off (everything in-band).
SHM_DIR: str | None = "/dev/shm" if sys.platform.startswith("linux") and os.path.isdir("/dev/shm") else None

PREFIX = "lifepool-"  # + "<owner pid>-<creator pid>-<16 hex digits>"
OWNER_ENV = "LIFEPOOL_SHM_OWNER"  # the owner pid when set_owner() was not called

_MAX_RW = 0x7FFFF000  # Linux moves at most this much per read()/write()
_OPEN_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_OLD = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

_warned_fallback = False
_owner: int | None = None


# -- owner ------------------------------------------------------------------


def set_owner(pid: int | None) -> None:
    """Name the pool's parent *pid* in the segments this process creates (None: back to the default)."""
    global _owner
    _owner = None if pid is None else int(pid)


def owner() -> int:
    """The owner pid: set by :func:`set_owner`, else ``$LIFEPOOL_SHM_OWNER``, else this process."""
    if _owner is not None:
        return _owner
    env = os.environ.get(OWNER_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            pass
    return os.getpid()


# -- segments ----------------------------------------------------------------


def _path(name: str) -> str:
    if SHM_DIR is None:
        raise FileNotFoundError(f"shared memory segment {name!r}: no shared memory directory on this system")
    return os.path.join(SHM_DIR, name)


def _create_segment(data: memoryview) -> str | None:
    """Write *data* to a new 0600 segment and return its name; None when that fails."""
    global _warned_fallback
    directory = SHM_DIR
    if directory is None:
        return None
    name = f"{PREFIX}{owner()}-{os.getpid()}-{os.urandom(8).hex()}"
    try:
        _write_new(os.path.join(directory, name), data)
    except OSError as error:  # ENOSPC: /dev/shm is full (64 MB in a default Docker container)
        failure = error
    else:
        return name
    if not _warned_fallback:
        _warned_fallback = True
        import logging  # (here: a container that never warns does not pay for it)

        logging.getLogger("lifepool").warning(
            "lifepool: %d bytes travel in-band, no shared memory segment: %s", data.nbytes, failure
        )
    return None


def _write_new(path: str, data: memoryview) -> None:
    """Create the 0600 file *path* (it must not exist) holding *data*; on any failure none is left."""
    fd = os.open(path, _OPEN_NEW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            _write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def _write_all(fd: int, data: memoryview) -> None:
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    done, total = 0, data.nbytes
    while done < total:
        done += os.write(fd, data[done : done + _MAX_RW])


def _unlink(name: str) -> bool:
    try:
        os.unlink(_path(name))
    except (FileNotFoundError, PermissionError):
        return False
    return True


def _map(fd: int, size: int, *, writable: bool, private: bool = False) -> mmap.mmap:
    import mmap  # (here: a container that is sent no segment does not load it)

    actual = os.fstat(fd).st_size
    if actual < size:  # mapping past the end would SIGBUS on access
        raise pickle.UnpicklingError(f"shared memory segment has {actual} bytes, expected {size}")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE if private else mmap.MAP_SHARED, prot=prot)


# -- cleanup -----------------------------------------------------------------


def _segments() -> list[str]:
    if SHM_DIR is None:
        return []
    try:
        with os.scandir(SHM_DIR) as entries:
            return [entry.name for entry in entries if entry.name.startswith(PREFIX)]
    except OSError:
        return []


def sweep(owner_pid: int, creator_pid: int | None = None) -> int:
    """Unlink the segments left by the pool whose parent is *owner_pid*; returns how many.

    With *creator_pid*, only those that process created (a container that
    died): the segments other live containers have in flight stay.
    """
    prefix = f"{PREFIX}{int(owner_pid)}-"
    if creator_pid is not None:
        prefix += f"{int(creator_pid)}-"
    return sum(_unlink(name) for name in _segments() if name.startswith(prefix))


def sweep_orphans() -> int:
    """Unlink the segments whose owner process no longer runs (a parent killed with SIGKILL); returns how many.

    Only for a ``/dev/shm`` not shared with other pid namespaces: an owner
    there would look dead.
    """
    removed = 0
    alive: dict[int, bool] = {}
    for name in _segments():
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid not in alive:
            alive[pid] = _is_running(pid)
        if not alive[pid]:
            removed += _unlink(name)
    return removed


def _is_running(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
