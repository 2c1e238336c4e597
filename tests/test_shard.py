"""Sharded caching under a real `torchrun --nproc_per_node 2` on the CPU: the merged cache is
the single-process cache, byte for byte on the logits; a world larger than the data fails."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tradeoff.cache.build import INFORMATIONAL_META
from tradeoff.commands import main
from tradeoff.cache.shard import detect_torchrun, rank_rows, shard_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n, batch, world", [(719, 256, 2), (719, 64, 2), (2048, 256, 2), (10, 3, 4), (5, 256, 3), (7, 1, 7)])
def test_rank_rows_cut_whole_batches_and_cover_every_row_once(n, batch, world):
    rows = rank_rows(n, batch, world)
    assert len(rows) == world and rows[0][0] == 0 and rows[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))  # contiguous, in order
    assert all(start % batch == 0 or start == n for start, _ in rows)  # on the single-process grid
    sizes = [stop - start for start, stop in rows]
    assert max(sizes) - min(sizes) <= batch or min(sizes) == 0


def test_rank_rows_balance_and_limits():
    assert rank_rows(2048, 256, 2) == [(0, 1024), (1024, 2048)]
    assert rank_rows(5, 256, 3) == [(0, 0), (0, 0), (0, 5)]  # fewer batches than ranks: some idle
    with pytest.raises(ValueError, match=r"world size 3 is larger than the number of samples \(2\).*--nproc_per_node 2"):
        rank_rows(2, 256, 3)


def test_detect_torchrun_reads_the_environment():
    full = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    ctx = detect_torchrun(full)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (1, 2, 1, False)
    assert detect_torchrun({}) is None
    assert detect_torchrun({**full, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    with pytest.raises(ValueError, match=r"incomplete: WORLD_SIZE, RANK set but LOCAL_RANK, MASTER_ADDR, MASTER_PORT not"):
        detect_torchrun({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(ValueError, match="must be integers"):
        detect_torchrun({**full, "RANK": "one"})
    assert shard_path("r/c.npz", 1, 2) == Path("r/c.npz.shard-1-of-2.npz")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _torchrun(args, cwd, nproc=2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "tradeoff", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def _read(path):
    with np.load(path, allow_pickle=False) as raw:
        return {k: raw[k] for k in raw.files}


def test_two_process_cache_is_the_single_process_cache(scan_small_ckpt, tmp_path, monkeypatch):
    args = ["cache", "--ckpt", str(scan_small_ckpt), "--batch-size", "64"]
    proc = _torchrun([*args, "--out", "merged.npz"], tmp_path)
    # Meanwhile the single-process reference, in this process, with the workers' one thread.
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", "single.npz"]) == 0
    finally:
        torch.set_num_threads(threads)
    code, out, err = _finish(proc)
    assert code == 0, err[-2000:]
    assert out.count("wrote merged.npz") == 1 and out.count("exit1 ") == 1  # rank 0 alone prints
    assert "cached 719 rows on 2 processes" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.npz", "single.npz"]  # shards removed

    a, b = _read(tmp_path / "single.npz"), _read(tmp_path / "merged.npz")
    assert a["logits"].dtype == np.float32 and a["logits"].shape == (3, 719, 10)
    for key in ("logits", "labels", "split", "flops"):
        assert a[key].tobytes() == b[key].tobytes(), key
    meta_a, meta_b = json.loads(str(a["meta"][()])), json.loads(str(b["meta"][()]))
    assert (meta_a["world_size"], meta_b["world_size"]) == (1, 2)
    for field in INFORMATIONAL_META:
        meta_a.pop(field), meta_b.pop(field)
    assert meta_a == meta_b


def test_failures_reach_every_rank_and_leave_no_file(scan_small_ckpt, tmp_path):
    """A world larger than the data fails on every rank; a NaN in rank 1's rows only fails
    rank 1 with the exit named and rank 0 with rank 1's reason; nothing is left behind."""
    (tmp_path / "one").mkdir()
    (tmp_path / "nan").mkdir()
    np.savez(tmp_path / "one" / "one.npz", x=np.zeros((1, 1, 8, 8), np.float32), y=np.array([3]))
    x = np.random.default_rng(0).random((128, 1, 8, 8)).astype(np.float32)
    x[64:] = 3e38  # finite input, overflowing activations: rank 1's block (rows 64..127) only
    np.savez(tmp_path / "nan" / "nan.npz", x=x, y=np.arange(128) % 10)
    base = ["cache", "--ckpt", str(scan_small_ckpt), "--out", "c.npz"]
    runs = [_torchrun([*base, "--data", "npz:one.npz"], tmp_path / "one"),
            _torchrun([*base, "--data", "npz:nan.npz", "--batch-size", "32"], tmp_path / "nan")]
    (code_one, _, err_one), (code_nan, _, err_nan) = [_finish(run) for run in runs]

    assert code_one != 0
    line = "tradeoff cache: error: torchrun world size 2 is larger than the number of samples (1)"
    assert err_one.count(line) == 2, err_one[-2000:]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["one.npz"]

    assert code_nan != 0
    own = "tradeoff cache: error: exit 1 gave NaN/inf logits (first at sample 64)"
    relayed = "tradeoff cache: error: process 1 of 2 failed: exit 1 gave NaN/inf logits (first at sample 64)"
    assert err_nan.count(own) == 1 and err_nan.count(relayed) == 1, err_nan[-2000:]
    assert sorted(p.name for p in (tmp_path / "nan").iterdir()) == ["nan.npz"]  # no cache, no shard
