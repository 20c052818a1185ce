"""The validations run unchanged on a real multi-node Ray cluster (RAY_ADDRESS), data in S3.

Here: Phase 1's validation, run as a learner runs it, on a two-node cluster (tests/cluster.py: a
head node and a worker node, 1 CPU each, started with `ray start` on this machine) with the course
data in object storage (an S3-compatible server on this machine, moto) - the way a course runs
beyond one machine, where every node reads the same bucket. Its graded cells must pass, its image
pipeline must spread over both nodes, it must leave no actor alive on the cluster, and nothing of
the cluster may be left running afterwards.

Here too: Phase 2's yardsticks (the notebook's and the grader's own) read the reviews from S3;
the worker node does not see the driver's temporary folders (no shared scratch disk), and
a graded run's Ray Train checkpoints go to object storage beside the data (`data.run_outputs`,
which `course grade` uses for each run's COURSE_OUTPUTS), from workers on both nodes.

Phases 2-4: each phase's class test grades one of its students with the real `nbgrader autograde`
on such a cluster (`on_cluster` in tests/test_autograde_phase{2,3,4}.py), with the same checks
(work on both nodes, Ray Train's workers or Serve's actors on the cluster, none left alive).
"""

from __future__ import annotations

import os

import pytest
from cluster import CPUS, nodes_used, spread, two_node_cluster
from conftest import ROOT, execute_notebook, s3_server

from graders import data

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long


@pytest.fixture(scope="module")
def s3():
    with s3_server() as root:
        yield root


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    # Started while the S3 server's credentials are in the environment: every node reads the
    # bucket (a real cluster's nodes get theirs from their machine's role or environment). The
    # worker node does not see this session's temporary folders (as root), where the driver
    # writes: it shares no scratch disk with the driver.
    hide = (str(tmp_path_factory.getbasetemp()),) if os.geteuid() == 0 else ()
    with two_node_cluster(hide=hide) as c:
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


TRAIN_TO_S3 = '''
import json, os, sys, tempfile
import ray, ray.train, ray.util.scheduling_strategies, torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
import graders as gr
from graders import data

res = gr.start()
mark = sys.argv[1]  # a file the driver wrote on its own disk


@ray.remote(num_cpus=1)
def sees(path):
    return ray.get_runtime_context().get_node_id(), os.path.exists(path)


# one task pinned to each node (SPREAD is a preference: in CI all six of its tasks once ran on one node)
on = lambda node: ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node, soft=False)
seen = dict(ray.get([sees.options(scheduling_strategy=on(n["NodeID"])).remote(mark)
                     for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]))


def train(config):
    with tempfile.TemporaryDirectory() as folder:
        rank = ray.train.get_context().get_world_rank()  # each worker's own file, in the one checkpoint
        torch.save({"rank": rank}, os.path.join(folder, f"model-{rank}.pt"))
        ray.train.report({"node": ray.get_runtime_context().get_node_id()}, checkpoint=Checkpoint.from_directory(folder))


outputs = data.run_outputs("/nowhere/local", "train-test")  # where a graded run on this cluster writes
result = TorchTrainer(train, scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                      run_config=RunConfig(storage_path=outputs, name="run")).fit()
with result.checkpoint.as_directory() as folder:
    saved = sorted(torch.load(os.path.join(folder, name))["rank"] for name in os.listdir(folder) if name.endswith(".pt"))
fs, base = data.filesystem(outputs)
print(json.dumps({"outputs": outputs, "seen": seen, "checkpoint": result.checkpoint.path, "saved": saved,
                  "files": len(fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(base, recursive=True)))}))
data.remove_outputs(outputs)
print(json.dumps({"left": fs.get_file_info(base).type.name}))
gr.shutdown()
'''


def test_a_graded_runs_training_checkpoints_go_to_object_storage_on_nodes_sharing_no_disk(cluster, s3, monkeypatch, tmp_path):
    """Class grading on a cluster whose data is in S3 gives each run outputs beside the data
    (`data.run_outputs`): Ray Train's workers, one per node, write their checkpoints there and
    the driver reads them back, while the worker node cannot see the driver's temporary folders."""
    if os.geteuid() != 0:
        pytest.skip("hiding folders from the worker node needs root (unshare --mount); as a non-root user the nodes share them")
    import json
    import subprocess
    import sys

    data.prepare(root=s3)
    mark = tmp_path / "driver-only"
    mark.write_text("on the driver's disk")
    env = {**os.environ, "COURSE_DATA": s3, "RAY_ADDRESS": cluster.address, "COURSE_QUIET": "1"}
    out = subprocess.run([sys.executable, "-c", TRAIN_TO_S3, str(mark)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said, left = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert said["outputs"].startswith("s3://course-data/data/small/outputs/graded/train-test?"), said
    assert sorted(said["seen"].values()) == [False, True], f"each node: does it see the driver's file? {said['seen']}"
    assert said["checkpoint"].startswith("course-data/data/small/outputs/graded/train-test/run/"), said
    assert said["saved"] == [0, 1] and said["files"] > 0, f"both workers' files, one on each node: {said}"
    assert left == {"left": "NotFound"}, "the run's outputs were not removed"


def test_phase2_yardsticks_read_the_reviews_from_s3(cluster, s3):
    """Phase 2's yardsticks read the reviews from object storage: the ceiling's input, the naive
    baseline (through Ray, on this cluster) and the grader's own yardstick process
    (graders/trusted/yardsticks.py), started with the server's credentials in its environment."""
    import ray

    from graders import perf
    from graders.trusted.yardsticks import YardstickProcess

    paths = data.prepare(root=s3)
    assert paths.reviews.startswith("s3://course-data/data/small/reviews?")
    assert data.read_reviews(paths.reviews, kept=True).num_rows == data.counts().reviews_kept  # the ceiling's input
    ray.init(address=cluster.address, logging_level="ERROR")
    try:  # the naive baseline reads the reviews through Ray
        embedded = perf.naive_embedding_pipeline(paths.reviews, max_rows=120).count()
        assert 110 <= embedded < 120  # 120 reviews read; every 32nd review has no words and is dropped
    finally:
        ray.shutdown()
    grader = YardstickProcess(paths.reviews)
    try:
        measured = grader.measure()
    finally:
        grader.close()
    assert "error" not in measured and measured["ceiling"] > measured["naive"] > 0, measured


DRIVER = '''
import json, os, tempfile
import numpy as np, ray, torch
import graders as gr

res = gr.start()
print(res)


class Where:  # a model stage: its device is the worker's
    def __init__(self):
        self.device = gr.models.device_for(res.accelerator)

    def __call__(self, batch):
        n = len(batch["id"])
        return {"device": np.array([self.device] * n), "node": np.array([ray.get_runtime_context().get_node_id()] * n)}


rows = ray.data.range(8).map_batches(Where, compute=ray.data.ActorPoolStrategy(size=1), num_gpus=res.gpus_per_actor,
                                     batch_size=4).take_all()
# the notebook's ceiling cell asks for the workers' device, which this process lacks: it runs on a GPU node
reviews = os.path.join(tempfile.mkdtemp(), "reviews")
os.makedirs(reviews)
__import__("pyarrow.parquet").parquet.write_table(gr.data.read_reviews(gr.data.prepare().reviews).slice(0, 64),
                                                  os.path.join(reviews, "part-000.parquet"))
ceiling = gr.perf.model_ceiling(reviews, res.accelerator, monitor=False)


# a driver cell: a model here, on this process's own device, and weights saved elsewhere loaded on it
folder = tempfile.mkdtemp()
torch.save(gr.models.rating_classifier().state_dict(), os.path.join(folder, "model.pt"))
classifier = gr.models.rating_classifier().to(res.driver)
classifier.load_state_dict(torch.load(os.path.join(folder, "model.pt"), map_location="cpu"))
print(json.dumps({"accelerator": res.accelerator, "driver": res.driver, "gpus_per_actor": res.gpus_per_actor,
                  "stage_devices": sorted({r["device"] for r in rows}), "stage_nodes": sorted({r["node"] for r in rows}),
                  "ceiling_rows": ceiling.rows, "ceiling_device": ceiling.device}))
gr.shutdown()
'''


def test_a_driver_on_a_node_without_a_gpu_runs_model_cells_on_its_own_device():
    """A cluster whose head has no GPU and whose worker has one (here a GPU resource the worker
    node advertises, on a machine without one), the notebook on the head: `res` plans GPU stages
    (`accelerator` "cuda", a GPU per actor) while `res.driver`, the notebook's own process, is the
    CPU; the stage is scheduled by its GPU, and the driver's model cells run on its CPU
    (a classifier moved to `res.driver`, its weights loaded with `map_location`). Phase 2's
    ceiling cell, which asks for the workers' device, runs as a Ray task on the GPU node."""
    import json
    import subprocess
    import sys

    with two_node_cluster(gpus={"worker": 1}) as c:
        env = {**os.environ, "RAY_ADDRESS": c.address, "COURSE_QUIET": "1"}
        done = subprocess.run([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        said = json.loads(done.stdout.strip().splitlines()[-1])
        gpu_nodes = {n["NodeID"] for n in c.state().node_table() if n["Alive"] and n["Resources"].get("GPU")}
    assert (said["accelerator"], said["driver"], said["gpus_per_actor"]) == ("cuda", "cpu", 1.0), said
    assert said["stage_devices"] == ["cpu"], said  # no CUDA on this machine: the stage falls back in its own process
    assert len(gpu_nodes) == 1 and set(said["stage_nodes"]) == gpu_nodes, (said, gpu_nodes)
    assert "this notebook's own process: cpu" in done.stdout, done.stdout
    # the ceiling asked for "cuda" ran as a task on the GPU node (its CPU here: no CUDA on this machine)
    assert (said["ceiling_rows"], said["ceiling_device"]) == (62, "cpu"), said
    assert "(a Ray task on a GPU node: this process has no GPU)" in done.stdout, done.stdout


def test_a_ray_client_address_is_refused_with_what_to_do_instead(monkeypatch):
    """Ray Data does not run over Ray Client (ray://): measured on a real client connection, Ray
    2.60 runs remote tasks but fails every Dataset with "'Worker' object has no attribute
    'core_worker'". `gr.start()` says so before connecting, and what to do instead."""
    import graders as gr

    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    with pytest.raises(RuntimeError, match=r"Ray Data does not run over Ray Client.*Try: run JupyterLab on a node of the cluster"):
        gr.start()
