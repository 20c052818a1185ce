"""environment.yml (conda) installs exactly what pyproject.toml declares, test extra included (as `make setup`)."""

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
