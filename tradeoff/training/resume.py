"""`--resume`: the state a training run needs to continue exactly where it stopped.

After every epoch rank 0 writes `<out stem>.resume.pt` (atomically, beside the kept
checkpoint): the LAST epoch's model, optimizer, scheduler and gradient-scaler state, the
epoch, torch's random states, the best epoch so far and the histories, plus what must not
change on resuming (arch, its kwargs, the data fingerprint, every training setting but the
device). It loads with `torch.load(weights_only=True)`: plain values and tensors only.

Shuffling and augmentation are reseeded from (seed, epoch) each epoch, so a resumed run
draws what the uninterrupted one would have; the number of processes may differ as long as
the global batch size is the same (it is a training setting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tradeoff.fileio import atomic_open

FORMAT = "tradeoff-resume"
VERSION = 1
# Settings that may differ between the interrupted run and its continuation.
FREE_SETTINGS = ("device",)


def resume_path(out: str | os.PathLike) -> Path:
    """`model.pt` -> `model.resume.pt`, beside the kept checkpoint."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.pt")


@dataclass(frozen=True)
class ResumeState:
    """What `load_resume` read: continue with epoch `epoch + 1`."""

    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    best: dict
    val_history: list
    loss_history: list
    seconds: float


def identity(arch: str, arch_kwargs: dict, data_fingerprint: str, config_dict: dict) -> dict:
    """What a resumed run must share with the interrupted one."""
    settings = {k: v for k, v in config_dict.items() if k not in FREE_SETTINGS}
    return {"arch": arch, "arch_kwargs": _plain(arch_kwargs), "data_fingerprint": data_fingerprint,
            "settings": _plain(settings)}


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_resume(path: Path, *, who: dict, epoch: int, model, optimizer, scheduler, scaler, best: dict,
                val_history, loss_history, seconds: float, world_size: int) -> None:
    """Write the state after `epoch` atomically (rank 0 only)."""
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "milestones"}  # rebuilt from the config
    state = {
        "format": FORMAT, "version": VERSION, "identity": who, "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": sched,
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "best": _plain(best), "val_history": _plain(val_history), "loss_history": list(loss_history),
        "seconds": float(seconds), "world_size": int(world_size),
    }
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_resume(path: str | os.PathLike, who: dict) -> ResumeState:
    """Read and check a resume file against this run's identity; restores torch's RNG states.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a resume file, or one from another model, data or settings (naming
            the first difference and how to fix it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file; give the .resume.pt file an interrupted run kept")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        first = " ".join(str(exc).split())[:160]
        raise ValueError(f"--resume {path}: not a readable resume file ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"--resume {path}: not a tradeoff resume file (those are the <out>.resume.pt files "
                         "`tradeoff train` writes after each epoch)")
    if state.get("version") != VERSION:
        raise ValueError(f"--resume {path}: resume format version {state.get('version')} is not {VERSION}")
    _check_same(path, state["identity"], who)
    rng = state.get("rng", {})
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return ResumeState(epoch=int(state["epoch"]), model=state["model"], optimizer=state["optimizer"],
                       scheduler=state["scheduler"], scaler=state["scaler"], best=state["best"],
                       val_history=state["val_history"], loss_history=state["loss_history"],
                       seconds=float(state["seconds"]))


def _check_same(path: Path, saved: dict, here: dict) -> None:
    fix = "resume with the interrupted run's options, or start afresh without --resume"
    if saved["arch"] != here["arch"] or saved["arch_kwargs"] != here["arch_kwargs"]:
        raise ValueError(f"--resume {path} was saved by another model ({saved['arch']} {saved['arch_kwargs']}); "
                         f"this run builds {here['arch']} {here['arch_kwargs']}; {fix}")
    if saved["data_fingerprint"] != here["data_fingerprint"]:
        raise ValueError(f"--resume {path} was saved on other data (fingerprint {saved['data_fingerprint'][:12]}, "
                         f"here {here['data_fingerprint'][:12]}); {fix}")
    for key in sorted(set(saved["settings"]) | set(here["settings"])):
        a, b = saved["settings"].get(key), here["settings"].get(key)
        if a != b:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--resume {path} was saved with {key} = {a!r} and this run has {b!r} ({flag}); {fix}")
