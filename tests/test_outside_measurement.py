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
