"""Loading the network a user already has, to attach exit heads to it (`--main`, `--backbone`).

`models/` builds networks and never reads files; `checkpoint.py` reads files. This module
joins the two for `tradeoff train --arch sidenet --main CKPT [--main-arch B] --tap NAME`
and `tradeoff train --arch scan --backbone B --taps A,B [--backbone-ckpt CKPT]`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from tradeoff.checkpoint import load_checkpoint
from tradeoff.models import create_model, resolve_builder
from tradeoff.models.attach import AttachedNet

__all__ = ["backbone_kwargs", "build_scan", "load_main"]


def backbone_kwargs(arch: str, dataset, given: dict | None = None) -> dict:
    """The keyword arguments a builder receives: num_classes (and in_channels for (C, H, W)
    data) when its signature takes them, then the user's own."""
    params = inspect.signature(resolve_builder(arch)).parameters
    kwargs: dict = {}
    if "num_classes" in params:
        kwargs["num_classes"] = int(dataset.num_classes)
    if "in_channels" in params and len(dataset.input_shape) == 3:
        kwargs["in_channels"] = int(dataset.input_shape[0])
    kwargs.update(given or {})
    return kwargs


def load_main(path, *, main_arch: str | None = None, trust: bool = False):
    """The trained MainNet of `--main` (a tradeoff checkpoint, or a bare state_dict with --main-arch).

    Raises:
        FileNotFoundError: no such file. ValueError: a bare file without --main-arch, or one
            that does not fit it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--main {path}: no such file; pass the trained MainNet checkpoint")
    try:
        return load_checkpoint(path, arch=main_arch, trust=trust)
    except ValueError as exc:
        text = str(exc)
        if "does not record its architecture" in text:
            raise ValueError(f"--main {path} is a bare state_dict; pass --main-arch pkg.module:builder that builds "
                             "the MainNet it belongs to") from None
        raise ValueError(text.replace("--arch", "--main-arch")) from None


def build_scan(dataset, arch_kwargs: dict, *, trust: bool = False) -> tuple[AttachedNet, dict]:
    """SCAN heads on a backbone, its weights from `backbone_ckpt` when given.

    Args:
        dataset: the training data (input shape and class count).
        arch_kwargs: backbone (builder), taps (names), optional backbone_ckpt, backbone_kwargs, width.

    Returns:
        (model, arch_kwargs that rebuild it with `create_model("scan", ...)`).
    """
    kwargs = dict(arch_kwargs)
    backbone = kwargs.pop("backbone", None)
    taps = kwargs.pop("taps", None)
    ckpt = kwargs.pop("backbone_ckpt", None)
    if not backbone or not taps:
        raise ValueError("--arch scan needs --backbone pkg.module:builder and --taps NAME1,NAME2,... "
                         "(module names of the backbone, shallow -> deep)")
    taps = taps.split(",") if isinstance(taps, str) else list(taps)
    built = backbone_kwargs(backbone, dataset, kwargs.pop("backbone_kwargs", None))
    rebuild = {"backbone": backbone, "taps": taps, "input_shape": [int(d) for d in dataset.input_shape],
               "backbone_kwargs": {k: v for k, v in built.items() if k != "num_classes"}, **kwargs}
    model = create_model("scan", num_classes=built.get("num_classes"), **rebuild)
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"--backbone-ckpt {ckpt}: no such file")
        try:  # a tradeoff checkpoint knows its builder ...
            loaded = load_checkpoint(ckpt, trust=trust)
        except ValueError as exc:  # ... a bare state_dict is read with --backbone's
            if "does not record its architecture" not in str(exc):
                raise
            loaded = load_checkpoint(ckpt, arch=backbone, num_classes=built.get("num_classes"),
                                     arch_kwargs={k: v for k, v in built.items() if k != "num_classes"}, trust=trust)
        try:
            _copy_weights(loaded.model, model.backbone)
        except RuntimeError as exc:
            raise ValueError(f"--backbone-ckpt {ckpt} does not fit --backbone {backbone}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    return model, rebuild


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    target.load_state_dict(source.state_dict(), strict=True)
