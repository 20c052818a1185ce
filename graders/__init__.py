"""Course kit for "Building AI pipelines with Ray Data".

Import it once at the top of every notebook:

    import graders as gr
    res = gr.start()          # Ray sized to this machine (or your cluster via RAY_ADDRESS)
    paths = gr.data.prepare() # the course datasets, built offline and deterministically

Modules, each small enough to read:
    session    start/stop Ray, size resources, keep graded cells free of stderr
    data       the course datasets (images, support messages, reviews, tables) and their exact counts
    models     the offline pretrained models (EfficientNet-Lite0, all-MiniLM-L6-v2)
    telemetry  UtilizationMonitor: measured GPU (NVML) and CPU utilization
    perf       the model-only ceiling and the naive baseline a pipeline is measured against
    registry   a versioned model registry in a folder or object storage (Phase 4)
    checks     assertions with helpful messages, and check("<exercise>", value)
    grading    run a learner pipeline for grading, read nbgrader's results
    handover   hand the results to the grader as data; answer its questions to your functions
    work       did the model do the pipeline's work, in the measured run? (a sample recomputed)
"""

from graders import checks, data, grading, handover, models, perf, registry, telemetry, work
from graders.checks import CheckFailed, Tensor, check, expect_count, expect_schema, expect_utilization
from graders.session import Resources, is_grading, resources, shutdown, start
from graders.telemetry import UtilizationMonitor

__all__ = [
    "CheckFailed", "Resources", "Tensor", "UtilizationMonitor", "check", "checks", "data", "grading",
    "expect_count", "expect_schema", "expect_utilization", "handover", "is_grading", "models", "perf", "registry", "resources",
    "shutdown", "start", "telemetry", "work",
]
