"""What the grading sandbox costs a run: the same small notebook (import the kit, start Ray, one
Ray Data pipeline, stop Ray) executed by nbclient with `SandboxedKernelManager`, sandbox on and
off, alternating, ROUNDS times each, in one run. Prints each time, the medians and their ratio.

    make bench-sandbox          # or: .venv/bin/python tests/bench/sandbox_cost.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

from graders.trusted import sandbox

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CELLS = [
    "import graders as gr\nres = gr.start(quiet=True)\npaths = gr.data.prepare()",
    "import ray\nprint(ray.data.read_text(paths.support, file_extensions=['txt']).map_batches(lambda b: b).count())",
    "gr.shutdown()",
]


def run_once(sandboxed: bool) -> float:
    os.environ[sandbox.SETTING] = "on" if sandboxed else "off"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as run:
        start = time.perf_counter()
        NotebookClient(nb, timeout=300, kernel_manager_class=sandbox.SandboxedKernelManager,
                       resources={"metadata": {"path": run}}).execute()
        seconds = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    if errors:
        sys.exit(f"the notebook failed ({'sandboxed' if sandboxed else 'unsandboxed'}): {errors[0].ename}: {errors[0].evalue}")
    return seconds


def main() -> int:
    if why := sandbox.unavailable():
        sys.exit(f"no sandbox here: {why}")
    times = {True: [], False: []}
    for i in range(ROUNDS):
        for sandboxed in (i % 2 == 0, i % 2 != 0):  # alternate which goes first
            times[sandboxed].append(run_once(sandboxed))
            print(f"round {i + 1}: {'sandboxed  ' if sandboxed else 'unsandboxed'} {times[sandboxed][-1]:.2f} s", flush=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"median: sandboxed {on:.2f} s, unsandboxed {off:.2f} s: +{on - off:.2f} s a run ({on / off:.2f}x), "
          f"{ROUNDS} rounds, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
