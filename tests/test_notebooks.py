"""Notebook hygiene: clean, named by convention, valid nbgrader metadata, no patterns we teach against."""

import json
import re

import nbformat
import pytest

from conftest import PHASES, ROOT

NOTEBOOKS = sorted((ROOT / "solutions").rglob("*.ipynb")) + sorted((ROOT / "course").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]
FORBIDDEN = {
    r"\bconcurrency\s*=": "deprecated since Ray 2.51: use compute=ray.data.ActorPoolStrategy(size=...)",
    r"num_gpus\s*=\s*1\b": "never hard-code a GPU: use res.gpus_per_actor",
    r"torch\.hub\.load|from_pretrained\(\s*['\"](bert-base|gpt2|facebook/|google/)": "no downloads at run time",
    r"sys\.path\.(append|insert)": "import the kit normally",
    r"['\"]gpu_utilization['\"]\s*:\s*['\"]": "utilization is measured, never a literal",
    r"read_parquet\([^)]*\bcolumns\s*=": "deprecated in Ray 2.60: use read_parquet(path).select_columns([...])",
}


def _ids(path):
    return path.relative_to(ROOT).as_posix()


def test_there_are_notebooks_and_every_phase_ends_in_validation():
    assert PHASES, "no phase folders under solutions/"
    for phase in PHASES:
        names = sorted(p.name for p in (ROOT / "solutions" / phase).glob("*.ipynb"))
        assert names and names[-1].endswith("_validation.ipynb"), f"{phase}: {names}"


def test_every_validation_runs_under_the_real_autograde():
    """`make test` runs the lessons under nbval and leaves the validations to the autograde tests
    (Phases 3 and 4 in `make test-long`), where the reference must earn every point: each phase
    needs one, or its validation never runs."""
    autograde_tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_autograde*.py"))
    for phase in PHASES:
        assert f'PHASE = "{phase}"' in autograde_tests, f"no tests/test_autograde*.py grades {phase}'s validation"
    assert "test_reference_scores_full_marks" in autograde_tests


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_clean_and_valid(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name) and re.fullmatch(r"\d\d_[a-z0-9_]+", path.parent.name)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: committed with outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "a notebook opens with its title"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.parts[-3] == "solutions"], ids=_ids)
def test_nbgrader_metadata(path):
    nb = nbformat.read(path, as_version=4)
    grade_ids, solutions = [], 0
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader")
        src = cell.source
        for pattern, why in FORBIDDEN.items():
            assert cell.cell_type != "code" or not re.search(pattern, src), f"{path.name} cell {i}: {why}"
        if not meta:
            assert "### BEGIN SOLUTION" not in src and "### BEGIN HIDDEN TESTS" not in src, f"cell {i} lacks nbgrader metadata"
            continue
        assert meta["schema_version"] == 3
        grade_ids.append(meta["grade_id"])
        if meta["solution"]:
            solutions += 1
            assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src, f"solution cell {meta['grade_id']} has no solution region"
        if meta["grade"] and cell.cell_type == "code":
            assert meta.get("points", 0) > 0 and meta["locked"], f"test cell {meta['grade_id']} needs points and a lock"
            assert src.lstrip().startswith('"""'), f"test cell {meta['grade_id']} opens with a docstring saying what it checks"
            heading = nb.cells[i - 1].source
            assert f"({meta['points']:g} point" in heading, f"heading before {meta['grade_id']} states its points"
    assert len(grade_ids) == len(set(grade_ids)), f"duplicate grade ids in {path.name}"
    assert solutions, f"{path.name} has no exercise"


def test_hidden_tests_and_solutions_never_reach_the_release():
    for path in (ROOT / "course").rglob("*.ipynb"):
        text = path.read_text()
        for marker in ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS", "_truth", "_cat_labels"):
            assert marker not in text, f"{_ids(path)} leaks {marker!r}"
        assert "raise NotImplementedError()" in text


def test_notebooks_are_small():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert len(cells) <= 70, f"{path.name}: {len(cells)} cells; split it"
        for c in cells:
            assert len("".join(c["source"]).splitlines()) <= 100, f"{path.name}: a cell over 100 lines"


def _assigned(tree) -> set[str]:
    """Names a piece of code binds at any level (assignments, defs, imports, loop and with targets)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _visible(source: str) -> str:
    """A solution cell as the release shows it: the lines between BEGIN and END SOLUTION left out."""
    return re.sub(r"^([ \t]*)### BEGIN SOLUTION.*?### END SOLUTION", r"\1pass", source, flags=re.S | re.M)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.parts[-3] == "solutions"], ids=_ids)
def test_every_name_a_locked_cell_reads_from_the_learner_is_named_in_the_instructions(path):
    """A locked cell (a "Just run this cell" or a test) that reads a name only the learner's solution
    defines fails with a NameError when the learner picked another name: the instructions above it
    (Markdown in backticks, or the template lines the release shows) must name it."""
    import ast
    import builtins

    nb = nbformat.read(path, as_version=4)
    given, learners, named, missing = set(dir(builtins)), set(), set(), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for span in re.findall(r"`([^`]+)`", cell.source):
                named.update(re.findall(r"[A-Za-z_]\w*", span))
            continue
        source = re.sub(r"^\s*[%!].*$", "", cell.source, flags=re.M)  # magics and shell lines
        tree = ast.parse(source)
        if cell.metadata.get("nbgrader", {}).get("solution"):
            visible = _assigned(ast.parse(_visible(source)))
            named.update(visible)
            learners.update(_assigned(tree) - visible - given)
            continue
        own = _assigned(tree)
        reads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        for name in sorted((reads & learners) - own - named - given):
            missing.append(f"cell {i} reads {name!r}, which only a solution defines and no instruction names")
        given |= own
    assert not missing, missing


def test_every_lesson_states_how_long_its_cells_run_on_the_test_machine():
    """The number is checked against the run under nbval (tests/lesson_runs.py)."""
    import lesson_runs

    lessons = sorted(p for p in (ROOT / "solutions").glob("0*/0*.ipynb") if not p.name.endswith("_validation.ipynb"))
    assert len(lessons) == 12
    missing = [str(p) for p in lessons if lesson_runs.stated_seconds(p) is None]
    assert not missing, f"no 'Its cells run for about N s in all on the course's test machine' in: {missing}"
