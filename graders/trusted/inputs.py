"""Fresh inputs for the measured run: written by the grader just before it, so nothing computed earlier matches.

A notebook could compute the model's outputs in its solution cell, before the measured run, then
hand them out during it beside a busy loop: its CPU time would look like the model's work, and its
rows would match the reference model (`graders.work`). So for the phases whose run is graded on
the model's work (`FRESH`), the grader gives the run inputs no code saw before it started:

1. before the notebook runs, a folder of the grader's (`COURSE_INPUTS`, read-only in the sandbox)
   holds a plain copy of the run's datasets; `graders.data.paths()` points there, in the learner's
   kernel and in the grader's, so a notebook can read its data as usual in every cell;
2. just before the measured cell, the grader writes a *salted* copy in a folder of its own that the
   sandbox cannot see, and swaps it in: every kept review has `WORDS` of its words replaced by
   random words of the reviews' vocabulary; every image is re-cut (a random crop of `CROP` of each
   side, mirrored at random) and saved under the same name and format. Same files, same ids, same
   counts, same kept reviews; measured here, all-MiniLM-L6-v2 embeddings and EfficientNet-Lite0
   features of the salted copy differ from those of the original (cosine below 0.99 for every
   review of a sample of 200 and every one of the 96 images), and the cat photos stay cats;
3. the tests (in the grader's kernel) and the grader's yardsticks read the salted copy.

Rows computed before the swap are the model's outputs for other inputs: they fail the model check.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

FRESH = {"01_foundation": ("images",), "02_advanced_processing": ("reviews",)}  # datasets renewed per phase
WORDS = 3  # words of each kept review replaced
CROP = (0.85, 0.93)  # share of each side an image keeps
ENV = "COURSE_INPUTS"


def unavailable() -> str | None:
    """Why fresh inputs cannot be given here (the run reads its data elsewhere), or None."""
    from graders.data import data_root

    if os.environ.get("RAY_ADDRESS"):
        return "the run's workers are on a Ray cluster, which cannot read the grader's local folder"
    if "://" in data_root():
        return "the course data is in object storage"
    return None


class FreshInputs:
    """The grader's copy of one run's datasets: `shown` (the run reads it) and `staged` (never shown)."""

    def __init__(self, datasets: tuple[str, ...], seed: int | None = None):
        from graders import data

        self.datasets = datasets
        self.source = data.paths()
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self.shown = Path(tempfile.mkdtemp(prefix="course-inputs-"))
        self.staged = Path(tempfile.mkdtemp(prefix="course-staged-"))  # stays 0700: the sandbox user cannot read it
        self.shown.chmod(0o755)
        for name in datasets:
            shutil.copytree(getattr(self.source, name), self.shown / name)
        _readable(self.shown)

    def stage(self) -> None:
        """Write the salted copy, not yet shown to the run (the yardsticks measure on it)."""
        for name in self.datasets:
            {"reviews": _salt_reviews, "images": _salt_images}[name](Path(getattr(self.source, name)), self.staged / name, self.rng)

    def reveal(self) -> None:
        """Swap the salted copy in, just before the measured cell."""
        for name in self.datasets:
            old = self.shown / f".old-{name}"
            os.rename(self.shown / name, old)
            os.rename(self.staged / name, self.shown / name)
            shutil.rmtree(old, ignore_errors=True)
        _readable(self.shown)

    def close(self) -> None:
        for folder in (self.shown, self.staged):
            shutil.rmtree(folder, ignore_errors=True)


def _readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _salt_reviews(source: Path, target: Path, rng: random.Random) -> None:
    """Each kept review with `WORDS` of its words replaced (html and spacing kept as they were)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from graders.data import clean_review_text

    parts = sorted(source.glob("*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    vocabulary = sorted({w for t in tables for text in t.column("text").to_pylist()
                         for w in clean_review_text(text).split() if w.isalpha()})
    target.mkdir()
    for part, table in zip(parts, tables):
        texts = [_salt_text(t, vocabulary, rng) if clean_review_text(t) else t for t in table.column("text").to_pylist()]
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        pq.write_table(table, target / part.name)


def _salt_text(text: str, vocabulary: list[str], rng: random.Random) -> str:
    pieces = re.split(r"(\s+)", text)  # words and the spaces between them, kept
    words = [i for i, w in enumerate(pieces) if w.isalpha()]
    for i in rng.sample(words, min(WORDS, len(words))):
        pieces[i] = rng.choice(vocabulary)
    return "".join(pieces)


def _salt_images(source: Path, target: Path, rng: random.Random) -> None:
    """Each image re-cut: a random crop of `CROP` of each side, resized back, mirrored at random."""
    from PIL import Image, ImageOps

    target.mkdir()
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        with Image.open(path) as image:
            image.load()
            kind = image.format
        w, h = image.size
        share = rng.uniform(*CROP)
        cw, ch = max(1, round(w * share)), max(1, round(h * share))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        salted = image.crop((x, y, x + cw, y + ch)).resize((w, h))
        if rng.random() < 0.5:
            salted = ImageOps.mirror(salted)
        out = io.BytesIO()
        salted.save(out, kind, **({"quality": 90} if kind == "JPEG" else {}))
        (target / path.name).write_bytes(out.getvalue())
