"""Building the model to train: the registry's builder fed from the data, SideNet's frozen
MainNet loaded, the output checked writable and the model checked to fit the data, all
before any training starts.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from tradeoff.errors import first_line


def check_out_path(out: str | os.PathLike) -> Path:
    """Create the output directory if missing; refuse a read-only one before any training."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a checkpoint file name such as {out / 'model.pt'}")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"--out {out}: cannot create directory {parent}/ ({exc.strerror or exc}); choose a writable location"
        ) from None
    probe = parent / f".{out.name}.write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PermissionError(
            f"--out {out}: directory {parent}/ is read-only ({exc.strerror or exc}); choose a writable location"
        ) from None
    return out


def _builder_kwargs(arch: str, dataset, arch_kwargs: dict | None) -> dict:
    """num_classes (and in_channels, input_size where the builder takes them) from the data, then the user's."""
    from tradeoff.models import resolve_builder

    builder = resolve_builder(arch)
    params = inspect.signature(builder).parameters
    kwargs: dict = {}
    if "num_classes" in params:
        kwargs["num_classes"] = int(dataset.num_classes)
    if "in_channels" in params and len(dataset.input_shape) == 3:
        kwargs["in_channels"] = int(dataset.input_shape[0])
    if "input_size" in params and len(dataset.input_shape) == 3:
        kwargs["input_size"] = [int(d) for d in dataset.input_shape[1:]]  # a list: checkpoints hold plain values
    kwargs.update(arch_kwargs or {})
    return kwargs


def check_model_fits(model: nn.Module, arch: str, dataset) -> int:
    """Run two samples through the model: the input shape and class count must fit the data.

    Returns:
        K, the number of exits.

    Raises:
        ValueError: naming the model and the data, and both shapes / class counts.
    """
    shape = tuple(int(s) for s in dataset.input_shape)
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != shape:
        # Fully convolutional nets may run on other sizes; a declared input shape is the contract.
        raise ValueError(
            f"model {arch!r} does not fit --data {dataset.spec}: the data's inputs have shape {shape} and it expects "
            f"inputs of shape {tuple(expected)}; pick a model made for this data"
        )
    x = torch.as_tensor(dataset.x[:2])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(x)
    except RuntimeError as exc:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if expected:
            hint = f"it expects inputs of shape {tuple(expected)}"
        elif first_conv is not None:
            hint = f"its first convolution takes {first_conv.in_channels} input channels"
        else:
            hint = "its input layer does not accept them"
        first = first_line(exc)
        raise ValueError(
            f"model {arch!r} does not fit --data {dataset.spec}: the data's inputs have shape {shape} and {hint} "
            f"({first}); pick a model made for this data"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(outputs, (list, tuple)) or not outputs:
        raise ValueError(f"model {arch!r} must return a list of exit logits; got {type(outputs).__name__}")
    classes = {int(o.shape[-1]) for o in outputs}
    if classes != {int(dataset.num_classes)}:
        raise ValueError(
            f"model {arch!r} has {sorted(classes)} output classes but --data {dataset.spec} has "
            f"{dataset.num_classes} classes; build the model for {dataset.num_classes} classes"
        )
    return len(outputs)


def build_model(arch: str, dataset, *, arch_kwargs: dict | None = None, main: str | os.PathLike | None = None,
                trust: bool = False, seed: int = 0):
    """Build (and for SideNet, load the frozen MainNet into) the model to train.

    Returns:
        (model, arch_kwargs) — the kwargs that rebuild it with `create_model(arch, **kw)`.
    """
    from tradeoff.models import resolve_builder

    resolve_builder(arch)  # unknown name -> list of known ones, before anything else
    # Weights come from torch's global generator; seed it inside a fork so the caller's
    # random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(arch, dataset, arch_kwargs=arch_kwargs, main=main, trust=trust)


def _build(arch: str, dataset, *, arch_kwargs, main, trust):
    from tradeoff.models import create_model

    if arch == "scan":
        from tradeoff.backbones import build_scan

        return build_scan(dataset, dict(arch_kwargs or {}), trust=trust)
    if arch == "sidenet" and ((arch_kwargs or {}).get("main_arch") or isinstance((arch_kwargs or {}).get("tap"), str)):
        from tradeoff.backbones import load_main
        from tradeoff.models.sidenet import sidenet_from_main

        if main is None:
            raise ValueError("--arch sidenet needs --main MAIN.pt, the trained MainNet checkpoint")
        kwargs = dict(arch_kwargs)
        loaded = load_main(main, main_arch=kwargs.pop("main_arch", None), trust=trust)
        return sidenet_from_main(loaded.model, main_arch=loaded.arch, main_kwargs=loaded.arch_kwargs,
                                 input_shape=tuple(dataset.input_shape), **kwargs)
    if arch == "sidenet":
        from tradeoff.models.sidenet import sidenet_from_main

        if main is None:
            raise ValueError("--arch sidenet needs --main MAIN.pt, the trained MainNet checkpoint "
                             "(train one first: tradeoff train --arch mainnet_small --out main.pt)")
        if not Path(main).is_file():
            raise FileNotFoundError(f"--main {main}: no such file; train a MainNet first "
                                    "(tradeoff train --arch mainnet_small --out main.pt)")
        from tradeoff.checkpoint import load_checkpoint

        loaded = load_checkpoint(main, trust=trust)
        try:
            return sidenet_from_main(loaded.model, main_arch=loaded.arch, main_kwargs=loaded.arch_kwargs,
                                     **(arch_kwargs or {}))
        except ValueError as exc:
            raise ValueError(str(exc).replace("main holds", f"--main {main} holds", 1)) from None
    if main is not None:
        raise ValueError(f"--main is only for --arch sidenet; got --arch {arch}")
    kwargs = _builder_kwargs(arch, dataset, arch_kwargs)
    return create_model(arch, **kwargs), kwargs
