"""The grader times and keeps the measured run's output blocks itself (graders/trusted/custody.py):
the arrival times and rows the tests grade are the grader's, not what the learner's kernel says."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pytest

from graders.grading import PipelineRun, _hand_to_grader, load_results, publish
from graders.handover import _witnessed
from graders.telemetry import UtilizationReport
from graders.trusted.custody import ENV, INDEX, Custody


@pytest.fixture
def keeper(tmp_path, monkeypatch):
    drop = tmp_path / "run" / "stream"
    monkeypatch.setenv(ENV, str(drop))
    keeper = Custody(drop, poll_s=0.01)
    yield keeper
    keeper.close()


def _drip(name: str, sizes: list[int], gap_s: float) -> None:
    hand = _hand_to_grader(name)  # what run_pipeline does with each block when graded
    for i, n in enumerate(sizes):
        time.sleep(gap_s)
        hand(pa.table({"x": [i] * n}))


def test_each_block_is_timed_on_the_graders_clock_and_taken_from_the_learner(keeper):
    old = keeper.drop / "your_pipeline"
    old.mkdir(parents=True)
    (old / "000000.arrow").write_bytes(b"written before the measured cell")
    keeper.start()
    _drip("your pipeline", [1, 2, 3, 4], gap_s=0.3)
    kept = keeper.stop()
    blocks = json.loads((kept / INDEX).read_text())["arrivals"]["your_pipeline"]
    times = [t for t, _ in blocks]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 4 and times[0] >= 0.3 and all(abs(g - 0.3) < 0.1 for g in gaps), times
    assert not list((keeper.drop / "your_pipeline").iterdir()), "the learner's copies stay behind"
    rows, arrivals, seconds, error = _witnessed(str(kept), "your pipeline", pa.table({}), seconds=0.1)
    assert error is None and rows["x"].to_pylist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert [n for _, n in arrivals] == [1, 2, 3, 4] and seconds == arrivals[-1][0]


def test_links_fifos_and_shared_files_are_never_read_or_removed(keeper, tmp_path):
    secret = tmp_path / "gradebook.db"
    secret.write_bytes(b"grades")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "000000.arrow").write_bytes(b"someone else's")
    keeper.start()
    run = keeper.drop / "a"
    run.mkdir(parents=True)
    os.symlink(secret, run / "000001.arrow")
    os.mkfifo(run / "000002.arrow")  # opened without blocking, never read
    os.link(secret, run / "000003.arrow")  # a second name for a file that is not the run's
    os.symlink(elsewhere, keeper.drop / "b")
    time.sleep(0.2)
    kept = keeper.stop()
    assert json.loads((kept / INDEX).read_text())["arrivals"] == {}
    assert secret.read_bytes() == b"grades" and (elsewhere / "000000.arrow").read_bytes() == b"someone else's"


def test_a_stream_folder_that_is_a_link_is_removed_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    os.symlink(elsewhere, tmp_path / "stream")
    keeper = Custody(tmp_path / "stream")
    keeper.start()
    keeper.stop()
    keeper.close()
    assert not (tmp_path / "stream").exists() and (elsewhere / "keep").read_text() == "x"


def _report() -> UtilizationReport:
    samples = [{"t": i * 0.1, "cpu": 90.0, "gpu": [], "gpu_mem": []} for i in range(30)]
    return UtilizationReport.from_samples(samples, {"gpus": [], "nvml": "no NVML", "cpu_count": 2}, 0.1)


def test_a_measured_run_is_graded_on_the_kept_blocks_not_on_what_the_kernel_reported(keeper, tmp_path, monkeypatch):
    """The kernel says its 10 rows came at 0.1 and 0.2 s; the grader saw 2 blocks at about 0.4 and
    0.8 s, holding other rows: the grader's times and rows are the run's."""
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results"))
    keeper.start()
    _drip("your pipeline", [3, 3], gap_s=0.4)
    kept = str(keeper.stop())
    forged = PipelineRun("your pipeline", rows=pa.table({"x": list(range(10))}), report=_report(), seconds=0.3,
                         arrivals=[(0.1, 5), (0.2, 5)])
    publish(embedding_run=forged, other=PipelineRun("not measured", rows=pa.table({"x": [7]}), report=_report(),
                                                    arrivals=[(0.1, 1)], seconds=0.2))
    got = load_results(str(tmp_path / "results"), ["embedding_run", "other"], None, ("embedding_run",), (), kept)
    run = got["embedding_run"]
    assert run.table()["x"].to_pylist() == [0, 0, 0, 1, 1, 1]
    assert [n for _, n in run.arrivals] == [3, 3] and run.arrivals[0][0] > 0.25, run.arrivals
    assert run.seconds >= run.arrivals[-1][0] and run.reported == [(0.1, 5), (0.2, 5)]  # what the kernel said, kept apart
    assert got["other"].arrivals == [(0.1, 1)] and got["other"].reported is None, "a run the grader did not measure keeps its own record"


@pytest.mark.parametrize("monitored", [True, False])
def test_a_measured_run_whose_blocks_the_grader_never_saw_has_no_rows(keeper, tmp_path, monkeypatch, monitored):
    """Also when the notebook says the run was not monitored: the kernel does not choose which runs the grader times."""
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results"))
    keeper.start()
    kept = str(keeper.stop())  # the kernel wrote nothing where the grader watches
    publish(embedding_run=PipelineRun("your pipeline", rows=pa.table({"x": [1]}), report=_report() if monitored else None,
                                      seconds=1.0, arrivals=[(0.5, 1)]))
    run = load_results(str(tmp_path / "results"), ["embedding_run"], None, ("embedding_run",), (), kept)["embedding_run"]
    with pytest.raises(Exception, match="the grader saw none of its output blocks arrive"):
        run.table()
