# The two commands a newcomer needs: `make dev` (install and run) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: dev prod-local test lint install install-dev bench clean-data lock

## The packages are installed with uv (itself from PyPI, into the venv): it resolves and
## downloads in parallel, 10 s on a clean clone against pip's 44 s, to the same versions.
## It trusts the system's certificates (a TLS-inspecting proxy's CA is there, and uv's own
## bundle lacks it: a login shell without SSL_CERT_FILE failed), and where uv cannot
## install at all (an index only pip.conf names), pip does.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.13,<0.14'

INSTALL = $(BIN)/uv pip install --quiet --system-certs --python $(BIN)/python $(1) \
	|| $(BIN)/pip install --quiet $(1)

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(call INSTALL,-e .)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(call INSTALL,-e '.[dev]')
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make dev: embedded PostgreSQL (unless DATABASE_URL is set), migrations, demo data,
## then the Dagster UI and daemon on http://127.0.0.1:3000. Ctrl-C stops everything.
dev: install
	exec $(BIN)/mm-jobs dev $(DEV_ARGS)

## make prod-local: the production topology on this machine (gRPC code server, daemon,
## webserver as separate processes, MM_ENV=staging) on http://127.0.0.1:3000.
prod-local: install
	exec $(BIN)/mm-jobs prod-local $(DEV_ARGS)

## make test: the whole suite against a real (embedded) PostgreSQL, on five workers (each
## with its own server; the process-stack tests mostly wait, so five keep two cores busy:
## 478 s against 492 s on four); a module with a server of its own runs on one worker
## (--dist loadgroup).
TEST_WORKERS ?= 5
## Compiled modules (and pytest's rewritten tests) are kept even where the environment
## says PYTHONDONTWRITEBYTECODE: the suite starts some 400 Python processes, and each would
## compile the project again.
test: install-dev
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --maxschedchunk 1 $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff format --check mm_orchestration tests benchmarks
	$(BIN)/ruff check mm_orchestration tests benchmarks
	$(BIN)/mypy

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## make lock: re-pin deploy/requirements.lock (the image's packages) from pyproject.toml.
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install --quiet '.[k8s]'
	{ echo "# Every Python package of the image, pinned (Python 3.11, Linux). Regenerate: make lock"; \
	  build/lockenv/bin/pip freeze --exclude mm-orchestration; } > deploy/requirements.lock
	rm -rf build/lockenv

clean-data:
	rm -rf .mm
