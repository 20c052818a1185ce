"""Lesson 4.3's checks, both ways: the reference answer passes, each typical mistake fails with its own message.

The fast tests fake the cluster and the stats; the slow ones run the checks on a real local Ray
(2 CPUs) against real Ray 2.60 datasets, block layouts and stats summaries.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from graders import data
from graders.checks import CheckFailed, check
from graders.exercises import troubleshooting
from graders.session import plan_resources

LAPTOP = {"cpus": 2.0, "gpus": 0.0, "node_cpus": 2.0, "node_gpus": 0.0}
GPU_BOX = {"cpus": 16.0, "gpus": 1.0, "node_cpus": 16.0, "node_gpus": 1.0}


def _fake_cluster(monkeypatch, cluster):
    monkeypatch.setattr(troubleshooting, "_cluster", lambda: dict(cluster))


# --- 43.pool_request ---------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, gpus", [(2, 0), (8, 0), (16, 1), (64, 4)])
def test_pool_request_accepts_what_gr_start_sizes(monkeypatch, capsys, cpus, gpus):
    res = plan_resources(cpus, gpus)
    _fake_cluster(monkeypatch, {"cpus": cpus, "gpus": gpus, "node_cpus": cpus, "node_gpus": gpus})
    check("43.pool_request", {"size": res.model_actors, "num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor})
    assert "fit on this cluster" in capsys.readouterr().out


@pytest.mark.parametrize("cluster, ask, message", [
    (LAPTOP, {"size": 1, "num_cpus": 3, "num_gpus": 0}, r"CPUs per actor: expected at most 2 \(the most any node"),
    (LAPTOP, {"size": 1, "num_cpus": 1, "num_gpus": 0.5}, r"GPUs per actor: expected at most 0 .* 0 where there is no GPU"),
    (LAPTOP, {"size": 2, "num_cpus": 1, "num_gpus": 0},
     r"CPUs for the whole pool: expected at most 1 of the cluster's 2.*found 2 x 1 = 2.*starves"),
    (GPU_BOX, {"size": 2, "num_cpus": 1, "num_gpus": 1}, r"GPUs for the whole pool: expected at most 1 .* found 2 x 1 = 2"),
    (GPU_BOX, {"size": 1, "num_cpus": 1, "num_gpus": 0}, r"GPUs per actor: expected a share of a GPU"),
    (GPU_BOX, {"size": 1, "num_cpus": 1}, r"exactly the keys \['size', 'num_cpus', 'num_gpus'\], found \['num_cpus', 'size'\]"),
    (GPU_BOX, {"size": 1.5, "num_cpus": 1, "num_gpus": 1}, r"a whole number of actors"),
    (GPU_BOX, {"size": 1, "num_cpus": "1", "num_gpus": 1}, r"ask\['num_cpus'\]: expected a number, found '1'"),
])
def test_pool_request_says_what_does_not_fit(monkeypatch, cluster, ask, message):
    _fake_cluster(monkeypatch, cluster)
    with pytest.raises(CheckFailed, match=message):
        check("43.pool_request", ask)


def test_pool_request_blank():
    with pytest.raises(CheckFailed, match="actor-pool request: expected .* found nothing yet"):
        check("43.pool_request", None)


# --- 43.safe_batch -----------------------------------------------------------------------------

PEAKS = {64: 30 + 0.75 * 64, 128: 30 + 0.75 * 128, 256: 30 + 0.75 * 256}  # 0.75 MiB per row + 30 MiB
BUDGET = 256
WANT = math.floor((BUDGET - 30) / 0.75)  # 301


def _plan(choice, peaks=PEAKS, budget=BUDGET):
    return {"peak_mb": peaks, "budget_mb": budget, "safe_batch": choice}


def test_safe_batch_accepts_the_line_and_rounding(capsys):
    check("43.safe_batch", _plan(WANT))
    assert "batch_size=301: the line (0.75 MiB/row + 30.0 MiB)" in capsys.readouterr().out
    check("43.safe_batch", _plan(WANT + 1))  # rounded instead of floored: within one row
    noisy = {64: 81.0, 128: 122.0, 256: 225.0}  # not on one line: the check fits the same line you did
    slope, intercept = np.polyfit(list(noisy), list(noisy.values()), 1)
    check("43.safe_batch", _plan(int((BUDGET - intercept) / slope), peaks=noisy))


@pytest.mark.parametrize("choice, message", [
    (256, r"expected 301 .*, found 256\. Try: that is the largest batch you measured"),
    (math.floor(BUDGET / 0.75), r"found 341\. Try: you left out the fixed part of the line \(30\.0 MiB\)"),
    (400, r"found 400\. Try: the line predicts 330 MiB for it, over the 256 MiB budget"),
    (200, r"found 200\. Try: a bigger batch still fits"),
    (301.3, r"safe_batch: expected a whole number of rows \(an int\)"),
    (None, r"safe_batch: expected a batch size \(an int\), found nothing yet"),
])
def test_safe_batch_names_the_mistake(choice, message):
    with pytest.raises(CheckFailed, match=message):
        check("43.safe_batch", _plan(choice))


def test_safe_batch_needs_measurements_that_grow():
    with pytest.raises(CheckFailed, match="measured peaks: expected a peak memory for 3 or more"):
        check("43.safe_batch", _plan(100, peaks={64: 1.0, 128: 2.0}))
    with pytest.raises(CheckFailed, match="memory that grows with the batch size.*restart the kernel"):
        check("43.safe_batch", _plan(100, peaks={64: 90.0, 128: 0.0, 256: 0.0}))
    with pytest.raises(CheckFailed, match="batch plan: expected .* found nothing yet"):
        check("43.safe_batch", None)


# --- 43.slowest_stage (fake stats) -------------------------------------------------------------

def _stats(seconds):
    return SimpleNamespace(sum=seconds, min=seconds, max=seconds, mean=seconds)


def _op(name, stages=None, total=0.0):
    return SimpleNamespace(operator_name=name, stage_time=[_stats(s) for s in stages] if stages else None,
                           block_transform_time=_stats(total), wall_time=_stats(total))


class FakeDataset:
    def __init__(self, *ops):
        self.ops = ops

    def stats(self):
        return "..."

    def get_stats_summary(self):
        return SimpleNamespace(operators_stats=list(self.ops), parents=[])


FUSED = FakeDataset(_op("FromArrow"), _op("MapBatches(clean)->Map(minhash_one)->MapBatches(count_words)",
                                         stages=[0.01, 0.77, 0.006], total=0.786))


@pytest.mark.parametrize("answer", ["Map(minhash_one)", "minhash_one", " map(minhash_one) ", "minhash_one()"])
def test_slowest_stage_accepts_the_name_as_stats_writes_it(capsys, answer):
    check("43.slowest_stage", {"dataset": FUSED, "slowest": answer})
    assert "Map(minhash_one): 0.77 s of task time, against 0.02 s" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    ("MapBatches(clean)", r"expected Map\(minhash_one\) \(0\.77 s of task time in all\), found 'MapBatches\(clean\)' \(0\.01 s\)"),
    ("tokenize", r"found 'tokenize', which is none of this run's stages \(MapBatches\(clean\), Map\(minhash_one\)"),
    ("MapBatches(clean)->Map(minhash_one)->MapBatches(count_words)", r"which is none of this run's stages"),
    (None, r"slowest stage: expected a stage name .* found nothing yet"),
    (3, r"expected a stage name \(a str\), found 3"),
])
def test_slowest_stage_says_which_stage_was_slower(answer, message):
    with pytest.raises(CheckFailed, match=message):
        check("43.slowest_stage", {"dataset": FUSED, "slowest": answer})


def test_slowest_stage_needs_a_run_and_per_stage_timing():
    unsplit = FakeDataset(_op("MapBatches(clean)->Map(minhash_one)", total=0.8))
    with pytest.raises(CheckFailed, match="one time for the whole fused operator.*per_stage_map_timing = True"):
        check("43.slowest_stage", {"dataset": unsplit, "slowest": "Map(minhash_one)"})
    with pytest.raises(CheckFailed, match=r"found none \(it has not run\)"):
        check("43.slowest_stage", {"dataset": FakeDataset(_op("MapBatches(clean)")), "slowest": "clean"})
    with pytest.raises(CheckFailed, match="expected a dict with 'dataset' and 'slowest'"):
        check("43.slowest_stage", "Map(minhash_one)")
    with pytest.raises(CheckFailed, match="found nothing yet"):
        check("43.slowest_stage", None)


def test_balanced_blank_needs_no_ray():
    with pytest.raises(CheckFailed, match="balanced dataset: expected a Ray Dataset, found nothing yet.*repartition the skewed dataset"):
        check("43.balanced", None)


# --- on a real Ray -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def skewed(local_ray):
    reviews = data.read_reviews(data.prepare().reviews).slice(0, troubleshooting.SKEW_ROWS)
    rows = [1_680] + [16] * 15
    starts = np.cumsum([0] + rows[:-1])
    return local_ray.data.from_arrow([reviews.slice(int(s), n) for s, n in zip(starts, rows)])


@pytest.mark.slow
def test_balanced_on_real_blocks(skewed, capsys):
    check("43.balanced", skewed.repartition(4))
    assert "4 blocks of 480 to 480 rows" in capsys.readouterr().out
    check("43.balanced", skewed.repartition(target_num_rows_per_block=240))  # splits the big block, keeps the small ones
    with pytest.raises(CheckFailed, match=r"largest block: expected at most about 960 rows .* found 1,680 rows \(blocks: 1680, 16"):
        check("43.balanced", skewed)
    with pytest.raises(CheckFailed, match=r"found 1,920 rows"):
        check("43.balanced", skewed.repartition(1))
    with pytest.raises(CheckFailed, match=r"number of blocks: expected at most 64, found 480"):
        check("43.balanced", skewed.repartition(480))
    with pytest.raises(CheckFailed, match=r"rows in the balanced dataset: expected exactly 1,920, found 1,919"):
        check("43.balanced", skewed.limit(1_919).repartition(4))
    with pytest.raises(CheckFailed, match=r"columns: expected the reviews' columns"):
        check("43.balanced", skewed.repartition(4).select_columns(["text"]))


@pytest.mark.slow
def test_slowest_stage_on_real_stats(local_ray):
    import time

    ctx = local_ray.data.DataContext.get_current()

    def quick(batch):
        return batch

    def sleepy(row):
        time.sleep(0.002)
        return row

    def pipeline():
        return local_ray.data.range(200, override_num_blocks=2).map_batches(quick).map(sleepy)

    ctx.per_stage_map_timing = True
    try:
        ran = pipeline().materialize()
    finally:
        ctx.per_stage_map_timing = False
    names = [name for name, _, _ in troubleshooting.stage_times(ran)]
    assert names[-2:] == ["MapBatches(quick)", "Map(sleepy)"], names
    check("43.slowest_stage", {"dataset": ran, "slowest": "Map(sleepy)"})
    with pytest.raises(CheckFailed, match=r"expected Map\(sleepy\) .* found 'MapBatches\(quick\)'"):
        check("43.slowest_stage", {"dataset": ran, "slowest": "MapBatches(quick)"})
    with pytest.raises(CheckFailed, match="per_stage_map_timing = True"):
        check("43.slowest_stage", {"dataset": pipeline().materialize(), "slowest": "Map(sleepy)"})
    with pytest.raises(CheckFailed, match=r"it has not run"):
        check("43.slowest_stage", {"dataset": pipeline(), "slowest": "Map(sleepy)"})


@pytest.mark.slow
def test_pool_request_on_a_real_cluster(local_ray, capsys):
    check("43.pool_request", {"size": 1, "num_cpus": 1, "num_gpus": 0})
    assert "(2 CPUs, 0 GPUs) and leave 1 CPU(s)" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="CPUs per actor: expected at most 2"):
        check("43.pool_request", {"size": 1, "num_cpus": 3, "num_gpus": 0})
