"""Phase 2's yardsticks: steady rates cannot be inflated, and the hints name the right knob."""

from types import SimpleNamespace

import pytest

from graders import perf
from graders.checks import CheckFailed, expect_at_least


def stream(first=10.0, every=0.5, blocks=20, rows=30):
    return [(first + i * every, rows) for i in range(blocks)]


def test_steady_rate_leaves_start_up_out():
    rate, how = perf.steady_rate(stream(), total_seconds=20.0)
    assert rate == pytest.approx(19 * 30 / (19 * 0.5))  # 60 rows/s once results flow
    assert how.startswith("steady, 20 output blocks")


def test_few_blocks_fall_back_to_the_whole_run():
    rate, how = perf.steady_rate(stream(blocks=4), total_seconds=20.0)
    assert rate == pytest.approx(4 * 30 / 20.0) and "4 output blocks" in how


def test_a_steady_stream_is_a_stream_even_when_it_beats_an_earlier_ceiling():
    """16 blocks over 56 s of a 60 s run: a stream, though faster than a ceiling measured earlier
    under another load (the rule once called this "one burst" and fell back to the whole run)."""
    steady = [(4.0 + i * 3.5, 100) for i in range(16)]
    rate, how = perf.steady_rate(steady, total_seconds=60.0, max_rate=20.0)
    assert rate == pytest.approx(1500 / 52.5) and how.startswith("steady"), how


def test_a_burst_faster_than_the_ceiling_is_not_a_stream():
    burst = [(30.0 + i * 0.01, 100) for i in range(10)]  # computed earlier, delivered at once
    rate, how = perf.steady_rate(burst, total_seconds=30.1, max_rate=200.0)
    assert rate == pytest.approx(1000 / 30.1) and "one burst" in how


def run(arrivals, seconds, actor_stage=True):
    return SimpleNamespace(arrivals=arrivals, seconds=seconds, actor_stage=actor_stage, table=lambda: None)


RES_CPU = SimpleNamespace(gpus=0, cpus=2)


def test_compare_efficiency_speedup_and_knobs(monkeypatch):
    monkeypatch.setattr(perf.os, "cpu_count", lambda: 2, raising=False)
    ceiling = perf.Ceiling(rows=600, seconds=10.0, batch_size=64, device="cpu")  # 60 rows/s
    fast = perf.compare(run(stream(every=0.6), 25.0), run(stream(every=1.5), 40.0), ceiling, RES_CPU)
    assert fast.efficiency == pytest.approx(50 / 60) and fast.speedup == pytest.approx(1.5 / 0.6)
    slow = perf.compare(run(stream(every=1.5), 40.0, actor_stage=False), run(stream(every=1.5), 40.0), ceiling, RES_CPU)
    assert "load the model once per actor" in slow.knobs()
    lumpy = perf.compare(run(stream(blocks=2), 25.0), run(stream(), 40.0), ceiling, RES_CPU)
    assert "repartition(target_num_rows_per_block" in lumpy.knobs()
    with pytest.raises(CheckFailed, match=r"efficiency: expected >= 0.7, found 0.33. Try: load the model once"):
        expect_at_least(slow.efficiency, 0.7, "efficiency", slow.knobs())


def test_ceiling_scales_with_the_gpus_of_the_cluster():
    ceiling = perf.Ceiling(rows=1000, seconds=1.0, batch_size=512, device="cuda")
    res = SimpleNamespace(gpus=4, cpus=32)
    c = perf.compare(run(stream(every=0.01), 5.0), run(stream(every=0.1), 5.0), ceiling, res)
    assert c.ceiling_rate == 4000.0
