"""Shared test helpers: the repo root, phases, and a place to report autograde scores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASES = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
SCORES: list[str] = []  # lines printed at the end of the run (make test shows the autograde scores)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def pytest_terminal_summary(terminalreporter):
    if SCORES:
        terminalreporter.section("nbgrader autograde scores")
        for line in SCORES:
            terminalreporter.write_line(line)


# nbgrader runs helper programs (alembic) by name: make the venv's bin dir visible to it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
