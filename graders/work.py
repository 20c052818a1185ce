"""Did the model do the pipeline's work, in the measured run? (Phases 1 and 2.)

Utilization and speed earn points only for work the model did. `expect_model_work(run, kind)`:

1. **The outputs are the model's.** A sample of the run's rows is computed again here, from the
   same inputs, with the course's reference model (EfficientNet-Lite0 labels and features for
   images, all-MiniLM-L6-v2 embeddings for review texts). A constant label, random features or
   copied ratings do not match.
2. **They were computed in the measured run.** When graded, the run's inputs are written afresh
   by the grader just before it (`graders/trusted/inputs.py`): outputs computed earlier are for
   other inputs and fail step 1. On a CPU, the run's own CPU time (measured by the
   monitor for exactly the run's processes, see `graders.telemetry`) must cover at least
   `WORK_SHARE` of what the model needs for all its rows, at the CPU time per row measured here on
   the sample. Rows computed before the run and only handed out during it arrive without that
   work. CPU time, unlike wall time, hardly moves when other load shares the machine.
3. **Utilization counts the model's work only** (the utilization cells, `utilization=` their
   target). The run's CPU time beyond what its rows explain, `OVERHEAD[kind]` times what the
   model needs for them plus `START_PER_CORE` CPU-s for each core the run was given (a model
   actor for every two cores starts and loads its model), is not credited: the measured
   utilization is scaled by the share the model's work explains, so a busy loop, thread or
   process beside a slow pipeline adds CPU time and no credit. The references used 2.4-2.9
   (Phase 1) and 1.7-2.2 (Phase 2) times the model's CPU time for their rows, idle and beside a
   neighbour keeping both cores busy (2 cores, measured here): start-up, reading, preprocessing
   and Ray; on 2 cores what their rows explain is 1.4-1.9 times what they used.
4. **The stream was computed as it streamed** (Phase 2, which grades a steady rate). When the
   run's rate is its steady rate (at least `perf.MIN_STEADY_BLOCKS` output blocks), the run's
   CPU time between its first and its last output block must cover `WORK_SHARE` of what the
   model needs for the rows after the first block: results computed first and handed out
   afterwards, slowly enough not to look like a burst, would otherwise show a steady rate several
   times the real one.

Under grading this runs in the grader's kernel, on the results the notebook handed over and the
grader's own measurement; in JupyterLab it runs in your kernel, on your own.
"""

from __future__ import annotations

import time

import numpy as np

from graders.checks import CheckFailed

WORK_SHARE = 0.5  # the run's CPU time must cover this share of the model's CPU time for its rows
# What a run's rows explain of its CPU time (see 3. above): this many times the model's CPU time
# for them, plus this many CPU-s per core for starting workers and loading the model.
OVERHEAD = {"image": 3.5, "text": 3.0}
START_PER_CORE = 2.0
MATCH_SHARE = 0.75  # sampled rows that must match the reference model (GPU arithmetic differs a little)
COSINE = 0.99  # a feature vector or embedding matches at this cosine similarity or above


def expect_model_work(run, kind: str, utilization: float | None = None, sample: int = 8, seed: int = 2026) -> None:
    """CheckFailed unless `run` (a PipelineRun) holds the reference model's outputs, computed in
    that run. `kind`: "image" (Phase 1: path, label, features) or "text" (Phase 2: review_id,
    embedding). `utilization`: the utilization target (%), when the point is the run's
    utilization: only the share of it that the model's work explains is credited (3. above)."""
    if not hasattr(run, "_model_work"):  # checked once per run, kept on the run (three cells ask)
        run._per_row = None  # the model's CPU-s per row, measured here on a sample of the run's rows
        try:
            run._model_work = _why_not(run, kind, sample, seed)
        except Exception as exc:  # files and rows a notebook produced: anything may be wrong with them
            run._model_work = f"the grader could not recompute a sample of your rows ({type(exc).__name__}: {exc})"
    if run._model_work:
        raise CheckFailed(f"this point needs the model's own work in the measured run: {run._model_work}")
    if utilization is not None and (why := _why_not_useful(run, kind, utilization)):
        raise CheckFailed(f"utilization counts the model's work only: {why}")


def credited_utilization(report, rows: int, per_row: float, kind: str) -> tuple[float, float] | None:
    """(utilization credited, % of the cores; the CPU-s the run's rows explain) for a CPU run of
    `rows` rows at `per_row` model CPU-s each, or None where there is nothing to scale (a GPU run,
    a run on a cluster, no measured CPU time)."""
    used = getattr(report, "run_cpu_seconds", None)
    if report is None or report.device != "cpu" or not used or report.mean is None:
        return None
    explained = OVERHEAD[kind] * per_row * rows + START_PER_CORE * (report.cores or 1)
    return report.mean * min(1.0, explained / used), explained


def _why_not_useful(run, kind: str, target: float) -> str | None:
    report, table = run.report, run.table()
    rows = _distinct_inputs(table, kind)
    credited = credited_utilization(report, rows, run._per_row, kind) if run._per_row else None
    if credited is None:
        return None
    share, explained = credited
    cores = report.cores or 1
    repeated = " (repeated or unknown inputs counted once)" if rows < table.num_rows else ""
    how = (f"{OVERHEAD[kind]:g} x the {run._per_row * rows:.1f} CPU-s the model needs for its {rows:,} rows{repeated}, "
           f"and {START_PER_CORE:g} CPU-s for each of {cores} core{'s' if cores != 1 else ''} to start up")
    print(f"useful work: the rows explain {explained:.1f} CPU-s ({how}) of the {report.run_cpu_seconds:.1f} the run "
          f"used: utilization credited {share:.1f} % of the measured {report.mean:.1f} %")
    if share < target:
        return (f"the run used {report.run_cpu_seconds:.1f} CPU-s, but its rows explain at most {explained:.1f} ({how}), "
                f"so {share:.1f} % of the measured {report.mean:.1f} % counts, under the target {target:g} %. CPU time "
                "beyond the model's work (a busy loop, thread or process beside it) is not utilization: keep the "
                "model stage itself busy.")
    return None


def _distinct_inputs(table, kind: str) -> int:
    """The rows a run's CPU time may be explained by: its distinct inputs (image paths or review
    ids), at most as many as the course has, so that rows repeated or made up explain nothing."""
    import pyarrow.compute as pc

    from graders import data

    key, most = ("path", data.counts().images) if kind == "image" else ("review_id", data.counts().reviews_kept)
    return min(pc.count_distinct(table.column(key)).as_py(), most)


def _why_not(run, kind: str, sample: int, seed: int) -> str | None:
    table = run.table()
    if table.num_rows == 0:
        return "the run produced no rows"
    rows = np.random.default_rng(seed).choice(table.num_rows, size=min(sample, table.num_rows), replace=False)
    matched, seconds = (_images if kind == "image" else _texts)(table, sorted(int(r) for r in rows))
    if matched < MATCH_SHARE * len(rows):
        fresh = (" The grader wrote this run's inputs afresh just before it started: rows computed before the run, "
                 f"or from other files than the {'images_path' if kind == 'image' else 'reviews_path'} your function was "
                 "given, do not match them." if _inputs_renewed() else "")
        return (f"{len(rows) - matched} of {len(rows)} sampled rows differ from what the reference model computes "
                f"for the same {'image' if kind == 'image' else 'review'} (a stage that skips or fakes the model?).{fresh}")
    print(f"model check: {matched} of {len(rows)} sampled rows match the reference model")
    report = run.report
    used = getattr(report, "run_cpu_seconds", None)
    if report is None or used is None or report.device != "cpu":
        return None  # no attributable CPU time (a cluster, a GPU run): the outputs are the check
    run._per_row = seconds / len(rows)
    needed = seconds / len(rows) * table.num_rows
    print(f"work check: the run used {used:.1f} CPU-s; the model needs about {needed:.1f} CPU-s for "
          f"{table.num_rows:,} rows ({seconds / len(rows) * 1000:.0f} ms each, measured here)")
    if used < WORK_SHARE * needed:
        return (f"the run used {used:.1f} s of CPU time, but the model needs about {needed:.1f} s for its "
                f"{table.num_rows:,} rows: were they computed before the measured run?")
    # Phase 2 grades a steady rate (graders.perf.steady_rate); Phase 1 grades none
    return _why_not_streamed(run, seconds / len(rows), report) if kind == "text" else None


def _inputs_renewed() -> bool:
    """The grader wrote this run's inputs afresh just before it (graders/trusted/inputs.py)."""
    from graders.handover import grader_measured

    return grader_measured("inputs") == "renewed"


def _why_not_streamed(run, per_row: float, report, slack_s: float = 1.0) -> str | None:
    """Step 4: the run's CPU time (the monitor's samples, seconds since it started, which is just
    before the run's own clock starts) from its first output block to `slack_s` after its last."""
    from graders.perf import MIN_STEADY_BLOCKS

    arrivals, timeline = run.arrivals, report.timeline
    if len(arrivals) < MIN_STEADY_BLOCKS or not timeline or not all("cpu_run_s" in s for s in timeline):
        return None  # no steady rate is graded, or no samples to read it from
    first, last = arrivals[0][0], arrivals[-1][0]
    t0 = timeline[0]["t"] - report.interval_s  # each sample covers the interval before it
    used = sum(s["cpu_run_s"] for s in timeline if first <= s["t"] - t0 <= last + slack_s)
    rows = sum(n for _, n in arrivals[1:])
    needed = per_row * rows
    print(f"stream check: {used:.1f} CPU-s from the first output block to the last ({first:.1f}-{last:.1f} s); "
          f"the model needs about {needed:.1f} CPU-s for the {rows:,} rows after the first block")
    if used < WORK_SHARE * needed:
        return (f"from your first output block to your last ({first:.1f}-{last:.1f} s) the run used {used:.1f} s of CPU "
                f"time, but the model needs about {needed:.1f} s for the {rows:,} rows in between: were they "
                "computed earlier and handed out afterwards?")
    return None


def _cpu_time(fn):
    """fn()'s value and the CPU time it took, on one torch thread: threads that wait for each
    other spin, and on a busy machine that spinning would multiply the cost per row (measured
    here: 6 ms a review idle, 105 ms beside one busy process, with two threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        value = fn()
        return value, time.process_time() - start
    finally:
        torch.set_num_threads(threads)


def _images(table, rows) -> tuple[int, float]:
    """(rows whose label and features match EfficientNet-Lite0 on their image, CPU-s for the sample)."""
    import torch
    from PIL import Image

    from graders import data, models

    root = data.paths().images
    fs, base = data.filesystem(root)
    pixels = []
    for r in rows:
        path = str(table.column("path")[r].as_py())
        name = path.rsplit("/", 1)[-1]
        if not name or "/" + name not in "/" + path or ".." in name:
            raise ValueError(f"{path!r} is not an image file of the course")
        with fs.open_input_file(f"{base.rstrip('/')}/{name}") as f:  # the course's file of that name, never the row's path
            pixels.append(models.preprocess_image(np.asarray(Image.open(f))))
    model = models.load_vision_model("cpu")
    batch = torch.as_tensor(np.stack(pixels))
    models.vision_forward(model, batch[:1])  # warm up: the first call allocates
    (features, logits), seconds = _cpu_time(lambda: models.vision_forward(model, batch))
    labels = [models.imagenet_label(i) for i in logits.argmax(1).tolist()]
    got = np.stack(table.column("features").take(rows).to_numpy(zero_copy_only=False)).astype(np.float32)
    want = features.numpy()
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    same = [a == b and c >= COSINE for a, b, c in zip(table.column("label").take(rows).to_pylist(), labels, cosine)]
    return sum(same), seconds


def _texts(table, rows) -> tuple[int, float]:
    """(rows whose embedding matches all-MiniLM-L6-v2 on their review's text, CPU-s for the sample)."""
    from graders import data, models

    reviews = data.read_reviews(data.paths().reviews)
    text = dict(zip(reviews.column("review_id").to_pylist(), reviews.column("text").to_pylist()))
    ids = table.column("review_id").take(rows).to_pylist()
    if any(i not in text for i in ids):
        return 0, 0.0
    tokenizer, model = models.load_text_model("cpu")
    models.embed_texts(tokenizer, model, [text[ids[0]]])  # warm up: the first call allocates
    want, seconds = _cpu_time(lambda: models.embed_texts(tokenizer, model, [data.clean_review_text(text[i]) for i in ids]))
    got = np.stack(table.column("embedding").take(rows).to_numpy(zero_copy_only=False)).astype(np.float32)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    return int((cosine >= COSINE).sum()), seconds
