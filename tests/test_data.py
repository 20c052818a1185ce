"""Tests for graders/data.py: counts, names, schemas, determinism, idempotence, env handling."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from graders import data

EXPECTED_CATEGORY = {
    "chelsea": "pets",
    "coffee": "kitchen",
    "rocket": "outdoor",
    "astronaut": "apparel",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> data.DataPaths:
    return data.prepare("small", root=str(tmp_path_factory.mktemp("built")))


def _files(folder: str, suffix: str | None = None) -> list[str]:
    return sorted(n for n in os.listdir(folder) if suffix is None or n.endswith(suffix))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- sizes and counts


def test_sizes_table():
    assert data.SIZES["small"] == data.Counts(
        images=96, photos=48, digits=48, products=48, customers=200, messages=240,
        reviews=1_920, reviews_kept=1_860, review_parts=16,
    )
    assert data.SIZES["full"] == data.Counts(
        images=9_600, photos=4_800, digits=4_800, products=4_800, customers=20_000, messages=24_000,
        reviews=192_000, reviews_kept=186_000, review_parts=160,
    )
    assert set(data.SIZES) == {"small", "full"}


def test_small_counts(small):
    c = data.SIZES["small"]
    assert len(_files(small.images)) == c.images
    assert len(_files(small.images, ".jpg")) == c.photos
    assert len(_files(small.images, ".png")) == c.digits
    assert len(_files(small.support, ".txt")) == c.messages
    assert pq.read_table(small.products).num_rows == c.products
    assert pq.read_table(small.customers).num_rows == c.customers
    reviews = pq.read_table(small.reviews)
    assert len(_files(small.reviews, ".parquet")) == c.review_parts and reviews.num_rows == c.reviews
    kept = data.read_reviews(small.reviews, kept=True).column("text").to_pylist()
    assert len(kept) == c.reviews_kept and not any("<" in t or "  " in t or "&amp;" in t for t in kept)
    assert reviews.schema.names == ["review_id", "product_id", "rating", "text"]
    manifest = json.loads(Path(small.manifest).read_text())
    assert manifest["counts"] == {
        "images": 96, "photos": 48, "digits": 48, "products": 48, "customers": 200, "messages": 240,
        "reviews": 1_920, "reviews_kept": 1_860, "review_parts": 16,
    }
    assert manifest["seed"] == data.SEED and manifest["size"] == "small"


def test_paths_layout(small):
    root = Path(small.root)
    assert root.name == "small" and small.size == "small"
    assert small.images == str(root / "images")
    assert small.support == str(root / "support")
    assert small.reviews == str(root / "reviews")
    assert small.products == str(root / "products.parquet")
    assert small.customers == str(root / "customers.parquet")
    assert small.manifest == str(root / "MANIFEST.json")


# ---------------------------------------------------------------- file names and contents


def test_image_names_carry_existing_products(small):
    product_ids = set(pq.read_table(small.products).column("product_id").to_pylist())
    assert product_ids == {f"P{i:06d}" for i in range(1, 49)}
    kinds: dict[str, list[str]] = {}
    for name in _files(small.images):
        assert re.fullmatch(r"P\d{6}_([a-z]+|digit\d)_\d{3}\.(jpg|png)", name), name
        assert name.endswith(".png") == data.image_source_from_path(name).startswith("digit")
        pid = data.product_id_from_path(name)
        assert pid in product_ids
        kinds.setdefault(pid, []).append(name.rsplit(".", 1)[1])
    # every product has exactly one photo and one digit
    assert all(sorted(k) == ["jpg", "png"] for k in kinds.values())
    assert set(kinds) == product_ids


def test_support_names_carry_existing_products(small):
    product_ids = set(pq.read_table(small.products).column("product_id").to_pylist())
    names = _files(small.support, ".txt")
    assert [data.ticket_id_from_path(n) for n in names] == [f"T{i:06d}" for i in range(1, 241)]
    for name in names:
        assert re.fullmatch(r"T\d{6}_P\d{6}\.txt", name), name
        assert data.product_id_from_path(name) in product_ids


def test_every_photo_source_appears(small):
    photo_sources = {data.image_source_from_path(n) for n in _files(small.images, ".jpg")}
    assert photo_sources == set(data.PHOTO_SOURCES)
    assert {"chelsea", "coffee", "astronaut", "rocket"} <= photo_sources
    digit_sources = {data.image_source_from_path(n) for n in _files(small.images, ".png")}
    assert digit_sources == {f"digit{d}" for d in range(10)}
    manifest = json.loads(Path(small.manifest).read_text())
    assert set(data.PHOTO_SOURCES) <= set(manifest["image_sources"])


def test_categories_follow_photo_source(small):
    products = pq.read_table(small.products).to_pydict()
    category = dict(zip(products["product_id"], products["category"]))
    for name in _files(small.images, ".jpg"):
        source = data.image_source_from_path(name)
        if source in EXPECTED_CATEGORY:
            assert category[data.product_id_from_path(name)] == EXPECTED_CATEGORY[source], name


def test_image_formats(small):
    for name in _files(small.images, ".jpg"):
        with Image.open(Path(small.images) / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB", name
            assert 160 <= max(im.size) <= 320, (name, im.size)
    for name in _files(small.images, ".png"):
        with Image.open(Path(small.images) / name) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32), name


def test_parquet_schemas(small):
    products = pq.read_table(small.products)
    assert products.schema.names == ["product_id", "name", "category", "price", "created"]
    assert [products.schema.field(n).type for n in products.schema.names] == [
        pa.string(), pa.string(), pa.string(), pa.float64(), pa.date32()
    ]
    assert all(round(p, 2) == p and p > 0 for p in products.column("price").to_pylist())

    customers = pq.read_table(small.customers)
    assert customers.schema.names == [
        "customer_id", "region", "segment", "signup_date", "lifetime_value", "orders"
    ]
    assert [customers.schema.field(n).type for n in customers.schema.names] == [
        pa.string(), pa.string(), pa.string(), pa.date32(), pa.float64(), pa.int64()
    ]
    assert customers.column("customer_id").to_pylist()[:2] == ["C000001", "C000002"]
    assert len(set(customers.column("customer_id").to_pylist())) == 200


def test_support_messages_are_one_line(small):
    for name in _files(small.support, ".txt"):
        text = (Path(small.support) / name).read_text()
        assert text.endswith("\n") and text.count("\n") == 1, name
        assert 10 <= len(text.split()) <= 60, (name, text)
    notice = (Path(small.support) / "NOTICE.md").read_text().lower()
    for phrase in ("generated", "synthetic", "deterministic", "no real customer data", str(data.SEED)):
        assert phrase in notice, phrase


def test_manifest_says_what_is_generated(small):
    manifest = json.loads(Path(small.manifest).read_text())
    assert {"version", "seed", "size", "counts", "generated", "image_sources"} <= set(manifest)
    text = json.dumps(manifest["generated"]).lower()
    assert "support" in text and "synthetic" in text and "real" in text
    assert set(data.PHOTO_SOURCES) <= set(manifest["generated"]["real"]["photo_sources"])


# ---------------------------------------------------------------- determinism and idempotence


def test_two_builds_are_byte_identical(small, tmp_path):
    other = data.prepare("small", root=str(tmp_path))
    first, second = _hashes(Path(small.root)), _hashes(Path(other.root))
    assert len(first) == 96 + 240 + 1 + 16 + 3  # images, messages, NOTICE, review parts, 2 parquet + manifest
    assert first == second


def test_prepare_is_idempotent_and_force_rebuilds(tmp_path):
    p = data.prepare("small", root=str(tmp_path))
    root = Path(p.root)
    before = {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}
    hashes = _hashes(root)

    assert data.prepare("small", root=str(tmp_path)) == p
    assert {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()} == before

    # force: stale files disappear, every file is rewritten with the same bytes
    (root / "images" / "stale.jpg").write_bytes(b"x")
    old = 1_000_000_000
    for f in before:
        os.utime(f, (old, old))
    data.prepare("small", root=str(tmp_path), force=True)
    assert not (root / "images" / "stale.jpg").exists()
    assert all(f.stat().st_mtime > old for f in before)
    assert _hashes(root) == hashes


def test_incomplete_or_outdated_build_is_rebuilt(tmp_path):
    p = data.prepare("small", root=str(tmp_path))
    manifest = Path(p.manifest)
    good = manifest.read_bytes()

    manifest.unlink()  # as if a build was interrupted
    next(Path(p.images).iterdir()).unlink()
    data.prepare("small", root=str(tmp_path))
    assert len(_files(p.images)) == 96 and manifest.read_bytes() == good

    m = json.loads(good)
    m["version"] = -1
    manifest.write_text(json.dumps(m))
    data.prepare("small", root=str(tmp_path))
    assert manifest.read_bytes() == good


def test_prepare_accepts_file_uri(tmp_path):
    p = data.prepare("small", root=f"file://{tmp_path}")
    assert p.root == f"file://{tmp_path}/small" and p.images == f"file://{tmp_path}/small/images"
    assert (tmp_path / "small" / "MANIFEST.json").is_file()
    assert len(os.listdir(tmp_path / "small" / "images")) == 96


# ---------------------------------------------------------------- environment


def test_course_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "d"))
    monkeypatch.delenv("COURSE_SIZE", raising=False)
    assert data.data_root() == str((tmp_path / "d").resolve())
    assert data.paths().root == str((tmp_path / "d" / "small").resolve())

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_DATA", "rel")
    assert data.data_root() == str((tmp_path / "rel").resolve())

    monkeypatch.setenv("COURSE_DATA", "s3://bucket/course/")
    assert data.data_root() == "s3://bucket/course"
    assert data.paths("full").images == "s3://bucket/course/full/images"
    assert data.paths("small", root="s3://b/x").manifest == "s3://b/x/small/MANIFEST.json"


def test_default_root_is_repo_data(monkeypatch):
    monkeypatch.delenv("COURSE_DATA", raising=False)
    repo = Path(data.__file__).resolve().parents[1]
    assert (repo / "pyproject.toml").exists()
    assert data.data_root() == str(repo / "data")


def test_prepare_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    monkeypatch.setenv("COURSE_SIZE", "small")
    p = data.prepare()
    assert p.root == str(tmp_path.resolve() / "small")
    assert Path(p.manifest).is_file()


def test_course_size_env(monkeypatch):
    monkeypatch.delenv("COURSE_SIZE", raising=False)
    assert data.current_size() == "small" and data.counts() == data.SIZES["small"]
    monkeypatch.setenv("COURSE_SIZE", "full")
    assert data.current_size() == "full" and data.counts() == data.SIZES["full"]
    assert data.paths(root="/tmp/x").size == "full"

    monkeypatch.setenv("COURSE_SIZE", "medium")
    with pytest.raises(ValueError) as err:
        data.current_size()
    msg = str(err.value)
    assert "COURSE_SIZE" in msg and "'medium'" in msg
    assert "'small'" in msg and "'full'" in msg and "export COURSE_SIZE=small" in msg
    with pytest.raises(ValueError, match="medium"):
        data.paths()


def test_bad_size_argument():
    with pytest.raises(ValueError, match=r"'huge'.*Try"):
        data.counts("huge")
    with pytest.raises(ValueError, match="'huge'"):
        data.prepare("huge", root="/nonexistent")


# ---------------------------------------------------------------- path helpers


def test_path_helpers():
    assert data.product_id_from_path("/x/images/P000017_chelsea_003.jpg") == "P000017"
    assert data.product_id_from_path("bucket/p/P000031_digit7_012.png") == "P000031"
    assert data.product_id_from_path("s3://b/support/T000001_P000017.txt") == "P000017"
    assert data.product_id_from_path(r"C:\data\T000001_P000017.txt") == "P000017"
    assert data.ticket_id_from_path("/x/support/T000001_P000017.txt") == "T000001"
    assert data.image_source_from_path("/x/P000017_chelsea_003.jpg") == "chelsea"
    assert data.image_source_from_path("P000031_digit7_012.png") == "digit7"


@pytest.mark.parametrize(
    "func, bad, expected",
    [
        (data.product_id_from_path, "/x/cat.jpg", "P000017_chelsea_003.jpg"),
        (data.product_id_from_path, "P17_chelsea_003.jpg", "T000001_P000017.txt"),
        (data.ticket_id_from_path, "/x/P000017_chelsea_003.jpg", "T000001_P000017.txt"),
        (data.ticket_id_from_path, "T1_P000017.txt", "T000001_P000017.txt"),
        (data.image_source_from_path, "/x/T000001_P000017.txt", "P000017_chelsea_003.jpg"),
        (data.image_source_from_path, "P000017_chelsea_003.gif", "P000017_chelsea_003.jpg"),
    ],
)
def test_path_helper_errors(func, bad, expected):
    with pytest.raises(ValueError) as err:
        func(bad)
    msg = str(err.value)
    assert "expected" in msg and expected in msg and repr(bad) in msg


def test_uri_roots_keep_their_query_last():
    """An s3:// root may carry pyarrow options (an S3-compatible endpoint): joins keep them at the end."""
    root = "s3://bucket/course?endpoint_override=127.0.0.1:9000&scheme=http"
    p = data.paths("small", root)
    assert p.images == "s3://bucket/course/small/images?endpoint_override=127.0.0.1:9000&scheme=http"
    assert data.output_path("13_embeddings", "small", root) == (
        "s3://bucket/course/small/outputs/13_embeddings?endpoint_override=127.0.0.1:9000&scheme=http")
    assert data.output_path("x", "small", "/tmp/d") == "/tmp/d/small/outputs/x"


def test_course_outputs_gives_a_graded_run_its_own_output_folder(monkeypatch):
    """The class grader sets COURSE_OUTPUTS per parallel run: two runs never write the same files."""
    monkeypatch.setenv("COURSE_OUTPUTS", "/tmp/run-a/outputs")
    assert data.output_path("rating_model") == "/tmp/run-a/outputs/rating_model"
    assert data.output_path("x", "small", "/tmp/d") == "/tmp/d/small/outputs/x"  # an explicit root wins


def test_a_graded_runs_outputs_go_beside_the_data_when_it_is_in_object_storage(monkeypatch):
    """`course grade` gives each run `data.run_outputs(...)` as COURSE_OUTPUTS: its own local
    folder, or, with the data in object storage (a cluster's nodes share no disk), a prefix of its
    own there (tests/test_cluster.py writes Ray Train checkpoints to it from two nodes)."""
    monkeypatch.setenv("COURSE_DATA", "/srv/course/data")
    assert data.run_outputs("/stage/outputs", "01_foundation/ana-1f2e") == "/stage/outputs"
    monkeypatch.setenv("COURSE_DATA", "s3://bucket/course?endpoint_override=127.0.0.1:9000&scheme=http")
    assert data.run_outputs("/stage/outputs", "01_foundation/ana-1f2e") == (
        "s3://bucket/course/small/outputs/graded/01_foundation/ana-1f2e?endpoint_override=127.0.0.1:9000&scheme=http")
    data.remove_outputs("/stage/outputs")  # a local folder goes with the stage: nothing to do here
