"""Widget state (Ray Data's progress bars: 45-680 KB in `metadata.widgets`) is neither saved in the
workspace nor graded: `make lab` saves notebooks through `graders.workspace.strip_widget_state`,
and nbgrader_config.py clears the notebook metadata of the copy nbgrader grades.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shlex
import subprocess

import nbformat
from conftest import ROOT

from graders.workspace import strip_widget_state

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def with_widget_state(nb: nbformat.NotebookNode, kib: int = 500) -> nbformat.NotebookNode:
    """`nb` as JupyterLab saves it with "Save Widget State Automatically" on after a Ray Data run:
    a progress bar's view in the first code cell's outputs, and about `kib` KB of widget state."""
    models = {f"model-{i:04d}": {"model_name": "HTMLModel", "model_module": "@jupyter-widgets/controls",
                                 "model_module_version": "2.0.0",
                                 "state": {"value": f"Running Dataset {i}: " + "#" * 1000}}
              for i in range(kib * 1024 // 1100)}
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": models, "version_major": 2, "version_minor": 0}}
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs.append(nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "model-0000", "version_major": 2, "version_minor": 0},
        "text/plain": "HBox(children=(HTML(value='Running Dataset 0'), FloatProgress(value=1.0)))"}))
    return nb


def lesson() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell("ds.materialize()", execution_count=3)
    cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "grade_id": "run", "schema_version": 3}
    nb.cells = [nbformat.v4.new_markdown_cell("# Lesson"), cell]
    return with_widget_state(nb)


def test_the_pre_save_hook_drops_widget_state_and_nothing_else():
    """The hook removes `metadata.widgets` from a notebook model; cells, outputs (widget views too),
    the rest of the metadata and other files' models stay as they were."""
    nb = json.loads(nbformat.writes(lesson()))
    assert len(json.dumps(nb["metadata"]["widgets"])) > 450_000
    model = {"type": "notebook", "format": "json", "content": nb}
    expected = copy.deepcopy(model)
    del expected["content"]["metadata"]["widgets"]
    strip_widget_state(model=model, path="01_foundation/lesson.ipynb", contents_manager=None)
    assert model == expected

    strip_widget_state(model=model, path="01_foundation/lesson.ipynb", contents_manager=None)
    assert model == expected, "a notebook without widget state should be saved as it is"
    text = {"type": "file", "format": "text", "content": json.dumps({"metadata": {"widgets": 1}})}
    before = copy.deepcopy(text)
    strip_widget_state(model=text, path="notes.json", contents_manager=None)
    assert text == before, "only notebooks lose their widget state, never another file"


def lab_options() -> list[str]:
    """The `--Class.trait=value` options of the JupyterLab command `make lab` runs (`make -n`:
    printed, nothing run)."""
    printed = subprocess.run(["make", "-n", "--no-print-directory", "lab"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.replace("\\\n", " ")
    command = next(shlex.split(line) for line in printed.splitlines() if re.search(r"/jupyter lab\b", line))
    return [arg for arg in command if re.fullmatch(r"--\w+(\.\w+)+=.*", arg)]


def test_make_lab_saves_notebooks_without_widget_state(tmp_path):
    """The server `make lab` starts saves a notebook through its contents manager (jupyter_server's
    default class, configured with `make lab`'s options): the file has no widget state, and
    everything else it was given."""
    from jupyter_server.serverapp import ServerApp
    from traitlets.config.loader import KVArgParseConfigLoader

    options = lab_options()
    assert "--ContentsManager.pre_save_hook=graders.workspace.strip_widget_state" in options, options
    config = KVArgParseConfigLoader(options).load_config()
    manager = ServerApp.class_traits()["contents_manager_class"].default()(config=config, root_dir=str(tmp_path))
    nb = lesson()
    result = manager.save({"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))},
                          "lesson.ipynb")
    if asyncio.iscoroutine(result):
        asyncio.run(result)

    saved = nbformat.read(tmp_path / "lesson.ipynb", as_version=4)
    assert "widgets" not in saved.metadata, f"widget state was saved ({(tmp_path / 'lesson.ipynb').stat().st_size} bytes)"
    assert (tmp_path / "lesson.ipynb").stat().st_size < 10_000
    del nb.metadata["widgets"]
    assert saved == nb, "the rest of the notebook should be saved as it was given"


def test_the_graded_copy_keeps_no_notebook_metadata_but_what_nbgrader_reads():
    """nbgrader_config.py: right after nbgrader's ClearOutput (which clears widget views with the
    other outputs), nbconvert's ClearMetadataPreprocessor drops the notebook's widget state and keeps
    its kernelspec, language_info and every cell's metadata (nbgrader's among it)."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import ClearOutput
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    steps = config.Autograde.sanitize_preprocessors
    assert steps[steps.index(ClearOutput) + 1] is ClearMetadataPreprocessor, steps
    nb, cells = lesson(), copy.deepcopy(lesson().cells)
    for step in steps[:2]:
        nb, _ = step(config=config)(nb, {})  # as nbgrader calls it: a disabled step does nothing
    assert set(nb.metadata) == {"kernelspec", "language_info"}, set(nb.metadata)
    assert [c.metadata for c in nb.cells] == [c.metadata for c in cells]
    assert not any(c.get("outputs") for c in nb.cells)


# A submission with widget state graded by `course grade`: tests/test_autograde.py (the Phase 1
# class's reference carries 500 KB of it, graded from a copy without it, its own file unchanged).
