"""Shared test set-up: headless plots and reproducible, bounded thread use."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def scan_small_ckpt(tmp_path_factory):
    """An untrained (seed 0) scan_small checkpoint in the tradeoff format, shared read-only by the
    tests that only need some real model to cache, kill, shard or refuse."""
    import torch

    from tradeoff.checkpoint import save_checkpoint
    from tradeoff.models import create_model

    path = tmp_path_factory.mktemp("scan_small_ckpt") / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("scan_small", num_classes=10), arch="scan_small", arch_kwargs={},
                    num_classes=10, data="digits")
    return path
