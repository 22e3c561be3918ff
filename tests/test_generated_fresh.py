"""The committed built-ins are exactly what definitions/ generates."""

import os
import shutil
import subprocess
import sys

import pytest

from torchebm.symbolic.build import DEFINITIONS, OUTPUT, build, generate


def test_committed_files_are_up_to_date():
    lines = []
    assert build(check=True, echo=lines.append) == 0, lines


def _definitions(tmp_path, stems):
    """A definitions folder holding only ``stems``: the build logic on a few energies
    (generating all of them takes seconds, and the tests above do it once each)."""
    folder = tmp_path / "definitions"
    folder.mkdir()
    for stem in stems:
        shutil.copy(DEFINITIONS / f"{stem}.toml", folder)
    return folder


def test_check_fails_and_names_an_edited_file(tmp_path):
    definitions = _definitions(tmp_path, ["harmonic", "double_well"])
    out = tmp_path / "_generated"
    lines = []
    assert build(check=False, definitions=definitions, output=out, echo=lines.append) == 0
    for name in ("harmonic.py", "double_well.py"):                     # as committed
        assert (out / name).read_text() == (OUTPUT / name).read_text()
    assert build(check=True, definitions=definitions, output=out, echo=lines.append) == 0
    target = out / "harmonic.py"
    target.write_text(target.read_text().replace("0.5", "0.25"))
    lines = []
    assert build(check=True, definitions=definitions, output=out, echo=lines.append) == 1
    assert any("harmonic.py" in ln for ln in lines)
    assert not any("double_well.py" in ln for ln in lines)
    assert build(check=False, definitions=definitions, output=out, echo=lines.append) == 0
    assert build(check=True, definitions=definitions, output=out, echo=lines.append) == 0
    assert target.read_text() == (OUTPUT / "harmonic.py").read_text()   # rewritten


def test_generation_is_deterministic(tmp_path):
    """Twice in one process on energies with matrices, gathers and reductions (across
    processes, with another hash seed: test_command_line_check against the files this
    process compared in test_committed_files_are_up_to_date)."""
    definitions = _definitions(tmp_path, ["gaussian", "rosenbrock", "ackley"])
    assert generate(definitions) == generate(definitions)


@pytest.mark.slow
def test_command_line_check(tmp_path):
    """``build --check`` from the command line, in another process with a fixed hash seed
    (set and dict orders differ from this one's), on energies with matrices, gathers and
    reductions: it finds up to date the files this process generated, and they are the
    committed ones (all definitions are checked in process above)."""
    definitions = _definitions(tmp_path, ["gaussian", "rosenbrock", "ackley"])
    out = tmp_path / "_generated"
    assert build(check=False, definitions=definitions, output=out, echo=lambda _: None) == 0
    for name in ("gaussian.py", "rosenbrock.py", "ackley.py"):
        assert (out / name).read_text() == (OUTPUT / name).read_text()
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-m", "torchebm.symbolic", "build", "--check",
                           "--definitions", str(definitions), "--output", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_build_leaves_files_it_did_not_write(tmp_path):
    """An --output folder holding a user's module, or one that ``show -o`` generated from a
    formula, is refused and left as it was: build replaces or removes only its own files
    (an attack pass found ``show -o`` modules removed as stale build output)."""
    from torchebm.symbolic.cli import main
    from torchebm.errors import EnergySyntaxError
    definitions = _definitions(tmp_path, ["harmonic"])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "my_energy.py"
    assert main(["show", "sum(a*x**2)", "-p", "a=2.0", "--name", "MyEnergy", "-o", str(mine)]) == 0
    kept = mine.read_text()
    with pytest.raises(EnergySyntaxError, match="my_energy.py.*show -o"):
        build(check=False, definitions=definitions, output=out, echo=lambda _: None)
    assert mine.read_text() == kept and sorted(p.name for p in out.iterdir()) == ["my_energy.py"]
    mine.write_text("x = 1\n")                                   # hand-written
    with pytest.raises(EnergySyntaxError, match="did not generate"):
        build(check=False, definitions=definitions, output=out, echo=lambda _: None)
    assert mine.read_text() == "x = 1\n"
    mine.unlink()                                                # its own files: rewritten
    assert build(check=False, definitions=definitions, output=out, echo=lambda _: None) == 0
    assert (out / "harmonic.py").read_text() == (OUTPUT / "harmonic.py").read_text()
