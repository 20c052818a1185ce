"""The learner's workspace: a git-ignored copy of `course/` where your own work lives.

`sync()` copies notebooks that are new in `course/` and never overwrites one you have edited.
It remembers the hash of every notebook it copied (in `.course-manifest.json`), so it can tell
"unchanged since copied" (safe to refresh with a newer release) from "edited by you" (kept).
`git pull` and `make release` change only `course/`, never the workspace.
`strip_widget_state()` is the pre-save hook `make lab` gives JupyterLab: notebooks in the
workspace are saved without widget state.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

MANIFEST = ".course-manifest.json"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sync(course: Path, workspace: Path) -> dict[str, list[str]]:
    """Bring new and untouched notebooks from `course` into `workspace`; return what happened."""
    course, workspace = Path(course), Path(workspace)
    if not course.is_dir():
        raise FileNotFoundError(f"Expected the released course at {course}, found nothing. Try: make release")
    workspace.mkdir(parents=True, exist_ok=True)
    manifest_path = workspace / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    done: dict[str, list[str]] = {"added": [], "updated": [], "kept (edited by you)": [], "unchanged": []}
    for src in sorted(course.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in src.parts:
            continue
        rel = src.relative_to(course).as_posix()
        dest = workspace / rel
        new = _sha(src)
        if not dest.exists():
            action = "added"
        elif _sha(dest) == new:
            action = "unchanged"
        elif manifest.get(rel) == _sha(dest):
            action = "updated"  # you never edited it, and the course has a newer version
        else:
            done["kept (edited by you)"].append(rel)
            continue
        if action != "unchanged":
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".ipynb.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dest)  # atomic: a crash never leaves half a notebook
        manifest[rel] = new
        done[action].append(rel)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return done


def strip_widget_state(model: dict, **kwargs) -> None:
    """Jupyter Server's pre-save hook (`make lab`: `--ContentsManager.pre_save_hook`): save a
    notebook without its widget state, and leave everything else as it is.

    Ray Data's progress bars are widgets, and their state (`metadata.widgets`, written when
    JupyterLab's "Save Widget State Automatically" is on, or by a notebook runner) takes 45-680 KB
    per notebook; `nbconvert --clear-output` keeps it. The bars show while your kernel runs; the
    file keeps their outputs, not their state. Other files are saved as they are.
    """
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        model["content"].get("metadata", {}).pop("widgets", None)
