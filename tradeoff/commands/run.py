"""`tradeoff run`: real early-exit inference with chosen thresholds; measured latency."""

from __future__ import annotations

import sys
from pathlib import Path


from tradeoff.commands.common import add_command, prepare_output, progress_enabled, si_int


def add_parser(sub) -> None:
    p = add_command(
        sub, "run", help="real early-exit inference with chosen thresholds; measured latency",
        description="Apply a run's thresholds.json to its model for real on the test split: each sample stops at "
                    "the first confident exit; reports accuracy, where samples left, and measured latency against "
                    "the original single-exit network, and writes the measurements as JSON.",
        examples="tradeoff run --ckpt results/demo/model.pt --thresholds results/demo-acc0.78/thresholds.json\n"
                 "tradeoff run --ckpt model.pt --thresholds results/x/thresholds.json --batch-size 64 --compiled",
    )
    p.add_argument("--ckpt", required=True, help="the checkpoint the thresholds were searched for")
    p.add_argument("--thresholds", required=True, help="results/<run>/thresholds.json")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--exits", help="for a model without stages(): its exit heads' module names, shallow -> deep "
                                   "(e.g. exit1,exit2,fc); its forward() must return those heads' outputs")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="data whose test split is run (default: the checkpoint's, else digits)")
    p.add_argument("--cache", help="the cache the thresholds came from: checked by sha256, and the runtime's "
                                   "exits compared with the exit rule on its test logits")
    p.add_argument("--batch-size", type=si_int, default=1, help="samples per forward call (default 1: deployment latency)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the split; the median is reported")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: batch-1 latency is steadiest on one core)")
    p.add_argument("--out", help="JSON file for the measurements (default: <thresholds dir>/run-b<batch>.json)")
    p.add_argument("--compiled", action="store_true",
                   help="run both the early-exit model and the original network as frozen TorchScript graphs "
                        "(batch norm folded: faster at small batch; logits may differ in the last float32 bits)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default) or onnxruntime: export both networks to ONNX and time them with "
                        "ONNX Runtime's CPU provider")
    p.add_argument("--opset", type=int, help="ONNX opset for --backend onnxruntime (default: the exporter's)")
    p.add_argument("--latency", help="device latency profile (latency.json): prints the predicted ms/sample beside "
                                     "the measured one (default: the profile the thresholds were chosen with, if any)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=run)


def load_inputs(args, *, compare: bool = True):
    """Checkpoint, validated thresholds file, data spec and test split of `run` / `export`.

    Args:
        compare: look for the cache to compare the runtime with (`run`); `export` does not.

    Returns:
        (loaded checkpoint, ThresholdsFile, data spec, Dataset with the test split, the cache to
        compare with: --cache, else the one the thresholds were searched on if it is there, or None).
    """
    from tradeoff.cache.build import check_model_contract
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data
    from tradeoff.fileio import sha256_file
    from tradeoff.policy.rule_file import read_rule
    from tradeoff.runtime.early_exit import model_stages

    loaded = load_checkpoint(args.ckpt, arch=args.arch, num_classes=args.num_classes, trust=args.trust_checkpoint)
    if getattr(args, "exits", None):
        from dataclasses import replace

        from tradeoff.models.attach import NamedExits

        loaded = replace(loaded, model=NamedExits(loaded.model, [n.strip() for n in args.exits.split(",")]))
    if loaded.stripped_prefix:
        print(f"note: removed the key prefix {loaded.stripped_prefix!r} that every entry of {args.ckpt} carries")
    K = len(model_stages(loaded.model))
    tf = read_rule(args.thresholds, num_exits=K, checkpoint_sha256=loaded.sha256)
    cache_path = _cache_to_compare(args, tf, sha256_file) if compare else None
    if cache_path is not None and getattr(args, "cache", None):  # the recorded cache was matched by sha256 already
        read_rule(args.thresholds, num_exits=K, cache_sha256=sha256_file(cache_path))  # another cache: one clear line
    spec = args.data or loaded.data or "digits"
    data = load_data(spec, splits=("test",))
    if data.y.max() >= loaded.num_classes:
        raise ValueError(
            f"--data {spec} has labels up to {int(data.y.max())} but the model has {loaded.num_classes} classes; "
            "pass the data the model was trained for"
        )
    check_model_contract(loaded.model, data)
    return loaded, tf, spec, data, cache_path


def run(args) -> int:
    """`tradeoff run`: apply a thresholds.json to its model on the test split, for real."""
    from tradeoff.fileio import write_json_atomic
    from tradeoff.flops import exit_costs
    from tradeoff.runtime.agreement import cache_agreement, cache_decisions, unexplained_disagreements
    from tradeoff.runtime.early_exit import EarlyExitModel
    from tradeoff.runtime.report import evaluate_runtime, report_document, report_table
    import torch

    for name in ("batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.backend == "onnxruntime":
        return run_onnxruntime(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.thresholds).parent / f"run-b{args.batch_size}.json"
    expect = prepare_output(out)  # before the model runs: a read-only folder fails now
    loaded, tf, spec, data, cache_path = load_inputs(args)
    costs = exit_costs(loaded.model, data.input_shape)
    compiled = bool(getattr(args, "compiled", False))
    runner = EarlyExitModel(loaded.model, tf.rule, compiled=compiled)
    report = evaluate_runtime(runner, data.x, data.y, flops=costs.flops, baseline_flops=costs.baseline_flops,
                              batch_size=args.batch_size, repeats=args.repeats, progress=progress_enabled(args))
    predicted = _predicted_latency(args, tf.path, loaded.sha256, tf.num_exits, report.exit_fractions, compiled)
    agreement = disagreement = None
    if cache_path is not None:
        decisions = cache_decisions(cache_path, tf.rule, data.y)
        agreement = cache_agreement(decisions, report.exits, report.predictions)
        disagreement = unexplained_disagreements(decisions, report.exits, report.predictions)
    doc = report_document(
        report,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        compiled=compiled,
        **tf.rule.document(),
        thresholds_file=str(tf.path),
        checkpoint=str(loaded.path),
        checkpoint_sha256=loaded.sha256,
        arch=loaded.arch,
        data=spec,
        split="test",
        data_fingerprint=data.fingerprint,
        search_test=tf.test,
        cache_agreement=agreement,
        cache_disagreements=disagreement,
        torch_version=torch.__version__,
        **predicted,
    )
    write_json_atomic(out, doc, expect=expect)
    print(report_table(report, tf.rule.thresholds, search_test=tf.test))
    if predicted:
        measured = report.latency.latency_ms
        print(f"\npredicted latency {predicted['predicted_latency_ms']:.4g} ms/sample (profile "
              f"{predicted['latency_profile']}), measured {measured:.4g}: measured / predicted "
              f"{measured / predicted['predicted_latency_ms']:.3f}")
    if agreement is not None:
        print(f"\nagreement with the cache's exit rule on the test split: {agreement['exits']:.2%} of exits, "
              f"{agreement['predictions']:.2%} of answers")
    print(f"\nwrote {out}")
    if disagreement is not None and disagreement["unexplained"]:
        print(f"tradeoff run: error: {disagreement['unexplained']} of {report.exits.size} test samples (first: test row "
              f"{disagreement['first_unexplained']}) left at another exit or got another answer than the cache's rule "
              "says, and not by float rounding at a threshold; this model or its exits are not those of --cache "
              "(rebuild the cache from this checkpoint)", file=sys.stderr)
        return 1
    return 0


def _predicted_latency(args, thresholds_path, checkpoint_sha256: str, K: int, exit_fractions, compiled: bool) -> dict:
    """{predicted_latency_ms, latency_profile} from --latency or the profile recorded in thresholds.json; {} if none."""
    import json
    import sys

    from tradeoff.policy.latency import expected_latency_ms, read_latency_profile

    path = args.latency
    if not path:
        recorded = json.loads(Path(thresholds_path).read_text()).get("latency") or {}
        path = recorded.get("profile")
        if not path:
            return {}
        if not Path(path).is_file():
            print(f"tradeoff run: note: the thresholds were chosen with latency profile {path}, which is not here; "
                  "pass --latency to print the predicted latency", file=sys.stderr)
            return {}
    profile = read_latency_profile(path, checkpoint_sha256=checkpoint_sha256, num_exits=K, batch_size=args.batch_size)
    if bool(profile.meta.get("compiled")) != compiled:
        print(f"tradeoff run: warning: latency profile {path} was measured {'with' if profile.meta.get('compiled') else 'without'} "
              f"--compiled but this run is {'compiled' if compiled else 'eager'}; the prediction is for the other backend",
              file=sys.stderr)
    ms = float(expected_latency_ms(profile, exit_fractions, batch_size=args.batch_size))
    return {"predicted_latency_ms": ms, "latency_profile": str(path)}


def run_onnxruntime(args) -> int:
    """`tradeoff run --backend onnxruntime`: both networks exported to ONNX, timed with ONNX Runtime's CPU provider."""
    import tempfile

    import numpy as np
    import torch

    from tradeoff.fileio import write_json_atomic
    from tradeoff.flops import exit_costs
    from tradeoff.runtime.report import RuntimeReport, report_document, report_table
    from tradeoff.runtime.timing import Latency
    from tradeoff.runtime.onnx_export import export_early_exit, export_original
    from tradeoff.runtime.onnx_session import (
        export_metadata, onnxruntime_version, ort_session, run_session, time_sessions,
    )

    if args.compiled:
        raise ValueError("--compiled applies to --backend torch; ONNX Runtime optimises the exported graph itself")
    out = Path(args.out) if args.out else Path(args.thresholds).parent / f"run-onnx-b{args.batch_size}.json"
    expect = prepare_output(out)  # before the export and the timing: a read-only folder fails now
    loaded, tf, spec, data, cache_path = load_inputs(args)
    K = tf.num_exits
    x = np.asarray(data.x, dtype=np.float32)
    example = torch.from_numpy(x[:1].copy())
    meta = export_metadata(loaded, tf)
    with tempfile.TemporaryDirectory(prefix="tradeoff-onnx-") as tmp:
        print("exporting the early-exit graph and the original network to ONNX ...", file=sys.stderr, flush=True)
        early_path = export_early_exit(loaded.model, tf.rule, example_input=example,
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
    agreement = None
    if cache_path is not None:
        from tradeoff.runtime.agreement import cache_agreement, cache_decisions

        agreement = cache_agreement(cache_decisions(cache_path, tf.rule, y), exits, labels)
    doc = report_document(report, backend="onnxruntime", batch_size=args.batch_size, threads=args.threads,
                          repeats=args.repeats, **tf.rule.document(), thresholds_file=str(tf.path), checkpoint=str(loaded.path),
                          checkpoint_sha256=loaded.sha256, arch=loaded.arch, data=spec, split="test",
                          data_fingerprint=data.fingerprint, search_test=tf.test, cache_agreement=agreement,
                          onnxruntime_version=onnxruntime_version(), torch_version=torch.__version__)
    write_json_atomic(out, doc, expect=expect)
    print(report_table(report, tf.rule.thresholds, search_test=tf.test))
    if agreement is not None:
        print(f"\nagreement with the cache's exit rule on the test split: {agreement['exits']:.2%} of exits, "
              f"{agreement['predictions']:.2%} of answers (ONNX Runtime, CPU provider)")
    print(f"\nwrote {out}")
    return 0


def _cache_to_compare(args, tf, sha256_file) -> Path | None:
    """--cache, else (without --data) the cache the run recorded, found relative to the thresholds
    file, when it still holds the very bytes searched; None when there is none to compare with.

    Raises:
        FileNotFoundError: --cache does not exist.
        ValueError: --cache is the recorded cache file but was rebuilt since the search (say
            with --logits-dtype float16): the message names that cause and the fix, not the path.
    """
    from tradeoff.report.rundir import resolve_recorded_cache

    recorded = resolve_recorded_cache(Path(args.thresholds).parent, tf.cache)
    if not getattr(args, "cache", None):
        # Only for the data the cache was built on (the checkpoint's): other data has other test rows.
        if args.data is None and recorded is not None and recorded.is_file() and sha256_file(recorded) == tf.cache_sha256:
            print(f"comparing with the run's cache {recorded}")
            return recorded
        return None
    given = Path(args.cache)
    if not given.is_file():
        raise FileNotFoundError(f"--cache {given} does not exist; pass the cache the thresholds were searched on")
    if tf.cache_sha256 and recorded is not None and recorded.is_file() and recorded.resolve() == given.resolve() \
            and sha256_file(given) != tf.cache_sha256:
        from tradeoff.cache.format import load_cache

        rebuilt = load_cache(given)
        raise ValueError(
            f"--cache {given} is the file {args.thresholds} was searched on, but it was rebuilt since (it now holds "
            f"{rebuilt.logits.dtype} logits, created {rebuilt.meta.get('created', '?')}), so the thresholds may not fit "
            f"it; search it again: tradeoff search --cache {given} --out {Path(args.thresholds).parent}"
        )
    return given
