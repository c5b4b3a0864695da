# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint clean malloc

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory malloc
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sslpipe demo

test: $(STAMP) lint
	$(PY) -m pytest -v --durations=15 tests

# ruff (pycodestyle, pyflakes, bugbear) and mypy over the product packages; settings in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs

# tcmalloc for the training workers (train.allocator=auto, pipelines/allocator.py): best effort, never fatal;
# without it training runs on the system malloc, about 1.2x slower per CPU step (bench/allocator.py)
malloc:
	@{ ls /usr/lib/*/libtcmalloc_minimal.so.* /usr/lib64/libtcmalloc_minimal.so.* 2>/dev/null | grep -q . ; } \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	     && { apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
	     && echo "installed libtcmalloc-minimal4 (training workers' malloc)"; } \
	|| echo "note: tcmalloc is not installed; training uses the system malloc (install libtcmalloc-minimal4 for faster CPU steps)"
