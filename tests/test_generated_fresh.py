"""The committed built-ins are exactly what definitions/ generates."""

import shutil
import subprocess
import sys

from torchebm.symbolic.build import DEFINITIONS, OUTPUT, build, generate


def test_committed_files_are_up_to_date():
    lines = []
    assert build(check=True, echo=lines.append) == 0, lines


def test_check_fails_and_names_an_edited_file(tmp_path):
    out = tmp_path / "_generated"
    shutil.copytree(OUTPUT, out)
    target = out / "harmonic.py"
    target.write_text(target.read_text().replace("0.5", "0.25"))
    lines = []
    assert build(check=True, output=out, echo=lines.append) == 1
    assert any("harmonic.py" in ln for ln in lines)
    assert build(check=False, output=out, echo=lines.append) == 0   # rewrites it
    assert build(check=True, output=out, echo=lines.append) == 0


def test_generation_is_deterministic():
    assert generate(DEFINITIONS) == generate(DEFINITIONS)


def test_command_line_check():
    proc = subprocess.run([sys.executable, "-m", "torchebm.symbolic", "build", "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
