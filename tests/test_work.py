"""graders.work: a utilization point counts only for the model's own work in the measured run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from graders import data, models, work
from graders.checks import CheckFailed
from graders.grading import PipelineRun
from graders.telemetry import UtilizationReport

pytestmark = pytest.mark.slow  # loads the course's models and data


def _report(cpu_run: float, seconds: float = 10.0) -> UtilizationReport:
    """A measurement of the run's own processes: `cpu_run` % of 2 cores for `seconds`."""
    samples = [{"t": i * 0.1, "cpu": 90.0, "gpu": [], "gpu_mem": [], "cpu_run": cpu_run, "cpu_wait": 0.0}
               for i in range(int(seconds * 10))]
    return UtilizationReport.from_samples(samples, {"gpus": [], "nvml": "none here", "cpu_count": 2, "scope": "a test"}, 0.1)


@pytest.fixture(scope="module")
def reviews():
    data.prepare()
    table = data.read_reviews(kept=True).slice(0, 12)
    tokenizer, model = models.load_text_model("cpu")
    embedding = models.embed_texts(tokenizer, model, table.column("text").to_pylist())
    from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

    return table.column("review_id"), embedding, ArrowTensorArray


def _run(ids, vectors, tensor, report) -> PipelineRun:
    return PipelineRun("your pipeline", rows=pa.table({"review_id": ids, "embedding": tensor.from_numpy(vectors)}),
                       report=report)


def test_the_models_own_embeddings_computed_in_the_run_pass(reviews):
    ids, vectors, tensor = reviews
    work.expect_model_work(_run(ids, vectors, tensor, _report(90.0)), "text")


def test_embeddings_computed_before_the_measured_run_earn_nothing(reviews):
    ids, vectors, tensor = reviews
    with pytest.raises(CheckFailed, match="were they computed before the measured run"):
        work.expect_model_work(_run(ids, vectors, tensor, _report(0.0)), "text")


def test_random_embeddings_earn_nothing_however_busy_the_cpu(reviews):
    ids, vectors, tensor = reviews
    noise = np.random.default_rng(0).normal(size=vectors.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    with pytest.raises(CheckFailed, match="sampled rows differ from what the reference model computes"):
        work.expect_model_work(_run(ids, noise, tensor, _report(100.0)), "text")


def test_a_constant_label_with_random_features_earns_nothing():
    from pyarrow import fs as pafs
    from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

    root = data.prepare().images
    fs, base = data.filesystem(root)
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(base)) if f.is_file)[:6]
    features = np.random.default_rng(1).random((len(files), 1280), dtype=np.float32)
    rows = pa.table({"path": files, "label": ["tabby cat"] * len(files), "features": ArrowTensorArray.from_numpy(features)})
    with pytest.raises(CheckFailed, match="sampled rows differ"):
        work.expect_model_work(PipelineRun("image pipeline", rows=rows, report=_report(100.0)), "image")


def test_utilization_is_credited_only_for_the_share_the_models_work_explains():
    """A run on 2 cores that used 18 CPU-s at a measured 90 %: rows that need 6 CPU-s of the model
    explain 3 x 6 + 2 x 2 = 22 CPU-s and keep all 90 %; rows that need 0.6 CPU-s explain 5.8, so
    5.8/18 of the 90 % is credited."""
    report = _report(90.0)  # 90 % of 2 cores for 10 s: 18 CPU-s
    assert report.run_cpu_seconds == pytest.approx(18.0) and report.cores == 2
    assert work.credited_utilization(report, 1000, 0.006, "text") == (pytest.approx(90.0), pytest.approx(22.0))
    credited, explained = work.credited_utilization(report, 100, 0.006, "text")
    assert (credited, explained) == (pytest.approx(90.0 * 5.8 / 18), pytest.approx(5.8))
    report.device = "gpu"  # a GPU run: its utilization is the GPU's, nothing here scales it
    assert work.credited_utilization(report, 100, 0.006, "text") is None


def test_a_busy_run_whose_rows_need_little_of_the_model_is_not_credited_its_utilization(reviews):
    """The model's own embeddings (the outputs and the work checks pass) from a run whose
    processes were busy far beyond what 12 rows need: a busy loop beside a sleeping stage."""
    ids, vectors, tensor = reviews
    run = _run(ids, vectors, tensor, _report(90.0))
    work.expect_model_work(run, "text")  # the efficiency and speedup cells ask this much
    with pytest.raises(CheckFailed, match=r"utilization counts the model's work only: the run used 18.0 CPU-s, "
                                          r"but its rows explain at most [0-9.]+ \(3 x the [0-9.]+ CPU-s the model needs "
                                          r"for its 12 rows, and 2 CPU-s for each of 2 cores to start up\)"):
        work.expect_model_work(run, "text", utilization=70.0)


def test_repeated_rows_explain_no_more_cpu_time_than_the_inputs_they_repeat(reviews):
    """The model's own 12 embeddings, each handed out 100 times: 1,200 rows would explain the
    busy run's 18 CPU-s; the 12 distinct reviews do not."""
    ids, vectors, tensor = reviews
    run = _run(pa.concat_arrays([ids.combine_chunks()] * 100), np.tile(vectors, (100, 1)), tensor, _report(90.0))
    assert work.credited_utilization(run.report, 1200, 0.006, "text")[0] == pytest.approx(90.0)
    with pytest.raises(CheckFailed, match=r"for its 12 rows \(repeated or unknown inputs counted once\)"):
        work.expect_model_work(run, "text", utilization=70.0)


def _timed_report(busy_until: float, seconds: float = 10.0) -> UtilizationReport:
    """The run's processes busy on 2 cores (90 %) until `busy_until`, idle after, with the CPU
    time of each 0.1 s sample as the grader's meter records it."""
    samples = [{"t": i * 0.1, "cpu": 90.0, "gpu": [], "gpu_mem": [], "cpu_wait": 0.0,
                "cpu_run": 90.0 if i * 0.1 < busy_until else 0.0, "cpu_run_s": 0.18 if i * 0.1 < busy_until else 0.0}
               for i in range(int(seconds * 10))]
    return UtilizationReport.from_samples(samples, {"gpus": [], "nvml": "none here", "cpu_count": 2, "scope": "a test"}, 0.1)


def test_a_stream_handed_out_after_it_was_computed_earns_nothing(reviews):
    """Every embedding computed in the run's first 8 s, then handed out one block at a time over
    its last 1.5 s: the steady rate would read several times the real one; the CPU time between
    the first block and the last says the work was done before. Streamed as computed: passes."""
    ids, vectors, tensor = reviews
    held = _run(ids, vectors, tensor, _timed_report(busy_until=8.0))
    held.arrivals = [(8.4 + 0.12 * i, 1) for i in range(len(vectors))]
    with pytest.raises(CheckFailed, match=r"from your first output block to your last \(8.4-9.7 s\) the run used 0.0 s"):
        work.expect_model_work(held, "text")
    streamed = _run(ids, vectors, tensor, _timed_report(busy_until=8.0))
    streamed.arrivals = [(1.0 + 0.6 * i, 1) for i in range(len(vectors))]
    work.expect_model_work(streamed, "text")


# ------------------------------------------------------------------ the grader's fresh inputs
@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The grader's copy of the reviews and images (graders/trusted/inputs.py), as a graded run
    sees it, and the grader's note that it renewed them (measured.json, read in its kernel)."""
    from graders.trusted.inputs import FreshInputs

    data.prepare()
    inputs = FreshInputs(("reviews", "images"), seed=7)
    monkeypatch.setenv("COURSE_INPUTS", str(inputs.shown))
    (tmp_path / "measured.json").write_text('{"inputs": "renewed"}')
    monkeypatch.setenv("COURSE_MEASURED", str(tmp_path / "measured.json"))
    yield inputs
    inputs.close()
    assert not inputs.shown.exists() and not inputs.staged.exists()


def _image_files(folder: str) -> dict[str, bytes]:
    from pathlib import Path

    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_fresh_inputs_keep_every_file_id_and_count_and_change_every_kept_review_and_image(fresh):
    from PIL import Image

    original = data.paths(root=data.data_root())  # root given: the course's own files, never the grader's copy
    seen = data.paths()
    assert (seen.reviews, seen.images) == (str(fresh.shown / "reviews"), str(fresh.shown / "images"))
    assert seen.support == original.support
    plain = data.read_reviews(seen.reviews)
    assert plain.equals(data.read_reviews(original.reviews)), "before the measured cell the run sees a plain copy"
    assert _image_files(seen.images) == _image_files(original.images)
    fresh.stage()
    assert fresh.staged.stat().st_mode & 0o777 == 0o700, "the sandbox user must not read the salted copy before it is shown"
    fresh.reveal()
    salted = data.read_reviews(data.paths().reviews)
    for column in ("review_id", "product_id", "rating"):
        assert salted.column(column).equals(plain.column(column))
    kept = data.read_reviews(data.paths().reviews, kept=True)
    assert kept.column("review_id").equals(data.read_reviews(original.reviews, kept=True).column("review_id"))
    before, after = plain.column("text").to_pylist(), salted.column("text").to_pylist()
    assert all((a != b) == bool(data.clean_review_text(a)) for a, b in zip(before, after)), "kept texts change, blank ones stay"
    files, salted_files = _image_files(original.images), _image_files(data.paths().images)
    assert files.keys() == salted_files.keys() and all(files[n] != salted_files[n] for n in files)
    for name in list(files)[:: len(files) // 6]:
        with Image.open(fresh.shown / "images" / name) as a, Image.open(f"{original.images}/{name}") as b:
            assert (a.size, a.mode, a.format) == (b.size, b.mode, b.format)


def test_embeddings_computed_before_the_inputs_were_renewed_earn_nothing(reviews, fresh):
    """The model's real embeddings of the course's reviews, with CPU time to spare: after the
    grader's swap they are another text's embeddings. Computed from the swapped-in texts: pass."""
    ids, vectors, tensor = reviews
    fresh.stage()
    fresh.reveal()
    with pytest.raises(CheckFailed, match="wrote this run's inputs afresh just before it started"):
        work.expect_model_work(_run(ids, vectors, tensor, _report(90.0)), "text")
    text = dict(zip(*data.read_reviews(data.paths().reviews, kept=True).select(["review_id", "text"]).columns))
    tokenizer, model = models.load_text_model("cpu")
    now = models.embed_texts(tokenizer, model, [text[i].as_py() for i in ids])
    work.expect_model_work(_run(ids, now, tensor, _report(90.0)), "text")


def test_image_features_computed_before_the_inputs_were_renewed_earn_nothing(fresh):
    import torch
    from PIL import Image
    from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

    names = sorted(_image_files(data.paths().images))[::12]
    model = models.load_vision_model("cpu")

    def outputs(folder):
        pixels = torch.as_tensor(np.stack([models.preprocess_image(np.asarray(Image.open(f"{folder}/{n}").convert("RGB")))
                                           for n in names]))
        features, logits = models.vision_forward(model, pixels)
        return pa.table({"path": [f"{folder}/{n}" for n in names],
                         "label": [models.imagenet_label(i) for i in logits.argmax(1).tolist()],
                         "features": ArrowTensorArray.from_numpy(features.numpy())})

    before = outputs(data.paths().images)
    fresh.stage()
    fresh.reveal()
    with pytest.raises(CheckFailed, match="wrote this run's inputs afresh"):
        work.expect_model_work(PipelineRun("image pipeline", rows=before, report=_report(90.0)), "image")
    work.expect_model_work(PipelineRun("image pipeline", rows=outputs(data.paths().images), report=_report(90.0)), "image")
