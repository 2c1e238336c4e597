"""The README's shell blocks run exactly as written (issue 15, item 3).

Every fenced block opened with ```bash in README.md is a command a reader will paste, so this
test pastes them: all of them, in order, as one `bash -e -o pipefail` script (blocks chain: the
`tradeoff search` after `make demo` must find the demo's cache), in a temporary copy of the
repository (the files git tracks or would add) whose `.venv` is a link to the set-up virtual
environment (this checkout's `.venv`, else the one running the tests), so `make` finds it set up
and `source .venv/bin/activate` works; PYTHONPATH points at the copy so its code is what runs.

Conventions for writers of the README (also in docs/newcomer.md):
* ```bash only for commands that run as written from a fresh clone after the blocks before
  them; placeholders (DIR, model.pt that no block made) go in plain ``` or ```text blocks.
* A block too slow for the suite (`make test`, `make bench`, CIFAR or Fashion-MNIST training,
  anything over a couple of minutes) gets the line `<!-- slow -->` right before its fence; it
  runs only with TRADEOFF_README_SLOW=1, and no later block may depend on it. `make demo` is
  not slow (about a minute and a half): the blocks after it depend on it.

Until the README has ```bash blocks, the draft of them in docs/newcomer.md is what runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLOW_MARK = "<!-- slow -->"
STAMP = ".installed-stamp"


def shell_blocks(markdown: str) -> list[tuple[int, str, bool]]:
    """(line number of the fence, the block's text, marked slow) for every ```bash block."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"```bash block at line {i + 1} is never closed")
            blocks.append((i + 1, "\n".join(lines[i + 1 : end]), previous == SLOW_MARK))
            i = end
        i += 1
    return blocks


def chained_script(blocks, *, source: str, run_slow: bool) -> str:
    parts = ["set -e -o pipefail"]
    for line, text, slow in blocks:
        if slow and not run_slow:
            continue
        parts.append(f"echo '### {source} line {line}' >&2")
        parts.append(text)
    return "\n".join(parts) + "\n"


def test_shell_blocks_and_the_slow_mark():
    doc = "text\n```bash\nmake demo\n```\n\n<!-- slow -->\n\n```bash\nmake bench\n```\n```\nnot run DIR\n```\n"
    assert shell_blocks(doc) == [(2, "make demo", False), (8, "make bench", True)]
    script = chained_script(shell_blocks(doc), source="X.md", run_slow=False)
    assert "make demo" in script and "make bench" not in script and script.startswith("set -e -o pipefail")
    with pytest.raises(ValueError, match="never closed"):
        shell_blocks("```bash\nmake demo\n")


def _document() -> tuple[Path, list]:
    readme = REPO / "README.md"
    blocks = shell_blocks(readme.read_text(encoding="utf-8"))
    if blocks:
        return readme, blocks
    draft = REPO / "docs" / "newcomer.md"
    return draft, shell_blocks(draft.read_text(encoding="utf-8"))


def _venv() -> Path | None:
    for candidate in (REPO / ".venv", Path(sys.executable).resolve().parents[1], Path(sys.prefix)):
        if (candidate / STAMP).is_file() and (candidate / "bin" / "activate").is_file():
            return candidate
    return None


def _copy_repo(dest: Path, venv: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(venv, target_is_directory=True)
    # make's set-up rule reinstalls when these are newer than the stamp; the copy is as set up as the venv.
    stamp_time = (venv / STAMP).stat().st_mtime - 1
    for name in ("constraints.txt", "setup.cfg", "pyproject.toml"):
        os.utime(dest / name, (stamp_time, stamp_time))


def test_readme_shell_blocks_run_as_written(tmp_path):
    source, blocks = _document()
    assert blocks, f"{source.name} has no ```bash block"
    venv = _venv()
    if venv is None:
        pytest.skip("no set-up virtual environment (.venv with its install stamp) to run the README's commands in")
    copy = tmp_path / "clone"
    copy.mkdir()
    _copy_repo(copy, venv)
    script = chained_script(blocks, source=source.name, run_slow=os.environ.get("TRADEOFF_README_SLOW") == "1")
    env = {**os.environ, "PYTHONPATH": str(copy), "MPLBACKEND": "Agg"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["bash", "-c", script], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    where = re.findall(r"^### (.*)$", done.stderr, flags=re.M)
    assert done.returncode == 0, (
        f"{source.name}: the block at {where[-1] if where else '?'} failed (exit {done.returncode}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    assert "Broken pipe" not in done.stderr
