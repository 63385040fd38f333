# The two commands a newcomer needs: `make run` (whole local stack) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Tests start Ray, which binds the machine's addresses: they run in a private
# network namespace where only loopback exists.
ISOLATED := unshare --net -- sh -c 'ip link set lo up && exec "$$@"' isolated

.PHONY: install run test test-unit build-models down status

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/tiergate up

build-models: install
	$(BIN)/tiergate build-models

down status: install
	$(BIN)/tiergate $@

test: install
	$(ISOLATED) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)
