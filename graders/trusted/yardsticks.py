"""The yardsticks of Phase 2, measured by the grader: the model ceiling and the naive baseline.

A learner's code runs in the notebook's kernel, where it can replace `gr.perf.model_ceiling` or
the naive pipeline with slower versions and so inflate its own efficiency and speedup. So when a
notebook is graded, those two cells are not run there (`MeasuredExecute.grader_cells`): this
module measures both in a process of the grader's, started fresh from this file, that the
learner's code never touched, with the run's priority and on the run's cores, while every
process of the run is paused (`MeasuredExecute._run_paused`):

1. once **before** the learner's pipeline runs, and once **after** it;
2. again after it, up to `TRIES` times, while before and after disagree by more than
   `NOISE_BAND` (the machine's load changed meanwhile);
3. the tests then read a **bracket** per yardstick, from the lower to the higher of the two
   measurements around the run (`graders.perf.Bracket`): a result is passed or failed only when
   it is on the same side of its target at both ends of the bracket, and otherwise called
   **inconclusive** ("the machine was busy"), never a wrong pass or fail. Class grading measures
   an inconclusive submission again by itself (`graders.trusted.classroom`).

What each measurement is, with the same data and model as the notebook's own cells:

- **ceiling**: the model alone in this process, on reviews tokenized beforehand, batches of
  `perf.CEILING_BATCH`, for at least `CEILING_SECONDS` (the reviews are cycled through);
- **naive**: the pattern to beat, `perf.naive_embedding_pipeline`'s per-batch function (clean,
  load the model, tokenize, embed 8 reviews) in as many worker processes as Ray would run at
  once (one per core, one per GPU), with one torch thread each, as Ray gives a 1-CPU task;
  without Ray, so nothing of the learner's Ray session is involved.

Protocol: the process reads a line ("measure") on stdin and answers one JSON line on stdout,
until stdin closes. Its imports and worker processes are paid once, before the first answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

_START = time.perf_counter()  # this process's start, for its start-up time ("ready_s")

NOISE_BAND = 0.15  # before and after may differ by this share of the lower one and still agree
TRIES = 3  # measurements after the run, at most, while they disagree with the one before it
CEILING_SECONDS = 3.0  # the ceiling runs batches for at least this long
CEILING_SAMPLE = 4_096  # reviews tokenized for the ceiling (cycled through)
NAIVE_BATCHES = 32  # batches of the naive pattern per worker process
NAIVE_BATCH = 8  # rows per batch, as perf.naive_embedding_pipeline
ANSWER_TIMEOUT_S = 240  # one measurement; past this the yardsticks are reported as not measured


# ------------------------------------------------------------------ the grader's side
class YardstickProcess:
    """One trusted measuring process for one graded run: `measure()` before and after it."""

    def __init__(self, reviews: str, priority: int = 0):
        self.err = tempfile.TemporaryFile()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONNOUSERSITE": "1"}
        env.pop("COURSE_QUESTIONS", None)
        prefix = ["nice", "-n", str(priority)] if priority else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "graders.trusted.yardsticks", reviews],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=env, start_new_session=True)
        if priority:  # its session's share, as the run's sessions get theirs (sandbox.SessionPriority)
            try:
                with open(f"/proc/{self.proc.pid}/autogroup", "w") as f:
                    f.write(str(priority))
            except OSError:
                pass

    def measure(self, timeout: float = ANSWER_TIMEOUT_S) -> dict:
        """{"ceiling": rows/s, "naive": rows/s, ...} or {"error": why}."""
        import select

        try:
            self.proc.stdin.write("measure\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
            if line:
                return json.loads(line)
            why = f"no answer within {timeout:.0f} s" if not ready else "it stopped"
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.err.seek(0)
        tail = self.err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {"error": f"the grader's yardstick process failed ({why}) {tail[0][:200]}".strip()}

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, 9)  # it and its worker processes (a session of their own)
            except OSError:
                pass
            self.proc.wait()
        self.err.close()


def agree(a: dict, b: dict, keys=("ceiling", "naive"), band: float = NOISE_BAND) -> bool:
    """The yardsticks `keys` within `band` of each other in the two measurements."""
    if "error" in a or "error" in b:
        return False
    return all(max(a[k], b[k]) <= (1 + band) * min(a[k], b[k]) for k in keys)


def bracket(before: dict, afters: list[dict]) -> dict:
    """What the tests read (graders.perf.compare, in the grader's kernel): each yardstick's lower
    and higher rows/s around the run, every measurement, and whether before and after agreed."""
    measured = [m for m in [before, *afters] if "error" not in m]
    errors = [m["error"] for m in [before, *afters] if "error" in m]
    if "error" in before or not afters or "error" in afters[-1]:
        return {"error": errors[0] if errors else "the grader did not measure after the run", "measurements": measured}
    after = afters[-1]
    return {
        "ceiling": [min(before["ceiling"], after["ceiling"]), max(before["ceiling"], after["ceiling"])],
        "naive": [min(before["naive"], after["naive"]), max(before["naive"], after["naive"])],
        "settled": {k: agree(before, after, (k,)) for k in ("ceiling", "naive")}, "band": NOISE_BAND, "tries": len(afters),
        "device": before["device"], "workers": before["workers"], "ready_s": before.get("ready_s"),
        "measurements": measured,
    }


# ------------------------------------------------------------------ the measuring process
_device = "cpu"  # a naive worker's device, set by _naive_init


def _naive_init(device: str) -> None:
    import torch

    global _device
    torch.set_num_threads(1)  # as Ray gives a task with num_cpus=1
    _device = device


def _naive_batch(texts: list[str]) -> int:
    """perf.naive_embedding_pipeline's per-batch work (`perf.naive_embed`): rows embedded."""
    from graders import perf

    keep, _ = perf.naive_embed(texts, _device)
    return int(keep.sum())


def _ceiling(model, tokens, batch: int, device: str) -> float:
    import torch

    from graders import models

    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    starts = list(range(0, len(ids) - batch + 1, batch)) or [0]
    models.embed_tokens(model, ids[:batch], mask[:batch])  # warm-up
    rows, i, start = 0, 0, time.perf_counter()
    while True:
        s = starts[i % len(starts)]
        rows += len(models.embed_tokens(model, ids[s:s + batch], mask[s:s + batch]))
        i += 1
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if seconds >= CEILING_SECONDS and i >= 3:
            return rows / seconds


def main(reviews: str) -> None:
    import multiprocessing

    import torch  # imported before the workers fork; no torch work happens before it

    from graders import data, models, perf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = max(1, torch.cuda.device_count()) if device == "cuda" else len(os.sched_getaffinity(0))
    texts = data.read_reviews(reviews).column("text").to_pylist()  # a folder or s3://...
    batches = [texts[i:i + NAIVE_BATCH] for i in range(0, NAIVE_BATCHES * workers * NAIVE_BATCH, NAIVE_BATCH)]
    # CPU: forked, so the workers start at once with torch imported (no torch work ran before);
    # a GPU: spawned, as CUDA cannot start in a process forked after it was asked about
    context = multiprocessing.get_context("spawn" if device == "cuda" else "fork")
    pool = context.Pool(workers, initializer=_naive_init, initargs=(device,))
    kept = [t for t in (data.clean_review_text(t) for t in texts[:CEILING_SAMPLE * 2]) if t][:CEILING_SAMPLE]
    tokens = models.tokenize(kept)
    batch = perf.CEILING_BATCH[device]
    _, model = models.load_text_model(device, threads=None if device == "cuda" else workers)
    pool.map(_naive_batch, batches[:workers], chunksize=1)  # warm: each worker's first load reads the files
    # Start-up on this machine, now: imports, reading the reviews, the model loaded here and in each
    # worker. A pipeline pays about as much before its first results (graders.perf.STARTUP_FACTOR).
    ready_s = round(time.perf_counter() - _START, 2)
    try:
        for line in sys.stdin:
            if line.strip() != "measure":
                continue
            start = time.perf_counter()
            rows = sum(pool.map(_naive_batch, batches, chunksize=1))
            naive = rows / (time.perf_counter() - start)
            ceiling = _ceiling(model, tokens, batch, device)
            print(json.dumps({"ceiling": ceiling, "naive": naive, "device": device, "workers": workers,
                              "batch": batch, "naive_rows": rows, "ready_s": ready_s}), flush=True)
    finally:
        pool.terminate()


if __name__ == "__main__":
    main(sys.argv[1])
