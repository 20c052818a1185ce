"""Grade a small Phase 1 class with `course grade` on this machine and check what the grader
promises about the accelerator. Made for a GPU machine; on a CPU-only one it checks the same
things against the CPU.

    PYTHONPATH=tests python tests/bench/gpu_class.py [WORK_DIR]

Students: the reference, the blank release, one that fakes its utilization report
(`faked_telemetry`) and one that leaves Ray actors running (`actors_left`). Checked:
- the reference earns every point and the blank none;
- the faked report is caught by the grader's own measurement from outside the kernel (NVML on a
  GPU), and only there;
- one GPU is never given to two runs at once (`grading_slots`), and every run had the GPU alone;
- after each run nothing holds memory on its GPU (NVML), and nothing of any run is left running.
Prints every number it checks; exits 1 if a check fails.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from bad_submissions import KINDS, PHASE, VALIDATION
from conftest import class_submissions, graded_outputs

from graders import session
from graders.trusted import classroom
from graders.telemetry import gpu_processes, nvml_devices

STUDENTS = ("faked_telemetry", "actors_left")


def main(work: Path) -> int:
    gpus, why = nvml_devices()
    print(f"GPUs: {gpus or 'none'}{f' ({why})' if why else ''}")
    slots = session.grading_slots(4)
    print(f"grading_slots(4) on this machine: {len(slots)} run(s) at once: {[s['label'] for s in slots]}")

    held = []  # (time, [pid, ...]) every 0.25 s while the class is graded
    done = threading.Event()

    def watch():
        while not done.is_set():
            held.append((time.monotonic(), [pid for pid, _ in gpu_processes()]))
            time.sleep(0.25)

    work.mkdir(parents=True, exist_ok=True)
    root = class_submissions(work, PHASE, VALIDATION, **{k: KINDS[k].mutate for k in STUDENTS})
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    results = classroom.grade_class(root, PHASE, cell_timeout=180, notebook_timeout=600)
    done.set()
    watcher.join()
    print(f"class of {len(results)} graded in {time.monotonic() - start:.0f} s")

    failures = []

    def check(ok: bool, what: str, gpu_only: bool = False) -> None:
        if gpu_only and not gpus:
            print("  -    " + what + " (no GPU here: not checked)")
            return
        print(("  ok   " if ok else "  FAIL ") + what)
        if not ok:
            failures.append(what)

    by = {r.student: r for r in results}
    for r in results:
        print(f"{r.student:>16}: {r.status} {r.score}/{r.max_score} in {r.seconds:.0f} s; GPU after: {r.gpu_after}; "
              f"reason: {r.reason[:160]}")
    ref, blank = by["reference"], by["blank"]
    check(ref.score == ref.max_score, f"reference earns every point ({ref.score}/{ref.max_score})")
    check(blank.score == 0, f"blank earns nothing ({blank.score})")
    for name in ("reference", "faked_telemetry"):
        nb = nbformat.read(root / "autograded" / name / PHASE / f"{VALIDATION}.ipynb", 4)
        outs = graded_outputs(nb, "accelerator_stage")
        text = "".join(o.get("text", "") for o in outs if o.output_type == "stream").strip()
        errors = [f"{o.ename}: {o.evalue}" for o in outs if o.output_type == "error"]
        print(f"{name} accelerator_stage printed: {text[-300:]}\n  errors: {errors}")
        if name == "faked_telemetry":
            check(len(errors) == 1 and "measured by the grader from outside the notebook" in errors[0],
                  "faked report: the test cell, in the grader's own kernel, fails it on the grader's measurement")
            check("GPU" in " ".join(errors), "the outside measurement that caught it was of the GPU", gpu_only=True)
        else:
            check(not errors, "reference: the grader's measurement meets the target")
    check(len(slots) <= len(gpus), f"at most one run per GPU ({len(slots)} slots, {len(gpus)} GPUs)", gpu_only=True)
    check(all(not r.gpu_after for r in results), "after every run, nothing held memory on its GPU (NVML)")
    most = max((len(p) for _, p in held), default=0)
    print(f"NVML: {len(held)} samples while grading; at most {most} process(es) on the GPU at once")
    check(most >= 1, "NVML saw the runs on the GPU", gpu_only=True)
    check(gpu_processes() == [], f"nothing on the GPU after the class ({gpu_processes()})")
    check(classroom.tagged_processes(str(root)) == [], "no process of any run is left running")
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gpu_class_"))))
