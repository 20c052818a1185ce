# Building AI pipelines with Ray Data - course Makefile.  `make help` lists the targets.

# ---- settings -------------------------------------------------------------------------------
PYTHON ?= python3
VENV ?= .venv
CI ?= false
PHASE ?= 1
# The CPU wheel of torch where it lies on disk (CI); the normal (CUDA) build on a GPU machine.
TORCH ?= torch==2.13.0
LAB_PORT ?= 8888
ASSIGNMENT ?= 01_foundation
PYTEST_ARGS ?=
WORKERS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export RAY_AUTH_MODE ?= disabled
PHASES := $(notdir $(wildcard solutions/[0-9][0-9]_*))

.PHONY: help setup data workspace lab check sandbox browser test test-long test-fast bench bench-grading bench-sandbox bench-noise release release-check collect autograde feedback grades clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# setuptools prints "Editable installation ... Please be careful with folders in your working
# directory" as a warning on every editable install (its InformationOnly): informational, left out.
# pip writes the .pyc files one at a time; compileall writes them on every core (the kit's install
# took 112 s here, 42 s without its .pyc files and 37 s for compileall -j 0). Like pip's own step,
# it skips the few files that do not compile (test data in some packages).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH)"
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $@

setup: $(STAMP) ## create .venv and install the course kit and its dependencies

data: $(STAMP) ## build the course datasets (COURSE_SIZE=small|full, COURSE_DATA=dir or s3://...)
	$(BIN)/course data

workspace: $(STAMP) ## copy new notebooks from course/ into your workspace (never overwrites your edits)
	$(BIN)/course workspace

# Notebooks are saved without widget state (Ray Data's progress bars: graders/workspace.py).
lab: setup data workspace ## start JupyterLab on your workspace
	$(BIN)/jupyter lab --notebook-dir=workspace --port=$(LAB_PORT) --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--ContentsManager.pre_save_hook=graders.workspace.strip_widget_state

check: setup data sandbox ## am I done? grade your validation notebook: make check PHASE=1
	$(BIN)/course check $(PHASE)

# Graded notebooks run in a sandbox (graders/trusted/sandbox.py): Debian's bubblewrap and util-linux setpriv.
# This installs bubblewrap when it is missing, as root or through `sudo -n`. It never fails: without
# it `make check` says so in one line and grades unsandboxed; a class is graded only with --unsandboxed.
# `make browser` runs it first (one apt-get at a time).
sandbox: ## install Debian's bubblewrap, the grading sandbox (apt-get; warns, never fails)
	@if ! command -v bwrap >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
		echo "Installing Debian's bubblewrap for the grading sandbox ($${sudo:+$$sudo }apt-get install -y bubblewrap) ..."; \
		{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
			&& echo "bubblewrap installed: $$(command -v bwrap)" \
			|| echo "WARNING: bubblewrap could not be installed: make check grades without a sandbox, course grade needs --unsandboxed. Fix: as root, apt-get install -y bubblewrap"; \
	fi

# tests/test_browser.py drives JupyterLab in Debian's chromium through Playwright (never
# `playwright install`: no browser is downloaded). This installs chromium when it is missing, as
# root or through `sudo -n`. It never fails: when it cannot, it says so and the browser test skips.
browser: sandbox ## install Debian's chromium for the browser test (apt-get; warns, never fails)
	@if [ -x "$${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		rm -f .artifacts/chromium-install.log; \
	else \
		mkdir -p .artifacts; \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
		echo "Installing Debian's chromium for tests/test_browser.py ($${sudo:+$$sudo }apt-get install -y chromium) ..."; \
		if { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
				>.artifacts/chromium-install.log 2>&1 && command -v chromium >/dev/null 2>&1; then \
			rm -f .artifacts/chromium-install.log; echo "chromium installed: $$(command -v chromium)"; \
		else \
			echo "********************************************************************************"; \
			echo "WARNING: chromium could not be installed, so tests/test_browser.py will SKIP."; \
			echo "  tried: $${sudo:+$$sudo }apt-get install -y chromium; its last lines (.artifacts/chromium-install.log):"; \
			tail -n 3 .artifacts/chromium-install.log | sed 's/^/    /'; \
			echo "  fix: as root, apt-get install -y chromium (or set CHROMIUM to a Chromium binary)"; \
			echo "********************************************************************************"; \
		fi; \
	fi

# The lessons run under nbval. The validation notebooks run under the real `nbgrader autograde`
# instead (tests/test_autograde*.py: the reference must earn every point), which is stricter than
# nbval and would otherwise run each of them twice.
# The venv (pip) and chromium (apt) are set up side by side: neither needs the other.
# The tests marked `long` (the Phase 3 and 4 classes, the two-node cluster tests, the class runner)
# run in `make test-long`, so that `make test` stays under 30 minutes on 2 cores; .ci/run runs both.
test: ## the test suite: kit, lessons (nbval), release sync, real nbgrader autograde of Phases 1-2, JupyterLab in a browser
	@$(MAKE) --no-print-directory -j2 setup browser
	@$(MAKE) --no-print-directory data
	$(BIN)/python -m pytest tests solutions -m "not long" --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider \
		--ignore-glob='solutions/*/*_validation.ipynb' --durations=20 $(PYTEST_ARGS)

test-long: setup data sandbox ## the rest, for CI: the Phase 3 and 4 classes (real nbgrader autograde), the two-node cluster tests, the class runner
	$(BIN)/python -m pytest tests -m long -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

test-fast: setup ## quick edit loop: unit tests only (no Ray, no notebooks)
	$(BIN)/python -m pytest tests -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

bench: setup data ## benchmarks: Phase 2 (model ceiling vs naive vs reference) and class grading (sequential vs parallel)
	$(BIN)/python tests/bench/phase2.py
	PYTHONPATH=tests $(BIN)/python tests/bench/class_grading.py

bench-grading: setup data ## class grading only: sequential vs parallel on BENCH_STUDENTS reference submissions
	PYTHONPATH=tests $(BIN)/python tests/bench/class_grading.py

bench-sandbox: setup data sandbox ## what the grading sandbox costs a run (the same notebook, sandbox on and off)
	$(BIN)/python tests/bench/sandbox_cost.py

bench-noise: setup data sandbox ## grades idle and beside a neighbour keeping every core busy, K times each (BENCH_K, BENCH_PHASES)
	PYTHONPATH=tests $(BIN)/python tests/bench/noise.py

release: setup ## regenerate course/ from solutions/ (nbgrader generate_assignment)
	for a in $(PHASES); do $(BIN)/nbgrader generate_assignment $$a --force --log-level=WARN || exit 1; done

release-check: setup ## fail if course/ differs from a fresh generation
	$(BIN)/python -m pytest tests/test_release.py -q -p no:cacheprovider

collect: setup ## collect submissions (zip files in downloaded/ASSIGNMENT/archive) into submitted/
	$(BIN)/nbgrader zip_collect $(ASSIGNMENT) --force

autograde: setup data sandbox ## grade a class: every submission of ASSIGNMENT (or all), parallel (WORKERS=n), feedback, CSV
	$(BIN)/course grade $(ASSIGNMENT) $(if $(WORKERS),--workers=$(WORKERS))

feedback: setup ## HTML feedback for ASSIGNMENT (hidden tests are not shown)
	$(BIN)/nbgrader generate_feedback $(ASSIGNMENT)

grades: setup ## export all grades to grades.csv
	$(BIN)/nbgrader export --to grades.csv

clean: ## remove generated data, nbgrader state and caches (keeps your workspace)
	rm -rf data submitted autograded feedback gradebook.db grades.csv grades-*.csv .grading .pytest_cache .artifacts
