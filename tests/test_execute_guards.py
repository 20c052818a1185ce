"""The autograde execute step survives bad notebooks: time limits, a dead kernel, floods, noise.

Tiny notebooks run by `MeasuredExecute` directly (no Ray, no gradebook), each in a fresh kernel.
"""

from __future__ import annotations

import time

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from graders.trusted.nbgrader_ext import NOTES, MeasuredExecute


def graded(source: str, gid: str, **meta):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade_id": gid, "grade": True, "locked": True, "solution": False, "points": 1, **meta}
    return cell


def locked(source: str, gid: str):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade_id": gid, "grade": False, "locked": True, "solution": False}
    return cell


def run(*cells, **traits):
    step = MeasuredExecute(kernel_name="python3", **{"timeout": 30, **traits})
    nb = new_notebook(cells=list(cells))
    step.preprocess(nb, {"metadata": {"path": "."}})
    return nb.cells


def errors(cell):
    return [(o.ename, o.evalue) for o in cell.outputs if o.output_type == "error"]


def text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_a_cell_past_its_time_limit_is_stopped_with_a_reason_and_the_next_cells_run():
    start = time.monotonic()
    loop, after, uses = run(new_code_cell("x = 1\nwhile True:\n    pass\ny = 2"), new_code_cell("print(x + 1)"),
                            graded("print(y)", "uses_y"), timeout=2)
    assert time.monotonic() - start < 25
    assert [e for e, _ in errors(loop)] == ["CellTimeLimit"], loop.outputs
    assert "time limit of 2 s" in errors(loop)[0][1] and "loop that never ends" in errors(loop)[0][1]
    assert text(after) == "2\n" and not errors(after)
    assert "was stopped at its time limit" in errors(uses)[0][1]


def test_past_the_notebook_limit_the_remaining_cells_are_not_run():
    slow, later, test = run(new_code_cell("import time; time.sleep(30)"), new_code_cell("print('hi')"),
                            graded("assert True", "a_test"), timeout=60, notebook_timeout=3)
    assert "notebook ran past its time limit of 3 s" in errors(slow)[0][1]
    for cell in (later, test):
        assert [e for e, _ in errors(cell)] == ["NotRun"] and "time limit of 3 s" in errors(cell)[0][1]


def test_a_dead_kernel_is_reported_and_the_later_cells_say_why_they_did_not_run():
    first, crash, test = run(new_code_cell("print('ok')"), graded("import os; os._exit(3)", "crash", grade=False),
                             graded("assert True", "a_test"))
    assert text(first) == "ok\n"
    assert errors(crash)[0][0] == "KernelDied" and "exit code 3" in errors(crash)[0][1]
    assert errors(test) == [("NotRun", "this cell was not run: the kernel died in cell crash")]


def test_a_flood_of_output_is_cut_head_and_tail_without_an_error():
    (cell,) = run(new_code_cell("for i in range(50_000): print('line', i)"))
    out = text(cell)
    assert "line 0\n" in out and "line 49999\n" in out and "line 25000\n" not in out
    assert "characters of output cut (50,000 lines in all)]" in out
    assert len(out) < 100_000 and not errors(cell)


def test_stderr_in_a_locked_test_cell_moves_to_stdout_but_not_in_learner_cells():
    learner, test = run(new_code_cell("import sys; print('warn', file=sys.stderr)"),
                        graded("import sys; print('noise', file=sys.stderr)", "a_test"))
    assert [o.name for o in learner.outputs] == ["stderr"]
    assert [o.name for o in test.outputs] == ["stdout"] and "noise" in text(test) and "stderr from your code" in text(test)


def test_notes_from_the_submission_check_are_printed_first():
    cell = graded("print('ran')", "a_test")
    cell.metadata[NOTES] = ["this locked cell (a_test) had been edited in your submission: the grader ran the original"]
    (out,) = run(cell)
    assert text(out).startswith("[grader: this locked cell (a_test) had been edited") and text(out).endswith("ran\n")


@pytest.mark.parametrize("limit", [0])
def test_no_limits_means_none(limit):
    (cell,) = run(new_code_cell("print(1)"), timeout=limit, notebook_timeout=limit)
    assert text(cell) == "1\n"


def test_every_output_type_is_capped_and_scripts_are_dropped():
    """Rich outputs and errors are capped too (not only text), JavaScript never reaches the
    autograded notebook, and image metadata that would break out of its HTML attribute goes."""
    (cell,) = run(new_code_cell(
        "from IPython.display import HTML, Javascript, display\n"
        "display(Javascript('alert(1)'))\n"
        "display(HTML('<p>' + 'x' * 3_000_000 + '</p>'))\n"
        "display({'image/png': 'iVBORw0KGgo=', 'text/plain': 'img'}, raw=True, metadata={'width': '1 onerror=alert(1)', 'height': 40})\n"
        "raise ValueError('v' * 300_000)"))
    script, html, image, error = cell.outputs
    assert "application/javascript" not in script.data and "Javascript object" in script.data["text/plain"], script.data
    assert list(html.data) == ["text/plain"] and "this output was cut (text/html, 3.0 MB)" in html.data["text/plain"], html.data
    assert image.data["image/png"] == "iVBORw0KGgo=" and image.metadata == {"height": 40}, image.metadata
    assert error.ename == "ValueError" and len(error.evalue) < 100_000 and "characters of output cut" in error.evalue
    assert len("".join(error.traceback)) < 200_000, f"the traceback is still {len(''.join(error.traceback)):,} characters"


def test_trusted_tests_run_in_a_fresh_kernel_on_the_published_results(tmp_path, monkeypatch):
    """For a phase in `trusted_tests` the learner's kernel runs setup, solution and run cells; a
    fresh kernel of the grader's runs the test cell on what the run cell published. A hook in the
    learner's kernel that clears every error changes nothing there."""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # publish writes only under autograde

    cells = [
        locked("import os\nimport graders as gr\nfrom graders.grading import StepRun", "setup"),
        new_code_cell("answer = 41\nHOOKED = True\n"
                      "get_ipython().events.register('post_run_cell', lambda r: setattr(r, 'error_in_exec', None))"),
        locked("run = StepRun('answer', result={'value': answer, 'pid': os.getpid()})\ngr.grading.publish(run=run)",
               "run_pipelines"),
        graded("print('fresh kernel:', 'HOOKED' not in globals() and os.getpid() != run.value()['pid'])\n"
               "assert run.value()['value'] == 42, 'expected 42'", "check"),
    ]
    step = MeasuredExecute(kernel_name="python3", timeout=60, trusted_tests=["probe"], phase="probe")
    step.preprocess(new_notebook(cells=cells), {"metadata": {"path": str(tmp_path)}})
    assert text(cells[3]) == "fresh kernel: True\n"
    assert errors(cells[3]) == [("AssertionError", "expected 42")]


def test_a_hidden_tests_questions_are_answered_by_the_learners_functions_which_never_see_the_test(tmp_path, monkeypatch):
    """A hidden test calls the learner's function on new inputs (`gr.grading.learner.call`): the
    grader's kernel asks, the learner's kernel (still running, before the final cell) answers with
    its own function, and sees the inputs only: no line of the test."""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")

    cells = [
        locked("import graders as gr\nfrom graders.grading import StepRun", "setup"),
        new_code_cell("def double(x):\n    return 2 * x\n"
                      "get_ipython().events.register('pre_run_cell', lambda info: open('seen.txt', 'a').write(info.raw_cell))"),
        locked("run = StepRun('run', result=1)\ngr.grading.publish(run=run)", "run_pipelines"),
        graded("run.value()\n### BEGIN HIDDEN TESTS\n_got = [gr.grading.learner.call('double', x) for x in (21, 5)]\n"
               "print('answers:', _got)\nassert _got == [42, 10], 'SECRET_MARKER'\n### END HIDDEN TESTS", "asks"),
        graded("run.value()\n### BEGIN HIDDEN TESTS\ngr.grading.learner.call('half', 8)\n### END HIDDEN TESTS", "asks_missing"),
        locked("print('the final cell ran after the grading')", "shutdown"),
    ]
    step = MeasuredExecute(kernel_name="python3", timeout=60, trusted_tests=["probe"], phase="probe")
    step.preprocess(new_notebook(cells=cells), {"metadata": {"path": str(tmp_path)}})
    assert text(cells[3]) == "answers: [42, 10]\n" and errors(cells[3]) == []
    assert errors(cells[4]) == [("CheckFailed", "half failed on the grader's hidden inputs: "
                                                "NameError: half is not defined in the notebook (run its cell)")]
    assert text(cells[5]) == "the final cell ran after the grading\n"
    seen = (tmp_path / "seen.txt").read_text()
    assert "handover.answer()" in seen and "SECRET_MARKER" not in seen and "learner.call" not in seen, seen
