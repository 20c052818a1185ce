"""Bad submissions of the Phase 1 validation, as data: each kind of mistake a grader must survive.

Each `Kind` turns the solved validation (the reference answers) into one bad submission with
`mutate(nb)`, says the score each graded cell must get, and a piece of the readable reason the
learner's feedback must show. Every mutation asserts that the text it replaces is there, so a
change to the validation breaks the fixture loudly instead of silently testing nothing.

`zero` names the graded cells a kind must zero (every other graded cell keeps its full points):
`FULL` none, `ZERO` all of them.

A class hands in `STUDENTS`: each student makes two to four of these mistakes at once, in
different cells, so the class is 6 notebook runs instead of 18 (each run costs a kernel, a Ray and
the model). Every kind must still get its own score and reason there: the student's expected
score is the union of its kinds' zeros, and the pairs are chosen so that a grader that gave up
after the first error would fail (a mistake that zeroes the image cells goes with one that zeroes
only `text_word_counts`, and the crash with a warning printed before it).
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from conftest import solution_cell

PHASE = "01_foundation"
VALIDATION = "04_validation"
IMAGE_CELLS = ("image_count", "image_schema", "image_labels", "accelerator_stage")
TEXT_CELLS = ("text_count", "text_word_counts")
FULL: tuple = ()
ZERO = IMAGE_CELLS + TEXT_CELLS


@dataclass(frozen=True)
class Kind:
    mutate: Callable
    zero: tuple  # graded cells that must score 0; every other graded cell full points
    reason: str  # a piece of the feedback (html-unescaped)
    about: str


def _replace(cell, old: str, new: str) -> None:
    assert old in cell.source, f"{cell.metadata['nbgrader']['grade_id']} no longer contains {old!r}"
    cell.source = cell.source.replace(old, new)


def _append(nb, grade_id: str, code: str):
    cell = solution_cell(nb, grade_id)
    cell.source = cell.source.rstrip("\n") + "\n\n" + code.strip("\n") + "\n"
    return nb


def _edit(grade_id: str, old: str, new: str) -> Callable:
    def mutate(nb):
        _replace(solution_cell(nb, grade_id), old, new)
        return nb

    return mutate


def _chain(*steps: Callable) -> Callable:
    def mutate(nb):
        for step in steps:
            nb = step(nb)
        return nb

    return mutate


# The word counter walks each message with a loop that the last word never ends.
COUNT_LOOP = '''    def count(text):
        n, rest = 0, text.strip()
        while rest:
            n += 1
            rest = rest.split(" ", 1)[1] if " " in rest else rest  # the last word is never dropped
        return n

    def count_words(batch):
'''

# The model's real outputs, computed in the solution cell (before the measured run) from the
# course's images, handed out during the run while a busy loop keeps the CPU "utilized": right
# labels, right features, CPU time to spare. Only the grader's fresh inputs tell them apart.
PRECOMPUTED_BUSY = '''            _spin(1.0)  # busy, as if the model ran
            features, logits = _cached(batch["path"])
'''
SPIN = '''def _spin(seconds):
    import time as _time

    end = _time.monotonic() + seconds
    while _time.monotonic() < end:
        pass


def build_image_pipeline('''
# No model: a busy loop keeps the CPU "utilized" while each image gets the cat label and random
# features (make bench-noise's "fake").
FAKE_MODEL = '''            _spin(0.3)  # busy, as if the model ran
            features = torch.rand(len(pixels), 1280)
            logits = torch.zeros(len(pixels), 1000).index_fill_(1, torch.tensor([281]), 5.0)  # always "tabby cat"
'''
PRECOMPUTE = '''def _precompute(folder):
    import os
    from PIL import Image

    names = sorted(os.listdir(folder))
    pixels = torch.as_tensor(np.stack([gr.models.preprocess_image(np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")))
                                       for n in names]))
    features, logits = gr.models.vision_forward(gr.models.load_vision_model("cpu"), pixels)
    return {n: (f, l) for n, f, l in zip(names, features.numpy(), logits.numpy())}


_CACHE = _precompute(paths.images)  # the model's outputs, before the measured run


def _cached(paths_):
    rows = [_CACHE[str(p).rsplit("/", 1)[-1]] for p in paths_]
    return torch.as_tensor(np.stack([f for f, _ in rows])), torch.as_tensor(np.stack([g for _, g in rows]))


def build_image_pipeline('''

# The real model in a stage that mostly sleeps, and busy processes its actor starts beside it
# (the sandbox ends them with the run): the run's processes read busy and every row is the model's,
# but the model's work explains a fraction of the CPU time (make bench-noise's "busy beside").
# Only the share of the utilization that the model's work explains is credited.
SLEEPY_STAGE = "        def __call__(self, batch):\n            __import__('time').sleep({seconds})  # mostly asleep\n"
BUSY_BESIDE = """        def __init__(self):
            import subprocess, sys

            for _ in range({busy}):  # busy beside the model
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
"""

HARD_CODED = '''def build_text_pipeline(support_path: str) -> ray.data.Dataset:
    import os

    ids = sorted(gr.data.ticket_id_from_path(f) for f in os.listdir(support_path) if f.endswith(".txt"))
    return ray.data.from_items([{"text_id": i, "word_count": 42} for i in ids])  # counts typed in, not computed
'''

FLOOD = '''
# checking my input: every word of every message
for row in ray.data.read_text(paths.support, include_paths=True, file_extensions=["txt"]).take_all():
    for word in row["text"].split():
        print(row["path"], repr(word))
'''

STDERR_NOISE = '''
import sys, threading, time, warnings

warnings.warn("my pipeline: using the default batch size")

def _heartbeat():  # "still alive" every second, on stderr, for as long as the kernel runs
    while True:
        time.sleep(1)
        print("heartbeat", time.strftime("%H:%M:%S"), file=sys.stderr)

threading.Thread(target=_heartbeat, daemon=True).start()
'''

ACTORS_LEFT = '''
@ray.remote
class LabelTally:  # counts labels across batches; started here, never killed
    def __init__(self):
        self.counts = {}

    def add(self, labels):
        for label in labels:
            self.counts[label] = self.counts.get(label, 0) + 1
        return len(self.counts)

tally = LabelTally.options(name="label_tally", lifetime="detached").remote()
ray.get(tally.add.remote(["warm-up"]))
'''

FAKE_TELEMETRY = '''
import time as _time
import graders.telemetry as _telemetry
_real = _telemetry.UtilizationReport.from_samples.__func__
def _fake(cls, samples, device_info=None, interval=0.1):
    report = _real(cls, samples, device_info, interval)
    report.mean = report.p50 = report.p90 = 100.0
    return report
_telemetry.UtilizationReport.from_samples = classmethod(_fake)
'''

# IPython hooks in the learner's kernel: every error cleared, every later cell's source printed (the
# hidden tests among them, when the tests ran there).
ERROR_HOOKS = '''
_ip = get_ipython()
_ip.set_custom_exc((BaseException,), lambda self, etype, value, tb, tb_offset=None: None)

def _clear(result):
    result.error_in_exec = result.error_before_exec = None

_ip.events.register("post_run_cell", _clear)
_ip.events.register("pre_run_cell", lambda info: print(info.raw_cell))
'''

# The checks and numpy's comparison replaced by ones that always pass.
PATCHED_CHECKS = '''
import graders.checks as _checks
_nothing = lambda *args, **kwargs: None
gr.expect_count = gr.expect_schema = gr.expect_utilization = _nothing
_checks.expect_count = _checks.expect_schema = _checks.expect_utilization = _checks._fail = _nothing
np.allclose = lambda *args, **kwargs: True
'''

WRITE_OUTSIDE = '''
# leave a note in a classmate's submission (a graded run's folder is 6 folders below the course)
import pathlib
course = pathlib.Path.cwd().parents[6]
print("the course, seen from the notebook:", sorted(p.name for p in course.iterdir()))
(course / "submitted" / "reference" / "01_foundation" / "from_a_classmate.txt").write_text("hello")
'''


def _deleted(nb):
    """The learner deleted a test cell they did not like, and a markdown heading."""
    test = solution_cell(nb, "text_count")
    heading = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "Text records" in c.source)
    nb.cells = [c for i, c in enumerate(nb.cells) if c is not test and i != heading]
    return nb


def _duplicated(nb):
    """A test cell copied to play with (the copy edited), and the text solution split in two
    (JupyterLab's split keeps the cell's metadata on both halves)."""
    test = solution_cell(nb, "image_count")
    mine = copy.deepcopy(test)
    mine.id = "my-own-check"
    mine.source = 'print("my own check:", image_run.table().num_rows)'
    nb.cells.insert(nb.cells.index(test), mine)
    text = solution_cell(nb, "text_pipeline")
    signature, helper, body = _split_text_solution(text.source)
    first = copy.deepcopy(text)
    first.id = "text-pipeline-part-1"
    first.source = textwrap.dedent(helper)  # the helper moved to the top level, in its own cell
    text.source = signature + body
    nb.cells.insert(nb.cells.index(text), first)
    return nb


def _split_text_solution(source: str) -> tuple[str, str, str]:
    signature, sep, rest = source.partition("\n")
    helper, sep2, body = rest.partition("    messages = ")
    assert sep and sep2 and "def count_words" in helper, "text_pipeline no longer has its helper then its reader"
    return signature + sep, helper, sep2 + body


def _edited_test(nb):
    """Wrong schema, and the failing check commented out in the (locked) test cell."""
    nb = _edit("text_pipeline", '"word_count":', '"words":')(nb)
    _replace(solution_cell(nb, "text_word_counts"), "gr.expect_schema(table, TEXT_SCHEMA, \"text results\")\nwords = table.column(\"word_count\")",
             "# gr.expect_schema(table, TEXT_SCHEMA, \"text results\")\nwords = table.column(\"words\")")
    return nb


KINDS: dict[str, Kind] = {
    "infinite_loop": Kind(
        _chain(_edit("text_pipeline", "[len(t.split()) for t", "[count(t) for t"),
               _edit("text_pipeline", "    def count_words(batch):\n", COUNT_LOOP)), TEXT_CELLS,
        "was stopped at its time limit", "a word-count loop that never ends (inside a Ray task)"),
    "kernel_crash": Kind(
        lambda nb: _append(nb, "text_pipeline", "import os\nos._exit(3)  # stop here while I debug"), ZERO,
        "this cell was not run: the kernel died in cell text_pipeline", "os._exit in a solution cell"),
    "pipeline_exception": Kind(
        _edit("image_pipeline", 'for p in batch["path"]]', 'for p in batch["paths"]]'), IMAGE_CELLS,
        "image pipeline did not run", "a KeyError inside the preprocessing stage"),
    "empty_dataset": Kind(
        _edit("text_pipeline", "return messages.map_batches(count_words, batch_size=100)",
              'return messages.map_batches(count_words, batch_size=100).filter(lambda r: r["word_count"] > 10_000)'),
        TEXT_CELLS, "text records: expected exactly 240, found 0", "a filter that keeps no rows"),
    "wrong_schema": Kind(
        _edit("text_pipeline", '"word_count":', '"words":'), ("text_word_counts",),
        "text results columns: expected ['text_id', 'word_count'], found ['text_id', 'words']", "a misnamed column"),
    "hard_coded": Kind(
        lambda nb: (setattr(solution_cell(nb, "text_pipeline"), "source", HARD_CODED), nb)[1], ("text_word_counts",),
        "messages have wrong word counts", "word counts typed in, ids listed by hand: no pipeline"),
    "deleted_cells": Kind(
        _deleted, FULL, "cell text_count was missing from your submission", "a test cell and a heading deleted"),
    "duplicated_cells": Kind(
        _duplicated, FULL, "appears 2 times in your submission", "a test cell copied, a solution cell split"),
    "edited_tests": Kind(
        _edited_test, ("text_word_counts",), "had been edited in your submission: the grader ran the original",
        "a failing check commented out in a locked test cell"),
    "output_flood": Kind(
        lambda nb: _append(nb, "text_pipeline", FLOOD), FULL, "characters of output cut", "every word printed"),
    "stderr_noise": Kind(
        lambda nb: _append(nb, "image_pipeline", STDERR_NOISE), FULL, "my pipeline: using the default batch size",
        "a warning and a background thread writing to stderr"),
    "actors_left": Kind(
        lambda nb: _append(nb, "image_pipeline", ACTORS_LEFT), FULL, "LabelTally 'label_tally'",
        "a detached Ray actor never killed"),
    "out_of_memory": Kind(
        _edit("image_pipeline", '    def preprocess(batch):\n',
              '    def preprocess(batch):\n        frames = np.zeros((len(batch["path"]) * 100_000, 3, 224, 224), np.float32)  # room for augmentations\n'),
        IMAGE_CELLS, "Unable to allocate", "a batch buffer far larger than memory (numpy refuses it)"),
    "gpu_without_gpu": Kind(
        _edit("image_pipeline", "num_gpus=res.gpus_per_actor,", "num_gpus=1,"), IMAGE_CELLS,
        "asks for num_gpus=1 per task/actor but this Ray cluster has 0 GPUs", "num_gpus=1 written by hand"),
    "faked_telemetry": Kind(
        _chain(lambda nb: _append(nb, "image_pipeline", FAKE_TELEMETRY),
               _edit("image_pipeline", "    def preprocess(batch):\n", "    def preprocess(batch):\n        _time.sleep(6)\n")),
        ("accelerator_stage",), "from outside the notebook", "utilization reports patched to say 100 %"),
    "precomputed_busy": Kind(
        _chain(_edit("image_pipeline", "            features, logits = gr.models.vision_forward(self.model, pixels)\n", PRECOMPUTED_BUSY),
               _edit("image_pipeline", "def build_image_pipeline(", SPIN), _edit("image_pipeline", "def build_image_pipeline(", PRECOMPUTE)),
        ("accelerator_stage",), "The grader wrote this run's inputs afresh just before it started",
        "the model's outputs computed before the measured run, handed out during it beside a busy loop"),
    "busy_beside": Kind(
        _chain(_edit("image_pipeline", "        def __call__(self, batch):\n", SLEEPY_STAGE.format(seconds=6)),
               _edit("image_pipeline", "        def __init__(self):\n", BUSY_BESIDE.format(busy=1))),
        ("accelerator_stage",), "utilization counts the model's work only",
        "the real model in a stage that sleeps, two Ray tasks spinning beside it"),
    "error_hooks": Kind(
        lambda nb: _append(nb, "image_pipeline", ERROR_HOOKS), FULL, "asks for num_gpus=1 per task/actor",
        "IPython hooks that clear every error and print every cell (the error they would hide still shows)"),
    "patched_checks": Kind(
        lambda nb: _append(nb, "image_pipeline", PATCHED_CHECKS), FULL, "text records: expected exactly 240, found 0",
        "the checks and np.allclose patched to always pass (the check they would pass still fails)"),
    "write_outside": Kind(
        lambda nb: _append(nb, "text_pipeline", WRITE_OUTSIDE), FULL,
        "the course, seen from the notebook: ['.grading']", "a file written into a classmate's submission"),
}


# The test class: each student makes these kinds of mistake (applied in order) and is named after them.
STUDENTS: dict[str, tuple[str, ...]] = {"-".join(kinds): kinds for kinds in [
    ("pipeline_exception", "wrong_schema", "deleted_cells", "duplicated_cells"),
    ("out_of_memory", "hard_coded", "output_flood", "write_outside"),
    ("gpu_without_gpu", "edited_tests", "error_hooks"),  # the hooks would clear both mistakes' errors
    ("faked_telemetry", "empty_dataset", "patched_checks"),  # the patches would pass both mistakes' checks
    ("infinite_loop", "actors_left", "precomputed_busy"),
    ("stderr_noise", "kernel_crash"),  # a warning in one cell, then the kernel dies
    ("busy_beside",),  # the real model, every other point earned: utilization alone is not credited
]}
assert sorted(k for kinds in STUDENTS.values() for k in kinds) == sorted(KINDS), "every kind once, in one student"


def student_of(kind: str) -> str:
    return next(student for student, kinds in STUDENTS.items() if kind in kinds)


def mutate(student: str) -> Callable:
    return _chain(*(KINDS[k].mutate for k in STUDENTS[student]))


def zero(student: str) -> set[str]:
    """The graded cells this student must score 0 on: every cell one of their mistakes zeroes."""
    return {cell for k in STUDENTS[student] for cell in KINDS[k].zero}
