"""Building an exit cache from a model: one forward pass per batch yields every exit.

`build_cache` turns a model and a dataset into a cache; `cache_checkpoint` is the whole of
`tradeoff cache` as a library function (checkpoint and data loading, reuse of an existing
cache, sharding under torchrun); `tradeoff.commands.cache` adds the flags and the printing.
The NumPy half of the format (validation, reading, atomic writing) is `tradeoff.cache.format`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from tradeoff.cache import shard
from tradeoff.cache.format import ExitCache, load_cache, make_meta, validate_cache, write_cache
from tradeoff.errors import first_line, is_integer
from tradeoff.fileio import output_stamp

LOGITS_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Meta fields that may differ between runs that produced the same cache.
INFORMATIONAL_META = ("created", "world_size")


def build_cache(
    model,
    dataset,
    costs,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    logits_dtype: str = "float32",
    progress: bool = True,
    meta: dict | None = None,
) -> ExitCache:
    """Run `model` once over `dataset` and keep every exit's logits, with their costs.

    One forward pass per batch yields all K exits (never K passes), under
    `torch.inference_mode()` with the model in eval mode (its mode is restored after).

    Args:
        model: a multi-exit `nn.Module` whose forward returns K logits tensors (B, C),
            shallow -> deep. It is moved to `device`.
        dataset: a `tradeoff.data.Dataset` (x float32 (N, ...), y (N,), split (N,)).
        costs: `tradeoff.flops.ExitCosts` of this model at `dataset.input_shape`.
        batch_size: rows per forward pass.
        device: a torch device string ("cpu", "cuda", "cuda:1").
        logits_dtype: "float32" or "float16" (stored dtype; the model runs as it is).
        progress: show a tqdm bar on stderr.
        meta: provenance to record (arch, arch_kwargs, checkpoint, ...); the data, cost
            and run fields are added here.

    Returns:
        A validated ExitCache: logits (K, N, C), labels, split, flops (K,), meta.

    Raises:
        ValueError: output that is not K 2-D logits tensors, input shape or class count
            that does not fit the data, a NaN/inf in any exit (naming it), bad options.
    """
    check_options(batch_size=batch_size, device=device, logits_dtype=logits_dtype)
    logits = predict_exits(
        model, dataset, batch_size=batch_size, device=device, logits_dtype=logits_dtype, progress=progress
    )
    if len(costs.flops) != logits.shape[0]:
        raise ValueError(
            f"costs give {len(costs.flops)} exits but the model returned {logits.shape[0]}; "
            "compute them with tradeoff.flops.exit_costs on this model"
        )
    run = {"logits_dtype": logits_dtype, "batch_size": int(batch_size), "device": str(device), "world_size": 1}
    return assemble_cache(logits, dataset, costs, model=model, meta={**(meta or {}), **run})


def check_options(*, batch_size: int, device: str, logits_dtype: str) -> None:
    """Validate the run options once, before any work.

    Raises:
        ValueError: a non-positive batch size, an unknown dtype, or an unusable device.
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer; got {batch_size!r}")
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"--logits-dtype must be one of {', '.join(LOGITS_DTYPES)}; got {logits_dtype!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a torch device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available here; use --device cpu")


def predict_exits(
    model,
    dataset,
    *,
    rows: tuple[int, int] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    logits_dtype: str = "float32",
    progress: bool = True,
) -> np.ndarray:
    """Every exit's logits for rows [start, stop) of `dataset`: (K, stop - start, C).

    Batches lie on the grid 0, batch_size, 2*batch_size, ... of the whole dataset, so a
    block computed by one torchrun process holds the same bytes as that block of a
    single-process run. The (K, n, C) array is allocated once and filled in place.

    Raises:
        ValueError: see `build_cache`.
    """
    start, stop = (0, len(dataset.y)) if rows is None else rows
    if start % batch_size or not 0 <= start < stop <= len(dataset.y):
        raise ValueError(
            f"rows [{start}, {stop}) must be a non-empty range of the {len(dataset.y)} samples starting on a "
            f"multiple of the batch size {batch_size}"
        )
    was_training = model.training
    model.eval()
    model.to(device)
    # Inputs in the model's own floating dtype (a half-precision model gets half inputs).
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    in_dtype = first.dtype if first is not None else torch.float32
    x = dataset.x
    logits = view = None
    # Without progress the bar is off; with it, tqdm's own TQDM_DISABLE still applies.
    quiet = {} if progress else {"disable": True}
    bar = tqdm(total=stop - start, desc="caching", unit="img", file=sys.stderr, leave=False, **quiet)
    try:
        with torch.inference_mode():
            for a in range(start, stop, batch_size):
                b = min(a + batch_size, stop)
                batch = torch.from_numpy(np.ascontiguousarray(x[a:b])).to(device, in_dtype)
                outputs = _forward(model, batch, dataset, first=logits is None)
                if logits is None:
                    K, C = len(outputs), outputs[0].shape[1]
                    logits = np.empty((K, stop - start, C), dtype=np.dtype(logits_dtype))
                    view = torch.from_numpy(logits)
                _check_outputs(outputs, logits.shape[0], logits.shape[2], b - a)
                for k, out in enumerate(outputs):
                    view[k, a - start : b - start].copy_(out)
                _check_finite(view[:, a - start : b - start], a, logits_dtype)
                bar.update(b - a)
    finally:
        bar.close()
        model.train(was_training)
    return logits


def _forward(model, batch, dataset, *, first: bool):
    """The model's outputs; on the first batch, a shape error is restated in data terms."""
    if not first:
        return model(batch)
    try:
        outputs = model(batch)
    except RuntimeError as exc:
        reason = first_line(exc)
        raise ValueError(
            f"the model does not accept data {dataset.name!r} of input shape {tuple(dataset.input_shape)} "
            f"({reason[:200]}); check --arch/--num-classes and --data"
        ) from None
    if isinstance(outputs, torch.Tensor):
        raise ValueError(
            f"the model returned one tensor of shape {tuple(outputs.shape)}; a multi-exit model must return "
            "a list of K logits tensors, one per exit, shallow -> deep"
        )
    if not isinstance(outputs, (list, tuple)) or not outputs or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise ValueError(
            f"the model returned {type(outputs).__name__}; expected a list of K logits tensors (B, C), "
            "one per exit, shallow -> deep"
        )
    shapes = [tuple(o.shape) for o in outputs]
    if any(len(shape) != 2 or shape != shapes[0] or shape[0] != batch.shape[0] for shape in shapes):
        raise ValueError(
            f"the model's exits returned shapes {shapes} for a batch of {batch.shape[0]}; every exit must return "
            "logits of shape (batch, classes)"
        )
    C = shapes[0][1]
    if not _classes_fit(C, dataset):
        raise ValueError(
            f"the model has {C} classes but data {dataset.name!r} has {dataset.num_classes}; "
            f"pass --num-classes {dataset.num_classes} (or the data the model was trained on)"
        )
    return outputs


def _classes_fit(C: int, dataset) -> bool:
    """npz data infer their class count from the labels, so a model may have more classes."""
    if str(dataset.spec).startswith("npz:"):
        return C >= dataset.num_classes
    return C == dataset.num_classes


def _check_outputs(outputs, K: int, C: int, B: int) -> None:
    if len(outputs) != K:
        raise ValueError(f"the model returned {len(outputs)} exits on one batch and {K} on another")
    for k, out in enumerate(outputs):
        if tuple(out.shape) != (B, C):
            raise ValueError(
                f"exit {k + 1} returned shape {tuple(out.shape)}; every exit must return logits of shape "
                f"(batch, classes) = ({B}, {C})"
            )


def _check_finite(block: torch.Tensor, first_row: int, logits_dtype: str) -> None:
    """Name the first exit with a NaN/inf in this batch (after the dtype cast, so float16
    overflow is caught too)."""
    finite = torch.isfinite(block).flatten(1).all(dim=1)
    if bool(finite.all()):
        return
    k = int((~finite).nonzero()[0])
    bad = int((~torch.isfinite(block[k])).any(dim=1).nonzero()[0]) + first_row
    hint = " - float16 overflows beyond 65504; use --logits-dtype float32" if logits_dtype == "float16" else ""
    raise ValueError(
        f"exit {k + 1} gave NaN/inf logits (first at sample {bad}); nothing was written{hint} - "
        "check the checkpoint (a diverged training run?)"
    )


def assemble_cache(logits: np.ndarray, dataset, costs, *, model=None, meta: dict | None = None) -> ExitCache:
    """The validated cache from computed logits: one place, so a single-process run and a
    merged torchrun run build the same meta (only INFORMATIONAL_META fields differ)."""
    from tradeoff.flops import describe_costs

    K = logits.shape[0]
    names = getattr(model, "exit_names", None)
    exit_names = [str(n) for n in names] if isinstance(names, (list, tuple)) and len(names) == K else None
    fields = {
        "num_classes": int(logits.shape[2]),
        "exit_names": exit_names or [f"exit{k + 1}" for k in range(K)],
        "data": dataset.spec,
        "data_name": dataset.name,
        "data_fingerprint": dataset.fingerprint,
        "splits": sorted(set(np.unique(dataset.split).tolist())),
        **describe_costs(costs),
        **(meta or {}),
    }
    cache = ExitCache(
        logits=logits,
        labels=np.asarray(dataset.y, np.int64),
        split=np.asarray(dataset.split).astype(str),
        flops=np.asarray(costs.flops, np.float64),
        meta=make_meta(**fields),
    )
    return validate_cache(cache, source="tradeoff cache")


# --------------------------------------------------------------------------- checkpoint -> cache file
@dataclass(frozen=True)
class CacheOutcome:
    """What `cache_checkpoint` did.

    Attributes:
        path: the cache file.
        cache: the cache (None on the non-main processes of a torchrun run).
        reused: True when `path` already held this checkpoint's logits on this data.
        seconds: time of the forward passes (0 when reused).
        world_size: processes that computed the logits (1 without torchrun).
        data_name: the dataset's name (e.g. "digits", "cifar100").
    """

    path: Path
    cache: ExitCache | None
    reused: bool
    seconds: float
    world_size: int
    data_name: str


def cache_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike | Callable[[str], Path],
    *,
    data: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    logits_dtype: str = "float32",
    include_train: bool = False,
    trust: bool = False,
    exits: list[str] | None = None,
    dist: "shard.DistContext | None" = None,
    dist_device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CacheOutcome:
    """Checkpoint + data -> cache file, reusing the file when it already holds the same logits.

    Args:
        ckpt: a tradeoff checkpoint, bare state_dict or .safetensors file.
        out: the cache file, or a callable taking the data's name and returning it (the data is
            only known once the checkpoint is read).
        data: data spec (`tradeoff.data.load_data`); default: the checkpoint's, else digits.
        arch, num_classes: for bare state_dicts.
        batch_size, device, logits_dtype: how the forward passes run and what they store.
        include_train: also cache the train split.
        trust: allow unpickling arbitrary objects from the checkpoint.
        exits: for a model without `stages()`: its exit heads' module names, shallow -> deep
            (`models.attach.NamedExits`).
        dist: the torchrun context (`shard.detect_torchrun()`) inside its `shard.process_group`;
            None for one process.
        dist_device: the process group's device for this rank (what `shard.process_group`
            yields); `device` is still what the meta records.
        log: callable taking one line of progress text (default: none).

    Raises:
        ValueError / FileNotFoundError: bad checkpoint, data, options, or an `out` that holds
            something else.
    """
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data
    from tradeoff.flops import exit_costs

    check_options(batch_size=batch_size, device=device, logits_dtype=logits_dtype)
    log = log or (lambda line: None)
    ctx = dist
    run_on = device if ctx is None else (dist_device or device)
    main = ctx is None or ctx.is_main
    with shard.step(ctx, run_on):
        loaded = load_checkpoint(ckpt, arch=arch, num_classes=num_classes, trust=trust, map_location="cpu")
        if exits:
            from dataclasses import replace

            from tradeoff.models.attach import NamedExits

            loaded = replace(loaded, model=NamedExits(loaded.model, list(exits)))
        if loaded.stripped_prefix and main:
            log(f"note: removed the key prefix {loaded.stripped_prefix!r} that every entry of {ckpt} carries "
                "(a training wrapper's); without it every key fits the model")
        spec = data or loaded.data or "digits"
        splits = ("train", "val", "test") if include_train else ("val", "test")
        dataset = load_data(spec, splits=splits)
        path = Path(out(dataset.name) if callable(out) else out)
        key = {
            "arch": loaded.arch,
            "arch_kwargs": loaded.arch_kwargs,
            "checkpoint_sha256": loaded.sha256,
            "data_fingerprint": dataset.fingerprint,
            "logits_dtype": logits_dtype,
            "splits": sorted(splits_present(dataset)),
        }
        if exits:
            key["exits"] = list(exits)
        # What is at `path` now: if another process writes it before we do, ours is not saved
        # (two `tradeoff cache` runs into one file used to both report success, the last winning).
        expect = output_stamp(path)
        existing = existing_cache(path, key, ckpt=ckpt, log=log if main else None)
        if existing is None:
            rows = [(0, len(dataset))] if ctx is None else shard.rank_rows(len(dataset), batch_size, ctx.world_size)
            # One sample first: a model that does not fit the data fails here, in data
            # terms, before fvcore traces it.
            predict_exits(loaded.model, dataset, rows=(0, 1), batch_size=1, device=run_on, progress=False)
            check_model_contract(loaded.model, dataset, device=run_on)
    world = 1 if ctx is None else ctx.world_size
    if existing is not None:
        return CacheOutcome(path, existing, reused=True, seconds=0.0, world_size=world, data_name=dataset.name)
    meta = {
        "arch": loaded.arch,
        "arch_kwargs": loaded.arch_kwargs,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": loaded.sha256,
        "logits_dtype": logits_dtype,
        "batch_size": int(batch_size),
        "device": str(device),
        "world_size": world,
        **({"exits": list(exits)} if exits else {}),
    }
    model = loaded.model
    if ctx is None:
        costs = exit_costs(model.cpu(), tuple(dataset.input_shape))
        started = time.perf_counter()
        cache = build_cache(model, dataset, costs, batch_size=batch_size, device=run_on,
                            logits_dtype=logits_dtype, progress=True, meta=meta)
        seconds = time.perf_counter() - started
        try:
            write_cache(path, cache, expect=expect)
        except FileExistsError:
            # Another process wrote `path` meanwhile: fine if it is this very cache, else we lost the race.
            try:
                same = existing_cache(path, key, ckpt=ckpt) if path.is_file() else None
            except ValueError:
                same = None
            if same is None:
                raise
            return CacheOutcome(path, same, reused=True, seconds=0.0, world_size=1, data_name=dataset.name)
        return CacheOutcome(path, cache, reused=False, seconds=seconds, world_size=1, data_name=dataset.name)
    busy = sum(stop > start for start, stop in rows)
    if main and busy < ctx.world_size:
        log(f"note: only {busy} of {ctx.world_size} processes have a batch at batch size "
            f"{batch_size}; lower the batch size to use them all")

    def compute(start, stop):
        return predict_exits(model, dataset, rows=(start, stop), batch_size=batch_size, device=run_on,
                             logits_dtype=logits_dtype, progress=main)

    started = time.perf_counter()
    logits = shard.run_sharded(ctx, compute, rows, path, json.dumps(key, sort_keys=True), device=run_on)
    seconds = time.perf_counter() - started
    cache = None
    with shard.step(ctx, run_on):
        if main:
            costs = exit_costs(model.cpu(), tuple(dataset.input_shape))
            cache = assemble_cache(logits, dataset, costs, model=model, meta=meta)
            write_cache(path, cache, expect=expect)
    return CacheOutcome(path, cache, reused=False, seconds=seconds, world_size=world, data_name=dataset.name)


def check_model_contract(model, dataset, *, device: str = "cpu", rows: int = 8) -> None:
    """`forward()` and `stages()` must give the same exits in the same order, on real samples.

    Checked before anything is written (`tradeoff.models.contract.check_contract`); a model
    without `stages()` is left to the cost counter, which says what it needs.

    Raises:
        ValueError: naming the mismatch (e.g. "forward() returns exit 1 where stages() gives exit 3").
    """
    from tradeoff.models.contract import check_contract

    if not callable(getattr(model, "stages", None)):
        return
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    probe = torch.from_numpy(np.ascontiguousarray(dataset.x[:rows])).to(device, dtype)
    try:
        check_contract(model.to(device), probe)
    except NotImplementedError:
        return


def splits_present(dataset) -> set[str]:
    return set(np.unique(dataset.split).tolist())


def existing_cache(out: Path, key: dict, *, ckpt: str | os.PathLike, log: Callable[[str], None] | None = None) -> ExitCache | None:
    """The cache already at `out` if it was built from this checkpoint and data, else None.

    Raises:
        ValueError: `out` is the checkpoint itself, is not a tradeoff cache, or is a cache
            of another model or data (we never overwrite those silently).
    """
    if not out.exists():
        return None
    if out.resolve() == Path(ckpt).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself; choose another output path")
    try:
        cache = load_cache(out)
    except ValueError as exc:
        raise ValueError(
            f"{out} exists but is not a valid tradeoff cache ({' '.join(str(exc).split())[:160]}); "
            "delete it or pass another --out"
        ) from None
    meta = cache.meta
    for field in ("checkpoint_sha256", "data_fingerprint", "arch", "arch_kwargs"):
        if meta.get(field) != key[field]:
            what = "model" if field != "data_fingerprint" else "data"
            raise ValueError(
                f"{out} holds a cache of another {what} ({field} {str(meta.get(field))[:16]!r} != "
                f"{str(key[field])[:16]!r}); delete it or pass another --out"
            )
    if meta.get("logits_dtype") != key["logits_dtype"] or sorted(meta.get("splits", [])) != key["splits"]:
        if log is not None:
            log(f"rebuilding {out} in place (runs searched on the old file must be searched again): it holds "
                f"{meta.get('logits_dtype')} logits of splits {meta.get('splits')}, "
                  f"asked for {key['logits_dtype']} of {key['splits']}")
        return None
    return cache
