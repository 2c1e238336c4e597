import hashlib
import pathlib
import zipfile

import pytest
import torch
from torch import nn

from tradeoff.checkpoint import load_checkpoint, save_checkpoint
from tradeoff.models.scan import infer_scan_arch
from tradeoff.errors import UnsafeCheckpointError
from tradeoff.models import create_model, list_models, register_model
from tradeoff.models.base import MultiExitNet, Stage


class _Tiny(MultiExitNet):
    """Two exits on 5 features; hidden width != classes so the class count is ambiguous."""

    def __init__(self, num_classes: int = 3, width: int = 4):
        super().__init__()
        self.body1 = nn.Sequential(nn.Linear(5, width), nn.ReLU())
        self.fc1 = nn.Linear(width, num_classes)
        self.body2 = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
        self.fc2 = nn.Linear(width, num_classes)

    def stages(self):
        return [Stage(self.body1, self.fc1), Stage(self.body2, self.fc2)]


def h2_ckpt_tiny(num_classes: int = 3, width: int = 4):
    return _Tiny(num_classes, width)


if "h2_ckpt_tiny" not in list_models():
    register_model(h2_ckpt_tiny)


class _TouchOnUnpickle:
    """Unpickling this creates a file: the stand-in for code an attacker would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _trained_tiny(**kwargs):
    torch.manual_seed(0)
    model = _Tiny(**kwargs)
    with torch.no_grad():  # non-default BN statistics, so a skipped buffer would show
        model.body2[1].running_mean.uniform_(-1, 1)
        model.body2[1].running_var.uniform_(0.5, 2)
    return model.eval()


def _same_outputs(a, b, x):
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a(x), b(x)))


X5 = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- tradeoff checkpoints


def test_tradeoff_checkpoint_round_trip(tmp_path):
    model = _trained_tiny(num_classes=3, width=6)
    path = save_checkpoint(
        tmp_path / "sub" / "m.pt", model, arch="h2_ckpt_tiny", arch_kwargs={"width": 6}, num_classes=3,
        data="digits", extra={"epochs": 4, "val_acc": [0.5, 0.75]},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "tradeoff-ckpt" and raw["version"] == 1 and raw["arch_kwargs"] == {"width": 6}
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.num_classes, loaded.arch_kwargs, loaded.data) == ("h2_ckpt_tiny", 3, {"width": 6}, "digits")
    assert loaded.extra == {"epochs": 4, "val_acc": [0.5, 0.75]}
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.ignored_keys == [] and not loaded.model.training
    assert _same_outputs(model, loaded.model, X5)


def test_tradeoff_checkpoint_rejects_disagreeing_flags(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _Tiny(), arch="h2_ckpt_tiny", arch_kwargs={}, num_classes=3, data=None)
    with pytest.raises(ValueError, match=r"--arch scan_small disagrees with .*records arch h2_ckpt_tiny; drop --arch"):
        load_checkpoint(path, arch="scan_small")
    with pytest.raises(ValueError, match=r"--num-classes 10 disagrees with .*records 3 classes"):
        load_checkpoint(path, num_classes=10)
    assert load_checkpoint(path, arch="h2_ckpt_tiny", num_classes=3).num_classes == 3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(extra={"x": __import__("numpy").zeros(2)}), TypeError, r"checkpoint\['x'\] is a numpy.ndarray.*plain values"),
        (dict(extra={"arch": "other"}), ValueError, r"extra keys \['arch'\] would overwrite"),
        (dict(num_classes=0), ValueError, "num_classes must be a positive int"),
        (dict(arch_kwargs={"num_classes": 3}), ValueError, "without 'num_classes'"),
    ],
)
def test_save_refuses_what_cannot_load_safely(tmp_path, kwargs, error, match):
    args = dict(arch="h2_ckpt_tiny", arch_kwargs={}, num_classes=3, data="digits") | kwargs
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "m.pt", _Tiny(), **args)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bare state_dicts


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},
        lambda sd: {"epoch": 9, "best_acc": 0.8, "state_dict": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"model": {"net": sd}},
        lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "module", "orig_mod+module", "state_dict", "model/net", "model_state_dict"],
)
def test_bare_state_dicts_load_in_their_usual_wrappings(tmp_path, wrap):
    model = _trained_tiny()
    torch.save(wrap(model.state_dict()), tmp_path / "m.pth")
    loaded = load_checkpoint(tmp_path / "m.pth", arch="h2_ckpt_tiny", num_classes=3)
    assert loaded.data is None and loaded.arch == "h2_ckpt_tiny"
    assert _same_outputs(model, loaded.model, X5)


def test_wrapper_scalars_are_kept_as_extra(tmp_path):
    torch.save({"epoch": 9, "state_dict": _Tiny().state_dict()}, tmp_path / "m.pth")
    assert load_checkpoint(tmp_path / "m.pth", arch="h2_ckpt_tiny", num_classes=3).extra == {"epoch": 9}


def test_bare_state_dict_needs_arch_and_an_unambiguous_class_count(tmp_path):
    torch.save(_Tiny(num_classes=3, width=4).state_dict(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"bare state_dict that does not record its architecture; pass --arch NAME"):
        load_checkpoint(tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"cannot tell the number of classes .*pass --num-classes N"):
        load_checkpoint(tmp_path / "m.pth", arch="h2_ckpt_tiny")


def test_bare_state_dict_suggests_registered_model_by_shape(tmp_path):
    torch.save(_Tiny(num_classes=4, width=4).state_dict(), tmp_path / "m.pth")  # all linears 4 rows
    with pytest.raises(ValueError, match=r"looks like h2_ckpt_tiny with 4 classes: try --arch h2_ckpt_tiny --num-classes 4"):
        load_checkpoint(tmp_path / "m.pth")
    assert load_checkpoint(tmp_path / "m.pth", arch="h2_ckpt_tiny").num_classes == 4


def test_key_mismatch_names_keys_in_one_line(tmp_path):
    state = _Tiny().state_dict()
    state["head.extra.weight"] = torch.zeros(2)
    del state["fc2.bias"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "m.pth", arch="h2_ckpt_tiny", num_classes=3)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing (fc2.bias)" in message and "1 unexpected (head.extra.weight)" in message


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    model = _trained_tiny()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    loaded = load_checkpoint(tmp_path / "m.safetensors", arch="h2_ckpt_tiny", num_classes=3)
    assert _same_outputs(model, loaded.model, X5)


# ---------------------------------------------------------------- files that are not checkpoints


def _not_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(100)}, good)
    zipped = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "not torch")
    files = {
        "random": (tmp_path / "random.pt", bytes(range(256)) * 8),
        "text": (tmp_path / "notes.pt", b"hello, these are my notes\n"),
        "zip": (zipped, zipped.read_bytes()),
        "truncated": (tmp_path / "cut.pt", good.read_bytes()[: good.stat().st_size // 2]),
        "empty": (tmp_path / "empty.pt", b""),
        "bad safetensors": (tmp_path / "x.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1"),
        "plain pickle": (tmp_path / "plain.pkl", __import__("pickle").dumps({"a": 1}, protocol=4)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()}


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("random", "PyTorch checkpoint (it is neither a zip archive nor a pickle)"),
        ("text", "PyTorch checkpoint (it is neither a zip archive nor a pickle)"),
        ("zip", "PyTorch checkpoint (file in archive is not in a subdirectory: readme.txt)"),
        ("truncated", "PyTorch checkpoint (PytorchStreamReader failed reading zip archive"),
        ("empty", "PyTorch checkpoint (the file is empty)"),
        ("bad safetensors", "readable safetensors file ("),
        ("plain pickle", "PyTorch checkpoint (a pickle torch cannot read: "),
    ],
)
def test_non_checkpoint_files_give_one_clear_line(tmp_path, kind, reason):
    path = _not_checkpoints(tmp_path)[kind]
    with pytest.raises(ValueError, match=r"wrong file\?$") as info:
        load_checkpoint(path, arch="h2_ckpt_tiny", num_classes=3)
    message = str(info.value)
    assert message.startswith(f"{path} is not a {reason}") and "\n" not in message


def test_missing_file_and_non_state_dict_contents(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list, not a state_dict"):
        load_checkpoint(tmp_path / "list.pt", arch="h2_ckpt_tiny")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"a dict with keys epoch, lr but no tensors under state_dict"):
        load_checkpoint(tmp_path / "meta.pt", arch="h2_ckpt_tiny")


# ---------------------------------------------------------------- untrusted pickles


def test_pickle_that_would_run_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Tiny().state_dict(), "payload": _TouchOnUnpickle(marker)}, path)
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"evil.pt asks to unpickle arbitrary Python objects \(.*pathlib.*\), which can run code.*--trust-checkpoint",
    ):
        load_checkpoint(path, arch="h2_ckpt_tiny", num_classes=3)
    assert not marker.exists()
    # The opt-in really does unpickle (that is its point and its danger).
    loaded = load_checkpoint(path, arch="h2_ckpt_tiny", num_classes=3, trust=True)
    assert marker.exists() and loaded.num_classes == 3


def test_whole_pickled_model_needs_trust(tmp_path):
    model = _trained_tiny()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"test_checkpoint._Tiny"):
        load_checkpoint(tmp_path / "whole.pt", arch="h2_ckpt_tiny", num_classes=3)
    loaded = load_checkpoint(tmp_path / "whole.pt", arch="h2_ckpt_tiny", num_classes=3, trust=True)
    assert _same_outputs(model, loaded.model, X5)


def test_legacy_format_pickle_is_checked_too(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pt"
    torch.save({"x": _TouchOnUnpickle(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="asks to unpickle arbitrary Python objects"):
        load_checkpoint(path, arch="h2_ckpt_tiny")
    assert not marker.exists()


# ---------------------------------------------------------------- the SCAN family (official key layout)

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def scan18():
    torch.manual_seed(0)
    return create_model("scan_resnet18", num_classes=10).eval()


def test_infer_scan_arch_from_block_counts():
    for depth in (18, 34, 50, 101, 152):
        with torch.device("meta"):
            state = create_model(f"scan_resnet{depth}", num_classes=7).state_dict()
        assert infer_scan_arch(state) == f"scan_resnet{depth}"


@pytest.mark.parametrize(
    "variant", ["bare", "module", "byot", "no_num_batches_tracked", "safetensors", "infer_classes"]
)
def test_official_scan_state_dicts_load(tmp_path, scan18, variant):
    state = scan18.state_dict()
    kwargs = {"arch": "scan_resnet18", "num_classes": 10}
    path = tmp_path / "bestmodel.pth"
    if variant == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    elif variant == "byot":
        state = dict(state, **{"adaptation_layers.0.weight": torch.zeros(4, 4), "adaptation_layers.0.bias": torch.zeros(4)})
    elif variant == "no_num_batches_tracked":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    elif variant == "infer_classes":
        kwargs = {"arch": "scan_resnet18"}
    if variant == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "bestmodel.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = load_checkpoint(path, **kwargs)
    assert loaded.num_classes == 10
    assert loaded.ignored_keys == (["adaptation_layers.0.bias", "adaptation_layers.0.weight"] if variant == "byot" else [])
    assert _same_outputs(scan18, loaded.model, X32)


def test_scan_wrong_num_classes_is_suggested(tmp_path, scan18):
    torch.save(scan18.state_dict(), tmp_path / "bestmodel.pth")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "bestmodel.pth", arch="scan_resnet18", num_classes=100)
    message = str(info.value)
    assert "\n" not in message
    assert "8 shape mismatches (fc1.weight (10, 512) in file vs (100, 512) in model" in message
    assert message.endswith("it looks like scan_resnet18 with 10 classes: try --arch scan_resnet18 --num-classes 10")


def test_scan_wrong_depth_is_suggested(tmp_path):
    torch.manual_seed(0)
    torch.save(create_model("scan_resnet34", num_classes=10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"unexpected \(layer1\.2\.conv1\.weight.*try --arch scan_resnet34 --num-classes 10$"):
        load_checkpoint(tmp_path / "r34.pth", arch="scan_resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"does not record its architecture.*try --arch scan_resnet34 --num-classes 10$"):
        load_checkpoint(tmp_path / "r34.pth")
