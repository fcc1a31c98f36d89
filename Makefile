# The two commands a newcomer needs: `make dev` (install and run) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: dev test lint install install-dev bench clean-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make dev: embedded PostgreSQL (unless DATABASE_URL is set), migrations, demo data,
## then the Dagster UI and daemon on http://127.0.0.1:3000. Ctrl-C stops everything.
dev: install
	$(BIN)/mm-jobs dev

## make test: the whole suite against a real (embedded) PostgreSQL.
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff format --check mm_orchestration tests benchmarks
	$(BIN)/ruff check mm_orchestration tests benchmarks
	$(BIN)/mypy

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-data:
	rm -rf .mm
