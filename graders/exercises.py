"""The lesson exercises that `check("<id>", value)` knows, one small function each.

Each function gets the learner's value, raises `CheckFailed` with a hint when it is wrong, and
returns a one-line description of what passed. Ids are `<phase><lesson>.<name>`, e.g. "11.accelerator".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from graders import data
from graders.checks import Tensor, _fail, exercise, expect_count, expect_schema


def _materialized(value, what: str):
    if not hasattr(value, "materialize"):
        _fail(what, "a Ray Dataset", type(value).__name__, "return the Dataset, e.g. ray.data.read_...(...).")
    return value.materialize()


# --- 01_install_and_verify ---------------------------------------------------------------------

@exercise("11.accelerator")
def _accelerator(value):
    import torch

    want = "cuda" if torch.cuda.is_available() else "cpu"
    if value != want:
        _fail("accelerator", repr(want), repr(value), "use torch.cuda.is_available() to choose 'cuda' or 'cpu'.")
    return f"this machine computes on '{value}'"


@exercise("11.cluster_cpus")
def _cluster_cpus(value):
    import ray

    want = int(ray.cluster_resources().get("CPU", 0))
    if value != want:
        _fail("CPUs in the cluster", want, value, "read ray.cluster_resources()['CPU'] and make it an int.")
    return f"Ray can schedule on {value} CPUs"


@exercise("11.squares")
def _squares(value):
    ds = _materialized(value, "squares")
    expect_schema(ds, {"id": pa.int64(), "square": pa.int64()}, "squares")
    rows = ds.take_all()
    expect_count(len(rows), 1000, "rows of squares")
    bad = [r for r in rows if r["square"] != r["id"] ** 2]
    if bad:
        _fail("square column", "id ** 2 on every row", f"{len(bad)} wrong rows, e.g. {bad[0]}", "return {'id': ..., 'square': batch['id'] ** 2}.")
    return "1,000 rows, every square right"


# --- 02_multimodal_basics ----------------------------------------------------------------------

@exercise("12.read_images")
def _read_images(value):
    ds = _materialized(value, "images")
    expect_count(ds.count(), data.counts().images, "images", "read the images folder (paths.images) with ray.data.read_images.")
    names = ds.schema().names
    for col in ("image", "path"):
        if col not in names:
            _fail("image columns", "'image' and 'path'", names, "pass include_paths=True and mode='RGB'.")
    return f"{ds.count()} images with their paths"


@exercise("12.read_text")
def _read_text(value):
    ds = _materialized(value, "messages")
    expect_count(ds.count(), data.counts().messages, "support messages",
                 "read paths.support with file_extensions=['txt'] so NOTICE.md is not a record.")
    expect_schema(ds, {"text": pa.string(), "path": pa.string()}, "messages")
    return f"{ds.count()} support messages"


@exercise("12.read_parquet")
def _read_parquet(value):
    ds = _materialized(value, "products")
    expect_count(ds.count(), data.counts().products, "products", "read paths.products with ray.data.read_parquet.")
    return f"{ds.count()} products with columns {ds.schema().names}"


@exercise("12.product_ids")
def _product_ids(value):
    ds = _materialized(value, "images with product ids")
    rows = ds.select_columns(["path", "product_id"]).take_all()
    expect_count(len(rows), data.counts().images, "images with product ids")
    wrong = [r for r in rows if r["product_id"] != data.product_id_from_path(r["path"])]
    if wrong:
        _fail("product_id", "the id in each file name", f"{len(wrong)} mismatches, e.g. {wrong[0]}",
              "use gr.data.product_id_from_path on every path in the batch.")
    return "every image carries its product id"


@exercise("12.classified")
def _classified(value):
    ds = _materialized(value, "classified images")
    expect_schema(ds, {"product_id": pa.string(), "path": pa.string(), "label": pa.string(), "score": pa.float32()}, "classified images")
    rows = ds.take_all()
    expect_count(len(rows), data.counts().images, "classified images")
    cats = [r for r in rows if data.image_source_from_path(r["path"]) == "chelsea"]
    cat_words = ("cat", "Mau", "tabby", "Persian", "Siamese", "lynx")
    if cats and not any(any(w in r["label"] for w in cat_words) for r in cats):
        _fail("labels of the cat photos", "a cat label", [r["label"] for r in cats][:3],
              "preprocess with gr.models.preprocess_image and take argmax of the logits.")
    return f"{len(rows)} images classified; the cat photo says '{cats[0]['label']}'" if cats else f"{len(rows)} images classified"


# --- 03_framework_integration ------------------------------------------------------------------

@exercise("13.pixel_means")
def _pixel_means(value):
    means = np.asarray(value, dtype=float)
    if means.shape != (data.counts().images,):
        _fail("pixel means", f"one value per image, shape ({data.counts().images},)", means.shape,
              "append batch['image'].float().mean(dim=(1, 2, 3)) for every batch from iter_torch_batches.")
    if not (0 < means.min() and means.max() < 255):
        _fail("pixel means", "values between 0 and 255", (means.min(), means.max()))
    return f"{len(means)} image means, overall {means.mean():.1f}"


@exercise("13.embeddings")
def _embeddings(value):
    ds = _materialized(value, "embeddings")
    expect_schema(ds, {"ticket_id": pa.string(), "embedding": Tensor((384,), "float32")}, "embeddings")
    sample = ds.take(32)
    norms = np.linalg.norm(np.stack([r["embedding"] for r in sample]), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        _fail("embedding norms", "1.0 (L2-normalized)", norms[:3].round(3), "use gr.models.embed_texts, which normalizes.")
    expect_count(ds.count(), data.counts().messages, "embeddings")
    return f"{ds.count()} unit-length 384-d embeddings"


@exercise("13.parquet_written")
def _parquet_written(value):
    import ray

    back = ray.data.read_parquet(str(value))
    expect_count(back.count(), data.counts().messages, "rows read back from your Parquet folder",
                 "write with mode='overwrite' so a re-run replaces the files instead of adding more.")
    return f"{back.count()} rows round-trip through Parquet at {value}"
