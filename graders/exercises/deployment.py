"""Phase 4 checks: 4.1 infrastructure planning (cluster sizing, model registry, Ray Serve)."""

from __future__ import annotations

import math

from graders import data
from graders.checks import _fail, exercise
from graders.exercises._common import _answered

HEADROOM = 0.7  # plan on 70 % of the measured speed: retries, skew, slower nodes
ANSWER_KEYS = {"review_id": str, "predicted_rating": int, "confidence": float, "model_version": int}


def planned_units(rows_per_second_per_unit: float, volume: int, deadline_hours: float) -> tuple[int, float]:
    """(units, hours): the fewest whole units that finish `volume` rows in time at HEADROOM x the measured speed."""
    per_hour = rows_per_second_per_unit * HEADROOM * 3600
    units = max(1, math.ceil(volume / (per_hour * deadline_hours)))
    return units, volume / (per_hour * units)


@exercise("41.plan")
def _plan(plan_batch):
    _answered(plan_batch, "plan_batch", "your function", "write plan_batch(rows_per_second_per_unit, volume, deadline_hours, price) above.")
    if not callable(plan_batch):
        _fail("plan_batch", "a function", type(plan_batch).__name__)
    for rate, volume, deadline, price in [(120.0, 10_000_000, 4.0, 0.10), (9000.0, 50_000_000, 2.0, 3.00), (50.0, 1_000, 8.0, 1.0)]:
        got = plan_batch(rate, volume, deadline, price)
        units, hours = planned_units(rate, volume, deadline)
        want = {"units": units, "hours": hours, "cost": units * hours * price}
        if not isinstance(got, dict) or set(got) != set(want):
            _fail("plan_batch(...)", "a dict with the keys units, hours and cost", repr(got)[:200])
        if got["units"] != units or not all(math.isclose(got[k], want[k], rel_tol=0.01) for k in ("hours", "cost")):
            _fail(f"plan for {volume:,} rows in {deadline:g} h at {rate:g} rows/s per unit",
                  {k: round(v, 3) for k, v in want.items()}, {k: got[k] for k in want},
                  f"units = ceil(volume / (rate * {HEADROOM} * 3600 * deadline_hours)); hours at that planned speed; cost = units * hours * price.")
    return "the plan follows from the measured speed (units, hours and cost, with 30 % headroom)"


@exercise("41.registry")
def _registry(registry):
    _answered(registry, "registry", "a gr.registry.Registry with two versions", "register version 1 and version 2 above.")
    if not hasattr(registry, "versions"):
        _fail("registry", "a gr.registry.Registry", type(registry).__name__)
    versions = registry.versions()
    if len(versions) < 2:
        _fail("registered versions", "at least 2", len(versions), "register the early model as version 1, then the better one.")
    import os

    from graders.registry import fingerprint

    want = fingerprint(data.paths().reviews)
    for v in versions[-2:]:
        if "val_accuracy" not in v.metrics:
            _fail(f"version {v.version} metrics", "a 'val_accuracy'", v.metrics, "pass metrics={'val_accuracy': ...} to register().")
        if v.data_fingerprint != want:
            _fail(f"version {v.version} data fingerprint", want, repr(v.data_fingerprint),
                  "pass data_fingerprint=gr.registry.fingerprint(paths.reviews): the data the model was trained on.")
        if "://" not in v.path and not os.path.exists(os.path.join(v.path, "model.pt")):
            _fail(f"version {v.version} files", "model.pt", sorted(os.listdir(v.path)), "register the folder that holds model.pt.")
    old, new = versions[-2:]
    return (f"{len(versions)} versions; latest two: v{old.version} ({old.metrics['val_accuracy']:.2f}) "
            f"and v{new.version} ({new.metrics['val_accuracy']:.2f}), same data fingerprint")


def _answers_of(handle, requests: list[dict]) -> list[dict]:
    """Send requests through a Serve handle and wait off the notebook's event loop."""
    from concurrent.futures import ThreadPoolExecutor

    responses = [handle.remote(r) for r in requests]
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: [r.result(timeout_s=120) for r in responses]).result()


def _expect_answer(answer, request: dict | None = None) -> None:
    if not isinstance(answer, dict) or set(answer) != set(ANSWER_KEYS):
        _fail("an answer", f"a dict with the keys {sorted(ANSWER_KEYS)}", repr(answer)[:200],
              "return one dict per request from your batched method.")
    for key, kind in ANSWER_KEYS.items():
        if not isinstance(answer[key], kind):
            _fail(f"answer['{key}']", f"a {kind.__name__}", repr(answer[key]), "convert numpy values: int(...), float(...).")
    if request is not None and answer["review_id"] != request["review_id"]:
        _fail("answer['review_id']", repr(request["review_id"]), repr(answer["review_id"]), "return the answers in the order of the requests.")


@exercise("41.service")
def _service(handle):
    _answered(handle, "handle", "the DeploymentHandle that serve.run returned", "handle = serve.run(app, name=..., route_prefix=...).")
    if not hasattr(handle, "remote"):
        _fail("handle", "a DeploymentHandle from serve.run", type(handle).__name__)
    window = data.new_reviews(16, seed=4101)
    requests = [{"review_id": i, "text": t} for i, t in zip(window["review_id"].to_pylist(), window["text"].to_pylist())]
    answers = _answers_of(handle, requests)
    for answer, request in zip(answers, requests):
        _expect_answer(answer, request)
    versions = sorted({a["model_version"] for a in answers})
    return f"16 requests answered by model version {versions}, with the keys {sorted(ANSWER_KEYS)}"


@exercise("41.rollout")
def _rollout(answers):
    _answered(answers, "rollout answers", "the answers collected while you rolled out version 2", "collect them in the loop above.")
    if not isinstance(answers, list) or len(answers) < 20:
        _fail("answers during the rollout", "a list of at least 20 answers", f"{type(answers).__name__} of {len(answers) if isinstance(answers, list) else 0}")
    for answer in answers:
        _expect_answer(answer)
    versions = [a["model_version"] for a in answers]
    if versions != sorted(versions):
        _fail("versions over time", "old until the new replica is ready, then new (never back)", versions,
              "roll out with serve.run(new_app, name=<the same name>): Serve drains the old replica only when the new one is up.")
    if versions[0] == versions[-1]:
        _fail("versions over time", "a switch from the old version to the new one", f"only version {versions[0]}",
              "start sending before serve.run(...) of version 2 and keep sending until it returns.")
    return f"{len(answers)} requests answered during the rollout, none lost: version {versions[0]} -> {versions[-1]}"
