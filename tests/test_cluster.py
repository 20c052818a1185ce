"""The Phase 1 validation runs unchanged on a real multi-node Ray cluster (RAY_ADDRESS).

A head node and a worker node, each its own set of processes with its own CPU count, are
started with `ray start` on this machine; the notebook joins them through RAY_ADDRESS. The
work must spread over both nodes, and nothing may be left running afterwards.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, execute_notebook, free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _ray_processes():
    names = ("raylet", "gcs_server")
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "") in names]


def _wait_for_no_ray(seconds=30):
    for _ in range(seconds):
        if not _ray_processes():
            return True
        time.sleep(1)
    return False


@pytest.fixture
def cluster():
    # local Rays of earlier notebooks exit with their kernels; give them a moment
    assert _wait_for_no_ray(), "a Ray cluster is already running on this machine"
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--include-dashboard=false"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=180)
        assert _wait_for_no_ray(), "Ray processes were left running after `ray stop`"


def test_phase1_validation_on_two_nodes(cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    out = execute_notebook(ROOT / "solutions" / "01_foundation" / "04_validation.ipynb")
    setup, run = out["setup"], out["run_pipelines"]
    assert f"cluster at {cluster}" in setup and "3 CPUs" in setup, setup
    assert "image pipeline: 96 rows" in run and "on 2 nodes" in run, run
