"""Where commands read and write by default: the one home of every default path.

Library functions take explicit paths; only the commands fill them in from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_RESULTS_DIR = Path("results")
DEFAULT_CACHE_DIR = DEFAULT_RESULTS_DIR / "cache"
DEFAULT_DEMO_DIR = DEFAULT_RESULTS_DIR / "demo"
DEFAULT_FASHION_DIR = DEFAULT_RESULTS_DIR / "fashion"  # `tradeoff demo --data fashion-mnist`
RUN_CACHE_FILE = "cache.npz"  # the name a run directory (the demo's) gives its own cache


def default_cache_path(ckpt: str | os.PathLike, data_name: str) -> Path:
    """results/cache/<checkpoint stem>-<data name>.npz, e.g. results/cache/model-digits.npz."""
    return DEFAULT_CACHE_DIR / f"{Path(ckpt).stem}-{data_name}.npz"


def cache_name(cache_path: str | os.PathLike) -> str:
    """What a cache is called in default names: its stem, or its folder's name for a run
    directory's `cache.npz` (results/demo/cache.npz -> "demo")."""
    path = Path(cache_path)
    if path.name == RUN_CACHE_FILE and path.parent.name:
        return path.parent.name
    return path.stem


def default_run_dir(cache_path: str | os.PathLike, pick_label: str) -> Path:
    """results/<cache name>-<pick label>, e.g. results/model-digits-acc0.78 (results/demo-acc0.78
    for the demo's cache); results/<cache name>-<8 hex>-<pick label> when the plain name already
    holds a run searched on another cache file, so that two caches with the same stem never
    replace each other's runs (the hex digits come from the cache's absolute path: the same
    cache always gets the same name)."""
    import hashlib
    import json

    plain = DEFAULT_RESULTS_DIR / f"{cache_name(cache_path)}-{pick_label}"
    try:
        recorded = json.loads((plain / "thresholds.json").read_text(encoding="utf-8")).get("cache")
    except (OSError, ValueError, AttributeError):
        return plain  # no run there yet (or not one of ours: write_run refuses to replace a file)
    here = Path(cache_path).resolve()
    if not isinstance(recorded, str) or (plain / recorded).resolve() == here or Path(recorded).resolve() == here:
        return plain
    tag = hashlib.sha256(str(here).encode()).hexdigest()[:8]
    return DEFAULT_RESULTS_DIR / f"{cache_name(cache_path)}-{tag}-{pick_label}"


def newest_cache(directory: str | os.PathLike | None = None) -> tuple[Path, int]:
    """The newest cache (by mtime, ties by name) and how many there are to choose from.

    Looks under `directory` if given, else in results/cache/*.npz and in the run
    directories' caches results/*/cache.npz (where `make demo` keeps its own), so the
    commands after `make demo` find the demo's cache.

    Raises:
        FileNotFoundError: if there is none, saying to run `tradeoff cache` first.
    """
    if directory is None:
        candidates = [*_npz_files(DEFAULT_CACHE_DIR), *_run_caches(DEFAULT_RESULTS_DIR)]
        where = f"{DEFAULT_CACHE_DIR}/ or {DEFAULT_RESULTS_DIR}/*/{RUN_CACHE_FILE}"
    else:
        candidates, where = _npz_files(Path(directory)), f"{directory}/"
    files = sorted(set(candidates))
    if not files:
        raise FileNotFoundError(
            f"no cache given and none found under {where}; run `make demo` or `tradeoff cache --ckpt MODEL` first "
            "(or `tradeoff import`), or pass --cache FILE"
        )
    newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return newest, len(files)


def _npz_files(directory: Path) -> list[Path]:
    # Hidden names are temporaries; `.shard-R-of-W.npz` are the blocks of a torchrun run that was
    # killed before its merge (tradeoff.cache.shard): neither is a cache.
    if not directory.is_dir():
        return []
    return [
        p for p in directory.glob("*.npz")
        if p.is_file() and not p.name.startswith(".") and not re.search(r"\.shard-\d+-of-\d+\.npz$", p.name)
    ]


def _run_caches(results: Path) -> list[Path]:
    if not results.is_dir():
        return []
    return [p for p in results.glob(f"*/{RUN_CACHE_FILE}") if p.is_file() and not p.parent.name.startswith(".")]
