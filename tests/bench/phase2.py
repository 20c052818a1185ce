"""`make bench`: Phase 2's ceiling, naive baseline and reference pipeline, measured in one run.

The reference pipeline is the solution cell of `solutions/02_advanced_processing/04_validation.ipynb`,
executed as written (one source of truth). The reviews are generated like the course data, at a
size where start-up is a small part of the run: BENCH_REVIEWS (default 6,000 on CPU, 192,000 on
a GPU). Prints records/s, efficiency, speedup and utilization, and writes .artifacts/bench_phase2.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray

import graders as gr
from graders import data
from graders.grading import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "solutions" / "02_advanced_processing" / "04_validation.ipynb"


def reference_pipeline():
    """The validation's reference `build_embedding_pipeline`, from its solution cell."""
    cell = next(c for c in json.loads(SOURCE.read_text())["cells"]
                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "embedding_pipeline")
    namespace = {"gr": gr, "np": np, "ray": ray}
    exec(compile("".join(cell["source"]), f"{SOURCE.name}:embedding_pipeline", "exec"), namespace)
    return namespace["build_embedding_pipeline"]


def bench_reviews(n: int) -> str:
    """n reviews in parts of 1,200 rows, generated like the course's (built once per size)."""
    parts = max(1, n // 1200)
    counts = dataclasses.replace(data.SIZES["full"], reviews=parts * 1200, review_parts=parts)
    folder = Path(data.data_root()) / "bench" / f"reviews-{counts.reviews}"
    if not (folder / f"part-{parts - 1:03d}.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        data._write_reviews(pafs.LocalFileSystem(), str(folder), counts, data._products(data.SIZES["full"]))
    return str(folder)


def main() -> int:
    res = gr.start(quiet=True)
    n = int(os.environ.get("BENCH_REVIEWS", 192_000 if res.gpus else 6_000))
    reviews = bench_reviews(n)
    print(f"Phase 2 benchmark on {platform.node()}: {res}")
    print(f"workload: {n:,} reviews (start-up is paid once; the steady rates below leave it out)\n")

    ceiling = gr.perf.model_ceiling(reviews, res.accelerator)
    naive = run_pipeline("naive baseline", gr.perf.naive_embedding_pipeline, reviews, num_gpus=res.gpus_per_actor)
    optimized = run_pipeline("reference pipeline", reference_pipeline(), reviews, res)
    cmp = gr.perf.compare(optimized, naive, ceiling, res)
    naive_rate = cmp.naive_rate

    measured = "gpu" if res.gpus else "cpu"
    rows = [
        ("model ceiling (no Ray)", ceiling.rows, ceiling.seconds, ceiling.rate, ceiling.report),
        ("naive baseline", naive.rows.num_rows, naive.seconds, naive_rate, naive.report),
        ("reference pipeline", optimized.rows.num_rows, optimized.seconds, cmp.rate, optimized.report),
    ]
    print(f"\n{'':24} {'rows':>8} {'wall s':>8} {'rows/s':>9} {'efficiency':>11} {measured.upper() + ' mean %':>11}")
    for name, count, seconds, rate, report in rows:
        util = f"{report.mean:.0f}" if report and report.mean is not None else "-"
        print(f"{name:24} {count:>8,} {seconds:>8.1f} {rate:>9.1f} {rate / ceiling.rate:>11.2f} {util:>11}")
    print(f"\nreference: efficiency {cmp.efficiency:.2f}, speedup over naive {cmp.speedup:.2f}x ({cmp.how})")
    goals = {"efficiency": 0.85, "utilization": 95.0 if res.gpus else None}
    print(f"goals: efficiency >= {goals['efficiency']}" + (f", GPU utilization >= {goals['utilization']:.0f} %" if res.gpus else ""))

    out = ROOT / ".artifacts" / "bench_phase2.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.node(), "resources": res.as_dict(), "reviews": n,
        "ceiling_rows_per_s": ceiling.rate, "naive_rows_per_s": naive_rate, "reference_rows_per_s": cmp.rate,
        "efficiency": cmp.efficiency, "speedup": cmp.speedup, "measured": measured,
        "utilization_mean": {name: (r.mean if r else None) for name, _, _, _, r in rows},
    }, indent=2))
    print(f"written: {out.relative_to(ROOT)}")
    gr.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
