"""The real `nbgrader autograde` grades Phase 1 right: reference 100 %, blank 0, a wrong schema partial.

One class is graded end to end in a scratch course directory: generate_assignment, autograde,
generate_feedback and export, exactly as an instructor runs them.
"""

from __future__ import annotations

import csv
from html import unescape

import pytest
from conftest import autograded as _autograded
from conftest import cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class
from conftest import graded_outputs, solution_cell

from graders.cli import nbgrader

pytestmark = pytest.mark.slow
PHASE = "01_foundation"
VALIDATION = "04_validation"


FAKE_TELEMETRY = """
import time as _time
import graders.telemetry as _telemetry
_real = _telemetry.UtilizationReport.from_samples.__func__
def _fake(cls, samples, device_info=None, interval=0.1):
    report = _real(cls, samples, device_info, interval)
    report.mean = report.p50 = report.p90 = 99.0
    return report
_telemetry.UtilizationReport.from_samples = classmethod(_fake)
"""


def _wrong_schema(nb):
    """A plausible mistake: the word count column is named "words"."""
    cell = solution_cell(nb, "text_pipeline")
    assert '"word_count":' in cell.source
    cell.source = cell.source.replace('"word_count":', '"words":')
    return nb


def _faked_telemetry(nb):
    """An idle (sleeping) pipeline whose in-kernel reports are patched to say 99 %."""
    cell = solution_cell(nb, "image_pipeline")
    assert "    def preprocess(batch):\n" in cell.source
    cell.source = FAKE_TELEMETRY + cell.source.replace("    def preprocess(batch):\n", "    def preprocess(batch):\n        _time.sleep(3)\n")
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    # the validation only: the Phase 1 lessons run under nbval in `make test`
    root = graded_class(tmp_path_factory.mktemp("class"), PHASE, VALIDATION,
                        wrong_schema=_wrong_schema, faked_telemetry=_faked_telemetry)
    nbgrader(root, "export", f"--to={root / 'grades.csv'}")
    return root


def grades(root, student):
    return cell_scores(root, PHASE, VALIDATION, student)


def autograded(root, student):
    return _autograded(root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course, PHASE, VALIDATION)


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course, PHASE, VALIDATION)


def test_wrong_schema_gets_partial_credit_with_a_readable_reason(course):
    cells = grades(course, "wrong_schema")
    assert cells["text_word_counts"][0] == 0
    assert all(score == most for name, (score, most) in cells.items() if name != "text_word_counts"), cells
    html = unescape((course / "feedback" / "wrong_schema" / PHASE / f"{VALIDATION}.html").read_text())
    assert "text results columns: expected ['text_id', 'word_count'], found ['text_id', 'words']. Try: add ['word_count']" in html


def test_faked_utilization_is_caught_by_the_outside_measurement(course):
    cells = grades(course, "faked_telemetry")
    assert cells["accelerator_stage"][0] == 0, cells
    assert all(score == most for name, (score, most) in cells.items() if name != "accelerator_stage"), cells
    errors = [o for o in graded_outputs(autograded(course, "faked_telemetry"), "accelerator_stage") if o.output_type == "error"]
    assert [e.ename for e in errors] == ["OutsideMeasurement"], "the in-kernel check was fooled; only the outside one may fail"
    assert "from outside the notebook" in errors[0].evalue, errors[0].evalue


def test_feedback_never_shows_hidden_tests(course):
    for html in (course / "feedback").rglob("*.html"):
        assert "BEGIN HIDDEN TESTS" not in html.read_text() and "_truth" not in html.read_text(), html


def test_export_lists_every_student(course):
    rows = list(csv.DictReader(open(course / "grades.csv")))
    assert {r["student_id"] for r in rows} >= {"reference", "blank", "wrong_schema", "faked_telemetry"}
