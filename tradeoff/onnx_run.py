"""`tradeoff export` and `tradeoff run --backend onnxruntime`: the exported graphs, run.

`export_command` writes the early-exit graph of `export_onnx.export_early_exit` (and,
with `--original`, the original single-exit network) for a checkpoint and the
thresholds searched for it. `run_onnx_command` exports both graphs to a temporary
directory, runs the early-exit one over the test split with ONNX Runtime's CPU provider,
times it against the original network side by side (interleaved passes, medians, as
`runtime.measure_latency` does for torch) and reports how often its exits and labels
equal the exit rule on the cache's test logits.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tradeoff.export_onnx import export_early_exit, export_original, make_rule, rule_decisions


def ort_session(path, *, threads: int = 1):
    """An ONNX Runtime CPU session: `threads` intra-op threads, sequential, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # the exporter leaves unused initializers; ORT warns about each
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, x: np.ndarray, *, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of `session` over x (N, ...) in batches, concatenated along axis 0."""
    outs = [session.run(None, {"input": np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})
            for i in range(0, x.shape[0], batch_size)]
    return [np.concatenate(parts) for parts in zip(*outs)]


def time_sessions(sessions: dict, x: np.ndarray, *, batch_size: int, repeats: int, warmup: int = 1) -> dict:
    """Median ms per sample of each session over x, passes interleaved (order flipped each round).

    Returns:
        name -> (median ms per sample, list of per-pass ms per sample).
    """
    batches = [np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32) for i in range(0, x.shape[0], batch_size)]
    n = x.shape[0]

    def one_pass(session) -> float:
        start = time.perf_counter()
        for batch in batches:
            session.run(None, {"input": batch})
        return (time.perf_counter() - start) * 1e3 / n

    names = list(sessions)
    for _ in range(warmup):
        for name in names:
            one_pass(sessions[name])
    passes = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            passes[name].append(one_pass(sessions[name]))
    return {name: (statistics.median(p), p) for name, p in passes.items()}


def _load(args):
    """Checkpoint, validated thresholds file and data (test split) of an export/run command."""
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data
    from tradeoff.runtime import model_stages
    from tradeoff.thresholds_file import load_thresholds

    loaded = load_checkpoint(args.ckpt, arch=args.arch, num_classes=args.num_classes, trust=args.trust_checkpoint)
    K = len(model_stages(loaded.model))
    cache_sha = None
    if getattr(args, "cache", None):
        from tradeoff.fileio import sha256_file

        if not Path(args.cache).is_file():
            raise FileNotFoundError(f"--cache {args.cache} does not exist; pass the cache the thresholds were searched on")
        cache_sha = sha256_file(args.cache)
    tf = load_thresholds(args.thresholds, num_exits=K, cache_sha256=cache_sha, checkpoint_sha256=loaded.sha256)
    spec = args.data or loaded.data or "digits"
    data = load_data(spec, splits=("test",))
    return loaded, tf, spec, data


def _rule_kwargs(tf) -> dict:
    """The thresholds file as `export_early_exit` keywords (today's files: fallback deepest)."""
    return dict(thresholds=[float(t) for t in tf.thresholds], confidence=tf.confidence, ensemble=tf.ensemble,
                fallback="deepest", temperatures=None if tf.temperatures is None else tf.temperatures.tolist())


def _metadata(loaded, tf) -> dict:
    from tradeoff.fileio import sha256_file

    return {"checkpoint_sha256": loaded.sha256, "arch": loaded.arch, "thresholds_file_sha256": sha256_file(tf.path),
            "cache_sha256": tf.cache_sha256 or "", "torch_version": torch.__version__}


def export_command(args) -> int:
    """`tradeoff export`: the early-exit ONNX graph (and optionally the original network)."""
    loaded, tf, _, data = _load(args)
    example = torch.zeros((1, *data.input_shape), dtype=torch.float32)
    meta = _metadata(loaded, tf)
    if args.original and Path(args.original).resolve() == Path(args.out).resolve():
        raise ValueError(f"--original {args.original} is the same file as --out; give it another name")
    print(f"exporting the early-exit graph of {loaded.arch} ({tf.num_exits} exits) ...", file=sys.stderr, flush=True)
    out = export_early_exit(loaded.model, **_rule_kwargs(tf), example_input=example, out_path=args.out,
                            opset=args.opset, metadata=meta)
    print(f"wrote {out} (input 'input' float32 (N, {', '.join(map(str, data.input_shape))}); "
          "outputs 'label', 'exit', 'confidence')")
    if args.original:
        original = export_original(loaded.model, example_input=example, out_path=args.original, opset=args.opset,
                                   metadata=meta)
        print(f"wrote {original} (the original single-exit network: outputs 'label', 'logits')")
    return 0


def run_onnx_command(args) -> int:
    """`tradeoff run --backend onnxruntime`: the exported graphs timed with ONNX Runtime's CPU provider."""
    from tradeoff.fileio import write_json_atomic
    from tradeoff.flops import exit_costs
    from tradeoff.runtime import Latency, RuntimeReport, report_document, report_table

    for name in ("batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if getattr(args, "compiled", False):
        raise ValueError("--compiled applies to --backend torch; ONNX Runtime optimises the exported graph itself")
    loaded, tf, spec, data = _load(args)
    K = tf.num_exits
    x = np.asarray(data.x, dtype=np.float32)
    example = torch.from_numpy(x[:1].copy())
    out = Path(args.out) if args.out else Path(args.thresholds).parent / f"run-onnx-b{args.batch_size}.json"
    meta = _metadata(loaded, tf)
    with tempfile.TemporaryDirectory(prefix="tradeoff-onnx-") as tmp:
        print("exporting the early-exit graph and the original network to ONNX ...", file=sys.stderr, flush=True)
        early_path = export_early_exit(loaded.model, **_rule_kwargs(tf), example_input=example,
                                       out_path=Path(tmp) / "early_exit.onnx", opset=args.opset, metadata=meta)
        deep_path = export_original(loaded.model, example_input=example, out_path=Path(tmp) / "original.onnx",
                                    opset=args.opset, metadata=meta)
        early, deep = ort_session(early_path, threads=args.threads), ort_session(deep_path, threads=args.threads)
        labels, exits, _ = run_session(early, x, batch_size=args.batch_size)
        times = time_sessions({"early": early, "deep": deep}, x, batch_size=args.batch_size, repeats=args.repeats)
    costs = exit_costs(loaded.model, data.input_shape)
    y = np.asarray(data.y, dtype=np.int64)
    latency = Latency(latency_ms=times["early"][0], baseline_latency_ms=times["deep"][0],
                      passes_ms=tuple(times["early"][1]), baseline_passes_ms=tuple(times["deep"][1]),
                      batch_size=args.batch_size, num_samples=int(x.shape[0]), mkldnn=None, baseline_mkldnn=None)
    report = RuntimeReport(accuracy=float(np.mean(labels == y)), exit_fractions=np.bincount(exits, minlength=K) / exits.size,
                           exits=exits, predictions=labels, flops=costs.flops, baseline_flops=costs.baseline_flops,
                           latency=latency)
    agreement = onnx_cache_agreement(args.cache, tf, y, labels, exits) if args.cache else None
    doc = report_document(report, backend="onnxruntime", batch_size=args.batch_size, threads=args.threads,
                          repeats=args.repeats, thresholds=[float(t) for t in tf.thresholds], confidence=tf.confidence,
                          ensemble=tf.ensemble, thresholds_file=str(tf.path), checkpoint=str(loaded.path),
                          checkpoint_sha256=loaded.sha256, arch=loaded.arch, data=spec, split="test",
                          data_fingerprint=data.fingerprint, search_test=tf.test, cache_agreement=agreement,
                          onnxruntime_version=_ort_version(), torch_version=torch.__version__)
    write_json_atomic(out, doc)
    print(report_table(report, tf.thresholds, search_test=tf.test))
    if agreement is not None:
        print(f"\nagreement with the cache's exit rule on the test split: {agreement['exits']:.2%} of exits, "
              f"{agreement['predictions']:.2%} of answers (ONNX Runtime, CPU provider)")
    print(f"\nwrote {out}")
    return 0


def onnx_cache_agreement(cache_path, tf, labels: np.ndarray, got_labels: np.ndarray, got_exits: np.ndarray) -> dict:
    """Fraction of test samples whose ONNX exit and label equal `rule_decisions` on the cached logits."""
    from tradeoff.cache import load_cache

    test = load_cache(cache_path).select("test")
    if not np.array_equal(test.labels, labels):
        raise ValueError(
            f"--cache {cache_path}: its test split ({test.num_samples} rows) is not the --data test split "
            f"({labels.size} rows) in the same order; pass the data the cache was built from"
        )
    rule = make_rule(**_rule_kwargs(tf), num_exits=test.num_exits, num_classes=test.logits.shape[-1])
    want_labels, want_exits, _ = rule_decisions(test.logits, rule)
    return {"exits": float(np.mean(want_exits == got_exits)), "predictions": float(np.mean(want_labels == got_labels))}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
