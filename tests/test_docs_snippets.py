"""Every ```python block of README.md and docs/language.md runs as written.

The blocks of one file run in order, in one fresh interpreter (as a reader pasting
them into one session would), in a temporary directory: whatever they write lands
there, never in the repository. Warnings of torchebm (an unset parameter) and any
traceback fail the test.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/language.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_block_extraction_finds_each_fence():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_run_as_written(doc, tmp_path):
    blocks = python_blocks((ROOT / doc).read_text(encoding="utf-8"))
    assert len(blocks) >= 5, f"{doc}: expected its examples, found {len(blocks)} blocks"
    # each block is marked, so a failure names the block it happened in
    code = "\n".join(f"print('--- block {k + 1}', flush=True)\n{b}" for k, b in enumerate(blocks))
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "docs").iterdir()}
    proc = subprocess.run(
        [sys.executable, "-W", "error::torchebm.errors.UnsetParameterWarning", "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("--- block")][-1:]
    assert proc.returncode == 0, f"{doc}, {last}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "docs").iterdir()} == before
    if doc == "README.md":              # the picture went where the example chose
        assert (tmp_path / "double_well.png").stat().st_size > 10_000
