"""How fast is fast? The yardsticks Phase 2 measures a pipeline against, on this machine, now.

- `model_ceiling(...)`: the text model alone, in this process, on pre-tokenized tensors, no Ray:
  the most records per second this machine can push through all-MiniLM-L6-v2. A pipeline's
  **efficiency** is its steady records/s divided by this.
- `naive_embedding_pipeline(path)`: the pattern to beat (the one in many first attempts): the
  model loaded inside a plain per-batch function, small batches. Shown here so you can run it and
  see why it is slow; never copy it.
- `steady_rate(arrivals, ...)`: records/s once results flow, from when each output block reached
  the driver. Start-up (worker processes, model loading) is left out, because on a big dataset it
  is paid once; on the course's small data it would otherwise hide what the pipeline can do.

- `peak_memory_mb(fn, device)`: the memory a call adds at its peak (Phase 3: batch size against
  memory).

Both pipelines and the ceiling use the same inputs: the cleaned reviews, tokenized to
`models.TEXT_MAX_TOKENS` tokens, so each has the same texts to embed. (`models.embed_tokens` skips
the padding that no text of a batch reaches: a batch of 8 may skip a little more than one of 64.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from graders import data, models

MIN_STEADY_BLOCKS = 8  # fewer output blocks than this: the rate covers the whole run instead
BURST_SHARE = 0.25  # blocks all arriving within this share of the run's time, faster than the ceiling: a burst
# When graded: a stream's first block may come this long after the run starts (start-up), in units of
# the grader's own model process's start-up on this machine, measured just before the run (yardsticks.py),
# plus STARTUP_SLACK_S. A later first block means the results were held back (computed, then handed
# out at the end), which would read as a short, fast stream: the rate is then counted from the allowed
# start-up instead. Measured here: the reference's first block came at 9.2 s idle (allowed 19.4 s)
# and 10.6 s beside two busy processes (allowed 22.0 s); the arrival times are the grader's (custody.py).
STARTUP_FACTOR = 2.0
STARTUP_SLACK_S = 5.0
CEILING_BATCH = {"cpu": 64, "cuda": 512}  # the fastest batch size measured for each device
NAIVE_ROWS = 1_920  # the naive baseline's sample: all of the small data, 1,920 reviews of the full


@dataclass
class Ceiling:
    rows: int
    seconds: float
    batch_size: int
    device: str
    report: object = None  # UtilizationReport of the timed part

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def __str__(self) -> str:
        return (f"model ceiling: {self.rows:,} rows in {self.seconds:.1f} s = {self.rate:.1f} rows/s "
                f"({self.device}, batch {self.batch_size}, one process, no Ray)")


def model_ceiling(reviews_path: str, device: str = "cpu", threads: int | None = None,
                  batch_size: int | None = None, monitor: bool = True) -> Ceiling:
    """Time the text model alone on every cleaned review, tokenized beforehand (one warm-up batch).

    `device` "cuda" where this process has no GPU (a notebook on a cluster's GPU-less head): the
    same measurement runs as a Ray task on a GPU node of the cluster, on that node's device."""
    import contextlib

    import torch

    from graders.telemetry import UtilizationMonitor

    if device == "cuda" and not torch.cuda.is_available():
        return _ceiling_on_a_gpu_node(reviews_path, threads, batch_size, monitor)
    batch_size = batch_size or CEILING_BATCH["cuda" if device == "cuda" else "cpu"]
    tokens = models.tokenize(data.read_reviews(reviews_path, kept=True).column("text").to_pylist())
    before = torch.get_num_threads()
    _, model = models.load_text_model(device, threads=threads)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    try:
        models.embed_tokens(model, ids[:batch_size], mask[:batch_size])  # warm-up: lazy init, caches
        mon = UtilizationMonitor() if monitor else contextlib.nullcontext()
        with mon:
            start = time.perf_counter()
            for i in range(0, len(ids), batch_size):
                models.embed_tokens(model, ids[i:i + batch_size], mask[i:i + batch_size])
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    ceiling = Ceiling(len(ids), seconds, batch_size, device, getattr(mon, "report", None))
    print(ceiling)
    return ceiling


def _ceiling_on_a_gpu_node(reviews_path: str, threads, batch_size, monitor: bool) -> Ceiling:
    import ray

    if not ray.is_initialized():
        raise RuntimeError("expected a GPU in this process, or a Ray cluster with one (run gr.start() first), found "
                           "neither. Try: model_ceiling(paths.reviews, res.driver)")

    def on_the_node() -> Ceiling:  # the node's own device (a GPU node without CUDA falls back to its CPU)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # printed here, with where it ran
            return model_ceiling(reviews_path, models.device_for(), threads, batch_size, monitor)

    ceiling = ray.get(ray.remote(num_gpus=1)(on_the_node).remote())
    print(f"{ceiling} (a Ray task on a GPU node: this process has no GPU)")
    return ceiling


def naive_embedding_pipeline(reviews_path: str, batch_size: int = 8, rows_per_block: int = 32, num_gpus: float = 0.0,
                             max_rows: int = NAIVE_ROWS):
    """The slow pattern: load the model inside a per-batch function (do not copy this).

    It reads the first `max_rows` reviews (all of the small data): its rate is measured on rows
    your pipeline reads too, without spending an hour on the full data. `num_gpus`: give each task
    a GPU on a GPU machine (`res.gpus_per_actor`).
    """
    import ray

    def embed_batch(batch):
        keep, embedding = naive_embed(batch["text"], models.device_for())
        return {"review_id": batch["review_id"][keep], "product_id": batch["product_id"][keep], "embedding": embedding}

    reviews = ray.data.read_parquet(reviews_path).limit(max_rows)
    reviews = reviews.repartition(target_num_rows_per_block=rows_per_block)
    return reviews.map_batches(embed_batch, batch_size=batch_size, num_gpus=num_gpus)


def naive_embed(texts, device: str) -> tuple[np.ndarray, np.ndarray]:
    """The naive pattern's work for one batch: (which texts have words, their embeddings), with
    the model loaded again for EVERY batch. The grader's naive yardstick runs this too
    (graders/trusted/yardsticks.py)."""
    tokenizer, model = models.load_text_model(device)
    texts = [data.clean_review_text(t) for t in texts]
    keep = np.array([bool(t) for t in texts], dtype=bool)
    tokens = models.tokenize([t for t in texts if t], tokenizer=tokenizer)
    return keep, models.embed_tokens(model, tokens["input_ids"], tokens["attention_mask"])


def steady_rate(arrivals: list[tuple[float, int]], total_seconds: float, max_rate: float | None = None):
    """(records/s, how) from `(seconds since start, rows)` of each output block.

    Steady: rows after the first block / time from the first block to the last. Used only when at
    least `MIN_STEADY_BLOCKS` blocks arrived; otherwise all rows / the whole run. A burst is
    results that were buffered, not streamed: they outran the model ceiling (`max_rate`) *and*
    arrived within `BURST_SHARE` of the run's time. Both, because a ceiling measured earlier,
    under another load, can be beaten by a steady stream (16 blocks over 56 of 60 s are a
    stream, whatever the ceiling said).
    """
    rows = sum(n for _, n in arrivals)
    whole = rows / total_seconds if total_seconds > 0 else 0.0
    if len(arrivals) < MIN_STEADY_BLOCKS:
        return whole, f"whole run ({len(arrivals)} output blocks; at least {MIN_STEADY_BLOCKS} stream)"
    span = arrivals[-1][0] - arrivals[0][0]
    rate = (rows - arrivals[0][1]) / span if span > 0 else float("inf")
    if max_rate is not None and rate > max_rate and span < BURST_SHARE * total_seconds:
        return whole, (f"whole run (results arrived in one burst, not as a stream: {len(arrivals)} blocks "
                       f"within {span:.1f} of {total_seconds:.1f} s)")
    return rate, f"steady, {len(arrivals)} output blocks from {arrivals[0][0]:.1f} s to {arrivals[-1][0]:.1f} s"


@dataclass
class Bracket:
    """A yardstick's rows/s: measured once in this notebook (low == high), or, when graded, by
    the grader before and after your run (graders/trusted/yardsticks.py): from the lower to the
    higher of the two."""

    low: float
    high: float
    source: str = "measured in this notebook"
    settled: bool = True  # before and after agreed within `band`
    band: float = 0.0

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2

    def scaled(self, k: float) -> "Bracket":
        return Bracket(self.low * k, self.high * k, self.source, self.settled, self.band)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:.1f} rows/s"
        return f"{self.low:.1f} to {self.high:.1f} rows/s"


@dataclass
class Comparison:
    """Your pipeline against the ceiling and the naive baseline, measured in the same run."""

    rate: float  # your pipeline, records/s
    how: str  # how `rate` was measured (steady stream or whole run)
    naive: Bracket
    ceiling: Bracket  # the ceiling times the accelerators the cluster has (see compare)
    actor_stage: bool | None  # did your pipeline run a stage on an actor pool? (None: unknown)
    blocks: int
    # When graded and your first block came after the start-up the grader allows: {"rate": your rows/s
    # counted from your first block, "first": s, "allowed": s, "ready": s}; `rate` then counts from "allowed"
    late: dict | None = None

    @property
    def naive_rate(self) -> float:
        return self.naive.mid

    @property
    def ceiling_rate(self) -> float:
        return self.ceiling.mid

    @property
    def efficiency(self) -> float:
        return self.rate / self.ceiling_rate if self.ceiling_rate else 0.0

    @property
    def speedup(self) -> float:
        return self.rate / self.naive_rate if self.naive_rate else 0.0

    def expect_efficiency(self, target: float) -> None:
        self._expect(self.ceiling, self.efficiency, target, "efficiency (your rows/s / model ceiling rows/s)", "the model ceiling")

    def expect_speedup(self, target: float) -> None:
        self._expect(self.naive, self.speedup, target, "speedup over the naive baseline", "the naive baseline")

    def _expect(self, yardstick: Bracket, value: float, target: float, what: str, name: str) -> None:
        """Pass or fail when the yardstick's bracket decides it; otherwise `Inconclusive`."""
        from graders.checks import Inconclusive, expect_at_least

        if yardstick.settled:
            low, high = value, value
        else:
            low, high = self.rate / yardstick.high, self.rate / yardstick.low
        if low >= target:
            return None
        if high < target:  # a fail even against the yardstick's slowest measurement
            return expect_at_least(high, target, what, self.knobs())
        raise Inconclusive(
            f"{what}: {low:.2f} to {high:.2f} against the target {target:g}, so neither a pass nor a fail: the machine "
            f"was busy while the grader measured: {name} ran at {yardstick} before and after your run, more than "
            f"{yardstick.band:.0%} apart each time it was measured again. Grade again when the machine is quieter "
            "(class grading does so by itself, then leaves it to your instructor).")

    def knobs(self) -> str:
        """The first knob to turn, from what the run shows."""
        if self.late:
            return ("hand the results out as they are computed: nothing after the model stage that waits for every "
                    "row (materialize(), repartition(n), a sort or a shuffle), so the first block comes when start-up ends.")
        if self.actor_stage is False:
            return ("load the model once per actor: a callable class whose __init__ loads it, mapped with "
                    "compute=ray.data.ActorPoolStrategy(size=res.model_actors).")
        if self.blocks < MIN_STEADY_BLOCKS:
            return (f"your results came out in {self.blocks} block(s), so nothing streamed: cut the reviews "
                    "into blocks of a few batches (repartition(target_num_rows_per_block=...)) so cleaning, "
                    "tokenizing and the model overlap.")
        return ("raise the model stage's batch_size (try 32-128 on CPU, 512+ on a GPU); on a GPU let several "
                "actors share it (num_gpus=res.gpus_per_actor / 4 with 4x the actors); give each actor "
                "res.torch_threads threads and keep per-row Python work out of __call__.")

    def __str__(self) -> str:
        return (f"your pipeline {self.rate:.1f} rows/s ({self.how}); naive {self.naive}; ceiling {self.ceiling} "
                f"({self.ceiling.source}) -> efficiency {self.efficiency:.2f}, speedup {self.speedup:.2f}x")


def compare(run, naive_run, ceiling: Ceiling, res) -> Comparison:
    """Measure `run` (a grading.PipelineRun) against the naive run and the model ceiling.

    When graded, the yardsticks are the grader's own, measured before and after your run in a
    process your code never touched (graders/trusted/yardsticks.py); `naive_run` and `ceiling`
    are then not used, and your run's times must fit inside the grader's own clock. The ceiling
    ran on one device of the driver's machine; a cluster with more GPUs (or CPUs) can go
    faster, so it is scaled by how many of them the cluster has.
    """
    run.table()  # a failed run: CheckFailed saying why
    scale = max(1, res.gpus) if res.gpus else max(1.0, res.cpus / (os.cpu_count() or 1))
    ready = None  # the grader's own start-up time, when graded
    if os.environ.get("COURSE_MEASURED"):  # the grader's kernel
        naive, top, ready = _grader_yardsticks(run)
    else:
        naive_run.table()
        top = Bracket(ceiling.rate, ceiling.rate)
        naive_rate, _ = steady_rate(naive_run.arrivals, naive_run.seconds, max_rate=1.25 * ceiling.rate * scale)
        naive = Bracket(naive_rate, naive_rate)
    top = top.scaled(scale)
    rate, how = steady_rate(run.arrivals, run.seconds, max_rate=1.25 * top.high)
    late = _late_start(run.arrivals, ready) if how.startswith("steady") else None
    if late:  # held back: counted from the start-up the grader allows
        late["rate"], rate = rate, sum(n for _, n in run.arrivals) / (run.arrivals[-1][0] - late["allowed"])
        how = (f"counted from {late['allowed']:.1f} s, the start-up the grader allows (its own model process started in "
               f"{late['ready']:.1f} s): your first block came at {late['first']:.1f} s, and a stream starts when start-up "
               f"ends; from your first block: {late['rate']:.1f} rows/s")
    return Comparison(rate, how, naive, top, run.actor_stage, len(run.arrivals), late)


def _late_start(arrivals, ready: float | None) -> dict | None:
    """When the first block came after the start-up the grader allows (`STARTUP_FACTOR` times its
    own model process's start-up `ready`, measured just before the run, plus `STARTUP_SLACK_S`):
    {"first": s, "allowed": s, "ready": s}; else None."""
    if not ready:
        return None
    allowed = STARTUP_FACTOR * float(ready) + STARTUP_SLACK_S
    first, last = arrivals[0][0], arrivals[-1][0]
    if first <= allowed or last <= allowed:
        return None
    return {"first": first, "allowed": allowed, "ready": float(ready)}


def _grader_yardsticks(run) -> tuple[Bracket, Bracket, float | None]:
    """(naive, ceiling, the yardstick process's start-up s) as the grader measured them around the
    run; the run's own times checked against the grader's clock (a run cannot take longer than the
    cell that ran it)."""
    from graders.checks import CheckFailed, Inconclusive
    from graders.handover import grader_measured

    measured = grader_measured("yardsticks")
    if not isinstance(measured, dict) or "error" in measured:
        why = measured.get("error") if isinstance(measured, dict) else "the run cell did not finish"
        raise Inconclusive(f"the grader could not measure the yardsticks ({why}), so this cannot be graded now. "
                           "Grade again; class grading does so by itself.")
    cell = grader_measured("run_cell_seconds")
    times = [t for t, _ in run.arrivals]
    if (cell is None or not 0 < run.seconds <= cell + 0.5 or times != sorted(times)
            or any(t < 0 or t > run.seconds for t in times) or sum(n for _, n in run.arrivals) != run.rows.num_rows):
        raise CheckFailed(f"your run's times do not fit the grader's clock: the run cell took {cell} s by the grader's "
                          f"clock, the run says {run.seconds:.2f} s with {len(times)} output blocks. Try: run the "
                          "validation's cells as released, without changing how runs are timed.")
    source = (f"the grader's, measured before and after your run"
              + (f", {measured['tries']} times after it" if measured["tries"] > 1 else "")
              + (f"; its model process started in {measured['ready_s']:.1f} s" if measured.get("ready_s") else ""))
    settled, band = measured["settled"], float(measured["band"])
    naive, ceiling = (Bracket(*measured[k], source, bool(settled[k]), band) for k in ("naive", "ceiling"))
    return naive, ceiling, measured.get("ready_s")


def peak_memory_mb(fn, device: str = "cpu", interval: float = 0.002) -> float:
    """MiB that `fn()` adds at its peak above what was in use when it started.

    On a GPU: the CUDA allocator's peak (`torch.cuda.max_memory_allocated`), exact. On a CPU: the
    process's resident memory, sampled every `interval` s in a thread, so a peak shorter than
    that can be missed, and memory the allocator keeps from an earlier call is not counted again:
    measure batch sizes from small to large.
    """
    import threading

    import psutil
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, process.memory_info().rss)
    return (peak - before) / 2**20
