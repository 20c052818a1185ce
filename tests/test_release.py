"""course/ is exactly what nbgrader generates from solutions/ (nobody edits course/ by hand)."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import PHASES, ROOT


@pytest.mark.parametrize("phase", PHASES)
def test_release_in_sync(tmp_path, phase):
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path)
    shutil.copytree(ROOT / "solutions" / phase, tmp_path / "solutions" / phase)
    subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", phase, "--force",
                    f"--CourseDirectory.root={tmp_path}", "--log-level=WARN"], cwd=tmp_path, check=True)
    fresh = sorted((tmp_path / "course" / phase).glob("*.ipynb"))
    committed = sorted((ROOT / "course" / phase).glob("*.ipynb"))
    assert [p.name for p in fresh] == [p.name for p in committed], "run `make release` and commit course/"
    for new, old in zip(fresh, committed):
        assert nbformat.read(new, 4) == nbformat.read(old, 4), f"{old.name} is stale: run `make release`"
