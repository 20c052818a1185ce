"""Phase 2's yardsticks: steady rates cannot be inflated, and the hints name the right knob."""

from types import SimpleNamespace

import pytest

from graders import perf
from graders.checks import CheckFailed, Inconclusive, expect_at_least
from graders.trusted import yardsticks


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
    rows = SimpleNamespace(num_rows=sum(n for _, n in arrivals))
    return SimpleNamespace(arrivals=arrivals, seconds=seconds, actor_stage=actor_stage, table=lambda: None, rows=rows)


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


def comparison(rate, low, high, settled):
    band = yardsticks.NOISE_BAND
    return perf.Comparison(rate, "steady", perf.Bracket(low, high, "test", settled, band),
                           perf.Bracket(low, high, "test", settled, band), True, 20)


def test_a_result_is_passed_or_failed_only_when_the_whole_bracket_agrees():
    """Yardsticks that agreed around the run: their middle decides. That still disagree: a pass
    needs the target met against the fastest one, a fail missing it against the slowest one;
    between the two, inconclusive, neither a pass nor a fail."""
    comparison(75.0, 95.0, 105.0, True).expect_efficiency(0.7)  # 0.75 against the middle
    with pytest.raises(CheckFailed, match="expected >= 0.7, found 0.65") as failed:
        comparison(65.0, 95.0, 105.0, True).expect_efficiency(0.7)
    assert not isinstance(failed.value, Inconclusive)
    comparison(80.0, 60.0, 110.0, False).expect_efficiency(0.7)  # 0.73 even against 110
    with pytest.raises(CheckFailed, match="found 0.67") as failed:  # 0.67 even against 60
        comparison(40.0, 60.0, 110.0, False).expect_efficiency(0.7)
    assert not isinstance(failed.value, Inconclusive)
    with pytest.raises(Inconclusive, match=r"0.55 to 1.00 against the target 0.7.*the model ceiling ran at 60.0 to "
                                           r"110.0 rows/s .*more than 15% apart"):
        comparison(60.0, 60.0, 110.0, False).expect_efficiency(0.7)
    with pytest.raises(Inconclusive, match="speedup over the naive baseline: 0.55 to 1.00"):
        comparison(60.0, 60.0, 110.0, False).expect_speedup(0.7)


def test_before_and_after_agree_within_the_noise_band():
    before = {"ceiling": 300.0, "naive": 100.0, "device": "cpu", "workers": 2}
    close = {**before, "ceiling": 330.0, "naive": 112.0}
    far = {**before, "ceiling": 200.0}
    assert yardsticks.agree(before, close) and not yardsticks.agree(before, far)
    assert yardsticks.agree(before, far, ("naive",))
    out = yardsticks.bracket(before, [far, close])
    assert out["ceiling"] == [300.0, 330.0] and out["naive"] == [100.0, 112.0] and out["tries"] == 2
    assert out["settled"] == {"ceiling": True, "naive": True} and len(out["measurements"]) == 3
    unsettled = yardsticks.bracket(before, [far])
    assert unsettled["ceiling"] == [200.0, 300.0] and unsettled["settled"] == {"ceiling": False, "naive": True}
    failed = yardsticks.bracket(before, [{"error": "no answer within 240 s"}])
    assert failed["error"] == "no answer within 240 s"


def graded(tmp_path, monkeypatch, measured):
    path = tmp_path / "measured.json"
    path.write_text(__import__("json").dumps(measured))
    monkeypatch.setenv("COURSE_MEASURED", str(path))


def test_graded_the_yardsticks_are_the_graders_and_the_run_fits_its_clock(tmp_path, monkeypatch):
    """In the grader's kernel, the notebook's own ceiling and naive run are not read at all; a run
    claiming more time than the cell that ran it took is refused; no yardsticks: inconclusive."""
    monkeypatch.setattr(perf.os, "cpu_count", lambda: 2, raising=False)
    before = {"ceiling": 60.0, "naive": 20.0, "device": "cpu", "workers": 2}
    graded(tmp_path, monkeypatch, {"run_cell_seconds": 26.0, "yardsticks": yardsticks.bracket(before, [before])})
    c = perf.compare(run(stream(every=0.6), 25.0), None, None, RES_CPU)
    assert c.ceiling_rate == 60.0 and c.naive_rate == 20.0 and "the grader's" in str(c)
    with pytest.raises(CheckFailed, match="do not fit the grader's clock: the run cell took 26.0 s"):
        perf.compare(run(stream(every=0.6), 40.0), None, None, RES_CPU)  # says 40 s
    with pytest.raises(CheckFailed, match="do not fit the grader's clock"):
        perf.compare(run(list(reversed(stream(every=0.6))), 25.0), None, None, RES_CPU)
    graded(tmp_path, monkeypatch, {"run_cell_seconds": 26.0, "yardsticks": {"error": "it stopped"}})
    with pytest.raises(Inconclusive, match=r"could not measure the yardsticks \(it stopped\)"):
        perf.compare(run(stream(every=0.6), 25.0), None, None, RES_CPU)


def test_results_held_back_and_handed_out_late_are_counted_from_the_allowed_start_up(tmp_path, monkeypatch):
    """A stream whose first block comes long after the start-up the grader measured on its own
    (its model process started in 5 s: 2 x 5 + 5 = 15 s allowed) is counted from 15 s, not from
    its first block. Measured on the naive pipeline holding its results back and handing them out
    beside a busy loop, its arrival times rewritten in the notebook: 10/10 before this rule and the
    grader's own arrival times (custody.py); efficiency and speedup 0 after."""
    monkeypatch.setattr(perf.os, "cpu_count", lambda: 2, raising=False)
    before = {"ceiling": 60.0, "naive": 20.0, "device": "cpu", "workers": 2, "ready_s": 5.0}
    graded(tmp_path, monkeypatch, {"run_cell_seconds": 71.0, "yardsticks": yardsticks.bracket(before, [before])})
    on_time = perf.compare(run(stream(first=8.0, every=0.5), 18.0), None, None, RES_CPU)
    assert on_time.late is None and "started in 5.0 s" in str(on_time)
    on_time.expect_efficiency(0.7)
    held = perf.compare(run(stream(first=30.0, every=0.5), 40.0), None, None, RES_CPU)  # 60 rows/s from its first block
    assert held.late == {"rate": pytest.approx(60.0), "first": 30.0, "allowed": 15.0, "ready": 5.0}
    assert held.rate == pytest.approx(600 / (39.5 - 15.0))
    assert "counted from 15.0 s, the start-up the grader allows" in str(held) and "first block came at 30.0 s" in str(held)
    with pytest.raises(CheckFailed, match=r"found 0.41") as failed:
        held.expect_efficiency(0.7)
    assert not isinstance(failed.value, Inconclusive) and "nothing after the model stage that waits" in str(failed.value)
    held.expect_efficiency(0.4)  # what it did earn, counted from the allowed start-up


def test_a_ceiling_for_a_gpu_this_process_lacks_needs_a_cluster_with_one(monkeypatch):
    """On a cluster's GPU-less head the ceiling runs as a Ray task on a GPU node (tests/test_cluster.py);
    with neither a GPU nor Ray, it says what to pass instead."""
    import ray
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match=r"found neither. Try: model_ceiling\(paths.reviews, res.driver\)"):
        perf.model_ceiling("/nowhere", "cuda")
