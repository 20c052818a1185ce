"""The grading sandbox (graders/trusted/sandbox.py), process by process: what code inside it can see, write,
reach and leave behind. Plain processes, no kernel: seconds. (tests/test_attacks.py grades whole
attacking submissions through it.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

from graders.trusted import sandbox


@pytest.fixture(scope="module", autouse=True)
def available():
    if why := sandbox.unavailable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the grading sandbox must start on CI: {why}")
        pytest.skip(f"no sandbox here: {why}")


def run_inside(tmp_path: Path, code: str, cgroup: sandbox.RunCgroup | None = None, timeout: float = 60):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(run, sandbox.UID, sandbox.UID)
    cmd = sandbox.command([sys.executable, "-c", textwrap.dedent(code)], [str(run)], str(run))
    if cgroup:
        cmd = cgroup.join_prefix() + cmd
    return subprocess.run(cmd, env=sandbox.environment(dict(os.environ), str(run)), capture_output=True,
                          text=True, timeout=timeout)


def test_inside_sees_the_kit_and_data_read_only_and_nothing_else_of_the_course(tmp_path):
    out = run_inside(tmp_path, f"""
        import os, socket
        print("uid", os.getuid())
        print("course", sorted(os.listdir({str(ROOT)!r})))
        for path in [{str(ROOT / 'graders' / 'x.py')!r}, "/usr/x", "mine.txt"]:
            try:
                open(path, "w").write("x"); print("wrote", path)
            except OSError as e:
                print("refused", path, e.strerror)
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2); print("network")
        except OSError as e:
            print("no network:", e.strerror)
        import graders; print("kit", graders.__file__)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if os.geteuid() == 0:
        assert "uid 65534" in lines
    course = next(line for line in lines if line.startswith("course"))
    assert "solutions" not in course and "gradebook.db" not in course and "nbgrader_config.py" not in course, course
    assert any(line.startswith(f"refused {ROOT / 'graders'}") and "Read-only" in line for line in lines), lines
    assert any(line.startswith("refused /usr/x") for line in lines) and "wrote mine.txt" in lines
    assert "no network: Network is unreachable" in lines and f"kit {ROOT / 'graders' / '__init__.py'}" in lines


def test_a_detached_process_with_a_cleared_environment_ends_with_the_run(tmp_path):
    mark = f"sandbox-test-{uuid.uuid4().hex[:8]}"
    out = run_inside(tmp_path, f"""
        import subprocess
        subprocess.Popen(["env", "-i", "setsid", "sh", "-c", "sleep 300 # {mark}"], start_new_session=True)
        print("started")
    """)
    assert out.stdout.strip() == "started", out.stderr
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", mark], capture_output=True, text=True).stdout.split()
    assert left == [], f"still running after the sandbox ended: {left}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the memory limit needs a cgroup (root)")
def test_the_memory_limit_ends_a_run_that_takes_more(tmp_path):
    group = sandbox.RunCgroup(f"test-{uuid.uuid4().hex[:8]}", memory_bytes=300 * 2**20).create()
    try:
        out = run_inside(tmp_path, """
            import numpy as np
            blocks = [np.ones(50 * 2**20, np.uint8) for _ in range(20)]  # 1 GB, touched (137: bwrap saw its child killed)
            print("survived")
        """, cgroup=group)
        assert out.returncode in (-9, 137) and "survived" not in out.stdout, (out.returncode, out.stdout, out.stderr[-500:])
        assert group.cpu_seconds() > 0
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs)


def test_reclaim_removes_links_and_special_files_a_run_left(tmp_path):
    (tmp_path / "ok.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "pipe")
    assert sorted(sandbox.reclaim(tmp_path)) == ["pipe", "sub/link"]
    assert (tmp_path / "ok.txt").read_text() == "x"


def test_no_sandbox_on_a_ray_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert "10.0.0.1:6379" in sandbox.on_cluster()
    monkeypatch.delenv("RAY_ADDRESS")
    assert sandbox.on_cluster() is None


SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/sys/fs/cgroup/cpu", os.W_OK),
                    reason="the run's CPU weight needs root and the cgroup cpu controller")
def test_the_run_outranks_other_work_as_one_and_leaves_the_grader_its_share(tmp_path):
    """Eight busy processes in eight sessions of their own inside a run, each session given the
    run's priority (as `SessionPriority` does), and one busy process outside it (the grader's
    meter, say): the run gets most of the cores, and the outside process keeps about its 1/11
    however many sessions the run starts. With the run's weight turned off
    (the run in no cpu cgroup, as before) this test fails: the outside process got 2.7 % of a core."""
    import threading

    import psutil

    group = sandbox.RunCgroup(f"test-{uuid.uuid4().hex[:8]}").create()
    try:
        assert group.weighted
        outside = subprocess.Popen([sys.executable, "-c", SPIN.format(s=8)], start_new_session=True)
        code = f"""
            import subprocess, sys
            busy = [subprocess.Popen([sys.executable, "-c", {SPIN.format(s=5)!r}], start_new_session=True) for _ in range(8)]
            [p.wait() for p in busy]
        """
        result = {}
        inside = threading.Thread(target=lambda: result.update(out=run_inside(tmp_path, code, cgroup=group)))
        inside.start()
        time.sleep(1.0)
        sandbox.SessionPriority(group).scan()  # every session of the run at nice -10
        time.sleep(0.3)

        def used():
            return sum(psutil.Process(outside.pid).cpu_times()[:2]), group.cpu_seconds(), time.monotonic()

        (own0, run0, t0), _, (own1, run1, t1) = used(), time.sleep(3.0), used()  # all busy: both compete
        inside.join(60)
        outside.wait()
        out = result["out"]
        assert out.returncode == 0, out.stderr[-500:]
        cores = len(os.sched_getaffinity(0))
        assert run1 - run0 > 0.6 * cores * (t1 - t0), (run1 - run0, t1 - t0)
        assert own1 - own0 > 0.08 * (t1 - t0), (own1 - own0, t1 - t0)
    finally:
        group.remove()


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/sys/fs/cgroup/freezer", os.W_OK),
                    reason="pausing a run needs root and the cgroup freezer")
def test_a_paused_run_uses_no_cpu_and_goes_on_afterwards(tmp_path):
    """What the grader does while it measures its yardsticks: the run's busy process stops, then
    finishes its work."""
    import threading

    group = sandbox.RunCgroup(f"test-{uuid.uuid4().hex[:8]}").create()
    try:
        result = {}
        code = "import time\nn, end = 0, time.monotonic() + 4\nwhile time.monotonic() < end: n += 1\nprint('done', n > 0)"
        worker = threading.Thread(target=lambda: result.update(out=run_inside(tmp_path, code, cgroup=group)))
        worker.start()
        time.sleep(1.5)
        with group.paused() as paused:
            assert paused
            before = group.cpu_seconds()
            time.sleep(1.0)
            during = group.cpu_seconds() - before
        worker.join(30)
        assert during < 0.05, during
        assert result["out"].returncode == 0 and "done True" in result["out"].stdout, result["out"].stderr[-500:]
    finally:
        group.remove()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/self/autogroup").exists(),
                    reason="a higher priority needs root, and sessions' priorities need sched_autogroup")
def test_without_a_cpu_weight_every_session_of_a_run_gets_the_runs_priority(tmp_path, monkeypatch):
    """The fallback where the cgroup has no cpu controller: Linux shares the CPU between sessions
    first, so the kernel's session and one the learner's code starts with setsid both get the
    graded run's priority, and `nice` reaches them."""
    import asyncio

    monkeypatch.setattr(sandbox, "_write_weight", lambda *a: False)

    async def main():
        os.chmod(tmp_path, 0o777)
        km = sandbox.SandboxedKernelManager(kernel_name="python3")
        await km.start_kernel(cwd=str(tmp_path))
        try:
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            pid = next(p for p in km.cgroup.pids() if "ipykernel" in Path(f"/proc/{p}/cmdline").read_text())
            await kc.execute_interactive("import subprocess; subprocess.Popen(['setsid', 'sleep', '30'])", timeout=30)
            kc.stop_channels()
            time.sleep(2 * km._priority.every_s + 0.5)
            sessions = {os.getsid(p): Path(f"/proc/{p}/autogroup").read_text().split()[-1] for p in km.cgroup.pids()}
            return sessions, os.getsid(pid)
        finally:
            await km.shutdown_kernel(now=True)

    sessions, kernel = asyncio.run(main())
    assert sessions[kernel] == str(sandbox.PRIORITY), sessions
    assert len(sessions) >= 3 and set(sessions.values()) == {str(sandbox.PRIORITY)}, sessions
