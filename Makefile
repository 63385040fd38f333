# The two commands a newcomer needs: `make run` (whole local stack) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# checkov pins packaging/networkx below what torch and ray need: it gets its own venv.
TOOLS ?= .venv-tools
# Tests start Ray, which binds the machine's addresses: they run in a private
# network namespace where only loopback exists.
ISOLATED := unshare --net -- sh -c 'ip link set lo up && exec "$$@"' isolated

.PHONY: install run test test-unit build-models down status render-k8s

install: $(VENV)/.installed $(TOOLS)/.installed

$(TOOLS)/.installed: k8s/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet -r k8s/tools-requirements.txt
	touch $@

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

render-k8s: install
	$(BIN)/tiergate render-k8s --config gateway/tiergate.yaml --cluster gateway/cluster.yaml --out k8s

test: install
	$(ISOLATED) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)
