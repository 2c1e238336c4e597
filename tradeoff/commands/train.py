"""`tradeoff train`: train a multi-exit model."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a multi-exit model (SCAN self-distillation, SideNet, Adjoined)")
    p.add_argument("--arch", required=True)
    p.add_argument("--data", default="digits")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt, tradeoff format)")
    p.add_argument("--main", help="frozen MainNet checkpoint (SideNet only)")
    p.add_argument("--width-fraction", type=float, help="small network's share of channels (Adjoined only; default 0.5)")
    p.add_argument("--tap", help="SideNet only: the module whose output the side head reads, e.g. layer3.1 "
                                 "(an integer N: layerN of our own MainNets; default: the middle layer)")
    p.add_argument("--main-arch", help="SideNet only: builder of a bare --main state_dict (pkg.module:builder)")
    p.add_argument("--backbone", help="SCAN only (--arch scan): the backbone's builder, pkg.module:builder or a name")
    p.add_argument("--taps", help="SCAN only: module names of the backbone to put exits after, shallow -> deep (A,B,C)")
    p.add_argument("--backbone-ckpt", help="SCAN only: the backbone's trained weights (tradeoff or bare state_dict)")
    p.add_argument("--epochs", type=int, help="default: 200 for CIFAR (the paper's schedule), 5 for MNIST layouts, 30 otherwise")
    p.add_argument("--batch-size", type=int, help="default: 128 for CIFAR, 256 for MNIST layouts, 64 otherwise")
    p.add_argument("--lr", type=float, help="default: 0.1 SGD for CIFAR, 4e-3 Adam one-cycle for MNIST layouts, 3e-3 Adam otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for small data, all cores for CIFAR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling --main (only files you trust)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff train`: parse-level settings -> `train_model`, then a one-line summary."""
    import torch

    from tradeoff.training.loop import default_config, train_model

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
    from tradeoff.data import load_data
    from tradeoff.models import resolve_builder

    resolve_builder(args.arch)
    dataset = load_data(args.data, splits=("train", "val"))
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1; got {threads}")
    if threads is None and not dataset.name.startswith("cifar"):
        threads = 1  # small models: thread start-up costs more than the convolutions
    if threads:
        torch.set_num_threads(int(threads))
    config = default_config(
        dataset.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
    )
    result = train_model(
        args.arch, args.data, args.out, arch_kwargs=arch_kwargs, main=args.main, config=config,
        trust=bool(getattr(args, "trust_checkpoint", False)), log=print, dataset=dataset,
        progress=not getattr(args, "no_progress", False),
    )
    shown = " / ".join(f"{a * 100:.2f}" for a in result.best_val_accuracy)
    print(f"saved {result.path} (epoch {result.best_epoch} of {result.epochs}, chosen on {result.selected_by}; "
          f"val accuracy per exit {shown}%) in {result.seconds:.1f} s")
    return 0
