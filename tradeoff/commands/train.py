"""`tradeoff train`: train a multi-exit model, in one process or under torchrun.

`torchrun --nproc_per_node N [--nnodes ...] -m tradeoff train ...` runs this in every
process: DistributedDataParallel with gloo on the CPU or NCCL with `--device cuda` (each
process on cuda:LOCAL_RANK), `--batch-size` the global batch. Rank 0 alone prints and
writes; every failure ends every process with one line and a non-zero exit. Ctrl-C (or a
SIGTERM from a scheduler) says which epoch's state was kept and how to `--resume`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tradeoff.commands.common import add_command, progress_enabled, run_in_process_group, si_int


def add_parser(sub) -> None:
    models = "{MODELS}"  # filled in when --help is shown: listing them imports torch, which parsing must not
    p = add_command(
        sub, "train", help="train a multi-exit model (SCAN self-distillation, SideNet, Adjoined, DAN)",
        description="Train a multi-exit network (in one process, or in several under torchrun with "
                    "DistributedDataParallel) and keep the epoch with the best mean val accuracy over its exits "
                    f"(--select) as a tradeoff checkpoint. Models: {models}.",
        examples="tradeoff train --arch scan_small --data digits --out results/scan-small/model.pt\n"
                 "tradeoff train --arch scan_cnn --data fashion-mnist --out results/fashion-cnn.pt\n"
                 "tradeoff train --arch mainnet_small --out main.pt && tradeoff train --arch sidenet --main main.pt --out side.pt\n"
                 "torchrun --nproc_per_node 2 -m tradeoff train --arch scan_small --out model.pt",
    )
    show_help = p.format_help
    p.format_help = lambda: show_help().replace(models, _model_names())
    p.add_argument("--arch", required=True, metavar="MODEL",
                   help=f"model to train: {models}; or pkg.module:builder for your own")
    p.add_argument("--data", default="digits",
                   help="digits | fashion-mnist[:DIR] | mnist:DIR | cifar100:DIR | cifar10:DIR | npz:PATH (default digits)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt, tradeoff format)")
    p.add_argument("--main", help="frozen MainNet checkpoint (SideNet only)")
    p.add_argument("--width-fraction", type=float, help="small network's share of channels (Adjoined only; default 0.5)")
    p.add_argument("--flops-target", type=float,
                   help="DAN (dan_*) only: FLOPs of the small network to learn (default: AN's width-0.5 small network)")
    p.add_argument("--width-choices", help="DAN only: candidate width fractions per layer (default 0.25,0.5,0.75,1.0)")
    p.add_argument("--lambda-cost", type=float, help="DAN only: weight of the FLOPs term in the search loss (default 5)")
    p.add_argument("--finetune-epochs", type=int, help="DAN only: epochs of AN training of the derived network (default 10)")
    p.add_argument("--tap", help="SideNet only: the module whose output the side head reads, e.g. layer3.1 "
                                 "(an integer N: layerN of our own MainNets; default: the middle layer)")
    p.add_argument("--main-arch", help="SideNet only: builder of a bare --main state_dict (pkg.module:builder)")
    p.add_argument("--backbone", help="SCAN only (--arch scan): the backbone's builder, pkg.module:builder or a name")
    p.add_argument("--taps", help="SCAN only: module names of the backbone to put exits after, shallow -> deep (A,B,C)")
    p.add_argument("--backbone-ckpt", help="SCAN only: the backbone's trained weights (tradeoff or bare state_dict)")
    p.add_argument("--epochs", type=int, help="default: 200 for CIFAR (the paper's schedule), 5 for MNIST layouts, 30 otherwise")
    p.add_argument("--batch-size", type=si_int, help="global batch (all processes): default 128 for CIFAR, 256 for "
                                                     "MNIST layouts, 64 otherwise")
    p.add_argument("--lr", type=float, help="default: 0.1 SGD for CIFAR, 4e-3 Adam one-cycle for MNIST layouts, 3e-3 Adam otherwise")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and augmentation (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for small data, all cores for CIFAR)")
    p.add_argument("--loss", choices=("family", "scan", "ce"),
                   help="family (default): the model family's own objective; scan: SCAN self-distillation; "
                        "ce: every exit's cross-entropy, summed")
    p.add_argument("--select", choices=("mean", "deepest"),
                   help="keep the epoch with the best mean val accuracy over exits (default) or the deepest exit's")
    p.add_argument("--resume", metavar="STATE", help="continue an interrupted run from its <out stem>.resume.pt")
    p.add_argument("--amp", action="store_true", help="CUDA mixed precision (float16 autocast + gradient scaling)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling --main (only files you trust)")
    p.set_defaults(func=run)


_DAN_FLAGS = ("flops_target", "width_choices", "lambda_cost", "finetune_epochs")


def run(args) -> int:
    """`tradeoff train`: parse-level settings -> `train_model` (or `train_dan`), then a one-line summary."""
    from tradeoff.cache import shard

    ctx = shard.detect_torchrun()
    dan = args.arch.startswith("dan_")
    given = [f"--{name.replace('_', '-')}" for name in _DAN_FLAGS if getattr(args, name, None) is not None]
    if given and not dan:
        raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only for dan_* models "
                         f"(Differentiable Adjoined Networks); got --arch {args.arch}")
    work = _run_dan if dan else _train
    if ctx is None:
        return work(args, None, None)
    from tradeoff.training.loop import TrainingStepFailed

    # a failed training step fails every process at once: no barrier then
    return run_in_process_group("train", work, args, ctx, no_barrier=(TrainingStepFailed,))


def _arch_kwargs(args) -> dict:
    arch_kwargs = {}
    if getattr(args, "width_fraction", None) is not None:
        if not args.arch.startswith("adjoined"):
            raise ValueError(f"--width-fraction is only for adjoined_* models; got --arch {args.arch}")
        if not 0.0 < args.width_fraction < 1.0:
            raise ValueError(f"--width-fraction must be in (0, 1); got {args.width_fraction}")
        arch_kwargs["width_fraction"] = float(args.width_fraction)
    if getattr(args, "tap", None) is not None:
        if args.arch != "sidenet":
            raise ValueError(f"--tap is only for --arch sidenet; got --arch {args.arch}")
        arch_kwargs["tap"] = int(args.tap) if str(args.tap).isdigit() else str(args.tap)
    if getattr(args, "main_arch", None):
        if args.arch != "sidenet":
            raise ValueError(f"--main-arch is only for --arch sidenet; got --arch {args.arch}")
        arch_kwargs["main_arch"] = args.main_arch
    for flag in ("backbone", "taps", "backbone_ckpt"):
        if getattr(args, flag, None):
            if args.arch != "scan":
                raise ValueError(f"--{flag.replace('_', '-')} is only for --arch scan; got --arch {args.arch}")
            arch_kwargs[flag] = getattr(args, flag)
    return arch_kwargs


def _set_threads(args, dataset, ctx) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1; got {threads}")
    if threads is None and not dataset.name.startswith("cifar"):
        threads = 1  # small models: thread start-up costs more than the convolutions
    if threads is None and ctx is not None:  # share the machine's cores among its processes
        threads = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if threads:
        torch.set_num_threads(int(threads))


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _train(args, ctx, device) -> int:
    from tradeoff.data import load_data
    from tradeoff.models import resolve_builder
    from tradeoff.report.tables import accuracy_text
    from tradeoff.training.loop import TrainingInterrupted, default_config, train_model

    main = ctx is None or ctx.is_main
    arch_kwargs = _arch_kwargs(args)
    resolve_builder(args.arch)
    if main:
        _refuse_other_models_checkpoint(Path(args.out), args.arch, args.data)
    dataset = load_data(args.data, splits=("train", "val"))
    _set_threads(args, dataset, ctx)
    config = default_config(
        dataset.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=device or args.device, loss=getattr(args, "loss", None), select=getattr(args, "select", None),
        amp=bool(getattr(args, "amp", False)), sync_bn=bool(getattr(args, "sync_bn", False)),
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = train_model(
            args.arch, args.data, args.out, arch_kwargs=arch_kwargs, main=args.main, config=config,
            trust=bool(getattr(args, "trust_checkpoint", False)), log=print if main else None, dataset=dataset,
            progress=main and progress_enabled(args), dist=ctx, dist_device=device,
            resume=getattr(args, "resume", None),
        )
    except TrainingInterrupted as exc:
        if main:
            print(f"tradeoff train: {exc}", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if main:
        shown = " / ".join(accuracy_text(a) for a in result.best_val_accuracy)
        where = "" if ctx is None else f" on {ctx.world_size} processes (global batch {config.batch_size})"
        print(f"saved {result.path} (epoch {result.best_epoch} of {result.epochs}, chosen on {result.selected_by}; "
              f"val accuracy per exit {shown}) in {result.seconds:.1f} s{where}")
    return 0


def _run_dan(args, ctx, device) -> int:
    """`tradeoff train --arch dan_<family>`: parse-level settings -> `train_dan`, then a summary."""
    from tradeoff.data import load_data
    from tradeoff.report.tables import accuracy_text
    from tradeoff.training.dan import DANConfig, dan_family, train_dan
    from tradeoff.training.loop import default_config

    dan_family(args.arch)
    if getattr(args, "width_fraction", None) is not None:
        raise ValueError(f"--width-fraction is for adjoined_* models; --arch {args.arch} learns per-layer widths "
                         "(use --flops-target and --width-choices)")
    if getattr(args, "main", None) is not None or getattr(args, "tap", None) is not None:
        raise ValueError(f"--main and --tap are for --arch sidenet; got --arch {args.arch}")
    settings = {}
    if args.width_choices is not None:
        parts = [p.strip() for p in str(args.width_choices).split(",") if p.strip()]
        try:
            settings["width_choices"] = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"--width-choices must be comma-separated numbers in (0, 1] such as 0.25,0.5,0.75,1.0; "
                             f"got {args.width_choices!r}") from None
    for name in ("flops_target", "lambda_cost", "finetune_epochs"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    dan = DANConfig(**settings)
    dataset = load_data(args.data, splits=("train", "val"))
    _set_threads(args, dataset, ctx)
    config = default_config(dataset.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            device=args.device)
    if config.device != "cpu":
        raise ValueError(f"--arch {args.arch} runs its search on the CPU only; got --device {config.device}")
    main = ctx is None or ctx.is_main
    result = train_dan(args.arch, args.data, args.out, config=config, dan=dan, dataset=dataset,
                       log=print if main else None, progress=main and progress_enabled(args),
                       dist=ctx, dist_device=device)
    if not main:
        return 0
    fine = result.finetune
    shown = " / ".join(accuracy_text(a) for a in fine.best_val_accuracy)
    widths = " ".join(f"{k}={v}" for k, v in result.small_widths.items())
    print(f"saved {result.path} ({result.arch}, learned widths {widths}; small network {result.derived_flops:.4g} "
          f"FLOPs = {result.derived_flops / result.flops_target:.3f} x target; val accuracy per exit {shown}) "
          f"in {result.search_seconds + result.finetune_seconds:.1f} s")
    return 0


def _model_names() -> str:
    from tradeoff.models import list_models

    return ", ".join(list_models())


def _checkpoint_header(path: Path) -> dict | None:
    """The tradeoff checkpoint's dict at `path` (weights only, never unpickled), or None if it is not one."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable or foreign file: not one of ours
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == "tradeoff-ckpt" else None


def _refuse_other_models_checkpoint(out: Path, arch: str, data: str) -> None:
    """`tradeoff cache` never overwrites another model's cache; `train` never another model's checkpoint.

    Raises:
        ValueError: `out` exists and is not a tradeoff checkpoint of this arch and data.
    """
    if not out.is_file():
        return
    header = _checkpoint_header(out)
    if header is None:
        raise ValueError(f"--out {out} exists and is not a tradeoff checkpoint; delete it or choose another --out")
    if header.get("arch") != arch or header.get("data") != data:
        raise ValueError(
            f"--out {out} holds a checkpoint of another model ({header.get('arch')} on {header.get('data')}, "
            f"not {arch} on {data}); delete it or choose another --out"
        )
    print(f"note: {out} holds an earlier {arch} checkpoint on {data}; it is replaced by this training")
