# flowlake's entry points. On a fresh machine `make demo` and `make test` are all you need:
# each creates the virtual environment and installs what it needs first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BENCH_ARGS ?=

.PHONY: venv demo test lint bench

# One stamp per installed extra; it is redone only when pyproject.toml changes, so the
# install step costs nothing once done.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[$*]'
	touch $@

venv: $(VENV)/.installed-all

demo: $(VENV)/.installed-demo
	$(BIN)/flowlake demo --fresh

# The lakeFS tests need a real lakeFS server: scripts/build-lakefs.sh builds it from the Go
# module proxy once (cached outside the repo) and the session fixture starts it on 127.0.0.1.
test: $(VENV)/.installed-all
	$(BIN)/ruff check .
	$(BIN)/mypy
	@if command -v go >/dev/null; then bash scripts/build-lakefs.sh; \
	 else echo "Go not found: the lakeFS tests will skip (under CI they fail)"; fi
	bash scripts/install-chromium.sh
	$(BIN)/pytest

lint: $(VENV)/.installed-all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed-all
	$(BIN)/python -m benchmarks.bench_store $(BENCH_ARGS)
