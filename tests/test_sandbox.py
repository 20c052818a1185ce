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


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/self/autogroup").exists(),
                    reason="a higher priority needs root, and sessions' priorities need sched_autogroup")
def test_every_session_of_a_run_gets_the_runs_priority(tmp_path):
    """Linux shares the CPU between sessions first: the kernel's session and one the learner's
    code starts with setsid both get the graded run's priority, so `nice` reaches them."""
    import asyncio

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
