"""`course` command: prepare data, sync the workspace, and grade a phase ("am I done?").

    course data [--size small|full]
    course workspace
    course check PHASE          # e.g. course check 1
    course grade ASSIGNMENT     # instructors: grade every submission (e.g. 1, 01_foundation or all)
                                #   in the sandbox; --unsandboxed where it cannot start
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _phase_dir(base: Path, phase: str) -> Path:
    prefix = f"{int(phase):02d}_" if phase.isdigit() else phase
    found = sorted(p for p in base.glob(f"{prefix}*") if p.is_dir())
    if not found:
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name[:2].isdigit())
        sys.exit(f"No phase '{phase}' in {base}. Expected one of {names}. Try: make check PHASE=1")
    return found[0]


def cmd_data(args) -> int:
    from graders import data

    paths = data.prepare(size=args.size)
    c = data.counts(paths.size)
    print(f"Course data ({paths.size}) at {paths.root}: {c.images:,} images, {c.messages:,} support "
          f"messages, {c.reviews:,} reviews, {c.products:,} products, {c.customers:,} customers")
    return 0


def cmd_workspace(args) -> int:
    from graders import workspace

    done = workspace.sync(ROOT / "course", Path(args.workspace))
    for action, names in done.items():
        if names and action != "unchanged":
            print(f"{action}: " + ", ".join(names))
    print(f"Workspace ready at {args.workspace} ({sum(map(len, done.values()))} notebooks).")
    return 0


def nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an nbgrader command on the course at `root`; a failure raises with nbgrader's own output."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}", "--log-level=WARN"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"nbgrader {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scratch_course(root: Path, phase_source: Path) -> Path:
    """A course at `root` with one phase of `solutions/`, released; returns its release folder."""
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(phase_source, root / "solutions" / phase_source.name)
    nbgrader(root, "generate_assignment", phase_source.name, "--force")
    return root / "course" / phase_source.name


def grade_notebook(phase_source: Path, notebook: Path, student: str = "you") -> list[dict]:
    """Autograde one notebook against the source in a scratch course (your files are only read)."""
    import nbformat

    from graders.grading import graded_cells

    with tempfile.TemporaryDirectory(prefix="course-check-") as tmp:
        root = Path(tmp)
        scratch_course(root, phase_source)
        sub = root / "submitted" / student / phase_source.name
        sub.mkdir(parents=True)
        shutil.copy(notebook, sub / notebook.name)
        nbgrader(root, "autograde", phase_source.name, "--create", f"--student={student}", f"--notebook={notebook.stem}")
        graded = root / "autograded" / student / phase_source.name / notebook.name
        if not graded.exists():
            raise RuntimeError(f"nbgrader autograde wrote no {graded}")
        return graded_cells(nbformat.read(graded, as_version=4))


def cmd_check(args) -> int:
    workspace = Path(args.workspace)
    phase_ws = _phase_dir(workspace, args.phase) if workspace.is_dir() else None
    if phase_ws is None:
        sys.exit(f"No workspace at {workspace}. Try: make lab (it creates it), or make workspace")
    notebooks = sorted(phase_ws.glob("*_validation.ipynb"))
    if not notebooks:
        sys.exit(f"No *_validation.ipynb in {phase_ws}. Try: make workspace")
    source = _phase_dir(ROOT / "solutions", args.phase)
    from graders.trusted import sandbox

    if why := sandbox.unavailable():  # your own notebook on your own machine: say so, grade anyway
        print(f"Sandbox: not available here ({why}); grading without it (make check only).")
        os.environ[sandbox.SETTING] = "off"
    print(f"Grading {notebooks[0]} with nbgrader (this runs your pipelines; a few minutes on a laptop)...")
    cells = grade_notebook(source, notebooks[0])
    total = sum(c["points"] for c in cells)
    most = sum(c["max_points"] for c in cells)
    for c in cells:
        mark = "PASS" if c["passed"] else "INCONCLUSIVE" if c["inconclusive"] else "FAIL"
        print(f"\n[{mark}] {c['id']}  {c['points']:g}/{c['max_points']:g}")
        if c["output"]:
            print("   measured: " + c["output"].replace("\n", "\n             "))
        if c["reason"]:
            print(f"   reason: {c['reason']}")
    print(f"\nScore: {total:g} / {most:g}" + ("  - phase complete!" if total == most else ""))
    if any(c["inconclusive"] for c in cells):
        print("Some results were inconclusive: the machine was too busy to measure them. Run make check again "
              "when it is quieter (close other heavy programs).")
    return 0 if total == most else 1


def cmd_grade(args) -> int:
    from graders.trusted.classroom import ClassStopped, check_student_id, grade_class

    root = Path(args.root).resolve()
    for student in args.student or []:
        if problem := check_student_id(student):
            sys.exit(problem)
    names = [p.name for p in sorted((root / "solutions").iterdir()) if p.is_dir() and p.name[:2].isdigit()]
    wanted = names if args.assignment == "all" else [_phase_dir(root / "solutions", args.assignment).name]
    for assignment in wanted:
        try:
            grade_class(root, assignment, workers=args.workers, cell_timeout=args.cell_timeout,
                        notebook_timeout=args.notebook_timeout, students=args.student, fresh=args.fresh,
                        unsandboxed=args.unsandboxed)
        except ClassStopped as exc:
            sys.exit(str(exc))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="course", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=os.environ.get("COURSE_WORKSPACE", str(ROOT / "workspace")))
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="build the course datasets")
    p.add_argument("--size", choices=["small", "full"], default=None)
    p.set_defaults(fn=cmd_data)
    sub.add_parser("workspace", help="copy new notebooks from course/ into your workspace").set_defaults(fn=cmd_workspace)
    p = sub.add_parser("check", help="grade your validation notebook for a phase")
    p.add_argument("phase", help="phase number or folder name, e.g. 1 or 01_foundation")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("grade", help="instructors: autograde every submission of an assignment, in parallel")
    p.add_argument("assignment", help="phase number, folder name, or 'all'")
    p.add_argument("--root", default=os.environ.get("COURSE_ROOT", str(ROOT)), help="the nbgrader course folder")
    p.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 0) or None,
                   help="parallel runs (default: one per GPU, else sized from the cores and memory)")
    p.add_argument("--cell-timeout", type=int, default=int(os.environ.get("COURSE_CELL_TIMEOUT", 900)))
    p.add_argument("--notebook-timeout", type=int, default=int(os.environ.get("COURSE_NOTEBOOK_TIMEOUT", 1800)))
    p.add_argument("--student", action="append", help="grade only this student (again); repeatable")
    p.add_argument("--fresh", action="store_true", help="regrade everyone, even students a killed run finished")
    p.add_argument("--unsandboxed", action="store_true",
                   help="grade without the sandbox where it cannot start (submissions then run as you: trusted code only)")
    p.set_defaults(fn=cmd_grade)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
