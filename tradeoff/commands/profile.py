"""`tradeoff profile`: measure this device's latency of every section, head and exit decision."""

from __future__ import annotations

from tradeoff.commands.common import add_command

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = add_command(
        sub, "profile", help="measure the device latency of every section, head and exit decision "
                                       "(for `tradeoff search --cost latency`)",
        description="Measure, on this machine, the latency of every section, head and exit decision (and of the original single-exit network) with the runtime's own early-exit code, at each batch size; medians of interleaved repeats with their spread. Run it on the deployment device, bring latency.json back, and search in milliseconds with `tradeoff search --cost latency --latency latency.json`.",
        examples='tradeoff profile --ckpt results/demo/model.pt --out latency.json\ntradeoff profile --ckpt model.pt --batch-size 1 8 64 --compiled --threads 1 --out latency.json',
    )
    p.add_argument("--ckpt", required=True, help="the checkpoint to profile")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="data whose test split feeds the timings (default: the checkpoint's, else digits)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1],
                   help="batch sizes to profile, e.g. 1 8 64 (default 1); search at any of them")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--compiled", action="store_true", help="profile the compiled runner (frozen TorchScript stages), "
                                                           "as `tradeoff run --compiled` runs")
    p.add_argument("--device", default="cpu", help="torch device to profile on (default cpu)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved measurements per item; medians kept (>= 3)")
    p.add_argument("--out", required=True, help="latency.json to write")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data
    from tradeoff.fileio import write_json_atomic
    from tradeoff.policy.latency import SPREAD_WARNING
    from tradeoff.policy.rule import ExitRule
    from tradeoff.report.tables import format_table
    from tradeoff.runtime.early_exit import EarlyExitModel, model_stages
    from tradeoff.runtime.profile import noisy_items, profile_document, profile_latency
    import torch

    if any(b < 1 for b in args.batch_size):
        raise ValueError(f"--batch-size values must be >= 1; got {args.batch_size}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    if args.repeats < 3:
        raise ValueError(f"--repeats must be >= 3; got {args.repeats}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device on this machine (this torch build: {torch.__version__}); "
                         "profile on the machine you will serve from, or use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: only cpu and cuda are supported")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'latency.json'}")
    if not out.parent.exists():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist; create it first")
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.ckpt, arch=args.arch, num_classes=args.num_classes, trust=args.trust_checkpoint)
    K = len(model_stages(loaded.model))
    spec = args.data or loaded.data or "digits"
    data = load_data(spec, splits=("test",))
    model = loaded.model.to(device)
    runner = EarlyExitModel(model, ExitRule([None] * (K - 1)), compiled=args.compiled)
    x = torch.as_tensor(data.x, dtype=torch.float32).to(device)
    batches = profile_latency(runner, x, batch_sizes=args.batch_size, repeats=args.repeats, progress=True)
    doc = profile_document(
        batches, runner=runner, device=device, threads=args.threads, compiled=args.compiled, repeats=args.repeats,
        checkpoint=str(loaded.path), checkpoint_sha256=loaded.sha256, arch=loaded.arch, data=spec,
        data_fingerprint=data.fingerprint,
    )
    write_json_atomic(out, doc)
    for entry in batches:
        B = entry["batch_size"]
        rows = []
        for k in range(K):
            for part in ("section", "head", "decision"):
                rows.append((f"{part} {k + 1}", entry[f"{part}_ms"][k], entry[f"{part}_ms"][k] / B,
                             100 * entry[f"{part}_spread"][k]))
        rows += [(f"path {k + 1} (all leave at exit {k + 1})", entry["path_ms"][k], entry["path_ms"][k] / B,
                  100 * entry["path_spread"][k]) for k in range(K)]
        rows.append(("call (entry + answer)", entry["call_ms"], entry["call_ms"] / B, None))
        rows.append(("original network", entry["original_ms"], entry["original_ms"] / B, 100 * entry["original_spread"]))
        backend = entry["mkldnn"]
        title = (f"batch {B} ({doc['backend']}, {args.threads} thread(s), {doc['device_name']}; oneDNN early exit "
                 f"{'on' if backend['early_exit'] else 'off'}, original {'on' if backend['original'] else 'off'})")
        print(format_table(rows, ("stage", "ms/call", "ms/sample", "spread %"), title=title))
        print()
    noisy = noisy_items(batches)
    if noisy:
        b, item, spread = noisy[0]
        print(f"tradeoff profile: warning: {len(noisy)} timing(s) spread over {SPREAD_WARNING:.0%} "
              f"(worst: {item} at batch {b}, {spread:.0%}); the machine was busy - re-run on an idle machine "
              "or with more --repeats", file=sys.stderr)
    print(f"wrote {out}")
    return 0
