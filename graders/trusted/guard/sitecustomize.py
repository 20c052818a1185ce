"""The class grader's write guard, loaded by every Python process of a graded run.

`course grade` puts this folder on PYTHONPATH with COURSE_GRADING_ROOT (the course folder) and
COURSE_GRADING_ALLOW (this run's own staging folder). Python then imports it at start-up in the
kernel, in nbgrader and in every Ray worker, and it refuses to let any of them write inside the
course except in the run's own folder: another student's submission, the gradebook and the
solutions stay untouched, and the learner sees why in the cell that tried. Writes elsewhere (/tmp
for Ray, caches in $HOME) are not its business.

An audit hook cannot be removed once added, but it only sees Python's own file calls: a shell
command or native code goes around it. `graders.trusted.classroom` therefore also compares the course's
files before and after each run. Real isolation is one container per submission (docs/grading.md).
"""

import os
import sys

_ROOT = os.environ.get("COURSE_GRADING_ROOT")
_ALLOW = os.environ.get("COURSE_GRADING_ALLOW")
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGES = {"os.remove", "os.rename", "os.replace", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree",
            "os.chmod", "os.symlink", "os.link"}


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def _guard(event, args):
    if event == "open":
        path, _, flags = args
        if not isinstance(flags, int) or not flags & _WRITE:
            return
    elif event in _CHANGES:
        path = args[0]
    else:
        return
    if isinstance(path, int) or path is None:
        return
    real = os.path.realpath(os.fsdecode(path))
    if _inside(real, _ROOT) and not _inside(real, _ALLOW):
        raise PermissionError(f"the class grader does not let a graded notebook write outside its own folder: {path}. "
                              "Try: write your files next to your notebook, or under gr.data.output_path(...)")


if _ROOT and _ALLOW:
    _ROOT, _ALLOW = os.path.realpath(_ROOT), os.path.realpath(_ALLOW)
    sys.addaudithook(_guard)
