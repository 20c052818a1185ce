"""Measured CPU and GPU utilization for the course's validation notebooks.

This module owns one job: measuring how busy the machine really was while a block
of code ran, and turning the measurements into a report that a grader can check.

* A separate sampler process takes a sample every ``interval`` seconds: the CPU
  (psutil, always) and every visible NVIDIA GPU (NVML, when it works).
* The CPU is measured for the run, not the machine: the CPU time of exactly the
  run's processes (its cgroup, or the process tree of the notebook's kernel, Ray's
  workers included), over wall time and the cores the run may use. The machine's
  figure is kept beside it, so other load shows as such ("machine 100 %, this run
  3 %"), and so is the time the run's ready threads waited in the kernel's run
  queue for cores that other load held (``/proc/<tid>/schedstat``): what the load
  cost the run. (The grader gives graded runs a higher CPU weight, so that cost
  stays small; see graders/trusted/sandbox.py.)
* Nothing is hard-coded or guessed. Without NVML the report says so, with the
  reason, and grades the CPU instead.

    from graders.telemetry import UtilizationMonitor

    with UtilizationMonitor(live=True) as mon:   # 10 samples per second
        ds.map_batches(Model, batch_size=64).materialize()
    print(mon.report)                            # a UtilizationReport
    mon.report.plot()
"""
from __future__ import annotations

import html
import math
import multiprocessing
import os
import pickle
import runpy
import signal
import sys
import threading
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import psutil

__all__ = ["UtilizationMonitor", "UtilizationReport", "nvml_devices", "steady_window"]

_SAMPLER_RUN_NAME = "__graders_telemetry_sampler__"
_GAUGE_PERIOD_S = 0.25  # redraw the live gauge at most 4 times a second


# --------------------------------------------------------------------------- NVML
def _probe_nvml(visible: str | None = None):
    """Start NVML and list the GPUs: returns ``(pynvml, handles, names, error)``.

    ``pynvml`` is None (and NVML already shut down) when utilization cannot be
    read; ``error`` then says why, e.g. "NVML not available: NVML Shared Library
    Not Found".
    """
    try:
        import pynvml
    except ImportError as exc:
        return None, [], [], f"NVML not available: nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return None, [], [], f"NVML not available: {exc or type(exc).__name__}"
    names = []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for h in handles:
            name = pynvml.nvmlDeviceGetName(h)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
            pynvml.nvmlDeviceGetUtilizationRates(h)  # fail now (e.g. MIG), not mid-run
    except Exception as exc:
        pynvml.nvmlShutdown()
        return None, [], names, f"NVML cannot read GPU utilization: {exc or type(exc).__name__}"
    handles, names = _visible_gpus(pynvml, handles, names, visible)
    if not handles:
        pynvml.nvmlShutdown()
        return None, [], [], "NVML found no GPUs"
    return pynvml, handles, names, None


def _visible_gpus(nvml, handles, names, visible: str | None = None):
    """Only the GPUs this process may use: CUDA_VISIBLE_DEVICES as indices or UUIDs.

    The class grader gives each parallel run its own GPU this way (with
    CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA's indices are NVML's).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        return handles, names
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    keep = []
    for i, h in enumerate(handles):
        uuid = nvml.nvmlDeviceGetUUID(h)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        if str(i) in wanted or any(uuid.startswith(w) for w in wanted if w.startswith("GPU-")):
            keep.append(i)
    return [handles[i] for i in keep], [names[i] for i in keep]


def _own_cpus() -> list[int] | None:
    """The cores this process may run on, when that is not all of them (a class grader pins
    each parallel run to its own cores); None means the whole machine."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return None if len(cores) >= (psutil.cpu_count() or 0) else cores


def nvml_devices() -> tuple[list[str], str | None]:
    """Names of the visible GPUs and, if NVML cannot measure them, the reason."""
    nvml, _, names, error = _probe_nvml()
    if nvml is not None:
        nvml.nvmlShutdown()
    return names, error


def gpu_processes(visible: str | None = None) -> list[tuple[int, int]]:
    """(pid, MiB) of every process holding memory on a visible GPU; [] without NVML.

    The class grader asks after each run: with one run per GPU, whatever is left there is
    that run's. `visible`: a CUDA_VISIBLE_DEVICES value (default: this process's)."""
    nvml, handles, _, _ = _probe_nvml(visible)
    if nvml is None:
        return []
    try:
        return [(p.pid, int((p.usedGpuMemory or 0) / 2**20)) for h in handles
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)]
    finally:
        nvml.nvmlShutdown()


# ---------------------------------------------------------------- the run's own CPU
def default_scope() -> dict | None:
    """What a monitor in this process measures as "the run": this process and everything it
    started (a local Ray's workers are its descendants). None (the whole machine) when the
    pipeline runs on a Ray cluster, whose workers are not on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    return {"pid": os.getpid()}


class _RunMeter:
    """The CPU a run used, and the time its ready threads waited for a core, from one read to
    the next. ``scope``: ``{"pid": root}`` (the root's process tree) or ``{"usage": file,
    "threads": file}`` (a cgroup: v1 ``cpuacct.usage`` in ns and ``tasks``, or v2 ``cpu.stat``
    and ``cgroup.threads``)."""

    def __init__(self, scope: dict, cores: int):
        self.scope, self.cores = dict(scope), max(1, cores)
        self.exclude = {os.getpid()}  # the sampler itself is not the run
        self.schedstat = os.path.exists("/proc/self/schedstat")  # Linux with CONFIG_SCHED_INFO
        self.seen: dict[int, tuple[int, int]] = {}
        self.primed = False
        self.tasks, self.listed = [], 0.0  # a process tree's threads, listed again each second
        self.t = time.monotonic()
        self.usage = 0
        self.usage = self._usage()
        self._deltas()

    def describe(self) -> str:
        what = "its cgroup" if "usage" in self.scope else "the kernel's process tree"
        wait = "" if self.schedstat else "; time waiting for a core: not measurable here (no /proc/<tid>/schedstat)"
        return f"the run's processes ({what}), on {self.cores} core{'s' if self.cores != 1 else ''}{wait}"

    def _usage(self) -> int | None:
        """The cgroup's CPU time in ns, or None for a process tree."""
        path = self.scope.get("usage")
        if not path:
            return None
        try:
            text = open(path).read()
        except OSError:  # the cgroup is gone: nothing more was used
            return self.usage
        if path.endswith("cpu.stat"):
            return next((int(line.split()[1]) * 1000 for line in text.splitlines() if line.startswith("usage_usec")), 0)
        return int(text.strip() or 0)

    def _tasks(self) -> list[int]:
        if "threads" in self.scope:
            try:
                return [int(t) for t in open(self.scope["threads"]).read().split()]
            except OSError:
                return []
        # Listing a tree costs more than reading it: list it each second. A thread found late
        # loses nothing (a new thread counts from its start); one that ends loses its last read.
        if time.monotonic() - self.listed >= 1.0:
            self.tasks, self.listed = self._tree_tasks(), time.monotonic()
        return self.tasks

    def _tree_tasks(self) -> list[int]:
        try:
            root = psutil.Process(self.scope["pid"])
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        if not self.schedstat:
            return [p.pid for p in procs if p.pid not in self.exclude]
        tasks = []
        for p in procs:
            if p.pid in self.exclude:
                continue
            try:
                tasks += [int(t) for t in os.listdir(f"/proc/{p.pid}/task")]
            except OSError:
                continue
        return tasks

    def _read(self, task: int) -> tuple[int, int] | None:
        """(ns on a CPU, ns waiting in a run queue) of a thread; a process's CPU without schedstat."""
        try:
            if self.schedstat:  # os-level reads: a few hundred threads, ten times a second
                fd = os.open(f"/proc/{task}/schedstat", os.O_RDONLY)
                try:
                    run, wait, _ = os.read(fd, 128).split()
                finally:
                    os.close(fd)
                return int(run), int(wait)
            t = psutil.Process(task).cpu_times()
            return int((t.user + t.system + t.children_user + t.children_system) * 1e9), 0
        except (OSError, ValueError, psutil.Error):
            return None

    def _deltas(self) -> tuple[int, int]:
        run = wait = 0
        now = {}
        for task in self._tasks():
            value = self._read(task)
            if value is None:
                continue
            now[task] = value
            # a task seen before: what it did since; a new one: all it did (it started since)
            before = self.seen.get(task, (0, 0) if self.primed else value)
            ran = max(0, value[0] - before[0])
            run += ran
            # Ready time counts up to the time the thread ran: a busy thread kept off a core it
            # shares wants about as much as it got; a thread that only wakes up to poll (Ray has
            # hundreds) waits far longer than it runs, and that wait is not work it wanted to do.
            wait += min(ran, max(0, value[1] - before[1]))
        self.seen, self.primed = now, True
        return run, wait

    def read(self, machine: float) -> dict:
        """``cpu_run``: % of the run's cores it used; ``cpu_wait``: % of them it was ready to
        use but waited for while other load held them (at most what that load used, and per
        thread at most what that thread ran: see `_deltas`)."""
        t, usage = time.monotonic(), self._usage()
        run, wait = self._deltas()
        if usage is not None:  # the cgroup's counter also holds the threads that ended meanwhile
            run, self.usage = max(0, usage - self.usage), usage
        capacity = max(t - self.t, 1e-6) * 1e9 * self.cores
        self.t = t
        used = min(100.0, 100.0 * run / capacity)
        others = max(0.0, machine - used)
        waited = min(100.0 * wait / capacity, others, 100.0 - used) if self.schedstat else 0.0
        return {"cpu_run": used, "cpu_wait": waited, "cpu_run_s": run / 1e9}


class _GpuRunMeter:
    """The run's own share of its GPUs: NVML's per-process samples
    (``nvmlDeviceGetProcessUtilization``: each process's SM utilization since the last read) for
    the run's processes, summed per GPU, averaged over the GPUs, kept beside the device figure.
    NVML samples processes every few hundred ms: a read with no new sample keeps the last value.
    On a MIG slice, and on drivers without it, NVML does not sample processes: the first error
    turns this off, and the report says why (the device figure is then all there is)."""

    def __init__(self, nvml, handles, run_tasks):
        self.nvml, self.handles, self.run_tasks = nvml, handles, run_tasks
        self.seen = [0] * len(handles)  # NVML's timestamp (us) of the newest sample read per GPU
        self.last = [0.0] * len(handles)
        self.error = None

    def read(self) -> float | None:
        if self.error:
            return None
        own = self.run_tasks()  # thread ids; a process's pid is its main thread's id
        for i, h in enumerate(self.handles):
            try:
                samples = self.nvml.nvmlDeviceGetProcessUtilization(h, self.seen[i])
            except Exception as exc:
                if type(exc).__name__ == "NVMLError_NotFound":  # no new sample since the last read
                    continue
                self.error = f"per-process GPU utilization not available here: {exc or type(exc).__name__}"
                return None
            latest: dict[int, float] = {}
            for smp in sorted(samples, key=lambda smp: smp.timeStamp):
                latest[smp.pid] = float(smp.smUtil)
                self.seen[i] = max(self.seen[i], int(smp.timeStamp))
            if latest:
                self.last[i] = min(100.0, sum(v for pid, v in latest.items() if pid in own))
        return sum(self.last) / len(self.last) if self.last else None


# ---------------------------------------------------------------- sampler process
def _system_sampler(scope: dict | None = None):
    """The default sampler: psutil for the CPU, NVML for every GPU it can read; with a
    ``scope``, also the run's own CPU (see `_RunMeter`).

    Returns ``(device_info, sample, close)``.
    """
    nvml, handles, names, error = _probe_nvml()
    cores = _own_cpus()
    if scope and os.geteuid() == 0:
        try:  # the grader's meter keeps its beat on a busy machine (it needs a few ms a second)
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except OSError:
            pass
    meter = _RunMeter(scope, len(cores) if cores else psutil.cpu_count() or 1) if scope else None
    gpu_run = _GpuRunMeter(nvml, handles, lambda: set(meter.seen)) if meter and nvml else None
    if gpu_run:
        gpu_run.read()  # NVML says now whether it samples processes here (not on a MIG slice)
    psutil.cpu_percent(interval=None, percpu=True)  # the first call only sets the baseline

    def cpu() -> float:
        per_core = psutil.cpu_percent(interval=None, percpu=True)
        own = [per_core[i] for i in cores] if cores else per_core
        return sum(own) / len(own)

    def sample():
        gpu, mem = [], []
        for h in handles:
            gpu.append(float(nvml.nvmlDeviceGetUtilizationRates(h).gpu))
            m = nvml.nvmlDeviceGetMemoryInfo(h)
            mem.append(m.used / m.total)
        machine = cpu()
        own = meter.read(machine) if meter else {}
        if gpu_run and (run_gpu := gpu_run.read()) is not None:
            own["gpu_run"] = run_gpu
        return {"cpu": machine, "gpu": gpu, "gpu_mem": mem, **own}

    info = {"gpus": names, "nvml": error, "cpu_count": len(cores) if cores else psutil.cpu_count(),
            "scope": meter.describe() if meter else "the whole machine",
            **({"gpu_run": gpu_run.error or "NVML's per-process samples"} if gpu_run else {})}
    return info, sample, (nvml.nvmlShutdown if nvml else lambda: None)


def _sampler_main(data, stop, interval, parent_pid, sampler=None, device_info=None, scope=None):
    """Body of the sampler process: send the device info, then a sample per interval.

    It stops when the parent sends "stop", closes the pipe or dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / "interrupt kernel" is the parent's
    close = lambda: None  # noqa: E731
    try:
        if sampler is None:
            device_info, sampler, close = _system_sampler(scope)
        data.send(("info", dict(device_info or {})))
        t0 = next_t = time.monotonic()
        while os.getppid() == parent_pid:
            next_t += interval
            if next_t < time.monotonic():  # fell behind (stalled machine): restart the beat
                next_t = time.monotonic() + interval
            # Sleep on the stop pipe: it wakes up early on "stop" or when the parent dies.
            if stop.poll(max(0.0, next_t - time.monotonic())):
                break
            s = sampler()
            data.send(("sample", {
                "t": time.monotonic() - t0,
                "cpu": float(s["cpu"]),
                "gpu": [float(v) for v in s.get("gpu", [])],
                "gpu_mem": [float(v) for v in s.get("gpu_mem", [])],
                **{k: float(s[k]) for k in ("cpu_run", "cpu_wait", "cpu_run_s", "gpu_run") if s.get(k) is not None},
            }))
    except (EOFError, BrokenPipeError):
        pass  # the parent has gone away
    except Exception as exc:
        try:
            data.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        close()


# ------------------------------------------------------------------- the report
def _percentile(values, q):
    """Linearly interpolated percentile: the same rule as numpy.percentile's default."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _stats(values):
    """(mean, p50, p90), or (None, None, None) when nothing was measured."""
    if not values:
        return None, None, None
    return sum(values) / len(values), _percentile(values, 50), _percentile(values, 90)


def steady_window(times, values, frac=0.5):
    """Return ``(start, end)``: the times of the steady-state part of a run.

    Rule: let p90 be the 90th percentile of all values. The window runs from the
    first sample whose value is >= ``frac`` x p90 to the last such sample
    (inclusive). So the warm-up before it (Ray start-up, model loading) and the
    drain after it are left out and do not dilute the number. A single spike
    cannot make a window: if the window holds fewer than 3 samples, or p90 is 0
    (nothing ever ran), the whole run is used.
    """
    if not times or len(times) != len(values):
        raise ValueError("steady_window needs the same, non-zero number of times and values")
    p90 = _percentile(values, 90)
    busy = [i for i, v in enumerate(values) if v >= frac * p90]
    if p90 <= 0 or busy[-1] - busy[0] + 1 < 3:
        return times[0], times[-1]
    return times[busy[0]], times[busy[-1]]


@dataclass
class UtilizationReport:
    """Measured utilization of one monitored run (see ``from_samples`` for the maths).

    ``mean``/``p50``/``p90`` describe the primary device (the GPUs when NVML
    measured at least one, else the CPU) over the steady window; ``cpu_*`` always
    describe the CPU over the same window. All percentages are 0-100. Stats are
    None when there are no samples: nothing is ever invented.
    """

    device: str  # "gpu" or "cpu"
    device_name: str
    gpu_count: int = 0
    nvml_error: str | None = None
    interval_s: float = 0.1
    samples: int = 0
    duration_s: float = 0.0
    window_s: tuple[float, float] | None = None
    window_samples: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    cpu_mean: float | None = None
    cpu_p50: float | None = None
    cpu_p90: float | None = None
    gpu_means: list[float | None] = field(default_factory=list)  # per GPU, steady window
    gpu_mem_max: list[float] = field(default_factory=list)  # per GPU, peak used fraction
    timeline: list[dict] = field(default_factory=list, repr=False)
    source: str = ""  # who measured it, when not the notebook itself (the grader, from outside)
    scope: str = "the whole machine"  # what the CPU figures cover (see _RunMeter.describe)
    run_cpu_mean: float | None = None  # the run's own CPU use, steady window (None: the machine was measured)
    wait_mean: float | None = None  # time the run's ready threads waited for cores that other load held
    machine_cpu_mean: float | None = None  # the whole machine (or the run's cores), steady window
    run_cpu_seconds: float | None = None  # CPU time the run's own processes used, the whole run
    run_gpu_mean: float | None = None  # the run's processes' share of the GPUs (NVML per process), steady window
    run_gpu_source: str = ""  # how run_gpu_mean was measured, or why it was not
    cores: int = 0  # the CPU cores the run was measured on (its own when pinned, else the machine's)

    @classmethod
    def from_dict(cls, d: dict) -> UtilizationReport:
        """The inverse of `to_dict` (with or without its timeline)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if known.get("window_s") is not None:
            known["window_s"] = tuple(known["window_s"])
        return cls(**known)

    @classmethod
    def from_samples(cls, samples, device_info=None, interval=0.1) -> UtilizationReport:
        """Build a report from samples ``{"t", "cpu", "gpu": [...], "gpu_mem": [...]}``.

        ``device_info`` is ``{"gpus": [names], "nvml": None or reason, "cpu_count": n}``.
        Each sample measures the ``interval`` before it, so ``duration_s`` is
        last t - first t + interval.
        """
        info = dict(device_info or {})
        timeline = [{"t": float(s["t"]), "cpu": float(s["cpu"]),
                     "gpu": [float(v) for v in s.get("gpu", [])],
                     "gpu_mem": [float(v) for v in s.get("gpu_mem", [])],
                     **{k: float(s[k]) for k in ("cpu_run", "cpu_wait", "cpu_run_s", "gpu_run") if s.get(k) is not None}} for s in samples]
        own = bool(timeline) and all("cpu_run" in s for s in timeline)  # the run's own CPU, not the machine's
        # The run's share of its cores: what it used, plus what it was ready to use while other load
        # held those cores (see _run_cpu and _RunMeter.read for the caps).
        run_cpu = [_run_cpu(s) for s in timeline] if own else [s["cpu"] for s in timeline]
        names = [str(n) for n in info.get("gpus") or []]
        nvml_error = info.get("nvml")
        is_gpu = nvml_error is None and any(s["gpu"] for s in timeline)
        if is_gpu:
            device_name = ", ".join(dict.fromkeys(names)) or "GPU"
        else:
            device_name = f"CPU ({info.get('cpu_count') or psutil.cpu_count()} logical cores)"
        report = cls(device="gpu" if is_gpu else "cpu", device_name=device_name,
                     gpu_count=max([len(names)] + [len(s["gpu"]) for s in timeline]),
                     nvml_error=nvml_error, interval_s=float(interval),
                     samples=len(timeline), timeline=timeline,
                     scope=str(info.get("scope") or "the whole machine") if own else "the whole machine",
                     cores=int(info.get("cpu_count") or psutil.cpu_count() or 1))
        if not timeline:
            return report

        report.duration_s = timeline[-1]["t"] - timeline[0]["t"] + float(interval)
        report.run_gpu_source = str(info.get("gpu_run") or "")
        rows = [(s, c) for s, c in zip(timeline, run_cpu) if s["gpu"]] if is_gpu else list(zip(timeline, run_cpu))
        primary = [sum(s["gpu"]) / len(s["gpu"]) if is_gpu else c for s, c in rows]
        start, end = steady_window([s["t"] for s, _ in rows], primary)
        report.window_s = (start, end)
        inside = [i for i, s in enumerate(timeline) if start <= s["t"] <= end]
        window = [timeline[i] for i in inside]
        report.window_samples = len(window)
        report.mean, report.p50, report.p90 = _stats(
            [p for (s, _), p in zip(rows, primary) if start <= s["t"] <= end])
        report.cpu_mean, report.cpu_p50, report.cpu_p90 = _stats([run_cpu[i] for i in inside])
        report.machine_cpu_mean = _stats([s["cpu"] for s in window])[0]
        if own:
            if all("cpu_run_s" in s for s in timeline):  # measured CPU time, whatever the beat was
                report.run_cpu_seconds = sum(s["cpu_run_s"] for s in timeline)
            else:
                report.run_cpu_seconds = sum(s["cpu_run"] for s in timeline) / 100.0 * report.cores * float(interval)
            report.run_cpu_mean = _stats([s["cpu_run"] for s in window])[0]
            report.wait_mean = _stats([s.get("cpu_wait", 0.0) for s in window])[0]
        if is_gpu and any("gpu_run" in s for s in window):
            report.run_gpu_mean = _stats([s["gpu_run"] for s in window if "gpu_run" in s])[0]
        for i in range(report.gpu_count):
            report.gpu_means.append(_stats([s["gpu"][i] for s in window if len(s["gpu"]) > i])[0])
            mem = [s["gpu_mem"][i] for s in timeline if len(s["gpu_mem"]) > i]
            if mem:
                report.gpu_mem_max.append(max(mem))
        return report

    @property
    def rate_hz(self) -> float | None:
        """Samples per second actually achieved."""
        return self.samples / self.duration_s if self.duration_s else None

    def summary(self) -> str:
        """A short, human-readable multi-line summary."""
        gpus = f" ({self.gpu_count} GPU{'s' if self.gpu_count != 1 else ''})" if self.device == "gpu" else ""
        lines = [f"Device: {self.device.upper()} - {self.device_name}{gpus}"]
        if not self.samples:
            lines.append("Samples: 0 - no samples, so no utilization is reported")
        else:
            lines += [
                f"Samples: {self.samples} at {self.rate_hz:.1f} Hz over {self.duration_s:.1f} s "
                f"(interval {self.interval_s:g} s)",
                f"Steady window: {self.window_s[0]:.1f}-{self.window_s[1]:.1f} s "
                f"({self.window_samples} samples)",
                f"{self.device.upper()} utilization: mean {self.mean:.1f} %, p50 {self.p50:.1f} %, p90 {self.p90:.1f} %"
                + (f" (this run's processes: used {self.run_cpu_mean:.1f} %, ready while other load held the cores "
                   f"{self.wait_mean:.1f} %)" if self.device == "cpu" and self.run_cpu_mean is not None else ""),
            ]
            if self.device == "gpu":
                lines.append(f"CPU utilization: mean {self.cpu_mean:.1f} %")
                if self.run_gpu_mean is not None:
                    lines.append(f"GPU of this run's processes: mean {self.run_gpu_mean:.1f} % ({self.run_gpu_source}; "
                                 "the device's figure above is the graded one)")
                elif self.run_gpu_source:
                    lines.append(f"GPU of this run's processes: not measured ({self.run_gpu_source})")
            if self.run_cpu_mean is not None:
                lines.append(f"Other load: the machine {self.machine_cpu_mean:.1f} %; this run waited {self.wait_mean:.1f} % "
                             f"for cores other load held (measured: {self.scope})")
            else:
                lines.append(f"CPU measured: {self.scope} (the machine's load counts as the run's)")
        if self.device == "cpu":
            lines.append(f"GPU: not measured ({self.nvml_error or 'no GPU samples'})")
        return "\n".join(lines)

    __str__ = summary

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict; the per-sample timeline only if asked for."""
        d = asdict(self)
        d["window_s"] = list(self.window_s) if self.window_s else None
        d["rate_hz"] = self.rate_hz
        if not timeline:
            del d["timeline"]
        return d

    def plot(self, ax=None):
        """Plot CPU and each GPU (0-100 %) over time, shading the steady window."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        t = [s["t"] for s in self.timeline]
        if self.timeline and all("cpu_run" in s for s in self.timeline):
            ax.plot(t, [_run_cpu(s) for s in self.timeline], label="CPU, this run (used or ready)")
            ax.plot(t, [s["cpu"] for s in self.timeline], label="CPU, machine", alpha=0.4)
        else:
            ax.plot(t, [s["cpu"] for s in self.timeline], label="CPU")
        for i in range(self.gpu_count):
            rows = [s for s in self.timeline if len(s["gpu"]) > i]
            ax.plot([s["t"] for s in rows], [s["gpu"][i] for s in rows], label=f"GPU {i}")
        if self.window_s:
            ax.axvspan(*self.window_s, color="tab:green", alpha=0.15, label="steady window")
            ax.legend(loc="upper right")
        else:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center")
        ax.set(ylim=(0, 105), xlabel="time since monitor start (s)", ylabel="utilization (%)",
               title=self.summary().splitlines()[0])
        return ax


# ----------------------------------------------------------------- live gauge
class _LiveGauge:
    """One FloatProgress bar (0-100 %) per measured device: "CPU", "GPU 0", ..."""

    def __init__(self, names):
        import ipywidgets as widgets

        self._widgets = widgets
        self.bars = [widgets.FloatProgress(value=0, min=0, max=100, description=n) for n in names]
        self.labels = [widgets.Label("waiting for samples") for _ in names]
        self.box = widgets.VBox([widgets.HBox([b, lab]) for b, lab in zip(self.bars, self.labels)])

    def update(self, samples):
        for k, (bar, label) in enumerate(zip(self.bars, self.labels)):
            values = [_run_cpu(s) if k == 0 else s["gpu"][k - 1]
                      for s in samples if k == 0 or len(s["gpu"]) >= k]
            if values:
                bar.value = values[-1]
                machine = f", machine {samples[-1]['cpu']:.0f} %" if k == 0 and "cpu_run" in samples[-1] else ""
                label.value = f"{values[-1]:5.1f} %  (mean {sum(values) / len(values):.1f} %{machine})"

    def finish(self, report):
        self.update(report.timeline)
        summary = self._widgets.HTML(report._repr_html_())
        self.box.children = (*self.box.children, summary)


def _run_cpu(sample) -> float:
    """The run's share of its cores in a sample (used, plus ready while other load held them:
    what the report grades), else the machine's."""
    if "cpu_run" not in sample:
        return sample["cpu"]
    return min(100.0, sample["cpu_run"] + sample.get("cpu_wait", 0.0))


def _show_gauge(names):
    """Display a _LiveGauge in Jupyter; None in plain Python (live then does nothing)."""
    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is None:
            return None
        from IPython.display import display

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gauge = _LiveGauge(names)
            display(gauge.box)
        return gauge
    except Exception:
        return None


# ---------------------------------------------------------------- the monitor
class UtilizationMonitor:
    """Context manager that samples utilization in a separate process.

    ``interval``: seconds between samples, in (0, 0.2] (at least 5 Hz; 0.1 s = 10 Hz).
    ``live``: show a gauge in Jupyter (ignored in plain Python).
    ``sampler``: optional picklable top-level function returning
    ``{"cpu": float, "gpu": [floats], "gpu_mem": [floats]}``, used instead of
    psutil/NVML; ``device_info`` goes with it, e.g. ``{"gpus": ["Fake GPU"], "nvml": None}``.
    ``scope``: what "the run" is for the CPU: ``"auto"`` (this process and everything it
    started; the whole machine on a Ray cluster), ``None`` (the whole machine), or a dict
    for `_RunMeter` (the grader passes the graded kernel's cgroup).

    After the with-block, ``report`` holds the UtilizationReport.
    """

    def __init__(self, interval: float = 0.1, live: bool = False,
                 sampler: Callable[[], dict] | None = None, device_info: dict | None = None,
                 scope: dict | str | None = "auto"):
        interval = float(interval)
        if not 0 < interval <= 0.2:
            raise ValueError(f"interval must be > 0 and <= 0.2 seconds (at least 5 samples "
                             f"per second), got {interval!r}")
        if sampler is not None:
            try:
                pickle.dumps(sampler)
                ok = getattr(sampler, "__module__", None) != "__main__"
            except Exception:
                ok = False
            if not ok:
                raise TypeError("sampler must be a picklable top-level function of an importable "
                                "module (not a lambda, nor defined in a notebook or __main__)")
        self.interval, self.live = interval, live
        self.sampler, self.device_info = sampler, device_info
        self.scope = (default_scope() if sampler is None else None) if scope == "auto" else scope
        self.report: UtilizationReport | None = None
        self._samples: list[dict] = []
        self._info: dict | None = None
        self._error: str | None = None
        self._gauge: _LiveGauge | None = None
        self._last_draw = 0.0
        self._started = threading.Event()  # set once the child sent its info (or died)
        self._child_gone = threading.Event()  # set once the child has been joined

    def __enter__(self) -> UtilizationMonitor:
        ctx = multiprocessing.get_context("spawn")
        self._data, data_w = ctx.Pipe(duplex=False)
        stop_r, self._stop = ctx.Pipe(duplex=False)
        kwargs = dict(data=data_w, stop=stop_r, interval=self.interval, parent_pid=os.getpid(),
                      sampler=self.sampler, device_info=self.device_info, scope=self.scope)
        # The child runs this file as a script instead of importing graders.telemetry,
        # so the graders package (which may import Ray or torch) is never loaded there.
        self._proc = ctx.Process(
            target=runpy.run_path, args=(__file__,), name="utilization-sampler", daemon=True,
            kwargs={"run_name": _SAMPLER_RUN_NAME, "init_globals": {"_sampler_kwargs": kwargs}})
        # Start it with an empty __main__: spawn would otherwise re-run the caller's
        # script (with its `import ray`) in the child.
        main, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
        try:
            self._proc.start()
        finally:
            sys.modules["__main__"] = main
        data_w.close()  # the child holds its own copies of these ends
        stop_r.close()
        self._thread = threading.Thread(target=self._drain, name="utilization-drain", daemon=True)
        self._thread.start()
        self._started.wait(timeout=60)
        if self._info is None:
            self._shutdown()
            raise RuntimeError("the utilization sampler process did not start: "
                               f"{self._error or f'exit code {self._proc.exitcode}'}")
        if self.live:
            gpus = len(self._info.get("gpus") or []) if self._info.get("nvml") is None else 0
            self._gauge = _show_gauge(["CPU"] + [f"GPU {i}" for i in range(gpus)])
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._shutdown()
        self.report = UtilizationReport.from_samples(self._samples, self._info, self.interval)
        if self._gauge is not None:
            try:
                self._gauge.finish(self.report)
            except Exception:
                pass
        if self._error and exc_type is None:
            raise RuntimeError(f"the utilization sampler failed: {self._error}")

    def _drain(self):
        """Parent-side thread: receive everything the child sends, without blocking anyone."""
        try:
            while True:
                if self._data.poll(0.1):
                    kind, payload = self._data.recv()
                    if kind == "sample":
                        self._samples.append(payload)
                        self._draw()
                    elif kind == "info":
                        self._info = payload
                        self._started.set()
                    else:
                        self._error = payload
                elif self._child_gone.is_set():
                    break
        except (EOFError, OSError):
            pass  # the child closed its end: everything has been received
        finally:
            self._started.set()

    def _draw(self):
        if self._gauge is not None and time.monotonic() - self._last_draw >= _GAUGE_PERIOD_S:
            self._last_draw = time.monotonic()
            try:
                self._gauge.update(self._samples)
            except Exception:
                self._gauge = None

    def _shutdown(self):
        """Stop the child (ask, then terminate, then kill) and collect what it sent."""
        try:
            self._stop.send("stop")
        except OSError:
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=2)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._child_gone.set()
        self._thread.join(timeout=5)
        self._stop.close()
        self._data.close()


# UtilizationMonitor starts its sampler process by running this file as a script
# (see __enter__); ``_sampler_kwargs`` is handed in by runpy.run_path.
if __name__ == _SAMPLER_RUN_NAME:
    _sampler_main(**_sampler_kwargs)  # noqa: F821
