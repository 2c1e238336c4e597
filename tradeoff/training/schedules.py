"""How to train: settings (`TrainConfig`), the papers' schedules, optimizers, augmentation.

`CIFAR_CONFIG` is SCAN's CIFAR recipe (SGD 0.1, momentum 0.9, weight decay 5e-4, lr / 10
at epochs 75, 130, 180 of 200, pad-4 crop + flip); `SMALL_CONFIG` the short one measured
on the embedded digits. Augmentation draws its random numbers for the GLOBAL batch and each
process keeps its own rows' draws (`augment`), so a torchrun job of N processes augments
every sample exactly as one process with the same global batch would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from tradeoff.models.scan import DEFAULT_ALPHA, DEFAULT_HINT_WEIGHT, DEFAULT_TEMPERATURE

LOSSES = ("family", "scan", "ce")
SELECTIONS = ("mean", "deepest")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `default_config` picks the paper's CIFAR schedule or the digits one.

    Attributes:
        epochs: passes over the train split.
        batch_size: samples per optimizer step over ALL processes (the global batch); a
            torchrun job of N processes gives each batch_size / N of them.
        optimizer: "sgd" (momentum) or "adam".
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (coupled, as torch's SGD / Adam do).
        schedule: "step" (lr / 10 at each of `milestones` epochs), "cosine" or "onecycle"
            (torch's OneCycleLR: warm up to `lr` over the first 30% of steps, then anneal).
        milestones: epochs at which the step schedule divides lr by 10.
        augment: "crop_flip" (CIFAR: pad 4 + random crop + horizontal flip), "shift"
            (random shift of up to 1 pixel, no flip: flips break digits) or "none".
        loss: "family" (the model family's own objective, `model.training_loss`: SCAN
            self-distillation for scan_*, AN's joint loss for adjoined_*, the side head's
            cross-entropy for sidenet), "scan" (SCAN's self-distillation on any multi-exit
            model) or "ce" (`summed_cross_entropy`: every exit's cross-entropy, summed).
        select: which epoch's weights to keep, chosen on val: "mean" (default: the best mean
            accuracy over ALL exits, because an early-exit cascade answers with every exit and
            a deepest-only rule may keep an epoch whose shallow exits are worse) or "deepest"
            (the deepest exit alone, SCAN's and the single-exit habit).
        temperature, alpha, hint_weight: SCAN / Adjoined loss settings (`models.scan.scan_loss`).
        seed: seeds the weights, the shuffling and the augmentation.
        device: torch device name.
        amp: CUDA mixed precision (float16 autocast + gradient scaling).
        sync_bn: SyncBatchNorm across processes (CUDA torchrun jobs only).
        channels_last: train with weights and batches in channels-last memory order
            (faster convolutions on CPU; the values are the same).
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
    loss: str = "family"
    select: str = "mean"
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    hint_weight: float = DEFAULT_HINT_WEIGHT
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    sync_bn: bool = False
    channels_last: bool = False


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


# MNIST-layout data (Fashion-MNIST, 60,000 28x28 training images) with `scan_cnn`: a few
# epochs of Adam under a one-cycle schedule, batch 256, channels-last. Measured (issue 10, 1
# thread of a shared 2-core machine, ~1,490 img/s): 202 s, test accuracy 89.1 / 91.1 / 91.3%.
MNIST_CONFIG = TrainConfig(
    epochs=5, batch_size=256, optimizer="adam", lr=4e-3, weight_decay=0.0, schedule="onecycle", augment="none",
    channels_last=True,
)
MNIST_DATA_NAMES = ("fashion-mnist", "mnist")


def default_config(data_name: str, **overrides) -> TrainConfig:
    """The paper's CIFAR schedule for CIFAR data, a one-cycle one for MNIST-layout data, the
    short digits one otherwise; then `overrides`.

    `None` values in `overrides` mean "keep the default" (as the CLI passes them).
    """
    if data_name.startswith("cifar"):
        base = CIFAR_CONFIG
    else:
        base = MNIST_CONFIG if data_name in MNIST_DATA_NAMES else SMALL_CONFIG
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; known: {sorted(TrainConfig.__dataclass_fields__)}")
    config = replace(base, **given)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the flag of the first bad setting."""
    if config.epochs < 1:
        raise ValueError(f"--epochs must be >= 1; got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {config.batch_size}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"--lr must be a positive number; got {config.lr}")
    if config.optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {config.optimizer!r}")
    if config.schedule not in ("step", "cosine", "onecycle"):
        raise ValueError(f"schedule must be 'step', 'cosine' or 'onecycle'; got {config.schedule!r}")
    if config.augment not in ("crop_flip", "shift", "none"):
        raise ValueError(f"augment must be 'crop_flip', 'shift' or 'none'; got {config.augment!r}")
    if config.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}; got {config.loss!r}")
    if config.select not in SELECTIONS:
        raise ValueError(f"--select must be one of {', '.join(SELECTIONS)}; got {config.select!r}")
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
    if config.amp and device.type != "cuda":
        raise ValueError(f"--amp is CUDA mixed precision; got --device {config.device} (train without --amp on the CPU)")
    if config.sync_bn and device.type != "cuda":
        raise ValueError(f"--sync-bn needs --device cuda (torch's SyncBatchNorm does not run on the CPU); "
                         f"got --device {config.device}")


def make_optimizer(params, config: TrainConfig, steps_per_epoch: int):
    """(optimizer, scheduler) of `config`; the scheduler steps once per batch."""
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    elif config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    else:  # epoch milestones, stepped per batch
        milestones = [m * steps_per_epoch for m in config.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    return opt, sched


# --------------------------------------------------------------------------- augmentation
def _offsets(n: int, span: int, generator: torch.Generator, take: torch.Tensor | None) -> torch.Tensor:
    """n draws in [0, span) from `generator`, then the rows `take` of them (all when None)."""
    drawn = torch.randint(0, span, (n,), generator=generator)
    return drawn if take is None else drawn[take]


def _shifted(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    _, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4)
    rows = (oy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (B, H)
    cols = (ox[:, None] + torch.arange(w)[None, :]).to(x.device)  # (B, W)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, draws: int | None = None,
                     take: torch.Tensor | None = None) -> torch.Tensor:
    """Pad by `pad` zeros, crop back at a random offset, flip half the images left-right.

    x is already normalised, so the zero padding is the dataset-mean colour (SCAN pads
    the raw image with black before normalising; the difference is immaterial).

    Args:
        x: (B, C, H, W).
        generator: the source of every random choice.
        draws: how many images the random numbers are drawn for (the global batch; default B).
        take: (B,) which of the `draws` belong to x's rows (default: all, in order).
    """
    n = x.shape[0] if draws is None else draws
    oy = _offsets(n, 2 * pad + 1, generator, take)
    ox = _offsets(n, 2 * pad + 1, generator, take)
    out = _shifted(x, pad, oy, ox)
    flip = torch.rand(n, generator=generator)
    flip = (flip if take is None else flip[take]) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out).contiguous()


def random_shift(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 1, draws: int | None = None,
                 take: torch.Tensor | None = None) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (zero fill, no flip).

    `draws` and `take` as in `random_crop_flip`.
    """
    n = x.shape[0] if draws is None else draws
    oy = _offsets(n, 2 * max_shift + 1, generator, take)
    ox = _offsets(n, 2 * max_shift + 1, generator, take)
    return _shifted(x, max_shift, oy, ox).contiguous()


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, *, draws: int | None = None,
            take: torch.Tensor | None = None) -> torch.Tensor:
    """`kind` ("crop_flip", "shift" or "none") applied to x (B, C, H, W)."""
    if kind == "crop_flip":
        return random_crop_flip(x, generator, draws=draws, take=take)
    if kind == "shift":
        return random_shift(x, generator, draws=draws, take=take)
    return x
