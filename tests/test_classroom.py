"""Class grading (`course grade`, `make autograde`): parallel runs, one gradebook writer, resume
after SIGKILL, nothing left running, refused student ids, files written outside a submission.

A tiny assignment without Ray keeps these fast; tests/test_autograde.py grades the Phase 1
validation with the bad-submission corpus through the same runner.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import pytest
from probe_course import A, csv_rows, hand_in, make_course, submissions

from graders.trusted import classroom

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = make_course(tmp_path_factory.mktemp("class"))
    hand_in(root, "right", "    return 2 * x")
    hand_in(root, "wrong", "    return x + 3")  # passes the visible test, fails the hidden one
    hand_in(root, "blank", "    raise NotImplementedError()")
    # starts a process that outlives the notebook
    hand_in(root, "leaves_a_process", "    return 2 * x\nimport subprocess\n_p = subprocess.Popen(['sleep', '600'], start_new_session=True)")
    # writes into another student's submission, by its absolute path: in the sandbox it is not there
    hand_in(root, "writes_outside", "    return 2 * x\nimport os\n"
            f"try:\n    open({str(root / 'submitted' / 'right' / 'by-python.txt')!r}, 'w').write('x')\n"
            "except OSError as e:\n    print('refused:', e)\n"
            f"print('shell:', os.system('echo x > {root}/submitted/right/probe-was-here.txt'))")
    (root / "submitted" / "bad id").mkdir()
    results = classroom.grade_class(root, A, workers=2, cell_timeout=60, notebook_timeout=120)
    return root, {r.student: r for r in results}


def test_every_student_is_graded_once_with_the_right_score(graded):
    root, results = graded
    assert submissions(root) == {"right": 2, "wrong": 0, "blank": 0, "leaves_a_process": 2, "writes_outside": 2}
    rows = csv_rows(root)
    assert set(rows) == {"right", "wrong", "blank", "leaves_a_process", "writes_outside", "bad id"}
    assert rows["right"]["status"] == "graded" and float(rows["right"]["score"]) == 2
    assert "double(-4) should be -8" in rows["wrong"]["reason"], rows["wrong"]
    assert "NotImplementedError" in rows["blank"]["reason"], rows["blank"]


def test_a_student_id_that_is_not_a_plain_name_is_refused(graded):
    root, results = graded
    assert results["bad id"].status == "rejected"
    assert "not a plain name" in results["bad id"].reason
    for bad in ["../x", "a/b", ".hidden", "-rf", "a b", ""]:
        assert classroom.check_student_id(bad), bad
    for ok in ["alice", "bob.smith", "s_01", "X-9"]:
        assert classroom.check_student_id(ok) is None, ok


def test_no_process_of_any_run_is_left(graded):
    root, results = graded
    assert classroom.tagged_processes(str(root)) == []
    assert "were still running after the notebook finished" in " ".join(results["leaves_a_process"].notes)
    page = unescape((root / "feedback" / "leaves_a_process" / A / "probe.html").read_text())
    assert "Notes from the class grader" in page and "sleep" in page


def test_a_write_outside_the_submission_finds_nothing_there_and_changes_no_grade(graded):
    root, results = graded
    assert submissions(root)["right"] == 2
    assert not (root / "submitted" / "right" / "by-python.txt").exists()
    assert not (root / "submitted" / "right" / "probe-was-here.txt").exists()
    page = unescape((root / "autograded" / "writes_outside" / A / "probe.ipynb").read_text())
    assert "refused: [Errno 2] No such file or directory" in page, "the classmate's folder is not in the sandbox"
    assert "shell: 512" in page  # sh: cannot create: exit status 2


def test_unsandboxed_a_python_write_is_refused_and_a_shell_write_reported(tmp_path):
    """--unsandboxed (where no sandbox can start): the write guard and the before/after comparison
    of the course's files are what is left, and both still work."""
    root = make_course(tmp_path)
    hand_in(root, "right", "    return 2 * x")
    hand_in(root, "writes_outside", "    return 2 * x\nimport os\n"
            f"try:\n    open({str(root / 'submitted' / 'right' / 'by-python.txt')!r}, 'w').write('x')\n"
            "except OSError as e:\n    print('refused:', e)\n"
            f"os.system('echo x > {root}/submitted/right/probe-was-here.txt')")
    results = {r.student: r for r in classroom.grade_class(root, A, workers=1, unsandboxed=True)}
    assert "submitted/right/probe-was-here.txt" in " ".join(results["writes_outside"].notes), results["writes_outside"]
    assert submissions(root) == {"right": 2, "writes_outside": 2}  # graded from the copy read before any run
    assert not (root / "submitted" / "right" / "by-python.txt").exists()
    page = unescape((root / "autograded" / "writes_outside" / A / "probe.ipynb").read_text())
    assert "refused: the class grader does not let a graded notebook write outside its own folder" in page


def test_a_class_is_not_graded_unsandboxed_unless_asked(tmp_path, monkeypatch):
    root = make_course(tmp_path)
    hand_in(root, "right", "    return 2 * x")
    monkeypatch.setattr(classroom.sandbox, "unavailable", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SystemExit, match="the grading sandbox cannot start: bubblewrap .* pass --unsandboxed"):
        classroom.grade_class(root, A)
    assert not (root / "feedback").exists()


def test_feedback_never_shows_hidden_tests(graded):
    root, _ = graded
    pages = list((root / "feedback").rglob("*.html"))
    assert len(pages) == 5
    for page in pages:
        assert "assert double(-4) == -8" not in unescape(page.read_text()), page


def test_merging_the_same_results_twice_changes_nothing(graded, tmp_path):
    root, _ = graded
    staged = tmp_path / "staged.db"
    shutil.copy(root / "gradebook.db", staged)
    before = submissions(root)
    for _ in range(2):
        classroom.merge_submission(staged, root / "gradebook.db", A, "wrong")
    assert submissions(root) == before


def test_a_class_run_killed_half_way_resumes_and_grades_everyone_once(tmp_path):
    root = make_course(tmp_path)
    students = [f"s{i}" for i in range(4)]  # killed after 2: the resumed run grades the rest
    for s in students:
        hand_in(root, s, "    return 2 * x\nimport time\ntime.sleep(2)")
    cmd = [sys.executable, "-m", "graders.cli", "grade", A, f"--root={root}", "--workers=1"]
    journal = root / ".grading" / A / "journal.jsonl"
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert run.poll() is None and time.monotonic() < deadline, "the class run ended or stalled before 2 students"
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)  # the runner dies; its current nbgrader run is orphaned
    run.wait()
    first = [json.loads(line)["student"] for line in journal.read_text().splitlines()]
    assert len(first) < len(students)

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    lines = [json.loads(line)["student"] for line in journal.read_text().splitlines()]
    assert sorted(lines) == students, lines  # nobody graded twice, nobody lost
    assert submissions(root) == {s: 2 for s in students}
    assert set(csv_rows(root)) == set(students)
    assert classroom.tagged_processes(str(root)) == []


def test_an_inconclusive_result_is_measured_again_then_left_to_the_instructor(tmp_path, monkeypatch):
    """A result the grader could not decide (here the probe's test says Inconclusive every time,
    as a Phase 2 test does while the machine is busy) is graded 1 + REMEASURE times, then marked
    for manual grading in the gradebook, never scored as a plain fail. Only a phase whose tests
    run in the grader's kernel can say so: elsewhere a learner's code could raise it."""
    from nbgrader.api import Gradebook

    monkeypatch.setattr(classroom, "TRUSTED", (A,))
    root = make_course(tmp_path)
    hand_in(root, "busy", "    from graders.checks import Inconclusive\n    raise Inconclusive('the machine was busy')")
    hand_in(root, "right", "    return 2 * x")
    results = {r.student: r for r in classroom.grade_class(root, A, workers=2, cell_timeout=60, notebook_timeout=120)}
    busy, right = results["busy"], results["right"]
    assert busy.status == "inconclusive" and "test_double marked for manual grading" in busy.reason, busy
    assert f"Graded {1 + classroom.REMEASURE} times" in " ".join(busy.notes), busy.notes
    assert right.status == "graded" and right.score == 2 and not right.notes, right
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        assert gb.find_grade("test_double", "probe", A, "busy").needs_manual_grade
        assert not gb.find_grade("test_double", "probe", A, "right").needs_manual_grade
    assert csv_rows(root)["busy"]["status"] == "inconclusive"
    monkeypatch.setattr(classroom, "TRUSTED", ())
    again = classroom.grade_class(root, A, workers=1, cell_timeout=60, notebook_timeout=120, students=["busy"])
    assert again[0].status == "graded" and not again[0].notes, again  # untrusted: a fail like any other
