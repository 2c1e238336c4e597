"""`tradeoff cache`: checkpoint + data -> cache file (the command side of `tradeoff.cache.build.cache_checkpoint`)."""

from __future__ import annotations

import sys
from pathlib import Path

from tradeoff.commands.common import add_command, prepare_output, run_in_process_group, si_int
from tradeoff.commands.defaults import default_cache_path


def add_parser(sub) -> None:
    p = add_command(
        sub, "cache", help="run a multi-exit model over a dataset once; store every exit's logits and cost",
        description="Run a multi-exit checkpoint over the val and test splits once and store every exit's logits, "
                    "the labels and each exit's fvcore-counted cost in one .npz file, which every later "
                    "`tradeoff search` reads. A cache of the same checkpoint and data is reused; one of another "
                    "model or data is never overwritten.",
        examples="tradeoff cache --ckpt results/demo/model.pt --out results/cache/demo-digits.npz\n"
                 "tradeoff cache --ckpt bestmodel.pth --arch scan_resnet18 --num-classes 100 --data cifar100:DIR",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint: tradeoff .pt, bare state_dict (.pth/.pt) or .safetensors")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--exits", help="for a model without stages(): its exit heads' module names, shallow -> deep "
                                   "(e.g. exit1,exit2,fc); its forward() must return those heads' outputs")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="digits | cifar100:DIR | cifar10:DIR | fashion-mnist[:DIR] | mnist:DIR | npz:PATH "
                                   "(default: the checkpoint's, else digits)")
    p.add_argument("--out", help="cache file to write (default: results/cache/<ckpt>-<data>.npz)")
    p.add_argument("--batch-size", type=si_int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="cpu", help="torch device to run on: cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--logits-dtype", choices=("float32", "float16"), default="float32",
                   help="float16 halves the file; rebuilding an existing cache changes its sha256, so runs "
                        "searched on the old file must be searched again (default float32)")
    p.add_argument("--include-train", action="store_true", help="also cache the train split")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff cache`: checkpoint + data -> cache file, reused when it already exists.

    Under torchrun every process runs this; each step ends with all processes agreeing
    (one failure fails them all), and on failure each says why before any exits, since
    torchrun ends the others as soon as one process is gone.
    """
    from tradeoff.cache import shard
    from tradeoff.cache.build import check_options

    ctx = shard.detect_torchrun()
    check_options(batch_size=args.batch_size, device=args.device, logits_dtype=args.logits_dtype)
    # Before the model runs: a folder we cannot write fails now, not after the forward passes.
    prepare_output(args.out if args.out else default_cache_path(args.ckpt, "data"))
    if ctx is None:
        return _cache(args, None, None)
    return run_in_process_group("cache", _cache, args, ctx)


def _cache(args, ctx, device) -> int:
    from tradeoff.cache.build import cache_checkpoint
    from tradeoff.cache.format import uncounted_ops_note
    from tradeoff.cache.importer import exit_summary_table

    main = ctx is None or ctx.is_main
    outcome = cache_checkpoint(
        args.ckpt,
        Path(args.out) if args.out else (lambda data_name: default_cache_path(args.ckpt, data_name)),
        data=args.data, arch=args.arch, num_classes=args.num_classes, batch_size=args.batch_size,
        device=args.device, logits_dtype=args.logits_dtype, include_train=args.include_train,
        trust=args.trust_checkpoint, exits=_names(args.exits), dist=ctx, dist_device=device, log=lambda line: print(line, file=sys.stderr),
    )
    if not main:
        return 0
    cache, out = outcome.cache, outcome.path
    note = uncounted_ops_note(cache.meta)
    if note:
        print(f"warning: {note}; every cost and speed-up from this cache is a lower bound - "
              "give those ops a handle in tradeoff/flops.py (EXTRA_OP_HANDLES)", file=sys.stderr)
    if outcome.reused:
        print(f"reusing {out}: it already holds this checkpoint's logits on {outcome.data_name} "
              "(same sha256, data fingerprint and dtype); delete it to recompute")
        print(exit_summary_table(cache))
        return 0
    where = "" if outcome.world_size == 1 else f" on {outcome.world_size} processes"
    seconds = outcome.seconds
    print(f"cached {cache.num_samples} rows{where} in {seconds:.2f} s ({cache.num_samples / seconds:.1f} img/s)")
    print(exit_summary_table(cache))
    print(f"wrote {out}")
    return 0


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None
