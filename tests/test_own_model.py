"""Your own network: SideNet/SCAN heads on any backbone, exits by name, the contract checked."""

import json

import numpy as np
import pytest
import torch

import own_models
from tradeoff.cache.build import cache_checkpoint, check_model_contract
from tradeoff.cache.format import ExitCache, make_meta, write_cache
from tradeoff.checkpoint import load_checkpoint, save_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.fileio import sha256_file
from tradeoff.flops import exit_costs
from tradeoff.models import create_model, resolve_builder
from tradeoff.models.attach import AttachedNet, NamedExits
from tradeoff.models.contract import check_contract
from tradeoff.policy.rule import ExitRule
from tradeoff.runtime.early_exit import EarlyExitModel
from tradeoff.runtime.timing import run_early_exit
from tradeoff.training.loop import default_config, train_model

X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", splits=("train", "val"))


def _tiny(seed=0):
    torch.manual_seed(seed)
    return own_models.TinyResNet().eval()


# ------------------------------------------------------------------ splitting any network
def test_sidenet_on_any_mainnet_splits_without_recomputing():
    main_net = _tiny()
    net = AttachedNet(main_net, ["layer2.0"], input_shape=(1, 8, 8), head="side", freeze_backbone=True).eval()
    assert check_contract(net, X) == 2
    torch.testing.assert_close(net(X)[-1], main_net(X), rtol=0, atol=0)
    costs = exit_costs(net, (1, 8, 8))
    whole = exit_costs(NamedExits(main_net, ["fc"]), (1, 8, 8))
    # the MainNet exit costs the MainNet plus the side head it ran first, nothing recomputed
    assert costs.baseline_flops == whole.baseline_flops
    assert costs.flops[-1] == whole.flops[-1] + costs.head_flops[0]
    assert not any(p.requires_grad for p in main_net.parameters())


def test_scan_heads_on_any_backbone_keep_its_classifier():
    net = AttachedNet(_tiny(), ["layer1", "layer2"], input_shape=(1, 8, 8), head="scan").eval()
    outs = net(X)
    assert len(outs) == 3 and all(o.shape == (6, 10) for o in outs)
    assert check_contract(net, X) == 3
    assert net.stages()[-1].head[-1].graph is not None  # the backbone's own fc, as a graph call
    assert net.heads[0].fc.in_features == 32  # exit features in the classifier's width


def test_skip_connection_across_a_cut_is_carried_as_a_tuple():
    """A tap inside a residual block: the block's input must cross the cut as well."""
    net = AttachedNet(_tiny(), ["layer2.0.bn1"], input_shape=(1, 8, 8)).eval()
    assert check_contract(net, X) == 2
    first = net.stages()[0].section(X)
    assert isinstance(first, tuple) and len(first) >= 2


@pytest.mark.parametrize("taps,match", [
    (["layer2.1.cnv1"], r"tap 'layer2.1.cnv1' is not a module of TinyResNet; nearest names: layer2.1.conv1"),
    (["layer2", "layer1"], r"in the order forward\(\) reaches them"),
])
def test_bad_taps_are_one_clear_line(taps, match):
    with pytest.raises(ValueError, match=match):
        AttachedNet(_tiny(), taps, input_shape=(1, 8, 8))


def test_tap_whose_output_is_not_a_tensor():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x

    net = own_models.TinyResNet()
    net.layer1 = torch.nn.Sequential(net.layer1, Pair())
    net.layer2 = torch.nn.Sequential(_First(), net.layer2)
    with pytest.raises(ValueError, match=r"tap 'layer1' outputs a tuple, not a tensor"):
        AttachedNet(net, ["layer1"], input_shape=(1, 8, 8))


class _First(torch.nn.Module):
    def forward(self, pair):
        return pair[0]


def test_backbone_without_classifier():
    net = own_models.TinyResNet()
    net.fc = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"cannot find the classifier of TinyResNet: .* not from an nn.Linear"):
        AttachedNet(net, ["layer1"], input_shape=(1, 8, 8), head="scan")


def test_untraceable_backbone_names_the_problem():
    class Branchy(own_models.TinyResNet):
        def forward(self, x):
            if x.sum() > 0:
                return super().forward(x)
            return super().forward(-x)

    with pytest.raises(ValueError, match=r"cannot split backbone Branchy with torch.fx: .*control flow"):
        AttachedNet(Branchy(), ["layer1"], input_shape=(1, 8, 8))


def test_named_exits_give_stages_to_a_model_without_them():
    torch.manual_seed(0)
    user = own_models.ThreeExits().eval()
    net = NamedExits(user, ["exit1", "exit2", "fc"])
    assert check_contract(net, X) == 3
    costs = exit_costs(net, (1, 8, 8))
    assert costs.flops[0] < costs.flops[1] < costs.flops[2]


# ------------------------------------------------------------------ training, caching
def _config(digits, epochs=1):
    return default_config(digits.name, epochs=epochs, batch_size=128, seed=0)


def test_train_sidenet_on_bare_mainnet_then_cache(tmp_path, digits):
    main_path = tmp_path / "main.pth"
    torch.save({"model." + k: v for k, v in _tiny().state_dict().items()}, main_path)
    out = tmp_path / "side.pt"
    result = train_model("sidenet", out=out, arch_kwargs={"main_arch": "own_models:tiny_resnet", "tap": "layer2.0"},
                         main=main_path, config=_config(digits), dataset=digits, progress=False)
    assert result.extra["objective"] == "AttachedNet.training_loss" and result.selected_by == "mean val accuracy over exits"
    loaded = load_checkpoint(out)
    assert isinstance(loaded.model, AttachedNet) and loaded.arch_kwargs["tap"] == "layer2.0"
    outcome = cache_checkpoint(out, tmp_path / "cache.npz", data="digits")
    assert outcome.cache.logits.shape[0] == 2 and outcome.cache.meta["unsupported_ops"] == {}
    torch.testing.assert_close(loaded.model.backbone.fc.weight, _tiny().fc.weight)  # MainNet untouched


def test_train_scan_on_backbone_cli(tmp_path, digits, capsys):
    out = tmp_path / "scan.pt"
    code = main(["train", "--arch", "scan", "--backbone", "own_models:tiny_resnet", "--taps", "layer1,layer2",
                 "--out", str(out), "--epochs", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    loaded = load_checkpoint(out)
    assert len(loaded.model.stages()) == 3 and loaded.arch == "scan"
    assert loaded.arch_kwargs["taps"] == ["layer1", "layer2"]


def test_deepest_first_forward_refused_before_writing(tmp_path, capsys):
    """Before: cached with exit 1 given the deepest exit's logits (266.6x at 96.4%)."""
    ckpt = tmp_path / "official.pth"
    torch.save(own_models.DeepestFirst().state_dict(), ckpt)
    out = tmp_path / "cache.npz"
    code = main(["cache", "--ckpt", str(ckpt), "--arch", "own_models:deepest_first", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert "forward() returns exit 1 where stages() gives exit 3" in err and err.count("\n") == 1


def test_run_exits_nonzero_when_cache_disagrees(tmp_path, capsys):
    """Before: `tradeoff run` printed '90.00% of answers' agreement and exited 0."""
    torch.manual_seed(1)
    model = own_models.ThreeExits()
    ckpt = save_checkpoint(tmp_path / "m.pt", NamedExits(model, ["exit1", "exit2", "fc"]).net, arch="own_models:three_exits",
                           arch_kwargs={}, num_classes=10, data="digits")
    test = load_data("digits", splits=("test",))
    with torch.no_grad():
        logits = torch.stack(model.eval()(torch.as_tensor(test.x))).numpy()
    wrong = logits[::-1].copy()  # the cache a deepest-first forward() wrote
    meta = make_meta(arch="own_models:three_exits", num_classes=10, checkpoint_sha256=sha256_file(ckpt))
    cache = write_cache(tmp_path / "c.npz", ExitCache(wrong, test.y, np.full(test.y.size, "test"),
                                                      np.array([1.0, 2.0, 3.0]), meta))
    doc = {"thresholds": [0.0, 0.0], "confidence": "maxprob", "ensemble": False, "calibration": None,
           "cache": str(cache), "cache_sha256": sha256_file(cache), "num_exits": 3, "arch": "own_models:three_exits",
           "checkpoint_sha256": sha256_file(ckpt), "pick": {"target_acc": 0.5}, "val": {}, "test": {}}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    code = main(["run", "--ckpt", str(ckpt), "--thresholds", str(tmp_path / "t.json"), "--cache", str(cache),
                 "--exits", "exit1,exit2,fc", "--repeats", "1", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 1 and "not by float rounding" in err


def test_multiscale_list_sections_at_every_batch_size():
    """Before: batch 64 ended in "'list' object has no attribute 'index_select'"."""
    torch.manual_seed(0)
    model = own_models.MultiScale().eval()
    x = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conf = torch.stack(model(x)).softmax(-1).amax(-1)
    t = [float(conf[0].median()), float(conf[1].median())]
    runner = EarlyExitModel(model, ExitRule(t))
    one = run_early_exit(runner, x, batch_size=1)
    many = run_early_exit(runner, x, batch_size=64)
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_array_equal(one[0], many[0])
    assert len(set(many[1].tolist())) == 3  # every exit is taken: the batch really shrinks


# ------------------------------------------------------------------ import path friction
def test_dotted_builder_gets_a_hint():
    with pytest.raises(ValueError, match=r"unknown model 'mymod.build'; did you mean mymod:build\?"):
        resolve_builder("mymod.build")


def test_current_folder_is_on_the_import_path(tmp_path, monkeypatch):
    (tmp_path / "mymod_cwd_probe.py").write_text("def build(num_classes=10):\n    return num_classes\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert create_model("mymod_cwd_probe:build", num_classes=3) == 3


def test_docs_example_really_runs(tmp_path, monkeypatch, capsys):
    """The README's "Your own model" example, written to ./mymodel.py, trained, cached - no PYTHONPATH."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# mymodel.py\n.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 17
    (tmp_path / "mymodel.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--arch", "mymodel:build", "--data", "digits", "--out", "my.pt", "--epochs", "1",
                 "--no-progress"]) == 0
    assert main(["cache", "--ckpt", "my.pt", "--out", "my.npz"]) == 0
    out = capsys.readouterr().out
    assert "wrote my.npz" in out


def test_cache_by_exit_names_warns_about_uncounted_ops(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "s.pt", own_models.softplus_exits(), arch="own_models:softplus_exits",
                           arch_kwargs={}, num_classes=10, data="digits")
    code = main(["cache", "--ckpt", str(ckpt), "--exits", "exit1,exit2,fc", "--out", str(tmp_path / "s.npz")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: FLOPs exclude 1 uncounted op(s): aten::softplus x1" in captured.err
    from tradeoff.cache.format import load_cache

    meta = load_cache(tmp_path / "s.npz").meta
    assert meta["unsupported_ops"] == {"aten::softplus": 1} and meta["exits"] == ["exit1", "exit2", "fc"]
