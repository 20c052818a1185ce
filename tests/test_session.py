"""Resource sizing is computed in one place and never asks for a GPU that is not there."""

import pytest

from graders import session
from graders.session import is_grading, plan_resources


@pytest.mark.parametrize("cpus", [2, 3, 4, 16, 64])
def test_cpu_only_leaves_room_for_read_tasks(cpus):
    res = plan_resources(cpus, 0)
    assert res.accelerator == "cpu" and res.gpus_per_actor == 0
    assert res.model_actors * res.cpus_per_actor <= cpus // 2, "actors would starve the read tasks (deadlock)"
    assert res.model_actors * res.torch_threads <= cpus


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_one_actor_per_gpu(gpus):
    res = plan_resources(16, gpus)
    assert res.accelerator == "cuda"
    assert res.model_actors == gpus and res.gpus_per_actor == 1.0
    assert res.batch_size >= 64


@pytest.mark.parametrize("cpus,gpus", [(2, 0), (3, 0), (4, 0), (16, 0), (64, 0), (16, 1), (16, 2), (8, 8)])
def test_training_leaves_half_the_cpus_to_ray_data(cpus, gpus):
    res = plan_resources(cpus, gpus)
    assert res.train_workers >= (2 if not gpus else gpus), "data-parallel training needs workers to split the data"
    assert res.train_workers * res.cpus_per_train_worker <= cpus / 2, "training would starve Ray Data's ingest"
    assert res.cpus_per_train_worker > 0


def test_too_few_cpus_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 CPUs"):
        plan_resources(1, 0)


def test_grading_mode_follows_nbgrader(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.delenv("COURSE_QUIET", raising=False)
    assert not is_grading()
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert is_grading()
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("COURSE_QUIET", "1")
    assert is_grading()


def test_grading_slots_never_share_a_gpu_or_a_core(monkeypatch):
    """Class grading: one run per GPU at most, and each run on cores no other run has."""
    from graders import session

    monkeypatch.setattr(session.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(session, "_local_gpu_count", lambda: 2)
    slots = session.grading_slots(workers=4)
    assert [s["env"]["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    assert all(s["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for s in slots)
    monkeypatch.setattr(session, "_local_gpu_count", lambda: 0)
    cores = [set(s["cores"]) for s in session.grading_slots()]
    assert 1 < len(cores) <= 8 and all(len(c) >= 2 for c in cores)  # 16 cores: two or more a run (memory caps the count)
    assert len(set().union(*cores)) == sum(map(len, cores))  # disjoint
    assert session.grading_slots(workers=1) == [{"cores": None, "env": {}, "label": "the whole machine"}]


def test_a_gpu_group_the_autoscaler_may_add_gets_gpu_stages_on_a_cluster(monkeypatch):
    """A KubeRay GPU group at zero replicas: Ray sees no GPU yet. With COURSE_AUTOSCALE_GPUS the
    plan has GPU stages and a stage asking for a GPU is not refused; a local Ray ignores it."""
    import ray

    from graders import grading, session

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(grading, "_gpu_requests", lambda ds: [("MapBatches(Embed)", 1.0)])
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(RuntimeError, match="asks for num_gpus=1 per task/actor but this Ray cluster has 0 GPUs.*COURSE_AUTOSCALE_GPUS"):
        grading._check_gpus(None)
    monkeypatch.setenv("COURSE_AUTOSCALE_GPUS", "4")
    res = session.resources()
    assert (res.gpus, res.accelerator, res.gpus_per_actor, res.model_actors) == (4, "cuda", 1.0, 4), res
    grading._check_gpus(None)
    monkeypatch.setenv("COURSE_AUTOSCALE_GPUS", "four")
    with pytest.raises(ValueError, match="must be a whole number of GPUs.*found 'four'.*Try: export COURSE_AUTOSCALE_GPUS=4"):
        session.resources()
    monkeypatch.setenv("COURSE_AUTOSCALE_GPUS", "4")
    monkeypatch.delenv("RAY_ADDRESS")
    assert session.resources().gpus == 0  # a local Ray: what this machine has


def test_the_driver_device_is_the_accelerator_unless_said_otherwise():
    assert plan_resources(2, 0).driver == "cpu" and plan_resources(16, 1).driver == "cuda"
    head = plan_resources(16, 1, "cpu")  # a cluster's head without a GPU
    assert (head.accelerator, head.driver) == ("cuda", "cpu")
    assert "this notebook's own process: cpu" in str(head) and "own process" not in str(plan_resources(16, 1))


def test_a_small_machine_gets_the_faster_starting_shuffle_and_reader_and_one_line_says_so():
    """Below 8 CPUs `gr.start()` switches Ray Data to the sort-based shuffle and the classic Parquet
    reader (they start faster there; lessons 2.3 and 4.2 say what that changes) and prints why."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    saved = ctx.shuffle_strategy, ctx.use_datasource_v2
    try:
        note = session._configure_output(quiet=True, progress=False, cpus=2)
        assert ctx.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED and not ctx.use_datasource_v2
        assert note.startswith("Small machine (2 CPUs, under 8): groupby and sort use the sort-based shuffle"), note
        ctx.shuffle_strategy, ctx.use_datasource_v2 = saved
        assert session._configure_output(quiet=True, progress=False, cpus=16) is None
        assert (ctx.shuffle_strategy, ctx.use_datasource_v2) == saved, "a big machine keeps Ray's defaults"
    finally:
        ctx.shuffle_strategy, ctx.use_datasource_v2 = saved


def test_rays_own_worker_chatter_is_left_out_and_everything_else_printed(monkeypatch):
    """`start()` (not quiet) replaces the function Ray prints worker logs with, before `ray.init`:
    the lines of QUIET_WORKER_LINES go, a learner's print and a real error stay; a batch of
    chatter only prints nothing."""
    from ray._private import worker

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda batch, ignore_prefix: printed.append(batch))
    session._quiet_worker_chatter()
    session._quiet_worker_chatter()  # once only
    worker.print_to_stdstream({"pid": 7, "is_err": True, "lines": [
        "Reporting training result 3: TrainingReport(checkpoint=None, metrics={'epoch': 3})",
        "epoch 3: loss 0.41",
        "- (ip=10.0.0.1, pid=123) world_rank=0, local_rank=0, node_rank=0",
        "[2026-12-07 00:07:16,497 I 24783 24783] logging.cc:303: Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL to 3",
        "ValueError: a real error",
    ]}, False)
    worker.print_to_stdstream({"pid": 7, "is_err": True, "lines": ["Dataset train_1 execution finished in 0.52 seconds"]}, False)
    assert [b["lines"] for b in printed] == [["epoch 3: loss 0.41", "ValueError: a real error"]]
    assert printed[0]["pid"] == 7


def test_every_stderr_line_of_a_lesson_must_be_explained():
    import lesson_runs

    assert lesson_runs.unexplained("\n") == []
    assert lesson_runs.unexplained("2026-12-06 WARNING x.py:1 -- something new\n") == ["2026-12-06 WARNING x.py:1 -- something new"]
