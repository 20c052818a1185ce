"""Ray Data progress bars that render in JupyterLab.

Ray Data picks its progress display from `sys.stdout.isatty()`. Under Jupyter that is False,
so it prints progress as log lines on stderr. `use_notebook_progress()` makes Ray Data draw
its usual tqdm bars with `tqdm.notebook` instead: real progress-bar widgets in the output
area, nothing on stderr. It reaches into two private names of Ray 2.60 (listed below); if a
Ray release moves them, it leaves Ray's own display in place and says so once.
"""

from __future__ import annotations

import types

_installed = False


def use_notebook_progress() -> bool:
    """Route Ray Data's progress bars to notebook widgets. Returns True when active."""
    global _installed
    if _installed:
        return True
    try:
        from tqdm.notebook import tqdm as notebook_tqdm

        from ray.data._internal.execution import streaming_executor
        from ray.data._internal.progress import progress_bar
        from ray.data._internal.progress.tqdm_progress import TqdmExecutionProgressManager
    except ImportError as exc:  # a Ray release that moved these names
        print(f"(Progress bars stay as Ray prints them: {exc})")
        return False

    ray_choice = streaming_executor.get_progress_manager

    def get_progress_manager(ctx, dataset_id, topology, verbose_progress):
        if not ctx.enable_progress_bars:
            return ray_choice(ctx, dataset_id, topology, verbose_progress)
        return TqdmExecutionProgressManager(
            dataset_id, topology, ctx.enable_operator_progress_bars, verbose_progress
        )

    streaming_executor.get_progress_manager = get_progress_manager
    progress_bar.tqdm = types.SimpleNamespace(tqdm=notebook_tqdm)
    _installed = True
    return True
