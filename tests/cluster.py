"""A real two-node Ray cluster on this machine, for the tests that run the validations on one.

`two_node_cluster()` starts a head node and a worker node (`ray start --head` plus
`ray start --address`), each its own set of processes with its own CPU count, in a temporary
folder and on ports of their own; a notebook joins them through RAY_ADDRESS. Stopping it stops only
its own processes (`ray stop` would stop every Ray on the machine) and checks that none is left.

Sizing: 1 CPU per node, 2 in all, as many as the machine's 2 cores and as a local Ray gets here.
The model stage (1 actor x 1 CPU) then fills one node, so the reads and preprocessing must run on
the other; and Phase 2's efficiency ceiling, scaled by the cluster's CPUs over the driver's cores,
stays the ceiling of the cores that really run the work (a 3-CPU cluster on 2 cores would ask for
1.5x what the cores can do).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from conftest import free_port

RAY = str(Path(sys.executable).with_name("ray"))
NODE_CPUS = {"head": 1, "worker": 1}
CPUS = sum(NODE_CPUS.values())
# Ray Data's own services: one detached actor each per cluster, shared by every job, by design.
RAY_DATA_SERVICES = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker", "_UsageCollectionActor")


class Cluster:
    """A `ray start` cluster on this machine, found by its own temp folder and GCS port."""

    def __init__(self, temp_dir: str, port: int):
        self.temp_dir, self.port = temp_dir, port
        self.address = f"127.0.0.1:{port}"
        self.client_address = None  # ray://... when its head runs a Ray Client server
        self._state = None

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes, whatever they call themselves: every one whose command line
        names its temp folder or GCS port, or that holds a file open in that folder (each Ray
        process, workers included, writes its logs there; workers rename themselves "ray::..."
        and outlive a killed raylet as orphans, so neither name nor parent would find them)."""
        marks = (self.temp_dir, f"127.0.0.1:{self.port}", f"gcs_server_port={self.port}")
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if proc.pid == os.getpid():
                continue
            try:
                line = " ".join(proc.info["cmdline"] or [])
                if any(m in line for m in marks) or any(f.path.startswith(self.temp_dir + os.sep) for f in proc.open_files()):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile, or not ours to read
                pass
        return [p for p in found if _alive(p)]

    def state(self):
        """Ray's GCS tables of this cluster, read without joining it as a driver."""
        if self._state is None:
            from ray._private.state import GlobalState
            from ray._raylet import GcsClientOptions

            self._state = GlobalState()
            self._state._initialize_global_state(
                GcsClientOptions.create(self.address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False))
        return self._state

    def nodes(self) -> dict[str, float]:
        """{node id: CPUs} of the nodes alive."""
        return {n["NodeID"]: n["Resources"].get("CPU", 0) for n in self.state().node_table() if n["Alive"]}

    def actors(self) -> dict[str, dict]:
        return self.state().actor_table(None)

    def stop(self) -> None:
        """Stop this cluster as `ray stop --force` would (raylets first, so that nothing starts new
        workers, then the rest, GCS last), but only its own processes: `ray stop` stops every Ray
        on the machine."""
        if self._state is not None:
            self._state.disconnect()
        procs = self.processes()
        order = {"raylet": 0, "gcs_server": 2}
        for step in range(3):
            group = [p for p in procs if order.get(_name(p), 1) == step]
            for proc in group:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            deadline = time.monotonic() + 10
            while any(map(_alive, group)) and time.monotonic() < deadline:  # a zombie counts as gone
                time.sleep(0.05)


    def actors_since(self, before: set[str]) -> dict[str, list[dict]]:
        """The actors started on this cluster since `before` (actor ids), by class name; fails if
        any but Ray Data's services is still alive (the GCS ends a finished job's actors within
        moments, so this waits up to 20 s for that)."""
        deadline = time.monotonic() + 20
        while True:
            ran = {}
            for actor_id, a in self.actors().items():
                if actor_id not in before:
                    ran.setdefault(a["ActorClassName"], []).append(a)
            alive = [(name, a["Name"]) for name, group in ran.items() for a in group
                     if a["State"] != "DEAD" and not (name in RAY_DATA_SERVICES and a["IsDetached"])]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not alive, f"actors left alive on the cluster after the notebook: {alive}"
        return ran


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


@contextlib.contextmanager
def two_node_cluster(cpus: dict[str, int] = NODE_CPUS, gpus: dict[str, int] | None = None, hide: tuple[str, ...] = ()):
    """A head node and a worker node (`cpus`, by node; a "head" alone gives one node), started here
    with this process's environment and stopped afterwards; nothing of it may be left running.
    `gpus`: GPUs a node advertises (on a machine without one, a resource Ray schedules by, not a
    device). Its Ray Client address is `client_address`. `hide` (root only): folders the worker
    node does not see (it runs in a mount namespace of its own with an empty folder over each), so
    the files the driver and the grader write there stay theirs, as on nodes that share no disk."""
    gpus = gpus or {}
    # A short folder of its own (Ray's socket paths must stay under 108 characters) and ports of its
    # own: Ray's fixed defaults (10001 for Ray Client, 52365 for each node's agent) may be taken by
    # another Ray on this machine, or by the other node.
    temp_dir = tempfile.mkdtemp(prefix="raycl-", dir="/tmp")
    port = free_port()
    c = Cluster(temp_dir, port)
    assert not c.processes(), "something already uses this cluster's port or folder"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    client = free_port()
    c.client_address = f"ray://127.0.0.1:{client}"
    head = [RAY, "start", "--head", f"--port={port}", f"--num-cpus={cpus['head']}", f"--num-gpus={gpus.get('head', 0)}",
            "--include-dashboard=false", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={free_port()}", *common]
    worker = [RAY, "start", f"--address={c.address}", f"--num-cpus={cpus.get('worker', 0)}", f"--num-gpus={gpus.get('worker', 0)}",
              f"--dashboard-agent-listen-port={free_port()}", *common]
    if hide:  # its processes keep the namespace after `ray start` returns
        mounts = " && ".join(f"mount -t tmpfs -o size=64m tmpfs '{folder}'" for folder in hide)
        worker = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", f'{mounts} && exec "$@"', "sh", *worker]
    started = time.perf_counter()
    try:
        # The worker node starts as soon as the head's GCS listens (it waits for the head's
        # session to be registered there), while the head starts the rest of its processes.
        heading = subprocess.Popen(head, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while heading.poll() is None and not _listening(port):
            time.sleep(0.1)
        joined = subprocess.run(worker, check=False, env=env, capture_output=True, text=True, timeout=180) if "worker" in cpus else None
        head_out, _ = heading.communicate(timeout=180)
        assert heading.returncode == 0, f"ray start --head failed:\n{head_out}"
        assert joined is None or joined.returncode == 0, f"ray start --address failed:\n{joined.stdout}{joined.stderr}"
        for _ in range(60):  # the worker node registers with the GCS shortly after `ray start` returns
            if len(c.nodes()) == len(cpus):
                break
            time.sleep(0.5)
        assert sorted(c.nodes().values()) == sorted(cpus.values()), c.nodes()
        print(f"\ncluster at {c.address} up in {time.perf_counter() - started:.1f} s")
        yield c
    finally:
        stopping = time.perf_counter()
        c.stop()
        left = [(p.pid, _name(p)) for p in c.processes()]
        print(f"\ncluster stopped in {time.perf_counter() - stopping:.1f} s")
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the cluster were left running after it was stopped: {left}"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def nodes_of(actors: list[dict]) -> set[str]:
    return {a["Address"]["NodeID"] for a in actors}


def nodes_used(printed: str, name: str) -> int:
    """Nodes a run_pipeline run reported ("<name>: ... rows in ... s (...; on 2 nodes)")."""
    match = re.search(rf"^{re.escape(name)}: .*; on (\d+) nodes?\)$", printed, re.MULTILINE)
    assert match, f"no node count for {name!r} in:\n{printed}"
    return int(match[1])


def spread(ran: dict[str, list[dict]]) -> str:
    """What ran as actors, for the log: "MapWorker x2 on 2 node(s), ..."."""
    return ", ".join(f"{name} x{len(group)} on {len(nodes_of(group))} node(s)" for name, group in sorted(ran.items()))
