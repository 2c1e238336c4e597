"""The early-exit runtime repeats the exit rule exactly, never runs past a sample's exit,
and `tradeoff run` reports what it measured. No timing is asserted here (benchmarks/ does)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from tradeoff.cache.format import ExitCache, make_meta, write_cache
from tradeoff.checkpoint import save_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.fileio import sha256_file
from tradeoff.models import create_model
from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.policy.scoring import exit_indices, exit_table
from tradeoff.policy.rule import ExitRule
from tradeoff.runtime.early_exit import EarlyExitModel, model_stages
from tradeoff.runtime.report import evaluate_runtime, report_document
from tradeoff.runtime.timing import Latency, measure_latency, run_early_exit

K = 3  # scan_small's exits


def _decisive_scan_small(seed: int = 0) -> nn.Module:
    """A seeded random scan_small whose heads are scaled up so confidences spread over [0, 1]."""
    return _decisive("scan_small", seed)


def _decisive(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """A seeded random `arch` whose heads' linear layers are scaled up (confidences spread out)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(arch, **kwargs)
    scaled = set()  # Adjoined heads share weights: scale each tensor once
    with torch.no_grad():
        for _, head in model.stages():
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    for param in (module.weight, module.bias):
                        if param is not None and id(param) not in scaled:
                            param.mul_(60.0)
                            scaled.add(id(param))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _decisive_scan_small()


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits", splits=("test",))
    return torch.from_numpy(data.x), data.y


@pytest.fixture(scope="module")
def full_logits(model, digits):
    """(K, N, C) logits of the plain full-batch forward, as a cache would hold them."""
    x, _ = digits
    with torch.inference_mode():
        return np.stack([out.numpy() for out in model(x)])


def _reference(logits, labels, thresholds, **policy):
    """Exits and answers by the exit rule on cached logits (the search's view)."""
    table = exit_table(logits, labels, np.arange(1.0, logits.shape[0] + 1), **policy)
    exits = exit_indices(table, np.asarray(thresholds, dtype=np.float64))
    from tradeoff.policy.scoring import exit_outputs

    _, pred = exit_outputs(logits, **policy)
    return exits, pred[exits, np.arange(exits.size)], table.confidence


def _safe_thresholds(confidence: np.ndarray, quantiles) -> list[np.ndarray]:
    """Threshold vectors placed midway in gaps of the observed confidences (>= 1e-6 wide).

    Float32 logits differ in the last bit between batch sizes (oneDNN and GEMM kernels
    are chosen per shape), so a confidence within ~1e-8 of a threshold could fall on
    either side; these thresholds keep every sample clear of that.
    """
    vectors = []
    for q in quantiles:
        t = []
        for k in range(confidence.shape[0] - 1):
            values = np.unique(confidence[k])
            gaps = np.flatnonzero(np.diff(values) > 1e-6)
            i = gaps[np.argmin(np.abs(gaps - q * (values.size - 1)))]
            t.append((values[i] + values[i + 1]) / 2)
        vectors.append(np.array(t))
    return vectors


POLICIES = [
    {"confidence": "maxprob"},
    {"confidence": "margin"},
    {"confidence": "entropy"},
    {"confidence": "maxprob", "ensemble": True},
    {"confidence": "margin", "ensemble": True, "temperatures": np.array([0.5, 2.0, 1.3])},
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(str(v) for v in p.values())[:40])
def test_batch_runtime_equals_exit_rule_on_cached_logits(model, digits, full_logits, policy):
    x, y = digits
    _, _, conf = _reference(full_logits, y, np.zeros(K - 1), **policy)
    vectors = [np.zeros(K - 1), np.ones(K - 1), np.array([0.0, 1.0]), np.array([1.0, 0.0])]
    vectors += _safe_thresholds(conf, (0.2, 0.5, 0.8))
    seen_exits = set()
    for t in vectors:
        exits, answers, _ = _reference(full_logits, y, t, **policy)
        runner = EarlyExitModel(model, ExitRule(t, **policy))
        for batch_size in (64, 360):
            preds, got_exits = run_early_exit(runner, x, batch_size=batch_size)
            np.testing.assert_array_equal(got_exits, exits, err_msg=f"exits, t={t}, batch {batch_size}")
            np.testing.assert_array_equal(preds, answers, err_msg=f"answers, t={t}, batch {batch_size}")
        seen_exits.update(np.unique(exits).tolist())
    assert seen_exits == {0, 1, 2}  # the vectors really exercise every exit


@pytest.mark.parametrize("policy", POLICIES[:1] + POLICIES[3:], ids=lambda p: "-".join(str(v) for v in p.values())[:40])
def test_batch_one_equals_batch_64(model, digits, full_logits, policy):
    x, y = digits
    x = x[:150]
    _, _, conf = _reference(full_logits[:, :150], y[:150], np.zeros(K - 1), **policy)
    seen = set()
    for t in _safe_thresholds(conf, (0.3, 0.7)) + [np.array([0.0, 1.0])]:
        runner = EarlyExitModel(model, ExitRule(t, **policy))
        one = run_early_exit(runner, x, batch_size=1)
        many = run_early_exit(runner, x, batch_size=64)
        np.testing.assert_array_equal(one[1], many[1])
        np.testing.assert_array_equal(one[0], many[0])
        seen.update(one[1].tolist())
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("policy", [POLICIES[0], POLICIES[1], POLICIES[4]], ids=("maxprob", "margin", "ens-temp"))
def test_exact_ties_and_near_ties_at_batch_one(model, digits, policy):
    """Thresholds ON observed confidences (and one ulp either side): the same bits decide.

    At batch 1 the runtime's logits are those of model(x[i:i+1]); the exit rule on those
    very logits must agree sample for sample, including confidence == threshold (leaves).
    """
    x, y = digits
    x, y = x[:24], y[:24]
    with torch.inference_mode():
        per_sample = [[out.numpy() for out in model(x[i : i + 1])] for i in range(24)]
    logits = np.stack([np.concatenate(rows) for rows in zip(*per_sample)])
    _, _, conf = _reference(logits, y, np.zeros(K - 1), **policy)
    for i in (3, 11, 17, 22):
        on = conf[: K - 1, i].copy()
        for t in (on, np.nextafter(on, 2.0), np.nextafter(on, -1.0)):
            exits, answers, _ = _reference(logits, y, t, **policy)
            preds, got = run_early_exit(EarlyExitModel(model, ExitRule(t, **policy)), x, batch_size=1)
            np.testing.assert_array_equal(got, exits)
            np.testing.assert_array_equal(preds, answers)
            if t is on:  # the tie itself leaves at exit 1; one ulp above it does not
                assert got[i] == 0
            elif t[0] > on[0]:
                assert got[i] != 0


def test_sections_run_only_on_samples_in_flight(model, digits, full_logits):
    x, y = digits
    rows_seen = [0] * K
    hooks = [
        stage.section.register_forward_hook(lambda mod, inp, out, k=k: rows_seen.__setitem__(k, rows_seen[k] + inp[0].shape[0]))
        for k, stage in enumerate(model.stages())
    ]
    try:
        _, _, conf = _reference(full_logits, y, np.zeros(K - 1))
        t = _safe_thresholds(conf, (0.5,))[0]
        exits, _, _ = _reference(full_logits, y, t)
        run_early_exit(EarlyExitModel(model, ExitRule(t)), x, batch_size=64)
        # section k runs exactly on the samples whose exit is k or deeper
        assert rows_seen == [int(np.sum(exits >= k)) for k in range(K)]
        assert rows_seen[1] < rows_seen[0] and rows_seen[2] < rows_seen[1]
        rows_seen[:] = [0] * K
        run_early_exit(EarlyExitModel(model, ExitRule(np.zeros(K - 1))), x, batch_size=64)
        assert rows_seen == [x.shape[0], 0, 0]
        rows_seen[:] = [0] * K
        run_early_exit(EarlyExitModel(model, ExitRule(np.zeros(K - 1))), x[:5], batch_size=1)
        assert rows_seen == [5, 0, 0]
    finally:
        for hook in hooks:
            hook.remove()


def test_deepest_is_the_original_network(model, digits, full_logits):
    x, _ = digits
    runner = EarlyExitModel(model, ExitRule([0.5, 0.5]))
    np.testing.assert_array_equal(runner.deepest(x).numpy(), full_logits[-1].argmax(axis=1))
    np.testing.assert_array_equal(runner.deepest(x[:1]).numpy(), full_logits[-1, :1].argmax(axis=1))


def test_runner_outputs_are_int64_tensors_and_model_is_in_eval(digits):
    model = _decisive_scan_small(1).train()
    runner = EarlyExitModel(model, ExitRule([0.9, 0.9]))
    assert not model.training
    out = runner(digits[0][:7])
    assert out.predictions.dtype == torch.int64 and out.exits.dtype == torch.int64
    assert out.predictions.shape == (7,) and out.exits.shape == (7,)
    with pytest.raises(ValueError, match="inference only"):
        runner.train()


@pytest.mark.parametrize(
    "arch, kwargs, shape",
    [("sidenet", {}, (1, 8, 8)), ("adjoined_small", {}, (1, 8, 8)),
     ("scan_resnet18", {"num_classes": 100}, (3, 32, 32))],
)
def test_other_families_run_early_exit_exactly(arch, kwargs, shape):
    """SideNet, Adjoined and the SCAN ResNets expose stages(); decisions match the exit rule."""
    model = _decisive(arch, 1, **kwargs)
    x = torch.from_numpy(np.random.default_rng(0).random((24, *shape), dtype=np.float32))
    with torch.inference_mode():
        logits = np.stack([out.numpy() for out in model(x)])
    K_arch = logits.shape[0]
    y = np.zeros(24, dtype=np.int64)
    _, _, conf = _reference(logits, y, np.zeros(K_arch - 1))
    t = _safe_thresholds(conf, (0.5,))[0]
    exits, answers, _ = _reference(logits, y, t)
    assert len(np.unique(exits)) >= 2
    for batch_size in (24, 1):
        preds, got = run_early_exit(EarlyExitModel(model, ExitRule(t)), x, batch_size=batch_size)
        np.testing.assert_array_equal(got, exits)
        np.testing.assert_array_equal(preds, answers)


class _NoStages(nn.Module):
    def forward(self, x):
        return [x]


class _OneStage(MultiExitNet):
    def __init__(self):
        super().__init__()
        self.s, self.h = nn.Identity(), nn.Identity()

    def stages(self):
        return [Stage(self.s, self.h)]


def test_bad_models_and_settings_are_reported(model):
    with pytest.raises(ValueError, match=r"_NoStages has no stages\(\).*implement stages\(\)"):
        EarlyExitModel(_NoStages(), ExitRule([0.5]))
    with pytest.raises(ValueError, match=r"must define stages\(\)"):
        EarlyExitModel(MultiExitNet(), ExitRule([0.5]))
    with pytest.raises(ValueError, match="1 stage.*at least 2 exits"):
        EarlyExitModel(_OneStage(), ExitRule([0.5]))
    with pytest.raises(ValueError, match=r"K-1 = 2 numbers for this 3-exit model \(fallback 'deepest'\); got 3 "):
        EarlyExitModel(model, ExitRule([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]; got 1.5 - .* switch it off"):
        EarlyExitModel(model, ExitRule([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        EarlyExitModel(model, ExitRule([float("nan"), 0.5]))
    with pytest.raises(ValueError, match="confidence must be one of maxprob, margin, entropy, patience; got 'top1'"):
        EarlyExitModel(model, ExitRule([0.5, 0.5], confidence="top1"))
    with pytest.raises(ValueError, match="temperatures must be 3 positive numbers"):
        EarlyExitModel(model, ExitRule([0.5, 0.5], temperatures=[1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="rule must be a tradeoff ExitRule"):
        EarlyExitModel(model, [0.5, 0.5])
    assert len(model_stages(model)) == K


def test_measure_latency_and_report(model, digits, full_logits):
    x, y = digits
    runner = EarlyExitModel(model, ExitRule([0.0, 1.0]))
    lat = measure_latency(runner, x[:20], batch_size=8, repeats=3, warmup=1)
    assert isinstance(lat, Latency)
    assert len(lat.passes_ms) == 3 and len(lat.baseline_passes_ms) == 3
    assert lat.latency_ms == sorted(lat.passes_ms)[1] and lat.num_samples == 20 and lat.batch_size == 8
    assert lat.latency_ms > 0 and lat.baseline_latency_ms > 0
    assert isinstance(lat.mkldnn, bool) and isinstance(lat.baseline_mkldnn, bool)
    fixed = measure_latency(runner, x[:4], batch_size=2, repeats=1, warmup=0, tune_backend=False)
    assert fixed.mkldnn == fixed.baseline_mkldnn == torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match="^repeats must be >= 1; got 0"):
        measure_latency(runner, x[:4], repeats=0)
    with pytest.raises(ValueError, match="^batch_size must be >= 1; got 0"):
        measure_latency(runner, x[:4], batch_size=0)

    flops = np.array([1.0, 3.0, 6.0])
    report = evaluate_runtime(runner, x, y, flops=flops, baseline_flops=5.0, batch_size=64, repeats=1)
    # t = (0, 1): everyone leaves at exit 1
    np.testing.assert_array_equal(report.exit_fractions, [1.0, 0.0, 0.0])
    assert report.accuracy == pytest.approx(np.mean(full_logits[0].argmax(axis=1) == y))
    assert report.predicted_speedup == pytest.approx(5.0)
    doc = report_document(report, batch_size=64)
    for key in ("accuracy", "exit_fractions", "latency_ms", "baseline_latency_ms", "measured_speedup",
                "predicted_speedup", "batch_size"):
        assert key in doc
    json.dumps(doc, allow_nan=False)
    untimed = evaluate_runtime(runner, x[:10], y[:10], flops=flops, baseline_flops=5.0, repeats=0)
    assert untimed.latency is None and untimed.measured_speedup is None


# ----------------------------------------------------------------------------- tradeoff run
@pytest.fixture(scope="module")
def run_files(tmp_path_factory, model, full_logits):
    """A checkpoint, a cache of its test+val logits and a thresholds.json, as search leaves them."""
    root = tmp_path_factory.mktemp("run")
    ckpt = save_checkpoint(root / "model.pt", model, arch="scan_small", arch_kwargs={}, num_classes=10, data="digits")
    data = load_data("digits", splits=("test",))
    cache = ExitCache(full_logits, data.y, np.full(data.y.size, "test"), np.array([1.0, 2.0, 3.0]),
                      make_meta(arch="scan_small", num_classes=10, checkpoint_sha256=sha256_file(ckpt)))
    cache_path = write_cache(root / "cache.npz", cache)
    _, _, conf = _reference(full_logits, data.y, np.zeros(K - 1))
    t = _safe_thresholds(conf, (0.5,))[0]
    exits, answers, _ = _reference(full_logits, data.y, t)
    doc = {
        "thresholds": t.tolist(), "confidence": "maxprob", "ensemble": False, "calibration": None,
        "cache": str(cache_path), "cache_sha256": sha256_file(cache_path), "num_exits": K, "arch": "scan_small",
        "checkpoint_sha256": sha256_file(ckpt), "pick": {"target_acc": 0.5},
        "val": {}, "test": {"accuracy": float(np.mean(answers == data.y)), "exit_fractions": [0.5, 0.3, 0.2]},
    }
    (root / "thresholds.json").write_text(json.dumps(doc))
    return root, ckpt, cache_path, doc, exits, answers, data.y


def test_tradeoff_run_end_to_end(run_files, capsys):
    root, ckpt, cache_path, doc, exits, answers, y = run_files
    out = root / "measured.json"
    code = main(["run", "--ckpt", str(ckpt), "--thresholds", str(root / "thresholds.json"), "--cache", str(cache_path),
                 "--batch-size", "64", "--repeats", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "where the samples left" in printed and "measured speed-up" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())
    assert result["accuracy"] == pytest.approx(np.mean(answers == y))
    np.testing.assert_allclose(result["exit_fractions"], np.bincount(exits, minlength=K) / exits.size)
    assert result["batch_size"] == 64 and result["threads"] == 1 and result["num_samples"] == y.size
    assert result["cache_agreement"] == {"exits": 1.0, "predictions": 1.0}
    assert result["measured_speedup"] == pytest.approx(result["baseline_latency_ms"] / result["latency_ms"])
    mean_flops = np.dot(result["exit_fractions"], result["flops"])
    assert result["predicted_speedup"] == pytest.approx(result["baseline_flops"] / mean_flops)
    assert result["data"] == "digits" and result["checkpoint_sha256"] == sha256_file(ckpt)


def test_tradeoff_run_default_output_at_batch_one(run_files, tmp_path):
    root, ckpt, _, doc, _, _, _ = run_files
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(doc))
    digits = load_data("digits", splits=("test",))
    np.savez(tmp_path / "few.npz", x=digits.x[:30], y=digits.y[:30], split=np.array(["test"] * 30))
    assert main(["run", "--ckpt", str(ckpt), "--thresholds", str(thresholds), "--repeats", "1",
                 "--data", f"npz:{tmp_path / 'few.npz'}"]) == 0
    result = json.loads((tmp_path / "run-b1.json").read_text())
    assert result["batch_size"] == 1 and result["cache_agreement"] is None and result["num_samples"] == 30
    assert result["data"] == f"npz:{tmp_path / 'few.npz'}"


@pytest.mark.parametrize(
    "change, extra_args, message",
    [
        ({"checkpoint_sha256": "ab" * 32}, [], r"searched for another model: its checkpoint_sha256 is abababababab"),
        ({"thresholds": [0.5], "num_exits": 2}, [], r"holds 1 thresholds \(a 2-exit model\) but the model has 3 exits"),
        ({"thresholds": [0.5, 1.2]}, [], r"thresholds must lie in \[0, 1\]"),
        # the recorded cache file itself, changed since the search: the cause is named (issue 15 item 8)
        ({"cache_sha256": "cd" * 32}, ["--cache"], r"is the file .*thresholds.json was searched on, but it was rebuilt since"),
        ({}, ["--batch-size", "0"], r"--batch-size must be >= 1; got 0"),
        ({}, ["--threads", "0"], r"--threads must be >= 1; got 0"),
        ({}, ["--data", "nope"], r"unknown data spec 'nope'"),
    ],
)
def test_tradeoff_run_bad_input_is_one_line(run_files, tmp_path, capsys, change, extra_args, message):
    root, ckpt, cache_path, doc, _, _, _ = run_files
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({**doc, **change}))
    args = ["--cache", str(cache_path)] if extra_args == ["--cache"] else extra_args
    code = main(["run", "--ckpt", str(ckpt), "--thresholds", str(bad), "--repeats", "1", *args])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("tradeoff run: error: ")
    assert __import__("re").search(message, err), err
    assert not list(tmp_path.glob("run-b*.json"))


# ----------------------------------------------------------------------------- the batch-1 quick rule
@pytest.mark.parametrize("measure", ["maxprob", "margin", "entropy"])
@pytest.mark.parametrize("ensemble", [False, True])
def test_quick_decision_always_agrees_with_the_exact_rule(measure, ensemble):
    """Python-float decisions on 6,000 random rows (near-ties and thresholds on the exact
    confidences included) equal `exit_outputs`, or defer to it."""
    from tradeoff.policy.scoring import exit_outputs
    from tradeoff.runtime.early_exit import QUICK_MARGIN, _quick_decision

    rng = np.random.default_rng(7)
    K, N, C = 3, 2000, 10
    logits = (rng.standard_normal((K, N, C)) * rng.choice([0.01, 1.0, 8.0, 40.0], size=(K, N, 1))).astype(np.float32)
    logits[:, :200, 1] = logits[:, :200, 0]  # exact ties between the top classes
    logits[:, 200:400, 1] = np.nextafter(logits[:, 200:400, 0], np.float32(np.inf))  # one float32 ulp apart
    temps = np.array([0.7, 1.0, 2.5])
    conf, pred = exit_outputs(logits, confidence=measure, ensemble=ensemble, temperatures=temps)
    deferred = 0
    for n in range(N):
        running = [] if ensemble else None
        for k in range(K):
            t_choices = (conf[k, n], np.nextafter(conf[k, n], 2.0), np.nextafter(conf[k, n], -1.0), 0.5, None)
            t = t_choices[n % len(t_choices)]
            quick, running = _quick_decision(logits[k, n].tolist(), float(temps[k]), measure,
                                             None if t is None else float(t), running, k)
            if quick is None:
                deferred += 1
                continue
            leave, answer = quick
            assert answer == pred[k, n], (k, n)
            if t is not None:
                assert leave == bool(conf[k, n] >= t), (k, n, conf[k, n], t)
                assert abs(conf[k, n] - t) > QUICK_MARGIN / 2
    # the exact rule is asked only near ties: about 3/5 of rows set t on the confidence,
    # plus the tied rows; the rest are decided quickly
    assert 0 < deferred < 0.8 * K * N


def test_quick_decision_defers_on_nan_and_inf():
    from tradeoff.runtime.early_exit import _quick_decision

    assert _quick_decision([float("nan"), 1.0], 1.0, "maxprob", 0.5, None, 0) == (None, None)
    assert _quick_decision([float("inf"), 1.0], 1.0, "maxprob", 0.5, [], 0) == (None, None)


# ----------------------------------------------------------------------------- the compiled path
def _compiled_logits(runner: EarlyExitModel, x: torch.Tensor) -> np.ndarray:
    """(K, N, C) logits of the runner's frozen graphs on the full batch x."""
    runner.deepest(x[:1])  # traces the graphs
    outputs, h = [], x
    with torch.inference_mode():
        for section, head in runner.active_stages:
            h = section(h)
            outputs.append(head(h).numpy())
    return np.stack(outputs)


def test_compiled_graphs_fold_batch_norm_and_stay_close_to_eager(model, digits, full_logits):
    x, _ = digits
    runner = EarlyExitModel(model, ExitRule([0.5, 0.5]), compiled=True)
    compiled = _compiled_logits(runner, x)
    assert all(isinstance(part, torch.jit.ScriptModule) for stage in runner.active_stages for part in stage)
    kinds = {node.kind() for section, head in runner.active_stages for part in (section, head)
             for node in part.graph.nodes()}
    assert "aten::batch_norm" not in kinds and "aten::_convolution" in kinds  # folded into the convolutions
    np.testing.assert_allclose(compiled, full_logits, rtol=1e-4, atol=1e-3)
    eager = EarlyExitModel(model, ExitRule([0.5, 0.5]))
    assert not eager.compiled and all(not isinstance(p, torch.jit.ScriptModule) for s in eager.active_stages for p in s)


@pytest.mark.parametrize("policy", [POLICIES[0], POLICIES[2], POLICIES[4]], ids=("maxprob", "entropy", "ens-temp"))
def test_compiled_runtime_equals_exit_rule_on_its_own_logits_and_on_the_cache(model, digits, full_logits, policy):
    """Compiled decisions are the exact rule on the graphs' logits; with thresholds clear of
    float32 rounding they are also the eager cache's decisions, at batch 64 and at batch 1."""
    x, y = digits
    runner_for_logits = EarlyExitModel(model, ExitRule(np.zeros(K - 1), **policy), compiled=True)
    compiled = _compiled_logits(runner_for_logits, x)
    _, _, conf = _reference(compiled, y, np.zeros(K - 1), **policy)
    seen = set()
    for t in _safe_thresholds(conf, (0.3, 0.7)) + [np.array([0.0, 1.0])]:
        exits, answers, _ = _reference(compiled, y, t, **policy)
        eager_exits, eager_answers, _ = _reference(full_logits, y, t, **policy)
        runner = EarlyExitModel(model, ExitRule(t, **policy), compiled=True)
        for batch_size, n in ((64, x.shape[0]), (1, 90)):
            preds, got = run_early_exit(runner, x[:n], batch_size=batch_size)
            np.testing.assert_array_equal(got, exits[:n])
            np.testing.assert_array_equal(preds, answers[:n])
            np.testing.assert_array_equal(got, eager_exits[:n])
            np.testing.assert_array_equal(preds, eager_answers[:n])
        seen.update(exits.tolist())
    assert seen == {0, 1, 2}
    np.testing.assert_array_equal(runner.deepest(x).numpy(), compiled[-1].argmax(axis=1))


def test_compiled_retraces_for_a_new_sample_shape():
    model = _decisive("scan_small", 2, in_channels=1)
    runner = EarlyExitModel(model, ExitRule([0.5, 0.5]), compiled=True)
    runner(torch.zeros(2, 1, 8, 8))
    first = runner.active_stages[0][0]
    runner(torch.zeros(3, 1, 8, 8))  # another batch size: same graphs
    assert runner.active_stages[0][0] is first
    runner(torch.zeros(1, 1, 12, 12))  # another sample shape: traced again
    assert runner.active_stages[0][0] is not first


class _IntHead(MultiExitNet):
    """Its second head returns a Python int, which TorchScript cannot trace."""

    def __init__(self):
        super().__init__()
        self.s1, self.h1 = nn.Identity(), nn.Flatten()
        self.s2, self.h2 = nn.Identity(), _ReturnsInt()

    def stages(self):
        return [Stage(self.s1, self.h1), Stage(self.s2, self.h2)]


class _ReturnsInt(nn.Module):
    def forward(self, x):
        return int(x.shape[0])


def test_compiled_reports_a_part_it_cannot_trace():
    runner = EarlyExitModel(_IntHead(), ExitRule([0.5]), compiled=True)
    with pytest.raises(ValueError, match=r"cannot compile head 2 \(_ReturnsInt\) with TorchScript: .*without compiled=True"):
        runner(torch.zeros(2, 4))


def test_tradeoff_run_compiled_reports_agreement(run_files):
    root, ckpt, cache_path, doc, exits, answers, y = run_files
    out = root / "compiled.json"
    assert main(["run", "--ckpt", str(ckpt), "--thresholds", str(root / "thresholds.json"), "--cache", str(cache_path),
                 "--batch-size", "64", "--repeats", "1", "--compiled", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["compiled"] is True
    assert result["cache_agreement"] == {"exits": 1.0, "predictions": 1.0}  # thresholds clear of rounding
    assert result["accuracy"] == pytest.approx(np.mean(answers == y))


RULES_ISSUE_11 = [
    ExitRule([None, 0.6], confidence="maxprob"),
    ExitRule([0.7, 0.5, 0.8], fallback="ensemble"),
    ExitRule([0.9, None, 0.95], fallback="most-confident", ensemble=True),
    ExitRule([0.5, 0.7], confidence="patience"),
    ExitRule([0.6, 1.0, 0.9], confidence="patience", fallback="ensemble", temperatures=None),
    ExitRule([tuple(np.linspace(0.3, 0.9, 10)), (None,) * 5 + (0.5,) * 5], confidence="margin"),
    ExitRule([tuple(np.linspace(0.9, 0.3, 10)), 0.6 * np.ones(10), (0.99,) * 10], fallback="ensemble",
             temperatures=[0.7, 1.5, 1.2]),
]


@pytest.mark.parametrize("rule", RULES_ISSUE_11, ids=range(len(RULES_ISSUE_11)))
def test_every_exit_rule_runs_with_the_cache_rules_decisions(model, digits, full_logits, rule):
    """Issue 11: fallbacks, off, patience and per-class thresholds make the same decisions at run
    time (real early exit, batch 1 and batched) as `rule_decisions` on the cached logits."""
    from tradeoff.policy.table import rule_decisions

    x, _ = digits
    exits, answers = rule_decisions(full_logits, rule)
    runner = EarlyExitModel(model, rule)
    for batch_size in (1, 64):
        n = 120 if batch_size == 1 else x.shape[0]
        preds, got_exits = run_early_exit(runner, x[:n], batch_size=batch_size)
        np.testing.assert_array_equal(got_exits, exits[:n])
        np.testing.assert_array_equal(preds, answers[:n])


def test_the_issue_11_rules_exercise_every_exit_and_the_fallbacks(full_logits):
    from tradeoff.policy.table import ExitTable, exit_indices, rule_decisions
    from tradeoff.policy.confidence import exit_outputs

    seen, fallback_used = set(), 0
    for rule in RULES_ISSUE_11:
        exits, _ = rule_decisions(full_logits, rule)
        seen.update(np.unique(exits).tolist())
        if rule.fallback != "deepest":
            conf, pred = exit_outputs(full_logits, confidence=rule.confidence, ensemble=rule.ensemble,
                                      temperatures=rule.temperatures and np.asarray(rule.temperatures))
            table = ExitTable(conf, np.zeros(conf.shape, bool), np.ones(K), fallback=rule.fallback, predicted=pred)
            fallback_used += int(exit_indices(table, rule.threshold_array(), with_fallback=True)[1].sum())
    assert seen == {0, 1, 2} and fallback_used > 0
