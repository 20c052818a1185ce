"""Checks say what was expected, what was found and what to try."""

import numpy as np
import pyarrow as pa
import pytest

from graders.checks import CheckFailed, Tensor, check, expect_count, expect_schema, expect_utilization
from graders.telemetry import UtilizationReport


def _tensor_table():
    from ray.data.extensions import ArrowTensorArray

    features = ArrowTensorArray.from_numpy(np.ones((3, 4), dtype=np.float32))
    return pa.table({"id": pa.array(["a", "b", "c"]), "n": pa.array([1, 2, 3]), "features": features})


def test_count_message_says_expected_found_and_hint():
    expect_count(96, 96)
    with pytest.raises(CheckFailed) as err:
        expect_count(95, 96, "image records")
    msg = str(err.value)
    assert "image records: expected exactly 96, found 95 (fewer)" in msg and "Try:" in msg


def test_schema_accepts_right_columns_and_tensor_types():
    expect_schema(_tensor_table(), {"id": pa.string(), "n": pa.int64(), "features": Tensor((4,), "float32")})


@pytest.mark.parametrize(
    "expected, fragment",
    [
        ({"id": pa.string(), "n": pa.int64()}, "drop ['features']"),
        ({"id": pa.string(), "n": pa.int64(), "features": Tensor((4,), "float32"), "x": pa.int64()}, "add ['x']"),
        ({"id": pa.string(), "n": pa.int32(), "features": Tensor((4,), "float32")}, "column 'n': expected int32, found int64"),
        ({"id": pa.string(), "n": pa.int64(), "features": Tensor((5,), "float32")}, "expected a float32 tensor of shape (5,), found a float tensor of shape (4,)"),
    ],
)
def test_schema_mismatch_messages(expected, fragment):
    with pytest.raises(CheckFailed) as err:
        expect_schema(_tensor_table(), expected, "results")
    assert fragment in str(err.value)


def _report(device, values):
    samples = [{"t": i * 0.1, "cpu": v if device == "cpu" else 10.0, "gpu": [v] if device == "gpu" else [], "gpu_mem": []}
               for i, v in enumerate(values)]
    info = {"gpus": ["Fake GPU"] if device == "gpu" else [], "nvml": None if device == "gpu" else "no NVML", "cpu_count": 2}
    return UtilizationReport.from_samples(samples, info, 0.1)


def test_utilization_checks_device_samples_and_target():
    expect_utilization(_report("cpu", [80.0] * 20), "cpu", 50)
    with pytest.raises(CheckFailed, match="measured device: expected 'gpu', found 'cpu'"):
        expect_utilization(_report("cpu", [80.0] * 20), "gpu", 50)
    with pytest.raises(CheckFailed, match=r"expected >= 90 %, found 80.0 %"):
        expect_utilization(_report("gpu", [80.0] * 20), "gpu", 90)
    with pytest.raises(CheckFailed, match="samples"):
        expect_utilization(_report("cpu", [80.0] * 2), "cpu", 50)


def test_unknown_exercise_lists_the_known_ones(capsys):
    with pytest.raises(CheckFailed, match="exercise id: expected one of"):
        check("no.such.exercise", 1)


def test_failed_check_renders_without_traceback():
    lines = CheckFailed("x: expected 1, found 2.")._render_traceback_()
    assert len(lines) == 1 and "expected 1, found 2" in lines[0]
