"""Submissions that attack the grader (tests/attack_submissions.py), graded as a class by the real
`course grade`: each gets the score an honest grader gives, nothing they attacked changes, and a
copy of the reference graded after all of them keeps full marks.

The probe assignment (no Ray) keeps the class to seconds a run; the sandbox, the gradebook rules,
the feedback and the class runner are the same for every phase.
"""

from __future__ import annotations

import csv
import io
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import psutil
import pytest
from attack_submissions import AFTER, ATTACKS, DAEMON_MARK, INJECT_HTML, RIGHT
from probe_course import A, csv_rows, hand_in, make_course, submissions
from rich.console import Console

from graders.trusted import classroom
from graders.cli import nbgrader

pytestmark = pytest.mark.slow
CLASSMATE = "a_classmate"  # graded first, with the right answer: attacks aim at their grade


def hand_in_attack(root: Path, student: str) -> None:
    attack = ATTACKS[student]
    folder = root / "submitted" / student / A
    if attack.files is None:
        return hand_in(root, student, attack.body.format(course=root), attack.extra_cells)
    folder.mkdir(parents=True)
    for name, data in attack.files.items():
        if data is None:  # the right answer under another name
            hand_in(root, student, RIGHT)
            (folder / "probe.ipynb").rename(folder / name)
        else:
            (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = make_course(tmp_path_factory.mktemp("attacked"))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".git" / "hooks" / "post-commit").write_text("#!/bin/sh\n")
    hand_in(root, CLASSMATE, RIGHT)
    for student in ATTACKS:
        hand_in_attack(root, student)
    hand_in(root, AFTER, RIGHT)
    before = classroom.fingerprint(root)
    out = io.StringIO()
    results = classroom.grade_class(root, A, workers=2, cell_timeout=60, notebook_timeout=120,
                                    console=Console(file=out, width=200))
    nbgrader(root, "export", f"--to={root / 'grades.csv'}")
    return root, {r.student: r for r in results}, before, out.getvalue()


def feedback_page(root: Path, student: str) -> str:
    pages = sorted((root / "feedback" / student / A).glob("*.html"))
    assert pages, f"no feedback page for {student}"
    return pages[0].read_text()


def output_of(root: Path, student: str) -> str:
    """What the student's autograded notebook printed (its outputs, not its source)."""
    nb = nbformat.read(root / "autograded" / student / A / "probe.ipynb", 4)
    return "".join(o.get("text", "") + o.get("evalue", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("student", list(ATTACKS))
def test_each_attack_gets_the_honest_score(attacked, student):
    root, results, _, _ = attacked
    assert results[student].score == ATTACKS[student].score, (ATTACKS[student].about, results[student])
    assert float(csv_rows(root)[student]["score"]) == ATTACKS[student].score


def test_the_reference_graded_after_every_attack_keeps_full_marks(attacked):
    root, results, _, _ = attacked
    assert results[AFTER].score == 2 and results[CLASSMATE].score == 2
    assert submissions(root)[AFTER] == 2 and submissions(root)[CLASSMATE] == 2


def test_solutions_config_and_git_are_unchanged_and_no_extra_credit(attacked):
    root, _, before, _ = attacked
    after = classroom.fingerprint(root)
    unchanged = {k: v for k, v in before.items() if k != "gradebook.db"}
    assert {k: after.get(k) for k in unchanged} == unchanged
    assert set(after) == set(before), "files appeared in or vanished from solutions/, the config or .git"
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for sub in gb.assignment_submissions(A):
            for nb in sub.notebooks:
                for g in nb.grades:
                    assert not g.extra_credit and g.manual_score is None, (sub.student.id, g.name)
    out = output_of(root, "writes_gradebook")
    assert "could not write" in out and "WROTE-OK" not in out, out[-2000:]


def test_the_sandbox_shows_no_solutions_no_gradebook_no_classmate(attacked):
    out = output_of(attacked[0], "reads_solutions")
    assert "found: []" in out and "no solutions: [Errno 2]" in out and "no gradebook:" in out, out[-2000:]
    assert "READ-OK" not in out
    planted = output_of(attacked[0], "plants_files")
    assert "could not plant" in planted and "PLANTED-OK" not in planted, planted[-2000:]
    assert not (attacked[0] / "solutions" / A / "planted.txt").exists()


def test_a_detached_daemon_with_a_cleared_environment_dies_with_its_run(attacked):
    assert "daemon started" in output_of(attacked[0], "detached_daemon")
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if DAEMON_MARK in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert classroom.tagged_processes(str(attacked[0])) == []
    notes = " ".join(attacked[1]["detached_daemon"].notes)
    assert "still running after the notebook finished" in notes and "sh (sh -c while true" in notes, notes


class ActiveContent(HTMLParser):
    """What in a page would run: scripts that are not the page template's own, event-handler
    attributes, javascript: links. (The learner's source, shown as escaped text, runs nothing.)"""

    def __init__(self):
        super().__init__()
        self.found, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_data(self, data):
        if self._in_script and "pwned" in data:
            self.found.append(f"<script>{data[:60]}")

    def handle_endtag(self, tag):
        self._in_script = False


def test_feedback_runs_no_script_and_stays_small(attacked):
    root = attacked[0]
    page = ActiveContent()
    page.feed(feedback_page(root, "injects_script"))
    assert page.found == [], f"active content reached the feedback page: {page.found[:5]}"
    control = ActiveContent()  # the same checker finds the attack in the learner's own output
    control.feed(INJECT_HTML)
    assert len(control.found) == 3, control.found
    stored = (root / "autograded" / "injects_script" / A / "probe.ipynb").read_text()
    assert "application/javascript" not in stored, "a JavaScript output was kept for formgrader"
    huge = feedback_page(root, "huge_output")
    assert len(huge) < 2_000_000, f"feedback page of {len(huge):,} bytes"
    assert "cut" in unescape(huge)


def test_learner_text_is_printed_literally_and_the_class_finishes(attacked):
    root, results, _, console = attacked
    text = "[/] [bold red]not markup[/]"
    assert text in csv_rows(root)["markup_error"]["reason"]
    assert text in console, console[-3000:]
    assert "CSV: grades-00_probe.csv" in console


@pytest.mark.parametrize("student,why", [("renamed_notebook", "no notebook of 00_probe under its released name (expected probe.ipynb; found: probe-Copy1.ipynb)"),
                                         ("not_a_notebook", "probe.ipynb is not a readable notebook"),
                                         ("empty_folder", "no notebook in submitted/empty_folder")])
def test_what_is_not_a_notebook_gets_zero_a_reason_a_page_and_a_row(attacked, student, why):
    root, results, _, _ = attacked
    r = results[student]
    assert (r.status, r.score) == ("failed", 0) and why in r.reason and "\n" not in r.reason, r
    assert why in unescape(feedback_page(root, student))
    assert csv_rows(root)[student]["status"] == "failed"
    with open(root / "grades.csv") as f:
        assert student in {row["student_id"] for row in csv.DictReader(f)}, "missing from nbgrader's export"


def test_the_class_stops_when_a_protected_file_changes(tmp_path):
    """Unsandboxed, a shell command can reach solutions/: the class stops at once, names it, and
    grades nobody after it."""
    root = make_course(tmp_path)
    hand_in(root, "a_vandal", RIGHT + f"import os\nos.system('echo x > {root}/solutions/{A}/notes.txt')\n")
    hand_in(root, "b_next", RIGHT)
    with pytest.raises(classroom.ClassStopped, match=f"solutions/{A}/notes.txt changed while a_vandal's notebook ran"):
        classroom.grade_class(root, A, workers=1, unsandboxed=True, console=Console(file=io.StringIO()))
    rows = csv_rows(root)
    assert rows["a_vandal"]["status"] == rows["b_next"]["status"] == "failed"
    assert "the class stopped" in rows["b_next"]["reason"]
    assert submissions(root) == {"a_vandal": 0}, "nothing is merged once the class stopped"
