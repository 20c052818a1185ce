"""`make lab` serves JupyterLab on the workspace: its API answers and lists Phase 1."""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def test_jupyterlab_serves_the_workspace(tmp_path):
    from graders import workspace

    workspace.sync(ROOT / "course", tmp_path / "workspace")
    port, token = free_port(), secrets.token_hex(8)
    jupyter = Path(sys.executable).with_name("jupyter")
    server = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--notebook-dir={tmp_path / 'workspace'}", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    try:
        url = f"http://127.0.0.1:{port}/api/contents/01_foundation?token={token}"
        for _ in range(120):
            try:
                listing = json.load(urllib.request.urlopen(url, timeout=2))
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        names = {item["name"] for item in listing["content"]}
        assert "04_validation.ipynb" in names
        lab = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5).read().decode()
        assert "JupyterLab" in lab
        ext = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/lab/api/extensions?token={token}", timeout=5))
        names = {e["name"] for e in ext}
        assert "jupyter-widgets-jupyterlab-manager" in names, f"ipywidgets must render in lessons: {sorted(names)}"
        assert "jupyter-nbgrader" in names, f"the nbgrader extension (Validate, formgrader) is missing: {sorted(names)}"
    finally:
        server.terminate()
        server.wait(timeout=30)
