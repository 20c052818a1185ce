"""Phase 3's kit pieces without Ray: held-out reviews, accuracy and cost messages, run_step, peak memory."""

from __future__ import annotations

import numpy as np
import pytest

import graders as gr
from graders import data, grading, perf
from graders.checks import CheckFailed, check, expect_accuracy


def test_heldout_reviews_are_new_and_repeatable(tmp_path):
    folder = str(tmp_path / "heldout")
    first = data.write_heldout_reviews(folder, n=200, seed=7)
    again = data.write_heldout_reviews(folder, n=200, seed=7)  # clears the folder, writes the same rows
    other = data.write_heldout_reviews(str(tmp_path / "other"), n=200, seed=8)
    assert first.equals(again) and data.read_parquet_folder(folder).equals(first)
    assert first.column("text").to_pylist() != other.column("text").to_pylist()
    ids = first.column("review_id").to_pylist()
    assert ids[0] == "R900001" and len(set(ids)) == 200
    assert not set(ids) & set(data.read_reviews(data.prepare().reviews).column("review_id").to_pylist())
    assert set(first.column("rating").to_pylist()) == {1, 2, 3, 4, 5}
    assert all(data.clean_review_text(t) for t in first.column("text").to_pylist()), "held-out reviews all have words"


def test_accuracy_messages_tell_a_model_that_did_not_learn_from_one_that_needs_more():
    expect_accuracy(0.95, 0.8, 0.375, "validation accuracy")
    with pytest.raises(CheckFailed, match=r"expected >= 0.8, found 0.210.*did not learn.*optimizer.step\(\)"):
        expect_accuracy(0.21, 0.8, 0.375, "validation accuracy")
    with pytest.raises(CheckFailed, match="more epochs"):
        expect_accuracy(0.62, 0.8, 0.375, "validation accuracy")
    with pytest.raises(CheckFailed, match="ray.train.report"):
        expect_accuracy(float("nan"), 0.8, 0.375, "validation accuracy")


def test_cost_and_batch_exercises_recompute_the_answer(capsys):
    good = {"rows_per_s": 200.0, "price_per_hour": 0.10, "cost_per_million": 0.10 / (200 * 3600) * 1e6}
    check("33.cost_per_million", good)
    assert "per million reviews" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match=r"price per hour / \(rows/s x 3600\)"):
        check("33.cost_per_million", {**good, "cost_per_million": 0.10 * 200})
    peaks = {16: 10.0, 64: 40.0, 256: 160.0, 1024: 640.0}
    check("33.largest_batch", {"peak_mb": peaks, "budget_mb": 200.0, "choice": 256})
    with pytest.raises(CheckFailed, match="expected 256, found 1024"):
        check("33.largest_batch", {"peak_mb": peaks, "budget_mb": 200.0, "choice": 1024})
    with pytest.raises(CheckFailed, match="nothing yet"):
        check("31.result", None)
    with pytest.raises(CheckFailed, match="a ray.train.Result"):
        check("31.result", {"val_accuracy": 1.0})


def test_run_step_keeps_the_value_or_one_readable_reason():
    ok = grading.run_step("training", lambda: 42)
    assert ok.value() == 42 and ok.error is None

    def not_written():
        raise NotImplementedError()

    blank = grading.run_step("training", not_written)
    with pytest.raises(CheckFailed, match="training did not run: the function is not written yet"):
        blank.value()

    class WorkerGroupError(RuntimeError):
        pass

    def train_fails():
        raise WorkerGroupError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback ...\n"
                               "  File \"x.py\", line 3\nValueError: labels must be 0..4")

    failed = grading.run_step("training", train_fails)
    assert failed.error == "WorkerGroupError: ValueError: labels must be 0..4", failed.error


def test_peak_memory_sees_an_allocation_and_not_a_no_op():
    assert perf.peak_memory_mb(lambda: np.ones(64 * 2**20 // 8).sum()) > 48
    assert perf.peak_memory_mb(lambda: None) < 16


def test_new_reviews_drift_moves_ratings_and_lengths():
    clean, drifted = data.new_reviews(600, seed=1), data.new_reviews(600, seed=1, drift=1.0)
    assert data.new_reviews(600, seed=1).equals(clean)
    mean = lambda t: float(np.mean(t.column("rating").to_numpy()))  # noqa: E731
    words = lambda t: float(np.mean([len(x.split()) for x in t.column("text").to_pylist()]))  # noqa: E731
    assert mean(clean) > 3.4 > 2.8 > mean(drifted), (mean(clean), mean(drifted))
    assert words(drifted) > words(clean) + 5
    with pytest.raises(ValueError, match="between 0 and 1"):
        data.new_reviews(10, seed=1, drift=2)


def test_load_classifier_reads_model_pt_and_says_when_it_is_missing(tmp_path):
    import torch
    from ray.train import Checkpoint

    from graders.exercises.production import load_classifier

    (tmp_path / "good").mkdir()
    torch.save(gr.models.rating_classifier(seed=3).state_dict(), tmp_path / "good" / "model.pt")
    model = load_classifier(Checkpoint.from_directory(str(tmp_path / "good")))
    assert not model.training and torch.equal(model[0].weight, gr.models.rating_classifier(seed=3)[0].weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(gr.CheckFailed, match=r"checkpoint contents: expected model.pt .*found \[\]"):
        load_classifier(Checkpoint.from_directory(str(tmp_path / "empty")))
