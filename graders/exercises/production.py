"""Phase 3 checks: 3.1 model training, 3.2 batch inference, 3.3 performance optimization."""

from __future__ import annotations

import functools

import numpy as np

from graders import data, models
from graders.checks import ACCURACY_TARGET, Tensor, _fail, exercise, expect_accuracy, expect_count, expect_schema
from graders.exercises._common import _answered, _expect_columns, _materialized, _read_back, _table
from graders.exercises.multimodal import _true_categories

TRAINING_COLUMNS = ["review_id", "embedding", "label", "split"]
SPLITS = {"train": (0.7, 0.9), "validation": (0.05, 0.15), "test": (0.05, 0.15)}  # allowed shares
PREDICTION_COLUMNS = ["review_id", "product_id", "category", "predicted_rating", "confidence"]
SUMMARY_COLUMNS = ["category", "reviews", "mean_predicted_rating"]


@functools.lru_cache(maxsize=2)
def _ratings(reviews_path: str) -> dict[str, int]:
    """review_id -> stars, for the reviews with words."""
    table = data.read_reviews(reviews_path, kept=True)
    return dict(zip(table.column("review_id").to_pylist(), table.column("rating").to_pylist()))


def _majority(ratings) -> float:
    return float(np.bincount(list(ratings), minlength=6).max() / len(ratings))


def load_classifier(checkpoint):
    """The rating classifier saved in a checkpoint as `model.pt` (a state_dict), in eval mode."""
    import os

    if checkpoint is None or not hasattr(checkpoint, "as_directory"):
        _fail("checkpoint", "a ray.train.Checkpoint", type(checkpoint).__name__,
              "use result.checkpoint (or result.get_best_checkpoint(...)) from trainer.fit().")
    with checkpoint.as_directory() as folder:
        if not os.path.exists(os.path.join(folder, "model.pt")):
            _fail("checkpoint contents", "model.pt (the classifier's state_dict)", sorted(os.listdir(folder)),
                  "save it on rank 0: torch.save(getattr(model, 'module', model).state_dict(), os.path.join(folder, 'model.pt')).")
        return models.load_rating_classifier(folder)


# --- 3.1 model training -----------------------------------------------------------------------

@exercise("31.training_data")
def _training_data(value):
    ds = _materialized(value, "training data", "training_data = reviews.map_batches(...).map_batches(Embed, ...).")
    _expect_columns(ds, TRAINING_COLUMNS, "training data", "keep review_id, and add embedding, label and split.")
    import pyarrow as pa

    table = _table(ds)
    ratings = _ratings(data.paths().reviews)
    expect_count(table.num_rows, len(ratings), "training rows", "drop only the reviews left empty after cleaning.")
    expect_schema(table, {"review_id": pa.string(), "embedding": Tensor((models.TEXT_EMBEDDING_SIZE,), "float32"),
                          "label": pa.int64(), "split": pa.string()}, "training data")
    ids = table.column("review_id").to_pylist()
    wrong = sum(label != ratings[i] - 1 for i, label in zip(ids, table.column("label").to_pylist()))
    if wrong:
        _fail("labels", "rating - 1 for every review (0..4)", f"{wrong:,} rows with another label",
              "label = batch['rating'].astype(np.int64) - 1.")
    splits = table.column("split").to_pylist()
    shares = {s: splits.count(s) / len(splits) for s in set(splits)}
    bad = {s: f"{v:.0%}" for s, v in shares.items() if s not in SPLITS or not SPLITS[s][0] <= v <= SPLITS[s][1]}
    if bad or set(shares) != set(SPLITS):
        _fail("split shares", "train ~80 %, validation ~10 %, test ~10 %", {s: f"{v:.0%}" for s, v in sorted(shares.items())},
              "split_of(review_id) from zlib.crc32(review_id) % 10: 0 -> test, 1 -> validation, else train.")
    return f"{table.num_rows:,} rows; " + ", ".join(f"{s} {shares[s]:.0%}" for s in SPLITS)


@exercise("31.result")
def _result(value):
    import ray.train

    _answered(value, "training result", "the ray.train.Result of trainer.fit()", "result = trainer.fit().")
    if not isinstance(value, ray.train.Result):
        _fail("training result", "a ray.train.Result", type(value).__name__, "result = trainer.fit().")
    if value.error is not None:
        _fail("training run", "no error", repr(value.error), "read the worker's error above and fix the training loop.")
    if value.checkpoint is None:
        _fail("checkpoint", "at least one", "none", "ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder)).")
    history = value.metrics_dataframe
    if len(history) < 2 or "val_accuracy" not in history:
        _fail("reports", "val_accuracy reported once per epoch, for 2 or more epochs",
              f"{len(history)} report(s) with {sorted(history.columns)}", "call ray.train.report once per epoch.")
    labels = list(_ratings(data.paths().reviews).values())
    expect_accuracy(value.metrics["val_accuracy"], ACCURACY_TARGET, _majority(labels), "validation accuracy")
    # Ray Train 2.60: metrics_dataframe holds the reports whose checkpoints were kept (num_to_keep), not every report
    return (f"{len(history)} reports kept with their checkpoints, val_accuracy {value.metrics['val_accuracy']:.3f}, "
            f"checkpoint at {value.checkpoint.path}")


@exercise("31.test_accuracy")
def _test_accuracy(value):
    import pyarrow.compute as pc
    import torch

    _answered(value, "test report", "{'checkpoint': ..., 'accuracy': ...}", "fill in test_report in the cell above.")
    if not isinstance(value, dict) or not {"checkpoint", "accuracy"} <= set(value):
        _fail("test report", "a dict with 'checkpoint' and 'accuracy'", repr(value)[:80], "test_report = {'checkpoint': best, 'accuracy': accuracy}.")
    model = load_classifier(value["checkpoint"])
    table = data.read_parquet_folder(data.output_path("training_data"))
    test = table.filter(pc.equal(table.column("split"), "test"))
    with torch.no_grad():
        logits = model(torch.as_tensor(np.stack(test.column("embedding").to_numpy(zero_copy_only=False))))
    truth = float((logits.argmax(1).numpy() == test.column("label").to_numpy()).mean())
    if abs(float(value["accuracy"]) - truth) > 0.005:
        _fail("test accuracy", f"{truth:.3f} (that checkpoint on the {test.num_rows} test rows)", f"{float(value['accuracy']):.3f}",
              "evaluate the checkpoint's model on the rows whose split is 'test', and nothing else.")
    expect_accuracy(truth, ACCURACY_TARGET, _majority(test.column("label").to_numpy() + 1), "test accuracy")
    return f"test accuracy {truth:.3f} on {test.num_rows} reviews no training step saw"


# --- 3.2 batch inference ----------------------------------------------------------------------

def _prediction_rows(table, what: str):
    import pyarrow as pa

    expect_schema(table, {"review_id": pa.string(), "product_id": pa.string(), "category": pa.string(),
                          "predicted_rating": pa.int64(), "confidence": pa.float32()}, what)
    ratings = _ratings(data.paths().reviews)
    ids = table.column("review_id").to_pylist()
    if len(ids) != len(set(ids)):
        _fail(f"{what} review ids", "each review once", f"{len(ids) - len(set(ids)):,} repeated", "an earlier run's files may still be there.")
    expect_count(len(ids), len(ratings), what, "predict every review with words, once.")
    categories = _true_categories(data.paths().products)
    wrong = sum(categories[p] != c for p, c in zip(table.column("product_id").to_pylist(), table.column("category").to_pylist()))
    if wrong:
        _fail(f"{what} category", "the product's category (from paths.products)", f"{wrong:,} rows with another", "look it up by product_id.")
    predicted = table.column("predicted_rating").to_numpy()
    accuracy = float(np.mean(predicted == np.array([ratings[i] for i in ids])))
    expect_accuracy(accuracy, ACCURACY_TARGET, _majority(ratings.values()), f"{what} accuracy (predicted vs true stars)")
    return accuracy


@exercise("32.predictions")
def _predictions(value):
    from graders.grading import _has_actor_stage

    ds = _materialized(value, "predictions", "predictions = reviews.map_batches(...).map_batches(Predictor, ...).")
    if _has_actor_stage(value) is False:
        _fail("model stage", "a callable class mapped with compute=ray.data.ActorPoolStrategy(...)", "no actor-pool stage",
              "load the checkpoint once per actor, in __init__ of a class, not in a function called per batch.")
    _expect_columns(ds, PREDICTION_COLUMNS, "predictions", "return exactly these keys from Predictor.__call__.")
    accuracy = _prediction_rows(_table(ds), "predictions")
    return f"{ds.count():,} predictions from an actor pool, {accuracy:.1%} match the true stars"


@exercise("32.written")
def _written(value):
    import pyarrow.fs as pafs

    again = "write with mode='overwrite' (or clear the folder first)."
    back = _read_back(value, "predictions folder", len(_ratings(data.paths().reviews)), "written = out_dir.", again)
    _prediction_rows(_table(back), "predictions read back")
    fs, folder = data.filesystem(value)
    parts = [i.base_name for i in fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.Directory]
    if not parts or not all(p.startswith("category=") for p in parts):
        _fail("folders under the output", "one category=<name> folder per category", sorted(parts)[:4] or "none",
              "write_parquet(out_dir, partition_cols=['category'], mode='overwrite').")
    return f"{back.count():,} predictions in {len(parts)} category folders, no duplicates"


@exercise("32.summary")
def _summary(value):
    ds = _materialized(value, "summary", "summary = ray.data.read_parquet(out_dir).groupby('category').aggregate(...).")
    _expect_columns(ds, SUMMARY_COLUMNS, "summary", "Count(alias_name='reviews'), Mean('predicted_rating', alias_name='mean_predicted_rating').")
    got = _table(ds).to_pandas().set_index("category").sort_index()
    rows = data.read_parquet_folder(data.output_path("predictions")).to_pandas()
    want = rows.groupby("category")["predicted_rating"].agg(["count", "mean"]).sort_index()
    if list(got.index) != list(want.index) or not (got["reviews"].to_numpy() == want["count"].to_numpy()).all():
        _fail("reviews per category", dict(want["count"]), dict(got["reviews"]), "group the predictions you wrote by category and count them.")
    if not np.allclose(got["mean_predicted_rating"].to_numpy(), want["mean"].to_numpy()):
        _fail("mean predicted rating per category", want["mean"].round(3).to_dict(), got["mean_predicted_rating"].round(3).to_dict(),
              "Mean('predicted_rating', ...).")
    return f"{len(got)} categories, {int(got['reviews'].sum()):,} reviews, consistent with the rows written"


# --- 3.3 performance optimization -------------------------------------------------------------

@exercise("33.largest_batch")
def _largest_batch(value):
    _answered(value, "batch choice", "{'peak_mb': {...}, 'budget_mb': ..., 'choice': ...}", "fill in the cell above.")
    peaks, budget, choice = value.get("peak_mb"), value.get("budget_mb"), value.get("choice")
    if not isinstance(peaks, dict) or len(peaks) < 3:
        _fail("measured peaks", "a peak memory for 3 or more batch sizes", repr(peaks)[:80], "run the measurement cell above.")
    fits = [b for b, mb in peaks.items() if mb <= budget]
    want = max(fits) if fits else None
    if choice != want:
        _fail("largest batch under the budget", want, choice,
              f"among your measurements, the biggest batch whose peak stays at or under {_mib(budget)}.")
    return f"batch_size={choice}: its measured peak ({_mib(peaks[choice])}) fits the {_mib(budget)} budget"


def _mib(value) -> str:
    return f"{value:.1f} MiB" if isinstance(value, (int, float)) else repr(value)


@exercise("33.cost_per_million")
def _cost(value):
    _answered(value, "cost estimate", "{'rows_per_s': ..., 'price_per_hour': ..., 'cost_per_million': ...}", "fill in the cell above.")
    for key in ("rows_per_s", "price_per_hour", "cost_per_million"):
        _answered(value.get(key), key, "a number", "run the cells above, then fill in cost_per_million.")
    rate, price, cost = (float(value[k]) for k in ("rows_per_s", "price_per_hour", "cost_per_million"))
    if not rate > 0:
        _fail("rows_per_s", "your measured throughput (> 0)", rate, "use the rows/s your measured run printed.")
    want = price / (rate * 3600) * 1_000_000
    if not np.isclose(cost, want, rtol=0.01):
        _fail("cost per million reviews", f"{want:.4f} (price per hour / (rows/s x 3600) x 1,000,000)", f"{cost:.4f}",
              "one million rows take 1e6 / rows_per_s seconds; multiply the hours by the price per hour.")
    return f"${cost:.4f} per million reviews at {rate:,.0f} rows/s"
