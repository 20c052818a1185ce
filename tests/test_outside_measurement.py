"""The grader's outside measurement decides when a notebook's utilization report disagrees."""

import pytest

from graders.checks import UTILIZATION_TARGETS
from graders.trusted.nbgrader_ext import MeasuredExecute
from graders.telemetry import UtilizationReport


def _report(cpu):
    samples = [{"t": i * 0.1, "cpu": cpu, "gpu": [], "gpu_mem": []} for i in range(30)]
    return UtilizationReport.from_samples(samples, {"gpus": [], "nvml": "no NVML", "cpu_count": 2}, 0.1)


@pytest.fixture
def execute():
    step = MeasuredExecute()
    step._outside = _report(80.0)
    return step


def test_agreement_above_target_passes(execute):
    assert execute.disagreement({"device": "cpu", "mean": 85.0}, UTILIZATION_TARGETS["01_foundation"]) is None


def test_a_faked_report_is_caught(execute):
    execute._outside = _report(12.0)
    problem = execute.disagreement({"device": "cpu", "mean": 99.0}, {"cpu": 50.0})
    assert "measured CPU utilization 12 % from outside the notebook, below the target of 50 %" in problem


def test_disagreement_beyond_tolerance_is_caught_even_above_target(execute):
    problem = execute.disagreement({"device": "cpu", "mean": 10.0}, {"cpu": 50.0})
    assert "reported CPU utilization 10 %" in problem and "measured 80 %" in problem


def test_wrong_device_and_missing_measurement(execute):
    assert "the notebook reported the gpu" in execute.disagreement({"device": "gpu", "mean": 95.0}, {})
    execute._outside = None
    assert "could not measure" in execute.disagreement({"device": "cpu", "mean": 95.0}, {})


def test_a_cell_that_hides_its_report_loses_its_points(execute):
    from nbformat.v4 import new_code_cell, new_notebook

    cell = new_code_cell("gr.expect_utilization(...)")
    cell.metadata["nbgrader"] = {"grade_id": "accelerator_stage", "grade": True}
    nb = new_notebook(cells=[cell])
    execute.cross_check(nb.cells, {"cpu": 50.0})
    assert [o.ename for o in cell.outputs] == ["OutsideMeasurement"]
    assert "did not publish its utilization report" in cell.outputs[0].evalue


def test_feedback_cuts_the_traceback_of_a_cell_with_hidden_tests_to_one_line():
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from graders.trusted.nbgrader_ext import HiddenTracebacks

    error = dict(ename="AssertionError", evalue="a hidden window: expected drift", traceback=["  _seed = 2103  # hidden line"])
    hidden = new_code_cell("visible()\n### BEGIN HIDDEN TESTS\n_seed = 2103\n### END HIDDEN TESTS", outputs=[new_output("error", **error)])
    visible = new_code_cell("visible()", outputs=[new_output("error", **error)])
    nb, _ = HiddenTracebacks()(new_notebook(cells=[hidden, visible]), {})  # as nbgrader calls it
    assert nb.cells[0].outputs[0].traceback == ["AssertionError: a hidden window: expected drift"]
    assert nb.cells[1].outputs[0].traceback == error["traceback"]  # visible tests keep their context


def test_a_meter_that_cannot_start_leaves_the_run_graded_unmeasured(monkeypatch):
    """A submission that keeps every core busy once starved the grader's meter (it did not start
    within 60 s) and so stopped the whole autograde: now the cell runs, unmeasured, the grader
    notes why, and the utilization test fails saying so (no report, no points)."""
    from nbformat.notebooknode import NotebookNode

    from graders import checks
    from graders.trusted import nbgrader_ext

    def fail(self):
        raise RuntimeError("the utilization sampler process did not start: exit code -15")

    ran = []
    monkeypatch.setattr(nbgrader_ext.UtilizationMonitor, "__enter__", fail)
    monkeypatch.setattr(nbgrader_ext.Execute, "preprocess_cell", lambda self, cell, resources, index: (ran.append(index), (cell, resources))[1])
    step = MeasuredExecute()
    step._trusted = step._yardsticks = False
    step._inputs = step._custody = step._outside = None
    step._measured = {}
    cell = NotebookNode(cell_type="code", source="x = 1", metadata={"nbgrader": {"grade_id": "run_pipelines"}}, outputs=[])
    assert step._execute(cell, {}, 3) == (cell, {})
    assert ran == [3] and step._outside is None
    assert step._measured["monitor"].startswith("the grader could not measure this run: the utilization sampler"), step._measured
    with pytest.raises(checks.CheckFailed, match="utilization measurement: expected a measurement of the run, found none"):
        checks.expect_utilization(None, "cpu", 50.0)
