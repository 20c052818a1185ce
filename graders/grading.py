"""Run a learner's pipeline for grading, and read nbgrader's results back for people.

- `run_pipeline(build, *args)`: calls the learner's function, executes the Dataset it returns
  under a `UtilizationMonitor`, and keeps the rows, the time, the measured report and any
  error. Test cells then ask `run.table()`, which turns a failed run into one readable reason.
- `run_step(name, fn, *args)`: calls one step of a learner's job (a training run, a batch job
  that writes files), optionally under a `UtilizationMonitor`, and keeps its return value, time,
  report and error the same way. `run.value()` is the return value or one readable reason.
- `publish(**runs)` / `load_results(...)` / `learner`: see `graders/handover.py`.
- `graded_cells(notebook)`: each graded cell of an autograded notebook with its points, pass or
  fail, the reason and what it printed (its measured numbers). Used by `course check`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
import traceback
from dataclasses import dataclass, field

import pyarrow as pa

from graders.checks import CheckFailed
from graders.telemetry import UtilizationMonitor, UtilizationReport


@dataclass
class PipelineRun:
    name: str
    rows: pa.Table | None = None
    report: UtilizationReport | None = None
    seconds: float = 0.0
    error: str | None = None
    nodes: int = 0  # Ray nodes the pipeline's tasks ran on, all stages together (see _nodes_used)
    arrivals: list = field(default_factory=list)  # (seconds since start, rows) per output block
    actor_stage: bool | None = None  # did a stage run on an actor pool? (None: could not tell)
    # When the grader timed the blocks itself (graders/trusted/custody.py), `arrivals` are its
    # times and these the ones the notebook's own clock reported
    reported: list | None = None

    def table(self) -> pa.Table:
        """The pipeline's rows, or CheckFailed saying why there are none."""
        if self.error:
            raise CheckFailed(f"{self.name} did not run: {self.error}")
        return self.rows

    @property
    def throughput(self) -> float:
        """Rows per second over the whole run, start-up included."""
        return (self.rows.num_rows / self.seconds) if self.rows is not None and self.seconds else 0.0

    def steady(self) -> tuple[float, str]:
        """(rows/s once results flow, how it was measured): start-up left out (`perf.steady_rate`)."""
        from graders.perf import steady_rate

        return steady_rate(self.arrivals, self.seconds)

    def reported_steady(self) -> tuple[float, str]:
        """`steady()` from the arrival times the notebook reported (the same as `steady()` outside grading)."""
        from graders.perf import steady_rate

        return steady_rate(self.arrivals if self.reported is None else self.reported, self.seconds)

    @property
    def startup_seconds(self) -> float:
        """Seconds before the first rows arrived: starting actors, loading the model."""
        return self.arrivals[0][0] if self.arrivals else self.seconds

    def __str__(self) -> str:
        if self.error:
            return f"{self.name}: FAILED - {self.error}"
        util = _utilization_text(self.report)
        blocks = (f"; {len(self.arrivals)} output block{'s' if len(self.arrivals) > 1 else ''}, the first at "
                  f"{self.arrivals[0][0]:.1f} s" if self.arrivals else "")  # a stream: many blocks, the first early
        nodes = f"; on {self.nodes} node{'s' if self.nodes > 1 else ''}" if self.nodes else ""
        return (f"{self.name}: {self.rows.num_rows:,} rows in {self.seconds:.1f} s "
                f"({self.throughput:.1f} rows/s{util}{blocks}{nodes})")


def _utilization_text(report) -> str:
    return f"; {report.device} mean {report.mean:.0f} %" if report and report.mean is not None else ""


def run_pipeline(name: str, build, *args, monitor: bool = True, **kwargs) -> PipelineRun:
    """Build the learner's Dataset with `build(*args, **kwargs)` and execute it once, measured."""
    import ray

    run = PipelineRun(name)

    def execute(start: float) -> None:
        ds = build(*args, **kwargs)
        if not isinstance(ds, ray.data.Dataset):
            raise TypeError(f"expected your function to return a ray.data.Dataset, found {type(ds).__name__}")
        run.actor_stage = _has_actor_stage(ds)
        _check_gpus(ds)
        tables = []
        hand = _hand_to_grader(name)  # every run, monitored or not: the kernel does not choose which the grader times
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4):
            if block.num_rows:  # each output block as it arrives: the timing shows the stream
                run.arrivals.append((time.perf_counter() - start, block.num_rows))
                tables.append(block)
                if hand:
                    hand(block)
        run.rows = pa.concat_tables(tables) if tables else pa.table({})
        run.nodes = _nodes_used(ds)

    return _measured(run, execute, monitor)


def safe_name(name) -> str:
    """A run's name as a file name."""
    return re.sub(r"[^\w-]", "_", str(name))[:80]


def _stream_folder() -> str | None:
    """Where the grader takes this run's output blocks (`COURSE_STREAM`, set only when graded)."""
    return os.environ.get("COURSE_STREAM") or None


def _hand_to_grader(name: str):
    """When graded (`COURSE_STREAM`, set by the grader), a function that writes each output block
    there as it arrives: the grader times and keeps them itself (graders/trusted/custody.py)."""
    drop = _stream_folder()
    if not drop:
        return None
    folder = os.path.join(drop, safe_name(name))
    os.makedirs(folder, exist_ok=True)
    count = itertools.count()

    def hand(block: pa.Table) -> None:
        path = os.path.join(folder, f"{next(count):06d}.arrow")
        with pa.OSFile(path + ".part", "wb") as sink, pa.ipc.new_file(sink, block.schema) as writer:
            writer.write_table(block)
        os.rename(path + ".part", path)  # whole once its name appears

    return hand


def _nodes_used(ds) -> int:
    """Distinct Ray nodes an executed Dataset's tasks ran on, over all its stages.

    Dataset.stats() counts nodes per stage: reads on one node and the model's actor on another
    each say "1 nodes used", yet the pipeline used 2. Ray's per-block stats are internal: without
    them, the largest per-stage count."""
    try:
        todo, seen = [ds._current_executor.get_stats()], set()
        while todo:
            stats = todo.pop()
            for blocks in stats.metadata.values():
                seen.update(b.exec_stats.node_id for b in blocks if getattr(b, "exec_stats", None) and b.exec_stats.node_id)
            todo.extend(stats.parents)
        if seen:
            return len(seen)
    except AttributeError:
        pass
    return max(map(int, re.findall(r"(\d+) nodes used", ds.stats())), default=0)


def _measured(run, execute, monitor: bool):
    """Call `execute(start time)` once: the run gets its time, its report and, instead of a raise, its error."""
    start = time.perf_counter()
    # When graded, the grader measures this run from outside: a sampler of the notebook's own would
    # run inside the run's cgroup, and its CPU (about 6 % of a core, measured on the course's test
    # machine) would count as the pipeline's work.
    mon = UtilizationMonitor() if monitor and not _stream_folder() else contextlib.nullcontext()
    try:
        with mon:  # the monitor's report covers the run even when the learner's code raises
            execute(start)
    except Exception as exc:  # the learner's code: report, never crash the grader
        run.error = _learner_error(exc)
    run.report = getattr(mon, "report", None)
    run.seconds = time.perf_counter() - start
    print(run)
    return run


def _learner_error(exc: Exception) -> str:
    """One line: what the learner's code raised, and where in their cell."""
    if isinstance(exc, NotImplementedError):
        return "the function is not written yet (it raises NotImplementedError)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"line {f.lineno} of your cell" for f in reversed(frames) if f.filename.startswith("<ipython")), "")
    text = str(exc).strip()
    if "Training failed due to worker errors" in text:  # Ray Train: the worker's own error is the last line
        text = next((line.strip() for line in reversed(text.splitlines()) if re.match(r"^\w*(Error|Exception)\b", line.strip())), text)
    elif isinstance(exc, ray_error()):  # a Ray task failed: its first line names Ray's worker; say what your code raised
        causes = [line.strip() for line in text.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line.strip())]
        own = [c for c in causes if not c.startswith("ray.")]
        if own:
            udf = re.search(r'File "(?:<ipython-input|/tmp/ipykernel_)[^"]*", line (\d+), in (\w+)', text)
            where = f"in {udf[2]}, line {udf[1]} of your cell" if udf else where
            cause = re.sub(r"^[\w.]*[.]", "", own[0])  # numpy._core._exceptions._ArrayMemoryError -> _ArrayMemoryError
            return f"{cause} {where}".strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''} {where}".strip()


def ray_error() -> type:
    try:
        from ray.exceptions import RayError
    except ImportError:
        return ()
    return RayError


@dataclass
class StepRun:
    name: str
    result: object = None  # what the learner's function returned
    report: UtilizationReport | None = None
    seconds: float = 0.0
    error: str | None = None

    def value(self):
        """The step's return value, or CheckFailed saying why there is none."""
        if self.error:
            raise CheckFailed(f"{self.name} did not run: {self.error}")
        return self.result

    def __str__(self) -> str:
        if self.error:
            return f"{self.name}: FAILED - {self.error}"
        return f"{self.name}: done in {self.seconds:.1f} s{_utilization_text(self.report)}"


def run_step(name: str, fn, *args, monitor: bool = False, **kwargs) -> StepRun:
    """Call `fn(*args, **kwargs)` once, timed (and measured when `monitor`); errors are kept, not raised."""
    run = StepRun(name)

    def call(_start: float) -> None:
        run.result = fn(*args, **kwargs)

    return _measured(run, call, monitor)


def _has_actor_stage(ds) -> bool | None:
    """Whether a stage of the Dataset's plan is mapped with an ActorPoolStrategy."""
    import ray

    try:
        ops, found = [ds._logical_plan.dag], False  # Ray's plan is internal: fail soft
        while ops:
            op = ops.pop()
            found |= isinstance(getattr(op, "compute", None), ray.data.ActorPoolStrategy)
            ops.extend(op.input_dependencies)
        return found
    except AttributeError:
        return None


def _gpu_requests(ds) -> list[tuple[str, float]]:
    """(stage name, GPUs per task or actor) for each stage of the Dataset's plan that asks for GPUs."""
    try:
        ops, found = [ds._logical_plan.dag], []  # Ray's plan is internal: fail soft
        while ops:
            op = ops.pop()
            args = getattr(op, "ray_remote_args", None) or getattr(op, "_ray_remote_args", None) or {}
            if float(args.get("num_gpus") or 0) > 0:
                found.append((getattr(op, "name", type(op).__name__), float(args["num_gpus"])))
            ops.extend(op.input_dependencies)
        return found
    except (AttributeError, TypeError, ValueError):
        return []


def _check_gpus(ds) -> None:
    """Fail fast, with a reason, when a stage asks for more GPUs than the cluster has (it would wait forever)."""
    import ray

    from graders.session import resources

    have = resources().gpus  # on a cluster, with the GPUs its autoscaler may add
    for name, asked in _gpu_requests(ds):
        if asked > have:
            raise RuntimeError(f"stage {name} asks for num_gpus={asked:g} per task/actor but this Ray cluster has "
                               f"{have:g} GPUs, so it would wait forever. Try: use gr.resources() (res.gpus_per_actor "
                               "is 0 without a GPU) instead of a fixed num_gpus; on a cluster whose autoscaler adds GPU "
                               "nodes, set COURSE_AUTOSCALE_GPUS")


def graded_cells(nb) -> list[dict]:
    """Graded cells of an executed (autograded) notebook: id, points, passed, reason, output, and
    inconclusive (the grader could not decide: `checks.Inconclusive`)."""
    from nbgrader.utils import determine_grade, is_grade

    cells = []
    for cell in nb.cells:
        if not is_grade(cell):
            continue
        score, max_points = determine_grade(cell)
        out, reason, inconclusive = [], "", False
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
                if o.name == "stderr":
                    reason = reason or "the cell wrote to stderr (nbgrader gives 0 for that)"
            elif o.output_type == "display_data" and "text/plain" in o.get("data", {}):
                out.append(o.data["text/plain"] + "\n")
            elif o.output_type == "error":
                reason = f"{o.ename}: {o.evalue}"
                inconclusive = o.ename == "Inconclusive"
        cells.append(dict(id=cell.metadata.nbgrader["grade_id"], points=score, max_points=max_points,
                          passed=score == max_points, reason=reason, output="".join(out).strip(),
                          inconclusive=inconclusive))
    return cells


# The results a run cell hands to the grader, and the questions the grader asks the learner's
# kernel, live in graders/handover.py; these names stay importable from here.
from graders.handover import Folder, MissingRun, learner, load_results, publish, serve_processes_left  # noqa: E402, F401
