"""Grade a whole class: every submission of an assignment, in parallel, resumable.

    course grade 01_foundation [--workers N] [--cell-timeout S] [--notebook-timeout S]
                               [--student ID ...] [--fresh]

What happens, and why:

- **The learner's code runs in a sandbox.** Every kernel runs in `graders.trusted.sandbox`: no network,
  no view of the solutions, the gradebook, other submissions or the config, its own processes
  ended with it, a memory limit (the machine's memory over the parallel runs), its own user. A
  class is not graded without it unless the instructor passes `--unsandboxed`.
- **What no run may change is checked.** Before and after each run the class process compares
  `solutions/`, `nbgrader_config.py`, `gradebook.db` (as it last wrote it) and `.git` with their
  fingerprints, and stops the class with the changed paths if anything differs.
- **Submissions are read into memory first.** Each run then gets a fresh staging course under
  `.grading/<assignment>/runs/<student>/` written from that copy, so a submission that writes
  into another student's folder cannot change what that student is graded on.
- **Parallel runs never share a machine part.** Each worker slot owns its own cores (CPU
  affinity, inherited by the kernel and its Ray processes, and used by the utilization
  measurement) or, on a GPU machine, its own GPU (`CUDA_VISIBLE_DEVICES`). `session.grading_slots`
  sizes the slots from the hardware.
- **One writer to the gradebook.** nbgrader's gradebook is SQLite, which is not safe for
  concurrent writers. Every run autogrades into a private copy of the gradebook (nbgrader's, out
  of the sandbox's sight); only this process merges the result into `gradebook.db`, one student
  at a time, in place (a regrade updates the same rows: nothing is lost or duplicated). Only
  `auto_score` is taken from a run: manual scores and extra credit are the instructor's.
- **A bad submission never stops the class.** A renamed notebook, a file that is not a notebook,
  an empty folder: score 0, a one-line reason, a feedback page and a CSV row. Learner text is
  printed literally (no markup) in the progress, the summary and the CSV.
- **Nothing is left behind.** Every process of a run carries `COURSE_GRADING_RUN` in its
  environment; when the run ends (or hits the whole-notebook limit) every process still carrying
  it is stopped - kernel, Ray head, workers, actors - and the count goes in the summary.
- **A killed class run resumes.** Each finished student is appended to `journal.jsonl` after its
  grades are committed; starting again skips them (unless their submission changed, or with
  `--fresh`), first stopping what the killed run left behind.
- **A busy machine neither passes nor fails anyone.** A measured result the grader could not
  decide (the yardsticks before and after the run disagreed; `graders.trusted.yardsticks`) is
  "inconclusive": the submission is graded again, up to `REMEASURE` more times. If it is still
  inconclusive, its status says so, and those cells are marked for manual grading in the
  gradebook (formgrader lists them) instead of scoring a wrong 0.
- **Time limits.** Per cell and per notebook, enforced inside nbgrader's execute step
  (`graders.trusted.nbgrader_ext`); a run that outlives both by `MARGIN_S` is killed.

Results: `autograded/`, `feedback/` and `gradebook.db` as `nbgrader autograde` and
`generate_feedback` leave them, plus `grades-<assignment>.csv` with every student (graded,
failed or rejected, score, seconds, reason) and a summary table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue

import psutil

from graders import data
from graders.trusted import sandbox
from graders.trusted.nbgrader_ext import MeasuredExecute

TAG = "COURSE_GRADING_RUN"
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REMEASURE = 2  # more autograde runs for a submission with an inconclusive result
# Only where the tests run in the grader's own kernel can "inconclusive" come from the grader alone
# (elsewhere a learner's code could raise it to dodge a fail).
TRUSTED = tuple(MeasuredExecute.class_traits()["trusted_tests"].default())
MARGIN_S = 180  # beyond the notebook and cell limits: nbgrader's own start-up, feedback, shutdown
MAX_SUBMISSION_MB = 50
PROTECTED = ("solutions", "nbgrader_config.py", "gradebook.db", ".git")
NOT_WATCHED = {".git", ".venv", ".grading", "autograded", "feedback", "data", "workspace", "__pycache__",
               ".ipynb_checkpoints", ".pytest_cache", ".artifacts"}


@dataclass
class Result:
    student: str
    status: str  # graded | inconclusive (graded, some cells need grading again) | failed | rejected
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0
    reason: str = ""
    notes: list[str] = field(default_factory=list)  # what the grader had to do (also in the feedback)
    gpu_after: list = field(default_factory=list)  # [pid, MiB] still on the run's GPU after it (NVML)
    digest: str = ""


@dataclass
class Submission:
    student: str
    files: dict[str, bytes]  # relative path -> content
    digest: str


def check_student_id(student: str) -> str | None:
    """None for a plain name; else why it is refused (it becomes part of paths and commands)."""
    if PLAIN_ID.fullmatch(student) and ".." not in student:
        return None
    return (f"student id {student!r} is not a plain name: expected letters, digits, '.', '_' or '-' "
            "(no path separators, no leading dot or dash). Try: rename the folder under submitted/")


def read_submission(folder: Path, student: str) -> Submission:
    files, size = {}, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
        size += path.stat().st_size
        if size > MAX_SUBMISSION_MB * 2**20:
            raise ValueError(f"submission is larger than {MAX_SUBMISSION_MB} MB. Try: remove data files from it")
        files[str(path.relative_to(folder))] = path.read_bytes()
    if not any(name.endswith(".ipynb") for name in files):
        raise ValueError(f"no notebook in submitted/{student}/{folder.name}. Try: nbgrader collect again")
    digest = hashlib.sha256(b"".join(k.encode() + b"\0" + v for k, v in sorted(files.items()))).hexdigest()
    return Submission(student, files, digest)


# ------------------------------------------------------------------ processes of a run
def tagged_processes(prefix: str, tag: str = TAG) -> list[psutil.Process]:
    """Processes whose environment carries `tag` (default: a grading run's) starting with `prefix`."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(tag, "").startswith(prefix):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop_processes(prefix: str) -> list[str]:
    """Stop every process tagged `prefix*`; returns their names (empty when nothing was left)."""
    procs = tagged_processes(prefix)
    names = []
    for proc in procs:
        try:
            names.append(proc.name())
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return names


# ------------------------------------------------------------------ files outside the run
def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """mtime and size of the course's files that no graded run should write."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in NOT_WATCHED]
        for name in filenames:
            path = here / name
            rel = str(path.relative_to(root))
            if here == root and (name.startswith(("gradebook.db", "grades")) or name.endswith(".csv")):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            seen[rel] = (st.st_mtime_ns, st.st_size)
    return seen


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k, v in after.items() if before.get(k) != v) + sorted(f"{k} (deleted)" for k in before.keys() - after.keys())


def fingerprint(root: Path) -> dict[str, str]:
    """What no graded run may change: `solutions/`, `nbgrader_config.py`, `gradebook.db` and `.git`
    (a content hash per file; git's objects, named by their content, by size)."""
    seen = {}
    for top in PROTECTED:
        base = root / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink()) if base.is_dir() else []
        for path in paths:
            rel = str(path.relative_to(root))
            try:
                if path.is_symlink():
                    seen[rel] = "link:" + os.readlink(path)
                elif rel.startswith(".git/objects/"):
                    seen[rel] = f"size:{path.stat().st_size}"
                else:
                    seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
    return seen


class ClassStopped(Exception):
    """Something no run may change changed: the class stops (the message says what)."""


# ------------------------------------------------------------------ the gradebook
def assignment_in_gradebook(db: Path, assignment: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry

    if not db.exists():
        return False
    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            gb.find_assignment(assignment)
            return True
        except MissingEntry:
            return False


def record_zero(main_db: Path, assignment: str, student: str) -> float:
    """A submission that could not be graded scores 0 on every autograded cell (it stays in the
    export, and an earlier grade does not linger). Returns the assignment's max score."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{main_db}") as gb:
        gb.update_or_create_student(student)
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            with gb.db.no_autoflush:
                sub = gb.add_submission(assignment, student)
        for nb in sub.notebooks:
            for g in nb.grades:
                if g.auto_score is not None or not g.needs_manual_grade:
                    g.auto_score = 0.0
        gb.db.commit()
        return sub.max_score


def merge_submission(staged_db: Path, main_db: Path, assignment: str, student: str) -> tuple[float, float]:
    """Copy one student's autograde results from a run's private gradebook into the main one.

    Updates the rows in place when the student was graded before, so a regrade never duplicates
    and a merge repeated after a crash changes nothing. Returns (score, max score).
    """
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{staged_db}") as staged, Gradebook(f"sqlite:///{main_db}") as main:
        src = staged.find_submission(assignment, student)
        main.update_or_create_student(student)
        try:
            dst = main.find_submission(assignment, student)
        except MissingEntry:
            with main.db.no_autoflush:  # nbgrader builds the rows before adding them
                dst = main.add_submission(assignment, student)
        dst.timestamp = src.timestamp
        for nb in src.notebooks:
            for g in nb.grades:  # only what autograding decides: manual scores and extra credit are the instructor's
                d = main.find_grade(g.name, nb.name, assignment, student)
                d.auto_score, d.needs_manual_grade = g.auto_score, g.needs_manual_grade
            for c in nb.comments:
                main.find_comment(c.name, nb.name, assignment, student).auto_comment = c.auto_comment
            d_nb = main.find_submission_notebook(nb.name, assignment, student)
            d_nb.late_submission_penalty = nb.late_submission_penalty
        main.db.commit()
        return src.score, src.max_score


# ------------------------------------------------------------------ the class run
class ClassGrader:
    def __init__(self, root: Path, assignment: str, workers: int | None = None, cell_timeout: int = 900,
                 notebook_timeout: int = 1800, console=None, unsandboxed: bool = False):
        from rich.console import Console

        from graders.session import grading_slots

        self.root, self.assignment = Path(root).resolve(), assignment
        self.state = self.root / ".grading" / assignment
        self.journal = self.state / "journal.jsonl"
        self.slots = grading_slots(workers)
        self.cell_timeout, self.notebook_timeout = cell_timeout, notebook_timeout
        self.unsandboxed = unsandboxed
        self._outputs: dict[str, str] = {}  # each run's COURSE_OUTPUTS, by stage (data.run_outputs)
        self.console = console or Console(stderr=False)
        self._lock = threading.Lock()  # the gradebook and the journal have one writer at a time
        self._running: set[str] = set()  # students whose runs are going on now
        self._snapshot: dict = {}
        self._suspects: dict[str, set[str]] = {}  # changed course file -> students running meanwhile
        self._trusted: dict[str, str] = {}  # fingerprint() as this process last left it
        self._halt: str | None = None  # why the class stopped

    # -- journal ----------------------------------------------------------------------------
    def finished(self) -> dict[str, dict]:
        done = {}
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: that student is graded again
                done[row["student"]] = row
        return done

    def _record(self, result: Result) -> None:
        with open(self.journal, "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- one student ----------------------------------------------------------------------
    def _stage(self, sub: Submission) -> Path:
        stage = self.state / "runs" / sub.student
        shutil.rmtree(stage, ignore_errors=True)
        folder = stage / "submitted" / sub.student / self.assignment
        for rel, data in sub.files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        (stage / "solutions").mkdir()
        (stage / "solutions" / self.assignment).symlink_to(self.root / "solutions" / self.assignment)
        shutil.copy(self.root / "nbgrader_config.py", stage)
        with self._lock:  # copy the gradebook while nobody writes it
            shutil.copy(self.root / "gradebook.db", stage / "gradebook.db")
        return stage

    def _nbgrader(self, stage: Path, slot: dict, tag: str, *args: str, limit: float) -> tuple[int, str, bool]:
        guard = str(Path(__file__).with_name("guard"))  # sitecustomize: no writes in the course outside the stage
        env = {**os.environ, TAG: tag, "COURSE_CELL_TIMEOUT": str(self.cell_timeout),
               "COURSE_NOTEBOOK_TIMEOUT": str(self.notebook_timeout), "PYTHONUNBUFFERED": "1",
               "COURSE_OUTPUTS": self._outputs[stage.name], "COURSE_GRADING_ROOT": str(self.root),
               "COURSE_GRADING_ALLOW": str(stage), "COURSE_SANDBOX_REPORT": str(stage / "sandbox.json"),
               sandbox.SETTING: "off" if self.unsandboxed else "on",
               sandbox.MEMORY: str(sandbox.default_memory() // len(self.slots)),
               "PYTHONPATH": os.pathsep.join(filter(None, [guard, os.environ.get("PYTHONPATH")])), **slot["env"]}
        cmd = ["-m", "nbgrader", *args, "--log-level=WARN"]
        if slot["cores"]:  # pin before nbgrader starts: the kernel and Ray inherit the cores
            cmd = ["-c", f"import os, sys; os.sched_setaffinity(0, {slot['cores']}); "
                         "os.execv(sys.executable, [sys.executable] + sys.argv[1:])", *cmd]
        log = stage / "grading.log"
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, *cmd], cwd=stage, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return proc.wait(timeout=limit), log.read_text(errors="replace"), False
            except subprocess.TimeoutExpired:
                stop_processes(tag)
                proc.wait()
                return proc.returncode, log.read_text(errors="replace"), True

    def grade(self, sub: Submission, slot: dict) -> Result:
        start = time.monotonic()
        tag = f"{self.state}|{sub.student}|"  # ends with "|": student s1 never matches s10
        result = Result(sub.student, "failed", digest=sub.digest)
        if problem := self.not_gradable(sub):
            result.reason = problem
            return result
        stage = self._stage(sub)
        # its outputs: in the stage, or beside the data in object storage (a cluster's nodes write there)
        name = f"{self.assignment}/{sub.student}-{secrets.token_hex(4)}"
        self._outputs[stage.name] = data.run_outputs(str(stage / "outputs"), name)
        try:
            return self._grade_staged(sub, slot, stage, tag, result, start)
        finally:
            data.remove_outputs(self._outputs.pop(stage.name))

    def _grade_staged(self, sub: Submission, slot: dict, stage: Path, tag: str, result: Result, start: float) -> Result:
        limit = self.notebook_timeout + self.cell_timeout + MARGIN_S
        graded = stage / "autograded" / sub.student / self.assignment
        for attempt in range(1 + REMEASURE):
            rc, log, killed = self._nbgrader(stage, slot, tag, "autograde", self.assignment, f"--student={sub.student}",
                                             "--create", "--force", limit=limit)
            left = stop_processes(tag)
            undecided = {} if killed or rc != 0 or self.assignment not in TRUSTED else _inconclusive(graded)
            if not undecided or attempt == REMEASURE:
                break
        if attempt:
            result.notes.append(f"Graded {attempt + 1} times: the machine was busy while your results were measured "
                                "(inconclusive), so the grader measured them again.")
        report = _sandbox_report(stage / "sandbox.json")
        left += report.get("left_running", [])
        if left:
            result.notes.append(f"{len(left)} process(es) of your run were still running after the notebook finished "
                                f"and were stopped by the grader ({', '.join(sorted(set(left))[:5])}). "
                                "Try: end with gr.shutdown(), and kill actors you start.")
        result.gpu_after = _gpu_left(slot)
        if result.gpu_after:
            result.notes.append(f"{len(result.gpu_after)} process(es) still held GPU memory after your run: "
                                + ", ".join(f"pid {pid} ({mib} MiB)" for pid, mib in result.gpu_after))
        if killed:
            result.reason = (f"stopped after {limit:.0f} s: the run outlived the notebook limit "
                             f"({self.notebook_timeout} s) and the cell limit ({self.cell_timeout} s)")
        elif rc != 0 or not any(graded.glob("*.ipynb")):
            result.reason = "nbgrader autograde failed: " + _last_error(log)
        else:
            self._nbgrader(stage, slot, tag, "generate_feedback", self.assignment, f"--student={sub.student}",
                           "--force", limit=MARGIN_S)
            stop_processes(tag)
            result.status = "graded"
            result.reason = _lost_points(graded)
            if undecided:
                _needs_manual_grade(stage / "gradebook.db", self.assignment, sub.student, undecided)
                result.status = "inconclusive"
                result.reason = (f"inconclusive after {attempt + 1} runs, the machine was busy: "
                                 f"{', '.join(c for cells in undecided.values() for c in cells)} marked for manual "
                                 "grading (or grade this student again). " + result.reason)
        result.seconds = round(time.monotonic() - start, 1)
        return result

    def not_gradable(self, sub: Submission) -> str | None:
        """Why this submission cannot be graded at all (only renamed notebooks, a file that is not a
        notebook), in one line; None when its notebooks under their released names are readable."""
        import nbformat

        expected = sorted(p.name for p in (self.root / "solutions" / self.assignment).glob("*.ipynb"))
        found = sorted(name for name in sub.files if name.endswith(".ipynb") and "/" not in name)
        if not set(expected) & set(sub.files):  # nbgrader scores a missing notebook 0; none at all is a mistake
            return (f"no notebook of {self.assignment} under its released name (expected {', '.join(expected)}; "
                    f"found: {', '.join(found) or 'no notebook'}). Try: hand in the notebook under its released name")
        for name in (n for n in expected if n in sub.files):
            try:
                nbformat.reads(sub.files[name].decode("utf-8"), as_version=4)
            except Exception as exc:  # not JSON, not UTF-8, not a notebook
                why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                return f"{name} is not a readable notebook ({why}). Try: download it again from JupyterLab (File > Download)"
        return None

    def _publish(self, sub: Submission, result: Result) -> None:
        """Under the lock: the one write of this student's results into the course."""
        stage = self.state / "runs" / sub.student
        for kind in ("autograded", "feedback"):
            src = stage / kind / sub.student / self.assignment
            dst = self.root / kind / sub.student / self.assignment
            shutil.rmtree(dst, ignore_errors=True)  # never leave an earlier run's feedback for a failed one
            if src.exists():
                shutil.copytree(src, dst)
        if result.status in ("graded", "inconclusive"):
            result.score, result.max_score = merge_submission(stage / "gradebook.db", self.root / "gradebook.db",
                                                              self.assignment, sub.student)
        else:
            result.score, result.max_score = 0.0, record_zero(self.root / "gradebook.db", self.assignment, sub.student)
        self._trusted = fingerprint(self.root)  # the gradebook as this process left it
        if result.status not in ("graded", "inconclusive"):
            result.notes.insert(0, f"Your notebook could not be graded: {result.reason}")
        if result.notes:
            _add_notes(self.root / "feedback" / sub.student / self.assignment, result.notes)
        self._record(result)
        shutil.rmtree(stage, ignore_errors=True)

    def _outside_writes(self, student: str) -> str | None:
        """Under the lock, as a run ends: a note naming the course files changed outside the
        submission folders while it ran (charged to every run going on meanwhile), or None."""
        now = snapshot(self.root)
        for path in changed(self._snapshot, now):
            self._suspects.setdefault(path, set()).update(self._running)
        self._snapshot = now
        self._running.discard(student)
        mine = sorted(p for p, who in self._suspects.items() if student in who)
        if not mine:
            return None
        others = sorted(set().union(*(self._suspects[p] for p in mine)) - {student})
        return ("files outside the submission folders changed while your notebook ran: " + ", ".join(mine[:10])
                + (f" (also running then: {', '.join(others)})" if others else "")
                + ". A graded notebook may only write inside its own folder.")

    # -- the class --------------------------------------------------------------------------
    def run(self, students: list[str] | None = None, fresh: bool = False) -> list[Result]:
        """Grade every submission (or `students` only, started in that order), as many at once as
        there are slots; a submission graded before and unchanged keeps its grade (unless `fresh`)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        if not assignment_in_gradebook(self.root / "gradebook.db", self.assignment):
            raise SystemExit(f"{self.assignment} is not in {self.root / 'gradebook.db'}. Try: make release (it "
                             "records the assignment in the gradebook), then grade again.")
        if self.unsandboxed:
            self.console.print("WARNING: grading without the sandbox (--unsandboxed): submissions run as this user, "
                               "with its files, processes and network.", markup=False)
        elif why := sandbox.on_cluster():
            raise SystemExit(f"Cannot grade a class in a sandbox here: {why}. Try: grade on one machine (unset "
                             "RAY_ADDRESS), or pass --unsandboxed to grade on the cluster (only for submissions you trust).")
        elif why := sandbox.unavailable():
            raise SystemExit(f"Cannot grade a class here: the grading sandbox cannot start: {why}. Try: make setup as "
                             "root (it installs bubblewrap), or pass --unsandboxed to grade without it (only for "
                             "submissions you trust).")
        self.state.mkdir(parents=True, exist_ok=True)
        leftovers = stop_processes(f"{self.state}|")
        if leftovers:
            self.console.print(f"Stopped {len(leftovers)} process(es) left by an earlier, interrupted class run.")
        if fresh and self.journal.exists():
            self.journal.unlink()
        done = self.finished()

        results, todo, unreadable = [], [], []
        folder = self.root / "submitted"
        for path in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            student = path.name
            if students and student not in students:
                continue
            problem = check_student_id(student)
            sub_dir = path / self.assignment
            if problem is None and not sub_dir.is_dir():
                continue  # this student did not hand this assignment in
            if problem:
                results.append(Result(student, "rejected", reason=problem))
                continue
            try:
                sub = read_submission(sub_dir, student)
            except (ValueError, OSError) as exc:  # an empty folder, a huge one: 0, a reason, a page
                unreadable.append(Result(student, "failed", reason=str(exc)))
                continue
            before = done.get(student)
            if before and before.get("digest") == sub.digest and not students:
                results.append(Result(**{**before, "notes": before.get("notes", [])}))
                continue
            todo.append(sub)

        if students:
            rank = {student: i for i, student in enumerate(students)}
            todo.sort(key=lambda sub: rank[sub.student])
        self.console.print(f"Grading {len(todo)} submission(s) of {self.assignment} with {len(self.slots)} "
                           f"parallel run(s) ({', '.join(s['label'] for s in self.slots)}); "
                           f"{len(results)} already graded or rejected. Limits: {self.cell_timeout} s a cell, "
                           f"{self.notebook_timeout} s a notebook.")
        free: Queue = Queue()
        for slot in self.slots:
            free.put(slot)
        self._snapshot = snapshot(self.root)
        self._trusted = fingerprint(self.root)
        for result in unreadable:
            with self._lock:
                self._publish(Submission(result.student, {}, ""), result)
            results.append(result)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            overall = progress.add_task(f"[bold]{self.assignment}", total=len(todo))

            def job(sub: Submission) -> Result:
                slot = free.get()
                with self._lock:
                    self._check_protected(f"before {sub.student}'s run")
                    if self._halt:
                        free.put(slot)
                        return Result(sub.student, "failed", reason=f"not graded: the class stopped ({self._halt})", digest=sub.digest)
                    self._running.add(sub.student)
                task = progress.add_task(f"  {sub.student}: running on {slot['label']}", total=None)
                try:
                    result = self.grade(sub, slot)
                except Exception as exc:  # the class run never aborts for one student
                    result = Result(sub.student, "failed", reason=f"grader error: {type(exc).__name__}: {exc}",
                                    digest=sub.digest)
                finally:
                    free.put(slot)
                with self._lock:
                    if note := self._outside_writes(sub.student):
                        result.notes.append(note)
                    if self._check_protected(f"while {sub.student}'s notebook ran"):
                        result.status, result.reason = "failed", f"not graded: the class stopped ({self._halt})"
                    try:
                        self._publish(sub, result)
                    except Exception as exc:
                        result.status, result.reason = "failed", f"could not save the grades: {exc}"
                progress.remove_task(task)
                mark = Text.assemble(*{"graded": [("graded", "green")], "failed": [("FAILED", "red")],
                                       "inconclusive": [("INCONCLUSIVE", "yellow")]}.get(result.status, [result.status]))
                score = f"{result.score:g}/{result.max_score:g}" if result.score is not None else "-"
                progress.console.print(mark, Text(f"{sub.student:<20} {score:>8} {result.seconds:6.0f} s  {result.reason[:80]}"))
                progress.advance(overall)
                return result

            pool = ThreadPoolExecutor(max_workers=len(self.slots))
            try:
                results += list(pool.map(job, todo))
            except KeyboardInterrupt:  # Ctrl-C: our runs live in their own sessions; stop them too
                stop_processes(f"{self.state}|")
                pool.shutdown(cancel_futures=True)
                raise
            pool.shutdown()

        results.sort(key=lambda r: r.student)
        self.write_csv(results)
        self.print_summary(results)
        if self._halt:
            raise ClassStopped(f"The class run stopped: {self._halt}. Nothing was merged after that. Try: restore "
                               "those files (git status, git checkout), find out what changed them, then grade again.")
        return results

    def _check_protected(self, when: str) -> bool:
        """Under the lock: True (and the class halts) when a protected file changed since this
        process last looked (`fingerprint`): nothing is merged or graded after that."""
        if self._halt:
            return True
        now = fingerprint(self.root)
        diff = sorted(k for k in now.keys() | self._trusted.keys() if now.get(k) != self._trusted.get(k))
        if diff:
            self._halt = f"{', '.join(diff[:10])} changed {when}; no graded run may change them"
            stop_processes(f"{self.state}|")
        return bool(diff)

    def write_csv(self, results: list[Result]) -> Path:
        path = self.root / f"grades-{self.assignment}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["student_id", "status", "score", "max_score", "seconds", "reason", "grader_notes"])
            for r in results:
                w.writerow([r.student, r.status, "" if r.score is None else r.score,
                            "" if r.max_score is None else r.max_score, r.seconds, r.reason, " | ".join(r.notes)])
        return path

    def print_summary(self, results: list[Result]) -> None:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{self.assignment}: {len(results)} student(s)")
        for col in ("student", "status", "score", "time", "reason / grader notes"):
            table.add_column(col, overflow="fold")
        for r in results:  # learner text as Text: printed literally, never read as markup
            score = f"{r.score:g} / {r.max_score:g}" if r.score is not None else "-"
            table.add_row(Text(r.student), r.status, score, f"{r.seconds:.0f} s", Text("; ".join(filter(None, [r.reason, *r.notes]))[:300]))
        self.console.print(table)
        counts = {s: sum(r.status == s for r in results) for s in ("graded", "inconclusive", "failed", "rejected")}
        self.console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f". CSV: grades-{self.assignment}.csv", markup=False)


def _sandbox_report(path: Path) -> dict:
    """What the sandboxed kernel's manager saw as the run ended (graders.trusted.sandbox), or {}."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _gpu_left(slot: dict, wait_s: float = 10.0) -> list[list[int]]:
    """What still holds memory on this slot's GPU once its run has ended and been stopped (the
    driver frees a stopped process's memory within moments). [] without a GPU."""
    from graders.telemetry import gpu_processes

    deadline = time.monotonic() + wait_s
    while (held := gpu_processes(slot["env"].get("CUDA_VISIBLE_DEVICES"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [[pid, mib] for pid, mib in held]


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def _lost_points(folder: Path) -> str:
    """'cells: reason' for the graded cells that lost points, one entry per reason ('' for full marks)."""
    import nbformat

    from graders.grading import graded_cells

    lost: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.ipynb")):
        for cell in graded_cells(nbformat.read(path, as_version=4)):
            if not cell["passed"]:
                lost.setdefault((cell["reason"] or "failed").splitlines()[0][:120], []).append(cell["id"])
    return "; ".join(f"{', '.join(cells)}: {reason}" for reason, cells in lost.items())


def _inconclusive(folder: Path) -> dict[str, list[str]]:
    """{notebook name: graded cells whose result was inconclusive} of an autograded submission."""
    import nbformat

    from graders.grading import graded_cells

    found = {}
    for path in sorted(folder.glob("*.ipynb")):
        try:
            cells = graded_cells(nbformat.read(path, as_version=4))
        except Exception:  # an unreadable notebook is not a busy machine
            continue
        if ids := [c["id"] for c in cells if c["inconclusive"]]:
            found[path.stem] = ids
    return found


def _needs_manual_grade(db: Path, assignment: str, student: str, cells: dict[str, list[str]]) -> None:
    """Mark the inconclusive cells for the instructor (formgrader's "needs manual grade")."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{db}") as gb:
        for notebook, ids in cells.items():
            for cell in ids:
                gb.find_grade(cell, notebook, assignment, student).needs_manual_grade = True
        gb.db.commit()


def _add_notes(folder: Path, notes: list[str]) -> None:
    """Put the grader's notes at the top of each feedback page of this submission."""
    from html import escape

    block = ("<div style='border:2px solid #c60;padding:8px;margin:8px'><b>Notes from the class grader</b><ul>"
             + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul></div>")
    pages = sorted(folder.glob("*.html"))
    if not pages:
        folder.mkdir(parents=True, exist_ok=True)
        pages = [folder / "grader-notes.html"]
        pages[0].write_text(f"<html><body>{block}</body></html>")
        return
    for page in pages:
        text = page.read_text()
        page.write_text(re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + block, text, count=1))


def grade_class(root: Path, assignment: str, **options) -> list[Result]:
    students, fresh = options.pop("students", None), options.pop("fresh", False)
    return ClassGrader(root, assignment, **options).run(students=students, fresh=fresh)

