"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every file the tool writes goes through here: written to a temporary file in the
destination's directory, flushed to disk, then renamed over the destination
(`os.replace` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on clean exit it replaces `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    Missing parent directories are created.

    Raises:
        PermissionError / OSError: with the path, if the directory is not writable.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w'; got {mode!r}")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{_OWNER}-{os.getpid()}.", suffix=".tmp", dir=parent)
    except PermissionError as exc:
        raise PermissionError(f"cannot write to {parent}/: permission denied; choose another output path") from exc
    except OSError as exc:
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


# Temporary files are named `.<name>.<host>-<pid>.<random>.tmp`, so a later writer of the same
# file can tell the leftovers of a killed process (same host, pid gone) from live ones.
_OWNER = socket.gethostname().replace("/", "_") or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of `path` left beside it.

    Only files of this host whose writing process no longer exists are removed; a live
    writer's file, or one from another host sharing the directory, is never touched.

    Returns:
        The paths removed.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    prefix = _temp_prefix(path)
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for candidate in candidates:
        owner = candidate.name[len(prefix) : -len(".tmp")].rsplit(".", 1)[0]
        host, _, pid = owner.rpartition("-")
        if host == _OWNER and pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (unknown or foreign counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can ask about: leave its file
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a crash after it must not undo it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sibling_tempdir(out: str | os.PathLike, tag: str) -> Path:
    """A new hidden directory beside `out` (same file system, so it can be renamed onto it).

    Used to build a whole run directory aside and swap it in at once.

    Raises:
        ValueError: `out` is an existing file.
        PermissionError: the parent directory cannot be written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory path for the results")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}-", dir=parent))
    except OSError as exc:
        raise PermissionError(f"--out {out}: cannot write in {parent}/ ({exc.strerror or exc}); choose another --out") from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """JSON with sorted keys and a trailing newline, so equal objects give equal bytes."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files stay out of memory."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
