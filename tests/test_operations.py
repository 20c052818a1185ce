"""Lesson 4.2 checks: monitoring per version, PSI, drift reports and A/B tests.

The fast tests hand the checks a stand-in for a Ray Dataset (the checks only call materialize,
schema and take_all); the slow ones run the lesson's own solutions on a real local Ray.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graders import data
from graders.checks import AB_ALPHA, PSI_THRESHOLD, CheckFailed, check
from graders.exercises import operations
from graders.exercises.operations import reference_ab, reference_psi, words_per_review


class FakeDataset:
    """Just enough of a Ray Dataset for the checks: a pyarrow Table behind materialize/schema/take_all."""

    def __init__(self, table: pa.Table):
        self.table = table

    def materialize(self):
        return self

    def schema(self):
        return self.table.schema

    def take_all(self):
        return self.table.to_pylist()


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """ray.data.from_arrow / read_parquet give FakeDatasets; no logged traffic unless a test writes some."""
    import ray.data

    monkeypatch.setattr(ray.data, "from_arrow", FakeDataset)
    monkeypatch.setattr(ray.data, "read_parquet", lambda folder: FakeDataset(data.read_parquet_folder(folder)))
    folder = tmp_path / "ab_test_outcomes"
    monkeypatch.setattr(operations, "logged_outcomes_folder", lambda: str(folder))
    return folder


# --- PSI --------------------------------------------------------------------------------------

def psi_right(reference, current):
    return reference_psi(reference, current)


def _shares(edges, values):
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) / len(values)


def psi_log10(reference, current):
    return reference_psi(reference, current) / math.log(10)


def psi_unclipped(reference, current):
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
    r, c = _shares(edges, reference), _shares(edges, current)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum((c - r) * np.log(c / r)))


def psi_closed_ends(reference, current):
    """np.histogram over the reference's range: values outside it are dropped."""
    edges = np.quantile(reference, np.linspace(0, 1, 11))
    r = np.histogram(reference, edges)[0] / len(reference)
    c = np.histogram(current, edges)[0] / len(current)
    r, c = np.clip(r, 1e-4, None), np.clip(c, 1e-4, None)
    return float(np.sum((c - r) * np.log(c / r)))


def psi_current_bins(reference, current):
    return reference_psi(current, reference)


def not_written(*args):
    raise NotImplementedError()


def test_reference_psi_matches_the_measured_windows():
    feats = operations._reference_features(data.prepare().reviews)
    assert reference_psi(np.arange(1000), np.arange(1000)) == 0.0
    stars = np.repeat([1, 2, 3, 4, 5], [100, 100, 100, 200, 300])
    current, ref = np.array([3, 2, 1, 1, 1]) / 8, np.array([1, 1, 1, 2, 3]) / 8  # one bin per star
    want = float(np.sum((current - ref) * np.log(current / ref)))
    assert reference_psi(stars, np.repeat([1, 2, 3, 4, 5], [300, 200, 100, 100, 100])) == pytest.approx(want)
    clean, half, full = operations._window_features(4201, 0.0), operations._window_features(4202, 0.5), operations._window_features(4212, 1.0)
    assert max(reference_psi(feats[f], clean[f]) for f in ("words", "stars")) < 0.1
    assert 0.5 < reference_psi(feats["words"], half["words"]) < 1.2
    assert reference_psi(feats["words"], full["words"]) > 5 and reference_psi(feats["stars"], full["stars"]) > 0.5


def test_psi_check_passes_the_rule(capsys):
    check("42.psi", psi_right)
    assert "✅ 42.psi: matches on 6 cases" in capsys.readouterr().out


@pytest.mark.parametrize("psi, message", [
    (None, r"psi: expected your function psi\(reference, current\), found nothing yet"),
    (not_written, r"found nothing yet \(it raises NotImplementedError\)"),
    (psi_log10, r"Try: use the natural log \(np.log\), not np.log10"),
    (psi_unclipped, r"values beyond the reference's range: expected 1.7280, found inf.*clip both shares"),
    (psi_closed_ends, r"values beyond the reference's range: expected 1.7280, found .*open at both ends"),
    (psi_current_bins, r"words per review: course reviews vs a window with drift 0.5: expected 0.7672, found 3.3666.*REFERENCE's quantiles"),
    (lambda r, c: "small", r"psi\(x, x\) .*: expected a number"),
    (lambda r, c: r.foo, r"it raised AttributeError: 'numpy.ndarray' object has no attribute 'foo'"),
    (42, r"psi: expected a function psi\(reference, current\), found a int"),
])
def test_psi_check_names_the_mistake(psi, message):
    with pytest.raises(CheckFailed, match=message):
        check("42.psi", psi)


# --- drift report ------------------------------------------------------------------------------

def _features(table: pa.Table) -> dict:
    return {"words": words_per_review(table.column("text").to_pylist()), "stars": table.column("rating").to_numpy().astype(np.int64)}


FLOAT64 = pa.float64()


def drift_report(reference, window, flag=lambda v: v > PSI_THRESHOLD, psi=reference_psi, psi_type=FLOAT64):
    ref, cur = _features(reference), _features(window)
    values = [psi(ref[n], cur[n]) for n in ("words", "stars")]
    return pa.table({"feature": ["words", "stars"], "psi": pa.array(values, psi_type), "drifted": [flag(v) for v in values]})


def test_drift_check_passes_a_report_that_flags_only_real_drift(capsys):
    check("42.drift", drift_report)
    out = capsys.readouterr().out
    assert "✅ 42.drift: clean window not flagged" in out and "drifted window flagged (words 7.00" in out


@pytest.mark.parametrize("report, message", [
    (lambda r, w: drift_report(r, w, flag=lambda v: True),
     (r"clean window \(drift 0\): drifted: expected False for every feature .* found True for \['words', 'stars'\] "
      r"\(psi 0.008, 0.009\).*flags drift everywhere is never read again")),
    (lambda r, w: drift_report(r, w, flag=lambda v: False),
     r"drifted window \(drift 1.0\): drifted: expected True for every feature, found False for \['words', 'stars'\]"),
    (lambda r, w: drift_report(r, w, flag=lambda v: v > 1.0),
     r"drifted window \(drift 1.0\): drifted: expected True for every feature, found False for \['stars'\] \(psi 0.78\)"),
    (lambda r, w: drift_report(w, r), r"drifted window \(drift 1.0\): psi of words: expected 7.0000, found 9.0430.*in that order"),
    (lambda r, w: drift_report(r, w).to_pandas(), r"expected a pyarrow Table, found a DataFrame"),
    (lambda r, w: drift_report(r, w, psi_type=pa.float32()), r"column 'psi': expected float64 values, found float"),
    (lambda r, w: drift_report(r, w).drop_columns(["drifted"]), r"columns: expected \['drifted', 'feature', 'psi'\]"),
    (None, r"drift_report: expected your function .* found nothing yet"),
    (not_written, r"nothing yet \(it raises NotImplementedError\)"),
])
def test_drift_check_fails_with_the_reason(report, message):
    with pytest.raises(CheckFailed, match=message):
        check("42.drift", report)


# --- monitoring ---------------------------------------------------------------------------------

def monitor_with(correct_of):
    """A right-shaped monitor over a FakeDataset; `correct_of(predicted, stars)` decides what counts as right."""
    def monitor(logs, stars):
        t = logs.table
        versions = t.column("model_version").to_numpy()
        truth = np.array([stars[r] for r in t.column("review_id").to_pylist()])
        correct = correct_of(t.column("predicted_rating").to_numpy(), truth)
        conf = t.column("confidence").to_numpy()
        vs = sorted(set(versions.tolist()))
        return FakeDataset(pa.table({
            "model_version": vs,
            "requests": [int((versions == v).sum()) for v in vs],
            "accuracy": [float(correct[versions == v].mean()) for v in vs],
            "mean_confidence": [float(conf[versions == v].mean()) for v in vs],
        }))
    return monitor


def test_monitoring_check_passes_per_version_numbers(no_ray, capsys):
    check("42.monitoring", monitor_with(lambda p, s: p == s))
    assert "requests, accuracy and mean confidence right for both versions" in capsys.readouterr().out


@pytest.mark.parametrize("monitor, message", [
    (monitor_with(lambda p, s: p == s - 1), r"accuracy of version 1 \(a test log: 18 of 30 right\): expected 0.6000, found 0.0000.*compare them directly"),
    (lambda logs, stars: monitor_with(lambda p, s: p == s)(logs, stars).table.to_pandas(), r"expected a Ray Dataset .* found a DataFrame"),
    (lambda logs, stars: FakeDataset(monitor_with(lambda p, s: p == s)(logs, stars).table.rename_columns(["model_version", "n", "accuracy", "mean_confidence"])),
     r"monitor\(\) result columns: expected \['accuracy', 'mean_confidence', 'model_version', 'requests'\]"),
    (lambda logs, stars: FakeDataset(monitor_with(lambda p, s: p == s)(logs, stars).table.slice(0, 1)), r"model versions in the result: expected \[1, 2\], found \[1\]"),
    (None, r"monitor: expected your function monitor\(logs, stars\), found nothing yet"),
    (not_written, r"nothing yet \(it raises NotImplementedError\)"),
    (lambda logs, stars: stars["nope"], r"it raised KeyError: 'nope'"),
])
def test_monitoring_check_fails_with_the_reason(no_ray, monitor, message):
    with pytest.raises(CheckFailed, match=message):
        check("42.monitoring", monitor)


# --- A/B test -----------------------------------------------------------------------------------

def ab_with(**change):
    """The reference test over a FakeDataset, with some keys of the answer changed by functions of it."""
    def ab_test(outcomes):
        t = outcomes.table
        want = reference_ab(t.column("variant").to_numpy(zero_copy_only=False), t.column("converted").to_numpy(zero_copy_only=False))
        answer = {k: want[k] for k in ("rate_a", "rate_b", "lift", "p_value", "decision")}
        return {**answer, **{k: f(answer) for k, f in change.items()}}
    return ab_test


def one_sided(a):
    return a["p_value"] / 2


def unpooled(outcomes):
    from scipy.stats import norm

    t = outcomes.table
    v, c = t.column("variant").to_numpy(zero_copy_only=False), t.column("converted").to_numpy(zero_copy_only=False)
    ra, rb, na, nb = c[v == "A"].mean(), c[v == "B"].mean(), (v == "A").sum(), (v == "B").sum()
    p = float(2 * norm.sf(abs(rb - ra) / math.sqrt(ra * (1 - ra) / na + rb * (1 - rb) / nb)))
    return {"rate_a": ra, "rate_b": rb, "lift": rb - ra, "p_value": p, "decision": ("B" if rb > ra else "A") if p < AB_ALPHA else "no difference"}


def test_reference_ab_decides_the_known_cases():
    got = [reference_ab(t.column("variant").to_numpy(zero_copy_only=False), t.column("converted").to_numpy(zero_copy_only=False))
           for _, t in operations._ab_cases()]
    assert [g["decision"] for g in got] == ["B", "no difference", "A", "no difference"]
    assert [round(g["p_value"], 3) for g in got] == [0.004, 0.472, 0.012, 0.063]
    same = reference_ab(np.array(["A", "B"] * 10), np.ones(20, dtype=bool))  # everyone converts: no variance
    assert same["p_value"] == 1.0 and same["decision"] == "no difference"


def test_ab_check_passes_the_test_on_simulated_and_logged_traffic(no_ray, capsys):
    check("42.ab", ab_with())
    assert "decisions ['B', 'no difference', 'A', 'no difference']" in capsys.readouterr().out
    no_ray.mkdir()
    pq.write_table(data.ab_outcomes(300, 0.75, 0.99, seed=1), no_ray / "part-0.parquet")
    check("42.ab", ab_with())
    assert "your logged traffic: B (p = " in capsys.readouterr().out
    with pytest.raises(CheckFailed, match=r"ab_test on your logged traffic \(300 requests in .*\): decision"):
        check("42.ab", ab_with(decision=lambda a: "no difference" if a["rate_a"] > 0.7 else a["decision"]))


@pytest.mark.parametrize("ab_test, message", [
    (ab_with(p_value=one_sided), r"B converts better .*: p_value: expected 0.004\d+, found 0.002\d+. Try: the test is two-sided"),
    (ab_with(p_value=lambda a: 1 - a["p_value"] / 2), r"p_value: expected 0.004\d+, found 0.99\d+. Try: use the upper tail"),
    (unpooled, r"B converts better .*: p_value: .* Try: pooled rate p = \(x_a \+ x_b\) / \(n_a \+ n_b\)"),
    (ab_with(rate_a=lambda a: a["rate_b"], rate_b=lambda a: a["rate_a"]), r"rate_a: .* they are swapped"),
    (ab_with(lift=lambda a: a["rate_a"] - a["rate_b"]), r"lift: expected 0.02\d+, found -0.02\d+. Try: lift = rate_b - rate_a"),
    (ab_with(decision=lambda a: "B" if a["lift"] > 0 else "A"),
     r"no difference \(12 % vs 12 %\): decision \(p_value 0.472, lift \+0.007\): expected 'no difference', found 'B'"),
    (ab_with(decision=lambda a: "B" if a["p_value"] < AB_ALPHA else "no difference"), r"A converts better .*: decision .*: expected 'A', found 'B'"),
    (lambda outcomes: (0.1, 0.2), r"expected a dict with the keys \['decision', 'lift', 'p_value', 'rate_a', 'rate_b'\]"),
    (None, r"ab_test: expected your function ab_test\(outcomes\), found nothing yet"),
    (not_written, r"nothing yet \(it raises NotImplementedError\)"),
])
def test_ab_check_names_the_mistake(no_ray, ab_test, message):
    with pytest.raises(CheckFailed, match=message):
        check("42.ab", ab_test)


# --- the lesson's solutions on a real Ray --------------------------------------------------------

@pytest.mark.slow
def test_lesson_solutions_pass_on_ray_data(local_ray, monkeypatch, tmp_path, capsys):
    """monitor and ab_test as the lesson writes them (groupby + aggregate on a real Ray)."""
    from ray.data.aggregate import Count, Mean, Sum
    from scipy import stats

    monkeypatch.setattr(operations, "logged_outcomes_folder", lambda: str(tmp_path / "none"))

    def monitor(logs, stars):
        def add_correct(batch):
            truth = np.array([stars[r] for r in batch["review_id"]])
            return {"model_version": batch["model_version"], "confidence": batch["confidence"], "correct": batch["predicted_rating"] == truth}

        return logs.map_batches(add_correct).groupby("model_version").aggregate(
            Count(alias_name="requests"), Mean("correct", alias_name="accuracy"), Mean("confidence", alias_name="mean_confidence"))

    def ab_test(outcomes, sides=2):
        counts = outcomes.groupby("variant").aggregate(Count(alias_name="n"), Sum("converted", alias_name="x"))
        (n_a, x_a), (n_b, x_b) = ({r["variant"]: (r["n"], r["x"]) for r in counts.take_all()}[v] for v in "AB")
        rate_a, rate_b = x_a / n_a, x_b / n_b
        pooled = (x_a + x_b) / (n_a + n_b)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        p = float(sides * stats.norm.sf(abs(rate_b - rate_a) / se))
        decision = ("B" if rate_b > rate_a else "A") if p < AB_ALPHA else "no difference"
        return {"rate_a": rate_a, "rate_b": rate_b, "lift": rate_b - rate_a, "p_value": p, "decision": decision}

    check("42.monitoring", monitor)
    check("42.ab", ab_test)
    assert capsys.readouterr().out.count("✅") == 2
    with pytest.raises(CheckFailed, match="two-sided"):
        check("42.ab", lambda outcomes: ab_test(outcomes, sides=1))
