"""Two things every lesson must keep true, checked on each lesson cell as nbval runs it.

1. **Nothing on stderr that is not explained here.** A learner reads what a cell prints in red as
   something gone wrong. nbval keeps each cell's outputs (`item.test_outputs`); a stderr line, or
   a Python warning, that ALLOWED does not name fails the cell.
2. **The run time a lesson states is measured.** Each lesson's first cell says "Its cells run for
   about N s ... on the course's test machine": the lesson's last cell fails when its cells took
   less than half or more than twice that (measured here, cell by cell).

`make test` runs both over every lesson at no extra cost: the lessons run anyway.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

# A regular expression for each line a learner may see on stderr, and why. It is empty: every line
# the lessons printed there was Ray's own chatter, now quieted at its source (graders/session.py:
# QUIET_WORKER_LINES and `_configure_output`). Quiet new noise there too, or explain it here.
ALLOWED: dict[str, str] = {}

STATED = re.compile(r"Its cells run for about (\d+) s in all on the course's test machine")
SLACK = 2  # "about N s": within a factor of 2 either way (the machines are shared and noisy)


def unexplained(text: str) -> list[str]:
    """The lines of a cell's stderr that no entry of ALLOWED matches."""
    patterns = [re.compile(p) for p in ALLOWED]
    return [line for line in text.splitlines() if line.strip() and not any(p.search(line) for p in patterns)]


def stated_seconds(notebook: Path) -> int | None:
    """The run time the lesson's first cell states, in seconds (None if it states none)."""
    cells = json.loads(notebook.read_text())["cells"]
    found = STATED.search("".join(cells[0]["source"])) if cells else None
    return int(found.group(1)) if found else None


def watch(items) -> None:
    """Wrap each nbval cell's `runtest` with the two checks above."""
    last = {}
    for item in items:
        if hasattr(item, "output_timeout"):
            last[item.parent] = item
    ran: dict = {}
    for item in items:
        if hasattr(item, "output_timeout"):
            _watch(item, ran, last[item.parent] is item)


def _watch(item, ran: dict, is_last: bool) -> None:
    runtest = item.runtest

    def runtest_and_check():
        start = time.monotonic()
        try:
            runtest()
        finally:
            ran[item.parent] = ran.get(item.parent, 0.0) + time.monotonic() - start
        text = "".join(o.get("text", "") for o in item.test_outputs or () if o.get("output_type") == "stream"
                       and o.get("name") == "stderr")
        if os.environ.get("LESSON_STDERR_REPORT"):  # record instead of failing (to survey the noise)
            with open(os.environ["LESSON_STDERR_REPORT"], "a") as f:
                f.write(json.dumps({"cell": item.nodeid, "stderr": text}) + "\n")
        else:
            lines = unexplained(text)
            assert not lines, (f"{len(lines)} line(s) on stderr that a learner would read as an error, and that "
                               f"tests/lesson_runs.py does not explain:\n" + "\n".join(lines[:20]))
        stated = stated_seconds(Path(item.parent.path)) if is_last else None
        if stated is not None:
            took = ran[item.parent]
            assert stated / SLACK <= took <= stated * SLACK, (
                f"the lesson says its cells run for about {stated} s; here they ran for {took:.0f} s. "
                f"Update the first cell's number (measured on this machine, by this test).")

    item.runtest = runtest_and_check
