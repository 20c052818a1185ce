"""The validations run unchanged on a real multi-node Ray cluster (RAY_ADDRESS), data in S3.

Here: Phase 1's validation, run as a learner runs it, on a two-node cluster (tests/cluster.py: a
head node and a worker node, 1 CPU each, started with `ray start` on this machine) with the course
data in object storage (an S3-compatible server on this machine, moto) - the way a course runs
beyond one machine, where every node reads the same bucket. Its graded cells must pass, its image
pipeline must spread over both nodes, it must leave no actor alive on the cluster, and nothing of
the cluster may be left running afterwards.

Phases 2-4: each phase's class test grades one of its students with the real `nbgrader autograde`
on such a cluster (`on_cluster` in tests/test_autograde_phase{2,3,4}.py), with the same checks
(work on both nodes, Ray Train's workers or Serve's actors on the cluster, none left alive).
"""

from __future__ import annotations

import pytest
from cluster import CPUS, nodes_used, spread, two_node_cluster
from conftest import ROOT, execute_notebook, s3_server

from graders import data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3():
    with s3_server() as root:
        yield root


@pytest.fixture(scope="module")
def cluster(s3):
    # Started while the S3 server's credentials are in the environment: every node reads the
    # bucket (a real cluster's nodes get theirs from their machine's role or environment).
    with two_node_cluster() as c:
        yield c


def test_phase1_validation_on_two_nodes_with_its_data_in_s3(cluster, s3, monkeypatch, tmp_path):
    paths = data.prepare(root=s3)  # the course data, built into the bucket
    assert paths.images.startswith("s3://course-data/data/small/images?")
    assert data.prepare(root=s3) == paths  # idempotent: the manifest in S3 is found
    monkeypatch.setenv("COURSE_DATA", s3)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path / "outputs"))
    before = set(cluster.actors())

    out = execute_notebook(ROOT / "solutions" / "01_foundation" / "04_validation.ipynb")
    assert f"(cluster at {cluster.address}): {CPUS} CPUs" in out["setup"], out["setup"]  # gr.start() joined it
    run = out["run_pipelines"]
    assert "image pipeline: 96 rows" in run and "text pipeline: 240 rows" in run, run
    assert nodes_used(run, "image pipeline") == 2, run
    print(run, spread(cluster.actors_since(before)), sep="\n")
