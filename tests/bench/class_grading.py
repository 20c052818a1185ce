"""Class grading, sequential against parallel, on the same submissions: the measured ratio.

    PYTHONPATH=tests python tests/bench/class_grading.py   # BENCH_PHASE=01_foundation BENCH_STUDENTS=4

(`make bench-grading` sets PYTHONPATH: the submissions are made with the tests' own helpers.)

A scratch course gets BENCH_STUDENTS copies of the phase's reference solution; `course grade`
grades them once with one run at a time and once with the default parallel runs
(`session.grading_slots`), each in a fresh course. Scores must agree; the wall times and their
ratio are printed. Measured on 2 cores with 4 Phase 1 references: 87.3 s against 67.9 s, 1.28x.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]


def course_with_references(root: Path, phase: str, students: int) -> None:
    from conftest import solved, submit

    from graders.cli import scratch_course

    release = scratch_course(root, ROOT / "solutions" / phase)
    name = next(release.glob("*_validation.ipynb")).stem
    source = nbformat.read(ROOT / "solutions" / phase / f"{name}.ipynb", 4)
    for i in range(students):
        submit(root, phase, f"student{i:02d}", name, solved(nbformat.read(release / f"{name}.ipynb", 4), source))


def timed(phase: str, students: int, workers: int | None) -> tuple[float, dict, int]:
    from graders.trusted.classroom import ClassGrader

    with tempfile.TemporaryDirectory(prefix="bench-class-") as tmp:
        course_with_references(Path(tmp), phase, students)
        grader = ClassGrader(Path(tmp), phase, workers=workers)
        start = time.perf_counter()
        results = grader.run()
        return time.perf_counter() - start, {r.student: r.score for r in results}, len(grader.slots)


def main() -> int:
    phase = os.environ.get("BENCH_PHASE", "01_foundation")
    students = int(os.environ.get("BENCH_STUDENTS", 4))
    seq, seq_scores, _ = timed(phase, students, 1)
    par, par_scores, slots = timed(phase, students, None)
    print(f"\nclass grading, {phase}, {students} reference submissions on {os.cpu_count()} CPUs:")
    print(f"  sequential (1 run at a time): {seq:7.1f} s")
    print(f"  parallel ({slots} runs at a time):   {par:7.1f} s")
    print(f"  speed-up: {seq / par:.2f}x")
    if seq_scores != par_scores:
        print(f"  SCORES DIFFER: sequential {seq_scores} vs parallel {par_scores}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
