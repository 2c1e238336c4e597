"""Seconds, not FLOPs (issue 13): the latency cost model against the clock, and what it buys.

For each model - the digits demo (`scan_small`, `bench_runtime.digits_demo`) and the
Fashion-MNIST demo (`scan_cnn`, `benchmarks.fashion`) - on one thread, eager and compiled
(frozen TorchScript stages, `tradeoff run --compiled`):

1. Profile the device with the runner's own code (`runtime.profile.profile_latency`, what
   `tradeoff profile --batch-size 1 64` runs) on the model's test images.
2. Pick two points at the same target accuracy on val (the deepest exit's val accuracy
   minus 0.5 points): the FLOPs-chosen one (`run_search`, the default cost) and, per batch
   size B, the latency-chosen one (`run_search(cost="latency", latency_profile=...,
   batch_size=B)`).
3. At B = 1 and 64, time both points' `EarlyExitModel` passes over the same test images,
   interleaved and repeated (medians), on the convolution backend the profile chose for
   the early-exit runner at that B.

Rows, per model / path / B:
- predicted vs measured mean ms per sample of each point: the prediction is
  `policy.latency.expected_latency_ms(profile, exit fractions, batch_size=B)` with the
  exit fractions the run itself measured (as `tradeoff run --latency` prints). Goal:
  within +-10%. The notes give what FLOPs would predict (the original network's profiled
  ms x mean FLOPs / original FLOPs) for comparison, and, since the profile and the passes
  run minutes apart on a shared machine, the original network's time in the same
  interleaved passes against its profiled time (the load drift) and the ratio corrected
  by it (judged is the uncorrected one).
- the latency-chosen point's measured speed against the FLOPs-chosen one's (ratio =
  FLOPs-chosen ms / latency-chosen ms). Goal: >= 1, i.e. at least as fast, allowing 3%
  for timing noise on a shared machine. When both searches pick practically the same point
  (predicted ms within 0.5%) the row is not judged: the ratio is then the timing noise.

The test images: the first multiple of 64 up to 1,024 (digits: 320 of 360; Fashion-MNIST:
1,024 of 5,000), the same at both batch sizes, so every batch of 64 is full as the
cost model assumes. `quick=True`: seeded untrained models, 16 images, batch 1 and 4, nothing
judged.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import interleaved_medians, make_row, median
from benchmarks.fashion import DATA as FASHION, fashion_available, fashion_demo, quick_fashion_cache, \
    quick_fashion_model, skipped_row
from tradeoff.policy.latency import expected_latency_ms, latency_profile_from_document
from tradeoff.policy.rule import ExitRule
from tradeoff.runtime.early_exit import EarlyExitModel
from tradeoff.runtime.profile import profile_document, profile_latency
from tradeoff.runtime.timing import make_batches, mkldnn_enabled, run_early_exit
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick

NAME = "latency"
BATCH_SIZES = (1, 64)
TOLERANCE = 0.10  # predicted vs measured
NOISE = 0.03  # latency-chosen may be this much slower and still count as "at least as fast"
SAME_POINT = 0.005  # picks whose predicted ms differ by less than this are the same point (nothing to judge)
MAX_SAMPLES = 1_024
POINT_NAMES = {"latency": "latency-chosen", "flops": "FLOPs-chosen"}
FULL = dict(batch_sizes=BATCH_SIZES, profile_repeats=15, min_ms=1.0, timing_repeats=9, warmup=1, pop=100, gens=100,
            tune_backend=True)
QUICK = dict(batch_sizes=(1, 4), profile_repeats=3, min_ms=0.02, timing_repeats=1, warmup=0, pop=12, gens=5,
             tune_backend=False)


def _digits_case(quick: bool):
    """(label, model, cache, test x, source) of the digits demo model (quick: an untrained scan_small)."""
    from tradeoff.cache.build import build_cache
    from tradeoff.cache.format import load_cache
    from tradeoff.data import load_data
    from tradeoff.flops import exit_costs
    from tradeoff.models import create_model

    test = load_data("digits", splits=("test",))
    if quick:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model("scan_small", num_classes=10).eval()
        data = load_data("digits", splits=("val", "test"))
        cache = build_cache(model, data, exit_costs(model, data.input_shape), progress=False)
        return "digits", model, cache, test.x, "untrained scan_small (quick)"
    from benchmarks.bench_runtime import WORK_DIR, digits_demo

    loaded, _, source, cache_path = digits_demo(WORK_DIR)
    return "digits", loaded.model, load_cache(cache_path), test.x, f"digits demo ({source})"


def _fashion_case(quick: bool):
    """The same for the Fashion-MNIST demo model; None in a quick run without the dataset."""
    from tradeoff.cache.format import load_cache
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data

    if quick and not fashion_available():
        return None
    test = load_data(FASHION, splits=("test",))
    if quick:
        return "Fashion-MNIST", quick_fashion_model(), quick_fashion_cache(), test.x, "untrained scan_cnn (quick)"
    demo = fashion_demo()
    return "Fashion-MNIST", load_checkpoint(demo.model).model, load_cache(demo.cache), test.x, demo.source


def _profile(model, x: torch.Tensor, compiled: bool, cache, size: dict):
    """The device's LatencyProfile at BATCH_SIZES, measured as `tradeoff profile` does."""
    K = cache.num_exits
    runner = EarlyExitModel(model, ExitRule([None] * (K - 1)), compiled=compiled)
    batches = profile_latency(runner, x, batch_sizes=size["batch_sizes"], repeats=size["profile_repeats"],
                              min_ms=size["min_ms"], tune_backend=size["tune_backend"])
    doc = profile_document(batches, runner=runner, device=torch.device("cpu"), threads=torch.get_num_threads(),
                           compiled=compiled, repeats=size["profile_repeats"],
                           checkpoint_sha256=cache.meta.get("checkpoint_sha256"))
    return latency_profile_from_document(doc), {b["batch_size"]: b["mkldnn"] for b in batches}


def _fractions(runner: EarlyExitModel, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        _, exits = run_early_exit(runner, x, batch_size=batch_size)
    return np.bincount(exits, minlength=runner.num_exits) / exits.size


def _time_points(calls: dict, x: torch.Tensor, batch_size: int, backends: dict, size: dict) -> dict:
    """Median ms per sample of each callable's pass over x, interleaved; `backends`: name -> oneDNN on/off."""
    batches = make_batches(x, batch_size)
    n = x.shape[0]

    def one_pass(name):
        def fn():
            with mkldnn_enabled(backends[name]), torch.inference_mode():
                for b in batches:
                    calls[name](b)
        return fn

    times = interleaved_medians({name: one_pass(name) for name in calls},
                                repeats=size["timing_repeats"], warmup=size["warmup"])
    return {name: median(t) * 1e3 / n for name, t in times.items()}


def _case_rows(case, quick: bool) -> list[dict]:
    label, model, cache, x_all, source = case
    size = QUICK if quick else FULL
    n = min(MAX_SAMPLES, (x_all.shape[0] // 64) * 64) if not quick else 16
    x = torch.from_numpy(np.ascontiguousarray(x_all[:n]))
    val = cache.select("val")
    deepest = float(np.mean(val.logits[-1].argmax(-1) == val.labels))
    target = round(deepest - 0.005, 4)
    pick = Pick("target_acc", target)
    flops_pick = run_search(cache, pick=pick, pop=size["pop"], gens=size["gens"], bootstrap=100)
    mean_flops = lambda f: float(np.dot(f, cache.flops))  # noqa: E731
    baseline_flops = float(cache.meta.get("baseline_flops") or cache.flops[-1])
    rows = []
    for compiled in (False, True):
        path = "compiled" if compiled else "eager"
        profile, backend = _profile(model, x, compiled, cache, size)
        base = EarlyExitModel(model, ExitRule(flops_pick.chosen.thresholds), compiled=compiled)
        for B in size["batch_sizes"]:
            lat_pick = run_search(cache, pick=pick, pop=size["pop"], gens=size["gens"], bootstrap=100,
                                  latency_profile=profile, batch_size=B, cost="latency")
            runners = {"latency": base.with_rule(ExitRule(lat_pick.chosen.thresholds)), "flops": base}
            fractions = {name: _fractions(r, x, B) for name, r in runners.items()}
            calls = {**{name: r.forward for name, r in runners.items()}, "original": base.deepest}
            flags = {"latency": backend[B]["early_exit"], "flops": backend[B]["early_exit"], "original": backend[B]["original"]}
            measured = _time_points(calls, x, B, flags, size)
            # the machine's speed now against during the profile (shared machine): the original network's ms
            drift = measured["original"] / profile.original_per_sample_ms(B)
            where = (f"{source}; {path}, 1 thread, batch {B}, {n} test images, oneDNN "
                     f"{'on' if backend[B]['early_exit'] else 'off'}; median of {size['timing_repeats']} interleaved passes")
            for name, chosen in (("latency", lat_pick.chosen), ("flops", flops_pick.chosen)):
                predicted = float(expected_latency_ms(profile, fractions[name], batch_size=B))
                by_flops = profile.original_per_sample_ms(B) * mean_flops(fractions[name]) / baseline_flops
                ratio = measured[name] / predicted
                rows.append(make_row(
                    NAME, f"measured / predicted ms per sample, {POINT_NAMES[name]}, {label}, {path}, batch {B}",
                    measured[name], baseline=predicted, ratio=ratio, goal="within +-10%",
                    passed=None if quick else bool(abs(ratio - 1.0) <= TOLERANCE),
                    notes=(f"{where}; thresholds {_fmt(chosen.thresholds)} (target {target:.4f} on val, test acc "
                           f"{chosen.test.accuracy:.4f}); exits {', '.join(f'{f:.0%}' for f in fractions[name])}; "
                           f"FLOPs would predict {by_flops:.4g} ms (measured / that = {measured[name] / by_flops:.2f}); "
                           f"the original network ran {drift:.2f}x its profiled time in these passes (load drift), "
                           f"measured / (predicted x that) = {ratio / drift:.3f}"),
                ))
            speed = measured["flops"] / measured["latency"]
            ms_lat = float(lat_pick.chosen.val.flops)  # cost="latency": expected ms per sample on val
            ms_flops = float(expected_latency_ms(profile, np.asarray(flops_pick.chosen.val.exit_fractions), batch_size=B))
            same = abs(ms_lat - ms_flops) <= SAME_POINT * ms_flops
            rows.append(make_row(
                NAME, f"latency-chosen vs FLOPs-chosen speed, {label}, {path}, batch {B}", measured["latency"],
                baseline=measured["flops"], ratio=speed, goal=f">= 1 (at least as fast; {NOISE:.0%} noise allowed)",
                passed=None if quick or same else bool(speed >= 1.0 - NOISE),
                notes=(f"{where}; ms per sample, ratio = FLOPs-chosen / latency-chosen; predicted {ms_lat:.4g} vs "
                       f"{ms_flops:.4g} ms on val; test acc {lat_pick.chosen.test.accuracy:.4f} vs "
                       f"{flops_pick.chosen.test.accuracy:.4f}"
                       + ("; not judged: both searches picked practically the same point (predicted ms within "
                          f"{SAME_POINT:.1%}), so the measured ratio is this comparison's timing noise" if same else "")),
            ))
    return rows


def _fmt(thresholds) -> str:
    return "(" + ", ".join("off" if t is None else f"{t:.3f}" for t in thresholds) + ")"


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _case_rows(_digits_case(quick), quick)
        fashion = _fashion_case(quick)
        if fashion is None:
            return rows + [skipped_row(NAME, "measured / predicted ms per sample")]
        return rows + _case_rows(fashion, quick)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover - `python -m benchmarks.bench_latency`
    from benchmarks.__main__ import markdown

    print(markdown(run(), {}, quick=False), end="")
