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


# What an output looked like when a writer started: (device, inode, mtime ns, size), or None
# when it did not exist. Every writer replaces a file by renaming a new one over it, so a
# second writer that finished meanwhile always changes the stamp.
OutputStamp = "tuple[int, int, int, int] | None"
ANY = object()  # `expect=ANY`: replace whatever is there (the default)


def output_stamp(path: str | os.PathLike) -> "tuple[int, int, int, int] | None":
    """The stamp of `path` now (None when it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def ensure_unchanged(path: str | os.PathLike, expect, *, flag: str = "--out") -> None:
    """Refuse to replace an output another process wrote after this one started.

    Two commands writing one output at once both used to report success while the
    last one won; with this, the later one fails, says why and leaves the other's file.

    Raises:
        FileExistsError: `path` changed since `expect` was taken (`output_stamp`).
    """
    if expect is ANY:
        return
    now = output_stamp(path)
    if now != expect:
        raise FileExistsError(
            f"{flag} {path} was written by another process while this one worked; it was left as that process "
            f"wrote it and this result was not saved - rerun with another {flag}"
        )


def check_writable(path: str | os.PathLike, *, flag: str = "--out") -> None:
    """Fail now, not after the work, when `path` cannot be created or replaced.

    Tries to create (and removes) a temporary file in the nearest existing folder of
    `path`'s parent; nothing is left behind, no folder is created.

    Raises:
        PermissionError: one line naming `flag`, the folder and the fix.
        ValueError: a parent of `path` is a file.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists():
        folder = folder.parent if folder != folder.parent else folder
        if folder == folder.parent and not folder.exists():
            break
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tradeoff-write-check-", dir=folder)
    except OSError as exc:
        raise PermissionError(
            f"{flag} {path}: cannot write in {folder}/ ({exc.strerror or exc}); choose another {flag}"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, expect=ANY) -> Iterator[IO]:
    """Open a temporary file beside `path`; on clean exit it replaces `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    Missing parent directories are created.

    Args:
        expect: the `output_stamp` of `path` when the writer started; if `path` changed
            since (another process wrote it), nothing is replaced (`ensure_unchanged`).

    Raises:
        PermissionError / OSError: with the path, if the directory is not writable.
        FileExistsError: `path` changed since `expect`.
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
        ensure_unchanged(path, expect)
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


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, expect=ANY) -> None:
    with atomic_open(path, "wb", expect=expect) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, expect=ANY) -> None:
    with atomic_open(path, "w", expect=expect) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj, *, expect=ANY) -> None:
    """JSON with sorted keys and a trailing newline, so equal objects give equal bytes."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", expect=expect)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files stay out of memory."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
