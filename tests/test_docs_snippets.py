"""Every ```python block of README.md and docs/language.md runs as written.

The blocks of one file run in order, in one fresh interpreter (as a reader pasting
them into one session would), in a temporary directory: whatever they write lands
there, never in the repository. Warnings of torchebm (an unset parameter) and any
traceback fail the test.

Each run takes tens of seconds of a second core, so :func:`start` launches it as
soon as collection has selected its test (``conftest.pytest_collection_finish``):
it runs beside the rest of the suite, and the test waits for it and checks it. Under
pytest-xdist (``-n 2``) the first example test starts both.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/language.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

#: doc -> its run: blocks, process, working directory, docs/ mtimes before, output files
_RUNS: dict = {}


def _docs_mtimes():
    return {p: p.stat().st_mtime_ns for p in (ROOT / "docs").iterdir()}


def start(doc):
    """Launch the blocks of ``doc`` in a fresh interpreter (once); returns its run."""
    if doc in _RUNS:
        return _RUNS[doc]
    blocks = python_blocks((ROOT / doc).read_text(encoding="utf-8"))
    # each block is marked, so a failure names the block it happened in
    code = "\n".join(f"print('--- block {k + 1}', flush=True)\n{b}" for k, b in enumerate(blocks))
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    workdir = Path(tempfile.mkdtemp(prefix="torchebm-docs-"))
    before = _docs_mtimes()
    out, err = open(workdir / ".stdout", "w+"), open(workdir / ".stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-W", "error::torchebm.errors.UnsetParameterWarning", "-c", code],
        cwd=workdir, env=env, stdout=out, stderr=err, text=True)
    _RUNS[doc] = run = (blocks, proc, workdir, before, out, err)
    return run


def stop_all():
    """End the runs still going (a session stopped early) and remove their directories."""
    for _, proc, workdir, _, out, err in _RUNS.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _RUNS.clear()


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_block_extraction_finds_each_fence():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.fixture(scope="module")
def _all_started():
    """Under pytest-xdist nothing starts at collection: the first example test starts
    every example at once, so they run beside each other while this worker waits."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for doc in DOCS:
            start(doc)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_run_as_written(doc, _all_started):
    blocks, proc, workdir, before, out, err = start(doc)   # started already (at collection, or above)
    assert len(blocks) >= 5, f"{doc}: expected its examples, found {len(blocks)} blocks"
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    last = [ln for ln in stdout.splitlines() if ln.startswith("--- block")][-1:]
    assert proc.returncode == 0, f"{doc}, {last}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert _docs_mtimes() == before
    if doc == "README.md":              # the picture went where the example chose
        assert (workdir / "double_well.png").stat().st_size > 10_000
