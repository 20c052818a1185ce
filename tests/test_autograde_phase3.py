"""The real `nbgrader autograde` grades Phase 3 right: a trained model, tested on reviews it never saw.

- reference: the validation solved as in `solutions/` -> every point, no stderr in graded cells;
- blank: the release as handed out -> 0 on every graded cell;
- frozen: the reference with `optimizer.step()` removed, so training never updates the model ->
  the pipeline cells pass and only the two accuracy cells fail, with a reason that says the model
  did not learn. Feedback never shows the hidden tests.
"""

from __future__ import annotations

from html import unescape

import nbformat
import pytest

from conftest import ROOT, cell_scores, no_stderr_in_graded_cells, solved
from conftest import autograded as _autograded, submit
from graders.cli import nbgrader, scratch_course

pytestmark = pytest.mark.slow
PHASE = "03_production_systems"
VALIDATION = "04_validation"
ACCURACY_CELLS = {"validation_accuracy", "heldout_accuracy"}


def _frozen(nb):
    """The training loop without optimizer.step(): the weights stay as initialized."""
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "training_loop")
    assert "optimizer.step()" in cell.source
    cell.source = cell.source.replace("optimizer.step()", "pass  # the step is missing")
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("class3")
    release = scratch_course(root, ROOT / "solutions" / PHASE)
    source = nbformat.read(ROOT / "solutions" / PHASE / f"{VALIDATION}.ipynb", 4)
    fresh = lambda: nbformat.read(release / f"{VALIDATION}.ipynb", 4)  # noqa: E731
    submit(root, PHASE, "reference", VALIDATION, solved(fresh(), source))
    submit(root, PHASE, "blank", VALIDATION, fresh())
    submit(root, PHASE, "frozen", VALIDATION, _frozen(solved(fresh(), source)))
    nbgrader(root, "autograde", PHASE, "--create")
    nbgrader(root, "generate_feedback", PHASE)
    return root


def scores(root, student):
    return cell_scores(root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    cells = scores(course, "reference")
    assert cells and all(score == most for score, most in cells.values()), cells
    no_stderr_in_graded_cells(_autograded(course, PHASE, VALIDATION, "reference"))


def test_blank_scores_zero_on_every_graded_cell(course):
    cells = scores(course, "blank")
    assert cells and all(score == 0 for score, _ in cells.values()), cells


def test_training_that_never_updates_fails_only_the_accuracy_cells(course):
    cells = scores(course, "frozen")
    assert {name for name, (score, most) in cells.items() if score < most} == ACCURACY_CELLS, cells
    assert all(cells[name][0] == 0 for name in ACCURACY_CELLS), cells
    html = unescape((course / "feedback" / "frozen" / PHASE / f"{VALIDATION}.html").read_text())
    assert "the model did not learn" in html and "optimizer.step()" in html
    assert "BEGIN HIDDEN TESTS" not in html and "write_heldout_reviews" not in html
