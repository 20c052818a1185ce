"""Start and stop Ray for a notebook: the one place that sizes resources and sets Ray's output.

- `start()` joins the cluster named by `RAY_ADDRESS` when it is set, else starts a local Ray
  sized to this machine. It never asks for a GPU the machine does not have.
- `resources()` says how big a model stage should be on the cluster you are connected to
  (actor-pool size, CPUs and GPUs per actor, batch size, threads). Lessons and graders read
  these numbers instead of hard-coding `num_gpus=1`.
- In lessons, Ray Data shows its progress as a bar in JupyterLab. Under nbgrader (which sets
  `NBGRADER_EXECUTION`) or with `COURSE_QUIET=1`, Ray is quiet: no progress, no INFO lines and no
  worker logs reach stderr, because nbgrader scores any stderr in a test cell as zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")

# `iter_torch_batches` hands torch a batch's memory without copying it, read-only, and torch warns
# once per process that writing into such a tensor is undefined (a warning of two lines). Training
# loops read their batches and never write into them: the lessons' do not, and the warning says
# nothing a learner can act on.
NOT_WRITABLE = r"The given NumPy array is not writable, and PyTorch does not support non-writable tensors"

# What Ray's own worker processes log at INFO that a learner need not read in a lesson: Ray Train
# announces each report, checkpoint and worker start (about 100 lines a fit), and the Datasets it
# streams to its workers log their end every epoch; a Train-internal actor makes
# Ray's C++ core log an ERROR about its own restart policy, and Ray Train passes Ray Data an option
# Ray Data itself calls deprecated (a warning of two lines); under load, Serve says its proxy was not
# ready within 5 s (it checks again, and the lesson's requests wait for it). Each line stays in Ray's log files
# (/tmp/ray/session_latest/logs). Your prints, warnings and errors from workers still show.
QUIET_WORKER_LINES = (
    r"Reporting training result \d+", r"Checkpoint successfully created at", r"Requesting resources: ",
    r"Attempting to start training worker group", r"Started training worker group", r"^- \(ip=.*\) world_rank=",
    r"Setting up process group for", r"Moving model to device", r"Wrapping provided model in DistributedDataParallel",
    r"Dataset \S+ execution finished in",
    r"\[dataset\]: A new progress UI is available", r"Actor with class name: 'PreemptionWatcher'",
    r"`ExecutionOptions.exclude_resources` is deprecated", r"^\s*self.exclude_resources = exclude_resources$",
    r"Proxy actor readiness check for proxy on \S+ didn't complete in",
    r"logging\.cc:\d+: Set ray log level from environment variable",  # each new process, when RAY_BACKEND_LOG_LEVEL is set
    NOT_WRITABLE, r"^\s*result = torch\.as_tensor\(ndarray, dtype=dtype, device=device\)$",
)

# Environment for Ray workers: offline models, no download or progress chatter on stderr.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class Resources:
    """How to size a model stage on the cluster you are connected to."""

    cpus: int  # CPUs Ray may schedule on (whole cluster)
    gpus: int  # GPUs Ray may schedule on (whole cluster); 0 without one
    accelerator: str  # "cuda" when there is a GPU, else "cpu"
    model_actors: int  # actor-pool size for a model stage
    cpus_per_actor: float
    gpus_per_actor: float  # 0 without a GPU: never ask for a GPU that is not there
    torch_threads: int  # intra-op threads each model actor may use
    batch_size: int  # model batch size suited to the device
    train_workers: int  # Ray Train workers (ScalingConfig.num_workers)
    cpus_per_train_worker: float  # ScalingConfig.resources_per_worker["CPU"]; use_gpu when gpus > 0
    # Where this notebook's own process runs a model ("cuda" or "cpu"): the driver. Stages run on
    # the workers (`accelerator`); on a cluster whose head has no GPU the two differ.
    driver: str = ""

    def __post_init__(self):
        if not self.driver:
            object.__setattr__(self, "driver", self.accelerator)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        dev = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}" if self.gpus else "no GPU"
        return (
            f"{self.cpus} CPUs, {dev} -> model stage: {self.model_actors} actor(s) x "
            f"({self.cpus_per_actor:g} CPU, {self.gpus_per_actor:g} GPU), "
            f"batch_size={self.batch_size}, torch threads={self.torch_threads}; training: "
            f"{self.train_workers} worker(s) x ({self.cpus_per_train_worker:g} CPU, {1 if self.gpus else 0} GPU)"
            + (f"; this notebook's own process: {self.driver}" if self.driver != self.accelerator else "")
        )


def plan_resources(cpus: int, gpus: int, driver: str = "") -> Resources:
    """Size a model stage from a CPU and GPU count (pure function; see the rules inline).
    `driver`: the device of the notebook's own process, when it differs from the workers'.

    >>> plan_resources(2, 0).model_actors
    1
    """
    if gpus > 0:
        # One actor per GPU; each keeps at most one CPU (and never more than half of them) so
        # the other CPUs decode and preprocess.
        cpu_share = min(1.0, cpus / (2 * gpus))
        # Training: one worker per GPU (use_gpu=True), with the same CPU share.
        return Resources(cpus, gpus, "cuda", gpus, cpu_share, 1.0, 1, 128, gpus, cpu_share, driver)
    # CPU only: the model actors take at most half the CPUs, so read and preprocessing tasks
    # always find a free CPU (2 actors x 1 CPU on 2 CPUs deadlocks against the read tasks).
    # Each actor still runs torch on its share of the cores.
    if cpus < 2:
        raise ValueError(f"Expected at least 2 CPUs in Ray for a model stage plus read tasks, found {cpus}. "
                         "Try: COURSE_CPUS=2 (Ray's CPUs are logical; a 1-core machine can run 2).")
    actors = max(1, cpus // 2)
    # Training: data-parallel workers that together take half the CPUs (2 workers x 0.5 CPU on 2
    # CPUs): the other half feeds them, because Ray Data's ingest tasks need a free CPU too.
    workers = max(2, cpus // 4)
    return Resources(cpus, 0, "cpu", actors, 1.0, 0.0, max(1, cpus // actors), 16, workers, cpus / 2 / workers, driver)


GRADING_MEMORY_GB = 4  # one graded run: a kernel, a local Ray and a small model


def grading_slots(workers: int | None = None) -> list[dict]:
    """Parallel class-grading runs for this machine, each with its own cores or its own GPU.

    Default: one run per GPU (a GPU is never shared by two graded runs), else one per core on a
    small machine and one per two cores from 4 cores up, no more than memory holds. Each slot is
    {"cores": [...] or None (whole machine), "env": {...}, "label": "..."}.
    """
    import psutil

    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        cores = list(range(os.cpu_count() or 1))
    gpus = _local_gpu_count()
    if gpus:
        n = min(workers or gpus, gpus)
    else:
        per_run = 1 if len(cores) < 4 else 2
        by_memory = int(psutil.virtual_memory().total / 2**30 // GRADING_MEMORY_GB)
        n = workers or max(1, min(len(cores) // per_run, by_memory))
    n = max(1, min(n, len(cores)))
    if n == 1:
        return [{"cores": None, "env": {}, "label": "the whole machine"}]
    share, slots = len(cores) // n, []
    for i in range(n):
        mine = cores[i * share:(i + 1) * share]
        env = {"COURSE_CPUS": str(max(2, len(mine)))}  # Ray's CPUs are logical: 2 on one core is fine
        if gpus:
            env.update(CUDA_VISIBLE_DEVICES=str(i), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        label = (f"core {mine[0]}" if len(mine) == 1 else f"cores {mine[0]}-{mine[-1]}") + (f", GPU {i}" if gpus else "")
        slots.append({"cores": mine, "env": env, "label": label})
    return slots


def is_grading() -> bool:
    """True under nbgrader (autograde/validate) or when COURSE_QUIET=1."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("COURSE_QUIET") == "1"


def _usable_cpus() -> int:
    """Cores this process may use (a class grader pins each parallel run to its own)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _local_cpus() -> int:
    """CPUs a local Ray gets: COURSE_CPUS, else the usable cores (at least 2)."""
    return int(os.environ.get("COURSE_CPUS", max(2, _usable_cpus())))


def _local_gpu_count() -> int:
    from graders.telemetry import nvml_devices

    names, _ = nvml_devices()
    return len(names)


AUTOSCALE_GPUS = "COURSE_AUTOSCALE_GPUS"


def autoscale_gpus() -> int:
    """GPUs the cluster's autoscaler may add (`COURSE_AUTOSCALE_GPUS`, e.g. a KubeRay worker group
    that sits at zero replicas: its max replicas x GPUs each); 0 when unset. Ray's public API does
    not say what an autoscaler may add, only what is there now."""
    value = os.environ.get(AUTOSCALE_GPUS, "0").strip() or "0"
    if not value.isdigit():
        raise ValueError(f"{AUTOSCALE_GPUS} must be a whole number of GPUs (0 or more), but found {value!r}. "
                         f"Try: export {AUTOSCALE_GPUS}=4 for a GPU group that scales up to 4 GPUs, or unset it.")
    return int(value)


def resources() -> Resources:
    """Resources of the running Ray cluster (call `start()` first). On a cluster, GPUs its
    autoscaler may add (`autoscale_gpus()`) count as GPUs: a GPU group at zero still gets GPU stages."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not running. Run the setup cell (`gr.start()`) first.")
    total = dict(ray.cluster_resources())
    if os.environ.get("RAY_ADDRESS"):
        total["GPU"] = max(total.get("GPU", 0), autoscale_gpus())
    # The driver (this process) may sit on a node without a GPU, such as a cluster's head: cells
    # that run a model here use `res.driver`.
    return plan_resources(int(total.get("CPU", 1)), int(total.get("GPU", 0)), "cuda" if _local_gpu_count() else "cpu")


def start(quiet: bool | None = None, progress: bool | None = None) -> Resources:
    """Start (or join) Ray for this notebook and return the sizing for model stages.

    quiet: keep Ray's logs off stderr (default: on under nbgrader or COURSE_QUIET=1).
    progress: show Ray Data progress bars (default: on unless quiet).
    Calling it again reuses the running Ray.
    """
    import ray

    if os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        raise RuntimeError(
            f"RAY_ADDRESS is a Ray Client address ({os.environ['RAY_ADDRESS']}), and Ray Data does not run over Ray "
            "Client: it drives every pipeline from this process, which then needs a Ray worker of its own (Ray "
            "2.60 fails with \"'Worker' object has no attribute 'core_worker'\"). Try: run JupyterLab on a node of "
            "the cluster (its head, or a pod beside it) with RAY_ADDRESS=<head>:6379.")
    if os.environ.get("COURSE_GRADER") == "1" and not os.environ.get("RAY_ADDRESS"):
        # The grader's own kernel (graders/trusted/nbgrader_ext.py) grades results, it runs no pipeline:
        # the resources a run gets on this machine, sized as below, without starting Ray.
        return plan_resources(_local_cpus(), _local_gpu_count())
    quiet = is_grading() if quiet is None else quiet
    progress = (not quiet) if progress is None else progress
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no auth-token warning on a local Ray
    if quiet and not ray.is_initialized():
        # Ray 2.60's C++ core logs a false alarm at ERROR level for every Ray Data actor pool
        # (ray-project/ray#53727) straight to the process's stderr. Graded cells must stay
        # clean; real failures still raise Python exceptions. Lessons show the line and explain it.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)

    if not ray.is_initialized():
        if not quiet:
            _quiet_worker_chatter()
        options = dict(
            logging_level=logging.ERROR if quiet else logging.WARNING,
            log_to_driver=not quiet,
            # Worker processes log Ray's own warnings at ERROR: Ray Train 2.60's placement-group
            # cleaner polls the State API, which needs the dashboard (not installed here), and
            # warns about it every few seconds. Your prints and Python warnings still show.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
        )
        address = os.environ.get("RAY_ADDRESS")
        with _native_stderr_captured():  # the C++ core announces its log level on stderr
            if address:
                # A cluster's workers get WORKER_ENV through the job's runtime environment. A local
                # Ray inherits it from this process instead: a runtime environment would keep the
                # job from using the workers Ray starts in advance (about 6 s more per notebook).
                ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, **options)
            else:
                # No dashboard, so no State API: Ray Train's placement-group cleaner (a worker of
                # every fit) asks GCS for the dashboard's address for 40 s, then its thread dies with
                # a traceback in the notebook (a fit of 50 s showed it). An address that refuses at
                # once makes the State API fail the way the cleaner expects, and it carries on quietly.
                os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
                ray.init(num_cpus=_local_cpus(), num_gpus=_local_gpu_count(), include_dashboard=False, **options)
    res = resources()
    note = _configure_output(quiet, progress, res.cpus)
    if not quiet:
        where = f"cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "local"
        print(f"Ray {ray.__version__} ({where}): {res}")
        if note:
            print(note)
        now = int(ray.cluster_resources().get("GPU", 0))
        if res.gpus > now:
            print(f"GPUs: {now} now, up to {res.gpus} as the autoscaler adds them ({AUTOSCALE_GPUS}); a GPU stage "
                  "waits for its first GPU node (minutes), so use ActorPoolStrategy(min_size=1, max_size=res.model_actors).")
    return res


def shutdown() -> None:
    """Stop Ray (or disconnect from the cluster). Safe to call twice.

    Names the actors you started and left alive first: a local Ray stops them now, but on a
    shared cluster a detached actor keeps its CPUs and memory until someone kills it."""
    import ray

    if ray.is_initialized():
        left = actors_left()
        if left:
            print(f"gr.shutdown: {len(left)} actor(s) you started were still alive: {', '.join(left)}. "
                  "A local Ray stops them now; on a cluster they would hold their resources. "
                  "Try: ray.kill(actor) when you are done with one.")
        ray.shutdown()


_RAY_ACTORS = ("MapWorker", "SplitCoordinator", "AutoscalingRequester", "ActorLocationTracker", "ServeController",
               "ProxyActor", "ServeReplica", "RayTrainWorker", "TrainController")  # started by Ray's libraries


def actors_left() -> list[str]:
    """Live actors of this job that Ray's own libraries did not start ("Class 'name'")."""
    import ray
    from ray._private import state  # no public API without the dashboard: fail soft

    try:
        job = ray.get_runtime_context().get_job_id()
        return [f"{a['ActorClassName']}" + (f" '{a['Name']}'" if a.get("Name") else "")
                for a in state.actors().values()
                if a.get("State") == "ALIVE" and a.get("JobID") == job
                and not a["ActorClassName"].startswith(("_", *_RAY_ACTORS))]
    except Exception:
        return []


SERVE_PROCESSES = ("ray::ServeController", "ray::ServeReplica", "ray::ProxyActor")
# Ray Serve's logging for the course: warnings and errors only, no access log (one INFO line per
# request would flood a notebook). Pass it to serve.start(...) and serve.run(...). In production
# the access log goes to files under /tmp/ray/session_latest/logs/serve/.
SERVE_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


def serve_processes(procs=None) -> list[str]:
    """Ray Serve processes alive on this machine (controller, replicas, HTTP proxies), by title;
    or among `procs` (psutil processes: the grader passes a run's own).

    Ray names its worker processes after the actor they run ("ray::ServeReplica:app:Deployment");
    after `serve.shutdown()` none should be left.
    """
    import psutil

    if procs is None:
        cmdlines = [proc.info["cmdline"] for proc in psutil.process_iter(["cmdline"])]
    else:
        cmdlines = []
        for proc in procs:
            try:
                cmdlines.append(proc.cmdline())
            except psutil.Error:  # gone meanwhile
                continue
    found = []
    for cmdline in cmdlines:
        title = " ".join(cmdline or []).strip()
        if title.startswith(SERVE_PROCESSES):
            found.append(title.split(".")[0] if title.startswith("ray::ServeController") else title.split(" ")[0])
    return sorted(found)


@contextlib.contextmanager
def _native_stderr_captured():
    """Hold what native code writes to file descriptor 2; show it only if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


SMALL_MACHINE_CPUS = 8  # below this, start() switches Ray Data to the sort shuffle and the classic Parquet reader


def _configure_output(quiet: bool, progress: bool, cpus: int) -> str | None:
    """Ray's loggers, progress display and, below SMALL_MACHINE_CPUS, two settings that start
    faster; returns the one line that says so (None when nothing was switched)."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)
    warnings.filterwarnings("ignore", message=NOT_WRITABLE, category=UserWarning)  # in this process too (see NOT_WRITABLE)
    # Lessons write their outputs again each time they run: "[SaveMode=overwrite] Replacing contents" is expected.
    logging.getLogger("ray.data.datasource.file_datasink").setLevel(logging.ERROR)
    cpus_warning = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _OnlyWhenNoCpuFrees) for f in cpus_warning.filters):
        cpus_warning.addFilter(_OnlyWhenNoCpuFrees())
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    # "Starting execution of Dataset" and its plan are INFO lines, which this process never shows
    # (its Ray loggers are at WARNING); Datasets that run elsewhere (those Ray Train streams to its
    # workers) take this context with them, and would print both every epoch.
    ctx.print_on_execution_start = False
    ctx.enable_progress_bar_name_truncation = False  # else Ray warns once that it cut a long fused name to 100 characters
    note = None
    if cpus < SMALL_MACHINE_CPUS:
        # Ray 2.60's new Parquet reader (DataSourceV2) starts footer-reading actors for every
        # read_parquet: about 10 s per read on a 2-CPU machine instead of 1.5 s. The classic
        # reader reads the same files; bigger clusters keep the new one.
        ctx.use_datasource_v2 = False
        # A groupby shuffles rows by key. Ray 2.60's default shuffle starts aggregator actors for
        # every groupby: 4-10 s each on 2 CPUs, against 0.2 s for the sort-based shuffle's tasks.
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        note = (f"Small machine ({cpus} CPUs, under {SMALL_MACHINE_CPUS}): groupby and sort use the sort-based shuffle "
                "(num_partitions is not used) and read_parquet the classic reader, which start faster here.")
    if progress and _in_jupyter():
        from graders.progress import use_notebook_progress

        use_notebook_progress()
    return note


def _quiet_worker_chatter() -> None:
    """Leave QUIET_WORKER_LINES out of the worker logs Ray prints in this process (log_to_driver).

    Ray 2.60 prints them with `ray._private.worker.print_to_stdstream`, which `ray.init` hands to
    its log thread: replaced before `ray.init`, so the first lines (workers Ray starts in advance)
    are filtered too."""
    import re

    from ray._private import worker

    if getattr(worker.print_to_stdstream, "course_quiet", False):
        return
    chatter = re.compile("|".join(QUIET_WORKER_LINES))
    print_all = worker.print_to_stdstream

    def print_to_stdstream(batch, ignore_prefix):
        lines = [line for line in batch.get("lines", ()) if not chatter.search(line)]
        if lines:
            print_all({**batch, "lines": lines}, ignore_prefix)

    print_to_stdstream.course_quiet = True
    worker.print_to_stdstream = print_to_stdstream


class _OnlyWhenNoCpuFrees(logging.Filter):
    """Ray Data warns "The Ray cluster currently does not have any available CPUs. The Dataset job
    will hang..." when it starts a Dataset at the moment the actors of the one before are still
    handing their CPUs back (a false alarm, measured in Lessons 2.3 and 3.1). Keep the warning
    only when no CPU frees up within 5 s: then something (a Serve replica, an actor you keep)
    really holds them all."""

    WAIT_S = 5.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "does not have any available CPUs" not in record.getMessage():
            return True
        import time

        import ray

        deadline = time.monotonic() + self.WAIT_S
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU"):
                return False
            time.sleep(0.1)
        return True


def _in_jupyter() -> bool:
    return "ipykernel" in sys.modules and type(sys.stdout).__name__ == "OutStream"
