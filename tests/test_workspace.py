"""The learner's workspace gets new notebooks and never loses an edited one."""

from graders import workspace


def _nb(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_sync_adds_updates_and_keeps_edits(tmp_path):
    course, ws = tmp_path / "course", tmp_path / "workspace"
    _nb(course / "01_foundation" / "01_a.ipynb", "v1-a")
    _nb(course / "01_foundation" / "02_b.ipynb", "v1-b")
    assert workspace.sync(course, ws)["added"] == ["01_foundation/01_a.ipynb", "01_foundation/02_b.ipynb"]

    (ws / "01_foundation" / "01_a.ipynb").write_text("my work")  # the learner edits a
    _nb(course / "01_foundation" / "01_a.ipynb", "v2-a")  # a new release changes a and b
    _nb(course / "01_foundation" / "02_b.ipynb", "v2-b")
    _nb(course / "02_advanced" / "01_c.ipynb", "v1-c")  # and adds a phase
    done = workspace.sync(course, ws)

    assert (ws / "01_foundation" / "01_a.ipynb").read_text() == "my work"
    assert done["kept (edited by you)"] == ["01_foundation/01_a.ipynb"]
    assert (ws / "01_foundation" / "02_b.ipynb").read_text() == "v2-b"
    assert done["updated"] == ["01_foundation/02_b.ipynb"]
    assert done["added"] == ["02_advanced/01_c.ipynb"]

    again = workspace.sync(course, ws)  # idempotent, still keeps the edit
    assert again["added"] == again["updated"] == []
    assert (ws / "01_foundation" / "01_a.ipynb").read_text() == "my work"


def test_deleted_notebook_is_restored_and_missing_course_is_explained(tmp_path):
    course, ws = tmp_path / "course", tmp_path / "workspace"
    _nb(course / "01_foundation" / "01_a.ipynb", "v1")
    workspace.sync(course, ws)
    (ws / "01_foundation" / "01_a.ipynb").unlink()
    assert workspace.sync(course, ws)["added"] == ["01_foundation/01_a.ipynb"]
    try:
        workspace.sync(tmp_path / "nowhere", ws)
    except FileNotFoundError as exc:
        assert "make release" in str(exc)
    else:
        raise AssertionError("a missing course folder must raise")
