"""Phase 4 checks: 4.3 troubleshooting (reproducible failures, their diagnosis and fix).

- `43.pool_request`: an actor pool's request that this cluster can start and that leaves CPUs
  for the read and preprocessing tasks.
- `43.safe_batch`: the largest batch whose peak memory, on the line fitted to your measurements,
  fits a budget.
- `43.balanced`: the skewed reviews spread over blocks so that no block holds more than about
  one CPU's even share of the rows.
- `43.slowest_stage`: the stage that `Dataset.stats()` says took the most time.
"""

from __future__ import annotations

import math
import re

import numpy as np

from graders import data
from graders.checks import _fail, exercise, expect_count
from graders.exercises._common import _answered, _materialized

POOL_KEYS = ("size", "num_cpus", "num_gpus")
BALANCE_SLACK = 1.1  # a block may be 10 % over one CPU's even share (shuffled repartitions are not exact)
MAX_BLOCKS_PER_CPU = 8  # more, tiny blocks: the tasks spend more time being scheduled than working
SKEW_ROWS = 1_920  # the skew demo's reviews: the first 1,920 (all of the small data), whatever COURSE_SIZE


# --- 4.3 troubleshooting: an actor pool that cannot start ------------------------------------

def _cluster() -> dict:
    """CPUs and GPUs of the running cluster, in all and on its biggest node."""
    import ray

    if not ray.is_initialized():
        _fail("Ray", "running", "not started", "run the setup cell (res = gr.start()) first.")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return {"cpus": float(total.get("CPU", 0)), "gpus": float(total.get("GPU", 0)),
            "node_cpus": max((float(n.get("CPU", 0)) for n in nodes), default=0.0),
            "node_gpus": max((float(n.get("GPU", 0)) for n in nodes), default=0.0)}


@exercise("43.pool_request")
def _pool_request(value):
    hint = "ask = {'size': res.model_actors, 'num_cpus': res.cpus_per_actor, 'num_gpus': res.gpus_per_actor}."
    _answered(value, "actor-pool request", "{'size': ..., 'num_cpus': ..., 'num_gpus': ...}",
              "fill in ask in the cell above, with numbers from res (the sizing gr.start() measured).")
    if not isinstance(value, dict) or set(value) != set(POOL_KEYS):
        _fail("actor-pool request", f"a dict with exactly the keys {list(POOL_KEYS)}",
              repr(value)[:80] if not isinstance(value, dict) else sorted(value), hint)
    for key in POOL_KEYS:
        _answered(value[key], f"ask['{key}']", "a number", hint)
        if isinstance(value[key], bool) or not isinstance(value[key], (int, float)):
            _fail(f"ask['{key}']", "a number", repr(value[key])[:40], hint)
    size, cpus, gpus = int(value["size"]), float(value["num_cpus"]), float(value["num_gpus"])
    if size < 1 or size != value["size"]:
        _fail("ask['size']", "a whole number of actors, 1 or more", value["size"], hint)
    if cpus < 0 or gpus < 0:
        _fail("CPUs and GPUs per actor", "0 or more", f"num_cpus={cpus:g}, num_gpus={gpus:g}", hint)
    c = _cluster()
    if gpus > c["node_gpus"]:
        _fail("GPUs per actor", f"at most {c['node_gpus']:g} (the most any node of this cluster has)", f"{gpus:g}",
              "num_gpus=res.gpus_per_actor: 0 where there is no GPU, and never more than one node has.")
    if cpus > c["node_cpus"]:
        _fail("CPUs per actor", f"at most {c['node_cpus']:g} (the most any node of this cluster has)", f"{cpus:g}",
              "num_cpus=res.cpus_per_actor: an actor runs on one node, so it can never get more CPUs than one node has.")
    if size * gpus > c["gpus"]:
        _fail("GPUs for the whole pool", f"at most {c['gpus']:g} (the cluster's GPUs)", f"{size} x {gpus:g} = {size * gpus:g}",
              "fewer actors (res.model_actors) or a fraction of a GPU each (res.gpus_per_actor / n for n actors per GPU).")
    if c["gpus"] > 0 and gpus == 0:
        _fail("GPUs per actor", "a share of a GPU (this cluster has one): the model belongs on it", "0",
              "num_gpus=res.gpus_per_actor.")
    free = c["cpus"] - size * cpus
    if free < 1:
        _fail("CPUs for the whole pool", f"at most {c['cpus'] - 1:g} of the cluster's {c['cpus']:g}, so one is left for the "
              "read and preprocessing tasks", f"{size} x {cpus:g} = {size * cpus:g}",
              "res.model_actors actors with res.cpus_per_actor CPUs each: a pool that takes every CPU starves the "
              "tasks that feed it, and the pipeline stops.")
    return (f"{size} actor(s) x ({cpus:g} CPU, {gpus:g} GPU) fit on this cluster "
            f"({c['cpus']:g} CPUs, {c['gpus']:g} GPUs) and leave {free:g} CPU(s) for reading")


# --- 4.3 troubleshooting: out of memory from oversized batches -------------------------------

def _fit(peaks: dict) -> tuple[float, float]:
    """(MiB per row, fixed MiB) of the straight line through the measured peaks."""
    sizes = np.array([float(b) for b in peaks])
    mbs = np.array([float(m) for m in peaks.values()])
    slope, intercept = np.polyfit(sizes, mbs, 1)
    return float(slope), float(intercept)


@exercise("43.safe_batch")
def _safe_batch(value):
    hint = "safe_batch = int((budget_mb - fixed_mb) / mb_per_row)."
    solve = "solve fixed_mb + mb_per_row * batch <= budget_mb for batch, and round down with int(...)."
    _answered(value, "batch plan", "{'peak_mb': {...}, 'budget_mb': ..., 'safe_batch': ...}", "fill in the cell above.")
    if not isinstance(value, dict):
        _fail("batch plan", "a dict with 'peak_mb', 'budget_mb' and 'safe_batch'", type(value).__name__, "run the cell above as given.")
    peaks, budget, choice = value.get("peak_mb"), value.get("budget_mb"), value.get("safe_batch")
    if not isinstance(peaks, dict) or len(peaks) < 3:
        _fail("measured peaks", "a peak memory for 3 or more batch sizes", repr(peaks)[:80], "run the measurement cell above.")
    if not isinstance(budget, (int, float)) or budget <= 0:
        _fail("budget_mb", "a positive number of MiB", repr(budget), "keep the budget_mb line of the exercise cell.")
    _answered(choice, "safe_batch", "a batch size (an int)", solve)
    if isinstance(choice, bool) or not isinstance(choice, (int, np.integer)):
        _fail("safe_batch", "a whole number of rows (an int)", repr(choice)[:40], "round down with int(...).")
    slope, intercept = _fit(peaks)
    if slope <= 0:
        _fail("measured peaks", "memory that grows with the batch size",
              ", ".join(f"{b}: {m:.0f} MiB" for b, m in peaks.items()),
              "the CPU allocator kept memory from an earlier run: restart the kernel and run the notebook "
              "from the top, so the measurement cell runs once, smallest batch first.")
    want = math.floor((budget - intercept) / slope)
    predicted = intercept + slope * int(choice)
    if abs(int(choice) - want) <= max(1, 0.01 * want):
        return (f"batch_size={int(choice)}: the line ({slope:.2f} MiB/row + {intercept:.1f} MiB) predicts "
                f"{predicted:.0f} MiB, within the {budget:g} MiB budget")
    measured_fit = [b for b, m in peaks.items() if m <= budget]
    if int(choice) in peaks and int(choice) == max(measured_fit, default=None):
        why = ("that is the largest batch you measured, not the largest that fits: follow the line past your "
               "measurements, " + hint)
    elif abs(int(choice) - budget / slope) <= 1:
        why = f"you left out the fixed part of the line ({intercept:.1f} MiB): " + hint
    elif int(choice) > want:
        why = f"the line predicts {predicted:.0f} MiB for it, over the {budget:g} MiB budget: " + hint
    else:
        why = f"a bigger batch still fits (the line predicts {intercept + slope * want:.0f} MiB for {want}): " + hint
    _fail("largest batch that fits the budget", f"{want} (from the line fitted to your peaks)", int(choice), why)


# --- 4.3 troubleshooting: skewed blocks -------------------------------------------------------

@exercise("43.balanced")
def _balanced(value):
    import pyarrow as pa
    import ray

    hint = ("skewed.repartition(n) cuts the rows into n equal blocks: take n >= res.cpus "
            "(2 * res.cpus is a good start).")
    ds = _materialized(value, "balanced dataset", "repartition the skewed dataset of the cell above into blocks of equal size.")
    tables = ray.get(ds.to_arrow_refs())  # one table per block
    sizes = [t.num_rows for t in tables]
    table = pa.concat_tables(tables) if tables else pa.table({})
    if "review_id" not in table.column_names:
        _fail("balanced dataset columns", "the reviews' columns, review_id among them", table.column_names,
              "repartition the skewed dataset itself; do not map it.")
    truth = data.read_reviews(data.paths().reviews).column("review_id").to_pylist()[:SKEW_ROWS]
    expect_count(table.num_rows, len(truth), "rows in the balanced dataset",
                 "repartition moves rows between blocks: it never drops or repeats one.")
    if sorted(table.column("review_id").to_pylist()) != sorted(truth):
        _fail("review ids", "each review exactly once", "other ids", "start from the skewed dataset of the cell above.")
    cpus = max(1, int(_cluster()["cpus"]))
    share = math.ceil(len(truth) / cpus)
    largest = max(sizes)
    if largest > BALANCE_SLACK * share:
        _fail("largest block", f"at most about {share:,} rows ({len(truth):,} rows / {cpus} CPUs: one CPU's even share)",
              f"{largest:,} rows (blocks: {', '.join(map(str, sorted(sizes, reverse=True)[:8]))}"
              f"{', ...' if len(sizes) > 8 else ''})",
              hint + " repartition(target_num_rows_per_block=k) only splits blocks bigger than k, so mind k.")
    if len(sizes) > MAX_BLOCKS_PER_CPU * cpus and len(sizes) > 64:
        _fail("number of blocks", f"at most {max(64, MAX_BLOCKS_PER_CPU * cpus)}", f"{len(sizes):,}",
              "tiny blocks make tiny tasks, which spend more time being scheduled than working: " + hint)
    return (f"{len(sizes)} blocks of {min(sizes):,} to {largest:,} rows: none holds more than about one CPU's share "
            f"({share:,} rows on {cpus} CPUs)")


# --- 4.3 troubleshooting: the slow stage ------------------------------------------------------

def _stats_summary(ds):
    """The DatasetStatsSummary of a run (`get_stats_summary` is Ray 2.60's DeveloperAPI for it)."""
    getter = getattr(ds, "get_stats_summary", None) or ds._get_stats_summary
    return getter()


def stage_times(ds) -> list[tuple[str, float, bool]]:
    """(stage name, seconds of task time, timed per stage) for every stage in `ds`'s stats.

    A fused operator ("MapBatches(a)->Map(b)") is split per stage when the run had
    `DataContext.per_stage_map_timing` on; otherwise it counts as one stage (timed per stage: False).
    """
    out: list[tuple[str, float, bool]] = []
    seen: set[str] = set()

    def walk(summary):
        for parent in getattr(summary, "parents", None) or []:
            walk(parent)
        for op in summary.operators_stats:
            names = op.operator_name.split("->")
            if op.stage_time and len(op.stage_time) == len(names):
                pairs = [(n, s.sum, True) for n, s in zip(names, op.stage_time)]
            else:
                total = op.block_transform_time or op.wall_time
                pairs = [(op.operator_name, total.sum if total else 0.0, len(names) == 1)]
            for name, seconds, split in pairs:
                if name not in seen:
                    seen.add(name)
                    out.append((name, float(seconds), split))

    walk(_stats_summary(ds))
    return out


def _norm(name: str) -> str:
    return re.sub(r"\s+", "", str(name)).lower()


def _same_stage(answer: str, stage: str) -> bool:
    a, s = _norm(answer).strip("'\""), _norm(stage)
    inner = re.fullmatch(r"[a-z_]+\((.+)\)", s)
    return a == s or (inner is not None and a in (inner.group(1), inner.group(1) + "()"))


@exercise("43.slowest_stage")
def _slowest_stage(value):
    hint = ("read the '* Stage N' lines under the fused operator in show_stats(slow_out): Stage 0 is the first name "
            "in the operator's name, Stage 1 the second, and so on.")
    _answered(value, "slowest stage", "{'dataset': slow_out, 'slowest': '<stage name>'}", "fill in the cell above.")
    if not isinstance(value, dict) or "dataset" not in value or "slowest" not in value:
        _fail("slowest stage", "a dict with 'dataset' and 'slowest'", repr(value)[:80], "run the cell above as given.")
    _answered(value["slowest"], "slowest stage", "a stage name such as 'MapBatches(clean)'", hint)
    if not isinstance(value["slowest"], str):
        _fail("slowest stage", "a stage name (a str)", repr(value["slowest"])[:40], hint)
    ds = value["dataset"]
    if not hasattr(ds, "stats"):
        _fail("dataset", "the Dataset you ran (slow_out)", type(ds).__name__, "run the pipeline cell above.")
    stages = [s for s in stage_times(ds) if s[1] > 0]
    if not stages:
        _fail("stats of the dataset", "the stats of a run", "none (it has not run)",
              "pass the materialized dataset: slow_out = pipeline.materialize().")
    name, seconds, split = max(stages, key=lambda s: s[1])
    if not split:
        _fail("stats per stage", f"a time for each stage of {name}", "one time for the whole fused operator",
              "set ray.data.DataContext.get_current().per_stage_map_timing = True, run the pipeline again, and read the Stage lines.")
    if _same_stage(value["slowest"], name):
        rest = sum(s for _, s, _ in stages) - seconds
        return f"{name}: {seconds:.2f} s of task time, against {rest:.2f} s for all the other stages together"
    named = next((s for s in stages if _same_stage(value["slowest"], s[0])), None)
    found = (f"{value['slowest']!r} ({named[1]:.2f} s)" if named
             else f"{value['slowest']!r}, which is none of this run's stages ({', '.join(s[0] for s in stages)})")
    _fail("slowest stage", f"{name} ({seconds:.2f} s of task time in all)", found, hint)
