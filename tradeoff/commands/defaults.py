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


def default_cache_path(ckpt: str | os.PathLike, data_name: str) -> Path:
    """results/cache/<checkpoint stem>-<data name>.npz, e.g. results/cache/model-digits.npz."""
    return DEFAULT_CACHE_DIR / f"{Path(ckpt).stem}-{data_name}.npz"


def default_run_dir(cache_path: str | os.PathLike, pick_label: str) -> Path:
    """results/<cache-stem>-<pick label>, e.g. results/model-digits-acc0.78."""
    return DEFAULT_RESULTS_DIR / f"{Path(cache_path).stem}-{pick_label}"


def newest_cache(directory: str | os.PathLike = DEFAULT_CACHE_DIR) -> tuple[Path, int]:
    """The newest `.npz` under `directory` (by mtime, ties by name) and how many there are.

    Raises:
        FileNotFoundError: if there is none, saying to run `tradeoff cache` first.
    """
    directory = Path(directory)
    # Hidden names are temporaries; `.shard-R-of-W.npz` are the blocks of a torchrun run that was
    # killed before its merge (tradeoff.cache.shard): neither is a cache.
    files = sorted(
        p for p in directory.glob("*.npz")
        if p.is_file() and not p.name.startswith(".") and not re.search(r"\.shard-\d+-of-\d+\.npz$", p.name)
    ) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no cache given and none found under {directory}/; run `tradeoff cache --ckpt MODEL` first "
            "(or `tradeoff import`), or pass --cache FILE"
        )
    newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return newest, len(files)
