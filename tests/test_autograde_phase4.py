"""The real `nbgrader autograde` grades Phase 4 right: a served model, drift and an A/B decision.

- reference: the validation solved as in `solutions/` -> every point, no stderr in graded cells;
- blank: the release as handed out -> 0 on every graded cell;
- alarmist: the reference with a drift report that flags every feature of every window ->
  scoring, serving, the plan and the A/B cells pass, and only the two drift cells fail, with a
  reason that names the clean window. Feedback never shows the hidden tests.
"""

from __future__ import annotations

from html import unescape

import pytest

from conftest import cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class, solution_cell

pytestmark = pytest.mark.slow
PHASE = "04_production_deployment"
VALIDATION = "04_validation"
DRIFT_CELLS = {"drift_detection", "drift_hidden_windows"}
THRESHOLD_RULE = '"drifted": [bool(v > gr.checks.PSI_THRESHOLD) for v in values]'


def _alarmist(nb):
    """A drift report that says "drifted" for every feature, whatever its PSI."""
    cell = solution_cell(nb, "drift_detection_code")
    assert THRESHOLD_RULE in cell.source
    cell.source = cell.source.replace(THRESHOLD_RULE, '"drifted": [True for v in values]')
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return graded_class(tmp_path_factory.mktemp("class4"), PHASE, VALIDATION, alarmist=_alarmist)


def scores(root, student):
    return cell_scores(root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course, PHASE, VALIDATION)


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course, PHASE, VALIDATION)


def test_flagging_drift_everywhere_fails_only_the_drift_cells(course):
    cells = scores(course, "alarmist")
    assert {name for name, (score, most) in cells.items() if score < most} == DRIFT_CELLS, cells
    assert all(cells[name][0] == 0 for name in DRIFT_CELLS), cells
    html = unescape((course / "feedback" / "alarmist" / PHASE / f"{VALIDATION}.html").read_text())
    assert "clean window: expected no drift" in html
    assert "BEGIN HIDDEN TESTS" not in html and "2103" not in html
