"""Results handed from the learner's kernel to the grader's (graders.grading.publish / load_results):
data only, read back as they were written, with the grader's own utilization report."""

from __future__ import annotations

import json

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
