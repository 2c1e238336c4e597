"""DAN's learned-width small network vs AN's uniform-width one at matched FLOPs (issue 17).

Both are trained here, in one run, on each of two datasets (`SETTINGS`), with one shared
procedure. AN: `adjoined_small` at width 0.5. DAN (`tradeoff.training.dan`, Nath et al.,
arXiv:2006.05624): search epochs + fine-tune epochs = AN's epochs (the same number of weight
updates), FLOPs target = AN's small network, width choices 0.25/0.5/0.75/1.0.

* digits (embedded, 8x8): the digits schedule (`SMALL_CONFIG`), AN 30 epochs, DAN 20 search
  (2 warm-up) + 10 fine-tune; all 1,078 train / 359 val / 360 test rows.
* Fashion-MNIST (Debian's `dataset-fashion-mnist`, 1x28x28): the MNIST schedule
  (`MNIST_CONFIG`: Adam, one-cycle, batch 256), AN 5 epochs, DAN 3 search (1 warm-up) + 2
  fine-tune, on a seeded random SUBSAMPLE of 6,000 of the 55,000 train rows and 1,000 of the
  5,000 val rows (to fit the benchmark's time on a shared 2-core machine: these are short
  trainings, not the networks' best accuracy); all 5,000 test rows.

Reported per dataset on the TEST split (never used by either run): the small network's
accuracy with percentile-bootstrap 95% intervals (scipy.stats.bootstrap, 2,000 resamples) and
the paired bootstrap interval of the difference, both networks' fvcore FLOPs, the learned
widths per layer, and the wall time of each training. One seed: read the difference's
interval before the point values.

Measured (this machine, 1 thread shared, ~500 s for both datasets): digits DAN 99.17% vs AN
98.33% (paired [+0.00, +1.94] pp), DAN at 0.97x AN's FLOPs; Fashion-MNIST DAN 74.90% vs AN
74.82% (paired [-0.68, +0.80] pp: a tie), DAN at 0.95x AN's FLOPs, widths 0.25..1.00. The
Fashion-MNIST networks are far from converged (120 weight updates; the large networks reach
77-81%), so that tie says nothing about long trainings.

Goals: DAN's small network at least as accurate as AN's (point estimate), its FLOPs within
+-5% of AN's, and learned widths that are not uniform. A miss is reported, not hidden.

`quick=True`: 100 train / 50 val / 50 test rows of each dataset, one epoch each; nothing judged.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import make_row
from tradeoff.checkpoint import load_checkpoint
from tradeoff.data import load_data
from tradeoff.flops import exit_costs
from tradeoff.training.dan import DANConfig, train_dan
from tradeoff.training.loop import SMALL_CONFIG, train_model
from tradeoff.training.schedules import MNIST_CONFIG, TrainConfig

NAME = "dan"
SEED = 0
QUICK_ROWS = {"train": 100, "val": 50, "test": 50}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One dataset's comparison: its schedule, epochs and (optional) subsample."""

    data: str
    config: TrainConfig
    an_epochs: int
    search_epochs: int
    warmup_epochs: int
    rows: dict | None = None  # rows per split kept (seeded random subsample); None = all

    def __post_init__(self) -> None:
        assert self.search_epochs + self.finetune_epochs == self.an_epochs and self.finetune_epochs >= 1

    @property
    def finetune_epochs(self) -> int:
        return self.an_epochs - self.search_epochs


SETTINGS = (
    Setting("digits", SMALL_CONFIG, an_epochs=30, search_epochs=20, warmup_epochs=2),
    Setting("fashion-mnist", MNIST_CONFIG, an_epochs=5, search_epochs=3, warmup_epochs=1,
            rows={"train": 6000, "val": 1000}),
)


def _subset(ds, counts: dict, seed: int):
    """A seeded random subsample (kept in file order) of the splits named in `counts`; others whole."""
    rng = np.random.default_rng(seed)
    keep = []
    for s in np.unique(ds.split):
        rows = np.flatnonzero(ds.split == s)
        n = counts.get(str(s), len(rows))
        keep.append(np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False)))
    rows = np.sort(np.concatenate(keep))
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])


def _correct(model, x, y, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool per exit: small network right, large network right (eval mode, in batches)."""
    model.eval()
    small, large = [], []
    with torch.no_grad():
        for start in range(0, len(y), batch):
            s, l = model(torch.as_tensor(x[start:start + batch]))
            small.append(s.argmax(1).numpy())
            large.append(l.argmax(1).numpy())
    return np.concatenate(small) == y, np.concatenate(large) == y


def _interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if values.std() == 0:
        return float(values.mean()), float(values.mean())
    res = bootstrap((values.astype(float),), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(setting: Setting, quick: bool = False) -> list[dict]:
    """Train AN and DAN on one dataset and return its five rows (metric names prefixed by the data)."""
    full = load_data(setting.data, splits=("train", "val", "test"))
    counts = QUICK_ROWS if quick else setting.rows
    if counts:
        full = _subset(full, counts, SEED)
    trainval = dataclasses.replace(full, x=full.x[full.split != "test"], y=full.y[full.split != "test"],
                                   split=full.split[full.split != "test"])
    test = full.split == "test"
    x_test, y_test = full.x[test], full.y[test]
    an_epochs, search_epochs, fine_epochs = ((1, 1, 1) if quick else
                                             (setting.an_epochs, setting.search_epochs, setting.finetune_epochs))
    config = dataclasses.replace(setting.config, seed=SEED)
    quiet = dict(progress=False, log=lambda line: None)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_model("adjoined_small", out=Path(tmp) / "an.pt", arch_kwargs={"width_fraction": 0.5},
                    config=dataclasses.replace(config, epochs=an_epochs), dataset=trainval, **quiet)
        an_seconds = time.perf_counter() - started
        started = time.perf_counter()
        dan = train_dan("dan_small", out=Path(tmp) / "dan.pt", config=dataclasses.replace(config, epochs=search_epochs),
                        dan=DANConfig(finetune_epochs=fine_epochs, warmup_epochs=0 if quick else setting.warmup_epochs),
                        dataset=trainval, **quiet)
        dan_seconds = time.perf_counter() - started
        an_model = load_checkpoint(Path(tmp) / "an.pt").model
        dan_model = load_checkpoint(Path(tmp) / "dan.pt").model
    shape = tuple(full.input_shape)
    an_flops = float(exit_costs(an_model, shape).flops[0])
    dan_flops = float(exit_costs(dan_model, shape).flops[0])
    an_small, an_large = _correct(an_model, x_test, y_test)
    dan_small, dan_large = _correct(dan_model, x_test, y_test)
    an_acc, dan_acc = float(an_small.mean()), float(dan_small.mean())
    an_ci, dan_ci = _interval(an_small, SEED), _interval(dan_small, SEED + 1)
    diff_ci = _interval(dan_small.astype(float) - an_small.astype(float), SEED + 2)
    fractions = dan.width_fractions
    spread = max(fractions.values()) - min(fractions.values())
    judge = (lambda ok: None) if quick else bool
    shown_widths = ", ".join(f"{k} {v:.2f}" for k, v in fractions.items())
    n_train = int((trainval.split == "train").sum())
    data = setting.data
    sample = "" if quick or not setting.rows else " (seeded random subsample)"
    return [
        make_row(NAME, f"{data}: small-network test accuracy, DAN vs AN at matched FLOPs", dan_acc, baseline=an_acc,
                 goal="DAN >= AN", passed=judge(dan_acc >= an_acc),
                 notes=f"{data} {'x'.join(map(str, shape))}, {n_train} train rows{sample}, test n={len(y_test)}, "
                       f"seed {SEED}; 95% bootstrap CI DAN [{dan_ci[0]:.4f}, {dan_ci[1]:.4f}], "
                       f"AN [{an_ci[0]:.4f}, {an_ci[1]:.4f}], paired DAN-AN [{diff_ci[0]:+.4f}, {diff_ci[1]:+.4f}]"),
        make_row(NAME, f"{data}: small-network FLOPs, DAN / AN", dan_flops, baseline=an_flops,
                 goal="ratio within 0.95..1.05", passed=judge(abs(dan_flops / an_flops - 1) <= 0.05),
                 notes=f"fvcore counts on {'x'.join(map(str, shape))}; DAN target {dan.flops_target:.0f}, "
                       f"repaired={dan.repaired}"),
        make_row(NAME, f"{data}: learned width spread (max - min fraction)", spread, goal="> 0 (non-uniform widths)",
                 passed=judge(spread > 0), notes=f"DAN widths as fractions: {shown_widths}; AN: 0.50 everywhere"),
        make_row(NAME, f"{data}: large-network test accuracy, DAN run vs AN run", float(dan_large.mean()),
                 baseline=float(an_large.mean()), notes="informational: the shared large network of each run"),
        make_row(NAME, f"{data}: training seconds, DAN (search + fine-tune) vs AN", dan_seconds, baseline=an_seconds,
                 notes=f"search {dan.search_seconds:.1f} s + fine-tune {dan.finetune_seconds:.1f} s; "
                       f"{search_epochs}+{fine_epochs} vs {an_epochs} epochs, batch {config.batch_size}, "
                       "1 thread, shared machine"),
    ]


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    return [row for setting in SETTINGS for row in compare(setting, quick)]
