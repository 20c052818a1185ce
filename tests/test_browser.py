"""JupyterLab in a real browser: what a learner sees, and the "am I done?" button.

Debian's chromium (apt package `chromium`, installed by `make browser`) driven by Playwright from
PyPI. No browser is ever downloaded (`playwright install` is never run): Playwright launches the
system binary. JupyterLab is started as `make lab` starts it, on a learner's workspace with Phase 1.

1. The first lesson (01_install_and_verify, completed as a learner would) runs its setup cell
   (`gr.start()`) and its first Ray Data pipeline with Shift+Enter. The check's line appears, Ray
   Data's progress is a progress-bar widget (no Ray log lines in the output), and so is the live
   utilization gauge. The screenshots land in .artifacts/browser/ (the paths end the test run).
2. nbgrader's Validate button on the Phase 1 validation fails every graded cell of the blank
   notebook, with the reason, and passes the reference solution.

Without chromium or Playwright both tests skip, saying what failed and how to install it, in the
skip reason and in a section at the end of the run. Nothing is left running: every process started
here (JupyterLab, its kernels, their Ray, nbgrader's, chromium) carries a tag in its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import psutil
import pytest
from conftest import BROWSER, ROOT, jupyter_lab, solved

from graders.trusted.classroom import tagged_processes

pytestmark = pytest.mark.slow

PHASE = "01_foundation"
LESSON = "01_install_and_verify.ipynb"
VALIDATION = "04_validation.ipynb"
REFERENCE = "04_validation_reference.ipynb"  # the same notebook, completed with the reference solution
ARTIFACTS = ROOT / ".artifacts" / "browser"
INSTALL_LOG = ROOT / ".artifacts" / "chromium-install.log"  # written by `make browser` when it fails
TAG = "COURSE_BROWSER_TEST"  # in the environment of every process this module starts
RAY_LOG_LINES = ("Execution plan", "execution finished in", "Starting execution of Dataset")
HOW_TO_INSTALL = ("Install it with `make browser` (apt-get install -y chromium, through `sudo -n` when not "
                  "root), or as root: `apt-get install -y chromium`; or set CHROMIUM to a Chromium binary.")


def _not_run(reason: str):
    """Skip, loudly: the reason goes to pytest's skip summary and to a section at the end of the run."""
    BROWSER.append(f"NOT RUN: {reason}")
    pytest.skip(reason)


def _chromium() -> str:
    """The system Chromium, or a skip that says what is missing and how to install it."""
    candidates = [os.environ.get("CHROMIUM")] + [shutil.which(n) for n in ("chromium", "chromium-browser")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    if INSTALL_LOG.exists():
        lines = [line.strip() for line in INSTALL_LOG.read_text(errors="replace").splitlines() if line.strip()]
        tried = " | ".join(lines[-3:])
        why = f"`make browser` could not install it ({INSTALL_LOG.relative_to(ROOT)}: {tried or 'empty'})"
    else:
        why = "`make browser` has not been run on this machine"
    _not_run(f"the browser test needs Debian's chromium: none found (CHROMIUM unset or not executable, and no "
             f"`chromium` or `chromium-browser` on PATH); {why}. {HOW_TO_INSTALL}")


def _playwright_drivers() -> list[psutil.Process]:
    """Playwright's driver (a node process) that this pytest process started, if still alive."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "playwright" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _left_running(tag: str, wait_s: float = 60) -> list[str]:
    """What is still running of this module after `wait_s`; whatever is left is then killed."""
    deadline = time.monotonic() + wait_s
    while True:
        left = tagged_processes(tag, tag=TAG) + _playwright_drivers()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    names = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.name()} (pid {proc.pid}): {' '.join(proc.cmdline())[:120]}")
            proc.kill()
    return names


def _workspace(folder: Path) -> Path:
    """A learner's workspace (`course workspace`), with the first lesson completed as a learner would
    and, next to the blank validation, a copy of it completed with the reference solution."""
    from graders import workspace

    workspace.sync(ROOT / "course", folder)
    for name, target in [(LESSON, LESSON), (VALIDATION, REFERENCE)]:
        release, source = (nbformat.read(ROOT / kind / PHASE / name, 4) for kind in ("course", "solutions"))
        nbformat.write(solved(release, source), folder / PHASE / target)
    return folder


def _lab_settings(state: Path) -> None:
    """No "get notified about Jupyter news?" toast over the screenshots (and no request to the web)."""
    settings = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@pytest.fixture(scope="module")
def lab_in_browser(tmp_path_factory):
    """JupyterLab on a learner workspace, and chromium pointed at it; nothing of either is left afterwards."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _not_run(f"the browser test needs the Python package playwright, which is missing ({exc}). Install the "
                 "test extra: `make setup`, or `.venv/bin/pip install -e '.[test]'`. It drives Debian's chromium "
                 "(`make browser`); never run `playwright install`, no browser is downloaded.")
    chromium = _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    tag = f"{tmp}-{os.getpid()}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _lab_settings(tmp / "lab")
    try:
        with jupyter_lab(_workspace(tmp / "workspace"), tmp / "lab", env={TAG: tag}) as lab, sync_playwright() as pw:
            env = {**os.environ, TAG: tag}
            try:
                args = ["--no-sandbox"] if os.geteuid() == 0 else []
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args, env=env)
            except PlaywrightError as exc:
                if args:
                    raise
                # A container without user namespaces has no room for Chromium's sandbox.
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"], env=env)
                print(f"chromium's sandbox could not start here ({str(exc).splitlines()[0]}); running without it")
            try:
                yield SimpleNamespace(lab=lab, browser=browser, workspace=tmp / "workspace")
            finally:
                browser.close()
    finally:
        left = _left_running(tag)
    assert not left, f"expected nothing left running after the browser test, found (now killed): {left}"


def _open(env, path: str):
    """Open a notebook in a fresh JupyterLab page (a reset layout: only this notebook) and wait for its
    cells and its kernel."""
    page = env.browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(60_000)
    page.goto(f"{env.lab.url}/lab/tree/{path}?reset&token={env.lab.token}")
    cells = len(nbformat.read(env.workspace / path, 4).cells)
    try:
        page.wait_for_function(f"document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length === {cells}")
        page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]')
    except Exception as exc:
        _screenshot(page, "FAILED-open")
        raise AssertionError(f"JupyterLab did not show {path} with its {cells} cells and an idle kernel within 60 s: "
                             f"{exc}\nJupyterLab's log:\n{env.lab.log_tail()}") from exc
    return page


def _screenshot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    BROWSER.append(f"screenshot: {path}")
    return path


@contextlib.contextmanager
def _evidence_on_failure(page, name: str):
    """On a failure, a screenshot of what the browser showed (its path is printed and listed at the end)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _screenshot(page, f"FAILED-{name}")
        raise


def _cell_index(nb, match) -> int:
    return next(i for i, c in enumerate(nb.cells) if match(c))


def _run_cell(page, index: int, timeout_s: float):
    """Select cell `index` and press Shift+Enter, as a learner does; wait until it has run."""
    cell = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    start = time.monotonic()
    prompt = cell.locator(".jp-InputPrompt")
    try:
        prompt.filter(has_text=re.compile(r"\[\d+\]")).wait_for(timeout=timeout_s * 1000)
    except Exception as exc:
        raise AssertionError(f"cell {index} did not finish within {timeout_s:g} s (its prompt reads "
                             f"{prompt.inner_text()!r}); its output so far: {cell.inner_text()[-600:]!r}") from exc
    print(f"cell {index} ran in {time.monotonic() - start:.1f} s")
    return cell


def _text_outputs(cell) -> str:
    """What the cell printed (stdout, stderr, errors), widgets left out."""
    return "\n".join(cell.locator(".jp-OutputArea-output.jp-RenderedText").all_inner_texts())


def _close(env, page) -> None:
    """Close the page and shut down the kernels it started (and with them any Ray they started)."""
    page.close()
    for session in env.lab.api("api/sessions"):
        env.lab.api(f"api/sessions/{session['id']}", method="DELETE")


def test_lesson_shows_progress_bars_and_the_live_gauge(lab_in_browser):
    env = lab_in_browser
    path = f"{PHASE}/{LESSON}"
    nb = nbformat.read(env.workspace / path, 4)
    setup = _cell_index(nb, lambda c: c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    squares = _cell_index(nb, lambda c: c.metadata.get("nbgrader", {}).get("grade_id") == "squares")
    check = _cell_index(nb, lambda c: 'gr.check("11.squares"' in c.source)
    shutdown = _cell_index(nb, lambda c: c.metadata.get("nbgrader", {}).get("grade_id") == "shutdown")
    assert "gr.start()" in nb.cells[setup].source and "UtilizationMonitor(live=True)" in nb.cells[check].source

    page = _open(env, path)
    with _evidence_on_failure(page, "lesson"):
        started = _run_cell(page, setup, timeout_s=180)
        shown = _text_outputs(started)
        assert "Ray " in shown, f"expected the setup cell to print the Ray it started ('Ray 2.60.0 (local): ...'), found {shown!r}"
        pipeline = _run_cell(page, squares, timeout_s=60)
        cell = _run_cell(page, check, timeout_s=180)
        pipeline.evaluate("e => e.scrollIntoView({block: 'start'})")  # the pipeline, then its run
        screenshot = _screenshot(page, "lesson_01_install_and_verify")

        # (a) the check's own output
        printed = _text_outputs(cell)
        assert "11.squares: 1,000 rows" in printed, (
            f"expected the check to print '✅ 11.squares: 1,000 rows, ...', found: {printed!r}")
        # (b) Ray Data's progress is a progress-bar widget, not log lines
        bar = cell.page.locator(".widget-hprogress .progress-bar")
        rows = cell.locator(".jp-OutputArea-output .widget-hbox").filter(has=bar)
        descriptions = [r.inner_text() for r in rows.all()]
        progress = [d for d in descriptions if "Dataset" in d]
        assert progress, (f"expected Ray Data's progress as a progress-bar widget ('Dataset ... 100%' next to a bar) in the "
                          f"check cell's output, found these widget rows: {descriptions!r} (screenshot: {screenshot})")
        assert "row/s" in progress[0] or "rows/s" in progress[0], f"expected the bar to count rows, found: {progress[0]!r}"
        for i, shown in [(setup, _text_outputs(started)), (squares, _text_outputs(pipeline)), (check, printed)]:
            logged = [line for line in RAY_LOG_LINES if line in shown]
            assert not logged, (
                f"expected no Ray Data log lines in cell {i}'s output (progress is a widget), found {logged} in: {shown!r}")
        # (c) the live utilization gauge: a bar per device ("CPU", "GPU 0", ...), then the run's summary
        gauges = cell.locator(".jp-OutputArea-output .widget-hprogress").filter(
            has=cell.page.locator("label.widget-label", has_text=re.compile(r"^(CPU|GPU \d+)$")))
        assert gauges.count() >= 1, (
            f"expected the live utilization gauge (a progress bar labelled CPU) in the check cell's output, found none "
            f"among these widget rows: {descriptions!r} (screenshot: {screenshot})")
        summary = cell.locator(".jp-OutputArea-output .widget-html pre").all_inner_texts()
        assert any(s.startswith("Device: ") and "utilization: mean" in s for s in summary), (
            f"expected the gauge to end with the run's summary ('Device: CPU ... utilization: mean ...'), "
            f"found: {summary!r}")

        _run_cell(page, shutdown, timeout_s=60)
    _close(env, page)


def _validate(env, path: str, name: str, timeout_s: float = 240) -> tuple[str, list[str], str]:
    """Click Validate in the notebook's toolbar and read nbgrader's dialog: its outcome (the class of
    #validation-message), the texts it lists, and the path of its screenshot."""
    page = _open(env, path)
    with _evidence_on_failure(page, name):
        page.locator(".jp-NotebookPanel-toolbar .validate-button").click()
        start = time.monotonic()
        message = page.locator(".jp-Dialog #validation-message")
        try:
            message.wait_for(timeout=timeout_s * 1000)
        except Exception as exc:
            raise AssertionError(f"nbgrader's Validate gave no answer within {timeout_s:g} s on {path}.\n"
                                 f"JupyterLab's log:\n{env.lab.log_tail()}") from exc
        print(f"Validate on {path}: {time.monotonic() - start:.1f} s")
        outcome = next((c for c in message.get_attribute("class").split() if c.startswith("validation-")), "none")
        texts = message.locator("pre").all_inner_texts() or [message.inner_text()]
        shot = _screenshot(page, name)
        page.locator(".jp-Dialog button.jp-mod-accept").click()
    _close(env, page)
    return outcome, texts, str(shot)


def test_validate_fails_the_blank_and_passes_the_reference(lab_in_browser):
    env = lab_in_browser
    nb = nbformat.read(env.workspace / PHASE / VALIDATION, 4)
    graded = [c.source.strip().splitlines()[0] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert graded, "expected graded cells in the Phase 1 validation"

    outcome, texts, shot = _validate(env, f"{PHASE}/{VALIDATION}", "validate_blank")
    assert outcome == "validation-failed", (
        f"expected Validate to report failure on the blank validation, found '{outcome}': {texts} (screenshot: {shot})")
    sources, errors = texts[0::2], texts[1::2]  # nbgrader lists each failed cell's source, then its error
    unreported = [first for first in graded if not any(s.startswith(first) for s in sources)]
    assert not unreported, f"expected every graded cell to fail on the blank, these were not listed as failed: {unreported}"
    unreadable = [e for e in errors if "not written yet" not in e]
    assert not unreadable, f"expected each failure to say the exercise is not written yet, found: {unreadable}"

    outcome, texts, shot = _validate(env, f"{PHASE}/{REFERENCE}", "validate_reference")
    assert outcome == "validation-success" and "Success! Your notebook passes all the tests." in texts[0], (
        f"expected Validate to pass the reference solution, found '{outcome}': {texts} (screenshot: {shot})")
