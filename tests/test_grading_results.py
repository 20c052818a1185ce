"""Results handed from the learner's kernel to the grader's (graders.grading.publish / load_results):
data only, read back as they were written, with the grader's own utilization report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graders.grading import MissingRun, PipelineRun, StepRun, load_results, publish
from graders.perf import Ceiling
from graders.telemetry import UtilizationReport


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def _report(cpu: float) -> UtilizationReport:
    samples = [{"t": i * 0.1, "cpu": cpu, "gpu": [], "gpu_mem": []} for i in range(30)]
    return UtilizationReport.from_samples(samples, {"gpus": [], "nvml": "no NVML", "cpu_count": 2}, 0.1)


def test_runs_come_back_as_they_were_with_the_graders_report(results, tmp_path):
    from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

    rows = pa.table({"id": ["a", "b"], "features": ArrowTensorArray.from_numpy(np.ones((2, 3), np.float32))})
    image = PipelineRun("image pipeline", rows=rows, report=_report(99.0), seconds=2.5, nodes=1,
                        arrivals=[(1.0, 1), (2.0, 1)], actor_stage=True)
    text = PipelineRun("text pipeline", error="KeyError: 'path' line 3 of your cell", seconds=0.5)
    publish(image_run=image, text_run=text)
    publish(ceiling=Ceiling(rows=100, seconds=0.5, batch_size=64, device="cpu"), plan=StepRun("plan", result={"units": 3}))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_report(12.0).to_dict(timeline=True)))

    got = load_results(str(results), ["image_run", "text_run", "ceiling", "plan", "missing_run"], str(outside), ("image_run",))
    assert got["image_run"].table().equals(rows) and got["image_run"].table().schema == rows.schema
    assert (got["image_run"].seconds, got["image_run"].nodes, got["image_run"].actor_stage) == (2.5, 1, True)
    assert got["image_run"].arrivals == [(1.0, 1), (2.0, 1)]
    assert got["image_run"].report.mean == pytest.approx(12.0), "the grader's measurement, never the notebook's 99 %"
    assert "measured by the grader" in got["image_run"].report.source
    assert got["text_run"].error.startswith("KeyError") and got["text_run"].report is None
    assert got["ceiling"].rate == 200.0 and got["plan"].value() == {"units": 3}
    assert isinstance(got["missing_run"], MissingRun)
    with pytest.raises(AssertionError, match="missing_run: did not run: its run cell handed no result to the grader"):
        got["missing_run"].table()


def test_nothing_is_written_outside_autograde(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_RESULTS", raising=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    monkeypatch.chdir(tmp_path)
    publish(run=PipelineRun("x", rows=pa.table({"a": [1]})))
    assert list(tmp_path.iterdir()) == []


def test_files_a_notebook_forged_are_read_as_data_or_not_at_all(results):
    results.mkdir()
    (results / "manifest.json").write_text(json.dumps({
        "bad_kind": {"kind": "os.system"}, "no_rows": {"kind": "PipelineRun", "name": "x"},
        "pickled": {"kind": "PipelineRun", "name": "p"}}))
    # a column of Ray's pickled-object type: its values would unpickle (run code) when read
    storage = pa.array([b"cos\nsystem\n(S'echo pwned'\ntR."], pa.large_binary())
    field = pa.field("obj", pa.large_binary(), metadata={b"ARROW:extension:name": b"ray.data.arrow_pickled_object",
                                                          b"ARROW:extension:metadata": b""})
    pq.write_table(pa.Table.from_arrays([storage], schema=pa.schema([field])), results / "pickled.parquet")
    from ray.data._internal.object_extensions.arrow import ArrowPythonObjectType

    try:  # control: where Ray's type is registered, the column is read as pickled objects
        pa.register_extension_type(ArrowPythonObjectType())
    except pa.ArrowKeyError:
        pass
    assert "arrow_pickled_object" in str(pq.read_table(results / "pickled.parquet").column("obj").type)
    got = load_results(str(results), ["bad_kind", "no_rows", "pickled"])
    assert "unknown kind of result 'os.system'" in got["bad_kind"].error
    assert "could not be read" in got["no_rows"].error
    column = got["pickled"].table().column("obj")
    assert column.type == pa.large_binary() and column.to_pylist() == [storage[0].as_py()], "stays bytes, never unpickled"
    (results / "manifest.json").write_text("[not a manifest")
    assert isinstance(load_results(str(results), ["bad_kind"])["bad_kind"], MissingRun)


def test_lists_dicts_tables_training_results_and_folders_come_back_as_data(results, tmp_path):
    import pandas as pd

    from graders.handover import Folder, TrainingResult

    class FakeTrainResult:  # what the grader reads of a ray.train.Result
        metrics = {"val_accuracy": np.float64(0.75), "epoch": np.int64(4)}
        metrics_dataframe = pd.DataFrame({"train_loss": [1.2, 0.3], "val_accuracy": [0.5, 0.75]})
        checkpoint = type("Checkpoint", (), {"path": "/somewhere/checkpoint_000004"})()

    written = tmp_path / "written"
    (written / "category=books").mkdir(parents=True)
    pq.write_table(pa.table({"review_id": ["r1"]}), written / "category=books" / "part-0.parquet")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (written / "category=books" / "link.parquet").symlink_to(secret)
    runs = [StepRun("run 1", report=_report(90.0)), StepRun("run 2", report=_report(95.0)), StepRun("run 3")]
    publish(runs=runs, windows={"clean": StepRun("clean", result=pa.table({"psi": [0.01]}))},
            training=StepRun("training", result=FakeTrainResult()), out=Folder(str(written)), plain=np.int64(3))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_report(40.0).to_dict(timeline=True)))

    got = load_results(str(results), ["runs", "windows", "training", "out", "plain"], str(outside), ("runs",))
    assert [r.name for r in got["runs"]] == ["run 1", "run 2", "run 3"]
    assert [r.report is None for r in got["runs"]] == [True, True, False] and got["runs"][2].report.mean == pytest.approx(40.0), \
        "the grader's report goes to the last run of the list (the measured cell's), none to the others, whatever the notebook's reports"
    assert got["windows"]["clean"].value().to_pydict() == {"psi": [0.01]}
    training = got["training"].value()
    assert isinstance(training, TrainingResult) and training.metrics == {"val_accuracy": 0.75, "epoch": 4}
    assert training.checkpoint.path == "/somewhere/checkpoint_000004"
    assert training.metrics_dataframe["train_loss"].tolist() == [1.2, 0.3]
    copied = sorted(str(p.relative_to(got["out"])) for p in Path(got["out"]).rglob("*") if p.is_file())
    assert copied == ["category=books/part-0.parquet"], "regular files only: a link is never followed"
    assert got["plain"] == 3


def test_a_hidden_tests_question_goes_to_the_learners_kernel_as_data_and_its_answer_comes_back(tmp_path, monkeypatch):
    """The grader's kernel asks (`learner.call` raises Unanswered and writes the question), the
    learner's kernel answers with its own function (`answer()`), the grader's kernel reads it."""
    import graders.handover as handover
    from graders.checks import CheckFailed

    asked, answered = tmp_path / "grader" / "questions", tmp_path / "grader" / "answers"
    asked.mkdir(parents=True), answered.mkdir()
    monkeypatch.setenv("COURSE_QUESTIONS", str(asked))
    monkeypatch.setenv("COURSE_ANSWERS", str(answered))
    table = pa.table({"words": [3, 4, 5]})
    with pytest.raises(handover.Unanswered):
        handover.learner.call("plan", 1000.0, 4, table, handover.learner.their("res", "cpus"))
    with pytest.raises(handover.Unanswered):
        handover.learner.call("broken", 1)
    questions = [json.loads(q.read_text()) for q in asked.glob("*/question.json")]
    assert sorted(q["function"] for q in questions) == ["broken", "plan"]
    assert all(set(q) == {"function", "pipeline", "args"} for q in questions), "a function's name and its inputs, no test code"

    # the learner's kernel: its namespace, its functions; it sees the inputs, never the test's text
    seen = {}

    def plan(rate, units, words, cpus):
        seen.update(rate=rate, units=units, words=words.column("words").to_pylist(), cpus=cpus)
        return {"units": np.int64(7), "rate": rate / units}

    namespace = {"plan": plan, "broken": lambda x: 1 / 0, "res": type("Res", (), {"cpus": 2})()}
    monkeypatch.setattr(handover, "_notebook", lambda: namespace)
    learner_side = tmp_path / "learner"
    shutil_copytree = shutil.copytree
    shutil_copytree(asked, learner_side / "questions")
    handover.answer(str(learner_side / "questions"), str(learner_side / "answers"))
    assert seen == {"rate": 1000.0, "units": 4, "words": [3, 4, 5], "cpus": 2}
    shutil_copytree(learner_side / "answers", answered, dirs_exist_ok=True)

    assert handover.learner.call("plan", 1000.0, 4, table, handover.learner.their("res", "cpus")) == {"units": 7, "rate": 250.0}
    with pytest.raises(CheckFailed, match="broken failed on the grader's hidden inputs: ZeroDivisionError"):
        handover.learner.call("broken", 1)
    with pytest.raises(handover.Unanswered):  # other inputs: another question
        handover.learner.call("plan", 1000.0, 4, pa.table({"words": [9]}), handover.learner.their("res", "cpus"))


def test_outside_the_grader_a_learner_call_runs_in_the_notebook(monkeypatch):
    import graders.handover as handover

    monkeypatch.delenv("COURSE_QUESTIONS", raising=False)
    monkeypatch.setattr(handover, "_notebook", lambda: {"double": lambda x, y: 2 * x + y, "res": {"cpus": 2}})
    assert handover.learner.call("double", 3, 1) == 7
    with pytest.raises(NameError, match="missing is not defined in the notebook"):
        handover.learner.call("missing")


def test_the_grader_not_the_notebook_says_which_measured_runs_get_its_report(results, tmp_path):
    """A notebook that calls `run_pipeline(..., monitor=False)` where the course's cell monitors
    the run (or marks the measured cell's run as unmonitored) still gets the grader's report on
    it: which runs are monitored is read from the course's locked cells (`_unmonitored`)."""
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_report(40.0).to_dict(timeline=True)))
    publish(embedding_run=PipelineRun("your pipeline", rows=pa.table({"x": [1]}), report=None, seconds=1.0),
            runs=[StepRun("run 1", report=_report(90.0)), StepRun("run 2")],
            text_run=PipelineRun("text pipeline", rows=pa.table({"x": [1]}), report=None, seconds=1.0))
    got = load_results(str(results), ["embedding_run", "runs", "text_run"], str(outside),
                       ("embedding_run", "runs", "text_run"), unmonitored=("text_run",))
    assert got["embedding_run"].report.mean == pytest.approx(40.0)
    assert got["runs"][0].report is None and got["runs"][1].report.mean == pytest.approx(40.0), \
        "the list's last run is the measured cell's, whatever the notebook said of the runs"
    assert got["text_run"].report is None, "the course's own cell runs it without a monitor"


def test_the_unmonitored_runs_are_read_from_each_phases_locked_run_cell():
    import nbformat

    from conftest import ROOT
    from graders.trusted.nbgrader_ext import _unmonitored

    found = {p.parent.name: _unmonitored(nbformat.read(p, 4).cells, ["run_pipelines"])
             for p in sorted((ROOT / "course").glob("0*/04_validation.ipynb"))}
    assert found == {"01_foundation": ["text_run"], "02_advanced_processing": [], "03_production_systems": [],
                     "04_production_deployment": []}
