"""The model registry: numbered versions with metadata, incomplete copies never listed, data fingerprints."""

from __future__ import annotations

import json

import pytest

from graders.registry import Registry, fingerprint


def _model(tmp_path, name, payload):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.pt").write_bytes(payload)
    return folder


def test_versions_are_numbered_with_their_metadata(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    first = registry.register(_model(tmp_path, "a", b"one"), {"val_accuracy": 0.9}, "abc")
    second = registry.register(_model(tmp_path, "b", b"two"), {"val_accuracy": 0.95}, "abc")
    assert [v.version for v in registry.versions()] == [1, 2] and registry.latest() == second
    assert registry.get(1) == first and first.metrics == {"val_accuracy": 0.9} and first.data_fingerprint == "abc"
    assert first.created.endswith("+00:00") and first.source.endswith("/a")
    with first.checkpoint().as_directory() as folder:
        assert open(f"{folder}/model.pt", "rb").read() == b"one"
    meta = json.loads((tmp_path / "registry" / "v0002" / "model.json").read_text())
    assert meta["version"] == 2 and "path" not in meta


def test_an_incomplete_version_is_not_listed_and_is_replaced(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    (tmp_path / "registry" / "v0001").mkdir()  # a copy cut short: files but no model.json
    (tmp_path / "registry" / "v0001" / "partial").write_bytes(b"x")
    assert registry.versions() == []
    with pytest.raises(KeyError, match="No model registered"):
        registry.latest()
    version = registry.register(_model(tmp_path, "a", b"one"), {}, "abc")
    assert version.version == 1 and not (tmp_path / "registry" / "v0001" / "partial").exists()
    with pytest.raises(KeyError, match=r"one of \[1\]; found 7"):
        registry.get(7)


def test_fingerprint_follows_the_bytes(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "part-0.parquet").write_bytes(b"rows")
    before = fingerprint(str(data))
    assert fingerprint(str(data)) == before and len(before) == 16
    (data / "sub" / "part-0.parquet").write_bytes(b"rows changed")
    assert fingerprint(str(data)) != before
    with pytest.raises(FileNotFoundError, match="found none"):
        fingerprint(str(tmp_path / "empty"))


@pytest.mark.slow
def test_example_registry_holds_an_early_and_a_good_model_and_is_reused(tmp_path):
    import graders as gr

    gr.data.prepare()
    registry = gr.registry.example_registry(str(tmp_path / "registry"))
    early, good = registry.versions()
    assert (early.version, good.version) == (1, 2)
    assert early.metrics["steps"] == 10 and good.metrics["steps"] == 100
    assert early.metrics["val_accuracy"] < 0.85 <= good.metrics["val_accuracy"], (early.metrics, good.metrics)
    assert early.data_fingerprint == good.data_fingerprint == fingerprint(gr.data.paths().reviews)
    model = gr.models.load_rating_classifier(good.path)
    assert not model.training
    again = gr.registry.example_registry(str(tmp_path / "registry"))
    assert [v.created for v in again.versions()] == [early.created, good.created]  # left as it was
