"""What every sub-command shares (issue 15): help, SI numbers, one-line option errors, progress off
the terminal, outputs checked before the work, concurrent writers, broken pipes, plausibility
warnings."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradeoff.cache.format import write_cache
from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.commands import build_parser, main
from tradeoff.commands.common import si_int, si_number
from tradeoff.fileio import ensure_unchanged, output_stamp, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
FAST = ["--pop", "12", "--gens", "4"]


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "syn.npz"
    write_cache(path, synthetic_cache(1200, 10, (0.6, 0.75, 0.85), seed=5))
    return path


def _sub_parsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_sub_command_has_a_description_examples_help_on_every_option_and_no_progress():
    for name, sub in _sub_parsers().items():
        assert sub.description, name
        assert sub.epilog and sub.epilog.startswith("examples:\n  "), name
        assert "--no-progress" in sub._option_string_actions, name
        for action in sub._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"tradeoff {name} {action.option_strings[0]} has no help"


def test_train_help_lists_the_models():
    help_text = _sub_parsers()["train"].format_help()
    assert "scan_small" in help_text and "sidenet" in help_text and "{MODELS}" not in help_text


def test_si_suffixes():
    assert si_number("300M") == 3e8 and si_number("3e8") == 3e8 and si_number("1.5G") == 1.5e9
    assert si_number("64k") == 64_000 and si_int("1k") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match=r"'300Q' is not a number; give e.g. 3e8, 300M"):
        si_number("300Q")
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number"):
        si_int("1.5")


def test_budget_flops_takes_an_si_suffix(cache_file, tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--cache", str(cache_file), "--budget-flops", "300M", *FAST, "--no-plots",
                 "--out", str(out)]) == 0
    assert json.loads((out / "thresholds.json").read_text())["pick"] == {"budget_flops": 3e8}


def test_a_misspelt_option_gives_the_sub_commands_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--budjet-flops", "3e8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "tradeoff search: error: unrecognized arguments: --budjet-flops 3e8 (see `tradeoff search --help`)\n"


def test_max_drop_below_a_tenth_of_a_point_warns(cache_file, tmp_path, capsys):
    assert main(["search", "--cache", str(cache_file), "--max-drop", "0.005", *FAST, "--no-plots",
                 "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "warning: --max-drop 0.005 is in percentage points" in err and "--max-drop 0.5" in err


@pytest.mark.parametrize("command", [
    ["cache", "--ckpt", "missing.pt"],
    ["run", "--ckpt", "missing.pt", "--thresholds", "missing.json"],
    ["import", "missing.npy", "--labels", "missing.npy", "--flops", "1,2"],
])
def test_outputs_are_checked_before_any_work(command, tmp_path, capsys):
    """A folder that cannot hold the output fails first - not after the model ran over the data."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*command, "--out", str(blocker / "out.x")]) == 1
    err = capsys.readouterr().err
    assert f"--out {blocker / 'out.x'}: {blocker} is a file, not a folder" in err, err


def test_an_output_written_meanwhile_is_not_replaced(tmp_path):
    path = tmp_path / "f.txt"
    stamp = output_stamp(path)
    write_text_atomic(path, "other writer")
    with pytest.raises(FileExistsError, match="was written by another process while this one worked"):
        write_text_atomic(path, "late writer", expect=stamp)
    assert path.read_text() == "other writer"
    ensure_unchanged(path, output_stamp(path))  # unchanged: fine
    write_text_atomic(path, "rerun", expect=output_stamp(path))
    assert path.read_text() == "rerun"


def test_search_into_an_out_of_another_cache_says_it_replaced_it(cache_file, tmp_path, capsys):
    other = tmp_path / "other.npz"
    other.write_bytes(cache_file.read_bytes())
    out = tmp_path / "run"
    assert main(["search", "--cache", str(cache_file), "--target-acc", "0.7", *FAST, "--no-plots", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", "--cache", str(other), "--target-acc", "0.7", *FAST, "--no-plots", "--out", str(out)]) == 0
    assert f"this replaced the run that was in {out}/, searched on another cache" in capsys.readouterr().out


def test_train_refuses_to_overwrite_another_models_checkpoint(tmp_path, capsys):
    import torch

    from tradeoff.checkpoint import save_checkpoint
    from tradeoff.models import create_model

    out = tmp_path / "main.pt"
    torch.manual_seed(0)
    save_checkpoint(out, create_model("mainnet_small", num_classes=10), arch="mainnet_small", arch_kwargs={},
                    num_classes=10, data="digits")
    before = out.read_bytes()
    assert main(["train", "--arch", "scan_small", "--epochs", "1", "--out", str(out)]) == 1
    assert "holds a checkpoint of another model (mainnet_small on digits, not scan_small on digits)" in capsys.readouterr().err
    assert out.read_bytes() == before


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env.pop("TQDM_DISABLE", None)  # the tests' conftest switches bars off; here the tool must do it itself
    return env


def test_no_bars_in_a_log_file_and_no_broken_pipe_under_head(cache_file, tmp_path, scan_small_ckpt):
    log = tmp_path / "cache.log"
    with open(log, "wb") as handle:
        done = subprocess.run([sys.executable, "-m", "tradeoff", "cache", "--ckpt", str(scan_small_ckpt),
                               "--out", str(tmp_path / "c.npz")], stdout=handle, stderr=subprocess.STDOUT,
                              env=_env(), timeout=300)
    assert done.returncode == 0
    assert b"\r" not in log.read_bytes() and b"wrote" in log.read_bytes()

    out = tmp_path / "piped"
    piped = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m tradeoff search --cache {cache_file} --target-acc 0.7 "
                       f"{' '.join(FAST)} --no-plots --out {out} | head -1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert piped.returncode == 0, piped.stderr
    assert "Broken pipe" not in piped.stderr and "BrokenPipeError" not in piped.stderr
    assert len(piped.stdout.splitlines()) == 1
    assert (out / "thresholds.json").is_file()  # the work was finished although the reader left


def test_run_finds_the_runs_cache_from_another_folder_and_names_an_in_place_rebuild(tmp_path, scan_small_ckpt,
                                                                                    monkeypatch, capsys):
    """Issue 15 item 8: the cache is recorded relative to the run; a float16 rebuild in place is named as the cause."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["cache", "--ckpt", str(scan_small_ckpt), "--out", "c.npz"]) == 0
    assert main(["search", "--cache", "c.npz", "--pop", "8", "--gens", "2", "--no-plots", "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    thresholds = str(work / "run" / "thresholds.json")
    assert main(["run", "--ckpt", str(scan_small_ckpt), "--thresholds", thresholds, "--repeats", "1",
                 "--out", "r.json"]) == 0
    out = capsys.readouterr().out
    assert f"comparing with the run's cache {work / 'c.npz'}" in out and "agreement with the cache" in out

    monkeypatch.chdir(work)
    assert main(["cache", "--ckpt", str(scan_small_ckpt), "--out", "c.npz", "--logits-dtype", "float16"]) == 0
    assert "runs searched on the old file must be searched again" in capsys.readouterr().err
    assert main(["run", "--ckpt", str(scan_small_ckpt), "--thresholds", "run/thresholds.json", "--cache", "c.npz",
                 "--repeats", "1", "--out", "r.json"]) == 1
    err = capsys.readouterr().err
    assert "was rebuilt since (it now holds float16 logits" in err and "tradeoff search --cache c.npz --out run" in err
