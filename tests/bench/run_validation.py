"""Run a phase's reference validation as a plain script and print each graded cell's result.

For machines without Jupyter (the lent GPU machines): the solution notebook's cells run in order
in one namespace, as the kernel would run them; test cells (hidden tests included) are caught one
by one and printed as PASS/FAIL with what they printed.

    python tests/bench/run_validation.py 02_advanced_processing
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(phase: str) -> int:
    os.environ.setdefault("COURSE_QUIET", "1")
    import matplotlib

    matplotlib.use("Agg")
    path = next((ROOT / "solutions" / phase).glob("*_validation.ipynb"))
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {"__name__": "__main__"}
    failed = 0
    for cell in cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid, source = meta.get("grade_id", "-"), "".join(cell["source"])
        out, start = io.StringIO(), time.perf_counter()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(source, f"{path.name}:{gid}", "exec"), namespace)
            status = "ok"
        except Exception as exc:  # a failing test cell: report it and go on, as nbgrader does
            status = f"FAIL {type(exc).__name__}: {exc}"
            failed += bool(meta.get("grade"))
        label = f"[{meta.get('points', 0):g} pt]" if meta.get("grade") else ""
        print(f"--- {gid} {label} {status} ({time.perf_counter() - start:.1f} s)")
        if out.getvalue().strip():
            print(out.getvalue().rstrip())
    print(f"{phase}: {failed} graded cell(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
