"""Phase 1 graded as an instructor grades a class: `course grade` (parallel runs, real nbgrader).

One class, its first two runs (the reference, and the sleeping pipeline with a forged report)
graded while a neighbour process keeps one core busy (a shared machine): the reference,
the blank release, and the students of `bad_submissions.STUDENTS`, who
make between them every kind of mistake in `bad_submissions.KINDS` (20 kinds, one to four per
student, including a wrong schema, faked utilization, busy processes beside a sleeping model stage
and hooks that attack the test cells). The run must finish; each kind gets the
expected score per graded cell and a readable reason in its student's feedback;
no feedback shows hidden tests; every student is in the class CSV and in nbgrader's export; and
nothing of any run is left running.
"""

from __future__ import annotations

import csv
import hashlib
import time
from html import unescape
from pathlib import Path

import nbformat
import pytest
import bad_submissions
from bad_submissions import KINDS, STUDENTS, VALIDATION
from conftest import SCORES, cell_scores, class_submissions, expect_full_marks_without_stderr, expect_zero_everywhere, neighbour
from conftest import graded_outputs
from test_widget_state import WIDGET_VIEW, with_widget_state

from graders.trusted import classroom
from graders.cli import nbgrader

pytestmark = pytest.mark.slow
PHASE = "01_foundation"
assert PHASE == bad_submissions.PHASE

# On one core (a parallel run, beside the neighbour) the reference takes about 55 s in all, its
# slowest cell about 18 s, and the sleeping pipeline's about 80 s: these limits keep the endless
# loop cheap and leave a margin.
CELL_LIMIT, NOTEBOOK_LIMIT = 90, 400


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = class_submissions(tmp_path_factory.mktemp("bad_class"), PHASE, VALIDATION,
                             **{student: bad_submissions.mutate(student) for student in STUDENTS})
    # The reference as JupyterLab saves it with widget state on: 500 KB of Ray Data progress bars.
    nbformat.write(with_widget_state(nbformat.read(submitted_reference(root), 4)), submitted_reference(root))
    REFERENCE_SHA256.append(hashlib.sha256(submitted_reference(root).read_bytes()).hexdigest())
    # The reference and the forged report first, beside another job on the machine (no grade may
    # move with it, up or down); the neighbour ends with the reference's run, the rest run without it.
    first = ["reference", bad_submissions.student_of("faked_telemetry")]
    order = [*first, *sorted({"blank", *STUDENTS} - set(first))]
    start = time.monotonic()
    with neighbour(1, until=lambda: (root / "autograded" / "reference").exists()):
        results = classroom.grade_class(root, PHASE, students=order, cell_timeout=CELL_LIMIT, notebook_timeout=NOTEBOOK_LIMIT)
    SCORES.append(f"{PHASE} class of {len(results)} (reference, blank, {len(KINDS)} kinds of mistake) graded in "
                  f"{time.monotonic() - start:.0f} s by `course grade` with {len(classroom.ClassGrader(root, PHASE).slots)} "
                  "parallel runs, the first two beside a neighbour keeping one core busy")
    nbgrader(root, "export", f"--to={root / 'grades.csv'}")
    return root


REFERENCE_SHA256: list[str] = []


def submitted_reference(root: Path) -> Path:
    return root / "submitted" / "reference" / PHASE / f"{VALIDATION}.ipynb"


def test_widget_state_is_not_graded_and_the_learners_file_is_left_as_it_was(course):
    """The reference carried 500 KB of widget state: it earned full marks (the test above), its
    autograded copy has no widget state or widget views, and its submitted file is unchanged."""
    assert submitted_reference(course).stat().st_size > 500_000
    assert hashlib.sha256(submitted_reference(course).read_bytes()).hexdigest() == REFERENCE_SHA256[0]
    graded = course / "autograded" / "reference" / PHASE / f"{VALIDATION}.ipynb"
    nb = nbformat.read(graded, 4)
    assert "widgets" not in nb.metadata
    assert not [o for c in nb.cells for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    assert graded.stat().st_size < 400_000, graded.stat().st_size


def feedback(root: Path, student: str) -> str:
    return unescape((root / "feedback" / student / PHASE / f"{VALIDATION}.html").read_text())


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_of_mistake_gets_its_score_and_a_readable_reason(course, name):
    kind, student = KINDS[name], bad_submissions.student_of(name)
    cells = cell_scores(course, PHASE, VALIDATION, student)
    expected = {gid: 0 if gid in bad_submissions.zero(student) else most for gid, (_, most) in cells.items()}
    assert {gid: score for gid, (score, _) in cells.items()} == expected, f"{student}: {kind.about}"
    assert kind.reason in feedback(course, student), f"{student}: {kind.about}"


def test_reference_full_marks_without_stderr_and_blank_zero(course):
    expect_full_marks_without_stderr(course, PHASE, VALIDATION)
    expect_zero_everywhere(course, PHASE, VALIDATION)
    assert "[grader:" not in feedback(course, "reference")


def test_faked_utilization_is_caught_by_the_graders_own_measurement(course):
    """The test cell runs in the grader's kernel, on the utilization the grader measured: the
    notebook's patched report never reaches it."""
    nb = nbformat.read(course / "autograded" / bad_submissions.student_of("faked_telemetry") / PHASE / f"{VALIDATION}.ipynb", 4)
    errors = [o for o in graded_outputs(nb, "accelerator_stage") if o.output_type == "error"]
    assert [e.ename for e in errors] == ["CheckFailed"], errors
    assert "measured by the grader from outside the notebook" in errors[0].evalue, errors[0].evalue


def test_hooks_and_patches_in_the_learners_kernel_change_no_test(course):
    """The test cells never run in the learner's kernel: its IPython hooks (clear every error,
    print every cell's source) and its patched checks do nothing to them."""
    for kind in ("error_hooks", "patched_checks"):
        nb = nbformat.read(course / "autograded" / bad_submissions.student_of(kind) / PHASE / f"{VALIDATION}.ipynb", 4)
        for gid in bad_submissions.zero(bad_submissions.student_of(kind)):
            assert any(o.output_type == "error" for o in graded_outputs(nb, gid)), (kind, gid)
    page = feedback(course, bad_submissions.student_of("error_hooks"))
    assert "_cat_labels" not in page and "_truth" not in page, "a hidden test reached the feedback"


def test_no_classmate_file_was_written_and_nothing_is_left_running(course):
    assert not (course / "submitted" / "reference" / PHASE / "from_a_classmate.txt").exists()
    assert classroom.tagged_processes(str(course)) == []


def test_feedback_never_shows_hidden_tests(course):
    pages = list((course / "feedback").rglob("*.html"))
    assert len(pages) == len(STUDENTS) + 2
    for html in pages:
        text = html.read_text()
        assert "BEGIN HIDDEN TESTS" not in text and "_truth" not in text, html


def test_every_student_is_in_the_class_csv_and_the_export(course):
    with open(course / f"grades-{PHASE}.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"reference", "blank", *STUDENTS}
    assert all(r["status"] == "graded" for r in rows.values()), {k: r["reason"] for k, r in rows.items() if r["status"] != "graded"}
    with open(course / "grades.csv") as f:
        assert {r["student_id"] for r in csv.DictReader(f)} == set(rows)
