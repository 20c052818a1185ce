"""Tests for graders.telemetry: the maths on hand-made samples, then real sampler processes."""
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import types
import time
from pathlib import Path

import matplotlib
import numpy as np
import psutil
import pytest

matplotlib.use("Agg")

from graders import telemetry  # noqa: E402
from graders.telemetry import UtilizationMonitor, UtilizationReport, nvml_devices, steady_window  # noqa: E402

NO_NVML = {"gpus": [], "nvml": "NVML not available: test", "cpu_count": 4}
ONE_GPU = {"gpus": ["Fake GPU"], "nvml": None}


def make_samples(cpu, gpu=None, dt=0.1):
    """Samples at t = 0, dt, 2 dt, ...; gpu is a list of per-sample lists (or None)."""
    gpu = gpu or [[] for _ in cpu]
    return [{"t": i * dt, "cpu": c, "gpu": g, "gpu_mem": [0.5] * len(g)}
            for i, (c, g) in enumerate(zip(cpu, gpu))]


# Top-level, so the spawned sampler process can unpickle them.
def fake_gpu_sampler():
    return {"cpu": 12.0, "gpu": [73.0], "gpu_mem": [0.25]}


def failing_sampler():
    raise RuntimeError("sensor exploded")


def burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ pure maths
def test_steady_window_excludes_ramp_up_and_drain():
    values = [0, 0, 10, 80, 90, 95, 90, 85, 92, 30, 0, 0]
    times = [i * 0.1 for i in range(len(values))]
    threshold = 0.5 * np.percentile(values, 90)  # 45.9
    assert values[2] < threshold <= values[3] and values[8] >= threshold > values[9]
    assert steady_window(times, values) == (times[3], times[8])


def test_single_spike_cannot_make_a_window():
    values = [0, 0, 0, 100, 0, 0, 0]
    times = [float(i) for i in range(7)]
    assert steady_window(times, values) == (0.0, 6.0)
    report = UtilizationReport.from_samples(make_samples(values), NO_NVML)
    assert report.window_samples == 7
    assert report.mean == pytest.approx(100 / 7)


def test_all_zeros_is_a_measured_zero():
    report = UtilizationReport.from_samples(make_samples([0.0] * 5), NO_NVML)
    assert steady_window([0, 1, 2], [0, 0, 0]) == (0, 2)
    assert report.window_samples == 5
    assert report.mean == 0.0 and report.p90 == 0.0 and report.cpu_mean == 0.0


def test_empty_run_reports_no_samples_and_no_numbers():
    with pytest.raises(ValueError):
        steady_window([], [])
    report = UtilizationReport.from_samples([], NO_NVML, 0.1)
    assert report.samples == 0 and report.window_s is None and report.rate_hz is None
    assert report.mean is None and report.p50 is None and report.p90 is None
    assert report.cpu_mean is None
    assert "no samples" in report.summary()
    json.dumps(report.to_dict())


def test_stats_match_numpy_over_the_window():
    rng = np.random.default_rng(0)
    cpu = [0.0, 5.0] + list(rng.uniform(40, 100, 30).round(1)) + [3.0, 0.0]
    report = UtilizationReport.from_samples(make_samples(cpu), NO_NVML, 0.1)
    start, end = report.window_s
    assert (start, end) == pytest.approx((0.2, 3.1))
    window = np.array(cpu[2:32])
    assert report.window_samples == 30
    assert report.mean == pytest.approx(window.mean())
    assert report.p50 == pytest.approx(np.percentile(window, 50))
    assert report.p90 == pytest.approx(np.percentile(window, 90))
    assert (report.cpu_mean, report.cpu_p50, report.cpu_p90) == (report.mean, report.p50, report.p90)
    assert report.duration_s == pytest.approx(len(cpu) * 0.1)
    assert report.rate_hz == pytest.approx(10.0)


def test_gpu_is_primary_when_nvml_measured_gpus():
    cpu = [20.0] * 6
    gpu = [[0, 0], [50, 100], [60, 100], [40, 80], [50, 90], [0, 0]]
    report = UtilizationReport.from_samples(make_samples(cpu, gpu), {"gpus": ["H", "H"], "nvml": None})
    assert report.device == "gpu" and report.device_name == "H" and report.gpu_count == 2
    per_sample = [np.mean(g) for g in gpu[1:5]]  # the ramp-up and drain zeros are cut off
    assert report.window_samples == 4
    assert report.mean == pytest.approx(np.mean(per_sample))
    assert report.p90 == pytest.approx(np.percentile(per_sample, 90))
    assert report.gpu_means == pytest.approx([50.0, 92.5])
    assert report.gpu_mem_max == [0.5, 0.5]
    assert report.cpu_mean == 20.0
    assert "not measured" not in report.summary()


def test_cpu_is_primary_without_nvml():
    report = UtilizationReport.from_samples(make_samples([10.0, 60.0, 70.0, 80.0]), NO_NVML)
    assert report.device == "cpu" and report.gpu_count == 0
    assert report.device_name == "CPU (4 logical cores)"
    assert report.nvml_error == "NVML not available: test"
    assert "GPU: not measured (NVML not available: test)" in report.summary()


def test_report_outputs():
    report = UtilizationReport.from_samples(
        make_samples([10.0, 50.0, 60.0], [[70.0], [80.0], [90.0]]), ONE_GPU, 0.1)
    d = report.to_dict()
    assert "timeline" not in d and d["device"] == "gpu" and d["mean"] == pytest.approx(80.0)
    assert json.loads(json.dumps(report.to_dict(timeline=True)))["timeline"][2]["gpu"] == [90.0]
    assert str(report) == report.summary() and "Fake GPU" in str(report)
    assert "<pre>" in report._repr_html_()
    import matplotlib.pyplot as plt

    ax = report.plot()
    assert isinstance(ax, matplotlib.axes.Axes) and len(ax.lines) == 2  # CPU and GPU 0
    empty_ax = UtilizationReport.from_samples([], NO_NVML).plot()
    assert isinstance(empty_ax, matplotlib.axes.Axes)
    plt.close("all")


def test_live_gauge_widgets():
    pytest.importorskip("ipywidgets")
    gauge = telemetry._LiveGauge(["CPU", "GPU 0"])
    samples = make_samples([10.0, 30.0], [[50.0], [70.0]])
    gauge.update(samples)
    assert [b.value for b in gauge.bars] == [30.0, 70.0]
    assert "mean 60.0" in gauge.labels[1].value
    gauge.finish(UtilizationReport.from_samples(samples, ONE_GPU))
    assert "Fake GPU" in gauge.box.children[-1].value


# ---------------------------------------------------------------- argument checks
@pytest.mark.parametrize("interval", [0, -0.1, 0.25, 1])
def test_interval_is_validated(interval):
    with pytest.raises(ValueError, match=r"interval must be > 0 and <= 0.2 seconds"):
        UtilizationMonitor(interval=interval)


def test_sampler_must_be_picklable():
    with pytest.raises(TypeError, match="picklable top-level function"):
        UtilizationMonitor(sampler=lambda: {"cpu": 0.0})


def test_nvml_devices_on_this_machine():
    names, error = nvml_devices()
    assert isinstance(names, list)
    if not names:
        assert error and error.startswith("NVML")


# ------------------------------------------------------------- real processes
def test_busy_cpu_is_measured_and_nothing_goes_to_stderr(capfd):
    with UtilizationMonitor(interval=0.1) as idle:
        time.sleep(0.8)

    ctx = multiprocessing.get_context("spawn")
    with UtilizationMonitor(interval=0.1, live=True) as busy:  # live: a no-op outside Jupyter
        t0 = time.monotonic()
        workers = [ctx.Process(target=burn, args=(1.5,)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.monotonic() - t0
    report = busy.report

    if not nvml_devices()[0]:  # no GPU here: the CPU is graded, and the report says why
        assert report.device == "cpu"
        assert isinstance(report.nvml_error, str) and report.nvml_error
        assert "not measured" in report.summary()
    assert report.samples >= 5 * wall
    assert report.cpu_mean > 60, report.summary()
    assert report.cpu_mean >= idle.report.cpu_mean, (report.summary(), idle.report.summary())
    assert report.window_samples >= 3
    assert capfd.readouterr().err == ""


def test_a_neighbours_load_is_not_the_runs_own():
    """A bounded neighbour outside the run keeps every core busy. A run that sleeps reads under
    5 % of its cores, with the machine's ~100 % beside it. A run that keeps its cores busy, at
    the priority the grader gives graded runs (as root), reads them busy, and how long it
    waited for the cores the neighbour held; its utilization counts both (it was ready to use
    them), so the neighbour costs it nothing."""
    cores = len(os.sched_getaffinity(0))
    spin = "import time\nend = time.monotonic() + {}\nwhile time.monotonic() < end: pass"
    neighbour = [subprocess.Popen([sys.executable, "-c", spin.format(20)]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
        with UtilizationMonitor(scope={"pid": sleeper.pid}) as sleeping:
            sleeper.wait()
        burners = " & ".join([f"{sys.executable} -c '{spin.format(3)}'"] * cores)
        nice = "nice -n -10 " if os.geteuid() == 0 else ""
        busy = subprocess.Popen(["/bin/sh", "-c", f"{nice}/bin/sh -c \"{burners} & wait\""])
        with UtilizationMonitor(scope={"pid": busy.pid}) as working:
            busy.wait()
    finally:
        for p in neighbour:
            p.kill()
            p.wait()
    idle, loaded = sleeping.report, working.report
    assert idle.device == "cpu" and idle.mean < 5 and idle.machine_cpu_mean > 80, idle.summary()
    assert "this run" in idle.summary() and "the machine " in idle.summary()
    assert loaded.mean > 90 and loaded.wait_mean is not None, loaded.summary()
    if os.geteuid() == 0:
        assert loaded.run_cpu_mean > 70, loaded.summary()  # a fair share would be 50 %
    else:  # the neighbour takes its share: the run's own figures say so
        assert 20 < loaded.run_cpu_mean < 80 and loaded.wait_mean > 15, loaded.summary()


def test_the_run_is_credited_with_what_it_used_and_what_other_load_kept_from_it():
    own = [{"t": i * 0.1, "cpu": 90.0, "gpu": [], "gpu_mem": [], "cpu_run": 50.0, "cpu_wait": 30.0} for i in range(20)]
    report = UtilizationReport.from_samples(own, {**NO_NVML, "scope": "a test run"}, 0.1)
    assert report.mean == pytest.approx(80.0) and report.run_cpu_mean == pytest.approx(50.0)
    assert report.machine_cpu_mean == pytest.approx(90.0)
    assert report.wait_mean == pytest.approx(30.0) and report.run_cpu_seconds == pytest.approx(0.5 * 4 * 2.0)
    assert report.scope == "a test run" and "this run waited 30.0 %" in report.summary()
    machine = UtilizationReport.from_samples(make_samples([70.0] * 20), NO_NVML, 0.1)
    assert machine.run_cpu_mean is None and "the machine's load counts as the run's" in machine.summary()


def test_injected_sampler_reports_a_gpu():
    with UtilizationMonitor(interval=0.05, sampler=fake_gpu_sampler, device_info=ONE_GPU) as mon:
        time.sleep(0.5)
    report = mon.report
    assert report.device == "gpu" and report.device_name == "Fake GPU" and report.gpu_count == 1
    assert report.nvml_error is None
    assert report.samples >= 5
    assert report.mean == pytest.approx(73.0) and report.gpu_means == [73.0]
    assert report.cpu_mean == pytest.approx(12.0) and report.gpu_mem_max == [0.25]


def test_failing_sampler_raises_instead_of_reporting():
    with pytest.raises(RuntimeError, match="sensor exploded"):
        with UtilizationMonitor(sampler=failing_sampler, device_info=ONE_GPU):
            time.sleep(0.3)


def test_child_is_gone_after_exit_even_on_exception():
    mon = UtilizationMonitor(sampler=fake_gpu_sampler, device_info=ONE_GPU)
    with mon:
        pid = mon._proc.pid
        assert psutil.pid_exists(pid)
    assert gone(pid)

    mon = UtilizationMonitor(sampler=fake_gpu_sampler, device_info=ONE_GPU)
    with pytest.raises(ZeroDivisionError):
        with mon:
            pid = mon._proc.pid
            time.sleep(0.2)
            1 / 0
    assert gone(pid)
    assert mon.report is not None and mon.report.samples >= 1


def test_child_exits_when_the_parent_dies():
    code = textwrap.dedent("""
        import os
        from graders.telemetry import UtilizationMonitor
        mon = UtilizationMonitor().__enter__()
        print(mon._proc.pid, flush=True)
        os._exit(0)  # die without running __exit__ or any clean-up
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    pid = int(out.split()[0])
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_sampler_process_does_not_import_the_package(tmp_path):
    """The child runs telemetry.py as a script, so a package __init__ that imports
    Ray or torch is never loaded in the sampler process."""
    pkg = tmp_path / "kit"
    pkg.mkdir()
    shutil.copy(Path(telemetry.__file__), pkg / "telemetry.py")
    marker = tmp_path / "imported_by.txt"
    (pkg / "__init__.py").write_text(
        f"import os\nwith open({str(marker)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n")
    code = textwrap.dedent("""
        import os, time
        from kit.telemetry import UtilizationMonitor
        with UtilizationMonitor() as mon:
            time.sleep(0.3)
        print(os.getpid(), mon.report.samples)
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=env, check=True)
    parent_pid, samples = map(int, out.stdout.split())
    assert samples >= 1 and out.stderr == ""
    assert marker.read_text().split() == [str(parent_pid)]


class _FakeNvml:
    """Two GPUs: GPU 0 with one process left on it, GPU 1 idle."""

    def __init__(self):
        self.open = 0

    def nvmlInit(self):
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return f"Fake GPU {h}"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}000"

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=0, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=4242, usedGpuMemory=512 * 2**20)] if h == 0 else []


def test_gpu_processes_are_read_per_visible_gpu(monkeypatch):
    from graders.trusted import classroom

    nvml = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert telemetry.gpu_processes() == [(4242, 512)]
    assert telemetry.gpu_processes("1") == [] and telemetry.gpu_processes("GPU-0") == [(4242, 512)]
    # the class grader names what is left on a run's own GPU only
    assert classroom._gpu_left({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, wait_s=0) == [[4242, 512]]
    assert classroom._gpu_left({"env": {"CUDA_VISIBLE_DEVICES": "1"}}, wait_s=0) == []
    assert nvml.open == 0, "NVML was left open"


class _ProcessNvml:
    """nvidia-ml-py's per-process call, as NVML answers it: samples since a timestamp, or
    NVMLError_NotFound when there is none new; NOT_SUPPORTED on a MIG slice."""

    class NVMLError_NotFound(Exception):  # noqa: N801  (nvidia-ml-py's name)
        pass

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def nvmlDeviceGetProcessUtilization(self, handle, since):  # noqa: N802
        self.asked.append(since)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [types.SimpleNamespace(pid=pid, smUtil=sm, timeStamp=ts) for pid, sm, ts in answer]


def test_the_gpu_share_of_the_runs_processes_comes_from_nvmls_per_process_samples():
    """The run's processes (pids 10 and 11) get their SM share summed; a neighbour's process (99)
    on the same GPU is not the run's; no new sample keeps the last value; NOT_SUPPORTED (a MIG
    slice) turns the per-process figure off with its reason."""
    from graders.telemetry import _GpuRunMeter

    nvml = _ProcessNvml([[(10, 30, 5), (11, 20, 6), (99, 45, 6)], _ProcessNvml.NVMLError_NotFound(), [(10, 60, 9)],
                      RuntimeError("Not Supported")])
    meter = _GpuRunMeter(nvml, ["gpu0"], lambda: {10, 11, 12})
    assert meter.read() == 50.0
    assert meter.read() == 50.0 and nvml.asked[-1] == 6  # nothing new since timestamp 6
    assert meter.read() == 60.0
    assert meter.read() is None and "not available here: Not Supported" in meter.error
    samples = [{"t": i * 0.1, "cpu": 20.0, "gpu": [90.0], "gpu_mem": [0.5], "cpu_run": 20.0, "gpu_run": 30.0}
               for i in range(20)]
    report = UtilizationReport.from_samples(samples, {**ONE_GPU, "gpu_run": "NVML's per-process samples"}, 0.1)
    assert report.mean == pytest.approx(90.0) and report.run_gpu_mean == pytest.approx(30.0)
    assert "GPU of this run's processes: mean 30.0 % (NVML's per-process samples" in report.summary()


def test_ready_time_counts_only_up_to_the_time_each_thread_ran(monkeypatch):
    """A busy thread kept off a shared core is credited the time it waited (about what it would
    have used); a thread that only wakes up to poll waits far longer than it runs, and only what
    it ran counts: Ray's hundreds of polling threads must not turn a neighbour's load into the
    run's utilization (a sleeping Phase 1 pipeline on one core read over its 50 % target so)."""
    from graders.telemetry import _RunMeter

    meter = _RunMeter({"pid": os.getpid()}, 2)
    values = {1: (0, 0), 2: (0, 0)}
    monkeypatch.setattr(meter, "_tasks", lambda: [1, 2])
    monkeypatch.setattr(meter, "_read", lambda task: values[task])
    meter.seen, meter.primed = {}, False
    meter._deltas()
    values.update({1: (50_000_000, 40_000_000), 2: (1_000_000, 30_000_000)})
    assert meter._deltas() == (51_000_000, 41_000_000)
