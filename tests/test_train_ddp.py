"""Training under a real `torchrun --nproc_per_node 2` on the CPU (gloo), resume, and their refusals.

The 2-process = 1-process check uses SideNet: its MainNet is frozen with BatchNorm in eval
mode and its side head has no BatchNorm, so nothing depends on which process saw which
rows and DDP must reproduce the single-process steps to float rounding. (With per-process
BatchNorm in training mode each process normalises with its own rows' statistics - DDP's
documented behaviour; `--sync-bn` fixes that but torch's SyncBatchNorm runs on CUDA only, so
here it is tested for its conversion and its refusal on the CPU.)
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from test_shard import _env, _finish, _free_port

from tradeoff.checkpoint import load_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.models import create_model
from tradeoff.training.distributed import per_rank_batch, use_sync_batchnorm
from tradeoff.training.loop import TrainingInterrupted, train_model
from tradeoff.training.resume import resume_path
from tradeoff.training.schedules import TrainConfig


def _torchrun(args, cwd, nproc=2, extra_env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "tradeoff", *args]
    env = {**_env(), **(extra_env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _config(**kw):
    base = dict(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=1e-4, schedule="cosine",
                augment="shift")
    base.update(kw)
    return TrainConfig(**base)


QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", splits=("train", "val"))


@pytest.fixture(scope="module")
def tiny(digits):
    """256 train and 128 val rows of the real digits split (fast BatchNorm-model runs)."""
    rows = np.concatenate([np.flatnonzero(digits.split == "train")[:256], np.flatnonzero(digits.split == "val")[:128]])
    return dataclasses.replace(digits, x=digits.x[rows], y=digits.y[rows], split=digits.split[rows])


@pytest.fixture(scope="module")
def main_ckpt(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("main") / "main.pt"
    train_model("mainnet_small", out=path, config=_config(epochs=2), dataset=digits, **QUIET)
    return path


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=1e-5), key


# --------------------------------------------------------------------------- 2 processes = 1 process
def test_two_processes_train_the_one_process_weights_and_rank_0_alone_writes(tmp_path, main_ckpt, digits, monkeypatch):
    args = ["train", "--arch", "sidenet", "--main", str(main_ckpt), "--epochs", "2", "--batch-size", "64",
            "--no-progress"]
    proc = _torchrun([*args, "--out", "two.pt"], tmp_path)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the single-process reference, meanwhile, with the workers' one thread
        assert main([*args, "--out", "one.pt"]) == 0
    finally:
        torch.set_num_threads(threads)
    code, out, err = _finish(proc, timeout=300)
    assert code == 0, err[-2000:]
    assert out.count("saved two.pt") == 1 and out.count("epoch   2/2") == 1  # rank 0 alone prints
    assert "on 2 processes (global batch 64)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "two.pt"]  # no temporaries, no resume state
    one, two = load_checkpoint(tmp_path / "one.pt"), load_checkpoint(tmp_path / "two.pt")
    _assert_same_weights(one.model.state_dict(), two.model.state_dict())
    assert (one.extra["world_size"], two.extra["world_size"]) == (1, 2)
    assert (two.extra["global_batch_size"], two.extra["per_process_batch_size"]) == (64, 32)
    assert one.extra["val_accuracy"] == pytest.approx(two.extra["val_accuracy"])  # reduced over both ranks


# --------------------------------------------------------------------------- resume
def _interrupt_after(epoch):
    def log(line):
        if line.startswith(f"epoch {epoch:3d}/"):
            raise KeyboardInterrupt
    return log


def test_resume_gives_the_uninterrupted_run_in_one_process(tmp_path, tiny):
    config = _config(epochs=3)
    full = train_model("scan_small", out=tmp_path / "full.pt", config=config, dataset=tiny, **QUIET)
    out = tmp_path / "cut.pt"
    with pytest.raises(TrainingInterrupted, match=r"interrupted during epoch 2 of 3; kept .*cut\.resume\.pt "
                                                  r"\(the end of epoch 1\).*--resume .*cut\.resume\.pt"):
        train_model("scan_small", out=out, config=config, dataset=tiny, progress=False, log=_interrupt_after(1))
    resumed = train_model("scan_small", out=out, config=config, dataset=tiny, resume=resume_path(out), **QUIET)
    assert resumed.val_history == full.val_history and resumed.loss_history == pytest.approx(full.loss_history)
    assert resumed.best_epoch == full.best_epoch
    a, b = _weights(tmp_path / "full.pt"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm model, same process count: bit for bit
    assert not resume_path(out).exists()  # a finished run leaves nothing to resume


def test_resume_in_two_processes_continues_a_one_process_run(tmp_path, main_ckpt, digits):
    config = _config(epochs=2)
    out = tmp_path / "side.pt"
    with pytest.raises(TrainingInterrupted):
        train_model("sidenet", main=main_ckpt, out=out, config=config, dataset=digits, progress=False,
                    log=_interrupt_after(1))
    proc = _torchrun(["train", "--arch", "sidenet", "--main", str(main_ckpt), "--epochs", "2", "--batch-size", "64",
                      "--out", str(out), "--resume", str(resume_path(out)), "--no-progress"], tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_model("sidenet", main=main_ckpt, out=tmp_path / "full.pt", config=config, dataset=digits, **QUIET)
    finally:
        torch.set_num_threads(threads)
    code, out_text, err = _finish(proc, timeout=300)
    assert code == 0, err[-2000:]
    assert "epoch   1/2" not in out_text and out_text.count("epoch   2/2") == 1  # continued at epoch 2
    _assert_same_weights(_weights(tmp_path / "full.pt"), _weights(out))


def test_resume_from_another_model_or_setting_is_refused(tmp_path, tiny):
    out = tmp_path / "m.pt"
    with pytest.raises(TrainingInterrupted):
        train_model("scan_small", out=out, config=_config(epochs=2), dataset=tiny, progress=False,
                    log=_interrupt_after(1))
    state = resume_path(out)
    with pytest.raises(ValueError, match=r"saved with lr = 0\.003 and this run has 0\.01 \(--lr\); resume with"):
        train_model("scan_small", out=out, config=_config(epochs=2, lr=0.01), dataset=tiny, resume=state, **QUIET)
    with pytest.raises(ValueError, match=r"saved by another model \(scan_small .*this run builds adjoined_small"):
        train_model("adjoined_small", out=out, config=_config(epochs=2), dataset=tiny, resume=state, **QUIET)
    with pytest.raises(FileNotFoundError, match=r"--resume .*nope\.pt: no such file"):
        train_model("scan_small", out=out, config=_config(epochs=2), dataset=tiny, resume=tmp_path / "nope.pt",
                    **QUIET)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable resume file"):
        train_model("scan_small", out=out, config=_config(epochs=2), dataset=tiny, resume=tmp_path / "bad.pt",
                    **QUIET)


# --------------------------------------------------------------------------- failures
FAILING_MODEL = textwrap.dedent("""
    import os
    from tradeoff.models import create_model

    class Failing(type(create_model("scan_small"))):
        calls = 0
        def forward(self, x):
            if self.training and os.environ.get("RANK") == "1":
                Failing.calls += 1
                if Failing.calls == 3:
                    raise RuntimeError("rank 1 met a corrupt batch")
            return super().forward(x)

    def build(num_classes=10):
        import tradeoff.models.small as small
        model = small.scan_small(num_classes=num_classes)
        model.__class__ = Failing
        return model
""")


def test_a_failing_rank_stops_the_job_with_one_clear_line(tmp_path):
    (tmp_path / "failing_model.py").write_text(FAILING_MODEL)
    proc = _torchrun(["train", "--arch", "failing_model:build", "--epochs", "2", "--out", "m.pt", "--no-progress",
                      "--loss", "ce"], tmp_path, extra_env={"PYTHONPATH": f"{tmp_path}:{_env()['PYTHONPATH']}"})
    code, out, err = _finish(proc, timeout=300)
    assert code != 0
    assert err.count("tradeoff train: error: rank 1 met a corrupt batch") == 1, err[-3000:]
    ours = err.split("torch/distributed/elastic")[0]  # before torchrun's own report (and its traceback)
    assert "Traceback" not in ours and "Warning" not in ours, ours
    assert "rank 1 met a corrupt batch" not in ours.replace("tradeoff train: error: rank 1 met a corrupt batch", "")
    assert not (tmp_path / "m.pt").exists()


def test_world_size_larger_than_the_train_split_is_refused_on_every_rank(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((4, 1, 8, 8), dtype=np.float32), y=np.array([0, 1, 2, 3]),
             split=np.array(["train", "val", "val", "val"]))
    proc = _torchrun(["train", "--arch", "scan_small", "--data", f"npz:{tmp_path / 'tiny.npz'}", "--epochs", "1",
                      "--out", "m.pt", "--no-progress"], tmp_path)
    code, out, err = _finish(proc, timeout=300)
    assert code != 0
    line = "world size 2 is larger than the train split (1 rows); use --nproc_per_node 1 or fewer"
    assert err.count(line) == 2, err[-3000:]  # one line from each rank
    assert not (tmp_path / "m.pt").exists()


def test_nccl_without_cuda_and_cpu_only_options_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    if not torch.cuda.is_available():
        assert main(["train", "--arch", "scan_small", "--out", "m.pt", "--device", "cuda"]) == 1
        assert "--device cuda: no CUDA device is available; use --device cpu" in capsys.readouterr().err
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key)
    assert main(["train", "--arch", "scan_small", "--out", "m.pt", "--amp"]) == 1
    assert "--amp is CUDA mixed precision; got --device cpu" in capsys.readouterr().err
    assert main(["train", "--arch", "scan_small", "--out", "m.pt", "--sync-bn"]) == 1
    assert "--sync-bn needs --device cuda" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_global_batch_must_divide_over_the_processes():
    assert per_rank_batch(64, 2, 1000) == 32
    with pytest.raises(ValueError, match=r"--batch-size 65 is the global batch .* 2 processes; use --batch-size 64 or 66"):
        per_rank_batch(65, 2, 1000)
    with pytest.raises(ValueError, match=r"world size 3 is larger than the train split \(2 rows\)"):
        per_rank_batch(64, 3, 2)


def test_sync_batchnorm_conversion_keeps_module_identity_and_keys():
    model = create_model("scan_small")
    keys = list(model.state_dict())
    before = [id(m) for m in model.modules()]
    count = use_sync_batchnorm(model)
    assert count == sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) > 0
    assert [id(m) for m in model.modules()] == before and list(model.state_dict()) == keys
    stem = model.stages()[0].section  # the cached stage list computes with the converted modules
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in stem.modules())
    with pytest.raises(ValueError, match="Adjoined network's small path applies the shared BatchNorm functionally"):
        use_sync_batchnorm(create_model("adjoined_small"))


# --------------------------------------------------------------------------- objectives and selection
def test_loss_ce_and_mean_selection(tmp_path, tiny):
    result = train_model("scan_small", out=tmp_path / "m.pt", config=_config(epochs=3, loss="ce"), dataset=tiny,
                         **QUIET)
    means = [float(np.mean(v)) for v in result.val_history]
    assert result.best_epoch == int(np.argmax(means)) + 1
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.extra["objective"] == "summed cross-entropy"
    assert loaded.extra["selected_by"] == "mean val accuracy over exits"
    model = create_model("scan_small")
    x, y = torch.as_tensor(tiny.x[:8]), torch.as_tensor(tiny.y[:8])
    from tradeoff.models.base import summed_cross_entropy

    expected = sum(torch.nn.functional.cross_entropy(z, y) for z in model(x))
    assert torch.allclose(summed_cross_entropy(model(x), y), expected)


def test_dan_searches_and_fine_tunes_under_torchrun(tmp_path):
    proc = _torchrun(["train", "--arch", "dan_small", "--epochs", "2", "--finetune-epochs", "1", "--out", "d.pt",
                      "--no-progress"], tmp_path)
    code, out, err = _finish(proc, timeout=300)
    assert code == 0, err[-2000:]
    assert out.count("search epoch   2/2") == 1 and out.count("saved d.pt (adjoined_small") == 1  # rank 0 alone
    loaded = load_checkpoint(tmp_path / "d.pt")
    assert loaded.arch == "adjoined_small" and loaded.extra["world_size"] == 2
    assert loaded.extra["dan"]["small_widths"] == loaded.model.small_widths
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt"]


def test_ctrl_c_says_which_epoch_was_kept_and_how_to_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tradeoff", "train", "--arch", "scan_small", "--epochs", "40",
                             "--out", "m.pt", "--no-progress"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "m.resume.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc, timeout=120)
    assert code == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tradeoff train: interrupted during epoch ")
    kept = int(lines[0].split("(the end of epoch ")[1].split(")")[0])
    assert kept >= 1 and "continue with the same command plus --resume m.resume.pt" in lines[0]
    assert torch.load(tmp_path / "m.resume.pt", weights_only=True)["epoch"] == kept
