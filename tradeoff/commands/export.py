"""`tradeoff export`: an ONNX model with the chosen thresholds inside (real early exit)."""

from __future__ import annotations

from tradeoff.commands.common import add_command

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = add_command(
        sub, "export", help="write an ONNX model with the chosen thresholds inside (real early exit)",
        description="Export the model with its exit rule inside as one ONNX file (ONNX If/Scan control flow: a sample that leaves at exit k never runs section k+1). Input 'input' float32 (N, C, H, W); outputs 'label', 'exit' (0-based) and 'confidence'. The thresholds, rule and checkpoint sha256 are in the file's metadata_props.",
        examples='tradeoff export --ckpt results/demo/model.pt --thresholds results/demo/thresholds.json --out model.onnx\ntradeoff export --ckpt model.pt --thresholds results/x/thresholds.json --out early.onnx --original original.onnx',
    )
    p.add_argument("--ckpt", required=True, help="the checkpoint the thresholds were searched for")
    p.add_argument("--thresholds", required=True, help="results/<run>/thresholds.json")
    p.add_argument("--out", required=True, help="ONNX file to write (atomically)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; at least 18)")
    p.add_argument("--original", help="also write the original single-exit network (for timing) to this file")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="data the model takes (its sample shape; default: the checkpoint's, else digits)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Export the early-exit graph (and, with --original, the original network) for a checkpoint + thresholds."""
    import torch

    from tradeoff.commands.run import load_inputs
    from tradeoff.runtime.onnx_export import export_early_exit, export_original
    from tradeoff.runtime.onnx_session import export_metadata

    if args.original and Path(args.original).resolve() == Path(args.out).resolve():
        raise ValueError(f"--original {args.original} is the same file as --out; give it another name")
    loaded, tf, _, data, _ = load_inputs(args, compare=False)
    example = torch.zeros((1, *data.input_shape), dtype=torch.float32)
    meta = export_metadata(loaded, tf)
    print(f"exporting the early-exit graph of {loaded.arch} ({tf.num_exits} exits) ...", file=sys.stderr, flush=True)
    out = export_early_exit(loaded.model, tf.rule, example_input=example, out_path=args.out,
                            opset=args.opset, metadata=meta)
    print(f"wrote {out} (input 'input' float32 (N, {', '.join(map(str, data.input_shape))}); "
          "outputs 'label', 'exit', 'confidence')")
    if args.original:
        original = export_original(loaded.model, example_input=example, out_path=args.original, opset=args.opset,
                                   metadata=meta)
        print(f"wrote {original} (the original single-exit network: outputs 'label', 'logits')")
    return 0
