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


def test_check_without_a_sandbox_says_so_in_one_line_and_still_grades(tmp_path):
    """A learner's laptop without bubblewrap: one line says so, and the notebook is graded anyway
    (class grading refuses instead: tests/test_classroom.py)."""
    import os

    workspace.sync(ROOT / "course", tmp_path / "ws")
    course = Path(sys.executable).with_name("course")
    env = {**os.environ, "PATH": str(course.parent)}  # the venv's tools, and no bwrap
    proc = subprocess.run([str(course), "--workspace", str(tmp_path / "ws"), "check", "1"],
                          capture_output=True, text=True, timeout=1800, env=env)
    lines = [line for line in proc.stdout.splitlines() if "Sandbox" in line]
    assert lines == ["Sandbox: not available here (bubblewrap (bwrap) is not installed (Debian: apt-get install "
                     "bubblewrap)); grading without it (make check only)."], proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Score: 0 / 11" in proc.stdout, proc.stdout + proc.stderr
