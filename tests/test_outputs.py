"""Where lessons write (`gr.data.output_path`): each learner's own folder, never a shared one.

In a workspace (made by `course workspace`, i.e. `workspace.sync`): `<workspace>/outputs/<size>/`,
the same for every notebook in it. Elsewhere, and with the data in object storage:
`<data root>/<size>/outputs/<user>/`. A graded run's `$COURSE_OUTPUTS` wins over both.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from graders import data, workspace

S3 = "s3://bucket/data?endpoint_override=http://x"


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch, tmp_path):
    """No grader, local data, the default size, and one user: each test changes only what it checks."""
    for name in ("COURSE_OUTPUTS", "COURSE_SIZE", "COURSE_INPUTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(getpass, "getuser", lambda: "ana")


def _workspace(tmp_path: Path, name: str) -> Path:
    """A workspace made the way `course workspace` makes one, from a two-phase course."""
    course = tmp_path / "course"
    for notebook in ("01_foundation/01_a.ipynb", "03_production_systems/01_b.ipynb"):
        (course / notebook).parent.mkdir(parents=True, exist_ok=True)
        (course / notebook).write_text("{}")
    workspace.sync(course, tmp_path / name)
    return (tmp_path / name).resolve()


def test_two_workspaces_never_share_outputs(monkeypatch, tmp_path):
    """Two learners' workspaces on one checkout: the same name gives two different folders."""
    found = {}
    for learner in ("ws-ana", "ws-ben"):
        ws = _workspace(tmp_path, learner)
        monkeypatch.chdir(ws / "01_foundation")
        found[learner] = data.output_path("rating_model")
        assert found[learner] == str(ws / "outputs" / "small" / "rating_model"), found
    assert found["ws-ana"] != found["ws-ben"]


def test_every_notebook_of_a_workspace_shares_one_outputs_folder(monkeypatch, tmp_path):
    """Lesson 3.1 writes the model, Lesson 4.1 (another phase folder) reads it: one outputs root."""
    ws = _workspace(tmp_path, "workspace")
    monkeypatch.chdir(ws / "03_production_systems")
    written = data.output_path("rating_model")
    (ws / "04_production_deployment").mkdir()
    monkeypatch.chdir(ws / "04_production_deployment")
    assert data.output_path("rating_model") == written
    assert data.workspace_root() == ws
    monkeypatch.setenv("COURSE_SIZE", "full")  # each size has its own outputs, as its own data
    assert data.output_path("rating_model") == str(ws / "outputs" / "full" / "rating_model")


def test_outside_a_workspace_each_user_has_a_folder(monkeypatch, tmp_path):
    """The repository's solutions/ (no workspace above it): two OS users get two folders."""
    (tmp_path / "solutions" / "03_production_systems").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "solutions" / "03_production_systems")
    assert data.workspace_root() is None
    outputs = Path(data.data_root()) / "small" / "outputs"
    assert data.output_path("rating_model") == str(outputs / "ana" / "rating_model")
    monkeypatch.setattr(getpass, "getuser", lambda: "ben")
    assert data.output_path("rating_model") == str(outputs / "ben" / "rating_model")
    monkeypatch.setattr(getpass, "getuser", lambda: "DOMAIN\\eve?x")  # never a separator or a query in a path
    assert data.output_path("m").endswith("/outputs/DOMAIN_eve_x/m")


def test_object_storage_outputs_stay_beside_the_data_per_user(monkeypatch, tmp_path):
    """With the data in S3 (a cluster's nodes share no disk) outputs go there, per user, even
    from a workspace; the URI's query stays last."""
    monkeypatch.setenv("COURSE_DATA", S3)
    monkeypatch.chdir(_workspace(tmp_path, "workspace") / "01_foundation")
    assert data.output_path("registry") == "s3://bucket/data/small/outputs/ana/registry?endpoint_override=http://x"


def test_course_outputs_wins_and_an_explicit_root_is_kept(monkeypatch, tmp_path):
    """A graded run's COURSE_OUTPUTS wins, in a workspace or with S3 data; an explicit root gives
    `<root>/<size>/outputs/<name>` as before (no user, no workspace)."""
    monkeypatch.chdir(_workspace(tmp_path, "workspace") / "01_foundation")
    monkeypatch.setenv("COURSE_OUTPUTS", "/tmp/run-a/outputs")
    assert data.output_path("rating_model") == "/tmp/run-a/outputs/rating_model"
    monkeypatch.setenv("COURSE_DATA", S3)
    assert data.output_path("rating_model") == "/tmp/run-a/outputs/rating_model"
    assert data.output_path("x", "small", "/tmp/d") == "/tmp/d/small/outputs/x"
    assert data.output_path("x", "small", S3) == "s3://bucket/data/small/outputs/x?endpoint_override=http://x"
