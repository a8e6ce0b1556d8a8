# One-command entry points. `make train` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-slow lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the package and the dev tools

train: $(STAMP)  ## train the embedded default (scikit-learn digits); pass ARGS="key=value ..."
	$(BIN)/i2e-train $(ARGS)

test: $(STAMP)  ## lint + the fast tests (CPU)
	$(BIN)/ruff check i2e_train tests scripts
	$(BIN)/ruff format --check i2e_train tests scripts
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the slow tests: real CLI runs, resume, DDP, fault injection
	$(BIN)/python -m pytest -q -m slow -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check i2e_train tests scripts

format: $(STAMP)
	$(BIN)/ruff format i2e_train tests scripts
	$(BIN)/ruff check --fix i2e_train tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
