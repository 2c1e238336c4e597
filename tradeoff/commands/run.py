"""`tradeoff run`: real early-exit inference with chosen thresholds; measured latency."""

from __future__ import annotations

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
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff run`: apply a thresholds.json to its model on the test split, for real."""
    from tradeoff.checkpoint import load_checkpoint
    from tradeoff.data import load_data
    from tradeoff.fileio import sha256_file, write_json_atomic
    from tradeoff.flops import exit_costs
    from tradeoff.policy.rule import read_rule
    from tradeoff.runtime.early_exit import (
        EarlyExitModel, cache_agreement, evaluate_runtime, model_stages, report_document, report_table,
    )
    import torch


    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1; got {args.repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.thresholds).parent / f"run-b{args.batch_size}.json"
    expect = prepare_output(out)  # before the model runs: a read-only folder fails now
    loaded = load_checkpoint(args.ckpt, arch=args.arch, num_classes=args.num_classes, trust=args.trust_checkpoint)
    K = len(model_stages(loaded.model))
    tf = read_rule(args.thresholds, num_exits=K, checkpoint_sha256=loaded.sha256)
    cache_path = _cache_to_compare(args, tf, sha256_file)
    if cache_path is not None:
        read_rule(args.thresholds, num_exits=K, cache_sha256=sha256_file(cache_path))  # another cache: one clear line
    spec = args.data or loaded.data or "digits"
    data = load_data(spec, splits=("test",))
    if data.y.max() >= loaded.num_classes:
        raise ValueError(
            f"--data {spec} has labels up to {int(data.y.max())} but the model has {loaded.num_classes} classes; "
            "pass the data the model was trained for"
        )
    costs = exit_costs(loaded.model, data.input_shape)
    compiled = bool(getattr(args, "compiled", False))
    runner = EarlyExitModel(loaded.model, tf.rule, compiled=compiled)
    report = evaluate_runtime(runner, data.x, data.y, flops=costs.flops, baseline_flops=costs.baseline_flops,
                              batch_size=args.batch_size, repeats=args.repeats, progress=progress_enabled(args))
    agreement = cache_agreement(cache_path, tf.rule, data.y, report) if cache_path is not None else None
    doc = report_document(
        report,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        compiled=compiled,
        thresholds=[float(t) for t in tf.thresholds],
        confidence=tf.confidence,
        ensemble=tf.ensemble,
        thresholds_file=str(tf.path),
        checkpoint=str(loaded.path),
        checkpoint_sha256=loaded.sha256,
        arch=loaded.arch,
        data=spec,
        split="test",
        data_fingerprint=data.fingerprint,
        search_test=tf.test,
        cache_agreement=agreement,
        torch_version=torch.__version__,
    )
    write_json_atomic(out, doc, expect=expect)
    print(report_table(report, tf.thresholds, search_test=tf.test))
    if agreement is not None:
        print(f"\nagreement with the cache's exit rule on the test split: {agreement['exits']:.2%} of exits, "
              f"{agreement['predictions']:.2%} of answers")
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
    from tradeoff.report.documents import resolve_recorded_cache

    recorded = resolve_recorded_cache(Path(args.thresholds).parent, tf.cache)
    if not args.cache:
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
