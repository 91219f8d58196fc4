"""Durable file operations: atomic replacement, crash leftovers, and the one advisory lock.

A rename is the only operation POSIX makes atomic, so every file the package commits (a map's
manifest, a checkpoint, an ONNX graph, a TensorRT engine, a result file) is written to a temporary
beside it, fsynced, and renamed over the old one; a reader sees the old or the new content, never a
mix, and a kill leaves at most a temporary that `remove_stale_temporaries` recognises by its pid.

Every committed file gets the mode `FILE_MODE` (0o644), whatever the umask or the temporary's own
mode: a map, checkpoint or engine cache is shared between users and processes (the node runs as
another user than the one who built its map), and one of them unreadable to the others breaks them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TMP_MARK = ".tmp-"
LOCK_NAME = ".lock"
FILE_MODE = 0o644


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (a rename or a new file) so it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(f: IO) -> None:
    """Push what was written to the open file `f` through Python's buffer and the page cache to the
    disk, so that a commit made after it never points at data a crash can lose."""
    f.flush()
    os.fsync(f.fileno())


def temp_name(path: Path) -> Path:
    """A sibling name unique to this process; stale ones are recognised by the pid they carry."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Replace `path` with what `write` puts at the temporary path it is given, so that a reader sees
    the old or the new content, never a mix. A path rather than a handle because savers such as
    `safetensors.torch.save_file` and `torch.save` open the file themselves."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            sync_file(f)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, payload: Any, **dumps_options: Any) -> None:
    """`payload` as JSON (`json.dumps` with `dumps_options`) and a final newline."""
    atomic_write_text(path, json.dumps(payload, **dumps_options) + "\n")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE), so replacing
    a map never passes through a moment without one; the standard library has no binding for it.
    Returns False where the system or file system does not support it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path, prefix: str) -> None:
    """Delete temporaries left by writers that were killed; those of live writers are kept."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if not entry.name.startswith(prefix) or TMP_MARK not in entry.name:
            continue
        pid_part = entry.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_part.isdigit() and _pid_alive(int(pid_part)) and int(pid_part) != os.getpid():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(directory: Path, name: str = LOCK_NAME, what: str = "map") -> Iterator[None]:
    """Serialise the writers of what `directory` holds across processes, on the lock file `name` in
    it (readers never take it); `what` names the directory in the refusal of a read-only one.

    flock, not a lock file that exists or not: the kernel drops it when its holder dies, so a killed
    writer never leaves a lock behind."""
    try:
        fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise PermissionError(f"{what} {directory} is read-only: cannot write to it") from exc
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
