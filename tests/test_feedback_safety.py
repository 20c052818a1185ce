"""Feedback and formgrader are safe to open: no script from a submission runs there, pages stay small.

A tiny course in a tmp folder: one assignment released by `nbgrader generate_assignment` with the
course's nbgrader_config.py, a learner in the gradebook, and autograded notebooks written directly
(no kernel, no Ray): one with hostile markdown and outputs next to legitimate ones, one with
outputs far too large. Then the real pages:

- feedback: `nbgrader generate_feedback`, as the instructor runs it;
- formgrader: its exporter built as nbgrader's formgrader server extension builds it
  (`FormgradeExtension.initialize`, then `HTMLExporter(config=...)`), called as its
  SubmissionHandler calls it.

Each check also runs on a control course, the same but with the course's HTMLExporter settings
turned off in its nbgrader_config.py: there the checks find the scripts and the 30 MB, so they can
fail. The autograde side (MeasuredExecute's output limits) is checked on the outputs directly.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from conftest import ROOT
from graders.cli import nbgrader
from graders.trusted.feedback import OutputLimits, clean_html
from graders.trusted.nbgrader_ext import MeasuredExecute

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAEElEQVR4nGP4z8AARwzEcQCukw/x0F8jngAAAABJRU5ErkJggg=="  # 4x4 red
CONTROL = """
# control: the course's feedback/formgrader settings turned off
c.HTMLExporter.sanitize_html = False
c.HTMLExporter.filters = {}
c.HTMLExporter.preprocessors = []
"""
# Every hostile payload carries a "pw-" marker; each must reach no place where a browser runs it.
HOSTILE_MARKDOWN = """\
Learner's notes <script>alert('pw-md-script')</script>

<img src=x onerror="alert('pw-md-onerror')">

[click me](javascript:alert('pw-md-jslink'))

<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgncHctbWQtZGF0YScpPC9zY3JpcHQ+">pw-md-data</a>

<svg onload="alert('pw-md-svg')"><circle r="4"/></svg>

<iframe src="javascript:alert('pw-md-iframe')"></iframe>

<style>body { display: none } /* pw-md-style */</style>

<form action="javascript:alert('pw-md-form')"><button>go</button></form>

<math><a xlink:href="javascript:alert('pw-md-math')">m</a></math>

Legitimate: `Operator N <name>` shows as code, a [Ray docs link](https://docs.ray.io/), **bold**.
"""
WRITTEN_ANSWER = "My answer <img src=x onerror=\"alert('pw-answer')\"> and <script>alert('pw-answer-script')</script>"
PROGRESS = "Running Dataset: 100%|##########| 8/8 [00:01<00:00,  6.2 row/s]\n"
SVG = "<svg xmlns='http://www.w3.org/2000/svg'><script>alert('pw-out-svg')</script><rect width='4' height='4'/></svg>"


def dangers(html: str) -> list[str]:
    """Where a submission's markers sit in a place a browser would run them (empty: none)."""
    soup = BeautifulSoup(html, "html.parser")
    found = []
    for tag in soup.find_all(True):
        for name, value in tag.attrs.items():
            value = " ".join(value) if isinstance(value, list) else str(value)
            url = re.sub(r"[\x00-\x20]+", "", value).lower()
            if name.lower().startswith("on") and "pw-" in value:  # formgrader's own page has onclick handlers
                found.append(f"event handler <{tag.name} {name}={value[:60]!r}>")
            elif name.lower() in ("href", "src", "action", "formaction", "xlink:href", "data", "srcdoc"):
                if url.startswith(("javascript:", "vbscript:")):
                    found.append(f"script URL <{tag.name} {name}={value[:60]!r}>")
                elif url.startswith("data:") and not (tag.name == "img" and re.match(r"data:image/(png|jpeg|gif|webp|svg\+xml)", url)):
                    found.append(f"data URL <{tag.name} {name}={value[:60]!r}>")
        text = tag.get_text() + " ".join(str(v) for v in tag.attrs.values())
        if tag.name in ("script", "style", "iframe", "object", "embed", "form", "base", "svg", "math", "link", "meta") and "pw-" in text:
            found.append(f"<{tag.name}> with {re.findall(r'pw-[a-z-]+', text)}")
    return found


def _nbgrader_meta(cell, **meta):
    cell.metadata["nbgrader"] = {"schema_version": 3, "solution": False, "grade": False, "locked": False, "task": False, **meta}
    return cell


def _hostile(release, source):
    """The released notebook, answered, with hostile and legitimate content, as autograde would leave it."""
    nb = nbformat.from_dict(release)
    hidden = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells if "nbgrader" in c.metadata}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "answer":
            cell.source = "x = 1"
        elif gid == "explain":
            cell.source = WRITTEN_ANSWER
        elif gid == "check_x":
            cell.source = hidden[gid]  # autograde restores the hidden tests, feedback strips them
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "answer")
    answer.execution_count = 1
    answer.outputs = [
        new_output("stream", name="stdout", text=PROGRESS + "<script>alert('shown as text')</script>\n"),
        new_output("display_data", data={"application/javascript": "alert('pw-out-js')", "text/plain": "<a chart: text fallback>"}),
        new_output("display_data", data={"text/html": "<b onmouseover=\"alert('pw-out-html')\">bold</b><script>alert('pw-out-html-script')</script>",
                                         "text/plain": "html"}),
        new_output("display_data", data={"text/markdown": "<img src=x onerror=\"alert('pw-out-md')\"> *markdown output*"}),
        new_output("display_data", data={"image/svg+xml": SVG}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "pw-widget", "version_major": 2,
                                                                                       "version_minor": 0},
                                         "text/plain": "IntSlider(value=3)"}),
        new_output("display_data", data={"image/png": PNG}, metadata={"width": "4 onerror=alert('pw-out-width')",
                                                                      "image/png": {"height": "4 onclick=alert('pw-out-height')"}}),
        new_output("execute_result", data={"text/html": pd.DataFrame({"label": ["cat", "dog"], "score": [0.9, 0.7]})._repr_html_(),
                                           "text/plain": "table"}, execution_count=1),
        new_output("display_data", data={"image/png": PNG}, metadata={"image/png": {"width": 40, "height": 40}}),
    ]
    nb.cells.insert(0, new_markdown_cell(HOSTILE_MARKDOWN))
    raw = new_raw_cell("<script>alert('pw-raw')</script><p>raw html</p>")
    raw.metadata["raw_mimetype"] = "text/html"
    nb.cells.insert(1, raw)
    return nb


def _flood(release, image_bytes: int = 30_000_000):
    """The released notebook with outputs far too large: a 30 MB image, a 3 MB HTML, a huge error."""
    nb = nbformat.from_dict(release)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "answer")
    cell.source = "x = 1"
    frames = [f'  File "pipeline.py", line {i}, in stage_{i}\n    return stage_{i + 1}(batch)\n' for i in range(40_000)]
    cell.outputs = [
        new_output("display_data", data={"image/png": "A" * image_bytes, "text/plain": "<Figure>"}),
        new_output("display_data", data={"text/html": "<p>" + "row " * 750_000 + "</p>"}),
        new_output("error", ename="RecursionError", evalue="too deep " * 200_000, traceback=frames),
    ]
    return nb


def _course(root: Path) -> Path:
    shutil.copy(ROOT / "nbgrader_config.py", root)
    source = new_notebook(cells=[
        _nbgrader_meta(new_markdown_cell("# A tiny lesson\nSet `x`."), grade_id="intro", locked=True),
        _nbgrader_meta(new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), grade_id="answer", solution=True),
        _nbgrader_meta(new_markdown_cell("YOUR ANSWER HERE"), grade_id="explain", solution=True, grade=True, points=1),
        _nbgrader_meta(new_code_cell('"""x is 1."""\nassert x == 1, "x should be 1"\n### BEGIN HIDDEN TESTS\n'
                                     'assert x != 2, "SECRET-HIDDEN-TEST"\n### END HIDDEN TESTS'),
                       grade_id="check_x", grade=True, locked=True, points=1),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    (root / "solutions" / "ps1").mkdir(parents=True)
    nbformat.write(source, root / "solutions" / "ps1" / "lesson.ipynb")
    nbgrader(root, "generate_assignment", "ps1", "--force")
    from nbgrader.api import Gradebook

    release = nbformat.read(root / "course" / "ps1" / "lesson.ipynb", 4)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's notes on nbgrader's own add_submission
        for student, notebook in (("mallory", _hostile(release, source)), ("flood", _flood(release))):
            gb.update_or_create_student(student)
            for nb in gb.add_submission("ps1", student).notebooks:
                for grade in nb.grades:
                    grade.auto_score = grade.max_score
            gb.db.commit()
            (root / "autograded" / student / "ps1").mkdir(parents=True)
            nbformat.write(notebook, root / "autograded" / student / "ps1" / "lesson.ipynb")
    return root


def _formgrader_page(root: Path, student: str, monkeypatch) -> str:
    """The submission page as nbgrader's formgrader server extension makes it (see the module)."""
    from nbconvert.exporters import HTMLExporter
    from nbgrader.server_extensions.formgrader.formgrader import FormgradeExtension

    monkeypatch.chdir(root)
    formgrader = FormgradeExtension()
    formgrader.root_dir = str(root)
    formgrader.initialize([])
    exporter = HTMLExporter(config=formgrader.config)  # as FormgradeExtension.init_tornado_settings
    resources = {"assignment_id": "ps1", "notebook_id": "lesson", "submission_id": "s1", "index": 0, "total": 1,
                 "base_url": "", "student": student, "last_name": None, "first_name": None,
                 "notebook_path": f"autograded/{student}/ps1/lesson.ipynb"}
    html, _ = exporter.from_filename(str(root / "autograded" / student / "ps1" / "lesson.ipynb"), resources=resources)
    return html


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """{(course, page, student): html} for course in safe/control, page in feedback/formgrader."""
    safe = _course(tmp_path_factory.mktemp("safe"))
    control = tmp_path_factory.mktemp("control") / "course"
    shutil.copytree(safe, control)
    with open(control / "nbgrader_config.py", "a") as f:
        f.write(CONTROL)
    # the control's image is 3 MB, not 30: enough to show the page would carry it whole, and
    # nbconvert takes about 20 s to make a 30 MB page
    release = nbformat.read(control / "course" / "ps1" / "lesson.ipynb", 4)
    nbformat.write(_flood(release, 3_000_000), control / "autograded" / "flood" / "ps1" / "lesson.ipynb")
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, root in (("safe", safe), ("control", control)):
            nbgrader(root, "generate_feedback", "ps1")
            for student in ("mallory", "flood"):
                out[name, "feedback", student] = (root / "feedback" / student / "ps1" / "lesson.html").read_text()
                out[name, "formgrader", student] = _formgrader_page(root, student, monkeypatch)
    return out


@pytest.mark.parametrize("page", ["feedback", "formgrader"])
def test_no_script_from_a_submission_reaches_the_page(pages, page):
    """Script tags, event handlers, javascript: and data: links, JavaScript and widget outputs, an
    image's width that breaks out of its attribute: none of them survives, in markdown or outputs."""
    found = dangers(pages["safe", page, "mallory"])
    assert not found, f"the {page} page still carries the submission's scripts: {found}"
    html = pages["safe", page, "mallory"]
    for gone in ("pw-md-script", "pw-out-js", "pw-out-html-script", "pw-widget", "pw-raw", "onerror", "onmouseover"):
        assert gone not in html, f"{gone!r} is still in the {page} page"


@pytest.mark.parametrize("page", ["feedback", "formgrader"])
def test_without_the_course_settings_the_same_submission_runs_scripts(pages, page):
    """The control: nbgrader's and nbconvert's defaults put the scripts in the page (the check above can fail)."""
    found = " ".join(dangers(pages["control", page, "mallory"]))
    for marker in ("pw-md-script", "onerror", "pw-md-jslink", "data URL <a", "pw-out-js", "pw-out-html", "pw-out-width", "pw-answer"):
        assert marker in found, f"the control {page} page should carry {marker}, found only: {found}"


@pytest.mark.parametrize("page", ["feedback", "formgrader"])
def test_legitimate_content_stays(pages, page):
    """Plain text, Ray Data progress, images, pandas tables, code spans and links still show; the
    JavaScript output shows its text instead."""
    html = pages["safe", page, "mallory"]
    soup = BeautifulSoup(html, "html.parser")
    assert "Running Dataset: 100%|##########| 8/8" in html, "Ray Data progress text is missing"
    assert "&lt;script&gt;alert(&#39;shown as text&#39;)" in html or "&lt;script&gt;alert('shown as text')" in html, \
        "printed text should show escaped, as printed"
    assert "&lt;a chart: text fallback&gt;" in html, "a JavaScript output should fall back to its text/plain"
    table = soup.find("table", class_="dataframe")
    assert table is not None and [th.get_text() for th in table.find_all("th")][:3] == ["", "label", "score"], \
        f"the pandas table should render as a table: {table}"
    assert ".dataframe tbody tr th" not in html, "the table's <style> should go, not show as text"
    pngs = [img for img in soup.find_all("img") if img.get("src", "").startswith("data:image/png;base64,iVBOR")]
    assert len(pngs) == 2, f"both images should show, got {pngs}"
    assert any(img.get("width") == "40" for img in pngs), "an image's numeric width should stay"
    assert "<code>Operator N &lt;name&gt;</code>" in html, "a markdown code span should render as code"
    assert soup.find("a", href="https://docs.ray.io/") is not None, "an https link should stay"
    assert "<em>markdown output</em>" in html, "a text/markdown output should still render"


def test_feedback_still_shows_grades_and_hides_hidden_tests(pages):
    """The course's other feedback steps still run: grades from the gradebook, hidden tests stripped."""
    html = pages["safe", "feedback", "mallory"]
    assert "lesson (Score: 2.0 / 2.0)" in html, "the feedback should show the notebook's score"
    assert "SECRET-HIDDEN-TEST" not in html, "hidden tests must be stripped from feedback"
    assert "x should be 1" in html, "the visible test should stay"


@pytest.mark.parametrize("page", ["feedback", "formgrader"])
def test_huge_outputs_are_capped_with_a_note(pages, page):
    """A 30 MB image, a 3 MB HTML output and a huge error: the page stays under 2 MB and says what was cut."""
    html = pages["safe", page, "flood"]
    control = pages["control", page, "flood"]
    assert len(control) > 6_000_000, f"the control {page} page should carry its 3 MB image and 3 MB HTML whole ({len(control):,} chars)"
    assert len(html) < 2_000_000, f"the {page} page is {len(html):,} characters"
    assert "this output was cut (image/png, 30.0 MB): larger than the 1.0 MB allowed for one output" in html, \
        "the note about the cut image is missing"
    assert "this output was cut (text/html, 3.0 MB)" in html, "the note about the cut HTML is missing"
    assert "characters of output cut" in html, "the error's traceback should be cut with a note"
    assert "in stage_0" in html and "in stage_39999" in html, "the traceback's head and tail should stay"


def test_the_autograde_step_caps_every_output_and_drops_scripts():
    """MeasuredExecute's limits, as it applies them to each cell it runs (the autograded notebook formgrader reads)."""
    step = MeasuredExecute()
    step.start_notebook()
    outputs = _flood(new_notebook(cells=[_nbgrader_meta(new_code_cell(""), grade_id="answer")])).cells[0].outputs + [
        new_output("display_data", data={"application/javascript": "alert(1)"}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "VBox()"}),
        new_output("display_data", data={"image/png": PNG}, metadata={"width": "1 onerror=alert(1)", "needs_background": "light",
                                                                      "filenames": {"image/png": "http://evil/x.png"}}),
    ]
    capped = step.limit_outputs(outputs)
    total = len(json.dumps(capped))
    assert total < 1_000_000, f"the capped outputs are still {total:,} characters"
    image, html, error, script, widget, png = capped
    assert image.data["text/plain"].startswith("[grader: this output was cut (image/png, 30.0 MB)"), image.data
    assert image.data["text/plain"].endswith("<Figure>"), "the text fallback should stay below the note"
    assert list(html.data) == ["text/plain"] and "text/html, 3.0 MB" in html.data["text/plain"], html.data
    assert "characters of output cut" in error.evalue and len(error.evalue) < 200_000, error.evalue[-200:]
    assert len("\n".join(error.traceback)) < 200_000 and "characters of output cut" in "\n".join(error.traceback)
    assert script.data == {"text/plain": "[grader: this output (application/javascript) was removed: scripts do not run in feedback]"}
    assert widget.data == {"text/plain": "VBox()"}, "a widget view should fall back to its text"
    assert png.data == {"image/png": PNG} and png.metadata == {"needs_background": "light"}, \
        f"unsafe image metadata should go, safe stays: {png.metadata}"


def test_past_a_cells_budget_the_largest_rich_outputs_become_notes():
    """Per cell, then per notebook: the largest rich outputs go first, small ones (a utilization report) stay."""
    limits = OutputLimits(max_output_bytes=1_000_000, max_cell_output_bytes=2_000_000, max_notebook_output_bytes=3_000_000)
    limits.start_notebook()
    images = [new_output("display_data", data={"image/png": "A" * n}) for n in (900_000, 950_000, 800_000)]
    small = new_output("display_data", data={"application/vnd.course.utilization+json": {"mean": 80.0}})
    capped = limits.limit_outputs([*images, small])
    kept = [o for o in capped if "image/png" in o.data]
    assert [len(o.data["image/png"]) for o in kept] == [900_000, 800_000], "the largest image should be the one cut"
    assert "more than the 2.0 MB allowed for one cell" in capped[1].data["text/plain"], capped[1].data
    assert capped[3].data == small.data, "a small output is never cut for the budget"
    later = limits.limit_outputs([new_output("display_data", data={"image/png": "A" * n}) for n in (900_000, 850_000)])
    assert "allowed for a whole notebook" in later[0].data.get("text/plain", ""), f"the 1.3 MB left of the notebook's budget should bind: {later[0].data.keys()}"
    assert later[1].data["image/png"] == "A" * 850_000, "the smaller image fits what is left"


@pytest.mark.parametrize("html, kept, gone", [
    ("<p onclick=alert(1)>hi</p>", "<p>hi</p>", "onclick"),
    ("<a href=' javascript:alert(1)'>x</a>", "<a>x</a>", "javascript"),
    ("<a href='java&#x09;script:alert(1)'>x</a>", "<a>x</a>", "script:"),
    ("<a href='data:text/html,<script>alert(1)</script>'>x</a>", "<a>x</a>", "data:"),
    ("<img src='data:image/svg+xml,<svg onload=alert(1)>'>", "<img>", "svg"),
    ("<img src='data:image/png;base64,iVBOR'>", '<img src="data:image/png;base64,iVBOR">', "onerror"),
    ("<div style='position:fixed;color:red'><style>p{}</style>t</div>", "<div>t</div>", "position"),
    ("<table><tr><td style='text-align: right; position: fixed'>1</td></tr></table>", '<td style="text-align: right;">1</td>', "fixed"),
])
def test_clean_html(html, kept, gone):
    """The allow-list on its own: handlers, script URLs hidden by whitespace or entities, data: pages
    and svg go; pasted PNGs and safe table styles stay."""
    out = clean_html(html)
    assert kept in out and gone not in out, f"clean_html({html!r}) = {out!r}"
