"""nbgrader steps for the course: outside measurement, and a grader that bad submissions cannot break.

Utilization that learner code cannot fake: a learner's code runs in the same kernel as the test
cells, so it can patch anything there, `UtilizationMonitor` included. `MeasuredExecute` replaces
nbgrader's `Execute` step (see `nbgrader_config.py`). While a cell whose grade id is in
`measured_cells` runs (the validation's locked "run your pipelines" cell), it samples
utilization from the grading process itself: the CPU of the learner's run alone (the sandbox's
cgroup, else the kernel's process tree; see `graders.telemetry`), with the machine's beside it. When the notebook has run, every graded cell that
published a utilization report (see `checks.expect_utilization`) is compared with that outside
measurement. The cell loses its points, with a reason the instructor and the learner can read,
when

- the outside measurement misses the phase's target (`checks.UTILIZATION_TARGETS`, read here,
  in the grading process, never from the notebook), or
- the notebook's report and the outside measurement disagree by more than `tolerance` points.

One bad submission never stops the class run, and each cell says what happened to it (an error
output where it loses its points, stdout where it does not):

- a cell that runs past `timeout` seconds is interrupted with a `CellTimeLimit` error and the
  next cells run; past `notebook_timeout` seconds in all, the remaining cells are not run;
- when the kernel dies (`os._exit`, a crash in native code) the cell says so, the later cells
  are not run, and autograde finishes normally (feedback and scores exist);
- a cell's outputs are capped and JavaScript outputs removed (`feedback.OutputLimits`: text cut
  to `max_output_chars` / `max_output_lines`, head and tail kept; a rich output over
  `max_output_bytes`, or the largest ones past `max_cell_output_bytes` /
  `max_notebook_output_bytes`, replaced by a note), so the autograded notebook that formgrader
  shows is small and runs no script;
- stderr in a locked test cell moves to stdout with a note: the test cells write none
  themselves, so it comes from the learner's code (a warning, a background thread) and must not
  cost the cell its points;
- notes left by `CheckSubmission` (edited, missing or duplicated cells) are printed in the cell.

Phase 2's yardsticks (the model ceiling and the naive baseline) are the grader's own: their
cells (`grader_cells`) do not run in the learner's kernel, and `graders.trusted.yardsticks`
measures both in a process of the grader's just before and just after the measured cell, again
while the two disagree; the tests read the bracket (`measured.json`, with the measured cell's
duration by the grader's clock and the Serve processes it counted).

The measured run's inputs are the grader's (`graders.trusted.inputs`, Phases 1 and 2): a plain
copy until just before the measured cell, then a salted one written by the grader, which the
yardsticks and the tests read too. Outputs computed before the run do not match it.

The measured run's output blocks are the grader's too (`graders.trusted.custody`): while the
measured cell runs, the grader takes each block as the run writes it (`COURSE_STREAM`), on its own
clock; the tests read the run's rows and arrival times from those, not from the kernel's report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float, Integer, List, Unicode

from graders.checks import REPORT_MIME, UTILIZATION_TARGETS
from graders.telemetry import UtilizationMonitor
from graders.trusted import custody
from graders.trusted.feedback import OutputLimits

NOTES = "course_notes"  # cell metadata: notes from CheckSubmission, printed when the cell runs


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def _stdout(text: str) -> NotebookNode:
    return NotebookNode(output_type="stream", name="stdout", text=text)


class MeasuredExecute(OutputLimits, Execute):
    measured_cells = List(["run_pipelines"], help="grade ids of the cells that run learner pipelines").tag(config=True)
    utilization_cells = List(["accelerator_stage", "accelerator_utilization", "inference_utilization", "scoring_utilization"], help="graded cells that must publish a utilization report").tag(config=True)
    tolerance = Float(25.0, help="largest allowed gap (percentage points) between inside and outside means").tag(config=True)
    phase = Unicode("", help="targets to use; default: the assignment folder's name").tag(config=True)
    notebook_timeout = Integer(1800, help="seconds for the whole notebook; later cells are not run").tag(config=True)
    iopub_timeout = Integer(30, help="seconds to wait for a cell's last outputs (an interrupted Ray pipeline takes a while)").tag(config=True)
    trusted_tests = List(["01_foundation", "02_advanced_processing", "03_production_systems", "04_production_deployment"],
                         help="assignments whose graded test cells run in the grader's own kernel, never the learner's").tag(config=True)
    setup_cells = List(["setup", "inputs"], help="grade ids of the locked cells the grader's kernel runs first "
                       "(the setup, and the inputs the run cells give the learner's code)").tag(config=True)
    final_cell = Unicode("shutdown", help="grade id of the cell before which the grader grades, while the "
                         "learner's kernel still runs (so hidden tests can ask it questions)").tag(config=True)
    serve_cells = List(["run_service"], help="cells after which the grader counts the Serve processes left").tag(config=True)
    max_questions = Integer(16, help="questions one test cell may ask the learner's kernel").tag(config=True)
    yardstick_phases = List(["02_advanced_processing"], help="assignments whose measured cell the grader brackets "
                            "with its own yardsticks (graders/trusted/yardsticks.py)").tag(config=True)
    grader_cells = List(["run_ceiling", "run_naive"], help="locked cells that measure yardsticks in the learner's "
                        "kernel: when graded, not run there (the grader measures them itself)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        phase = self.phase or (resources or {}).get("nbgrader", {}).get("assignment", "")
        self._trusted = phase in self.trusted_tests
        self._yardsticks = self._trusted and phase in self.yardstick_phases
        self._deferred = []  # test cells kept for the grader's kernel
        self._outside = None
        self._stopped = None  # why the remaining cells are not run
        self._unfinished = []  # cells stopped at a time limit (later NameErrors are explained by them)
        self._deadline = time.monotonic() + self.notebook_timeout if self.notebook_timeout > 0 else None
        self._limit = None
        self._graded = False  # the grader's pass has run
        self._measured = {}  # what the grader measured itself (serve_left, yardsticks, run_cell_seconds, inputs)
        self.start_notebook()
        self.timeout_func = lambda cell: self._limit
        self._inputs = self._fresh_inputs(phase)
        self._custody = None  # the measured run's output blocks, as the grader took them (custody.py)
        if self._trusted:
            os.environ[custody.ENV] = str(_run_folder(resources) / "stream")
        try:
            nb, resources = super().preprocess(nb, resources, km=km)  # the learner's kernel is shut down here
            if self._deferred and not self._graded:  # the learner's kernel stopped early: its questions go unanswered
                self.grade_in_own_kernel(nb, resources)
        finally:
            os.environ.pop(custody.ENV, None)
            if self._custody is not None:
                self._custody.close()
            if self._inputs is not None:
                self._inputs.close()
                os.environ.pop("COURSE_INPUTS", None)
        graded_here = {id(c) for c in self._deferred}  # their reports are the grader's own measurement
        self.cross_check([c for c in nb.cells if id(c) not in graded_here], UTILIZATION_TARGETS.get(phase, {}))
        return nb, resources

    def _fresh_inputs(self, phase: str):
        """The grader's copy of the measured run's datasets (graders/trusted/inputs.py), which the
        learner's kernel and the grader's read through COURSE_INPUTS; None where none is given."""
        from graders.trusted import inputs

        datasets = inputs.FRESH.get(phase) if self._trusted else None
        if not datasets:
            return None
        why = inputs.unavailable()
        try:
            fresh = None if why else inputs.FreshInputs(datasets)
        except Exception as exc:  # the data is not there, or a disk is full: the run reads the course's own files
            why = f"{type(exc).__name__}: {exc}"
            fresh = None
        if fresh is None:
            self._measured["inputs"] = f"not renewed ({why})"
            self.log.warning("Fresh inputs: none for this run: %s.", why)
            return None
        os.environ[inputs.ENV] = str(fresh.shown)
        return fresh

    def grade_in_own_kernel(self, nb, resources) -> None:
        """Run the deferred test cells in a fresh kernel of the grader's that the learner's code
        never touched: it runs the locked setup cells, reads the results the run cells published
        (`graders.handover.publish`) and the grader's own measurements, then the tests. A hidden
        test's questions for the learner's functions are answered by the learner's kernel while
        it still runs (`_answer_questions`)."""
        import shutil
        import tempfile

        from graders.handover import _copy_files

        self._graded = True
        run = _run_folder(resources)
        own = Path(tempfile.mkdtemp(prefix="course-grader-"))
        try:
            if (run / "results").is_dir():
                _copy_files(str(run / "results"), str(own / "results"))  # regular files only, capped
            for folder in ("questions", "answers"):
                (own / folder).mkdir()
            report = None
            if self._outside is not None:
                report = str(own / "outside_report.json")
                Path(report).write_text(json.dumps(self._outside.to_dict(timeline=True)))
            (own / "measured.json").write_text(json.dumps(self._measured))
            setup = [c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") in self.setup_cells]
            expected, measured = _published(nb.cells, self.measured_cells)
            unmonitored = tuple(_unmonitored(nb.cells, self.measured_cells))
            kept = None
            if self._custody is not None:  # into the folder the grader's kernel sees
                kept = str(shutil.move(str(self._custody.kept), str(own / "kept")))
            env = {"COURSE_GRADER": "1", "COURSE_QUESTIONS": str(own / "questions"), "COURSE_ANSWERS": str(own / "answers"),
                   "COURSE_MEASURED": str(own / "measured.json"), custody.ENV: "",
                   **({"COURSE_INPUTS": str(self._inputs.shown)} if self._inputs else {})}
            preamble = NotebookNode(cell_type="code", metadata={}, outputs=[], execution_count=None, source="\n".join([
                "import os", f"os.environ.update({env!r})", *setup,
                "from graders.handover import load_results as _load_results",
                f"globals().update(_load_results({str(own / 'results')!r}, {expected!r}, {report!r}, {measured!r}, "
                f"{self._unfinished!r}, {kept!r}, {unmonitored!r}))"]))
            cells = [preamble, *self._deferred]
            grader = GraderExecute(config=self.config, parent=self.parent, kernel_name=self.kernel_name)
            grader.ask_learner = lambda: self._answer_questions(run, own)
            # The grader's own time is not the learner's: a notebook that used its whole limit still
            # gets its tests run, each within the cell limit (the class runner's margin covers this pass).
            grader.deadline = None
            report_to = os.environ.pop("COURSE_SANDBOX_REPORT", None)  # the sandbox report is the learner's run's
            try:
                grader.preprocess(NotebookNode(cells=cells, metadata={}, nbformat=nb.nbformat,  # none of the submission's
                                               nbformat_minor=nb.nbformat_minor), {"metadata": {"path": str(own)}})
            finally:
                if report_to:
                    os.environ["COURSE_SANDBOX_REPORT"] = report_to
        finally:
            shutil.rmtree(own, ignore_errors=True)

    def preprocess_cell(self, cell, resources, index):
        final = (cell.metadata.get("nbgrader", {}).get("grade_id") == self.final_cell
                 and not any(_is_test(c) for c in self.nb.cells[index:]))
        if final:  # before the notebook's last cell (it stops Ray)
            self._grade_while_it_runs(resources)
        cell, resources = self._run_cell(cell, resources, index)
        if index == len(self.nb.cells) - 1:  # a notebook without that cell
            self._grade_while_it_runs(resources)
        return cell, resources

    def _grade_while_it_runs(self, resources) -> None:
        """Hand the results over and grade, while the learner's kernel still runs to answer."""
        if self._trusted and not self._stopped and not self._graded:
            self._hand_over(resources)
            self.grade_in_own_kernel(self.nb, resources)

    def _answer_questions(self, run, own) -> bool:
        """The grader's kernel asked the learner's functions questions (graders.handover.Learner):
        hand them to the learner's kernel, which answers with `graders.handover.answer()` while it
        still runs; bring the answers back as files. False when nothing was asked."""
        import shutil

        from graders.handover import _copy_files

        asked = [q.name for q in sorted((own / "questions").iterdir()) if not (own / "answers" / q.name / "answer.json").exists()]
        if not asked:
            return False
        why = f"the notebook's kernel had stopped ({self._stopped})" if self._stopped else None
        if why is None and self.kc is not None:
            for name in asked:
                shutil.rmtree(run / "questions" / name, ignore_errors=True)
                _copy_files(str(own / "questions" / name), str(run / "questions" / name))
            self._limit = self.timeout if self.timeout and self.timeout > 0 else None
            try:
                self.execute_cell(NotebookNode(cell_type="code", source="__import__('graders.handover').handover.answer()",
                                               metadata={}, outputs=[], execution_count=None), len(self.nb.cells),
                                  store_history=False)
            except Exception as exc:  # the learner's kernel: whatever happens there, the grader goes on
                self.log.warning("The learner's kernel did not answer: %s", exc)
            for name in asked:
                try:
                    if (run / "answers" / name / "answer.json").is_file():
                        _copy_files(str(run / "answers" / name), str(own / "answers" / name))
                except OSError as exc:
                    (own / "answers" / name).mkdir(parents=True, exist_ok=True)
                    (own / "answers" / name / "answer.json").write_text(json.dumps({"error": f"its answer was not read: {exc}"}))
            why = f"the notebook's kernel gave no answer within the cell time limit of {self._limit} s"
        for name in asked:
            out = own / "answers" / name / "answer.json"
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"error": why or "the notebook's kernel was not running"}))
        return True

    def _hand_over(self, resources) -> None:
        """The learner's pass is over and its kernel still runs: publish what the run cells should
        have published and did not (a run cell stopped at its time limit never reached its own
        `publish`, but the runs before the stop are there). Nothing to do after a normal run."""
        manifest = Path((resources or {}).get("metadata", {}).get("path") or ".") / "results" / "manifest.json"
        try:
            handed = set(json.loads(manifest.read_text()))
        except (OSError, ValueError, TypeError):
            handed = set()
        names = [n for n in _published(self.nb.cells, self.measured_cells)[0] if n not in handed]
        if not names:
            return
        code = ("__import__('graders.grading').grading.publish("
                f"**{{k: v for k, v in globals().items() if k in {names!r}}})")
        self._limit = 120
        try:
            self.execute_cell(NotebookNode(cell_type="code", source=code, metadata={}, outputs=[], execution_count=None),
                              len(self.nb.cells), store_history=False)
        except Exception as exc:  # the learner's kernel: whatever happens there, the grader goes on
            self.log.warning("Handing the results over failed: %s", exc)

    def _run_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"number {index + 1}"
        left = None if self._deadline is None else self._deadline - time.monotonic()
        if not self._stopped and left is not None and left <= 0:
            self._stopped = f"the notebook ran past its time limit of {self.notebook_timeout} s before this cell"
        if self._stopped:
            cell.outputs = [_error("NotRun", f"this cell was not run: {self._stopped}")]
            return cell, resources
        if self._trusted and _is_test(cell):  # graded by the grader's own kernel, afterwards
            cell.outputs, cell.execution_count = [], None
            self._deferred.append(cell)
            return cell, resources
        if self._yardsticks and cell.metadata.get("nbgrader", {}).get("grade_id") in self.grader_cells:
            cell.outputs, cell.execution_count = [_stdout(
                "[grader: not run while graded: the grader measures this yardstick itself, before and after your "
                "pipeline, in a process of its own (see the tests below)]\n")], None
            return cell, resources
        self._set_limit(left)
        try:
            cell, resources = self._execute(cell, resources, index)
        except DeadKernelError:
            cell.outputs.append(_error("KernelDied", f"the Python kernel died while running this cell{self._exit_code()}: "
                                       "something in it ended the process (os._exit, a crash in native code, "
                                       "running out of memory). The cells after it were not run."))
            self._stopped = f"the kernel died in cell {name}"
        except CellTimeoutError:  # the kernel ignored the interrupt: nothing more can run in it
            cell.outputs.append(_error("CellTimeLimit", self.error_on_timeout["evalue"] + " The kernel did not stop when interrupted."))
            self._stopped = f"cell {name} ran past its time limit and the kernel did not stop"
        self._explain(cell, name)
        cell.outputs = self.limit_outputs(cell.outputs)
        self._move_stderr(cell)
        notes = cell.metadata.get(NOTES, [])
        cell.outputs[:0] = [_stdout(f"[grader: {note}]\n") for note in notes]
        return cell, resources

    def _execute(self, cell, resources, index):
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in self.serve_cells:
            try:
                return super().preprocess_cell(cell, resources, index)
            finally:
                self._measured["serve_left"] = self._count_serve_processes()
        if gid not in self.measured_cells:
            return super().preprocess_cell(cell, resources, index)
        renewed = self._stage_inputs()
        yardsticks = self._start_yardsticks(renewed) if self._yardsticks else None
        if renewed:  # the salted copy, shown to the run only now (its yardsticks measured on it already)
            self._inputs.reveal()
            self._measured["inputs"] = "renewed"
        monitor = UtilizationMonitor(scope=self._run_scope())
        if self._trusted and self._custody is None:
            self._custody = custody.Custody(Path(os.environ[custody.ENV]))
            self._custody.start()
        start = time.monotonic()
        try:
            monitor.__enter__()
        except RuntimeError as exc:  # the run is graded, unmeasured: its utilization cells then fail, saying so
            self.log.warning("Utilization monitor: %s", exc)
            self._measured["monitor"] = f"the grader could not measure this run: {exc}"
            monitor = None
        try:
            return super().preprocess_cell(cell, resources, index)
        finally:  # its report exists once the monitor has stopped, also when the kernel died
            self._measured["run_cell_seconds"] = round(time.monotonic() - start, 3)
            if monitor is not None:
                try:
                    monitor.__exit__(None, None, None)
                except RuntimeError as exc:  # its samples so far are in its report
                    self._measured["monitor"] = f"the grader's measurement of this run stopped: {exc}"
            if self._custody is not None:
                self._custody.stop()
            self._outside = monitor.report if monitor is not None else None
            if yardsticks:
                arrived = self._custody is None or any(self._custody.arrivals.values())
                self._measured["yardsticks"] = self._finish_yardsticks(*yardsticks, again=arrived)

    def _stage_inputs(self) -> bool:
        """Write the salted inputs of the measured run (not shown to it yet); False if there are none."""
        if self._inputs is None:
            return False
        try:
            self._inputs.stage()
            return True
        except Exception as exc:  # the run then reads the plain copy, and the tests say so
            self._measured["inputs"] = f"not renewed ({type(exc).__name__}: {exc})"
            self.log.warning("Fresh inputs: not written: %s", exc)
            return False

    def _start_yardsticks(self, renewed: bool):
        """The grader's yardstick process and its measurement before the run (yardsticks.py), on
        the salted reviews the run is about to read when the inputs were `renewed`."""
        from graders import data
        from graders.trusted import sandbox, yardsticks

        reviews = str(self._inputs.staged / "reviews") if renewed else data.paths().reviews
        with self._run_paused():
            try:
                proc = yardsticks.YardstickProcess(reviews, sandbox.PRIORITY if os.geteuid() == 0 else 0)
            except Exception as exc:  # the tests then say "inconclusive", with this reason
                return None, {"error": f"the grader's yardstick process did not start ({type(exc).__name__}: {exc})"}
            return proc, proc.measure()

    def _finish_yardsticks(self, proc, before: dict, again: bool = True) -> dict:
        """Measure again after the run while before and after disagree; the bracket the tests read.
        Not `again` (no output block arrived, so there is no rate to compare): stop the process."""
        from graders.trusted import yardsticks

        if proc is None:
            return before
        afters = []
        try:
            if not again:
                return {"error": "not measured after the run: none of its output blocks arrived"}
            while "error" not in before and len(afters) < yardsticks.TRIES:
                with self._run_paused():
                    afters.append(proc.measure())
                if yardsticks.agree(before, afters[-1]) or "error" in afters[-1]:
                    break
        finally:
            proc.close()
        return yardsticks.bracket(before, afters)

    @contextlib.contextmanager
    def _run_paused(self):
        """The learner's run paused while the grader measures a yardstick (sandbox.RunCgroup.paused):
        nothing it left running between cells can slow the yardsticks and so flatter its ratios."""
        cgroup = getattr(self.km, "cgroup", None)
        if cgroup is None:
            yield
            return
        with cgroup.paused() as paused:
            self._measured.setdefault("yardsticks_paused_run", paused)
            yield

    def _run_scope(self) -> dict | None:
        """The learner's run, for the outside measurement: the sandbox's cgroup; else the kernel's
        process tree; on a Ray cluster (workers elsewhere), the whole machine (None)."""
        cgroup = getattr(self.km, "cgroup", None)
        if cgroup is not None:
            return cgroup.meter_scope()
        if os.environ.get("RAY_ADDRESS"):
            return None
        try:
            return {"pid": self.km.provisioner.process.pid}
        except AttributeError:
            return None

    def _run_processes(self) -> list | None:
        """The processes of `_run_scope()` (psutil), or None for the whole machine."""
        import psutil

        scope = self._run_scope()
        if scope is None:
            return None
        pids = self.km.cgroup.pids() if "usage" in scope else [scope["pid"]]
        procs = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs += [proc, *(proc.children(recursive=True) if "pid" in scope else [])]
            except psutil.Error:  # gone meanwhile
                continue
        return procs

    def _count_serve_processes(self, wait_s: float = 15.0) -> list[str]:
        """The Ray Serve processes of this run still alive after the service cell, counted by the
        grader among the run's processes (`_run_processes`)."""
        from graders.session import serve_processes

        deadline = time.monotonic() + wait_s  # Serve's replicas take a moment to exit
        while (left := serve_processes(self._run_processes())) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def _set_limit(self, notebook_left: float | None) -> None:
        """This cell's limit, and the error nbclient records when it runs out (read at that moment)."""
        cell_limit = self.timeout if self.timeout and self.timeout > 0 else None
        if notebook_left is not None and (cell_limit is None or notebook_left < cell_limit):
            self._limit = max(1, int(notebook_left) + 1)
            why = (f"the notebook ran past its time limit of {self.notebook_timeout} s while running this cell, "
                   "so it was stopped and the cells after it were not run.")
        else:
            self._limit = cell_limit
            why = (f"this cell ran past its time limit of {cell_limit} s and was stopped. Look for a loop that never ends, "
                   "or a stage waiting for resources this machine lacks (num_gpus on a machine without a GPU, "
                   "more CPUs than it has). The next cells ran without this cell's results.")
        self.error_on_timeout = {"ename": "CellTimeLimit", "evalue": why, "traceback": [f"CellTimeLimit: {why}"]}

    def _explain(self, cell, name: str) -> None:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if any(o.ename == "CellTimeLimit" for o in errors):
            # the interrupt's own KeyboardInterrupt only repeats it
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "error" and o.ename == "KeyboardInterrupt")]
            self._unfinished.append(name)
            if "notebook ran past" in self.error_on_timeout["evalue"]:
                self._stopped = f"the notebook ran past its time limit of {self.notebook_timeout} s"
        elif self._unfinished:
            for o in errors:
                if o.ename == "NameError":
                    o.evalue += f" (cell {', '.join(self._unfinished)} was stopped at its time limit before it defined it)"
                    o.traceback = [*o.get("traceback", []), f"NameError: {o.evalue}"]

    def _exit_code(self) -> str:
        try:
            code = self.km.provisioner.process.poll()
        except AttributeError:
            return ""
        return "" if code is None else f" (exit code {code})"

    def _move_stderr(self, cell) -> None:
        meta = cell.metadata.get("nbgrader", {})
        if not (meta.get("grade") and meta.get("locked") and not meta.get("solution")):
            return
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                out.name = "stdout"
                out.text = "[grader: stderr from your code while this test ran (not from the test; no points lost):]\n" + out.text

    def cross_check(self, cells, targets: dict) -> None:
        for cell in cells:
            reports = [o["data"][REPORT_MIME] for o in cell.get("outputs", []) if REPORT_MIME in o.get("data", {})]
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if any(o.get("ename") == "NotRun" for o in cell.get("outputs", [])):
                continue  # it already says why
            problems = [self.disagreement(json.loads(r) if isinstance(r, str) else r, targets) for r in reports]
            if gid in self.utilization_cells and not reports:
                problems.append("the cell did not publish its utilization report, so the grader cannot compare it")
            for problem in filter(None, problems):
                cell.outputs.append(_error("OutsideMeasurement", problem))

    def disagreement(self, inside: dict, targets: dict) -> str | None:
        outside = self._outside
        if outside is None or outside.mean is None:
            return "the grader could not measure the pipeline from outside the notebook (did the run cell execute?)"
        device = inside.get("device")
        if outside.device != device:
            return f"the notebook reported the {device}, the grader measured the {outside.device} ({outside.device_name})"
        target = targets.get(device)
        if target is not None and outside.mean < target:
            return (f"the grader measured {device.upper()} utilization {outside.mean:.0f} % from outside the notebook, "
                    f"below the target of {target:.0f} %")
        mean = inside.get("mean")
        if mean is None or abs(mean - outside.mean) > self.tolerance:
            said = "no value" if mean is None else f"{mean:.0f} %"
            return (f"the notebook reported {device.upper()} utilization {said} but the grader measured "
                    f"{outside.mean:.0f} % from outside the notebook (allowed gap {self.tolerance:.0f} points)")
        return None


class GraderExecute(MeasuredExecute):
    """The grader's own kernel: the setup preamble (cell 0), then the test cells, with the same
    cell limit, caps and notes as the learner's. A failed preamble fails every test with its reason.
    A test cell that asked the learner's functions a question (`graders.handover.Learner`) runs
    again once `ask_learner()` has the answers, up to `max_questions` times."""

    deadline = None  # a time.monotonic() after which no cell runs; None: only the cell limit
    ask_learner = None  # () -> bool: answers the questions asked so far; False when none were new

    def preprocess(self, nb, resources=None, km=None):
        self._trusted, self._yardsticks, self._deferred, self._outside, self._measured = False, False, [], None, {}
        self._inputs = self._custody = None
        self._stopped, self._unfinished, self._limit = None, [], None
        self._deadline = self.deadline
        self.start_notebook()
        self.timeout_func = lambda cell: self._limit
        return Execute.preprocess(self, nb, resources, km=km)

    def preprocess_cell(self, cell, resources, index):
        for _ in range(self.max_questions):
            cell, resources = super().preprocess_cell(cell, resources, index)
            if index == 0 or self._stopped or self.ask_learner is None or not self.ask_learner():
                break
        if index == 0 and not self._stopped:
            errors = [o for o in cell.outputs if o.output_type == "error"]
            if errors:
                self._stopped = f"the grader could not read this notebook's results: {errors[0].ename}: {errors[0].evalue}"
        return cell, resources


def _run_folder(resources) -> Path:
    """The folder the notebook runs in (nbgrader's resources)."""
    return Path((resources or {}).get("metadata", {}).get("path") or ".").resolve()


def _is_test(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _published(cells, measured_cells) -> tuple[list[str], list[str]]:
    """Names the locked cells hand to the grader with `publish(name=...)`, and those of them that
    the measured cells publish (they get the grader's own utilization report)."""
    names, measured = [], []
    for cell in cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("locked") or meta.get("grade"):
            continue
        for call in re.findall(r"publish\(([^)]*)\)", cell.source):
            found = re.findall(r"(\w+)\s*=", call)
            names += found
            if meta.get("grade_id") in measured_cells:
                measured += found
    return names, measured


def _unmonitored(cells, measured_cells) -> list[str]:
    """The names the measured cells assign from a call with `monitor=False` (Phase 1's text run):
    read from the locked cells' source, which the course wrote (nbgrader puts an edited one back),
    not from what the notebook's kernel says of its runs. Every other measured run is timed and
    measured by the grader, whatever the kernel says."""
    import ast

    names = []
    for cell in cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("locked") or meta.get("grade_id") not in measured_cells:
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and any(
                    k.arg == "monitor" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.value.keywords):
                names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


class CheckSubmission(NbGraderPreprocessor):
    """Sanitize step, before nbgrader's DeduplicateIds and OverwriteCells: notes on cells a learner
    edited, deleted or duplicated, and the deleted ones put back.

    nbgrader itself puts the original source back into an edited locked cell silently, leaves
    deleted cells out, and fails the whole notebook on a duplicated cell (its DeduplicateIds
    leaves `nbgrader: {}` on the earlier copies, which CheckCellMetadata then rejects as "an old
    version of the nbgrader metadata format"). Here the earlier copies of a duplicated cell run as
    ordinary cells and the last one is graded. Here a deleted locked or graded
    code cell is put back as released (a deleted exercise comes back blank), and each of these
    cells gets a note that `MeasuredExecute` prints in it.
    """

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            source = gb.find_notebook(info["notebook"], info["assignment"])
            graded = {c.name: c.max_score for c in source.grade_cells}
            solutions = {c.name for c in source.solution_cells}
            cells = [c for c in source.source_cells if c.cell_type == "code" and (c.locked or c.name in graded or c.name in solutions)]
            originals = [(c.name, c.source, c.checksum, c.locked) for c in cells]
        ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
        for i, c in enumerate(nb.cells):
            gid, n = ids[i], ids.count(ids[i])
            if gid and n > 1:
                _note(c, f"cell {gid} appears {n} times in your submission (a copied or split cell): the "
                         "grader graded the last copy and ran the others as ordinary cells")
                if gid in ids[i + 1:]:  # nbgrader's DeduplicateIds would leave {} here, which fails validation
                    del c.metadata["nbgrader"]
                    ids[i] = None
        released = {name: _without_hidden_tests(text) for name, text, _, locked in originals if locked}
        for c, gid in zip(nb.cells, ids):
            if gid in released and _without_hidden_tests(c.source) != released[gid]:
                _note(c, f"this locked cell ({gid}) had been edited in your submission: the grader ran the original")
        at = 0
        for name, text, checksum, locked in originals:
            if name in ids:
                at = max(at, len(ids) - ids[::-1].index(name))
                continue
            meta = dict(grade=name in graded, grade_id=name, locked=locked, solution=name in solutions, task=False,
                        schema_version=3, checksum=checksum, **({"points": graded[name]} if name in graded else {}))
            cell = MetadataValidator().upgrade_cell_metadata(NotebookNode(
                cell_type="code", source=text, outputs=[], execution_count=None, metadata=NotebookNode(nbgrader=NotebookNode(meta))))
            what = "the blank exercise" if name in solutions else "the original"
            _note(cell, f"cell {name} was missing from your submission (deleted?): the grader put back {what} and ran it")
            nb.cells.insert(at, cell)
            ids.insert(at, name)
            at += 1
        return nb, resources


def _without_hidden_tests(source: str) -> str:
    """A cell's source as the learner saw it (the release has no hidden tests), blank lines aside."""
    source = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", source, flags=re.DOTALL)
    return "\n".join(line.rstrip() for line in source.splitlines() if line.strip())


def _note(cell, text: str) -> None:
    cell.metadata.setdefault(NOTES, []).append(text)


class HiddenTracebacks(NbGraderPreprocessor):
    """Feedback: a failed cell with hidden tests shows its error in one line, never its code.

    nbgrader's ClearHiddenTests removes hidden tests from a cell's source, but a failing one's
    traceback still quotes the lines around the failure. Run this before ClearHiddenTests.
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and "### BEGIN HIDDEN TESTS" in cell.source:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources
