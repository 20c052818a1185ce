"""The lesson exercises that `check("<id>", value)` knows, one small function each.

Each function gets the learner's value, raises `CheckFailed` with a hint when it is wrong, and
returns a one-line description of what passed. Ids are `<phase><lesson>.<name>`, e.g. "11.accelerator".

Every message says what was expected, what was found and what to try. An exercise cell that is
still blank (its variable is None or `...`) gets "nothing yet", and a pipeline that raises while
the check runs it gets the learner's own error in one line instead of Ray's traceback.

One module per phase or lesson: `foundation` (Phase 1); `vision`, `nlp`, `multimodal` (Phase 2); `production` (Phase 3);
`deployment`, `operations`, `troubleshooting` (Phase 4).
"""

from graders.exercises import (  # noqa: F401  (registers the checks)
    deployment, foundation, multimodal, nlp, operations, production, troubleshooting, vision,
)
