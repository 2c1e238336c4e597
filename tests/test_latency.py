"""The latency cost model on hand-checkable profiles, its errors, and profile -> search -> run end to end."""

import json

import numpy as np
import pytest

from tradeoff.policy.latency import (
    LatencyProfile, expected_latency_ms, in_flight_fractions, latency_profile_from_document, read_latency_profile,
)


def _profile(sizes=(1, 4), K=3):
    # stage k costs (k + 1) ms at batch 1 and 2 (k + 1) ms at batch 4; decisions and heads 0.
    S = len(sizes)
    section = np.array([[(k + 1) * (1 if b == 1 else 2) for k in range(K)] for b in sizes], dtype=float)
    zeros = np.zeros((S, K))
    return LatencyProfile(np.array(sizes), section, zeros, zeros, np.full(S, 0.5), np.array([7.0] * S),
                          meta={"checkpoint_sha256": "a" * 64})


def test_batch_one_is_a_sum_over_exit_paths():
    p = _profile()
    f = np.array([[1, 0, 0], [0, 0, 1], [0.5, 0.25, 0.25]])
    # paths: 0.5 + 1, 0.5 + 1 + 2, 0.5 + 1 + 2 + 3
    np.testing.assert_allclose(expected_latency_ms(p, f), [1.5, 6.5, 0.5 * 1.5 + 0.25 * 3.5 + 0.25 * 6.5])
    np.testing.assert_allclose(p.path_ms(1), [1.5, 3.5, 6.5])


def test_shrinking_batch_uses_binomial_in_flight_counts():
    p = _profile()
    # everyone to the deepest exit at B = 4: every stage at its batch-4 cost, per sample
    np.testing.assert_allclose(expected_latency_ms(p, [0, 0, 1], batch_size=4), (0.5 + 2 + 4 + 6) / 4)
    # half leave at exit 1: stages 2, 3 run on n ~ Bin(4, 0.5) samples, cost interpolated (0 at n = 0)
    n = np.arange(5)
    pmf = np.array([1, 4, 6, 4, 1]) / 16
    cost_n = np.interp(n, [0, 1, 4], [0, 1, 2])  # unit stage cost by samples in flight
    expected = (0.5 + 2 + (pmf @ cost_n) * 2 + (pmf @ cost_n) * 3) / 4
    np.testing.assert_allclose(expected_latency_ms(p, [0.5, 0, 0.5], batch_size=4), expected)


def test_in_flight_counts_every_path_a_sample_ran():
    np.testing.assert_allclose(in_flight_fractions([[0.2, 0.3, 0.5]]), [[1.0, 0.8, 0.5]])


def test_errors_are_one_clear_line(tmp_path):
    p = _profile()
    with pytest.raises(ValueError, match="no batch size 8; it has 1, 4"):
        expected_latency_ms(p, [1, 0, 0], batch_size=8)
    with pytest.raises(ValueError, match=r"shape \(P, 3\)"):
        expected_latency_ms(p, [1, 0])
    doc = {"format": "tradeoff-latency", "version": 1, "checkpoint_sha256": "a" * 64, "batches": [
        {"batch_size": 1, "section_ms": [1, 2], "head_ms": [0, 0], "decision_ms": [0, 0], "call_ms": 0, "original_ms": 2}]}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="another checkpoint"):
        read_latency_profile(path, checkpoint_sha256="b" * 64)
    with pytest.raises(ValueError, match="has 2 exits but the model/cache has 3"):
        read_latency_profile(path, num_exits=3)
    with pytest.raises(ValueError, match="no batch size 64; it has 1"):
        read_latency_profile(path, batch_size=64)
    with pytest.raises(ValueError, match="not a tradeoff latency profile"):
        latency_profile_from_document({"format": "x"})
    with pytest.raises(FileNotFoundError, match="tradeoff profile"):
        read_latency_profile(tmp_path / "none.json")


def test_profile_search_run_end_to_end(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    from tradeoff.checkpoint import save_checkpoint
    from tradeoff.commands import main
    from tradeoff.models import create_model

    torch.manual_seed(0)
    model = create_model("scan_small", num_classes=10)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, arch="scan_small", arch_kwargs={}, num_classes=10, data="digits")
    lat = tmp_path / "latency.json"
    assert main(["profile", "--ckpt", str(ckpt), "--batch-size", "1", "4", "--repeats", "3", "--out", str(lat)]) == 0
    doc = json.loads(lat.read_text())
    assert [b["batch_size"] for b in doc["batches"]] == [1, 4] and len(doc["batches"][0]["section_ms"]) == 3
    assert doc["checkpoint_sha256"] and doc["torch_version"] == torch.__version__
    cache = tmp_path / "c.npz"
    assert main(["cache", "--ckpt", str(ckpt), "--out", str(cache)]) == 0
    out = tmp_path / "run"
    assert main(["search", "--cache", str(cache), "--cost", "latency", "--latency", str(lat), "--pop", "8",
                 "--gens", "2", "--no-plots", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost"] == "ms" and summary["latency"]["test"]["flops"] > 0
    capsys.readouterr()
    assert main(["search", "--cache", str(cache), "--cost", "latency", "--out", str(out)]) == 1
    assert "--cost latency needs --latency" in capsys.readouterr().err
    assert main(["run", "--ckpt", str(ckpt), "--thresholds", str(out / "thresholds.json"), "--repeats", "1",
                 "--out", str(tmp_path / "r.json")]) == 0
    run = json.loads((tmp_path / "r.json").read_text())
    assert run["predicted_latency_ms"] > 0 and run["latency_ms"] > 0


def test_batch_one_decision_is_timed_on_the_fast_path():
    """The profile's batch-1 decision threshold lies away from the sample's own confidence, so
    the timed decision is the Python-float fast path a real batch-1 run takes, not the exact
    fallback that a confidence within QUICK_MARGIN of its threshold needs (which made batch-1
    predictions too high)."""
    import torch

    from tradeoff.models import create_model
    from tradeoff.policy.confidence import exit_outputs
    from tradeoff.policy.rule import ExitRule
    from tradeoff.runtime.early_exit import QUICK_MARGIN, EarlyExitModel
    from tradeoff.runtime.profile import _items

    torch.manual_seed(0)
    model = create_model("scan_small", num_classes=10).eval()
    runner = EarlyExitModel(model, ExitRule([0.5, 0.5]))
    xb = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():  # as profile_batch calls it
        _, thresholds = _items(runner, xb)
        logits = np.stack([o.numpy() for o in model(xb)])
    conf, _ = exit_outputs(logits)
    for k, t in enumerate(thresholds):
        assert abs(t - conf[k, 0]) >= 0.5 - 1e-12 > QUICK_MARGIN


def test_batch_one_uses_the_measured_whole_paths_when_profiled():
    """A profile that timed every whole exit path prices a batch-1 sample by its path, not by
    the sum of separately timed parts (which overstates it); batch B > 1 keeps the stage model."""
    p = _profile()
    measured = np.array([[1.2, 3.0, 5.0], [0.5, 1.0, 2.0]])  # per sample, at batch 1 and 4
    q = LatencyProfile(p.batch_sizes, p.section_ms, p.head_ms, p.decision_ms, p.call_ms, p.original_ms,
                       meta=p.meta, measured_path_ms=measured)
    f = np.array([[1, 0, 0], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(expected_latency_ms(q, f), [1.2, 0.5 * 1.2 + 0.25 * 3.0 + 0.25 * 5.0])
    np.testing.assert_allclose(q.path_ms(1), measured[0])
    np.testing.assert_allclose(expected_latency_ms(q, f, batch_size=4), expected_latency_ms(p, f, batch_size=4))
    # read from a profile document: path_ms is per call, so divided by the batch size
    doc = {"format": "tradeoff-latency", "version": 1, "batches": [
        {"batch_size": b, "section_ms": list(p.section_ms[i]), "head_ms": [0] * 3, "decision_ms": [0] * 3,
         "call_ms": 0.5, "original_ms": 7.0, "path_ms": list(measured[i] * b)} for i, b in enumerate((1, 4))]}
    np.testing.assert_allclose(latency_profile_from_document(doc).measured_path_ms, measured)
