"""The real `nbgrader autograde` grades Phase 4 right: a served model, drift and an A/B decision.

- reference: the validation solved as in `solutions/` -> every point, no stderr in graded cells;
- blank: the release as handed out -> 0 on every graded cell;
- alarmist: the reference with a drift report that flags every feature of every window ->
  scoring, serving, the plan and the A/B cells pass, and only the two drift cells fail, with a
  reason that names the clean window. Feedback never shows the hidden tests. This student is
  graded on a real two-node Ray cluster (RAY_ADDRESS): batch scoring must use both nodes, and Serve's
  controller and replica must have run there and be gone afterwards.
"""

from __future__ import annotations

from html import unescape

import pytest

from cluster import nodes_used, spread
from conftest import autograded, cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class
from conftest import printed, solution_cell

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long
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
def course(tmp_path_factory, class_cluster):
    return graded_class(tmp_path_factory.mktemp("class4"), PHASE, VALIDATION, on_cluster=("alarmist",),
                        alarmist=_alarmist, cluster=class_cluster, beside=("blank",))


def scores(course, student):
    return cell_scores(course.root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course.root, PHASE, VALIDATION)


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course.root, PHASE, VALIDATION)


def test_flagging_drift_everywhere_fails_only_the_drift_cells(course):
    cells = scores(course, "alarmist")
    assert {name for name, (score, most) in cells.items() if score < most} == DRIFT_CELLS, cells
    assert all(cells[name][0] == 0 for name in DRIFT_CELLS), cells
    html = unescape((course.root / "feedback" / "alarmist" / PHASE / f"{VALIDATION}.html").read_text())
    assert "clean window: expected no drift" in html
    assert "BEGIN HIDDEN TESTS" not in html and "2103" not in html


def test_scoring_and_serving_ran_on_the_cluster_and_left_nothing(course):
    nb = autograded(course.root, PHASE, VALIDATION, "alarmist")
    run = printed(nb, "run_pipelines")
    assert nodes_used(run, "batch scoring") == 2, run
    assert "no Serve process left" in printed(nb, "serve_shutdown"), printed(nb, "serve_shutdown")
    ran = course.on_cluster  # none of it alive any more (checked when the cluster run ended)
    assert ran.get("ServeController") and any(k.startswith("ServeReplica") for k in ran), f"no Serve on the cluster: {spread(ran)}"
    print(run, spread(ran), sep="\n")
