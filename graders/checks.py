"""Learner-facing checks: each failure says what was expected, what was found and what to try.

- `expect_count`, `expect_schema`, `expect_utilization`: assertions used by lessons and graders.
- `check("<exercise id>", value)`: immediate feedback after a lesson exercise (see `EXERCISES`).
  Lesson checks are feedback, not grades: graded and hidden tests live in the validation
  notebooks, never in this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa


class CheckFailed(AssertionError):
    """A check that did not pass. In Jupyter it shows as one readable message, not a traceback."""

    def _render_traceback_(self):  # IPython hook: show the message only
        return [f"\x1b[0;31m✗ {type(self).__name__}\x1b[0m: {self}"]


class Inconclusive(CheckFailed):
    """The machine was too busy to decide: the measurement, repeated, still straddles the target.
    Neither a pass nor a fail; class grading measures the submission again."""


def _fail(what: str, expected: Any, found: Any, hint: str = "") -> None:
    msg = f"{what}: expected {expected}, found {found}."
    raise CheckFailed(msg + (f" Try: {hint}" if hint else ""))


@dataclass(frozen=True)
class Tensor:
    """Expected type of a tensor column: `Tensor((1280,), "float32")`."""

    shape: tuple
    dtype: str

    def __str__(self) -> str:
        return f"a {self.dtype} tensor of shape {tuple(self.shape)}"


def expect_count(found: int, expected: int, what: str = "records", hint: str = "") -> None:
    """Exact record count."""
    if int(found) != int(expected):
        more = "more" if found > expected else "fewer"
        _fail(what, f"exactly {expected:,}", f"{found:,} ({more})",
              hint or "check the input path and any filter or flat_map that drops or repeats rows.")


def _arrow_schema(value) -> pa.Schema:
    if isinstance(value, pa.Schema):
        return value
    if isinstance(value, pa.Table):
        return value.schema
    schema = value.schema() if callable(getattr(value, "schema", None)) else getattr(value, "schema", None)
    if schema is None:
        _fail("schema", "a Ray Dataset, pyarrow Table or Schema", type(value).__name__)
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return base
    return pa.schema([(n, t) for n, t in zip(schema.names, schema.types)])


def _describe(t) -> str:
    shape = getattr(t, "shape", None)
    if shape is not None and hasattr(t, "value_type"):
        return f"a {t.value_type} tensor of shape {tuple(shape)}"
    return str(t)


def _type_matches(found, expected) -> bool:
    if isinstance(expected, Tensor):
        shape = getattr(found, "shape", None)
        scalar = getattr(found, "value_type", None)
        want = pa.from_numpy_dtype(np.dtype(expected.dtype))
        return shape is not None and tuple(shape) == tuple(expected.shape) and scalar == want
    strings = (pa.string(), pa.large_string())
    if expected in strings:
        return found in strings
    return found == expected


def expect_schema(value, expected: dict, what: str = "result") -> None:
    """Column names (in any order) and Arrow types. `value`: Dataset, pyarrow Table or Schema."""
    schema = _arrow_schema(value)
    names = list(schema.names)
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        _fail(f"{what} columns", sorted(expected), sorted(names),
              (f"add {missing} " if missing else "") + (f"drop {extra} " if extra else "")
              + "in the dict your map_batches function returns.")
    for col, want in expected.items():
        got = schema.field(col).type
        if not _type_matches(got, want):
            _fail(f"{what} column '{col}'", str(want) if isinstance(want, Tensor) else _describe(want),
                  _describe(got), "convert it in your batch function (e.g. np.asarray(x, dtype=...)).")


# Utilization targets per phase (mean % over the steady window of the measured device). The
# validation notebooks read them from here, and so does the grader's outside measurement
# (graders/trusted/nbgrader_ext.py): a notebook cannot lower them.
UTILIZATION_TARGETS = {
    # Phase 1 asks that the accelerator was busy, not yet saturated (that is Phase 2).
    "01_foundation": {"gpu": 5.0, "cpu": 50.0},
    # Phase 2 saturates the model stage. GPU: measured on an H100 with COURSE_SIZE=full, the
    # reference (4 actors sharing the GPU) held a mean of 83 % (median 97 %) over a 4.6 s steady
    # window; 1 actor alone, 33 %. On CPU the naive pattern keeps the cores busy too (reloading
    # the model is CPU work), so there efficiency and speedup tell the two apart.
    "02_advanced_processing": {"gpu": 75.0, "cpu": 70.0},
    # Phase 3 measures the second run of the batch-inference job (read, predict, write Parquet);
    # the first also starts the worker processes. Reference, measured: H100 with COURSE_SIZE=full,
    # 186,000 reviews in 32.5 s at a GPU mean of 93 % (first run 87 %); 2 CPU cores, CPU mean
    # 92-93 % (first run 85-86 %).
    "03_production_systems": {"gpu": 70.0, "cpu": 70.0},
    # Phase 4 measures the batch-scoring run whose throughput sizes the cluster (read, embed,
    # predict from a registry version), the same kind of job as Phase 3's inference.
    "04_production_deployment": {"gpu": 70.0, "cpu": 70.0},
}

# Phase 4 monitoring. PSI (population stability index) above 0.2 is the usual "significant
# shift"; on the course's reviews a clean window of 400 new reviews measured 0.002-0.05 for
# words per review and for stars, a window with drift 0.5 measured 0.7-1.0 (words) and
# 0.14-0.24 (stars). A/B decisions use a two-sided test at this significance level.
PSI_THRESHOLD = 0.2
AB_ALPHA = 0.05

# Phase 3: accuracy of the trained rating classifier (5 classes). Always answering the most
# common rating (5 stars) scores 0.375 on the course data and guessing scores 0.2; the reference
# (a small network on frozen MiniLM embeddings, 5 epochs) reaches 0.95 or more.
ACCURACY_TARGET = 0.8

# Phase 2's optimization targets (see graders/perf.py for how each number is measured).
OPTIMIZATION_TARGETS = {
    # GPU (H100, full data, 186,000 reviews): ceiling 41,800-43,100 rows/s; reference 43,500
    # rows/s steady (efficiency 1.04); 1 actor per GPU 0.33, 2 actors sharing it 0.85; naive
    # baseline 38-46 rows/s, so the speedup target is far below anything a working pipeline does.
    "gpu": {"efficiency": 0.8, "speedup": 3.0},
    # CPU (2 cores): set from repeated measurements, see docs/performance.md.
    "cpu": {"efficiency": 0.7, "speedup": 1.5},
}
REPORT_MIME = "application/vnd.course.utilization+json"


def publish_report(report) -> None:
    """Show the report in the notebook and hand it to the grader's outside cross-check."""
    try:
        from IPython.display import display
    except ImportError:
        return
    display({REPORT_MIME: report.to_dict(), "text/plain": report.summary()}, raw=True)


def expect_utilization(report, device: str, min_mean: float, min_samples: int = 5) -> None:
    """Utilization measured on the expected device, with enough samples, above a target mean (%).

    The report is also published for the grader, which measures the same run from outside the
    kernel and compares (see graders/trusted/nbgrader_ext.py).
    """
    if report is None:
        _fail("utilization measurement", "a measurement of the run", "none",
              "run the pipeline inside a UtilizationMonitor (when graded: the grader could not measure the run; "
              "grade again, and tell your instructor if it repeats).")
    publish_report(report)
    by = f", {report.source}" if getattr(report, "source", "") else ""
    if report.device != device:
        _fail("measured device", f"'{device}'", f"'{report.device}' ({report.device_name})",
              "run the model stage on the accelerator this machine has (see gr.start()).")
    if report.window_samples < min_samples:
        _fail("utilization samples", f"at least {min_samples} in the steady window",
              report.window_samples, "run the pipeline inside the monitor's with-block.")
    if report.mean is None or report.mean < min_mean:
        _fail(f"{device.upper()} utilization (mean over the steady window{by})", f">= {min_mean:.0f} %",
              "no value" if report.mean is None else f"{report.mean:.1f} %",
              "keep the model stage busy: a stateful class with an actor pool and a larger batch_size.")


def expect_at_least(value: float, minimum: float, what: str, hint: str) -> None:
    """A measured number at or above its target."""
    if value < minimum:
        _fail(what, f">= {minimum:g}", f"{value:.2f}", hint)


def expect_accuracy(accuracy: float, minimum: float, majority: float, what: str) -> None:
    """A classifier's accuracy at or above its target; the hint says when it is no better than a guess."""
    if accuracy is None or not np.isfinite(accuracy):
        _fail(what, f">= {minimum:g}", repr(accuracy), "report the accuracy as a number with ray.train.report(...).")
    if accuracy >= minimum:
        return
    if accuracy <= majority + 0.05:
        hint = (f"{accuracy:.2f} is no better than always answering the most common rating ({majority:.2f}): "
                "the model did not learn. Check that your training loop updates it for every batch "
                "(optimizer.zero_grad(), loss.backward(), optimizer.step()), that the loss uses the 'label' "
                "column, and that you checkpoint the trained weights, not the initial ones.")
    else:
        hint = "the model learned something but not enough: train for more epochs or with a larger learning rate."
    _fail(what, f">= {minimum:g}", f"{accuracy:.3f}", hint)


# ---------------------------------------------------------------------------------------------
# Lesson exercises: check("<id>", value) prints a tick or raises CheckFailed with a hint.

EXERCISES: dict[str, Callable[[Any], str]] = {}


def exercise(exercise_id: str):
    def register(fn):
        EXERCISES[exercise_id] = fn
        return fn
    return register


def check(exercise_id: str, value: Any) -> None:
    """Check a lesson exercise and print what passed (raises CheckFailed otherwise)."""
    from graders import exercises  # noqa: F401  (registers the lesson checks)

    if exercise_id not in EXERCISES:
        _fail("exercise id", f"one of {sorted(EXERCISES)}", repr(exercise_id))
    detail = EXERCISES[exercise_id](value)
    print(f"✅ {exercise_id}: {detail}")
