"""The exported early-exit ONNX graph repeats the cache's exit rule in ONNX Runtime, for every
rule variant, and bad input fails with one line and no file. Exports take seconds each, so the
files are made once per module. No timing is asserted (benchmarks/bench_onnx.py does)."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tradeoff.cache.format import load_cache
from tradeoff.checkpoint import save_checkpoint
from tradeoff.commands import main
from tradeoff.runtime.onnx_export import export_early_exit
from tradeoff.fileio import sha256_file
from tradeoff.models import create_model
from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.runtime.onnx_session import ort_session, run_session
from tradeoff.policy.confidence import exit_outputs
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.table import exit_indices, exit_table, rule_decisions

K, C = 3, 10


def _spread_scan_small() -> nn.Module:
    """A seeded random scan_small whose heads are scaled so confidences spread over [0, 1]."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("scan_small", num_classes=C)
    with torch.no_grad():
        for _, head in model.stages():
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(8.0)
                    module.bias.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Checkpoint, cache, a thresholds.json at the val medians, and the CLI's exported files."""
    root = tmp_path_factory.mktemp("onnx")
    model = _spread_scan_small()
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model, arch="scan_small", arch_kwargs={}, num_classes=C, data="digits")
    cache_path = root / "cache.npz"
    assert main(["cache", "--ckpt", str(ckpt), "--out", str(cache_path)]) == 0
    cache = load_cache(cache_path)
    val = cache.select("val")
    conf, _ = exit_outputs(val.logits)
    thresholds = [float(np.quantile(conf[k], 0.5)) for k in range(K - 1)]
    tfile = root / "thresholds.json"
    tfile.write_text(json.dumps({"thresholds": thresholds, "confidence": "maxprob", "ensemble": False,
                                 "calibration": None, "num_exits": K, "cache_sha256": sha256_file(cache_path),
                                 "checkpoint_sha256": sha256_file(ckpt)}))
    out, original = root / "model.onnx", root / "original.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--thresholds", str(tfile), "--out", str(out),
                 "--original", str(original)]) == 0
    test = cache.select("test")
    from tradeoff.data import load_data

    x = load_data("digits", splits=("test",)).x.astype(np.float32)
    assert np.array_equal(load_data("digits", splits=("test",)).y, test.labels)
    return dict(root=root, model=model, ckpt=ckpt, cache=cache_path, tfile=tfile, thresholds=thresholds, out=out,
                original=original, test=test, x=x)


def _ops(graph) -> set:
    """Every op type in a graph and its subgraphs (If branches, Scan bodies)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found |= _ops(attr.g)
    return found


def test_graph_passes_checker_and_keeps_the_contract(run):
    onnx.checker.check_model(str(run["out"]), full_check=True)
    proto = onnx.load(str(run["out"]))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outputs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert outputs == {"label": onnx.TensorProto.INT64, "exit": onnx.TensorProto.INT64,
                       "confidence": onnx.TensorProto.FLOAT}
    assert {"If", "Scan"} <= _ops(proto.graph)  # real control flow: deeper sections sit inside If branches
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["tradeoff.checkpoint_sha256"] == sha256_file(run["ckpt"])
    assert json.loads(meta["tradeoff.thresholds"]) == run["thresholds"]
    assert json.loads(meta["tradeoff.rule"])["fallback"] == "deepest"


def test_exits_and_labels_agree_with_the_cache_exit_rule(run):
    test, t = run["test"], np.array(run["thresholds"])
    table = exit_table(test.logits, test.labels, test.flops)
    want_exits = exit_indices(table, t)
    _, pred = exit_outputs(test.logits)
    want_labels = pred[want_exits, np.arange(want_exits.size)]
    labels, exits, conf = run_session(ort_session(run["out"]), run["x"], batch_size=64)
    assert labels.dtype == np.int64 and exits.dtype == np.int64 and conf.dtype == np.float32
    assert len(set(exits.tolist())) == K  # the thresholds send samples to every exit
    clear = np.all(np.abs(table.confidence[: K - 1] - t[:, None]) > 1e-6, axis=0)
    assert np.array_equal(exits[clear], want_exits[clear])
    assert np.array_equal(labels[clear], want_labels[clear])
    assert np.mean(exits == want_exits) >= 0.999 and np.mean(labels == want_labels) >= 0.999
    np.testing.assert_allclose(conf, table.confidence[exits, np.arange(exits.size)], atol=1e-5)


def test_batch_one_equals_batch_n(run):
    session = ort_session(run["out"])
    together = run_session(session, run["x"][:40], batch_size=40)
    alone = run_session(session, run["x"][:40], batch_size=1)
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)


def test_original_network_is_the_deepest_exit(run):
    proto = onnx.load(str(run["original"]))
    assert {p.key: p.value for p in proto.metadata_props}["tradeoff.graph"] == "original"
    labels, logits = run_session(ort_session(run["original"]), run["x"], batch_size=64)
    deepest = run["test"].logits[K - 1]
    np.testing.assert_allclose(logits, deepest, atol=1e-4)
    assert np.mean(labels == deepest.argmax(axis=1)) >= 0.999


def test_rule_decisions_is_the_cache_exit_rule_under_deepest(run):
    test, t = run["test"], run["thresholds"]
    exits, _ = rule_decisions(test.logits, ExitRule(t))
    assert np.array_equal(exits, exit_indices(exit_table(test.logits, test.labels, test.flops), np.array(t)))


@pytest.fixture(scope="module")
def variants(run, tmp_path_factory):
    """Two more exports: SCAN's ensemble fallback with exit 2 switched off, and SDN's
    most-confident fallback with temperatures, margin confidence and per-class thresholds."""
    root = tmp_path_factory.mktemp("variants")
    val = load_cache(run["cache"]).select("val").logits
    conf, _ = exit_outputs(val)
    q = [float(np.quantile(conf[k], 0.6)) for k in range(K)]
    temperatures = [1.5, 0.8, 1.2]
    margin, _ = exit_outputs(val, confidence="margin", temperatures=np.array(temperatures))
    per_class = [float(np.quantile(margin[0], (c + 0.5) / C)) for c in range(C)]  # a different limit per class
    rules = {
        "ensemble": ExitRule([q[0], None, q[2]], fallback="ensemble"),
        # per class at exit 1; exits 2 and 3 one limit for every class (ExitRule takes all rows or none)
        "most-confident": ExitRule([per_class, [float(np.quantile(margin[1], 0.7))] * C,
                                    [float(np.quantile(margin[2], 0.5))] * C],
                                   fallback="most-confident", confidence="margin", temperatures=temperatures),
    }
    example = torch.from_numpy(run["x"][:1])
    files = {name: export_early_exit(run["model"], rule, example_input=example, out_path=root / f"{name}.onnx")
             for name, rule in rules.items()}
    return rules, files


@pytest.mark.parametrize("name", ["ensemble", "most-confident"])
def test_fallback_rules_are_reproduced(run, variants, name):
    rules, files = variants
    rule = rules[name]
    want_exits, want_labels, want_conf = rule_decisions(run["test"].logits, rule, with_confidence=True)
    labels, exits, conf = run_session(ort_session(files[name]), run["x"], batch_size=64)
    assert np.mean(exits == want_exits) >= 0.999 and np.mean(labels == want_labels) >= 0.999
    np.testing.assert_allclose(conf, want_conf, atol=1e-5)
    # the fallback really answered some samples, differently from the deepest exit alone
    deepest = run["test"].logits[K - 1].argmax(axis=1)
    conf_all, _ = exit_outputs(run["test"].logits, confidence=rule.confidence,
                               temperatures=None if rule.temperatures is None else np.array(rule.temperatures))
    unsure = (exits == K - 1) & (conf_all[K - 1] < rule.threshold_array()[K - 1].min())
    assert unsure.any() and np.any(labels[unsure] != deepest[unsure])
    if name == "ensemble":
        assert not np.any(exits == 1)  # switched off: nobody leaves there


def test_per_class_thresholds_index_by_the_predicted_class(run, variants):
    rules, files = variants
    rule = rules["most-confident"]
    _, exits, _ = run_session(ort_session(files["most-confident"]), run["x"], batch_size=64)
    conf, pred = exit_outputs(run["test"].logits, confidence="margin", temperatures=np.array(rule.temperatures))
    limit = np.array(rule.thresholds[0])[pred[0]]  # exit 1's threshold for the class it predicted
    clear = np.abs(conf[0] - limit) > 1e-6
    assert np.any(exits == 0) and np.any(exits != 0)
    assert np.array_equal((exits == 0)[clear], (conf[0] >= limit)[clear])
    assert np.any(limit != np.array(rule.thresholds[0]).mean())  # not one flat limit for every class


# --------------------------------------------------------------------------- bad input
class _Branchy(nn.Module):
    """A section whose Python `if` depends on the data: torch.export cannot trace it."""

    def forward(self, x):
        return x * 2 if float(x.sum()) > 0 else x


class _TwoExit(MultiExitNet):
    def __init__(self):
        super().__init__()
        self.s1, self.h1 = nn.Flatten(), nn.Linear(4, 3)
        self.s2, self.h2 = _Branchy(), nn.Linear(4, 3)

    def stages(self):
        return [Stage(self.s1, self.h1), Stage(self.s2, self.h2)]


def test_untraceable_section_is_named_and_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"cannot export stage 2 section \(_Branchy\) to ONNX: .*traceable"):
        export_early_exit(_TwoExit(), ExitRule([0.5]), example_input=torch.rand(1, 1, 2, 2), out_path=out)
    assert list(tmp_path.iterdir()) == []


def test_opset_too_old_is_refused_before_any_work(run, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"--opset 11 is too old for the early-exit graph's control flow.*--opset 18"):
        export_early_exit(run["model"], ExitRule([0.5, 0.5]), example_input=torch.from_numpy(run["x"][:1]),
                          out_path=out, opset=11)
    assert not out.exists()


@pytest.mark.parametrize("rule, match", [
    (ExitRule([0.5]), r"fallback 'deepest' needs K-1 = 2 thresholds for a 3-exit model"),
    (ExitRule([0.5, 0.5], fallback="ensemble"), r"fallback 'ensemble' needs K = 3 thresholds for a 3-exit model"),
    (ExitRule([[0.5] * 4, [0.5] * 4]), r"per-class thresholds must be a \(2, C\) = \(2, 10\) table for 10 classes"),
    (ExitRule([0.5, 0.5], confidence="patience"), r"confidence 'patience' cannot be exported.*maxprob, margin, entropy"),
    ([0.5, 0.5], r"rule must be a tradeoff.ExitRule"),
])
def test_bad_rules_are_refused_before_any_work(run, rule, match, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises((ValueError, TypeError), match=match):
        export_early_exit(run["model"], rule, example_input=torch.from_numpy(run["x"][:1]), out_path=out)
    assert not out.exists()


def test_thresholds_for_another_checkpoint_are_refused(run, tmp_path, capsys):
    other = tmp_path / "other.json"
    doc = json.loads(run["tfile"].read_text())
    other.write_text(json.dumps({**doc, "checkpoint_sha256": "0" * 64}))
    out = tmp_path / "m.onnx"
    rc = main(["export", "--ckpt", str(run["ckpt"]), "--thresholds", str(other), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "was searched for another model: its checkpoint_sha256 is 000000000000..." in err
    assert not out.exists()


def test_run_backend_onnxruntime_reports_agreement_and_latency(run, tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = main(["run", "--backend", "onnxruntime", "--ckpt", str(run["ckpt"]), "--thresholds", str(run["tfile"]),
               "--cache", str(run["cache"]), "--repeats", "1", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["backend"] == "onnxruntime" and doc["batch_size"] == 64
    assert doc["cache_agreement"]["exits"] >= 0.999 and doc["cache_agreement"]["predictions"] >= 0.999
    assert doc["latency_ms"] > 0 and doc["baseline_latency_ms"] > 0
    assert sum(doc["exit_counts"]) == run["test"].num_samples
    assert "ONNX Runtime" in capsys.readouterr().out
