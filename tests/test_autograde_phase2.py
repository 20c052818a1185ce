"""The real `nbgrader autograde` grades Phase 2 right: it measures optimization, it does not trust it.

- reference: the validation solved as in `solutions/` -> every point, graded while a neighbour
  process keeps a core busy (the grade must not move with other load);
- blank: the release as handed out -> 0 on every graded cell;
- naive: a correct pipeline in the slow pattern (the model loaded in a per-batch function, small
  batches) -> its counts and schema pass; efficiency and speedup fail, and the feedback names the
  knob to turn (load the model once per actor). It also replaces the notebook's yardsticks with
  slower ones and hands a slow ceiling to the grader, and rewrites its run's arrival times (every
  block at the start): nothing changes, as the grader measures its own yardsticks and times the
  blocks itself (graders/trusted/custody.py). This student is graded on a real two-node Ray
  cluster (RAY_ADDRESS): the pipeline must have run on both nodes and left no actor alive.

Only the validation runs here: the Phase 2 lessons run under nbval (`make test`).
"""

from __future__ import annotations

import re
from html import unescape

import pytest

from cluster import nodes_used, spread
from conftest import autograded, cell_scores, expect_full_marks_without_stderr, expect_zero_everywhere, graded_class
from conftest import printed, solution_cell

pytestmark = pytest.mark.slow
PHASE = "02_advanced_processing"
VALIDATION = "04_validation"

NAIVE = '''
def build_embedding_pipeline(reviews_path, res):
    def embed(batch):
        tokenizer, model = gr.models.load_text_model(gr.models.device_for(res.accelerator))
        texts = [gr.data.clean_review_text(t) for t in batch["text"]]
        keep = np.array([bool(t) for t in texts], dtype=bool)
        tokens = gr.models.tokenize([t for t in texts if t], tokenizer=tokenizer)
        return {"review_id": batch["review_id"][keep], "product_id": batch["product_id"][keep],
                "embedding": gr.models.embed_tokens(model, tokens["input_ids"], tokens["attention_mask"])}

    reviews = ray.data.read_parquet(reviews_path).repartition(target_num_rows_per_block=32)
    return reviews.map_batches(embed, batch_size=8)


# An attack on the yardsticks: slower ones would make this pipeline look efficient.
_slow = gr.perf.Ceiling(rows=100, seconds=100.0, batch_size=64, device="cpu")
gr.perf.model_ceiling = lambda *args, **kwargs: _slow
gr.grading.publish(ceiling=_slow)

# An attack on the stream's times: the notebook says every block came at once, at the start.
_run_pipeline = run_pipeline


def run_pipeline(*args, **kwargs):
    run = _run_pipeline(*args, **kwargs)
    run.arrivals = [(0.001 * i, n) for i, (_, n) in enumerate(run.arrivals)]
    return run
'''


def _naive(nb):
    solution_cell(nb, "embedding_pipeline").source = NAIVE.strip()
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory, class_cluster):
    return graded_class(tmp_path_factory.mktemp("class2"), PHASE, VALIDATION, on_cluster=("naive",), loaded=("reference",),
                        naive=_naive, cluster=class_cluster)


def scores(course, student):
    return cell_scores(course.root, PHASE, VALIDATION, student)


def test_reference_scores_full_marks_without_stderr(course):
    expect_full_marks_without_stderr(course.root, PHASE, VALIDATION)
    said = printed(autograded(course.root, PHASE, VALIDATION, "reference"), "efficiency")
    assert "efficiency" in said and "the grader's, measured before and after your run" in said, said


def test_blank_scores_zero_on_every_graded_cell(course):
    expect_zero_everywhere(course.root, PHASE, VALIDATION)


def test_naive_pipeline_is_correct_but_not_optimized(course):
    cells = scores(course, "naive")
    for name in ("embedding_count", "embedding_schema"):
        assert cells[name][0] == cells[name][1], (name, cells)
    for name in ("efficiency", "speedup"):
        assert cells[name][0] == 0, (name, cells)
    said = printed(autograded(course.root, PHASE, VALIDATION, "naive"), "efficiency")
    stream = re.search(r"steady, (\d+) output blocks from ([\d.]+) s to ([\d.]+) s", said)
    assert stream and 1.0 < float(stream[2]) < float(stream[3]), f"not the stream the grader saw: {said}"
    html = unescape((course.root / "feedback" / "naive" / PHASE / f"{VALIDATION}.html").read_text())
    assert "load the model once per actor" in html
    assert "BEGIN HIDDEN TESTS" not in html


def test_naive_pipeline_ran_on_both_nodes_of_the_cluster(course):
    run = printed(autograded(course.root, PHASE, VALIDATION, "naive"), "run_pipelines")
    assert nodes_used(run, "your pipeline") == 2, run
    assert course.on_cluster, "nothing ran on the cluster"
    print(run, spread(course.on_cluster), sep="\n")
