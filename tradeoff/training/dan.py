"""`tradeoff train --arch dan_<family>`: Differentiable Adjoined Networks (DAN) search, derivation, fine-tune.

Source: Nath, Kushagra, Yang, "Adjoined Networks: A Training Paradigm with Applications to
Network Compression" (arXiv:2006.05624): DAN learns the small network's per-layer widths
and the shared weights jointly, by differentiable architecture search. The paper gives no
code or schedule; this procedure is ours (the supernet is `tradeoff.models.dan`):

1. Search. One pass over each train batch updates the weights (the `TrainConfig`
   optimizer and schedule) and, after a warm-up of weight-only epochs, the architecture
   parameters (Adam) together, on
       AN's loss(relaxed small, large) + lambda_cost * (E[FLOPs] / target - 1)^2,
   where the relaxed small network uses softmax(alpha / tau) (or Gumbel-softmax) with tau
   annealed geometrically from `tau_start` to `tau_end`, and E[FLOPs] is the exact
   expectation under the architecture distribution softmax(alpha) (`SmallNetCost`).
2. Derivation. The most likely width per layer (argmax alpha). If that network's FLOPs
   miss the target by more than `tolerance`, single-step width moves are applied greedily,
   each time the one losing the least log-probability per FLOP gained toward the target
   (recorded as `repaired`; never silent).
3. Fine-tune. The derived network is an ordinary `AdjoinedNet` (`adjoined_<family>` with
   `small_widths`), trained briefly with AN's objective by `training.loop.train_model`, and saved
   as an ordinary Adjoined checkpoint: `cache`, `search` and `run` use it unchanged and
   fvcore counts its derived widths. The DAN record is stored under the key "dan".

Everything random comes from `TrainConfig.seed`; the validation split is used only by the
fine-tune's checkpoint choice and the test split never.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

__all__ = ["DANConfig", "DANResult", "dan_family", "repair_widths", "target_bounds", "train_dan"]


@dataclass(frozen=True)
class DANConfig:
    """DAN's search settings (the weights' settings are the `TrainConfig`).

    Attributes:
        width_choices: candidate fractions of each layer's channels, in (0, 1].
        flops_target: the small network's FLOPs (fvcore raw count); None = the FLOPs of
            AN's default small network (width 0.5 everywhere), so DAN and AN are comparable.
        lambda_cost: weight of the squared relative FLOPs error in the search loss.
        relaxation: "softmax" or "gumbel".
        tau_start, tau_end: relaxation temperature at the first and last search step.
        arch_lr: Adam learning rate of the architecture parameters.
        warmup_epochs: first search epochs in which only the weights learn (at most
            all but the last search epoch).
        finetune_epochs: epochs of AN training of the derived network.
        finetune_lr_scale: the fine-tune's learning rate relative to `TrainConfig.lr`.
        tolerance: the derived FLOPs must be within this relative distance of the target.
    """

    width_choices: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    flops_target: float | None = None
    lambda_cost: float = 5.0
    relaxation: str = "gumbel"
    tau_start: float = 1.0
    tau_end: float = 0.1
    arch_lr: float = 0.05
    warmup_epochs: int = 2
    finetune_epochs: int = 10
    finetune_lr_scale: float = 0.3
    tolerance: float = 0.05


@dataclass(frozen=True)
class DANResult:
    """What a DAN run produced.

    Attributes:
        path: the Adjoined checkpoint written.
        arch: the Adjoined family it records (e.g. "adjoined_small").
        small_widths: derived channels per width slot.
        width_fractions: the same as fractions of the large layer's channels.
        probabilities: per slot the final architecture distribution softmax(alpha).
        candidates: per slot the candidate widths (channels).
        flops_target, derived_flops, expected_flops: target, fvcore count of the derived
            small network, and E[FLOPs] under the final architecture distribution.
        large_flops: the large network's FLOPs.
        repaired: whether derivation had to move widths off the argmax to meet the target.
        search_seconds, finetune_seconds: wall time of the two phases.
        finetune: the fine-tune's `TrainResult`.
    """

    path: Path
    arch: str
    small_widths: dict
    width_fractions: dict
    probabilities: dict
    candidates: dict
    flops_target: float
    derived_flops: float
    expected_flops: float
    large_flops: float
    repaired: bool
    search_seconds: float
    finetune_seconds: float
    finetune: object


def dan_family(arch: str) -> str:
    """The Adjoined family a `dan_<family>` name searches, e.g. dan_small -> adjoined_small.

    Raises:
        ValueError: not a dan_ name, or a family without channel prefixes.
    """
    from tradeoff.models import list_models

    families = [m for m in list_models() if m.startswith("adjoined_")]
    known = ", ".join("dan_" + m[len("adjoined_"):] for m in families)
    family = arch[len("dan_"):] if arch.startswith("dan_") else ""
    if "adjoined_" + family not in families:
        raise ValueError(
            f"--arch {arch}: DAN searches the small network of an Adjoined family, whose layers have channel prefixes "
            f"shared with the large network; {family or arch!r} is not one. DAN families: {known}"
        )
    return "adjoined_" + family


def target_bounds(supernet) -> tuple[float, float, float]:
    """(smallest, widest reachable, large network) FLOPs of the small network."""
    cost = supernet.cost
    smallest = cost.exact({s.name: c[0] for s, c in zip(supernet.slots, supernet.candidates)})
    widest = cost.exact({s.name: c[-1] for s, c in zip(supernet.slots, supernet.candidates)})
    large = cost.exact({s.name: s.channels for s in supernet.slots})
    return smallest, widest, large


def _check_target(supernet, target: float) -> None:
    smallest, widest, large = target_bounds(supernet)
    choices = ",".join(f"{f:g}" for f in supernet.width_choices)
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
        raise ValueError(f"--flops-target must be a positive number of FLOPs; got {target!r}")
    if target < smallest * (1 - 1e-9):
        raise ValueError(
            f"--flops-target {target:.4g} is below the smallest small network the width choices {choices} allow "
            f"({smallest:.4g} FLOPs, every layer at its narrowest); raise the target or add a smaller width choice"
        )
    if target > large * (1 + 1e-9):
        raise ValueError(
            f"--flops-target {target:.4g} is above the large network's {large:.4g} FLOPs; the small network must "
            f"cost less than the large one"
        )
    if target > widest * (1 + 1e-9):
        raise ValueError(
            f"--flops-target {target:.4g} is above the widest small network the width choices {choices} allow "
            f"({widest:.4g} FLOPs); lower the target or add a wider width choice"
        )


def repair_widths(supernet, widths: dict[str, int], target: float, tolerance: float) -> tuple[dict[str, int], bool]:
    """Move derived widths one candidate at a time until FLOPs are within `tolerance` of `target`.

    Each move is the one-step change of one slot toward the target with the least loss of
    log-probability per FLOP it moves; a move landing inside the band is preferred.

    Returns:
        (widths, repaired): `repaired` is False when the argmax already met the target.
    """
    cost = supernet.cost
    logp = [torch.log_softmax(a.detach(), 0) for a in supernet.arch_params]
    index = [supernet.candidates[i].index(widths[s.name]) for i, s in enumerate(supernet.slots)]
    names = [s.name for s in supernet.slots]

    def flops(idx):
        return cost.exact({n: supernet.candidates[i][k] for i, (n, k) in enumerate(zip(names, idx))})

    def inside(f):
        return abs(f / target - 1.0) <= tolerance

    current = flops(index)
    repaired = False
    for _ in range(sum(len(c) for c in supernet.candidates) * 2):
        if inside(current):
            break
        step = -1 if current > target else 1
        moves = []
        for i, k in enumerate(index):
            if 0 <= k + step < len(supernet.candidates[i]):
                trial = index[:i] + [k + step] + index[i + 1:]
                f = flops(trial)
                loss = float(logp[i][k] - logp[i][k + step])
                moves.append((not inside(f), loss / max(abs(current - f), 1e-12), trial, f))
        if not moves:
            break
        _, _, index, current = min(moves, key=lambda m: (m[0], m[1]))
        repaired = True
    return {n: supernet.candidates[i][k] for i, (n, k) in enumerate(zip(names, index))}, repaired


class _SearchStep(torch.nn.Module):
    """One search step's loss as a module, so DistributedDataParallel averages the gradients of
    the weights AND the architecture parameters (every process draws the same Gumbel noise)."""

    def __init__(self, supernet, config, dan: DANConfig, target: float) -> None:
        super().__init__()
        self.supernet, self.config, self.dan, self.target = supernet, config, dan, target

    def forward(self, x, y, tau: float, searching: bool, generator):
        from tradeoff.models.adjoined import adjoined_loss

        probs = self.supernet.probabilities(tau, relaxation=self.dan.relaxation, generator=generator)
        loss = adjoined_loss(self.supernet(x, probs), y, temperature=self.config.temperature)
        expected = self.supernet.expected_flops(self.supernet.probabilities(1.0))
        cost = self.dan.lambda_cost * (expected / self.target - 1.0) ** 2
        return loss + cost if searching else loss + 0.0 * cost, expected.detach()


def _search(supernet, x_train, y_train, config, dan: DANConfig, target: float, *, progress: bool, log,
            place=None) -> float:
    """Joint training of weights and architecture parameters; returns the search wall seconds.

    Under torchrun (`place`) each process takes its share of every global batch, as
    `training.loop` does (`training.distributed`).
    """
    import numpy as np
    from tqdm import tqdm

    from tradeoff.training import distributed as D
    from tradeoff.training.schedules import augment, make_optimizer

    place = place or D.Placement(None, torch.device("cpu"), config.batch_size)
    n = len(y_train)
    steps_per_epoch = len(D.rank_batches(n, place, config.seed, 1))
    w_opt, w_sched = make_optimizer(supernet.weight_parameters(), config, steps_per_epoch)
    a_opt = torch.optim.Adam(supernet.architecture_parameters(), lr=dan.arch_lr, betas=(0.5, 0.999))
    gumbel_gen = torch.Generator().manual_seed(config.seed + 2)
    step_module = D.wrap_ddp(_SearchStep(supernet, config, dan, target), place)
    warmup = min(dan.warmup_epochs, config.epochs - 1)  # at least one epoch searches
    arch_steps = max(1, (config.epochs - warmup) * steps_per_epoch)
    arch_step = 0
    started = time.perf_counter()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="DAN search", unit="step", file=sys.stderr, leave=False,
               disable=not (progress and place.is_main and sys.stderr.isatty()))
    try:
        for epoch in range(1, config.epochs + 1):
            supernet.train()
            searching = epoch > warmup
            aug_gen = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
            total = seen = 0.0
            for idx, draws, take in D.rank_batches(n, place, config.seed, epoch):
                xb = augment(x_train[idx], config.augment, aug_gen, draws=draws, take=take)
                tau = dan.tau_start * (dan.tau_end / dan.tau_start) ** min(arch_step / arch_steps, 1.0)
                loss, expected = step_module(xb, y_train[idx], tau, searching, gumbel_gen)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"DAN search diverged at epoch {epoch} (loss {float(loss)}); lower --lr")
                w_opt.zero_grad(set_to_none=True)
                a_opt.zero_grad(set_to_none=True)
                loss.backward()
                w_opt.step()
                w_sched.step()
                if searching:
                    a_opt.step()
                    arch_step += 1
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update(1)
            total, seen = D.sum_across(place, [total, seen])
            D.broadcast_buffers(place, supernet)
            log(f"search epoch {epoch:3d}/{config.epochs}  loss {total / seen:.4f}  tau {tau:.3f}  "
                f"E[FLOPs] {float(expected) / 1e6:.3f} M (target {target / 1e6:.3f} M)"
                + ("" if searching else "  (warm-up: weights only)"))
    finally:
        bar.close()
    return time.perf_counter() - started


def train_dan(arch: str, data: str = "digits", out: str | os.PathLike = "model.pt", *, config=None,
              dan: DANConfig | None = None, progress: bool = True, log=None, dataset=None, dist=None,
              dist_device: str | None = None) -> DANResult:
    """DAN on `arch` = dan_<family>: search, derive, fine-tune, save an Adjoined checkpoint.

    Args:
        arch: "dan_small", "dan_resnet18", ... (the Adjoined family adjoined_<family>).
        data: dataset spec; the train split trains, the val split picks the fine-tune epoch.
        out: checkpoint path (tradeoff format, arch adjoined_<family> with `small_widths`).
        config: the weights' `TrainConfig` (`epochs` = search epochs); default per data.
        dan: DAN's settings (`DANConfig`).
        progress: tqdm bars on a terminal.
        log: callable taking one line of progress text (default: none; `tradeoff train` prints them).
        dataset: an already loaded `Dataset` with train and val rows.
        dist, dist_device: the torchrun context and this process's device, as for
            `training.loop.train_model` (the search and the fine-tune both run data-parallel).

    Returns:
        DANResult.

    Raises:
        ValueError: not a DAN family, bad width choices, a FLOPs target out of reach, bad data.
        PermissionError: `out` is not writable (checked before any training).
    """
    from tradeoff.flops import exit_costs
    from tradeoff.models.dan import DANSupernet, check_width_choices, derive_widths, derived_network, small_width
    from tradeoff.training.build import build_model, check_out_path
    from tradeoff.training.loop import train_model
    from tradeoff.training.schedules import default_config, validate_config

    from tradeoff.cache.shard import step
    from tradeoff.training import distributed as D

    log = log or (lambda line: None)
    dan = dan or DANConfig()
    family = dan_family(arch)
    choices = check_width_choices(dan.width_choices)
    if dan.finetune_epochs < 1:
        raise ValueError(f"--finetune-epochs must be >= 1; got {dan.finetune_epochs}")
    if not (dan.lambda_cost >= 0 and math.isfinite(dan.lambda_cost)):
        raise ValueError(f"--lambda-cost must be a finite number >= 0; got {dan.lambda_cost}")
    with step(dist, dist_device or "cpu"):  # a bad setting fails every process together
        if dist is None or dist.is_main:
            out = check_out_path(out)
        if dataset is None:
            from tradeoff.data import load_data

            dataset = load_data(data, splits=("train", "val"))
        config = config or default_config(dataset.name)
        validate_config(config)
        train_rows = dataset.split == "train"
        if not train_rows.any() or not (dataset.split == "val").any():
            raise ValueError(f"--data {dataset.spec} needs 'train' and 'val' rows for DAN")
        world = 1 if dist is None else dist.world_size
        place = D.Placement(dist, torch.device(dist_device or config.device),
                            D.per_rank_batch(config.batch_size, world, int(train_rows.sum())))
        adjoined, _ = build_model(family, dataset, seed=config.seed)
        supernet = DANSupernet(adjoined.large, choices)
        if dan.flops_target is None:
            target = supernet.cost.exact({s.name: small_width(s.channels, 0.5) for s in supernet.slots})
        else:
            target = float(dan.flops_target)
        _check_target(supernet, target)
    log(f"DAN on {family}: {len(supernet.slots)} width slots x choices {','.join(f'{f:g}' for f in choices)}, "
        f"target {target:.4g} FLOPs")
    x_train = torch.as_tensor(dataset.x[train_rows])
    y_train = torch.as_tensor(dataset.y[train_rows])
    search_seconds = _search(supernet, x_train, y_train, config, dan, target, progress=progress, log=log, place=place)

    widths, repaired = repair_widths(supernet, derive_widths(supernet), target, dan.tolerance)
    derived = derived_network(supernet, widths)
    derived_flops = float(exit_costs(derived, tuple(dataset.input_shape)).flops[0])
    if not math.isclose(derived_flops, supernet.cost.exact(widths), rel_tol=1e-9):
        raise RuntimeError(f"DAN's cost model ({supernet.cost.exact(widths):.6g}) disagrees with fvcore "
                           f"({derived_flops:.6g}) on {family}; please report this")
    _, _, large_flops = target_bounds(supernet)
    with torch.no_grad():
        probs = supernet.probabilities(1.0)
        expected = float(supernet.expected_flops(probs))
    fractions = {s.name: widths[s.name] / s.channels for s in supernet.slots}
    met = abs(derived_flops / target - 1.0) <= dan.tolerance
    log(f"derived widths ({'repaired toward the target' if repaired else 'argmax'}): "
        + " ".join(f"{k}={v}" for k, v in widths.items())
        + f"; {derived_flops:.4g} FLOPs = {derived_flops / target:.3f} x target")
    if not met:
        log(f"WARNING: no combination of the width choices reached within {dan.tolerance:.0%} of the target; "
            f"the derived network costs {derived_flops:.4g} FLOPs for a target of {target:.4g}")
    record = {
        "method": "Differentiable Adjoined Networks (Nath et al., arXiv:2006.05624)",
        "width_choices": list(choices), "flops_target": target, "derived_flops": derived_flops,
        "expected_flops": expected, "large_flops": large_flops, "target_met": bool(met), "repaired": bool(repaired),
        "lambda_cost": dan.lambda_cost, "relaxation": dan.relaxation, "search_epochs": config.epochs,
        "small_widths": dict(widths),
        "architecture_probabilities": {s.name: [float(v) for v in p] for s, p in zip(supernet.slots, probs)},
        "candidates": {s.name: list(c) for s, c in zip(supernet.slots, supernet.candidates)},
        "search_seconds": search_seconds,
    }
    fine = replace(config, epochs=dan.finetune_epochs, lr=config.lr * dan.finetune_lr_scale)
    result = train_model(family, dataset.spec, out, arch_kwargs={"small_widths": dict(widths)}, config=fine,
                         progress=progress, log=log, dataset=dataset, init_state=derived.state_dict(),
                         checkpoint_extra={"dan": record}, dist=dist, dist_device=dist_device)
    return DANResult(
        path=result.path, arch=family, small_widths=dict(widths), width_fractions=fractions,
        probabilities=record["architecture_probabilities"], candidates=record["candidates"], flops_target=target,
        derived_flops=derived_flops, expected_flops=expected, large_flops=large_flops, repaired=repaired,
        search_seconds=search_seconds, finetune_seconds=result.seconds, finetune=result,
    )
