"""The real `nbgrader autograde` grades Phase 3 right: a trained model, tested on reviews it never saw.

- reference: the validation solved as in `solutions/` -> every point, no stderr in graded cells;
- blank: the release as handed out -> 0 on every graded cell;
- frozen: the reference with `optimizer.step()` removed, so training never updates the model ->
  the pipeline cells pass and only the two accuracy cells fail, with a reason that says the model
  did not learn. Feedback never shows the hidden tests. This student is graded on a real two-node
  Ray cluster (RAY_ADDRESS): the training data must come from both nodes, Ray Train's workers must
  run there, and no actor may be left alive.
"""

from __future__ import annotations

from html import unescape

import pytest

from cluster import nodes_used, spread
from conftest import autograded, cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class
from conftest import printed, solution_cell

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long
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
def course(tmp_path_factory, class_cluster):
    return graded_class(tmp_path_factory.mktemp("class3"), PHASE, VALIDATION, on_cluster=("frozen",), frozen=_frozen,
                        cluster=class_cluster, beside=("blank",))


def scores(course, student):
    return cell_scores(course.root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course.root, PHASE, VALIDATION)


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course.root, PHASE, VALIDATION)


def test_training_that_never_updates_fails_only_the_accuracy_cells(course):
    cells = scores(course, "frozen")
    assert {name for name, (score, most) in cells.items() if score < most} == ACCURACY_CELLS, cells
    assert all(cells[name][0] == 0 for name in ACCURACY_CELLS), cells
    html = unescape((course.root / "feedback" / "frozen" / PHASE / f"{VALIDATION}.html").read_text())
    assert "the model did not learn" in html and "optimizer.step()" in html
    assert "BEGIN HIDDEN TESTS" not in html and "write_heldout_reviews" not in html


def test_training_ran_on_both_nodes_of_the_cluster(course):
    training = printed(autograded(course.root, PHASE, VALIDATION, "frozen"), "run_training")
    assert nodes_used(training, "training data") == 2, training
    assert len(course.on_cluster.get("RayTrainWorker", [])) >= 2, f"no Ray Train workers on the cluster: {spread(course.on_cluster)}"
    print(training, spread(course.on_cluster), sep="\n")
