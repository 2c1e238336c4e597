"""The Fashion-MNIST model the benchmarks share: the real `tradeoff demo --data fashion-mnist`, run once.

`fashion_demo()` reuses `results/fashion/` when it holds a Fashion-MNIST demo (`model.pt`,
`cache.npz`, `thresholds.json` of a `scan_cnn` cached on fashion-mnist); otherwise it runs
the demo itself (`commands.demo.run_demo`, one thread, as `tradeoff demo` does) into
`results/bench/fashion-demo/` once and reuses that afterwards. A demo run here leaves a
record, `bench-demo.json`, beside it: the demo's own wall times (`DemoResult.seconds`:
train, cache, search, total; `train_loop` is the training loop alone), the images trained
on, and the load average when it started and ended (the machine is shared). A reused
`results/fashion/` made by `tradeoff demo` has no such record: its timings are then
unknown, and the rows that need them say so rather than guess.

`quick_fashion_cache()` is the smoke-test stand-in: a seeded untrained `scan_cnn` on the
first few hundred Fashion-MNIST val/test images (seconds, nothing judged), or None when the
Debian package `dataset-fashion-mnist` is not installed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

FASHION_DIR = Path("results/fashion")
WORK_DIR = Path("results/bench/fashion-demo")
RECORD_FILE = "bench-demo.json"
DATA = "fashion-mnist"
ARCH = "scan_cnn"
TRAIN_IMAGES = 60_000  # the Fashion-MNIST train file: the demo trains on all of it every epoch
WALL_GOAL_S = 300.0


@dataclass(frozen=True)
class FashionDemo:
    """A Fashion-MNIST demo run directory and what is known about how long it took.

    Attributes:
        dir: the run directory (model.pt, cache.npz, thresholds.json, ...).
        source: where it came from, in words.
        record: the bench's record of the run (timings, images, load averages), or None
            when the run was made elsewhere (a reused results/fashion without one).
    """

    dir: Path
    source: str
    record: dict | None

    @property
    def model(self) -> Path:
        return self.dir / "model.pt"

    @property
    def cache(self) -> Path:
        return self.dir / "cache.npz"

    @property
    def thresholds(self) -> Path:
        return self.dir / "thresholds.json"


@lru_cache(maxsize=1)
def fashion_available() -> bool:
    """Is Debian's dataset-fashion-mnist installed where `--data fashion-mnist` reads it?"""
    from tradeoff.data import load_data

    try:
        load_data(DATA, splits=("test",))
    except (ValueError, FileNotFoundError, OSError):
        return False
    return True


def _is_fashion_demo(directory: Path) -> bool:
    if not all((directory / n).is_file() for n in ("model.pt", "cache.npz", "thresholds.json")):
        return False
    try:
        with np.load(directory / "cache.npz", allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return False
    return meta.get("arch") == ARCH and str(meta.get("data", "")).startswith(DATA)


def _read_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None


def fashion_demo(*, log=lambda line: None) -> FashionDemo:
    """The Fashion-MNIST demo: results/fashion if it holds one, else ours (run here once, minutes).

    Raises:
        ValueError: the dataset is not installed (the demo's own one-line error).
    """
    if _is_fashion_demo(WORK_DIR) and _read_record(WORK_DIR) is not None:
        return FashionDemo(WORK_DIR, f"demo run by the bench earlier ({WORK_DIR})", _read_record(WORK_DIR))
    if _is_fashion_demo(FASHION_DIR):
        return FashionDemo(FASHION_DIR, f"reused {FASHION_DIR} (made by `tradeoff demo --data fashion-mnist`)",
                           _read_record(FASHION_DIR))
    return FashionDemo(WORK_DIR, f"demo run by the bench in this run ({WORK_DIR})", _run_demo(WORK_DIR, log))


def _run_demo(out: Path, log) -> dict:
    """Run the real demo into `out` on one thread; write and return its record."""
    import torch

    from tradeoff.commands.demo import run_demo
    from tradeoff.fileio import write_json_atomic
    from tradeoff.training.loop import default_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what `tradeoff demo` does (commands/demo.py)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        result = run_demo(out, data=DATA, progress=False, log=log)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - started
    epochs = default_config(DATA).epochs
    record = {
        "wall_seconds": wall,
        "seconds": {k: float(v) for k, v in result.seconds.items()},
        "epochs": epochs,
        "train_images": TRAIN_IMAGES * epochs,
        "images_per_second": TRAIN_IMAGES * epochs / result.seconds["train_loop"],
        "exit_test_accuracy": list(result.exit_test_accuracy),
        "threads": 1,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "cpus": os.cpu_count(),
    }
    write_json_atomic(out / RECORD_FILE, record)
    return record


def quick_fashion_model():
    """A seeded, untrained scan_cnn for 28x28 Fashion-MNIST (smoke runs), in eval mode."""
    import torch

    from tradeoff.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model(ARCH, num_classes=10).eval()


def quick_fashion_cache(samples: int = 300):
    """A smoke-test cache: seeded untrained scan_cnn on the first `samples` val and test images.

    Returns None when the dataset is not installed.
    """
    if not fashion_available():
        return None
    from dataclasses import replace

    from tradeoff.cache.build import build_cache
    from tradeoff.data import load_data
    from tradeoff.flops import exit_costs

    full = load_data(DATA, splits=("val", "test"))
    keep = np.concatenate([np.flatnonzero(full.split == s)[:samples] for s in ("val", "test")])
    data = replace(full, x=full.x[keep], y=full.y[keep], split=full.split[keep])
    model = quick_fashion_model()
    costs = exit_costs(model, data.input_shape)
    return build_cache(model, data, costs, progress=False, meta={"arch": ARCH, "data": DATA})


def fashion_cache(quick: bool):
    """(cache, description) of the Fashion-MNIST cache the comparisons run on, or None.

    quick: the smoke-test stand-in (`quick_fashion_cache`; None without the dataset).
    Otherwise the demo's cache (`fashion_demo()`, which may run the demo first).
    """
    if quick:
        cache = quick_fashion_cache()
        return None if cache is None else (cache, "Fashion-MNIST, untrained scan_cnn (quick)")
    from tradeoff.cache.format import load_cache

    demo = fashion_demo()
    return load_cache(demo.cache), f"Fashion-MNIST scan_cnn demo cache ({demo.dir})"


def skipped_row(benchmark: str, what: str) -> dict:
    """The row a quick run gives when the dataset is missing: says so, judges nothing."""
    from benchmarks import make_row

    return make_row(benchmark, f"{what}, Fashion-MNIST", 0.0, goal="report",
                    notes="skipped: Debian package dataset-fashion-mnist is not installed (make fashion-data)")
