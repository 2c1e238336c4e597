"""`tradeoff train`: train a multi-exit network the way its paper does, in one process or many.

The objective (`training.objective`) belongs to the model family (`model.training_loss`: SCAN self-distillation in
`models/scan.py`, AN's joint loss in `models/adjoined.py`, SideNet's side-head cross-entropy
in `models/sidenet.py`); `TrainConfig.loss` may replace it by SCAN's self-distillation or by
the plain summed cross-entropy for any multi-exit model. This loop only calls it.

Under torchrun (`tradeoff.cache.shard.detect_torchrun`) the same loop runs in every process
with PyTorch's DistributedDataParallel: each process takes global_batch / N rows of every
global batch (`training.distributed`), gradients are averaged, losses and validation
counts are summed over processes, and rank 0 alone writes files and reports. Without
BatchNorm in training mode (or with `--sync-bn` on CUDA) N processes compute the
one-process run's steps to float rounding; with per-process BatchNorm each process
normalises with its own rows' statistics, as DDP always does.

The checkpoint kept is the epoch with the best validation score (`TrainConfig.select`);
the test split is never loaded here. After every epoch rank 0 also writes the resume state
(`training.resume`). Everything random comes from `seed` and the epoch number.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tradeoff.cache.shard import step
from tradeoff.training import distributed as D
from tradeoff.training.build import build_model, check_model_fits, check_out_path
from tradeoff.training.objective import Objective, objective_name
from tradeoff.training.resume import identity, load_resume, resume_path, save_resume
from tradeoff.training.schedules import (  # noqa: F401 - TrainConfig, default_config: this module's public API
    SMALL_CONFIG,
    TrainConfig,
    augment,
    default_config,
    make_optimizer,
    validate_config,
)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training; the message says what was kept and how to resume."""


class TrainingStepFailed(RuntimeError):
    """A training step failed in THIS process only (the others may wait inside a collective,
    so it must not wait for them: torchrun ends them once this process exits)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        path: the checkpoint written (the best epoch by `selected_by`).
        arch: registered model name.
        epochs: epochs of the schedule.
        best_epoch: 1-based epoch whose weights were kept.
        best_val_accuracy: (K,) per-exit val accuracy at `best_epoch`, shallow -> deep.
        val_history: per epoch, the (K,) per-exit val accuracies.
        loss_history: per epoch, the mean training loss (over every process's rows).
        config: the settings used.
        seconds: wall time of the training loop (including the interrupted part of a resumed run).
        trainable_params, selected_by, extra: as recorded in the checkpoint.
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
    selected_by: str = "mean val accuracy over exits"
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def exit_accuracies(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512,
                    device: str | torch.device = "cpu", place: D.Placement | None = None) -> tuple[float, ...]:
    """(K,) per-exit accuracy of `model` in eval mode on arrays x (N, ...) and y (N,).

    With `place` under torchrun each process scores a contiguous 1/N of the rows and the
    correct counts are summed, so every process returns the whole set's accuracy.
    """
    lo, hi = 0, len(y)
    if place is not None and place.ctx is not None:
        cuts = np.linspace(0, len(y), place.world_size + 1).round().astype(int)
        lo, hi = int(cuts[place.rank]), int(cuts[place.rank + 1])
    was_training = model.training
    model.eval()
    correct = None
    try:
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            xb = torch.as_tensor(x[start:stop], device=device)
            yb = torch.as_tensor(y[start:stop], device=device)
            hits = [int((out.argmax(1) == yb).sum()) for out in model(xb)]
            correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
        if place is not None and place.ctx is not None:
            if correct is None:  # more processes than val rows: this one scored nothing
                correct = [0] * len(model(torch.as_tensor(x[:1], device=device)))
            correct = D.sum_across(place, correct)
    finally:
        model.train(was_training)
    return tuple(c / max(len(y), 1) for c in (correct or []))


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
    dist=None,
    dist_device: str | None = None,
    resume: str | os.PathLike | None = None,
) -> TrainResult:
    """Train `arch` on the train split of `data`, keep the best val checkpoint.

    Args:
        arch: registered model name (`tradeoff.models.list_models()`) or pkg.module:builder.
        data: dataset spec (digits | cifar100:DIR | cifar10:DIR | npz:PATH).
        out: checkpoint path (tradeoff format); its directory is created if missing.
        arch_kwargs: extra builder arguments (e.g. {"width_fraction": 0.5}, {"tap": 2}).
        main: SideNet only: the trained MainNet checkpoint, frozen while the side head learns.
        config: settings; default `default_config(data)` (paper's CIFAR schedule / short one).
        trust: allow unpickling `main` (only for files you trust).
        progress: show a tqdm bar on stderr (rank 0, on a terminal).
        log: callable taking one line of progress text (default: none; `tradeoff train` prints them).
        dataset: an already loaded `tradeoff.data.Dataset` with train and val rows (tests).
        init_state: a state_dict loaded (strictly) into the built model before training
            (DAN's fine-tune of its derived network, `tradeoff.training.dan`).
        checkpoint_extra: plain values stored in the checkpoint beside the training record.
        dist: the torchrun context (`cache.shard.detect_torchrun()`), inside its
            `cache.shard.process_group`; None for one process.
        dist_device: this process's device from `process_group` (cuda:LOCAL_RANK or cpu).
        resume: a `<out stem>.resume.pt` file to continue from (`training.resume`).

    Returns:
        TrainResult with the best epoch's per-exit val accuracies (on every process).

    Raises:
        ValueError / FileNotFoundError / PermissionError: bad arch, data, --main, --out,
            --resume, or a torchrun job the global batch cannot be split over.
        TrainingInterrupted: Ctrl-C; its message names the checkpoints kept.
    """
    from tqdm import tqdm

    from tradeoff.checkpoint import save_checkpoint
    from tradeoff.models import resolve_builder

    log = log or (lambda line: None)
    config = config or (default_config(dataset.name) if dataset is not None else None)
    device_name = dist_device or (config.device if config else "cpu")
    with step(dist, device_name):
        resolve_builder(arch)  # an unknown name fails before anything is created
        if dist is None or dist.is_main:
            out = check_out_path(out)
        out = Path(out)
        if dataset is None:
            from tradeoff.data import load_data

            dataset = load_data(data, splits=("train", "val"))
        config = config or default_config(dataset.name)
        if dist_device is not None:
            from dataclasses import replace

            config = replace(config, device=dist_device)
        validate_config(config)
        train_rows, val_rows = dataset.split == "train", dataset.split == "val"
        if not train_rows.any():
            raise ValueError(f"--data {dataset.spec} has no 'train' rows; training needs a train split")
        if not val_rows.any():
            raise ValueError(f"--data {dataset.spec} has no 'val' rows; the best checkpoint is chosen on val")
        x_train, y_train = torch.as_tensor(dataset.x[train_rows]), torch.as_tensor(dataset.y[train_rows])
        x_val, y_val = dataset.x[val_rows], dataset.y[val_rows]
        world = 1 if dist is None else dist.world_size
        place = D.Placement(dist, torch.device(config.device), D.per_rank_batch(config.batch_size, world, len(y_train)))
        if config.sync_bn and dist is None:
            raise ValueError("--sync-bn synchronises BatchNorm across torchrun processes; this is a single process")

        model, built_kwargs = build_model(arch, dataset, arch_kwargs=arch_kwargs, main=main, trust=trust,
                                          seed=config.seed)
        if init_state is not None:
            model.load_state_dict(init_state)
        num_exits = check_model_fits(model, arch, dataset)
        if config.sync_bn:
            D.use_sync_batchnorm(model)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(place.device, memory_format=memory_format)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"model {arch!r} has no trainable parameters")
        steps_per_epoch = len(D.rank_batches(len(y_train), place, config.seed, 1))
        optimizer, scheduler = make_optimizer(params, config, steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda") if config.amp else None
        config_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}
        who = identity(arch, built_kwargs, dataset.fingerprint, config_dict)
        best = {"score": -1.0, "epoch": 0, "val": []}
        val_history, loss_history, first_epoch, seconds_before = [], [], 1, 0.0
        if resume is not None:
            state = load_resume(resume, who)
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict({**scheduler.state_dict(), **state.scheduler})
            if scaler is not None and state.scaler:
                scaler.load_state_dict(state.scaler)
            best, first_epoch, seconds_before = dict(state.best), state.epoch + 1, state.seconds
            val_history, loss_history = [tuple(v) for v in state.val_history], list(state.loss_history)
            if best["epoch"] and place.is_main and not out.is_file():
                raise FileNotFoundError(f"--resume {resume}: the best checkpoint so far ({out}, epoch {best['epoch']}) "
                                        "is missing; resume with the interrupted run's --out")
    objective = Objective(model, config)
    trainer = D.wrap_ddp(objective, place)
    select = -1 if config.select == "deepest" else slice(None)
    selected_by = "deepest-exit val accuracy" if config.select == "deepest" else "mean val accuracy over exits"
    record = {"world_size": world, "global_batch_size": config.batch_size, "per_process_batch_size": place.local_batch,
              "objective": objective_name(model, config), "selected_by": selected_by}
    save_to, kept = resume_path(out), first_epoch - 1
    started = time.perf_counter()
    show = progress and place.is_main and sys.stderr.isatty()
    bar = tqdm(total=(config.epochs - first_epoch + 1) * steps_per_epoch, desc=f"train {arch}", unit="step",
               disable=not show, file=sys.stderr, leave=False)
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            aug_gen = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
            total, seen = 0.0, 0
            for idx, draws, take in D.rank_batches(len(y_train), place, config.seed, epoch):
                try:
                    xb = augment(x_train[idx], config.augment, aug_gen, draws=draws, take=take)
                    xb = xb.to(place.device, memory_format=memory_format)
                    loss = _step(trainer, xb, y_train[idx].to(place.device), optimizer, scaler, epoch)
                except (ValueError, TypeError, RuntimeError) as exc:
                    if dist is not None and isinstance(exc, torch.distributed.DistError):
                        raise TrainingStepFailed(
                            f"stopped during epoch {epoch}: another process of this job failed (its own line says "
                            f"why); {_kept(kept, out, save_to, best)}") from None
                    raise TrainingStepFailed(" ".join(str(exc).split()) or type(exc).__name__) from None
                scheduler.step()
                total += loss * len(idx)
                seen += len(idx)
                bar.update(1)
            total, seen = D.sum_across(place, [total, seen])
            D.broadcast_buffers(place, model)
            accs = exit_accuracies(model, x_val, y_val, device=place.device, place=place)
            val_history.append(accs)
            loss_history.append(total / seen)
            score = float(np.mean(accs[select]))
            improved = score > best["score"]
            now_best = {"score": score, "epoch": epoch, "val": list(accs)} if improved else best
            with step(dist, device_name):  # rank 0 writes; a failed write stops every rank
                if place.is_main:
                    if improved:
                        _save(save_checkpoint, out, model, arch, built_kwargs, dataset, config_dict, epoch, accs,
                              {**(checkpoint_extra or {}), **record})
                    save_resume(save_to, who=who, epoch=epoch, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, best=now_best, val_history=val_history,
                                loss_history=loss_history, world_size=world,
                                seconds=seconds_before + time.perf_counter() - started)
                # at once: an interrupt must name what the files on disk hold
                best, kept = now_best, epoch
            shown = " ".join(f"{a:.4f}" for a in accs)  # fractions, as everywhere (report.documents.accuracy_text)
            log(f"epoch {epoch:3d}/{config.epochs}  loss {total / seen:.4f}  val acc per exit [{shown}]"
                + ("  * saved" if improved else ""))
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(kept, config.epochs, out, save_to, best)) from None
    finally:
        bar.close()
    if place.is_main:  # finished: nothing left to resume
        save_to.unlink(missing_ok=True)
    return TrainResult(
        path=out, arch=arch, epochs=config.epochs, best_epoch=best["epoch"], best_val_accuracy=tuple(best["val"]),
        val_history=tuple(val_history), loss_history=tuple(loss_history), config=config,
        seconds=seconds_before + time.perf_counter() - started, trainable_params=sum(p.numel() for p in params),
        selected_by=selected_by, extra={"num_exits": num_exits, **record},
    )


def _step(trainer, xb, yb, optimizer, scaler, epoch: int) -> float:
    """One optimizer step (DDP averages the gradients inside backward); returns the loss."""
    loss = trainer(xb, yb)
    if not torch.isfinite(loss):
        raise RuntimeError(f"training diverged at epoch {epoch} (loss {float(loss)}); lower --lr")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.item()


def _kept(kept: int, out: Path, save_to: Path, best: dict) -> str:
    if kept == 0:
        return "no epoch had finished, so nothing was kept"
    return (f"kept {save_to} (the end of epoch {kept}) and {out} (best so far: epoch {best['epoch']}); "
            f"continue with the same command plus --resume {save_to}")


def _interrupted(kept: int, epochs: int, out: Path, save_to: Path, best: dict) -> str:
    return f"interrupted during epoch {kept + 1} of {epochs}; {_kept(kept, out, save_to, best)}"


def _save(save_checkpoint, out, model, arch, arch_kwargs, dataset, config_dict, epoch, accs, more) -> None:
    """Write the checkpoint atomically (save_checkpoint goes through fileio.atomic_open)."""
    extra = {
        **more,
        "epoch": epoch,
        "val_accuracy": [float(a) for a in accs],
        "train_config": config_dict,
        "data_fingerprint": dataset.fingerprint,
    }
    kwargs = {k: v for k, v in arch_kwargs.items() if k != "num_classes"}  # stored on its own
    save_checkpoint(out, model, arch=arch, arch_kwargs=kwargs, num_classes=int(dataset.num_classes),
                    data=dataset.spec, extra=extra)
