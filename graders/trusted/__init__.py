"""The grader: what grades a learner's notebook. Never imported by a notebook.

Everything else in `graders` is the course kit a notebook imports, and runs in the learner's
kernel. This package runs only in the grader's own processes, on the other side of that line:

    sandbox       the sandbox every graded kernel runs in (bubblewrap, cgroups, its own user)
    nbgrader_ext  nbgrader's execute step: the learner's kernel runs the notebook, the grader's own
                  kernel runs the test cells against the results it handed over, measured from outside
    inputs        fresh inputs for the measured run, salted by the grader just before it runs
    yardsticks    Phase 2's model ceiling and naive baseline, measured by the grader around the run
    classroom     `course grade`: a whole class, one gradebook writer, protected files checked
    feedback      feedback and formgrader pages that run no script, every output capped
    guard/        without a sandbox (--unsandboxed): a write guard for the graded run's processes
"""
