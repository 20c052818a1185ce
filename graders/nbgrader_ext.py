"""nbgrader steps for the course: outside measurement, and a grader that bad submissions cannot break.

Utilization that learner code cannot fake: a learner's code runs in the same kernel as the test
cells, so it can patch anything there, `UtilizationMonitor` included. `MeasuredExecute` replaces
nbgrader's `Execute` step (see `nbgrader_config.py`). While a cell whose grade id is in
`measured_cells` runs (the validation's locked "run your pipelines" cell), it samples
utilization from the grading process itself. When the notebook has run, every graded cell that
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
"""

from __future__ import annotations

import json
import re
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float, Integer, List, Unicode

from graders.checks import REPORT_MIME, UTILIZATION_TARGETS
from graders.feedback import OutputLimits
from graders.telemetry import UtilizationMonitor

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

    def preprocess(self, nb, resources=None, km=None):
        self._outside = None
        self._stopped = None  # why the remaining cells are not run
        self._unfinished = []  # cells stopped at a time limit (later NameErrors are explained by them)
        self._deadline = time.monotonic() + self.notebook_timeout if self.notebook_timeout > 0 else None
        self._limit = None
        self.start_notebook()
        self.timeout_func = lambda cell: self._limit
        nb, resources = super().preprocess(nb, resources, km=km)
        phase = self.phase or (resources or {}).get("nbgrader", {}).get("assignment", "")
        self.cross_check(nb, UTILIZATION_TARGETS.get(phase, {}))
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"number {index + 1}"
        left = None if self._deadline is None else self._deadline - time.monotonic()
        if not self._stopped and left is not None and left <= 0:
            self._stopped = f"the notebook ran past its time limit of {self.notebook_timeout} s before this cell"
        if self._stopped:
            cell.outputs = [_error("NotRun", f"this cell was not run: {self._stopped}")]
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
        if gid not in self.measured_cells:
            return super().preprocess_cell(cell, resources, index)
        monitor = UtilizationMonitor()
        try:
            with monitor:
                return super().preprocess_cell(cell, resources, index)
        finally:  # its report exists once the monitor has stopped, also when the kernel died
            self._outside = monitor.report

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

    def cross_check(self, nb, targets: dict) -> None:
        for cell in nb.cells:
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
