"""Crash safety: a process killed with SIGKILL at any moment leaves no half-written output.

Every file goes through `tradeoff.fileio.atomic_open` (temporary file beside the target,
fsync, rename), so after a kill the output is either absent or the complete previous or
new file, and the killed writer's temporary file is neither mistaken for output nor kept
forever (the next writer of the same file removes it). `tradeoff search` runs killed at
random moments are covered by `tests/test_search_run.py::test_sigkill_leaves_the_old_run_or_the_new_one`.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tradeoff.cache.format import load_cache
from tradeoff.fileio import atomic_open, remove_stale_temporaries
from tradeoff.commands.defaults import newest_cache

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1", MPLBACKEND="Agg")


def _spawn(args, cwd):
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _strays(directory: Path, keep: set) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def _assert_absent_or_whole(out: Path, reference) -> bool:
    """`out` is absent or a complete cache equal to `reference`; stray files are hidden temporaries."""
    if not out.parent.exists():  # killed before it got as far as creating the directory
        return False
    strays = _strays(out.parent, {out.name})
    assert all(name.startswith(f".{out.name}.") and name.endswith(".tmp") for name in strays), strays
    if not out.exists():
        with pytest.raises(FileNotFoundError):
            newest_cache(out.parent)  # a temporary is never taken for a cache
        return False
    cache = load_cache(out)
    np.testing.assert_array_equal(cache.logits, reference.logits)
    np.testing.assert_array_equal(cache.labels, reference.labels)
    assert newest_cache(out.parent) == (out, 1)
    return True


def test_sigkilled_cache_command_leaves_nothing_or_a_whole_cache(scan_small_ckpt, tmp_path):
    def cache(out):
        return _spawn(["-m", "tradeoff", "cache", "--ckpt", str(scan_small_ckpt), "--batch-size", "4",
                       "--out", str(out)],
                      tmp_path)

    reference_out = tmp_path / "ref" / "model-digits.npz"
    start = time.perf_counter()
    proc = cache(reference_out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    full = time.perf_counter() - start
    reference = load_cache(reference_out)

    out = tmp_path / "results" / "cache" / "model-digits.npz"
    rng = np.random.default_rng(6)
    for fraction in rng.uniform(0.3, 1.05, size=3):
        proc = cache(out)
        try:
            proc.wait(timeout=full * fraction)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        _assert_absent_or_whole(out, reference)
    proc = cache(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _assert_absent_or_whole(out, reference)
    assert _strays(out.parent, {out.name}) == []  # the rerun removed the killed runs' temporaries


_WRITER = """
import sys
import numpy as np
from tradeoff.cache.format import write_cache
from tradeoff.cache.synthetic import synthetic_cache
caches = [synthetic_cache(40_000, 40, (0.5, 0.7, 0.9), seed=s) for s in (1, 2)]
print("ready", flush=True)
i = 0
while True:
    write_cache(sys.argv[1], caches[i % 2])
    i += 1
"""


def test_sigkill_during_cache_writes_leaves_the_old_or_the_new_file(tmp_path):
    """Kill a process that rewrites a ~20 MB cache in a loop: it dies mid-write nearly every time."""
    from tradeoff.cache.synthetic import synthetic_cache

    expected = [synthetic_cache(40_000, 40, (0.5, 0.7, 0.9), seed=s).logits for s in (1, 2)]
    out = tmp_path / "c.npz"
    rng = np.random.default_rng(7)
    seen_strays = 0
    for i, delay in enumerate(rng.uniform(0.0, 0.3, size=6)):
        remove_stale_temporaries(out)  # so a temporary seen below is this writer's
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-2000:]
        if i % 2:  # every other kill: shortly after a write has begun, to land inside one for sure
            deadline = time.monotonic() + 30
            while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.001)
            delay /= 10
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        strays = _strays(tmp_path, {out.name})
        seen_strays += bool(strays)
        assert all(name.startswith(".c.npz.") and name.endswith(".tmp") for name in strays), strays
        if out.exists():
            logits = load_cache(out).logits
            assert any(np.array_equal(logits, e) for e in expected)
            assert newest_cache(tmp_path)[0] == out
    assert seen_strays >= 1  # some kill did land mid-write, so the check above was exercised
    remove_stale_temporaries(out)  # (each new writer also removed the previous one's leftovers)
    assert _strays(tmp_path, {out.name}) == []


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    out = tmp_path / "x.json"
    with atomic_open(out, "w") as handle:
        handle.write("{}")
        live = _strays(tmp_path, set())
        assert len(live) == 1
        assert remove_stale_temporaries(out) == []  # this process is alive
        dead = tmp_path / live[0].replace(f"-{os.getpid()}.", "-999999999.")
        other_host = tmp_path / ".x.json.some-other-host-1.abcdefgh.tmp"
        dead.write_text("left by a killed writer")
        other_host.write_text("a writer on another machine sharing the directory")
    assert out.read_text() == "{}"
    assert dead.exists()  # removed by the next writer of x.json, not by this one's rename
    with atomic_open(out, "w") as handle:
        handle.write("[]")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", other_host.name])


def test_shards_and_temporaries_are_not_taken_for_the_newest_cache(tmp_path):
    from tradeoff.cache.format import write_cache
    from tradeoff.cache.synthetic import synthetic_cache

    cache = tmp_path / "model-digits.npz"
    write_cache(cache, synthetic_cache(50, 3, (0.5, 0.8), seed=0))
    time.sleep(0.01)
    for name in ("model-digits.npz.shard-0-of-2.npz", ".model-digits.npz.h-1.abc.tmp", ".hidden.npz"):
        (tmp_path / name).write_bytes(b"newer but not a cache")
    assert newest_cache(tmp_path) == (cache, 1)
