"""ONNX Runtime sessions for the exported graphs: running, timing, and checking them.

`tradeoff export` and `tradeoff run --backend onnxruntime` (tradeoff.commands) use these:
`ort_session` opens a graph written by `runtime.onnx_export` on ONNX Runtime's CPU
provider, `run_session` runs it over an array in batches, `time_sessions` times several
graphs side by side (interleaved passes, medians, as `runtime.early_exit.measure_latency`
does for torch); `runtime.agreement` compares the graph's exits and labels with the exit rule
applied to the cache's test logits.
"""

from __future__ import annotations

import statistics
import time

import numpy as np



def export_metadata(loaded, rule_file) -> dict:
    """`metadata_props` of an exported graph: what it was made from (checkpoint, thresholds file, cache)."""
    import torch

    from tradeoff.fileio import sha256_file

    return {"checkpoint_sha256": loaded.sha256, "arch": loaded.arch, "thresholds_file_sha256": sha256_file(rule_file.path),
            "cache_sha256": rule_file.cache_sha256 or "", "torch_version": torch.__version__}


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


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
