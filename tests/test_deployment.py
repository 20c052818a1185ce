"""Phase 4 kit and Lesson 4.1 checks: capacity plans, registered versions, rollouts, A/B outcomes, Serve processes."""

from __future__ import annotations

import math

import pytest

import graders as gr
from graders.checks import CheckFailed, check
from graders.exercises.deployment import HEADROOM, planned_units
from graders.registry import Registry


def plan_batch(rate, volume, deadline, price):
    units, hours = planned_units(rate, volume, deadline)
    return {"units": units, "hours": hours, "cost": units * hours * price}


def test_planned_units_meet_the_deadline_with_headroom():
    units, hours = planned_units(100.0, 10_000_000, 4.0)
    assert units == math.ceil(10_000_000 / (100 * HEADROOM * 3600 * 4)) == 10 and hours <= 4.0
    assert planned_units(100.0, 10, 4.0) == (1, 10 / (100 * HEADROOM * 3600))  # never zero units


def test_plan_check_passes_the_rule_and_names_the_rule_when_wrong():
    check("41.plan", plan_batch)
    no_headroom = lambda r, v, d, p: {"units": math.ceil(v / (r * 3600 * d)), "hours": v / (r * 3600 * math.ceil(v / (r * 3600 * d))),  # noqa: E731
                                      "cost": 0.0}
    with pytest.raises(CheckFailed, match=r"plan for 10,000,000 rows in 4 h .* Try: units = ceil\(volume / \(rate \* 0.7"):
        check("41.plan", no_headroom)
    with pytest.raises(CheckFailed, match="a dict with the keys units, hours and cost"):
        check("41.plan", lambda r, v, d, p: (1, 2.0, 3.0))
    with pytest.raises(CheckFailed, match="nothing yet"):
        check("41.plan", None)


def _answer(version, i=0):
    return {"review_id": f"R{i}", "predicted_rating": 5, "confidence": 0.9, "model_version": version}


def test_rollout_check_wants_a_switch_and_no_going_back():
    check("41.rollout", [_answer(1)] * 12 + [_answer(2)] * 12)
    with pytest.raises(CheckFailed, match="a switch from the old version to the new one"):
        check("41.rollout", [_answer(1)] * 24)
    with pytest.raises(CheckFailed, match="never back"):
        check("41.rollout", [_answer(1)] * 10 + [_answer(2)] * 10 + [_answer(1)] * 4)
    with pytest.raises(CheckFailed, match="at least 20 answers"):
        check("41.rollout", [_answer(1), _answer(2)])
    with pytest.raises(CheckFailed, match=r"answer\['confidence'\]: expected a float"):
        check("41.rollout", [_answer(1)] * 12 + [{**_answer(2), "confidence": "high"}] * 12)


def test_registry_check_wants_metrics_fingerprint_and_files(tmp_path):
    paths = gr.data.prepare()
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    registry = Registry(str(tmp_path / "registry"))
    registry.register(str(model), {"val_accuracy": 0.7}, gr.registry.fingerprint(paths.reviews))
    with pytest.raises(CheckFailed, match="registered versions: expected at least 2, found 1"):
        check("41.registry", registry)
    registry.register(str(model), {"val_accuracy": 0.9}, "not-the-data")
    with pytest.raises(CheckFailed, match="version 2 data fingerprint"):
        check("41.registry", registry)
    registry.register(str(model), {"val_accuracy": 0.9}, gr.registry.fingerprint(paths.reviews))
    with pytest.raises(CheckFailed, match="version 2 data fingerprint"):  # the latest two: v2 and v3
        check("41.registry", registry)
    registry.register(str(model), {"val_accuracy": 0.95}, gr.registry.fingerprint(paths.reviews))
    check("41.registry", registry)


def test_ab_outcomes_follow_their_rates_and_are_reproducible():
    table = gr.data.ab_outcomes(20_000, rate_a=0.6, rate_b=0.8, seed=3)
    assert table.equals(gr.data.ab_outcomes(20_000, rate_a=0.6, rate_b=0.8, seed=3))
    rows = table.to_pandas()
    rates = rows.groupby("variant")["converted"].mean()
    assert abs(rates["A"] - 0.6) < 0.02 and abs(rates["B"] - 0.8) < 0.02
    assert abs((rows["variant"] == "B").mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="rate_b between 0 and 1"):
        gr.data.ab_outcomes(10, 0.5, 1.5, seed=1)


def test_serve_processes_are_found_by_their_ray_titles(monkeypatch):
    import psutil

    class Proc:
        def __init__(self, *cmdline):
            self.info = {"cmdline": list(cmdline)}

    running = [Proc("ray::ServeController.listen_for_change"), Proc("ray::ServeReplica:ratings:RatingService.handle_request"),
               Proc("ray::ProxyActor"), Proc("ray::IDLE"), Proc("python", "train.py"), Proc()]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs=None: iter(running))
    assert gr.session.serve_processes() == ["ray::ProxyActor", "ray::ServeController",
                                            "ray::ServeReplica:ratings:RatingService.handle_request"]
