"""The real `nbgrader autograde` grades Phase 3 right: a trained model, tested on reviews it never saw.

- reference: the validation solved as in `solutions/` -> every point, no stderr in graded cells;
- blank: the release as handed out -> 0 on every graded cell;
- frozen: the reference with `optimizer.step()` removed, so training never updates the model ->
  the pipeline cells pass and only the two accuracy cells fail, with a reason that says the model
  did not learn. Feedback never shows the hidden tests.
"""

from __future__ import annotations

from html import unescape

import pytest

from conftest import cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class, solution_cell

pytestmark = pytest.mark.slow
PHASE = "03_production_systems"
VALIDATION = "04_validation"
ACCURACY_CELLS = {"validation_accuracy", "heldout_accuracy"}


def _frozen(nb):
    """The training loop without optimizer.step(): the weights stay as initialized."""
    cell = solution_cell(nb, "training_loop")
    assert "optimizer.step()" in cell.source
    cell.source = cell.source.replace("optimizer.step()", "pass  # the step is missing")
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return graded_class(tmp_path_factory.mktemp("class3"), PHASE, VALIDATION, frozen=_frozen)


def scores(root, student):
    return cell_scores(root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course, PHASE, VALIDATION)


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course, PHASE, VALIDATION)


def test_training_that_never_updates_fails_only_the_accuracy_cells(course):
    cells = scores(course, "frozen")
    assert {name for name, (score, most) in cells.items() if score < most} == ACCURACY_CELLS, cells
    assert all(cells[name][0] == 0 for name in ACCURACY_CELLS), cells
    html = unescape((course / "feedback" / "frozen" / PHASE / f"{VALIDATION}.html").read_text())
    assert "the model did not learn" in html and "optimizer.step()" in html
    assert "BEGIN HIDDEN TESTS" not in html and "write_heldout_reviews" not in html
