"""Shared helpers for the lesson checks: blank answers, the learner's own error, running a Dataset."""

from __future__ import annotations

import re

import pyarrow as pa

from graders.checks import _fail

_NOT_YET = "nothing yet (the exercise cell above has not set it: run it after you fill it in)"


def _answered(value, what: str, expected: str, hint: str) -> None:
    if value is None or value is Ellipsis:
        _fail(what, expected, _NOT_YET, hint)


def _user_error(exc: BaseException) -> str:
    """The learner's own error from a Ray exception, in one line (e.g. 'KeyError: 'path'')."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit))(?::\s.*)?$", line)
        if m and not m.group(1).startswith("ray."):
            return line[:300]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _materialized(value, what: str, hint: str = "assign the Dataset, e.g. ray.data.read_...(...)."):
    """Run the learner's Dataset once; a failure becomes one readable CheckFailed."""
    _answered(value, what, "a Ray Dataset", hint)
    if not hasattr(value, "materialize"):
        _fail(what, "a Ray Dataset", type(value).__name__, hint)
    try:
        return value.materialize()
    except Exception as exc:  # the learner's pipeline raised: show their error, not Ray's frames
        _fail(f"running {what}", "the pipeline to finish", f"it raised {_user_error(exc)}",
              "fix that error in your exercise cell (Ray prints the full traceback above), run it, then check again.")


def _table(ds) -> pa.Table:
    """A materialized Dataset's rows as one pyarrow Table (no pandas round trip: tensors stay tensors)."""
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def _expect_columns(ds, wanted, what: str, hint: str) -> None:
    """Exactly these column names, with a hint that fits the exercise (read options, not map_batches)."""
    names = sorted(ds.schema().names)
    if names != sorted(wanted):
        _fail(f"{what} columns", sorted(wanted), names, hint)


def _expect_float32(ds, column: str, what: str) -> None:
    """Arrow calls float32 'float' and float64 'double': say it in NumPy's words."""
    schema = ds.schema()
    if column not in schema.names:
        return
    t = schema.types[schema.names.index(column)]
    scalar = getattr(t, "value_type", getattr(t, "scalar_type", t))
    if scalar == pa.float64():
        _fail(f"{what} column '{column}'", "float32 values", "float64 values",
              f"convert them: np.asarray(..., dtype=np.float32) or .astype(np.float32) on '{column}'.")




def _read_back(value, what: str, expected_rows: int, hint: str, again: str):
    """Read the Parquet folder a learner wrote (materialized), or fail saying why.

    `again` is the advice when the folder holds whole extra copies (an earlier run's files).
    """
    import ray

    _answered(value, what, "the folder you wrote (a str)", hint)
    if not isinstance(value, str):
        _fail(what, "the folder you wrote, as a str", f"a {type(value).__name__}", hint)
    try:
        back = ray.data.read_parquet(value).materialize()
    except Exception as exc:  # noqa: BLE001  (any read failure: say what we found, in one line)
        _fail(f"Parquet files at {value}", f"the {what} you wrote", f"none we can read ({_user_error(exc)})", hint)
    rows = back.count()
    if rows > expected_rows and rows % expected_rows == 0:
        _fail("rows read back", f"exactly {expected_rows:,}", f"{rows:,} ({rows // expected_rows} copies of every row)",
              f"an earlier run's files are still there: {again}")
    return back
