"""Shared test helpers: the repo root, phases, and a place to report autograde scores."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASES = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
SCORES: list[str] = []  # lines printed at the end of the run (make test shows the autograde scores)
BROWSER: list[str] = []  # the browser test's screenshots, or why it did not run (printed at the end too)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def local_ray():
    """A quiet local Ray set up by the course kit (`gr.start`), stopped after the module."""
    import ray

    import graders as gr

    gr.start(quiet=True)
    try:
        yield ray
    finally:
        gr.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: its address, its token and its log file."""

    url: str
    token: str
    log: Path
    process: subprocess.Popen

    def api(self, path: str, method: str = "GET"):
        """Call the server's REST API (JSON in, JSON out; None for an empty answer)."""
        request = urllib.request.Request(f"{self.url}/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        body = urllib.request.urlopen(request, timeout=10).read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def jupyter_lab(notebook_dir: Path, state: Path, env: dict | None = None):
    """JupyterLab started as `make lab` starts it, on `notebook_dir`, stopped afterwards.

    Like `make lab` it runs in the repository root, where nbgrader's Validate button reads
    nbgrader_config.py (the course's cell time limits). It listens on a free local port with a
    token of its own; its runtime files, lab settings and log go to `state`.
    """
    state.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(8)
    env = {**os.environ, **(env or {}), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces")}
    jupyter = Path(sys.executable).with_name("jupyter")
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
             f"--notebook-dir={notebook_dir}", "--allow-root", "--ContentsManager.pre_save_hook=graders.workspace.strip_widget_state"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    lab = Lab(f"http://127.0.0.1:{port}", token, log, server)
    try:
        for _ in range(120):
            try:
                lab.api("api/status")
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with code {server.returncode}:\n{lab.log_tail()}")
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not answer within 60 s:\n{lab.log_tail()}")
        yield lab
    finally:
        server.terminate()  # the server shuts its kernels down before it exits
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def execute_notebook(path: Path, estimates: tuple[str, ...] = ()) -> dict[str, str]:
    """Run a notebook as a learner would (its own folder, a fresh kernel) and return each
    graded or locked cell's text output by grade id; any error output fails the test.

    `estimates`: grade ids of measured-performance cells that may fail with CheckFailed (their
    message is then in the returned text), e.g. Phase 2's efficiency on a cluster, which the
    docs/machines.md documents as an estimate there."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(c.metadata.get("nbgrader", {}).get("grade_id"), o.ename, o.evalue) for c in code for o in c.outputs
              if o.output_type == "error"]
    assert not [e for e in errors if not (e[0] in estimates and e[1] == "CheckFailed")], errors
    def text(o):
        return f"{o.ename}: {o.evalue}\n" if o.output_type == "error" else o.get("text", "")

    return {c.metadata["nbgrader"]["grade_id"]: "".join(map(text, c.outputs)) for c in code if "nbgrader" in c.metadata}


def pytest_collection_modifyitems(items):
    # nbval waits only 5 s (hard-coded) for a cell's last messages once the kernel has replied; on
    # 2 busy cores a kernel that just ended a Ray Train run once took longer, and nbval then fails
    # the cell and stops the kernel. The cell's own limit (--nbval-cell-timeout) is unchanged.
    # Every lesson cell prints nothing on stderr that tests/lesson_runs.py does not explain, and
    # each lesson runs for about the time its first cell states.
    import lesson_runs

    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
    lesson_runs.watch(items)


def solved(release_nb, source_nb):
    """The release notebook with every exercise answered by the reference solution."""
    import re

    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source_nb.cells if c.metadata.get("nbgrader", {}).get("solution")}
    for cell in release_nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = re.sub(r"\n?[ \t]*### (BEGIN|END) SOLUTION[^\n]*", "", answers[gid])
    return release_nb


def submit(root: Path, phase: str, student: str, name: str, nb) -> None:
    """Put a notebook where nbgrader's autograde looks for a student's submission."""
    import nbformat

    folder = root / "submitted" / student / phase
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")


def cell_scores(root: Path, phase: str, notebook: str, student: str) -> dict[str, tuple[float, float]]:
    """{grade id: (score, max score)} from the gradebook; also listed in the run's summary."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(notebook, phase, student)
        cells = {g.name: (g.score, g.max_score) for g in nb.grades}
    total = sum(s for s, _ in cells.values())
    most = sum(m for _, m in cells.values())
    SCORES.append(f"{phase} {student:>13}: {total:g} / {most:g}  "
                  + " ".join(f"{k}={s:g}" for k, (s, _) in sorted(cells.items())))
    return cells


def autograded(root: Path, phase: str, notebook: str, student: str):
    """A student's notebook as nbgrader autograde left it (executed, with outputs)."""
    import nbformat

    return nbformat.read(root / "autograded" / student / phase / f"{notebook}.ipynb", 4)


def class_submissions(root: Path, phase: str, notebook: str, **wrong) -> Path:
    """A scratch course at `root` with one phase released and a class handed in under submitted/.

    Students: "reference" (the release solved as in solutions/), "blank" (the release as handed
    out) and one per keyword: `name=fn`, where fn(nb) makes a mistake in a solved notebook.
    """
    import nbformat

    from graders.cli import scratch_course

    release = scratch_course(root, ROOT / "solutions" / phase)
    source = nbformat.read(ROOT / "solutions" / phase / f"{notebook}.ipynb", 4)
    fresh = lambda: nbformat.read(release / f"{notebook}.ipynb", 4)  # noqa: E731
    submit(root, phase, "reference", notebook, solved(fresh(), source))
    submit(root, phase, "blank", notebook, fresh())
    for student, mistake in wrong.items():
        submit(root, phase, student, notebook, mistake(solved(fresh(), source)))
    return root


@dataclass
class GradedClass:
    root: Path  # the scratch course: submitted/, autograded/, feedback/, gradebook.db
    on_cluster: dict[str, list[dict]]  # actors that the cluster-graded students ran there, by class name


@contextlib.contextmanager
def neighbour(processes: int = 1, seconds: float = 900.0, until=None):
    """A bounded neighbour outside the graded run: `processes` busy loops that end by themselves
    after `seconds`, or once `until()` is true (checked each second), and are killed when the
    block ends: another job on a shared machine."""
    import threading

    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(processes)]
    done = threading.Event()

    def stop() -> None:
        for p in busy:
            p.kill()
            p.wait()

    def watch() -> None:
        while not done.wait(1.0):
            if until():
                stop()
                return

    watcher = threading.Thread(target=watch, daemon=True) if until else None
    if watcher:
        watcher.start()
    try:
        yield busy
    finally:
        done.set()
        if watcher:
            watcher.join()
        stop()


class SharedCluster:
    """One two-node cluster (tests/cluster.py) for the class tests of Phases 2-4, started when first
    needed and stopped after the last test in a row that uses it (`pytest_runtest_teardown`), so it
    never sits idle beside other tests: a start costs about 11 s here."""

    def __init__(self):
        self._stack, self._cluster = None, None

    def get(self):
        if self._cluster is None:
            from cluster import two_node_cluster

            self._stack = contextlib.ExitStack()
            self._cluster = self._stack.enter_context(two_node_cluster())
        return self._cluster

    def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._cluster = self._stack, None, None
            stack.close()


_CLASS_CLUSTER = SharedCluster()


@pytest.fixture(scope="session")
def class_cluster():
    yield _CLASS_CLUSTER
    _CLASS_CLUSTER.stop()


def pytest_runtest_teardown(item, nextitem):
    """The shared class cluster stops once the next test does not use it (it starts again if a later one does)."""
    if "class_cluster" in item.fixturenames and (nextitem is None or "class_cluster" not in nextitem.fixturenames):
        _CLASS_CLUSTER.stop()


def graded_class(root: Path, phase: str, notebook: str, on_cluster: tuple[str, ...] = (), loaded: tuple[str, ...] = (),
                 cluster: SharedCluster | None = None, beside: tuple[str, ...] = (), **wrong) -> GradedClass:
    """`class_submissions`, autograded by nbgrader itself, with feedback.

    One notebook at a time on the whole machine: these runs keep both cores busy on their own (two
    runs pinned to one core each through `course grade` took longer here, Phase 2 280 s against
    259 s, Phase 3 318 s against 290 s). The students named in `on_cluster` are graded afterwards,
    with RAY_ADDRESS set, on a real two-node Ray cluster started for them (tests/cluster.py) and
    stopped afterwards: so each phase's validation also runs, unchanged and graded, on a cluster,
    at the cost of no extra notebook run. The cluster (`cluster`, shared by the phases; else one of
    its own) starts only after the local runs, whose utilization is measured, have ended; a shared
    one stays up for the next phase's class if it comes next. The students named in `beside` are graded
    locally while the cluster runs, in a copy of the course merged back afterwards: only where the
    cluster-graded run has no yardsticks to measure (Phase 2's grader brackets its run with them,
    and a run beside them made them disagree, "inconclusive"). The students named in `loaded` are
    graded on their own while a `neighbour` keeps one core busy: their grade must not move with
    other load.
    """
    from graders.cli import nbgrader

    class_submissions(root, phase, notebook, **wrong)
    everyone = {"reference", "blank", *wrong}
    beside = beside if on_cluster else ()
    nbgrader(root, "autograde", phase, "--create",
             f"--CourseDirectory.student_id_exclude={','.join((*on_cluster, *loaded, *beside))}")
    if loaded:
        with neighbour(1):
            others = sorted(everyone - set(loaded))
            nbgrader(root, "autograde", phase, "--create", f"--CourseDirectory.student_id_exclude={','.join(others)}")
    ran: dict[str, list[dict]] = {}
    if on_cluster:
        from cluster import two_node_cluster

        with contextlib.ExitStack() as stack:
            nodes = cluster.get() if cluster is not None else stack.enter_context(two_node_cluster())
            side = [_autograde_a_copy(root, phase, student) for student in beside]
            stack.enter_context(mock.patch.dict(os.environ, RAY_ADDRESS=nodes.address))
            before = set(nodes.actors())
            others = sorted(everyone - set(on_cluster))
            nbgrader(root, "autograde", phase, "--create", f"--CourseDirectory.student_id_exclude={','.join(others)}")
            ran = nodes.actors_since(before)
            for student, (proc, copy) in zip(beside, side):
                _merge_copy(proc, copy, root, phase, student)
    nbgrader(root, "generate_feedback", phase)
    return GradedClass(root, ran)


def _autograde_a_copy(root: Path, phase: str, student: str):
    """Start `nbgrader autograde` of one student, locally, in a copy of the course (its own gradebook):
    the blank release is mostly start-up and waiting, so it runs beside the cluster-graded student."""
    import shutil

    copy = root.with_name(f"{root.name}-{student}")
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("autograded", "feedback"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "nbgrader", "autograde", phase, "--create", f"--student={student}",
           f"--CourseDirectory.root={copy}", "--log-level=WARN"]
    return subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), copy


def _merge_copy(proc, copy: Path, root: Path, phase: str, student: str) -> None:
    """Its scores into the course's gradebook (`classroom.merge_submission`), its notebook beside the others'."""
    import shutil

    from graders.trusted.classroom import merge_submission

    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, f"nbgrader autograde of {student} failed:\n{out[-3000:]}"
    merge_submission(copy / "gradebook.db", root / "gradebook.db", phase, student)
    shutil.copytree(copy / "autograded" / student, root / "autograded" / student)
    shutil.rmtree(copy, ignore_errors=True)


@contextlib.contextmanager
def s3_server():
    """An S3-compatible server on this machine (moto's standalone server) with an empty bucket;
    yields COURSE_DATA for it (s3://course-data/data?endpoint_override=...). While it runs, the
    environment holds the credentials that every reader needs (the server accepts any), so the
    processes started meanwhile, a Ray cluster's nodes included, can read the bucket."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with mock.patch.dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"):
            from pyarrow import fs as pafs

            s3 = pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}", scheme="http")
            for _ in range(60):
                try:
                    s3.create_dir("course-data")
                    break
                except OSError:
                    time.sleep(0.5)
            yield f"s3://course-data/data?endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        server.terminate()
        server.wait(timeout=30)


def printed(nb, grade_id: str) -> str:
    """What the cell with this grade id printed (its stream outputs, joined)."""
    return "".join(o.get("text", "") for o in graded_outputs(nb, grade_id) if o.output_type == "stream")


def expect_full_marks_without_stderr(root: Path, phase: str, notebook: str) -> None:
    cells = cell_scores(root, phase, notebook, "reference")
    assert cells and all(score == most for score, most in cells.values()), cells
    no_stderr_in_graded_cells(autograded(root, phase, notebook, "reference"))


def expect_zero_everywhere(root: Path, phase: str, notebook: str, student: str = "blank") -> None:
    cells = cell_scores(root, phase, notebook, student)
    assert cells and all(score == 0 for score, _ in cells.values()), cells


def solution_cell(nb, grade_id: str):
    """The cell with this grade id (to plant a mistake in it)."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def no_stderr_in_graded_cells(nb) -> None:
    """nbgrader scores a test cell 0 for any stderr: the reference must write none (also none that
    the grader moved to stdout because it came from learner code, see graders.trusted.nbgrader_ext)."""
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            streams = [o for o in cell.outputs if o.output_type == "stream"]
            assert not [o for o in streams if o.name == "stderr" or "[grader: stderr" in o.text], cell.source[:80]


def graded_outputs(nb, grade_id: str):
    """The outputs of the cell with this grade id."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id).outputs


def pytest_terminal_summary(terminalreporter):
    if SCORES:
        terminalreporter.section("nbgrader autograde scores")
        for line in SCORES:
            terminalreporter.write_line(line)
    if BROWSER:
        terminalreporter.section("JupyterLab in a browser (tests/test_browser.py)")
        for line in BROWSER:
            loud = line.startswith("NOT RUN")
            terminalreporter.write_line(line, red=loud, bold=loud)


# nbgrader runs helper programs (alembic) by name: make the venv's bin dir visible to it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
