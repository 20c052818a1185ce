"""Utilization that learner code cannot fake: a second measurement from outside the kernel.

A learner's code runs in the same kernel as the test cells, so it can patch anything there,
`UtilizationMonitor` included. `MeasuredExecute` replaces nbgrader's `Execute` step (see
`nbgrader_config.py`). While a cell whose grade id is in `measured_cells` runs (the validation's
locked "run your pipelines" cell), it samples utilization from the grading process itself.
When the notebook has run, every graded cell that published a utilization report (see
`checks.expect_utilization`) is compared with that outside measurement. The cell loses its
points, with a reason the instructor and the learner can read, when

- the outside measurement misses the phase's target (`checks.UTILIZATION_TARGETS`, read here,
  in the grading process, never from the notebook), or
- the notebook's report and the outside measurement disagree by more than `tolerance` points.
"""

from __future__ import annotations

import json

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float, List, Unicode

from graders.checks import REPORT_MIME, UTILIZATION_TARGETS
from graders.telemetry import UtilizationMonitor


class MeasuredExecute(Execute):
    measured_cells = List(["run_pipelines"], help="grade ids of the cells that run learner pipelines").tag(config=True)
    utilization_cells = List(["accelerator_stage", "accelerator_utilization", "inference_utilization", "scoring_utilization"], help="graded cells that must publish a utilization report").tag(config=True)
    tolerance = Float(25.0, help="largest allowed gap (percentage points) between inside and outside means").tag(config=True)
    phase = Unicode("", help="targets to use; default: the assignment folder's name").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._outside = None
        nb, resources = super().preprocess(nb, resources, km=km)
        phase = self.phase or (resources or {}).get("nbgrader", {}).get("assignment", "")
        self.cross_check(nb, UTILIZATION_TARGETS.get(phase, {}))
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid not in self.measured_cells:
            return super().preprocess_cell(cell, resources, index)
        with UtilizationMonitor() as monitor:
            result = super().preprocess_cell(cell, resources, index)
        self._outside = monitor.report
        return result

    def cross_check(self, nb, targets: dict) -> None:
        for cell in nb.cells:
            reports = [o["data"][REPORT_MIME] for o in cell.get("outputs", []) if REPORT_MIME in o.get("data", {})]
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            problems = [self.disagreement(json.loads(r) if isinstance(r, str) else r, targets) for r in reports]
            if gid in self.utilization_cells and not reports:
                problems.append("the cell did not publish its utilization report, so the grader cannot compare it")
            for problem in filter(None, problems):
                cell.outputs.append(NotebookNode(output_type="error", ename="OutsideMeasurement",
                                                 evalue=problem, traceback=[f"OutsideMeasurement: {problem}"]))

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
