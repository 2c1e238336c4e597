"""DAN's learned-width small network vs AN's uniform-width one at matched FLOPs (issue 17).

Both are trained here, in one run, on digits (the embedded data; Fashion-MNIST is not run:
this branch's `data.py` has no `fashion-mnist` loader and there is no 28x28 Adjoined family
yet). AN: `adjoined_small` at width 0.5, the digits schedule (30 epochs). DAN
(`tradeoff.training.dan`, Nath et al., arXiv:2006.05624): 20 search epochs + 10 fine-tune epochs
(the same 30 weight epochs), FLOPs target = AN's small network, width choices
0.25/0.5/0.75/1.0. Reported on the TEST split (never used by either run): the small
network's accuracy with percentile-bootstrap 95% intervals (scipy.stats.bootstrap, 2,000
resamples) and the paired bootstrap interval of the difference, both networks' fvcore FLOPs,
the learned widths per layer, and the wall time of each training. One seed: with 360 test
images the intervals are wide; read the difference's interval before the point values.

Goals: DAN's small network at least as accurate as AN's (point estimate), its FLOPs within
+-5% of AN's, and learned widths that are not uniform. A miss is reported, not hidden.

`quick=True`: 100 train / 50 val / 50 test rows, one epoch each; nothing judged.
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
from tradeoff.training.dan import DANConfig, train_dan
from tradeoff.data import load_data
from tradeoff.flops import exit_costs
from tradeoff.training.loop import SMALL_CONFIG, train_model

NAME = "dan"
SEED = 0


def _subset(ds, counts):
    rows = np.concatenate([np.flatnonzero(ds.split == s)[:n] for s, n in counts.items()])
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])


def _correct(model, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool per exit: small network right, large network right (eval mode)."""
    model.eval()
    with torch.no_grad():
        small, large = model(torch.as_tensor(x))
    return (small.argmax(1).numpy() == y), (large.argmax(1).numpy() == y)


def _interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if values.std() == 0:
        return float(values.mean()), float(values.mean())
    res = bootstrap((values.astype(float),), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    full = load_data("digits", splits=("train", "val", "test"))
    if quick:
        full = _subset(full, {"train": 100, "val": 50, "test": 50})
    trainval = dataclasses.replace(full, x=full.x[full.split != "test"], y=full.y[full.split != "test"],
                                   split=full.split[full.split != "test"])
    test = full.split == "test"
    x_test, y_test = full.x[test], full.y[test]
    an_epochs, search_epochs, fine_epochs = (1, 1, 1) if quick else (SMALL_CONFIG.epochs, 20, 10)
    quiet = dict(progress=False, log=lambda line: None)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_model("adjoined_small", out=Path(tmp) / "an.pt", arch_kwargs={"width_fraction": 0.5},
                    config=dataclasses.replace(SMALL_CONFIG, epochs=an_epochs, seed=SEED), dataset=trainval, **quiet)
        an_seconds = time.perf_counter() - started
        started = time.perf_counter()
        dan = train_dan("dan_small", out=Path(tmp) / "dan.pt",
                        config=dataclasses.replace(SMALL_CONFIG, epochs=search_epochs, seed=SEED),
                        dan=DANConfig(finetune_epochs=fine_epochs, warmup_epochs=0 if quick else 2),
                        dataset=trainval, **quiet)
        dan_seconds = time.perf_counter() - started
        an_model = load_checkpoint(Path(tmp) / "an.pt").model
        dan_model = load_checkpoint(Path(tmp) / "dan.pt").model
    an_flops = float(exit_costs(an_model, (1, 8, 8)).flops[0])
    dan_flops = float(exit_costs(dan_model, (1, 8, 8)).flops[0])
    an_small, an_large = _correct(an_model, x_test, y_test)
    dan_small, dan_large = _correct(dan_model, x_test, y_test)
    an_acc, dan_acc = float(an_small.mean()), float(dan_small.mean())
    an_ci, dan_ci = _interval(an_small, SEED), _interval(dan_small, SEED + 1)
    diff_ci = _interval(dan_small.astype(float) - an_small.astype(float), SEED + 2)
    fractions = dan.width_fractions
    spread = max(fractions.values()) - min(fractions.values())
    judge = (lambda ok: None) if quick else bool
    shown_widths = ", ".join(f"{k} {v:.2f}" for k, v in fractions.items())
    n = int(test.sum())
    return [
        make_row(NAME, "small-network test accuracy, DAN vs AN at matched FLOPs", dan_acc, baseline=an_acc,
                 goal="DAN >= AN", passed=judge(dan_acc >= an_acc),
                 notes=f"digits test n={n}, seed {SEED}; 95% bootstrap CI DAN [{dan_ci[0]:.4f}, {dan_ci[1]:.4f}], "
                       f"AN [{an_ci[0]:.4f}, {an_ci[1]:.4f}], paired DAN-AN [{diff_ci[0]:+.4f}, {diff_ci[1]:+.4f}]; "
                       "Fashion-MNIST not run (no loader in this branch)"),
        make_row(NAME, "small-network FLOPs, DAN / AN", dan_flops, baseline=an_flops, goal="ratio within 0.95..1.05",
                 passed=judge(abs(dan_flops / an_flops - 1) <= 0.05),
                 notes=f"fvcore counts; DAN target {dan.flops_target:.0f}, repaired={dan.repaired}"),
        make_row(NAME, "learned width spread (max - min fraction)", spread, goal="> 0 (non-uniform widths)",
                 passed=judge(spread > 0), notes=f"DAN widths as fractions: {shown_widths}; AN: 0.50 everywhere"),
        make_row(NAME, "large-network test accuracy, DAN run vs AN run", float(dan_large.mean()),
                 baseline=float(an_large.mean()), notes="informational: the shared large network of each run"),
        make_row(NAME, "training seconds, DAN (search + fine-tune) vs AN", dan_seconds, baseline=an_seconds,
                 notes=f"search {dan.search_seconds:.1f} s + fine-tune {dan.finetune_seconds:.1f} s; "
                       f"{search_epochs}+{fine_epochs} vs {an_epochs} epochs, 1 thread, shared machine"),
    ]
