# The two commands of the README's quickstart: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 first (a CPU wheel; an unpinned torch pulls a
# multi-GB CUDA build), then this package with its test extra.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

.PHONY: install test bench-pivot clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# pytest exits 5 when it collects no test: that must fail, and it does (any non-zero fails).
test: install
	$(PY) -m pytest -q

bench-pivot: install
	$(PY) benchmarks/pivot_cost.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
