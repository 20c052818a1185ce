"""The measured run's output blocks, timed and kept by the grader as they arrive.

A stream's arrival times decide Phase 2's steady rate, its late-start rule and Phase 4's plan,
so the learner's kernel must not be the one that says when each block came. While the measured
cell runs:

- in the learner's kernel, `graders.grading.run_pipeline` (a monitored run) writes each output
  block, as it arrives, to `COURSE_STREAM/<run name>/<n>.arrow` (written, then renamed: a block
  is whole once its name appears);
- here, in the grader's process, `Custody` takes each block as soon as it appears: it notes the
  time on its own clock (seconds since the cell started), copies the file into a folder the
  sandbox cannot see and deletes the learner's copy. Nothing the kernel does afterwards changes
  a block, and nothing written before the cell counts (the folder is emptied when it starts).

The grader's kernel then reads each measured run's rows and arrival times from the blocks the
grader kept (`graders.handover.load_results`), never from what the kernel reported. Links are
never followed, and at most `MAX_BYTES` / `MAX_BLOCKS` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

ENV = "COURSE_STREAM"  # the learner's kernel writes its blocks here (graders.grading)
SUFFIX = ".arrow"  # a finished block; anything else (a file being written) is left alone
INDEX = "arrivals.json"  # {run: [[seconds since the cell started, file], ...]} in the kept folder
MAX_BYTES = 8 * 2**30
MAX_BLOCKS = 100_000
POLL_S = 0.02


class Custody:
    """Watches `drop` (a folder the learner's kernel writes) from `start()` to `stop()`."""

    def __init__(self, drop: Path, poll_s: float = POLL_S):
        self.drop, self.poll_s = Path(drop), poll_s
        self.kept = Path(tempfile.mkdtemp(prefix="course-custody-"))  # 0700, outside the sandbox's view
        self.arrivals: dict[str, list] = {}
        self.problem: str | None = None  # why some blocks were not kept
        self._bytes = self._blocks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="custody", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        _remove(self.drop)  # blocks written before the measured cell are not its blocks
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> Path:
        """The last sweep; the kept folder, with its index."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sweep()
        (self.kept / INDEX).write_text(json.dumps({"arrivals": self.arrivals, "problem": self.problem}))
        return self.kept

    def close(self) -> None:
        shutil.rmtree(self.kept, ignore_errors=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._sweep()

    def _sweep(self) -> None:
        try:
            top = os.open(self.drop, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return  # not made yet (or not a folder: nothing of it is read)
        try:
            for run in sorted(e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False)):
                try:
                    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                except OSError:
                    continue
                try:
                    for name in sorted(e.name for e in os.scandir(fd) if e.name.endswith(SUFFIX)):
                        self._take(run, name, fd)
                finally:
                    os.close(fd)
        finally:
            os.close(top)

    def _take(self, run: str, name: str, folder: int) -> None:
        seen = round(time.monotonic() - self._t0, 4)
        try:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except OSError:
            return
        try:
            info = os.fstat(src)
            ok = stat.S_ISREG(info.st_mode) and info.st_nlink == 1  # a plain file of the run's own
            if ok and (self._blocks >= MAX_BLOCKS or self._bytes + info.st_size > MAX_BYTES):
                self.problem = f"more than {MAX_BLOCKS:,} blocks or {MAX_BYTES / 2**30:.0f} GiB: the rest were not kept"
                ok = False
            if ok:
                (self.kept / run).mkdir(exist_ok=True)
                with os.fdopen(os.dup(src), "rb") as data, open(self.kept / run / name, "wb") as out:
                    out.write(data.read(info.st_size))  # what it held when seen, no more
                self._bytes += info.st_size
                self._blocks += 1
                self.arrivals.setdefault(run, []).append([seen, name])
        finally:
            os.close(src)
        try:
            os.unlink(name, dir_fd=folder)
        except OSError:
            pass


def _remove(path: Path) -> None:
    """`path` gone, never following a link (a link itself is removed, not what it points to)."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)  # rmtree does not follow links inside it
    except FileNotFoundError:
        pass
