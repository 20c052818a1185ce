"""Phase 2, lesson 2.3 checks (03_multimodal_pipelines)."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from graders import data
from graders.checks import Tensor, _fail, _type_matches, exercise, expect_count
from graders.exercises._common import (
    _expect_columns,
    _expect_float32,
    _materialized,
    _read_back,
)

JOINED_COLUMNS = ["product_id", "image_features", "text_embedding", "review_count", "mean_rating"]
FUSED_COLUMNS = JOINED_COLUMNS + ["multimodal"]
TABLE_COLUMNS = FUSED_COLUMNS + ["category"]
_TENSORS = {
    "image_features": Tensor((1280,), "float32"),
    "text_embedding": Tensor((384,), "float32"),
    "multimodal": Tensor((1280 + 384,), "float32"),
}


# --- the truth, computed here from the raw data (and, for a few products, the models) ---------

@functools.lru_cache(maxsize=2)
def _true_reviews(reviews_path: str) -> dict[str, tuple[int, float, tuple[str, ...]]]:
    """product_id -> (reviews with words, their mean rating, their cleaned texts)."""
    table = data.read_reviews(reviews_path, kept=True)
    kept: dict[str, list] = {}
    for pid, rating, text in zip(*(table.column(c).to_pylist() for c in ("product_id", "rating", "text"))):
        kept.setdefault(pid, []).append((rating, text))
    return {pid: (len(v), float(np.mean([r for r, _ in v])), tuple(t for _, t in v)) for pid, v in kept.items()}


@functools.lru_cache(maxsize=2)
def _true_categories(products_path: str) -> dict[str, str]:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, base = pafs.FileSystem.from_uri(products_path)
    t = pq.read_table(base, filesystem=fs, columns=["product_id", "category"])
    return dict(zip(t.column("product_id").to_pylist(), t.column("category").to_pylist()))


def _sample_ids(n: int) -> tuple[str, ...]:
    """First, middle and last product: a misaligned join shows up in at least one of them."""
    return tuple(f"P{i:06d}" for i in sorted({1, n // 2, n}))


@functools.lru_cache(maxsize=2)
def _true_text_embeddings(reviews_path: str, product_ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Mean of each product's review embeddings, re-normalized (MiniLM on this CPU)."""
    from graders import models

    _, model = models.load_text_model("cpu")
    reviews = _true_reviews(reviews_path)
    out = {}
    for pid in product_ids:
        tokens = models.tokenize(reviews[pid][2])
        mean = models.embed_tokens(model, tokens["input_ids"], tokens["attention_mask"]).mean(axis=0)
        out[pid] = mean / np.linalg.norm(mean)
    return out


@functools.lru_cache(maxsize=2)
def _true_image_features(images_path: str, product_ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Mean of each product's image features (EfficientNet-Lite0 on this CPU)."""
    import io

    import pyarrow.fs as pafs
    import torch
    from PIL import Image

    from graders import models

    fs, base = pafs.FileSystem.from_uri(images_path)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.path.endswith((".jpg", ".png")))
    model = models.load_vision_model("cpu")
    out = {}
    for pid in product_ids:
        pixels = []
        for path in (p for p in files if data.product_id_from_path(p) == pid):
            with fs.open_input_stream(path) as f:
                pixels.append(models.preprocess_image(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))))
        features, _ = models.vision_forward(model, torch.as_tensor(np.stack(pixels)))
        out[pid] = features.numpy().mean(axis=0)
    return out


# --- shared checks -----------------------------------------------------------------------------

def _expect_types(ds, what: str) -> None:
    """Tensor columns by shape and float32; counts as integers; ratings as floats."""
    schema = ds.schema()
    types = dict(zip(schema.names, schema.types))
    for col, want in _TENSORS.items():
        if col in types:
            _expect_float32(ds, col, what)
            if not _type_matches(types[col], want):
                _fail(f"{what} column '{col}'", f"{want} (one vector per row)", types[col],
                      "return a 2-D array from your group function: one row of shape "
                      f"(1, {want.shape[0]}), e.g. mean[np.newaxis].")
    if "review_count" in types and not pa.types.is_integer(types["review_count"]):
        _fail(f"{what} column 'review_count'", "integers", types["review_count"],
              "count the group's rows: np.array([len(group['review_id'])]).")
    if "mean_rating" in types and not pa.types.is_floating(types["mean_rating"]):
        _fail(f"{what} column 'mean_rating'", "floats", types["mean_rating"],
              "average the group's ratings: np.array([group['rating'].mean()]).")


def _rows_by_product(ds, what: str, hint: str) -> dict[str, dict]:
    """The rows of a small per-product Dataset, keyed by product id: exactly one per product."""
    n = data.counts().products
    rows = ds.take_all()
    ids = [r["product_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        _fail(f"{what} product ids", "each product once", f"{len(ids) - len(set(ids))} repeats, e.g. {dup!r}", hint)
    expect_count(len(rows), n, f"rows of {what} (one per product)", hint)
    want = {f"P{i:06d}" for i in range(1, n + 1)}
    if set(ids) != want:
        _fail(f"{what} product ids", f"P000001 .. P{n:06d}", f"{sorted(set(ids) - want)[:3]} among them", hint)
    return {r["product_id"]: r for r in rows}


def _cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# --- 03_multimodal_pipelines -------------------------------------------------------------------

@exercise("23.joined")
def _joined(value):
    hint = ("joined = review_embeddings.groupby('product_id', ...).map_groups(mean_reviews, batch_format='numpy')"
            ".map_batches(add_image_features).materialize().")
    ds = _materialized(value, "joined", hint)
    _expect_columns(ds, JOINED_COLUMNS, "joined",
                    "mean_reviews returns product_id, text_embedding, review_count and mean_rating; "
                    "add_image_features adds image_features to the batch and returns it.")
    _expect_types(ds, "joined")
    rows = _rows_by_product(ds, "joined", "group by 'product_id' and return one row per group from mean_reviews.")

    truth = _true_reviews(data.paths().reviews)
    wrong = [(p, r["review_count"], truth[p][0]) for p, r in rows.items() if r["review_count"] != truth[p][0]]
    if wrong:
        p, got, want = wrong[0]
        _fail("review_count", f"the number of reviews in each group ({want} for {p})",
              f"{got} for {p} ({len(wrong)} products wrong)", "return np.array([len(group['review_id'])]).")
    wrong = [(p, r["mean_rating"], truth[p][1]) for p, r in rows.items() if abs(r["mean_rating"] - truth[p][1]) > 1e-6]
    if wrong:
        p, got, want = wrong[0]
        _fail("mean_rating", f"the mean of the group's ratings ({want:.3f} for {p})",
              f"{got:.3f} for {p} ({len(wrong)} products wrong)", "return np.array([group['rating'].mean()]).")

    norms = np.array([np.linalg.norm(r["text_embedding"]) for r in rows.values()])
    if not np.allclose(norms, 1.0, atol=1e-3):
        _fail("text_embedding lengths", "1.0 (the mean, re-normalized)", f"{norms.min():.3f} .. {norms.max():.3f}",
              "a mean of unit vectors is shorter than 1: divide it by np.linalg.norm(mean).")
    sample = _sample_ids(data.counts().products)
    text_truth = _true_text_embeddings(data.paths().reviews, sample)
    for pid in sample:
        cos = _cosine(rows[pid]["text_embedding"], text_truth[pid])
        if cos < 0.99:
            _fail(f"text_embedding of {pid}", "the normalized mean of that product's review embeddings",
                  f"a vector at cosine {cos:.2f} from it",
                  "average group['text_embedding'] over the rows (axis=0), then normalize.")
    image_truth = _true_image_features(data.paths().images, sample)
    for pid in sample:
        got, want = np.asarray(rows[pid]["image_features"], dtype=np.float64), image_truth[pid]
        error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        if error > 0.02:
            _fail(f"image_features of {pid}", "the mean image features of that product (from image_lookup)",
                  f"a vector {error:.0%} away from them",
                  "look each row's product_id up in image_lookup: image_lookup[p] for p in batch['product_id'].")
    total = int(sum(r["review_count"] for r in rows.values()))
    return f"{len(rows)} products, each with image features, a review embedding and {total} reviews in all"


@exercise("23.fused")
def _fused(value):
    ds = _materialized(value, "fused", "fused = joined.map_batches(fuse).materialize().")
    _expect_columns(ds, FUSED_COLUMNS, "fused",
                    "add batch['multimodal'] to the batch you were given and return that batch, so the other columns stay.")
    _expect_types(ds, "fused")
    rows = _rows_by_product(ds, "fused", "map joined through fuse: map_batches keeps one row per row.")
    worst, worst_id, why = 0.0, None, ""
    for pid, r in rows.items():
        image = np.asarray(r["image_features"], dtype=np.float64)
        text = np.asarray(r["text_embedding"], dtype=np.float64)
        want = np.concatenate([image / np.linalg.norm(image), text / np.linalg.norm(text)]) / np.sqrt(2)
        got = np.asarray(r["multimodal"], dtype=np.float64)
        error = float(np.abs(got - want).max())
        if error > worst:
            worst, worst_id = error, pid
            if abs(np.linalg.norm(got) - 1) > 1e-3:
                why = f"its length is {np.linalg.norm(got):.3f}, not 1: divide the concatenation by np.sqrt(2)."
            elif np.abs(got[:1280] - want[:1280]).max() > 1e-4:
                why = "put the image part first, image_features divided by its own length (axis=1, keepdims=True)."
            else:
                why = "the text part comes second: text_embedding divided by its own length."
    if worst > 1e-4:
        _fail(f"multimodal of {worst_id}",
              "concat(image_features / |image_features|, text_embedding / |text_embedding|) / sqrt(2)",
              f"values up to {worst:.3g} away from it", why)
    return f"{len(rows)} unit-length multimodal vectors of {1280 + 384} numbers, half image, half text"


@exercise("23.training_table")
def _training_table(value):
    hint = "delete the folder with pyarrow.fs, then fused.map_batches(add_category).write_parquet(out_dir)."
    n = data.counts().products
    back = _read_back(None if value is None else str(value), "training table folder", n, hint,
                      "delete the folder first (fs.delete_dir), then write.")
    _expect_columns(back, TABLE_COLUMNS, "training table",
                    "write fused with one more column, 'category', added by add_category.")
    _expect_types(back, "training table")
    rows = _rows_by_product(back, "training table", hint)
    truth = _true_categories(data.paths().products)
    wrong = [(p, r["category"]) for p, r in rows.items() if r["category"] != truth[p]]
    if wrong:
        p, got = wrong[0]
        _fail("category", f"each product's category from products.parquet ({truth[p]!r} for {p})",
              f"{got!r} for {p} ({len(wrong)} wrong)", "look it up by id: category_of[p] for p in batch['product_id'].")
    norms = np.array([np.linalg.norm(r["multimodal"]) for r in rows.values()])
    if not np.allclose(norms, 1.0, atol=1e-3):
        _fail("multimodal lengths", "1.0", f"{norms.min():.3f} .. {norms.max():.3f}", "write the fused Dataset you checked above.")
    return f"{n} products, {len(TABLE_COLUMNS)} columns, one row each, labelled, at {value}"
