"""Phase 4 checks: 4.2 operations and monitoring (logged predictions, drift, A/B tests).

Each check runs the learner's function on cases whose answer it computes here, from the kit's
data: synthetic prediction logs, the course reviews against new windows (`data.new_reviews`), and
simulated A/B traffic (`data.ab_outcomes`). `reference_psi` and `reference_ab` are the rules the
lesson states, written once.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyarrow as pa

from graders import data
from graders.checks import AB_ALPHA, PSI_THRESHOLD, _fail, exercise
from graders.exercises._common import (
    _answered,
    _expect_columns,
    _materialized,
    _user_error,
)

MONITORING_COLUMNS = ["model_version", "requests", "accuracy", "mean_confidence"]
DRIFT_COLUMNS = ["feature", "psi", "drifted"]
AB_KEYS = {"rate_a", "rate_b", "lift", "p_value", "decision"}
FEATURES = ("words", "stars")
WINDOW = 400  # reviews per drift window, as in the lesson
AB_OUTCOMES_FOLDER = "ab_test_outcomes"  # where Lesson 4.2 logs its experiment (gr.data.output_path)


# --- the rules, written once -----------------------------------------------------------------

def reference_psi(reference, current, bins: int = 10, floor: float = 1e-4) -> float:
    """PSI with `bins` reference-quantile bins (open ends, duplicate edges dropped), shares clipped at `floor`."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref, cur = np.clip(ref, floor, None), np.clip(cur, floor, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def reference_ab(variant, converted, alpha: float = AB_ALPHA) -> dict:
    """Two-sided pooled two-proportion z-test of B against A."""
    from scipy.stats import norm

    variant, converted = np.asarray(variant), np.asarray(converted, dtype=bool)
    n_a, n_b = int((variant == "A").sum()), int((variant == "B").sum())
    x_a, x_b = int(converted[variant == "A"].sum()), int(converted[variant == "B"].sum())
    rate_a, rate_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = float(2 * norm.sf(abs(rate_b - rate_a) / se)) if se > 0 else 1.0
    decision = ("B" if rate_b > rate_a else "A") if p_value < alpha else "no difference"
    return {"rate_a": rate_a, "rate_b": rate_b, "lift": rate_b - rate_a, "p_value": p_value, "decision": decision,
            "n_a": n_a, "n_b": n_b}


def words_per_review(texts) -> np.ndarray:
    return np.array([len(data.clean_review_text(t).split()) for t in texts], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _reference_features(reviews_path: str) -> dict[str, np.ndarray]:
    table = data.read_reviews(reviews_path, kept=True)
    return {"words": words_per_review(table.column("text").to_pylist()), "stars": table.column("rating").to_numpy().astype(np.int64)}


@functools.lru_cache(maxsize=8)
def _window(seed: int, drift: float) -> pa.Table:
    return data.new_reviews(WINDOW, seed=seed, drift=drift)


def _window_features(seed: int, drift: float) -> dict[str, np.ndarray]:
    table = _window(seed, drift)
    return {"words": words_per_review(table.column("text").to_pylist()), "stars": table.column("rating").to_numpy().astype(np.int64)}


# --- calling the learner's function ---------------------------------------------------------

def _function(value, what: str, signature: str) -> None:
    _answered(value, what, f"your function {signature}", f"write {signature} in the exercise cell above and run it.")
    if not callable(value):
        _fail(what, f"a function {signature}", f"a {type(value).__name__}", f"pass the function itself: gr.check(..., {what}).")


def _call(fn, what: str, *args):
    """fn(*args); its NotImplementedError means 'nothing yet', any other error is the learner's, in one line."""
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(what, "a result", "nothing yet (it raises NotImplementedError)",
              "replace `raise NotImplementedError()` with your code, run the cell, then check again.")
    except Exception as exc:  # noqa: BLE001  (the learner's code raised: show their error, not our frames)
        _fail(what, "a result", f"it raised {_user_error(exc)}", "fix that error in your exercise cell (run it alone to see the traceback).")


def _close(found: float, expected: float, rel: float = 1e-3, absolute: float = 1e-6) -> bool:
    return found is not None and math.isfinite(found) and abs(found - expected) <= absolute + rel * abs(expected)


# --- 42.monitoring: per-version accuracy and confidence from logged predictions ---------------

def _synthetic_logs() -> tuple[pa.Table, dict[str, int], dict[int, tuple[int, float, float]]]:
    """A prediction log whose per-version answer is known: version -> (requests, accuracy, mean confidence)."""
    rng = np.random.default_rng(42)
    ids, versions, predicted, confidence, stars = [], [], [], [], {}
    plan = {1: (30, 18), 2: (20, 19)}  # version: (requests, correct)
    for version, (n, correct) in plan.items():
        for i in range(n):
            rid = f"R7{version}{i:04d}"
            truth = int(rng.integers(1, 6))
            guess = truth if i < correct else truth % 5 + 1  # a wrong star, never the right one
            ids.append(rid)
            versions.append(version)
            predicted.append(guess)
            confidence.append(round(float(rng.uniform(0.3, 1.0)), 3))
            stars[rid] = truth
    order = rng.permutation(len(ids))  # interleaved, as a router logs them
    table = pa.table({
        "review_id": pa.array([ids[i] for i in order], pa.string()),
        "variant": pa.array(["A" if versions[i] == 1 else "B" for i in order], pa.string()),
        "predicted_rating": pa.array([predicted[i] for i in order], pa.int64()),
        "confidence": pa.array([confidence[i] for i in order], pa.float64()),
        "model_version": pa.array([versions[i] for i in order], pa.int64()),
    })
    want = {}
    for version, (n, correct) in plan.items():
        conf = [c for c, v in zip(confidence, versions) if v == version]
        want[version] = (n, correct / n, float(np.mean(conf)))
    return table, stars, want


@exercise("42.monitoring")
def _monitoring(monitor):
    import ray

    _function(monitor, "monitor", "monitor(logs, stars)")
    logs, stars, want = _synthetic_logs()
    result = _call(monitor, "monitor(logs, stars)", ray.data.from_arrow(logs), stars)
    if not hasattr(result, "materialize"):
        _fail("monitor(logs, stars)", "a Ray Dataset (one row per model_version)", f"a {type(result).__name__}",
              "return logs.map_batches(...).groupby('model_version').aggregate(...), not its rows.")
    ds = _materialized(result, "the Dataset monitor() returns")
    _expect_columns(ds, MONITORING_COLUMNS, "monitor() result",
                    "aggregate with Count(alias_name='requests'), Mean(..., alias_name='accuracy'), Mean('confidence', alias_name='mean_confidence').")
    rows = {int(r["model_version"]): r for r in ds.take_all()}
    if sorted(rows) != sorted(want):
        _fail("model versions in the result", sorted(want), sorted(rows), "group by 'model_version': one row per version.")
    for version, (n, accuracy, confidence) in want.items():
        got = rows[version]
        if int(got["requests"]) != n:
            _fail(f"requests of version {version}", n, got["requests"], "Count() the logged rows of each version.")
        if not _close(float(got["accuracy"]), accuracy, rel=1e-6):
            hint = ("accuracy is the share of rows whose predicted_rating equals the stars the reviewer gave (stars[review_id]); "
                    "both count 1..5, so compare them directly.")
            _fail(f"accuracy of version {version} (a test log: {round(accuracy * n)} of {n} right)", f"{accuracy:.4f}",
                  f"{float(got['accuracy']):.4f}", hint)
        if not _close(float(got["mean_confidence"]), confidence, rel=1e-6):
            _fail(f"mean_confidence of version {version}", f"{confidence:.4f}", f"{float(got['mean_confidence']):.4f}",
                  "Mean('confidence', alias_name='mean_confidence') over the version's rows.")
    return "on a test log with known answers: requests, accuracy and mean confidence right for both versions"


# --- 42.psi: the population stability index, by hand -----------------------------------------

def _psi_hint(found: float, expected: float) -> str:
    if not math.isfinite(found):
        return "a bin with no values makes log(0): clip both shares first, np.clip(share, 1e-4, None)."
    if found < -1e-9:
        return "(c - r) and log(c / r) always have the same sign, so PSI is never negative: check the formula."
    if expected > 0 and abs(found * math.log(10) - expected) <= 1e-3 * expected + 1e-6:
        return "use the natural log (np.log), not np.log10."
    return ("10 bins from the REFERENCE's quantiles (np.quantile at 0.1 ... 0.9, then np.unique), open at both ends "
            "(np.searchsorted(edges, x, side='right') gives each value its bin), shares = counts / len, clipped at 1e-4.")


@exercise("42.psi")
def _psi(psi):
    _function(psi, "psi", "psi(reference, current)")
    uniform = np.arange(1000)
    stars_ref = np.repeat([1, 2, 3, 4, 5], [100, 100, 100, 200, 300])
    stars_neg = np.repeat([1, 2, 3, 4, 5], [300, 200, 100, 100, 100])
    feats = _reference_features(data.paths().reviews)
    clean, drifted = _window_features(4201, 0.0), _window_features(4202, 0.5)
    cases = [
        ("psi(x, x) for x = np.arange(1000)", uniform, uniform),
        ("psi(np.arange(1000), np.arange(1000) + 250): values beyond the reference's range", uniform, uniform + 250),
        ("psi of star counts 1:1:1:2:3 against 3:2:1:1:1", stars_ref, stars_neg),
        ("psi of words per review: course reviews vs a clean window", feats["words"], clean["words"]),
        ("psi of words per review: course reviews vs a window with drift 0.5", feats["words"], drifted["words"]),
        ("psi of stars: course reviews vs a window with drift 0.5", feats["stars"], drifted["stars"]),
    ]
    for what, reference, current in cases:
        expected = reference_psi(reference, current)
        found = _call(psi, what, reference.copy(), current.copy())
        try:
            found = float(found)
        except (TypeError, ValueError):
            _fail(what, "a number (a float)", repr(found)[:80], "return float(np.sum(...)).")
        if not _close(found, expected):
            _fail(what, f"{expected:.4f}", f"{found:.4f}", _psi_hint(found, expected))
    clean_words = reference_psi(feats["words"], clean["words"])
    drift_words = reference_psi(feats["words"], drifted["words"])
    return f"matches on 6 cases; words per review: clean window {clean_words:.3f}, drift 0.5 window {drift_words:.2f}"


# --- 42.drift: a drift report over the features -----------------------------------------------

def _listed(rows: dict, names: list, digits: int) -> str:
    return ", ".join(format(rows[n]["psi"], f".{digits}f") for n in names)


@exercise("42.drift")
def _drift(drift_report):
    _function(drift_report, "drift_report", "drift_report(reference, window)")
    reference = data.read_reviews(data.paths().reviews, kept=True)
    feats = _reference_features(data.paths().reviews)
    summary = []
    for label, seed, drift in (("a clean window (drift 0)", 4211, 0.0), ("a drifted window (drift 1.0)", 4212, 1.0)):
        what = f"drift_report on {label}"
        report = _call(drift_report, what, reference, _window(seed, drift))
        if not isinstance(report, pa.Table):
            _fail(what, "a pyarrow Table", f"a {type(report).__name__}",
                  "return pa.table({'feature': [...], 'psi': [...], 'drifted': [...]}).")
        if sorted(report.column_names) != sorted(DRIFT_COLUMNS):
            _fail(f"{what}: columns", sorted(DRIFT_COLUMNS), sorted(report.column_names), "one column per key of pa.table({...}).")
        types = {n: report.schema.field(n).type for n in DRIFT_COLUMNS}
        if not pa.types.is_string(types["feature"]) and not pa.types.is_large_string(types["feature"]):
            _fail(f"{what}: column 'feature'", "strings", types["feature"], "the feature names, e.g. 'words'.")
        if types["psi"] != pa.float64():
            _fail(f"{what}: column 'psi'", "float64 values", types["psi"], "pa.array(values, pa.float64()).")
        if types["drifted"] != pa.bool_():
            _fail(f"{what}: column 'drifted'", "bool values", types["drifted"], "a comparison gives a bool: psi > gr.checks.PSI_THRESHOLD.")
        rows = {r["feature"]: r for r in report.to_pylist()}
        if sorted(rows) != sorted(FEATURES) or report.num_rows != len(FEATURES):
            _fail(f"{what}: features", sorted(FEATURES), report.column("feature").to_pylist(), "one row per feature: words and stars.")
        window = _window_features(seed, drift)
        for name in FEATURES:
            expected = reference_psi(feats[name], window[name])
            found = rows[name]["psi"]
            if found is None or not _close(float(found), expected):
                _fail(f"{what}: psi of {name}", f"{expected:.4f}", "no value" if found is None else f"{float(found):.4f}",
                      "psi(reference feature, window feature), in that order: the bins come from the training reviews.")
        flagged = [n for n in FEATURES if rows[n]["drifted"]]
        wrong = [n for n in FEATURES if rows[n]["drifted"] != (rows[n]["psi"] > PSI_THRESHOLD)]
        if drift == 0.0 and flagged:
            _fail(f"{what}: drifted", "False for every feature (its PSI is below the threshold)",
                  f"True for {flagged} (psi {_listed(rows, flagged, 3)})",
                  f"a report that flags drift everywhere is never read again: drifted = psi > gr.checks.PSI_THRESHOLD ({PSI_THRESHOLD}).")
        if drift == 1.0 and len(flagged) < len(FEATURES):
            missed = [n for n in FEATURES if n not in flagged]
            _fail(f"{what}: drifted", "True for every feature", f"False for {missed} (psi {_listed(rows, missed, 2)})",
                  f"drifted = psi > gr.checks.PSI_THRESHOLD ({PSI_THRESHOLD}).")
        if wrong:
            _fail(f"{what}: drifted", f"psi > {PSI_THRESHOLD} for each feature", {n: rows[n]["drifted"] for n in FEATURES},
                  "drifted = psi > gr.checks.PSI_THRESHOLD.")
        summary.append(", ".join(f"{n} {rows[n]['psi']:.2f}" for n in FEATURES))
    return f"clean window not flagged ({summary[0]}); drifted window flagged ({summary[1]})"


# --- 42.ab: a two-proportion z-test over a Dataset ---------------------------------------------

def _ab_cases():
    """(label, outcomes): simulated traffic whose right decision is known (p-values 0.004, 0.47, 0.012, 0.063)."""
    return [
        ("simulated traffic where B converts better (10 % vs 12.5 %)", data.ab_outcomes(4000, 0.10, 0.125, seed=4224)),
        ("simulated traffic with no difference (12 % vs 12 %)", data.ab_outcomes(4000, 0.12, 0.12, seed=4222)),
        ("simulated traffic where A converts better (15 % vs 12.5 %)", data.ab_outcomes(4000, 0.15, 0.125, seed=4226)),
        ("simulated traffic with a difference too small to see in 4,000 requests", data.ab_outcomes(4000, 0.15, 0.125, seed=4222)),
    ]


def _ab_hint(key: str, got: dict, want: dict) -> str:
    if key in ("rate_a", "rate_b") and _close(float(got["rate_a"]), want["rate_b"]) and _close(float(got["rate_b"]), want["rate_a"]):
        return "rate_a is the share of converted requests with variant 'A', rate_b with variant 'B': they are swapped."
    if key == "lift":
        return "lift = rate_b - rate_a (positive when B is better)."
    if key == "p_value":
        p = float(got["p_value"])
        if _close(p, want["p_value"] / 2, rel=1e-2):
            return "the test is two-sided: p_value = 2 * norm.sf(abs(z))."
        if _close(p, 1 - want["p_value"] / 2, rel=1e-2) or p > 0.5 and want["p_value"] < 0.5:
            return "use the upper tail: p_value = 2 * norm.sf(abs(z)), where norm.sf(z) = 1 - norm.cdf(z)."
        return ("pooled rate p = (x_a + x_b) / (n_a + n_b); se = sqrt(p * (1 - p) * (1 / n_a + 1 / n_b)); "
                "z = (rate_b - rate_a) / se; p_value = 2 * norm.sf(abs(z)).")
    if key == "decision":
        return (f"p_value < gr.checks.AB_ALPHA ({AB_ALPHA}): the variant with the higher rate ('A' or 'B'); "
                "otherwise 'no difference'.")
    return "count the requests and the conversions per variant (groupby('variant'))."


def _expect_ab(result, want: dict, what: str) -> None:
    if not isinstance(result, dict) or not AB_KEYS <= set(result):
        _fail(what, f"a dict with the keys {sorted(AB_KEYS)}", repr(result)[:120], "return {'rate_a': ..., 'rate_b': ..., ...}.")
    for key in ("rate_a", "rate_b", "lift", "p_value"):
        try:
            found = float(result[key])
        except (TypeError, ValueError):
            _fail(f"{what}: {key}", "a number", repr(result[key])[:60], "float(...) of your value.")
        rel, absolute = 1e-3, 1e-9
        if not _close(found, want[key], rel, absolute):
            _fail(f"{what}: {key}", f"{want[key]:.6g}", f"{found:.6g}", _ab_hint(key, result, want))
    if result["decision"] != want["decision"]:
        _fail(f"{what}: decision (p_value {want['p_value']:.3g}, lift {want['lift']:+.3f})", repr(want["decision"]),
              repr(result["decision"]), _ab_hint("decision", result, want))


def logged_outcomes_folder() -> str:
    """Where Lesson 4.2 logs its experiment's outcomes (the check reruns the test on them when they are there)."""
    return data.output_path(AB_OUTCOMES_FOLDER)


@exercise("42.ab")
def _ab(ab_test):
    import pyarrow.fs as pafs
    import ray

    _function(ab_test, "ab_test", "ab_test(outcomes)")
    decisions = []
    for label, table in _ab_cases():
        want = reference_ab(table.column("variant").to_numpy(zero_copy_only=False), table.column("converted").to_numpy(zero_copy_only=False))
        result = _call(ab_test, f"ab_test on {label}", ray.data.from_arrow(table))
        _expect_ab(result, want, f"ab_test on {label}")
        decisions.append(want["decision"])
    folder = logged_outcomes_folder()
    fs, base = data.filesystem(folder)
    traffic = ""
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        table = data.read_parquet_folder(folder)
        if table.num_rows and {"variant", "converted"} <= set(table.column_names):
            want = reference_ab(table.column("variant").to_numpy(zero_copy_only=False), table.column("converted").to_numpy(zero_copy_only=False))
            what = f"ab_test on your logged traffic ({table.num_rows} requests in {folder})"
            _expect_ab(_call(ab_test, what, ray.data.read_parquet(folder)), want, what)
            traffic = f"; your logged traffic: {want['decision']} (p = {want['p_value']:.2g})"
    return f"decisions {decisions} on simulated traffic with known answers{traffic}"
