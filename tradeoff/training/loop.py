"""`tradeoff train`: train a multi-exit network the way its paper does.

Three objectives, chosen by the model family:
- SCAN self-distillation (any multi-exit net, `scan_loss`): cross-entropy on the deepest
  exit; each shallow exit (1 - alpha) * CE + alpha * T^2 * soft cross-entropy against the
  detached deepest exit's softmax at temperature T; plus a feature-hint term pulling each
  shallow feature toward the detached deepest feature (models with `forward_with_features`).
- SideNet (`models/sidenet.py`): the MainNet is frozen; only the side head learns, with CE.
- Adjoined Networks (`models/adjoined.py`, `adjoined_loss`): CE(large) + CE(small) +
  T^2 * KL(large.detach() || small) at temperature T.

The checkpoint kept is the one with the best DEEPEST-exit validation accuracy; the test
split is never loaded here. Everything random comes from `seed` (torch generators).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tradeoff.errors import first_line

# Feature-hint weight. DESIGN.md: squared distance of each shallow feature to the detached
# deepest one. We take the per-sample squared L2 distance, averaged over the batch and summed
# over the shallow exits. SCAN's code weights an (unsquared) batch-level distance by 0.03;
# with squared distances of post-ReLU features (hundreds for 512-d ResNet features) a much
# smaller weight keeps the hint a small fraction of the loss, as in the paper.
DEFAULT_HINT_WEIGHT = 1e-4
DEFAULT_TEMPERATURE = 3.0
DEFAULT_ALPHA = 0.5


# --------------------------------------------------------------------------- losses
def scan_loss(
    logits: list[torch.Tensor],
    features: list[torch.Tensor] | None,
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    hint_weight: float = DEFAULT_HINT_WEIGHT,
) -> torch.Tensor:
    """SCAN's self-distillation objective for one batch.

    loss = CE(z_K, y) + sum_{k<K} [(1 - alpha) CE(z_k, y)
                                   + alpha T^2 * mean_n(-sum_c p_K,T log p_k,T)]
           + hint_weight * sum_{k<K} mean_n ||f_k - f_K||^2
    where p_{k,T} = softmax(z_k / T) and the deepest exit's z_K and f_K are detached
    (the teacher learns only from the labels).

    Args:
        logits: K tensors (B, C), shallow -> deep.
        features: K tensors (B, D) (flattened pre-fc features) or None to skip the hint.
        labels: (B,) int64.
        temperature: T of the soft targets.
        alpha: lambda, the weight of distillation against CE on shallow exits.
        hint_weight: weight of the feature-hint term (0 disables it).

    Returns:
        Scalar tensor.
    """
    deepest = logits[-1]
    loss = F.cross_entropy(deepest, labels)
    if len(logits) == 1:
        return loss
    teacher = F.softmax(deepest.detach() / temperature, dim=1)
    for student in logits[:-1]:
        soft_ce = -(teacher * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()
        loss = loss + (1.0 - alpha) * F.cross_entropy(student, labels) + alpha * temperature**2 * soft_ce
    if features is not None and hint_weight > 0:
        target = features[-1].detach()
        for feat in features[:-1]:
            loss = loss + hint_weight * (feat - target).pow(2).sum(dim=1).mean()
    return loss


def adjoined_loss(
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    distill_weight: float = 1.0,
) -> torch.Tensor:
    """Adjoined Networks' joint objective: CE(large) + CE(small) + w T^2 KL(large || small).

    Args:
        logits: [small (B, C), large (B, C)], the two exits of an adjoined network.
        labels: (B,) int64.
        temperature: T of the distillation.
        distill_weight: w; the large network's logits are detached (it is the teacher).
    """
    small, large = logits
    teacher = F.log_softmax(large.detach() / temperature, dim=1)
    student = F.log_softmax(small / temperature, dim=1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return F.cross_entropy(large, labels) + F.cross_entropy(small, labels) + distill_weight * temperature**2 * kl


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """How to train. `default_config` picks the paper's CIFAR schedule or the digits one.

    Attributes:
        epochs: passes over the train split.
        batch_size: samples per step.
        optimizer: "sgd" (momentum) or "adam".
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (coupled, as torch's SGD / Adam do).
        schedule: "step" (lr / 10 at each of `milestones` epochs) or "cosine".
        milestones: epochs at which the step schedule divides lr by 10.
        augment: "crop_flip" (CIFAR: pad 4 + random crop + horizontal flip), "shift"
            (random shift of up to 1 pixel, no flip: flips break digits) or "none".
        temperature, alpha, hint_weight: SCAN / Adjoined loss settings (see the losses).
        seed: seeds the weights, the shuffling and the augmentation.
        device: torch device name.
    """

    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    augment: str = "none"
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    hint_weight: float = DEFAULT_HINT_WEIGHT
    seed: int = 0
    device: str = "cpu"


CIFAR_CONFIG = TrainConfig(
    epochs=200, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
    schedule="step", milestones=(75, 130, 180), augment="crop_flip",
)
# Measured on 2 CPU cores: scan_small reaches >= 97% deepest-exit test accuracy in well
# under a minute with this (see the README's demo numbers).
SMALL_CONFIG = TrainConfig(
    epochs=30, batch_size=64, optimizer="adam", lr=3e-3, momentum=0.9, weight_decay=1e-4,
    schedule="cosine", augment="shift",
)


def default_config(data_name: str, **overrides) -> TrainConfig:
    """The paper's CIFAR schedule for CIFAR data, the short one otherwise; then `overrides`.

    `None` values in `overrides` mean "keep the default" (as the CLI passes them).
    """
    base = CIFAR_CONFIG if data_name.startswith("cifar") else SMALL_CONFIG
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; known: {sorted(TrainConfig.__dataclass_fields__)}")
    config = replace(base, **given)
    _validate_config(config)
    return config


def _validate_config(config: TrainConfig) -> None:
    if config.epochs < 1:
        raise ValueError(f"--epochs must be >= 1; got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {config.batch_size}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"--lr must be a positive number; got {config.lr}")
    if config.optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {config.optimizer!r}")
    if config.schedule not in ("step", "cosine"):
        raise ValueError(f"schedule must be 'step' or 'cosine'; got {config.schedule!r}")
    if config.augment not in ("crop_flip", "shift", "none"):
        raise ValueError(f"augment must be 'crop_flip', 'shift' or 'none'; got {config.augment!r}")
    if not 0.0 <= config.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {config.alpha}")
    if config.temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {config.temperature}")
    try:
        device = torch.device(config.device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {config.device!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device!r}: no CUDA device is available here; use --device cpu")


# --------------------------------------------------------------------------- augmentation
def random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4) -> torch.Tensor:
    """Pad by `pad` zeros, crop back at a random offset, flip half the images left-right.

    x is already normalised, so the zero padding is the dataset-mean colour (SCAN pads
    the raw image with black before normalising; the difference is immaterial).

    Args:
        x: (B, C, H, W).
        generator: the source of every random choice.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (B, H)
    cols = (ox[:, None] + torch.arange(w)[None, :]).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    out = out.permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


def random_shift(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (zero fill, no flip)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    oy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)[None, :]).to(x.device)
    cols = (ox[:, None] + torch.arange(w)[None, :]).to(x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "crop_flip":
        return random_crop_flip(x, generator)
    if kind == "shift":
        return random_shift(x, generator)
    return x


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        path: the checkpoint written (the best epoch by deepest-exit val accuracy).
        arch: registered model name.
        epochs: epochs run.
        best_epoch: 1-based epoch whose weights were kept.
        best_val_accuracy: (K,) per-exit val accuracy at `best_epoch`, shallow -> deep.
        val_history: per epoch, the (K,) per-exit val accuracies.
        loss_history: per epoch, the mean training loss.
        config: the settings used.
        seconds: wall time of the training loop.
    """

    path: Path
    arch: str
    epochs: int
    best_epoch: int
    best_val_accuracy: tuple[float, ...]
    val_history: tuple[tuple[float, ...], ...]
    loss_history: tuple[float, ...]
    config: TrainConfig
    seconds: float
    trainable_params: int = 0
    selected_by: str = "deepest-exit val accuracy"
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- building
def _check_out_path(out: str | os.PathLike) -> Path:
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
    """num_classes (and in_channels where the builder takes it) from the data, then the user's."""
    from tradeoff.models import resolve_builder

    builder = resolve_builder(arch)
    params = inspect.signature(builder).parameters
    kwargs: dict = {}
    if "num_classes" in params:
        kwargs["num_classes"] = int(dataset.num_classes)
    if "in_channels" in params and len(dataset.input_shape) == 3:
        kwargs["in_channels"] = int(dataset.input_shape[0])
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


def _objective(model: nn.Module) -> str:
    from tradeoff.models.adjoined import AdjoinedNet
    from tradeoff.models.sidenet import SideNet

    if isinstance(model, SideNet):
        return "sidenet"
    if isinstance(model, AdjoinedNet):
        return "adjoined"
    return "scan"


def _batch_loss(model: nn.Module, objective: str, x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    if objective == "sidenet":
        return F.cross_entropy(model.side_logits(x), y)
    if objective == "adjoined":
        return adjoined_loss(model(x), y, temperature=config.temperature)
    if config.hint_weight > 0 and hasattr(model, "forward_with_features"):
        logits, features = model.forward_with_features(x)
    else:
        logits, features = model(x), None
    return scan_loss(
        list(logits), features, y, temperature=config.temperature, alpha=config.alpha, hint_weight=config.hint_weight
    )


@torch.no_grad()
def exit_accuracies(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512, device: str = "cpu") -> tuple[float, ...]:
    """(K,) per-exit accuracy of `model` in eval mode on arrays x (N, ...) and y (N,)."""
    was_training = model.training
    model.eval()
    correct = None
    try:
        for start in range(0, len(y), batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], device=device)
            yb = torch.as_tensor(y[start:start + batch_size], device=device)
            hits = [int((out.argmax(1) == yb).sum()) for out in model(xb)]
            correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
    finally:
        model.train(was_training)
    return tuple(c / max(len(y), 1) for c in (correct or []))


def _make_optimizer(params, config: TrainConfig, steps_per_epoch: int):
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    else:  # epoch milestones, stepped per batch
        milestones = [m * steps_per_epoch for m in config.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    return opt, sched


# --------------------------------------------------------------------------- training
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


def train_model(
    arch: str,
    data: str = "digits",
    out: str | os.PathLike = "model.pt",
    *,
    arch_kwargs: dict | None = None,
    main: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    trust: bool = False,
    progress: bool = True,
    log=None,
    dataset=None,
    init_state: dict | None = None,
    checkpoint_extra: dict | None = None,
) -> TrainResult:
    """Train `arch` on the train split of `data`, keep the best deepest-exit val checkpoint.

    Args:
        arch: registered model name (`tradeoff.models.list_models()`) or pkg.module:builder.
        data: dataset spec (digits | cifar100:DIR | cifar10:DIR | npz:PATH).
        out: checkpoint path (tradeoff format); its directory is created if missing.
        arch_kwargs: extra builder arguments (e.g. {"width_fraction": 0.5}, {"tap": 2}).
        main: SideNet only: the trained MainNet checkpoint, frozen while the side head learns.
        config: settings; default `default_config(data)` (paper's CIFAR schedule / short one).
        trust: allow unpickling `main` (only for files you trust).
        progress: show a tqdm bar on stderr.
        log: callable taking one line of progress text (default: none; `tradeoff train` prints them).
        dataset: an already loaded `tradeoff.data.Dataset` with train and val rows (tests).
        init_state: a state_dict loaded (strictly) into the built model before training
            (DAN's fine-tune of its derived network, `tradeoff.dan_search`).
        checkpoint_extra: plain values stored in the checkpoint beside the training record.

    Returns:
        TrainResult with the best epoch's per-exit val accuracies.

    Raises:
        ValueError / FileNotFoundError / PermissionError: bad arch, data, --main or --out.
    """
    from tqdm import tqdm

    from tradeoff.checkpoint import save_checkpoint

    from tradeoff.models import resolve_builder

    log = log or (lambda line: None)
    resolve_builder(arch)  # an unknown name fails before anything is created
    out = _check_out_path(out)
    if dataset is None:
        from tradeoff.data import load_data

        dataset = load_data(data, splits=("train", "val"))
    config = config or default_config(dataset.name)
    _validate_config(config)
    train_rows = dataset.split == "train"
    val_rows = dataset.split == "val"
    if not train_rows.any():
        raise ValueError(f"--data {dataset.spec} has no 'train' rows; training needs a train split")
    if not val_rows.any():
        raise ValueError(f"--data {dataset.spec} has no 'val' rows; the best checkpoint is chosen on val")
    x_train = torch.as_tensor(dataset.x[train_rows])
    y_train = torch.as_tensor(dataset.y[train_rows])
    x_val, y_val = dataset.x[val_rows], dataset.y[val_rows]

    model, built_kwargs = build_model(arch, dataset, arch_kwargs=arch_kwargs, main=main, trust=trust, seed=config.seed)
    if init_state is not None:
        model.load_state_dict(init_state)
    num_exits = check_model_fits(model, arch, dataset)
    device = torch.device(config.device)
    model.to(device)
    objective = _objective(model)
    # The kept checkpoint is chosen on the deepest exit's val accuracy; a SideNet's deepest
    # exit is its frozen MainNet, so there the side head (exit 1) is what training changes.
    select = 0 if objective == "sidenet" else -1
    selected_by = "side-head val accuracy" if select == 0 else "deepest-exit val accuracy"
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model {arch!r} has no trainable parameters")
    n = len(y_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    optimizer, scheduler = _make_optimizer(params, config, steps_per_epoch)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    aug_gen = torch.Generator().manual_seed(config.seed + 1)

    best_acc, best_epoch, best_val = -1.0, 0, ()
    val_history, loss_history = [], []
    started = time.perf_counter()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc=f"train {arch}", unit="step", disable=not progress,
               file=sys.stderr, leave=False)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=shuffle_gen)
            total, seen = 0.0, 0
            for start in range(0, n, config.batch_size):
                idx = order[start:start + config.batch_size]
                xb = _augment(x_train[idx], config.augment, aug_gen).to(device)
                yb = y_train[idx].to(device)
                loss = _batch_loss(model, objective, xb, yb, config)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"training diverged at epoch {epoch} (loss {float(loss)}); lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update(1)
            accs = exit_accuracies(model, x_val, y_val, device=str(device))
            val_history.append(accs)
            loss_history.append(total / seen)
            improved = accs[select] > best_acc
            if improved:
                best_acc, best_epoch, best_val = accs[select], epoch, accs
                _save(save_checkpoint, out, model, arch, built_kwargs, dataset, config, epoch, accs, selected_by,
                      checkpoint_extra)
            shown = " ".join(f"{a * 100:5.1f}" for a in accs)
            log(f"epoch {epoch:3d}/{config.epochs}  loss {total / seen:.4f}  val acc per exit [{shown}]%"
                + ("  * saved" if improved else ""))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return TrainResult(
        path=out, arch=arch, epochs=config.epochs, best_epoch=best_epoch, best_val_accuracy=tuple(best_val),
        val_history=tuple(val_history), loss_history=tuple(loss_history), config=config, seconds=seconds,
        trainable_params=sum(p.numel() for p in params), selected_by=selected_by,
        extra={"num_exits": num_exits, "objective": objective},
    )


def _save(save_checkpoint, out, model, arch, arch_kwargs, dataset, config, epoch, accs, selected_by,
          more=None) -> None:
    """Write the checkpoint atomically (save_checkpoint goes through fileio.atomic_open)."""
    extra = {
        **(more or {}),
        "epoch": epoch,
        "val_accuracy": [float(a) for a in accs],
        "selected_by": selected_by,
        "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "data_fingerprint": dataset.fingerprint,
    }
    kwargs = {k: v for k, v in arch_kwargs.items() if k != "num_classes"}  # stored on its own
    save_checkpoint(out, model, arch=arch, arch_kwargs=kwargs, num_classes=int(dataset.num_classes),
                    data=dataset.spec, extra=extra)
