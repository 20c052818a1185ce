"""Phase 2, lesson 2.2 checks (02_nlp_text_processing)."""

from __future__ import annotations

import functools
import re

import numpy as np
import pyarrow as pa

from graders import data, models
from graders.checks import Tensor, _fail, exercise, expect_count, expect_schema
from graders.exercises._common import (
    _expect_columns,
    _expect_float32,
    _materialized,
    _read_back,
)

_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^>]*>")
_ENTITY = re.compile(r"&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")
_CLEAN_HINT = "apply gr.data.clean_review_text to every text in the batch: batch['text'] holds the raw HTML."


@functools.lru_cache(maxsize=2)
def _kept_reviews(reviews_path: str) -> dict[str, tuple[str, str]]:
    """review_id -> (product_id, cleaned text) of every review with words left, read without Ray."""
    table = data.read_reviews(reviews_path, kept=True)
    return {rid: (pid, text) for rid, pid, text in zip(*(table.column(c).to_pylist() for c in ("review_id", "product_id", "text")))}


@functools.lru_cache(maxsize=1)
def _cpu_text_model():
    return models.load_text_model("cpu")[1]


def _mess(text: str) -> str:
    """The messy part of a text (a tag, an entity, extra whitespace) with some context, or ''."""
    m = _TAG.search(text) or _ENTITY.search(text) or re.search(r"\s\s|[\t\n\r]|^\s|\s$", text)
    return text[max(0, m.start() - 25):m.end() + 25] if m else ""


def _expect_ids(found_ids, kept: dict, what: str, hint: str) -> None:
    """The review ids are exactly the kept ones, each once."""
    ids = list(found_ids)
    dupes = len(ids) - len(set(ids))
    if dupes:
        _fail(f"{what} review ids", "each review once", f"{dupes} repeated ids", hint)
    missing = sorted(set(kept) - set(ids))
    extra = sorted(set(ids) - set(kept))
    if missing or extra:
        _fail(f"{what} review ids", f"the {len(kept):,} reviews that keep words after cleaning",
              f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} others (e.g. {extra[:2]})", hint)


# --- 1. loading and cleaning -----------------------------------------------------------------

@exercise("22.cleaned")
def _cleaned(value):
    ds = _materialized(value, "cleaned reviews", "cleaned = raw.map_batches(clean_batch).")
    _expect_columns(ds, ["review_id", "product_id", "rating", "text"], "cleaned reviews",
                    "return exactly review_id, product_id, rating and the cleaned text from clean_batch.")
    rows = ds.take_all()
    texts = [r["text"] if isinstance(r["text"], str) else "" for r in rows]
    messy = [m for m in map(_mess, texts) if m]
    if messy:
        _fail("cleaned texts", "plain text: no HTML tags or entities, single spaces",
              f"{len(messy)} messy texts, e.g. {messy[0]!r}", _CLEAN_HINT)
    empty = sum(1 for t in texts if not t)
    if empty:
        _fail("cleaned texts", "no empty text", f"{empty} reviews with no words left",
              "after cleaning, keep only the rows whose text is not '' (a boolean mask on every column).")
    kept = _kept_reviews(data.paths().reviews)
    expect_count(len(rows), len(kept), "cleaned reviews",
                 "clean every review first, then drop only those whose cleaned text is empty.")
    _expect_ids([r["review_id"] for r in rows], kept, "cleaned reviews",
                "keep review_id next to its text: apply the same mask to every column.")
    wrong = [r for r in rows if r["text"] != kept[r["review_id"]][1] or r["product_id"] != kept[r["review_id"]][0]]
    if wrong:
        r = wrong[0]
        _fail("cleaned texts", "gr.data.clean_review_text(raw text) next to its own review_id and product_id",
              f"{len(wrong)} rows that differ, e.g. {r['review_id']}: {r['text'][:60]!r}",
              _CLEAN_HINT + " Keep the rows in the same order in every column.")
    return f"{len(rows):,} clean reviews ({data.counts().reviews - len(rows)} empty ones dropped)"


# --- 2. tokenization -------------------------------------------------------------------------

@exercise("22.tokenized")
def _tokenized(value):
    n_tok = models.TEXT_MAX_TOKENS
    ds = _materialized(value, "tokenized reviews", "tokenized = cleaned.map_batches(tokenize_batch).")
    _expect_columns(ds, ["review_id", "product_id", "input_ids", "attention_mask"], "tokenized reviews",
                    "return review_id, product_id and the two arrays of gr.models.tokenize(batch['text']); "
                    "leave out text and rating: the model needs only the ids.")
    expect_schema(ds, {"review_id": pa.string(), "product_id": pa.string(),
                       "input_ids": Tensor((n_tok,), "int64"), "attention_mask": Tensor((n_tok,), "int64")},
                  "tokenized reviews")
    rows = ds.take_all()
    kept = _kept_reviews(data.paths().reviews)
    expect_count(len(rows), len(kept), "tokenized reviews", "tokenize the cleaned reviews (one row in, one row out).")
    _expect_ids([r["review_id"] for r in rows], kept, "tokenized reviews",
                "pass review_id through unchanged, in the same order as the texts.")
    want = models.tokenize([kept[r["review_id"]][1] for r in rows])
    ids = np.stack([r["input_ids"] for r in rows])
    mask = np.stack([r["attention_mask"] for r in rows])
    bad = np.flatnonzero((ids != want["input_ids"]).any(axis=1) | (mask != want["attention_mask"]).any(axis=1))
    if len(bad):
        _fail("token ids", "gr.models.tokenize of each review's cleaned text",
              f"{len(bad)} rows that differ, e.g. {rows[bad[0]]['review_id']}",
              "tokenize batch['text'] of the cleaned reviews with gr.models.tokenize, and keep the row order.")
    words = int(mask.sum(axis=1).max())
    return f"{len(rows):,} reviews as {n_tok} token ids each (the longest uses {words})"


# --- 3. the transformer ----------------------------------------------------------------------

@exercise("22.embeddings")
def _embeddings(value):
    ds = _materialized(value, "review embeddings",
                       "embeddings = tokenized.map_batches(Embedder, compute=ray.data.ActorPoolStrategy(...), ...).materialize().")
    _expect_float32(ds, "embedding", "review embeddings")
    expect_schema(ds, {"review_id": pa.string(), "product_id": pa.string(),
                       "embedding": Tensor((models.TEXT_EMBEDDING_SIZE,), "float32")}, "review embeddings")
    rows = ds.take_all()
    kept = _kept_reviews(data.paths().reviews)
    expect_count(len(rows), len(kept), "review embeddings", "embed every tokenized review once.")
    _expect_ids([r["review_id"] for r in rows], kept, "review embeddings",
                "return batch['review_id'] unchanged next to the embeddings.")
    vectors = np.stack([r["embedding"] for r in rows])
    if not np.isfinite(vectors).all():
        _fail("embeddings", "finite numbers", f"{int((~np.isfinite(vectors)).sum())} NaN or inf values",
              "use gr.models.embed_tokens(self.model, batch['input_ids'], batch['attention_mask']).")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        _fail("embedding lengths (L2 norms)", "1.0 for every review", f"{norms.min():.3f} .. {norms.max():.3f}",
              "use gr.models.embed_tokens, which mean-pools and normalizes.")
    wrong_pid = sum(1 for r in rows if r["product_id"] != kept[r["review_id"]][0])
    if wrong_pid:
        _fail("product ids", "each review's own product_id", f"{wrong_pid} rows with another one",
              "return batch['product_id'] unchanged.")
    picks = np.linspace(0, len(rows) - 1, 8).astype(int)
    tokens = models.tokenize([kept[rows[i]["review_id"]][1] for i in picks])
    want = models.embed_tokens(_cpu_text_model(), tokens["input_ids"], tokens["attention_mask"])
    cosine = np.sum(vectors[picks] * want, axis=1)
    if cosine.min() < 0.99:
        i = picks[int(np.argmin(cosine))]
        _fail("embeddings", "each review's own all-MiniLM-L6-v2 embedding (cosine similarity >= 0.99)",
              f"cosine {cosine.min():.2f} for {rows[i]['review_id']}",
              "embed the rows' own input_ids and attention_mask, and keep review_id in the same order.")
    return f"{len(rows):,} unit-length {vectors.shape[1]}-d embeddings, matching the model (cosine >= {cosine.min():.3f})"


# --- 4. writing the results ------------------------------------------------------------------

@exercise("22.written")
def _written(value):
    hint = "delete the old folder with pyarrow.fs, then embeddings.write_parquet(out_dir), and set written = out_dir."
    kept = _kept_reviews(data.paths().reviews)
    back = _read_back(value, "Parquet folder", len(kept), hint,
                      "empty the folder before you write (fs.delete_dir_contents(folder, missing_dir_ok=True)).")
    rows = back.count()
    expect_count(rows, len(kept), "rows read back from your Parquet folder",
                 "write the materialized embeddings, all of them, once.")
    expect_schema(back, {"review_id": pa.string(), "product_id": pa.string(),
                         "embedding": Tensor((models.TEXT_EMBEDDING_SIZE,), "float32")}, "rows read back")
    ids = [r["review_id"] for r in back.select_columns(["review_id"]).take_all()]
    _expect_ids(ids, kept, "rows read back", "write the embeddings Dataset from Part 3.")
    return f"{rows:,} embeddings round-trip through Parquet at {value}"
