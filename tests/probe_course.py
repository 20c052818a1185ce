"""A tiny nbgrader assignment without Ray (`00_probe`: write `double(x)`), for tests of the class
grader that need real `course grade` runs but not a pipeline: each run takes seconds.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
from conftest import ROOT

from graders.cli import nbgrader

A = "00_probe"


def _cell(kind, source, **nbg):
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if nbg:
        cell.metadata["nbgrader"] = {"schema_version": 3, "grade": False, "solution": False, "locked": False,
                                     "task": False, **nbg}
    return cell


def probe_notebook(answer="return 2 * x"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _cell("markdown", "Write `double(x)`."),
        _cell("code", f"def double(x):\n    ### BEGIN SOLUTION\n    {answer}\n    ### END SOLUTION", grade_id="double", solution=True),
        _cell("code", "assert double(3) == 6\n### BEGIN HIDDEN TESTS\nassert double(-4) == -8, 'double(-4) should be -8'\n### END HIDDEN TESTS",
              grade_id="test_double", grade=True, locked=True, points=2),
    ]
    return nb


def make_course(root: Path) -> Path:
    shutil.copy(ROOT / "nbgrader_config.py", root)
    (root / "solutions" / A).mkdir(parents=True)
    nbformat.write(probe_notebook(), root / "solutions" / A / "probe.ipynb")
    nbgrader(root, "generate_assignment", A, "--force")
    return root


def hand_in(root: Path, student: str, body: str, extra_cells: tuple = ()) -> None:
    """The released probe with `double`'s body (and any code after it) replaced by `body`;
    `extra_cells` (nbformat cells) go after the test cell."""
    nb = nbformat.read(root / "course" / A / "probe.ipynb", 4)
    nb.cells[1].source = f"def double(x):\n{body}"
    nb.cells += list(extra_cells)
    folder = root / "submitted" / student / A
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "probe.ipynb")


def submissions(root: Path) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        subs = gb.assignment_submissions(A)
        assert len({s.student.id for s in subs}) == len(subs), "a student has two submissions"
        return {s.student.id: s.score for s in subs}


def csv_rows(root: Path) -> dict[str, dict]:
    rows = list(csv.DictReader(open(root / f"grades-{A}.csv")))
    assert len({r["student_id"] for r in rows}) == len(rows), "a student is listed twice"
    return {r["student_id"]: r for r in rows}
