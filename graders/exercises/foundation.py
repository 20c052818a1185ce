"""Phase 1 lesson checks (01_foundation)."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from graders import data
from graders.checks import Tensor, _fail, exercise, expect_count, expect_schema
from graders.exercises._common import (
    _answered,
    _expect_columns,
    _expect_float32,
    _materialized,
    _read_back,
)

# --- 01_install_and_verify ---------------------------------------------------------------------

@exercise("11.accelerator")
def _accelerator(value):
    import torch

    want = "cuda" if torch.cuda.is_available() else "cpu"
    hint = "use torch.cuda.is_available() to choose 'cuda' or 'cpu'."
    _answered(value, "accelerator", repr(want), hint)
    if value != want:
        _fail("accelerator", repr(want), repr(value), hint)
    return f"this machine computes on '{value}'"


@exercise("11.cluster_cpus")
def _cluster_cpus(value):
    import ray

    want = int(ray.cluster_resources().get("CPU", 0))
    hint = "read ray.cluster_resources()['CPU'] and make it an int with int(...)."
    _answered(value, "CPUs in the cluster", f"the int {want}", hint)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail("CPUs in the cluster", f"the int {want}", f"{value!r} (a {type(value).__name__})", hint)
    if value != want:
        _fail("CPUs in the cluster", want, value, hint)
    return f"Ray can schedule on {value} CPUs"


@exercise("11.squares")
def _squares(value):
    ds = _materialized(value, "squares", "squares = ray.data.range(1000).map_batches(...).")
    expect_schema(ds, {"id": pa.int64(), "square": pa.int64()}, "squares")
    rows = ds.take_all()
    expect_count(len(rows), 1000, "rows of squares", "start from ray.data.range(1000).")
    bad = [r for r in rows if r["square"] != r["id"] ** 2]
    if bad:
        _fail("square column", "id ** 2 on every row", f"{len(bad)} wrong rows, e.g. {bad[0]}",
              "set batch['square'] = batch['id'] ** 2 and return the batch.")
    return "1,000 rows, every square right"


# --- 02_multimodal_basics ----------------------------------------------------------------------

@exercise("12.read_images")
def _read_images(value):
    ds = _materialized(value, "images", "images = ray.data.read_images(paths.images, ...).")
    n = ds.count()
    expect_count(n, data.counts().images, "images", "read the images folder (paths.images) with ray.data.read_images.")
    _expect_columns(ds, ["image", "path"], "image", "pass include_paths=True to read_images.")
    grey = [r["path"] for r in ds.take(200) if np.asarray(r["image"]).shape[-1] != 3]
    if grey:
        _fail("image shape", "(height, width, 3) for every image", f"{len(grey)} other shapes, e.g. {grey[0]}",
              "pass mode='RGB': the digits are greyscale PNGs and the model needs 3 channels.")
    return f"{n} RGB images with their paths"


@exercise("12.read_text")
def _read_text(value):
    ds = _materialized(value, "messages", "messages = ray.data.read_text(paths.support, ...).")
    expect_count(ds.count(), data.counts().messages, "support messages",
                 "read paths.support with file_extensions=['txt'] so NOTICE.md is not a record.")
    _expect_columns(ds, ["path", "text"], "messages", "pass include_paths=True to read_text.")
    expect_schema(ds, {"text": pa.string(), "path": pa.string()}, "messages")
    return f"{ds.count()} support messages"


@exercise("12.read_parquet")
def _read_parquet(value):
    ds = _materialized(value, "products", "products = ray.data.read_parquet(...).")
    expect_count(ds.count(), data.counts().products, "products", "read paths.products (not customers) with ray.data.read_parquet.")
    if "product_id" not in ds.schema().names:
        _fail("products columns", "a 'product_id' column", ds.schema().names, "read paths.products with ray.data.read_parquet.")
    return f"{ds.count()} products with columns {ds.schema().names}"


@exercise("12.product_ids")
def _product_ids(value):
    ds = _materialized(value, "images with product ids", "with_ids = images.map_batches(add_product_id, ...).")
    names = ds.schema().names
    missing = [c for c in ("image", "path", "product_id") if c not in names]
    if missing:
        _fail("images with product ids columns", "['image', 'path', 'product_id']", sorted(names),
              "add batch['product_id'] to the batch you were given and return that batch, so 'image' and 'path' stay.")
    rows = ds.select_columns(["path", "product_id"]).take_all()
    expect_count(len(rows), data.counts().images, "images with product ids")
    wrong = [r for r in rows if r["product_id"] != data.product_id_from_path(r["path"])]
    if wrong:
        _fail("product_id", "the id in each file name", f"{len(wrong)} mismatches, e.g. {wrong[0]}",
              "use gr.data.product_id_from_path on every path in the batch.")
    return "every image carries its product id"


@exercise("12.classified")
def _classified(value):
    ds = _materialized(value, "classified images",
                       "classified = with_ids.map_batches(ImageClassifier, compute=ray.data.ActorPoolStrategy(...), ...).")
    _expect_float32(ds, "score", "classified images")
    expect_schema(ds, {"product_id": pa.string(), "path": pa.string(), "label": pa.string(), "score": pa.float32()},
                  "classified images")
    rows = ds.take_all()
    expect_count(len(rows), data.counts().images, "classified images")
    scores = np.array([r["score"] for r in rows])
    if not (scores.min() >= 0 and scores.max() <= 1):
        _fail("score", "a probability in [0, 1]", f"{scores.min():.3g} .. {scores.max():.3g}",
              "take logits.softmax(dim=1).max(dim=1): the largest probability and its class index.")
    cats = [r for r in rows if data.image_source_from_path(r["path"]) == "chelsea"]
    cat_words = ("cat", "Mau", "tabby", "Persian", "Siamese", "lynx")
    if cats and not any(any(w in r["label"] for w in cat_words) for r in cats):
        _fail("labels of the cat photos", "a cat label", [r["label"] for r in cats][:3],
              "preprocess with gr.models.preprocess_image and name the argmax with gr.models.imagenet_label.")
    if cats:
        return f"{len(rows)} images classified; the cat photo says '{cats[0]['label']}'"
    return f"{len(rows)} images classified"


# --- 03_framework_integration ------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _true_pixel_means(images_path: str) -> np.ndarray:
    """Mean of the model input (gr.models.preprocess_image) of every image, sorted."""
    import io

    import pyarrow.fs as pafs
    from PIL import Image

    from graders.models import preprocess_image

    fs, base = pafs.FileSystem.from_uri(images_path)
    means = []
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.is_file and info.path.endswith((".jpg", ".png")):
            with fs.open_input_stream(info.path) as f:
                image = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
            means.append(float(preprocess_image(image).mean()))
    return np.sort(np.array(means))


@exercise("13.pixel_means")
def _pixel_means(value):
    n = data.counts().images
    hint = "append batch['pixels'].mean(dim=(1, 2, 3)) for every batch, then torch.cat(...).numpy()."
    _answered(value, "pixel means", f"a 1-D array of {n} numbers", hint)
    if isinstance(value, (list, tuple)) and value and np.ndim(value[0]) == 1:
        _fail("pixel means", f"one array of {n} numbers", f"a list of {len(value)} arrays (one per batch)",
              "join them into one array: torch.cat(pixel_means).numpy().")
    try:
        means = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        _fail("pixel means", f"numbers (a 1-D array of {n})", f"{type(value).__name__} ({exc})", hint)
    if means.shape != (n,):
        _fail("pixel means", f"one value per image, shape ({n},)", means.shape, hint)
    if not np.isfinite(means).all():
        _fail("pixel means", "finite numbers", f"{int((~np.isfinite(means)).sum())} NaN or inf values", hint)
    if means.min() >= 0 and means.max() > 3:
        _fail("pixel means", "means of the normalized model input (roughly -2 to 2)",
              f"values from {means.min():.1f} to {means.max():.1f}, like raw 0-255 pixels",
              "average the 'pixels' column (the preprocessed input), not the raw 'image'.")
    truth = _true_pixel_means(data.paths().images)
    worst = float(np.abs(np.sort(means) - truth).max())
    if worst > 1e-3:
        _fail("pixel means", "the mean of each image's model input over channels, height and width",
              f"values up to {worst:.3g} away from it", "average over all three dimensions: .mean(dim=(1, 2, 3)).")
    return f"{n} image means, from {means.min():.2f} to {means.max():.2f}"


@exercise("13.embeddings")
def _embeddings(value):
    ds = _materialized(value, "embeddings",
                       "embeddings = messages.map_batches(Embedder, compute=ray.data.ActorPoolStrategy(...), ...).materialize().")
    _expect_float32(ds, "embedding", "embeddings")
    expect_schema(ds, {"ticket_id": pa.string(), "embedding": Tensor((384,), "float32")}, "embeddings")
    n = data.counts().messages
    expect_count(ds.count(), n, "embeddings", "embed every message once: map_batches returns one row per input row.")
    rows = ds.take_all()
    ids = sorted(r["ticket_id"] for r in rows)
    want = [f"T{i:06d}" for i in range(1, n + 1)]
    if ids != want:
        _fail("ticket ids", f"{want[0]} .. {want[-1]}, each once", f"{ids[:3]}...",
              "use gr.data.ticket_id_from_path on every path in the batch.")
    vectors = np.stack([r["embedding"] for r in rows])
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        _fail("embedding norms", "1.0 (L2-normalized)", norms[:3].round(3), "use gr.models.embed_texts, which normalizes.")
    if vectors.std(axis=0).mean() < 1e-3:
        _fail("embeddings", "a different vector for different messages", "(nearly) the same vector for every message",
              "embed batch['text'], the messages themselves.")
    return f"{n} unit-length 384-d embeddings"


@exercise("13.parquet_written")
def _parquet_written(value):
    hint = "embeddings.write_parquet(out_dir, mode='overwrite')."
    back = _read_back(None if value is None else str(value), "Parquet folder", data.counts().messages, hint,
                      "write with mode='overwrite' so a re-run replaces the files instead of adding more.")
    rows = back.count()
    expect_count(rows, data.counts().messages, "rows read back from your Parquet folder",
                 "write with mode='overwrite' so a re-run replaces the files instead of adding more.")
    expect_schema(back, {"ticket_id": pa.string(), "embedding": Tensor((384,), "float32")}, "rows read back")
    return f"{rows} rows round-trip through Parquet at {value}"
