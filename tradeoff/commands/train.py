"""`tradeoff train`: train a multi-exit model."""

from __future__ import annotations

from pathlib import Path

from tradeoff.commands.common import add_command, progress_enabled, si_int


def add_parser(sub) -> None:
    models = "{MODELS}"  # filled in when --help is shown: listing them imports torch, which parsing must not
    p = add_command(
        sub, "train", help="train a multi-exit model (SCAN self-distillation, SideNet, Adjoined)",
        description="Train a multi-exit network and keep the epoch with the best deepest-exit val accuracy as a "
                    f"tradeoff checkpoint. Models: {models}.",
        examples="tradeoff train --arch scan_small --data digits --out results/scan-small/model.pt\n"
                 "tradeoff train --arch mainnet_small --out main.pt && tradeoff train --arch sidenet --main main.pt --out side.pt\n"
                 "tradeoff train --arch scan_resnet18 --data cifar100:DIR --device cuda --out scan18.pt",
    )
    show_help = p.format_help
    p.format_help = lambda: show_help().replace(models, _model_names())
    p.add_argument("--arch", required=True, metavar="MODEL",
                   help=f"model to train: {models}; or pkg.module:builder for your own")
    p.add_argument("--data", default="digits", help="digits | cifar100:DIR | cifar10:DIR | npz:PATH (default digits)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt, tradeoff format)")
    p.add_argument("--main", help="frozen MainNet checkpoint (SideNet only)")
    p.add_argument("--width-fraction", type=float, help="small network's share of channels (Adjoined only; default 0.5)")
    p.add_argument("--tap", type=int, help="SideNet only: the side head reads layer<TAP>'s output (default: the middle layer)")
    p.add_argument("--epochs", type=int, help="default: 200 for CIFAR (the paper's schedule), 30 otherwise")
    p.add_argument("--batch-size", type=si_int, help="default: 128 for CIFAR, 64 otherwise")
    p.add_argument("--lr", type=float, help="default: 0.1 SGD for CIFAR, 3e-3 Adam otherwise")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and augmentation (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default cpu)")
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
        arch_kwargs["tap"] = int(args.tap)
    from tradeoff.data import load_data
    from tradeoff.models import resolve_builder

    resolve_builder(args.arch)
    _refuse_other_models_checkpoint(Path(args.out), args.arch, args.data)
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
    from tradeoff.fileio import output_stamp

    before = output_stamp(args.out)
    try:
        result = train_model(
            args.arch, args.data, args.out, arch_kwargs=arch_kwargs, main=args.main, config=config,
            trust=bool(getattr(args, "trust_checkpoint", False)), log=print, dataset=dataset,
            progress=progress_enabled(args),
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted_note(Path(args.out), before, resumable=hasattr(args, "resume"))) from None
    from tradeoff.report.documents import accuracy_text

    shown = " / ".join(accuracy_text(a) for a in result.best_val_accuracy)
    print(f"saved {result.path} (epoch {result.best_epoch} of {result.epochs}, chosen on {result.selected_by}; "
          f"val accuracy per exit {shown}) in {result.seconds:.1f} s")
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


def _interrupted_note(out: Path, before, *, resumable: bool) -> str:
    """What an interrupted training left: the kept checkpoint's epoch, or that nothing was saved."""
    from tradeoff.fileio import output_stamp

    if output_stamp(out) == before:
        return f"interrupted before the first epoch ended; nothing was saved to {out}"
    header = _checkpoint_header(out) or {}
    epoch = header.get("epoch")
    kept = f"kept {out} from epoch {epoch}" if epoch is not None else f"kept {out}"
    resume = f"; continue with `tradeoff train ... --out {out} --resume`" if resumable else ""
    return f"interrupted: {kept} (the best deepest-exit val accuracy so far){resume}"
