# Atlas — the two commands: `make run` (start everything) and `make test` (every test).
# Needs only Python 3.11+ and pip: the database is an embedded PostgreSQL unless DATABASE_URL is set.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist: one test process per core (tests that share state take their own database,
# cache folder and ports per worker).
XDIST ?= -n auto

.PHONY: install lock run stop-db test test-fast lint format check bench fuzz soak load clean-var

# Installs exactly what requirements.lock pins, every file checked against its hash; then the
# project itself (no dependencies: they all came from the lock).
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Atlas needs Python 3.11+ (set PYTHON=python3.11)")'
	@echo "[1/3] creating $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "[2/3] installing $$(grep -c '^[a-z]' requirements.lock) pinned packages (the first time takes a few minutes)"
	@$(BIN)/python -m pip install --progress-bar on --require-hashes -r requirements.lock
	@echo "[3/3] installing Atlas itself"
	@$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Regenerate requirements.lock from pyproject.toml's ranges (newest allowed versions, hashes).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip-tools>=7.5,<8'
	$(BIN)/python -m piptools compile -q --generate-hashes --extra dev --strip-extras \
		--allow-unsafe --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

run: install
	$(BIN)/python manage.py atlas_run

# make run leaves the embedded PostgreSQL running (the next run and the tests reuse it).
stop-db:
	@$(BIN)/python -c 'import os, pathlib; from config.embedded_db import embedded_database_stop as stop; print(stop(pathlib.Path(os.environ.get("ATLAS_VAR_DIR") or "var") / "pgdata"))'

test: install
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The edit loop: everything but the real-process (slow) and Chromium (browser) tests.
test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not browser" $(PYTEST_ARGS)

# Many more schemathesis examples per operation than the bounded run inside `make test`.
fuzz: install
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest tests/hardening/test_fuzz.py -p no:cacheprovider

# Fault-injection soak: 20,000 events while workers are SIGKILLed, PostgreSQL restarts and the
# receiver is down for 60 s (a loss fails it), then submits retried through a faulty network.
# Shorter: make soak SOAK_ARGS="--events 5000". The bounded version runs inside `make test`.
soak: install
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
	$(BIN)/python bench/soak_submit.py

# The browser traffic mix at rising concurrency against gunicorn with 2 workers.
load: install
	$(BIN)/python bench/load.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark except the soaks and the load test, which have their own targets.
bench: install
	@for script in bench/*.py; do case $$script in bench/_*|bench/soak*|bench/load.py) ;; *) echo "== $$script"; $(BIN)/python $$script || exit 1;; esac; done

clean-var:
	rm -rf var
