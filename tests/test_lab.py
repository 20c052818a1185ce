"""`make lab` serves JupyterLab on the workspace: its API answers and lists Phase 1."""

import urllib.request

import pytest

from conftest import ROOT, jupyter_lab

pytestmark = pytest.mark.slow


def test_jupyterlab_serves_the_workspace(tmp_path):
    from graders import workspace

    workspace.sync(ROOT / "course", tmp_path / "workspace")
    with jupyter_lab(tmp_path / "workspace", tmp_path / "lab") as lab:
        names = {item["name"] for item in lab.api("api/contents/01_foundation")["content"]}
        assert "04_validation.ipynb" in names
        page = urllib.request.urlopen(f"{lab.url}/lab?token={lab.token}", timeout=5).read().decode()
        assert "JupyterLab" in page
        names = {e["name"] for e in lab.api("lab/api/extensions")}
        assert "jupyter-widgets-jupyterlab-manager" in names, f"ipywidgets must render in lessons: {sorted(names)}"
        assert "jupyter-nbgrader" in names, f"the nbgrader extension (Validate, formgrader) is missing: {sorted(names)}"
