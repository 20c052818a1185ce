"""course/ is exactly what nbgrader generates from solutions/ (nobody edits course/ by hand)."""

import nbformat
import pytest

from conftest import PHASES, ROOT
from graders.cli import scratch_course


@pytest.mark.parametrize("phase", PHASES)
def test_release_in_sync(tmp_path, phase):
    fresh = sorted(scratch_course(tmp_path, ROOT / "solutions" / phase).glob("*.ipynb"))
    committed = sorted((ROOT / "course" / phase).glob("*.ipynb"))
    assert [p.name for p in fresh] == [p.name for p in committed], "run `make release` and commit course/"
    for new, old in zip(fresh, committed):
        assert nbformat.read(new, 4) == nbformat.read(old, 4), f"{old.name} is stale: run `make release`"
