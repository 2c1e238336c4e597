"""Regenerate the golden search outputs (issue 9): `python tests/data/golden/make_golden.py`.

The goldens were written by the code of commit f9f4cc5, before the restructuring; the test
`tests/test_golden.py` checks that today's `tradeoff search` still writes the very same bytes
(pareto.csv and thresholds.json) from the committed cache. Rerun this only when a change of
output is intended, and say so in the commit message.

The cache itself is committed (cache.npz): it is the fixed input, so its sha256 (recorded in
thresholds.json) does not depend on the creation time `synthetic_cache` stamps into its meta.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = "cache.npz"

# name -> extra `tradeoff search` options; run with the working directory holding cache.npz.
RUNS = {
    "acc": ["--target-acc", "0.7", "--pop", "24", "--gens", "10", "--seed", "5"],
    "drop": ["--max-drop", "2", "--confidence", "margin", "--ensemble", "--calibrate",
             "--pop", "20", "--gens", "8", "--seed", "1"],
    "budget": ["--budget-flops", "4.5e8", "--confidence", "entropy", "--method", "random",
               "--restarts", "2", "--pop", "16", "--gens", "6", "--seed", "2"],
}
COMPARED = ("pareto.csv", "thresholds.json")


def make_cache(path: Path) -> None:
    from tradeoff.cache.format import write_cache
    from tradeoff.cache.synthetic import synthetic_cache

    write_cache(path, synthetic_cache(num_samples=1200, num_classes=10, seed=3))


def run_all(workdir: Path) -> dict[str, dict[str, bytes]]:
    """Run every search in `workdir` (which must hold cache.npz); name -> file -> bytes."""
    from tradeoff.commands import main

    out = {}
    old = Path.cwd()
    os.chdir(workdir)
    try:
        for name, extra in RUNS.items():
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                code = main(["search", "--cache", CACHE, "--out", name, "--no-plots", *extra])
            if code != 0:
                raise RuntimeError(f"golden run {name} exited {code}")
            out[name] = {f: (workdir / name / f).read_bytes() for f in COMPARED}
    finally:
        os.chdir(old)
    return out


def main() -> int:
    if not (HERE / CACHE).exists() or "--new-cache" in sys.argv:
        make_cache(HERE / CACHE)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(HERE / CACHE, Path(tmp) / CACHE)
        for name, files in run_all(Path(tmp)).items():
            (HERE / name).mkdir(exist_ok=True)
            for f, data in files.items():
                (HERE / name / f).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
