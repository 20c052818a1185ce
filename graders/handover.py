"""Results and questions between the learner's kernel and the grader's: data only, never pickle.

Under `nbgrader autograde` the graded test cells never run in the learner's kernel: a fresh
grader kernel runs them (graders/trusted/nbgrader_ext.py). Between the two there are files:

- `publish(**runs)`, in the learner's kernel: the validation's locked run cells hand over what
  the pipelines produced (runs, lists and dicts of runs, a training result, a `Folder` a job
  wrote) as Parquet and JSON. Outside `nbgrader autograde` it does nothing.
- `load_results(...)`, in the grader's kernel: reads them back. The runs the grader measured get
  the grader's own utilization report, never the notebook's.
- `learner.call(...)` / `learner.pipeline(...)`: a hidden test calls one of the learner's
  functions on inputs the learner never saw. In the grader's kernel the call is a question: its
  inputs go to the learner's kernel as files, `answer()` runs the function there, and only the
  answer comes back, as files (the cell then runs again and reads it). Elsewhere it runs here.
- `serve_processes_left()`: the Ray Serve processes left after the service cell, as the grader
  counted them from outside the notebook (in JupyterLab: counted here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from graders.checks import CheckFailed
from graders.grading import PipelineRun, StepRun, _learner_error, run_pipeline, safe_name

RESULTS = "results"  # beside the notebook; COURSE_RESULTS moves it
QUESTIONS, ANSWERS = "questions", "answers"  # beside the notebook, in the learner's kernel
MAX_FOLDER_BYTES = 256 * 2**20  # a published folder or an answer larger than this is not copied


def _results_dir() -> str:
    return os.environ.get("COURSE_RESULTS") or RESULTS


def handing_over() -> bool:
    return os.environ.get("NBGRADER_EXECUTION") == "autograde" or bool(os.environ.get("COURSE_RESULTS"))


@dataclass(frozen=True)
class Folder:
    """A folder a job wrote (a local path or a URI). Published as a copy of its files; the grader's
    kernel gets the copy's local path in its place."""

    path: str


# ------------------------------------------------------------------ the learner's kernel: publish
def publish(**runs) -> None:
    """Hand these results (PipelineRun, StepRun, perf.Ceiling, lists and dicts of them, a Folder)
    to the grader, as files. Does nothing outside `nbgrader autograde`: in JupyterLab the tests
    run right here."""
    if not handing_over():
        return
    folder = _results_dir()
    os.makedirs(folder, exist_ok=True)
    manifest = {}
    for key, run in runs.items():
        try:
            manifest[key] = _entry(_safe(key), run, folder)
        except Exception as exc:  # a result that cannot be written is a result the grader lacks, with why
            manifest[key] = {"kind": "error", "error": f"it could not be handed to the grader ({type(exc).__name__}: {exc})"}
    path = os.path.join(folder, "manifest.json")
    try:
        old = json.load(open(path))
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    with open(path, "w") as f:
        json.dump({**old, **manifest}, f, default=repr)


_safe = safe_name


def _entry(key: str, run, folder: str) -> dict:
    import pyarrow.parquet as pq

    from graders.perf import Ceiling

    if isinstance(run, (list, tuple)):
        return {"kind": "list", "items": [_entry(f"{key}.{i}", r, folder) for i, r in enumerate(run)]}
    if isinstance(run, dict):
        return {"kind": "dict", "items": {str(k): _entry(f"{key}.{_safe(k)}", r, folder) for k, r in run.items()}}
    if isinstance(run, Folder):
        _copy_files(run.path, os.path.join(folder, key))
        return {"kind": "Folder", "path": key}
    entry = {"kind": type(run).__name__, "seconds": getattr(run, "seconds", 0.0)}
    if isinstance(run, PipelineRun):
        entry.update(name=run.name, error=run.error, nodes=run.nodes, arrivals=run.arrivals, actor_stage=run.actor_stage)
        if run.error is None:
            pq.write_table(run.rows, os.path.join(folder, f"{key}.parquet"))
    elif isinstance(run, StepRun):
        entry.update(name=run.name, error=run.error, **_step_result(key, run.result, folder))
    elif isinstance(run, Ceiling):
        entry.update(rows_count=run.rows, batch_size=run.batch_size, device=run.device)
    else:
        entry = {"kind": "value", "value": plain(run)}
    return entry


def _step_result(key: str, result, folder: str) -> dict:
    """A step's return value as data: a Table as Parquet; a Ray Train result as its metrics, its
    history (Parquet) and its checkpoint's path; anything else as JSON."""
    import pyarrow.parquet as pq

    if isinstance(result, pa.Table):
        pq.write_table(result, os.path.join(folder, f"{key}.result.parquet"))
        return {"result_kind": "table"}
    if hasattr(result, "metrics") and hasattr(result, "checkpoint") and hasattr(result, "metrics_dataframe"):
        history = result.metrics_dataframe
        if history is not None:
            pq.write_table(pa.Table.from_pandas(history, preserve_index=False), os.path.join(folder, f"{key}.history.parquet"))
        checkpoint = getattr(result.checkpoint, "path", None)
        return {"result_kind": "training", "metrics": plain(dict(result.metrics or {})),
                "checkpoint": None if checkpoint is None else str(checkpoint)}
    return {"result": plain(result)}


def plain(value):
    """A JSON value for what a learner's function returned (numpy scalars and arrays included);
    anything else becomes its repr, which a test then reports as what it found."""
    import numpy as np

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def _copy_files(source: str, target: str, limit: int = MAX_FOLDER_BYTES) -> None:
    """Copy the regular files under `source` (a local folder or a URI) to the local folder
    `target`: never a link, never more than `limit` bytes."""
    from pyarrow import fs as pafs

    from graders.data import filesystem

    os.makedirs(target, exist_ok=True)
    total = 0
    if "://" not in source:
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                total += os.path.getsize(path)
                if total > limit:
                    raise OSError(f"{source} holds more than {limit // 2**20} MB")
                out = os.path.join(target, os.path.relpath(path, source))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                shutil.copyfile(path, out)
        return
    fs, base = filesystem(source)
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        total += info.size or 0
        if total > limit:
            raise OSError(f"{source} holds more than {limit // 2**20} MB")
        out = os.path.join(target, os.path.relpath(info.path, base))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(out, "wb") as dst:
            dst.write(src.read())


# ------------------------------------------------------------------ the grader's kernel: load_results
@dataclass
class MissingRun:
    """What the grader stands in for a result the notebook never handed over."""

    name: str
    error: str
    report: object = None
    rows: pa.Table | None = None
    result: object = None

    def table(self):
        raise CheckFailed(f"{self.name}: {self.error}")

    value = table


@dataclass
class SavedCheckpoint:
    path: str


@dataclass
class TrainingResult:
    """A Ray Train result as the grader reads it: the last metrics, the history of reports, the
    last checkpoint's path (`ray.train.Result`'s names)."""

    metrics: dict
    metrics_dataframe: object  # pandas.DataFrame
    checkpoint: SavedCheckpoint | None


def load_results(folder: str, expected: list[str], outside_report: str | None = None,
                 measured: tuple[str, ...] = (), stopped: tuple[str, ...] = (), kept: str | None = None,
                 unmonitored: tuple[str, ...] = ()) -> dict:
    """The grader's side of `publish`: the results the notebook handed over, by name. Each name in
    `expected` the notebook did not hand over becomes a `MissingRun` saying so. The runs named in
    `measured` get the grader's own utilization report (`outside_report`, a JSON file), never the
    notebook's (in a list, the last run: the measured cell's), and, when the grader kept their
    output blocks (`kept`, graders/trusted/custody.py), the rows and arrival times it took itself.
    `unmonitored`: the measured runs the course's own cell runs without a monitor
    (`nbgrader_ext._unmonitored`); every other measured run gets the report: the grader, not the
    notebook, says which runs it measured.
    `stopped`: cells stopped at their time limit (a missing result says so)."""
    from graders.telemetry import UtilizationReport

    _tensor_types_without_pickle()
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
        assert isinstance(manifest, dict)
    except (OSError, ValueError, AssertionError):
        manifest = {}
    report = None
    if outside_report and os.path.exists(outside_report):
        with open(outside_report) as f:
            report = UtilizationReport.from_dict(json.load(f))
        report.source = "measured by the grader from outside the notebook"
    why = (f"cell {', '.join(stopped)} was stopped at its time limit before it handed this result to the grader"
           if stopped else "its run cell handed no result to the grader (see that cell's output)")
    loaded = {}
    for key in expected:
        entry = manifest.get(key)
        if not isinstance(entry, dict):
            loaded[key] = MissingRun(key, f"did not run: {why}")
            continue
        try:
            loaded[key] = _rebuild(_safe(key), entry, folder, *((report, kept) if key in measured else (None, None)),
                                   monitored=key in measured and key not in unmonitored)
        except Exception as exc:  # files the notebook wrote: anything may be wrong with them
            loaded[key] = MissingRun(key, f"did not run: its results could not be read ({type(exc).__name__}: {exc})"[:300])
    return loaded


def _tensor_types_without_pickle() -> None:
    """Ray's tensor column types (their metadata is JSON), so a tensor column reads back as it was
    written; never Ray's pickled-object type, whose values unpickle when read: these files were
    written by the learner's code, and the grader reads them as data."""
    os.environ["RAY_DATA_AUTOLOAD_CLOUDPICKLE_TENSOR_METADATA"] = "0"
    import ray.data._internal.tensor_extensions.arrow  # noqa: F401  (registers the tensor types)

    try:
        pa.unregister_extension_type("ray.data.arrow_pickled_object")
    except (KeyError, pa.ArrowKeyError):
        pass


def _rebuild(key, entry, folder, report, kept=None, monitored: bool = False):
    """One published result as it was. `monitored`: whether the grader's report goes to it (in a
    list, to its last run: the measured cell appends it), decided by the grader."""
    import pyarrow.parquet as pq

    from graders.perf import Ceiling

    kind = entry.get("kind")
    if kind == "list":
        items = list(entry.get("items") or [])
        runs = [i for i, e in enumerate(items) if isinstance(e, dict) and e.get("kind") in ("PipelineRun", "StepRun")]
        last = runs[-1] if monitored and runs else None
        return [_rebuild(f"{key}.{i}", e, folder, *((report, kept) if i == last else (None, None)), monitored=i == last)
                for i, e in enumerate(items)]
    if kind == "dict":
        return {str(k): _rebuild(f"{key}.{_safe(k)}", e, folder, report, kept, monitored) for k, e in dict(entry.get("items") or {}).items()}
    if kind == "Folder":
        return os.path.join(folder, key)
    if kind == "value":
        return entry.get("value")
    if kind == "error":
        return MissingRun(key, f"did not run: {entry.get('error')}")
    name = str(entry.get("name", key))
    seconds = float(entry.get("seconds") or 0.0)
    error = None if entry.get("error") is None else str(entry["error"])
    report = report if monitored else None
    if kind == "PipelineRun":
        rows = pq.read_table(os.path.join(folder, f"{key}.parquet")) if error is None else None
        arrivals = [(float(t), int(n)) for t, n in entry.get("arrivals") or []]
        reported = None
        if kept is not None and error is None:  # whatever the notebook says of the run (monitored or not)
            reported = arrivals
            rows, arrivals, seconds, error = _witnessed(kept, name, rows, seconds)
        actor = entry.get("actor_stage")
        return PipelineRun(name, rows=rows, report=report, seconds=seconds, error=error, nodes=int(entry.get("nodes") or 0),
                           arrivals=arrivals, actor_stage=None if actor is None else bool(actor), reported=reported)
    if kind == "StepRun":
        result = entry.get("result")
        if error is None and entry.get("result_kind") == "table":
            result = pq.read_table(os.path.join(folder, f"{key}.result.parquet"))
        elif error is None and entry.get("result_kind") == "training":
            history = os.path.join(folder, f"{key}.history.parquet")
            checkpoint = entry.get("checkpoint")
            result = TrainingResult(metrics=dict(entry.get("metrics") or {}),
                                    metrics_dataframe=pq.read_table(history).to_pandas() if os.path.exists(history) else None,
                                    checkpoint=None if checkpoint is None else SavedCheckpoint(str(checkpoint)))
        return StepRun(name, result=result, report=report, seconds=seconds, error=error)
    if kind == "Ceiling":
        return Ceiling(rows=int(entry["rows_count"]), seconds=seconds, batch_size=int(entry.get("batch_size") or 0),
                       device=str(entry.get("device", "")), report=report)
    raise ValueError(f"unknown kind of result {kind!r}")


def _witnessed(kept: str, name: str, published: pa.Table, seconds: float):
    """(rows, arrivals, seconds, error) of a measured run as the grader kept its output blocks
    (graders/trusted/custody.py): the rows the grader took, each block's arrival on the grader's
    clock; the run's time at least its last block's and at most its cell's."""
    from graders.trusted.custody import INDEX

    try:
        index = json.loads((Path(kept) / INDEX).read_text())
        blocks = index["arrivals"].get(_safe(name), [])
        tables = [pa.ipc.open_file(str(Path(kept) / _safe(name) / file)).read_all() for _, file in blocks]
        rows = pa.concat_tables(tables) if tables else None
    except Exception as exc:  # blocks the notebook wrote: anything may be wrong with them
        return None, [], seconds, f"the grader could not read the output blocks it kept ({type(exc).__name__}: {exc})"[:300]
    if index.get("problem"):
        return None, [], seconds, f"the grader kept only part of its output: {index['problem']}"
    if rows is None:
        if published.num_rows == 0:
            return published, [], seconds, None
        return None, [], seconds, ("the grader saw none of its output blocks arrive while the run cell ran (a graded run "
                                   "hands each block to the grader as it arrives). Try: run the validation's cells as "
                                   "released, with run_pipeline from graders.grading.")
    arrivals = [(float(t), table.num_rows) for (t, _), table in zip(blocks, tables)]
    seconds = max(seconds, arrivals[-1][0])
    cell = grader_measured("run_cell_seconds")
    return rows, arrivals, (min(seconds, float(cell)) if cell else seconds), None


# ------------------------------------------------------------------ questions for the learner's functions
@dataclass(frozen=True)
class Their:
    """A value in the learner's notebook, by name and attributes: `learner.their("run", "result")`."""

    names: tuple


@dataclass(frozen=True)
class AsDataset:
    """A table the learner's function gets as a `ray.data.Dataset`."""

    table: pa.Table


class Unanswered(BaseException):  # noqa: N818  (not an error: the grader answers it and runs the cell again)
    """The grader's kernel asked the learner's kernel a question that has no answer yet."""


class Learner:
    """The learner's functions, called by a hidden test (`gr.grading.learner`)."""

    @staticmethod
    def their(name: str, *attributes: str) -> Their:
        return Their((name, *attributes))

    @staticmethod
    def folder(path: str) -> Folder:
        return Folder(path)

    @staticmethod
    def dataset(table: pa.Table) -> AsDataset:
        return AsDataset(table)

    def call(self, function: str, *args):
        """`function(*args)` in the learner's notebook: what it returned (JSON values or a Table)."""
        if os.environ.get("COURSE_QUESTIONS"):
            return _ask(function, args, None)
        return _function(function, _notebook())(*[_argument_here(a) for a in args])

    def pipeline(self, name: str, function: str, *args) -> PipelineRun:
        """The learner's `function(*args)`, which returns a Dataset, executed by `run_pipeline`
        (unmeasured) in the learner's notebook: the run, with its rows."""
        if os.environ.get("COURSE_QUESTIONS"):
            return _ask(function, args, name)
        return _run_pipeline(name, _function(function, _notebook()), [_argument_here(a) for a in args])


learner = Learner()


def _notebook() -> dict:
    import __main__

    return vars(__main__)  # IPython runs a notebook's cells in __main__'s namespace


def _function(name: str, namespace: dict):
    fn = namespace.get(name)
    if not callable(fn):
        raise NameError(f"{name} is not defined in the notebook (run its cell)")
    return fn


def _argument_here(arg):
    if isinstance(arg, Their):
        value = _notebook()[arg.names[0]]
        for attribute in arg.names[1:]:
            value = getattr(value, attribute)
        return value
    if isinstance(arg, AsDataset):
        import ray

        return ray.data.from_arrow(arg.table)
    if isinstance(arg, Folder):
        return arg.path
    return arg


def _run_pipeline(name, fn, args) -> PipelineRun:
    with warnings.catch_warnings():  # a small input makes one block: Ray warns that the actor pool cannot fill
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
        return run_pipeline(name, fn, *args, monitor=False)


def _table_digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _folder_digest(path: str) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _ask(function: str, args: tuple, pipeline: str | None):
    """The grader's kernel: the answer to `function(*args)`, or, the first time, the question
    written for the learner's kernel and `Unanswered` raised (the grader answers and reruns)."""
    import pyarrow.parquet as pq

    spec, digests, files = [], [], {}
    for i, arg in enumerate(args):
        if isinstance(arg, Their):
            spec.append({"their": list(arg.names)})
        elif isinstance(arg, (pa.Table, AsDataset)):
            table = arg if isinstance(arg, pa.Table) else arg.table
            spec.append({"dataset" if isinstance(arg, AsDataset) else "table": f"arg{i}.parquet"})
            digests.append(_table_digest(table))
            files[f"arg{i}.parquet"] = table
        elif isinstance(arg, Folder):
            spec.append({"folder": f"arg{i}"})
            digests.append(_folder_digest(arg.path))
            files[f"arg{i}"] = arg
        else:
            spec.append({"value": plain(arg)})
    question = {"function": function, "pipeline": pipeline, "args": spec}
    ident = hashlib.sha256(json.dumps([question, digests], sort_keys=True).encode()).hexdigest()[:20]
    answered = Path(os.environ["COURSE_ANSWERS"]) / ident
    if (answered / "answer.json").exists():
        return _read_answer(function, pipeline, answered)
    asked = Path(os.environ["COURSE_QUESTIONS"]) / ident
    shutil.rmtree(asked, ignore_errors=True)
    asked.mkdir(parents=True)
    for name, value in files.items():
        if isinstance(value, pa.Table):
            pq.write_table(value, asked / name)
        else:
            _copy_files(value.path, str(asked / name))
    (asked / "question.json").write_text(json.dumps(question))
    raise Unanswered(ident)


def _read_answer(function: str, pipeline: str | None, folder: Path):
    import pyarrow.parquet as pq

    _tensor_types_without_pickle()
    try:
        answer = json.loads((folder / "answer.json").read_text())
        assert isinstance(answer, dict)
        error = answer.get("error")
        rows = pq.read_table(folder / "answer.parquet") if (folder / "answer.parquet").exists() and not error else None
    except Exception as exc:  # written by the learner's kernel: read as data, or not at all
        error, answer, rows = f"its answer could not be read ({type(exc).__name__}: {exc})", {}, None
    if pipeline is not None:
        return PipelineRun(pipeline, rows=rows, seconds=float(answer.get("seconds") or 0.0),
                           error=None if error is None and rows is not None else str(error or "it returned no rows"))
    if error is not None:
        raise CheckFailed(f"{function} failed on the grader's hidden inputs: {error}")
    return rows if answer.get("kind") == "table" else answer.get("value")


# ------------------------------------------------------------------ the learner's kernel: answer
def answer(questions: str = QUESTIONS, answers: str = ANSWERS) -> None:
    """Answer the grader's questions (see `Learner`) in the learner's kernel, with its functions:
    each answer is written as files, never returned. Run by the grader, not by a notebook."""
    import pyarrow.parquet as pq

    namespace = _notebook()  # the grader asks before the notebook's last cell, while its Ray still runs
    for asked in sorted(Path(questions).iterdir()):
        out = Path(answers) / asked.name
        if (out / "answer.json").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        try:
            question = json.loads((asked / "question.json").read_text())
            args = [_argument_there(a, asked, namespace) for a in question["args"]]
            fn = _function(question["function"], namespace)
            if question.get("pipeline"):
                run = _run_pipeline(question["pipeline"], fn, args)
                if run.error is None:
                    pq.write_table(run.rows, out / "answer.parquet")
                result = {"kind": "pipeline", "seconds": run.seconds, "error": run.error}
            else:
                value = fn(*args)
                if isinstance(value, pa.Table):
                    pq.write_table(value, out / "answer.parquet")
                    result = {"kind": "table", "error": None}
                else:
                    result = {"kind": "value", "value": plain(value), "error": None}
        except Exception as exc:  # the learner's code: its error is the answer
            result = {"kind": "error", "error": _learner_error(exc)}
        (out / "answer.json").write_text(json.dumps(result, default=repr))


def _argument_there(spec: dict, asked: Path, namespace: dict):
    import pyarrow.parquet as pq

    if "their" in spec:
        value = namespace[spec["their"][0]]
        for attribute in spec["their"][1:]:
            value = getattr(value, attribute)
        return value
    if "table" in spec:
        return pq.read_table(asked / spec["table"])
    if "dataset" in spec:
        import ray

        return ray.data.from_arrow(pq.read_table(asked / spec["dataset"]))
    if "folder" in spec:  # where the course writes (object storage on a cluster), so every node can read it
        from pyarrow import fs as pafs

        from graders.data import filesystem, output_path

        target = output_path(f"grader_inputs/{asked.name}/{spec['folder']}")
        fs, base = filesystem(target)
        fs.create_dir(base, recursive=True)
        pafs.copy_files(str((asked / spec["folder"]).resolve()), base, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        return target
    return spec["value"]


# ------------------------------------------------------------------ measured by the grader
def grader_measured(key: str):
    """In the grader's kernel: what the grader measured itself while the notebook ran
    (`COURSE_MEASURED`, written by graders.trusted.nbgrader_ext), or None when it has no `key`.
    Elsewhere (the learner's own runs): None."""
    path = os.environ.get("COURSE_MEASURED")
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def serve_processes_left(wait_s: float = 15.0) -> list[str]:
    """Ray Serve processes still running after the service cell's `serve.shutdown()`. In the
    grader's kernel: what the grader counted from outside the notebook right after that cell
    (`COURSE_MEASURED`). Elsewhere: counted here, waiting up to `wait_s` for them to exit."""
    import time

    if os.environ.get("COURSE_MEASURED"):
        left = grader_measured("serve_left")
        if not isinstance(left, list):
            raise CheckFailed("the grader did not count the Serve processes: the service cell did not finish")
        return left
    from graders.session import serve_processes

    deadline = time.monotonic() + wait_s
    while (left := serve_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
