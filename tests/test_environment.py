"""environment.yml (conda) installs exactly what pyproject.toml declares, test extra included (as `make setup`)."""

import subprocess
import sys
import tomllib

import yaml

from conftest import ROOT


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "the pip section must install the course kit itself"
    assert sorted(p for p in pip if p != "-e .") == sorted(project["dependencies"] + project["optional-dependencies"]["test"])


def test_no_deprecated_pynvml_shim():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.split("=")[0].split(">")[0].strip() == "pynvml"]
    assert any(d.startswith("nvidia-ml-py") for d in deps)


def test_importing_ray_compiles_no_grammar():
    """Every kernel and every Ray worker imports ray, and ray imports jsonschema: jsonschema must not
    bring rfc3987-syntax in, whose import compiles a grammar (about 1 s of CPU per process here)."""
    code = "import sys, ray; print(sorted(m for m in ('rfc3987_syntax', 'lark') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", (f"`import ray` loaded {loaded}: keep jsonschema below 4.25 (pyproject.toml says why), "
                            "or uninstall rfc3987-syntax from this environment")


def test_the_kit_a_notebook_imports_never_imports_the_grader():
    """graders/trusted/ is the grader's side: `import graders` and what a validation's setup and run
    cells use load none of it."""
    code = ("import sys, graders, graders.grading, graders.perf, graders.registry, graders.exercises; "
            "print(sorted(m for m in sys.modules if m.startswith('graders.trusted')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the kit imported the grader: {loaded}"
