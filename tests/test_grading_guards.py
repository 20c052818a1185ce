"""run_pipeline fails fast, with a reason, on a stage that asks for GPUs the cluster lacks."""

from __future__ import annotations

import numpy as np

from graders.grading import _gpu_requests, run_pipeline


def test_a_stage_asking_for_a_missing_gpu_fails_fast_with_a_reason(local_ray):
    ray = local_ray
    have = ray.cluster_resources().get("GPU", 0)
    asked = have + 1

    def build():
        return ray.data.range(8).map_batches(lambda b: b, num_gpus=asked, batch_size=4)

    run = run_pipeline("gpu pipeline", build, monitor=False)
    assert run.seconds < 30 and run.rows is None
    assert f"asks for num_gpus={asked:g} per task/actor but this Ray cluster has {have:g} GPUs" in run.error
    assert "Try: use gr.resources()" in run.error


def test_stages_within_the_cluster_run(local_ray):
    ray = local_ray
    ds = ray.data.range(8).map_batches(lambda b: b, batch_size=4)
    assert _gpu_requests(ds) == []
    run = run_pipeline("cpu pipeline", lambda: ds, monitor=False)
    assert run.error is None and run.rows.num_rows == 8


def test_gpu_requests_are_found_through_the_plan(local_ray):
    ray = local_ray

    class Model:
        def __call__(self, batch):
            return batch

    ds = ray.data.range(8).map_batches(Model, compute=ray.data.ActorPoolStrategy(size=1), num_gpus=0.5, batch_size=4).map_batches(lambda b: b)
    assert [asked for _, asked in _gpu_requests(ds)] == [0.5]


def test_a_failed_ray_task_reports_what_the_learners_code_raised(local_ray):
    ray = local_ray

    def preprocess(batch):
        frames = np.zeros((len(batch["id"]) * 100_000, 3, 224, 224), np.float32)  # far more than memory: numpy refuses
        return {"id": batch["id"], "n": frames.shape[:1] * len(batch["id"])}

    run = run_pipeline("big batches", lambda: ray.data.range(8).map_batches(preprocess, batch_size=4), monitor=False)
    assert run.error.startswith("_ArrayMemoryError: Unable to allocate"), run.error
    assert "ray::" not in run.error
