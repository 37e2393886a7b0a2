# Quick start: `make demo` and `make test` on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-0.1

.PHONY: install chromium demo test lint docs bench clean

# setup.py builds the compiled kernels of the search (src/trainleak/_ctopk.c) at install.
$(STAMP): pyproject.toml setup.py src/trainleak/_ctopk.c Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of PyTorch, pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,demo,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/trainleak demo --out demo-out

# The browser tests (tests/test_review_browser.py) drive Debian's Chromium through
# Playwright: `playwright install` downloads from outside the package registries.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      || echo "make: could not install chromium: the browser tests will be skipped"; \
	  else \
	    echo "make: chromium is missing (install it as root: apt-get install chromium);" \
	      "the browser tests will be skipped"; \
	  fi; }

# Two test processes, one per core of the 2-core CI machine (most tests use one core);
# a file's tests stay in one process, so its module fixtures (Ray, a browser) are made once.
test: install chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	# Layers point down, no import cycles (the contracts in .importlinter).
	$(VENV)/bin/lint-imports --no-cache

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) bench/bench_embed.py
	$(PY) bench/bench_search.py
	$(PY) bench/bench_cache.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache site
