# Quick start: `make demo` and `make test` on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-0.1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of PyTorch, pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,demo,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/trainleak demo --out demo-out

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/bench_embed.py
	$(PY) bench/bench_search.py
	$(PY) bench/bench_cache.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
