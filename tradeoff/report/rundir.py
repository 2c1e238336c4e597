"""A run directory on disk: writing it whole, locking it, reading it back.

A run (`thresholds.json`, `pareto.csv`, `summary.json`, plus the plots) is written into a
temporary sibling directory and swapped into place under an exclusive `fcntl.flock` on the
parent folder, so a reader holding the shared lock sees the old complete run or the new
complete one, never a mix (`write_run`, `read_run`). The documents themselves are made in
`report.documents`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tradeoff.fileio import ANY, ensure_unchanged, pid_alive, sibling_tempdir, write_json_atomic, write_text_atomic
from tradeoff.report.documents import pareto_csv, summary_document, thresholds_document

THRESHOLDS_FILE = "thresholds.json"
PARETO_FILE = "pareto.csv"
SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------- run directory
@contextlib.contextmanager
def run_lock(out: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """Hold `fcntl.flock` on the folder that holds `out`: exclusive to replace a run, shared to read one.

    The lock is the parent directory itself, not a `<out>.lock` file: a lock file can never
    be removed safely (a waiter would hold a lock on the unlinked file while a newcomer
    locks a new one), so every run used to leave an empty one behind. The cost is that
    runs in one folder replace one at a time, which takes milliseconds (only the swap is
    locked). Reading never creates anything; a missing folder is not locked.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not shared:
        parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(parent, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_run(
    out: str | os.PathLike,
    result,
    *,
    extra: Sequence[Callable[[Path], None]] = (),
    expect=ANY,
) -> Path:
    """Write a whole run directory, replacing any previous run at `out` as one step.

    The files (`thresholds.json`, `pareto.csv`, `summary.json`, then whatever each
    callable in `extra` writes, e.g. the plots) go into a temporary sibling directory;
    then, holding the exclusive lock on `<out>.lock`, it is swapped with an existing
    `out` in one atomic exchange (Linux), or else the old `out` is renamed aside and the
    new directory renamed to `out`; the old run is then removed. If anything fails
    before the swap, the temporary directory is removed and `out` is untouched.

    Args:
        expect: `tradeoff.fileio.output_stamp(out)` from when the search started: if another
            process replaced `out` since, this run is not swapped in (FileExistsError) - the
            later of two concurrent writers fails instead of both reporting success.

    Returns:
        The run directory `out`.

    Raises:
        PermissionError / OSError: with the path, if the directory cannot be written.
        FileExistsError: `out` changed since `expect`.
    """
    out = Path(out)
    result = with_cache_relative_to(result, out)
    tmp = sibling_tempdir(out, f"tmp-{os.getpid()}")
    parent = tmp.parent
    try:
        write_json_atomic(tmp / THRESHOLDS_FILE, thresholds_document(result))
        write_text_atomic(tmp / PARETO_FILE, pareto_csv(result))
        write_json_atomic(tmp / SUMMARY_FILE, summary_document(result))
        for write in extra:
            write(tmp)
        os.chmod(tmp, 0o755)
        with run_lock(out):
            ensure_unchanged(out, expect)
            _remove_stale(parent, out.name)
            if out.is_dir() and _exchange(tmp, out):
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the old run
            else:
                old = None
                if out.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=parent))
                    os.replace(out, old / "run")
                os.replace(tmp, out)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def with_cache_relative_to(result, run_dir: str | os.PathLike):
    """`result` with its cache path relative to `run_dir`, as `thresholds.json` and `summary.json`
    record it: readers resolve it against the run directory (`resolve_recorded_cache`), from
    whatever folder they run in. (Paths relative to the folder the search ran in, as before,
    could not be found from anywhere else.)"""
    import dataclasses

    if not result.cache_path:
        return result
    relative = os.path.relpath(Path(result.cache_path).resolve(), Path(run_dir).resolve())
    return dataclasses.replace(result, cache_path=Path(relative).as_posix())


def resolve_recorded_cache(run_dir: str | os.PathLike, recorded: str | None) -> Path | None:
    """The cache a run recorded: relative to the run directory (this tool's runs), else as
    written (absolute, or runs written before the cache path was made relative)."""
    if not recorded:
        return None
    beside = Path(os.path.normpath(Path(run_dir) / recorded))
    return beside if Path(recorded).is_absolute() or beside.exists() else Path(recorded)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    With it, `out` never stops existing while a run replaces it, so even a reader that
    does not take the lock sees the old run or the new one. Returns False where the call
    is unavailable (other systems, old kernels or file systems without support); the
    caller then renames the old run aside first, which leaves a window of microseconds
    in which `out` is absent (never a mix).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary directories left by runs that were killed (their pid is gone).

    Called under the exclusive lock; a live run's temporary directory is never touched.
    """
    for kind in ("tmp", "old"):
        for path in parent.glob(f".{name}.{kind}-*-*"):
            pid_text = path.name[len(f".{name}.{kind}-") :].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                shutil.rmtree(path, ignore_errors=True)


def read_run(run_dir: str | os.PathLike, *, lock: bool = True) -> tuple[dict, dict, str]:
    """Read and check the three files of a run directory.

    Args:
        run_dir: a directory written by `write_run`.
        lock: hold the shared lock while reading (pass False when the caller already
            holds the exclusive one: flock would deadlock on a second descriptor).

    Returns:
        (thresholds document, summary document, pareto.csv text).

    Raises:
        FileNotFoundError: if the directory or one of the files is missing.
        ValueError: if a file is not valid JSON/CSV of this tool.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    with run_lock(run_dir, shared=True) if lock else contextlib.nullcontext():
        texts = {}
        for name in (THRESHOLDS_FILE, SUMMARY_FILE, PARETO_FILE):
            path = run_dir / name
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{path} is missing; rerun `tradeoff search --out {run_dir}` to rewrite the run"
                ) from None
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text; rerun `tradeoff search --out {run_dir}`") from None
    docs = {}
    for name in (THRESHOLDS_FILE, SUMMARY_FILE):
        try:
            doc = json.loads(texts[name])
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{run_dir / name} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun `tradeoff search --out {run_dir}`"
            ) from None
        if not isinstance(doc, dict):
            raise ValueError(f"{run_dir / name} must hold a JSON object; got {type(doc).__name__}")
        docs[name] = doc
    return docs[THRESHOLDS_FILE], docs[SUMMARY_FILE], texts[PARETO_FILE]


_OLD_PARETO_COLUMNS = {"flops": "val_flops", "mflops": "val_mflops", "speedup": "val_speedup"}


def parse_pareto_csv(text: str, *, source: str = PARETO_FILE) -> dict[str, list[float]]:
    """Columns of a `pareto.csv` as lists of floats, keyed by header.

    Raises:
        ValueError: naming `source`, if the header is missing, a row has the wrong
            number of cells, or a cell is not a number.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{source} is empty; rerun `tradeoff search`")
    # Runs written before the val columns were prefixed (issue 15) read the same way.
    headers = [_OLD_PARETO_COLUMNS.get(h, h) for h in lines[0].split(",")]
    for needed in ("val_accuracy", "test_accuracy", "val_flops", "test_flops"):
        if needed not in headers:
            raise ValueError(f"{source} has no {needed!r} column (header: {lines[0][:80]!r}); rerun `tradeoff search`")
    columns: dict[str, list[float]] = {h: [] for h in headers}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(headers):
            raise ValueError(f"{source} line {number} has {len(cells)} cells; the header has {len(headers)}")
        for h, cell in zip(headers, cells):
            try:
                columns[h].append(float("inf") if cell == "off" else float(cell))
            except ValueError:
                raise ValueError(f"{source} line {number}: {h} = {cell!r} is not a number") from None
    return columns
