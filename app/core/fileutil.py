"""Whole writes: a crash, a kill or a full disk never leaves a half-written file behind.

Every file the app writes goes through :func:`atomic_path`: the data go to a private temporary file in
the destination folder, which is renamed onto the destination only once complete. Failures become one
:class:`~app.core.errors.OutputError` naming the file and the reason (full disk, no permission, a folder
in the way). Finished files get the permissions a new file gets from the user's umask (or keep those of
the file they replace), so colleagues on a shared server can read results; temporaries stay private.

Temporaries are named ``.<name>.<host>-<pid>.<random>.tmp``; those left by a process that was killed are
removed by :func:`clean_stale_temporaries`, which every job calls on its output folders when it starts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from app.core.errors import OutputError

_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[^.]+\.tmp$")
#: Temporaries of another machine (a shared folder) are only removed once this old: it may still be writing.
FOREIGN_TEMP_AGE_S = 24 * 3600.0
_umask_lock = threading.Lock()


# ------------------------------------------------------------------------------------------
# Messages for operating-system errors
# ------------------------------------------------------------------------------------------
def describe_os_error(exc: OSError, path: Optional[str | os.PathLike] = None, action: str = "write") -> str:
    """One sentence for an ``OSError``: what could not be done to which file, and why, in plain words."""
    target = path if path is not None else (exc.filename or "the file")
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        reason = "the disk is full (free some space or choose another output folder)"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied (choose a folder you can write to)" if action == "write" else "permission denied"
    elif code == errno.EROFS:
        reason = "the disk or folder is read-only (choose another output folder)"
    elif code == errno.EISDIR:
        reason = "a folder of that name is in the way (give a file name)"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        reason = "a file of that name is in the way where a folder is needed"
    elif code == errno.ENOENT:
        reason = "the folder does not exist"
    elif code == errno.ENAMETOOLONG:
        reason = "the file name is too long"
    else:
        reason = exc.strerror or str(exc)
    return f"Cannot {action} {target}: {reason}."


def _output_error(exc: OSError, path: Path, action: str = "write") -> OutputError:
    return OutputError(describe_os_error(exc, path, action), errno_=exc.errno, filename=str(path))


def ensure_folder(path: str | os.PathLike, what: str = "output folder", probe: bool = True) -> Path:
    """Create ``path`` (and parents) if needed and (``probe``) check that files can be written in it.

    Raises
    ------
    OutputError
        A file is in the way, the folder cannot be created, or nothing can be written in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"The {what} {path} is a file, not a folder.", errno_=errno.ENOTDIR, filename=str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(exc, path, f"create the {what}") from None
    if not probe:
        return path
    try:  # a read-only or forbidden folder is said now, not after minutes of work
        fd, probe_name = tempfile.mkstemp(prefix=f".cellpol-probe.{_HOST_TAG}-{os.getpid()}.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe_name)
    except OSError as exc:
        raise _output_error(exc, path, f"write in the {what}") from None
    return path


# ------------------------------------------------------------------------------------------
# Permissions
# ------------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777  # replacing a file keeps its permissions
    except OSError:
        return 0o666 & ~current_umask()


# ------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` when the body succeeds.

    The previous file (if any) stays intact when the body raises. ``OSError`` from the body or the
    commit (full disk, no permission, a folder in the way) becomes one :class:`OutputError`.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: a folder of that name is in the way (give a file name).",
                          errno_=errno.EISDIR, filename=str(path))
    ensure_folder(path.parent, "folder", probe=False)  # the temporary itself is the probe
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST_TAG}-{os.getpid()}.", suffix=".tmp",
                                        dir=path.parent)
    except OSError as exc:
        raise _output_error(exc, path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, _final_mode(path))
            os.replace(tmp, path)
        except OutputError:
            raise
        except OSError as exc:
            raise _output_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths and tuples show up in provenance dictionaries.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------
# Stray temporaries
# ------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def is_stale_temporary(path: Path, now: Optional[float] = None) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_path` whose writer is gone.

    On this machine: its process no longer runs. From another machine (a shared folder): older than
    :data:`FOREIGN_TEMP_AGE_S`.
    """
    match = _TEMP_PATTERN.match(path.name)
    if match is None:
        return False
    if match["host"] == _HOST_TAG:
        return not _pid_alive(int(match["pid"]))
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age > FOREIGN_TEMP_AGE_S


def _remove_stale_temporaries(folder: Path) -> list[Path]:
    removed = []
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        if is_stale_temporary(entry):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def clean_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder`` (and below, if ``recursive``).

    Jobs call this when they start on an output folder. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = _remove_stale_temporaries(folder)
    if recursive:
        for sub in folder.rglob("*"):
            if sub.is_dir():
                removed += _remove_stale_temporaries(sub)
    return removed


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (model weights are checked with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
