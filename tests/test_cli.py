"""`make check PHASE=1` ("am I done?") grades the workspace notebook and explains every cell."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from graders import workspace

pytestmark = pytest.mark.slow


def test_check_reports_each_graded_cell_of_a_blank_workspace(tmp_path):
    workspace.sync(ROOT / "course", tmp_path / "ws")
    before = (tmp_path / "ws" / "01_foundation" / "04_validation.ipynb").read_bytes()
    course = Path(sys.executable).with_name("course")
    proc = subprocess.run([str(course), "--workspace", str(tmp_path / "ws"), "check", "1"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # not done yet
    out = proc.stdout
    assert "[FAIL] image_count  0/2" in out and "[FAIL] text_word_counts  0/2" in out
    assert "reason: CheckFailed: image pipeline did not run: the function is not written yet" in out
    assert "Score: 0 / 11" in out
    assert (tmp_path / "ws" / "01_foundation" / "04_validation.ipynb").read_bytes() == before, "the learner's file is only read"


def test_check_names_the_phases_when_one_is_missing(tmp_path):
    workspace.sync(ROOT / "course", tmp_path / "ws")
    course = Path(sys.executable).with_name("course")
    proc = subprocess.run([str(course), "--workspace", str(tmp_path / "ws"), "check", "9"], capture_output=True, text=True)
    assert proc.returncode != 0 and "No phase '9'" in proc.stderr and "01_foundation" in proc.stderr


def test_check_without_a_sandbox_says_so_in_one_line_and_still_grades(tmp_path, monkeypatch, capsys):
    """A learner's laptop without bubblewrap: one line says so, and the notebook is graded anyway,
    with the sandbox off (class grading refuses instead: tests/test_classroom.py, where
    `course grade --unsandboxed` grades real notebooks with the sandbox off)."""
    import os

    from graders import cli
    from graders.trusted import sandbox

    workspace.sync(ROOT / "course", tmp_path / "ws")
    monkeypatch.setattr(sandbox, "unavailable", lambda: "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)")
    monkeypatch.setenv(sandbox.SETTING, "on")  # restored afterwards: the check turns it off
    graded = {}

    def grade_notebook(source, notebook, student="you"):  # nbgrader's run, as the check sees it
        graded.update(setting=os.environ.get(sandbox.SETTING), source=source.name, notebook=notebook.name)
        return [{"id": "image_count", "points": 0, "max_points": 2, "passed": False, "inconclusive": False,
                 "output": "", "reason": "CheckFailed: image pipeline did not run"}]

    monkeypatch.setattr(cli, "grade_notebook", grade_notebook)
    rc = cli.main(["--workspace", str(tmp_path / "ws"), "check", "1"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "Sandbox" in line]
    assert lines == ["Sandbox: not available here (bubblewrap (bwrap) is not installed (Debian: apt-get install "
                     "bubblewrap)); grading without it (make check only)."], out
    assert graded == {"setting": "off", "source": "01_foundation", "notebook": "04_validation.ipynb"}, graded
    assert rc == 1 and "[FAIL] image_count  0/2" in out and "Score: 0 / 2" in out, out
