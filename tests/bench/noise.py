"""Grades that do not move with the machine's load: Phases 1 and 2, idle and beside a neighbour.

Each submission is graded K times idle and K times while a bounded neighbour outside the run
keeps every core busy (one busy process per core), alternating, in one run, through the real
`nbgrader autograde` with the sandbox (`graders.cli.grade_notebook`). Prints a table of scores
per condition, and the cells a submission must never earn:

- reference: every point, every run;
- naive (Phase 2): a correct pipeline in the slow pattern, which also replaces the notebook's
  yardsticks with slower ones: never efficiency or speedup;
- sleeping: sleeps in its model stage and patches its utilization reports to 100 %: never the
  utilization cell;
- busy beside: the real model in a stage that sleeps, with Ray tasks spinning beside it so the
  run's processes read busy: never the utilization cell (only the share of the utilization the
  model's work explains is credited, graders/work.py);
- fake: no model, a busy loop beside constant or random outputs: never the utilization,
  efficiency or speedup cells;
- precomputed: the model's outputs computed in the solution cell, before the measured run, and
  handed out during it: never the utilization, efficiency or speedup cells;
- precomputed and busy: the same, with a busy loop running while they are handed out, so the
  run's CPU time looks like the model's (the grader's fresh inputs catch it): never those cells;
- held back (Phase 2): the reference, but every embedding computed first (in the run) and then
  handed out slowly, block by block, so the "steady" rate would read several times the real one:
  never efficiency or speedup;
- forged stream (Phase 2): the naive pipeline, its rows held back and then handed out quickly
  beside a busy loop, with the arrival times rewritten in the notebook so the stream seems to
  start early (the grader times the blocks itself, graders/trusted/custody.py): never efficiency
  or speedup.

    make bench-noise                     # or: PYTHONPATH=tests .venv/bin/python tests/bench/noise.py
    BENCH_K=1 BENCH_PHASES=01_foundation make bench-noise   # a quicker look
    BENCH_K=1 BENCH_SUBMISSIONS=reference,held_back make bench-noise
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

import bad_submissions
from conftest import solution_cell
from test_autograde_phase2 import NAIVE

from graders.cli import grade_notebook

ROOT = Path(__file__).resolve().parents[2]
K = int(os.environ.get("BENCH_K", 3))
PHASES = os.environ.get("BENCH_PHASES", "01_foundation,02_advanced_processing").split(",")
ONLY = [n for n in os.environ.get("BENCH_SUBMISSIONS", "").split(",") if n]  # default: every submission
UTILIZATION = {"01_foundation": ("accelerator_stage",), "02_advanced_processing": ("accelerator_utilization",)}
SPEED = {"01_foundation": (), "02_advanced_processing": ("efficiency", "speedup")}

PRECOMPUTED_IMAGES = '''
_images = ray.data.read_images(paths.images, mode="RGB", include_paths=True).take_all()
_model = gr.models.load_vision_model("cpu")
_features, _logits = gr.models.vision_forward(_model, torch.as_tensor(np.stack([gr.models.preprocess_image(r["image"]) for r in _images])))
_score, _index = _logits.softmax(dim=1).max(dim=1)
_cached = pa.table({"product_id": [gr.data.product_id_from_path(r["path"]) for r in _images], "path": [r["path"] for r in _images],
                    "label": [gr.models.imagenet_label(i) for i in _index.tolist()], "score": _score.numpy().astype(np.float32),
                    "features": __import__("ray.data._internal.tensor_extensions.arrow", fromlist=["x"]).ArrowTensorArray.from_numpy(_features.numpy()),
                    "device": ["cpu"] * len(_images)})


def build_image_pipeline(images_path, res):
    return ray.data.from_arrow(_cached).repartition(target_num_rows_per_block=16)
'''

PRECOMPUTED_TEXTS = '''from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray
_tok, _model = gr.models.load_text_model("cpu")
_reviews = gr.data.read_reviews(paths.reviews, kept=True)
_vectors = np.concatenate([gr.models.embed_texts(_tok, _model, _reviews["text"].to_pylist()[i:i + 256])
                           for i in range(0, _reviews.num_rows, 256)])
_cached = pa.table({"review_id": _reviews["review_id"], "product_id": _reviews["product_id"],
                    "embedding": ArrowTensorArray.from_numpy(_vectors)})


def build_embedding_pipeline(reviews_path, res):
    return ray.data.from_arrow(_cached).repartition(target_num_rows_per_block=64)
'''

FAKE_TEXTS = '''def build_embedding_pipeline(reviews_path, res):
    def fake(batch):
        import time as _time

        end = _time.monotonic() + 0.2  # busy, as if the model ran
        while _time.monotonic() < end:
            pass
        texts = [gr.data.clean_review_text(t) for t in batch["text"]]
        keep = np.array([bool(t) for t in texts], dtype=bool)
        vectors = np.random.default_rng(0).normal(size=(int(keep.sum()), 384)).astype(np.float32)
        return {"review_id": batch["review_id"][keep], "product_id": batch["product_id"][keep],
                "embedding": vectors / np.linalg.norm(vectors, axis=1, keepdims=True)}

    return ray.data.read_parquet(reviews_path).repartition(target_num_rows_per_block=64).map_batches(fake, batch_size=None)
'''

# The model's real embeddings of the course's reviews, computed in the solution cell (before the
# measured run), handed out during it while a busy loop keeps the CPU "utilized".
PRECOMPUTED_BUSY_TEXTS = PRECOMPUTED_TEXTS.replace(
    "    return ray.data.from_arrow(_cached).repartition(target_num_rows_per_block=64)", '''    def busy(batch):
        end = __import__("time").monotonic() + 0.5  # busy, as if the model ran
        while __import__("time").monotonic() < end:
            pass
        return batch

    return ray.data.from_arrow(_cached).repartition(target_num_rows_per_block=64).map_batches(busy, batch_size=None)''')
assert PRECOMPUTED_BUSY_TEXTS != PRECOMPUTED_TEXTS


def _replace(source: str):
    def mutate(nb, gid):
        solution_cell(nb, gid).source = source.strip() + "\n"
        return nb

    return mutate


def _held_back(nb):
    cell = solution_cell(nb, "embedding_pipeline")
    start, end = "    return reviews.map_batches(clean_and_tokenize", "    ### END SOLUTION"
    assert start in cell.source and end in cell.source
    cell.source = cell.source.replace(start, "    embedded = reviews.map_batches(clean_and_tokenize").replace(end, """
    def drip(block):  # everything is computed first, then handed out slowly, as if it streamed
        __import__("time").sleep(0.5)
        return block

    return embedded.materialize().map_batches(drip, batch_size=None)
""" + end)
    return nb


# The naive pipeline, its rows held back and handed out quickly beside a busy loop (so the CPU
# looks busy while they come), and the run's arrival times rewritten in the notebook so the first
# block seems to come 8 s in: what the kernel says of its stream is not what the grader saw.
FORGED_STREAM = NAIVE.split("\n\n# An attack")[0].replace("    return reviews.map_batches(embed, batch_size=8)", """
    def drip(block):
        end = __import__("time").monotonic() + 0.7
        while __import__("time").monotonic() < end:
            pass
        return block

    return reviews.map_batches(embed, batch_size=8).materialize().repartition(16).map_batches(drip, batch_size=None)


_run_pipeline = run_pipeline


def run_pipeline(*args, **kwargs):
    run = _run_pipeline(*args, **kwargs)
    if run.arrivals:
        shift = run.arrivals[0][0] - min(8.0, run.arrivals[0][0])
        run.arrivals = [(t - shift, n) for t, n in run.arrivals]
    return run""")
assert FORGED_STREAM.count("def run_pipeline") == 1


def _sleeping(gid: str, anchor: str, sleep: str):
    def mutate(nb, _gid):
        cell = solution_cell(nb, gid)
        assert anchor in cell.source, anchor
        cell.source = cell.source.replace(anchor, anchor + sleep) + "\n" + bad_submissions.FAKE_TELEMETRY
        return nb

    return mutate


SUBMISSIONS = {
    "01_foundation": {
        "reference": None,
        "sleeping": bad_submissions.KINDS["faked_telemetry"].mutate,
        "fake": bad_submissions._chain(
            bad_submissions._edit("image_pipeline", "            features, logits = gr.models.vision_forward(self.model, pixels)\n",
                                  bad_submissions.FAKE_MODEL),
            bad_submissions._edit("image_pipeline", "def build_image_pipeline(", bad_submissions.SPIN)),
        "precomputed": lambda nb: _replace(PRECOMPUTED_IMAGES)(nb, "image_pipeline"),
        "precomputed_busy": bad_submissions.KINDS["precomputed_busy"].mutate,
        "busy_beside": bad_submissions.KINDS["busy_beside"].mutate,
    },
    "02_advanced_processing": {
        "reference": None,
        "naive": lambda nb: _replace(NAIVE)(nb, "embedding_pipeline"),
        "sleeping": lambda nb: _sleeping("embedding_pipeline", "        def __call__(self, batch):\n",
                                         "            __import__('time').sleep(1.0)\n")(nb, None),
        "fake": lambda nb: _replace(FAKE_TEXTS)(nb, "embedding_pipeline"),
        "precomputed": lambda nb: _replace(PRECOMPUTED_TEXTS)(nb, "embedding_pipeline"),
        "precomputed_busy": lambda nb: _replace(PRECOMPUTED_BUSY_TEXTS)(nb, "embedding_pipeline"),
        "held_back": _held_back,
        "forged_stream": lambda nb: _replace(FORGED_STREAM)(nb, "embedding_pipeline"),
        "busy_beside": bad_submissions._chain(
            bad_submissions._edit("embedding_pipeline", "        def __call__(self, batch):\n",
                                  bad_submissions.SLEEPY_STAGE.format(seconds=0.5)),
            bad_submissions._edit("embedding_pipeline", "        def __init__(self):\n", bad_submissions.BUSY_BESIDE.format(busy=2))),
    },
}


def never(phase: str, name: str) -> set[str]:
    """The cells this submission must never earn."""
    if name == "reference":
        return set()
    if name in ("naive", "held_back", "forged_stream"):
        return set(SPEED[phase])
    if name in ("sleeping", "busy_beside"):
        return set(UTILIZATION[phase])
    return set(UTILIZATION[phase]) | set(SPEED[phase])


def grade(phase: str, name: str, mutate) -> list[dict]:
    nb = nbformat.read(ROOT / "solutions" / phase / "04_validation.ipynb", as_version=4)
    if mutate is not None:
        nb = mutate(nb)
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        path = Path(tmp) / "04_validation.ipynb"
        nbformat.write(nb, path)
        return grade_notebook(ROOT / "solutions" / phase, path, student=name)


def neighbour(loaded: bool):
    if not loaded:
        return []
    spin = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(len(os.sched_getaffinity(0)))]


def main() -> int:
    rows, problems = [], []
    for phase in PHASES:
        for name, mutate in SUBMISSIONS[phase].items():
            if ONLY and name not in ONLY:
                continue
            results = {False: [], True: []}
            for k in range(K):
                for loaded in (k % 2 == 1, k % 2 == 0):  # alternate which condition goes first
                    busy = neighbour(loaded)
                    start = time.monotonic()
                    try:
                        cells = grade(phase, name, mutate)
                    finally:
                        for p in busy:
                            p.kill()
                            p.wait()
                    points = sum(c["points"] for c in cells)
                    most = sum(c["max_points"] for c in cells)
                    earned = {c["id"] for c in cells if c["passed"]} & never(phase, name)
                    inconclusive = sum(c["inconclusive"] for c in cells)
                    results[loaded].append((points, earned, inconclusive))
                    if name == "reference" and points < most:
                        problems.append(f"{phase} reference {'loaded' if loaded else 'idle'}: {points}/{most}: "
                                        + "; ".join(f"{c['id']}: {c['reason']}" for c in cells if not c["passed"]))
                    if earned:
                        problems.append(f"{phase} {name} {'loaded' if loaded else 'idle'} earned {sorted(earned)}")
                    print(f"{phase} {name:12s} {'loaded' if loaded else 'idle  '} {points:g}/{most:g} "
                          f"in {time.monotonic() - start:.0f} s; unearned points taken: {sorted(earned) or 'none'}", flush=True)
            for loaded in (False, True):
                if sum(i for _, _, i in results[loaded]) > 1:
                    problems.append(f"{phase} {name} {'loaded' if loaded else 'idle'}: more than one inconclusive")
            rows.append((phase, name, most, results))
    print(f"\n| phase | submission | idle (K={K}) | loaded, {len(os.sched_getaffinity(0))} busy processes (K={K}) | must never earn |")
    print("| --- | --- | --- | --- | --- |")
    for phase, name, most, results in rows:
        cols = [", ".join(f"{p:g}" + (" (took " + ", ".join(sorted(e)) + ")" if e else "") for p, e, _ in results[c])
                for c in (False, True)]
        print(f"| {phase} | {name} | {cols[0]} of {most:g} | {cols[1]} of {most:g} | {', '.join(sorted(never(phase, name))) or '-'} |")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
