# `make test` is the README's test command (and what .ci/run calls): it creates .venv,
# installs torch==2.13.0 first (a CPU wheel; an unpinned torch pulls a multi-GB CUDA
# build), then this package with its test extra, and runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

.PHONY: install test demo bench-pivot bench-gmm bench-quality bench-images bench-ablations results clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# pytest exits 5 when it collects no test: that must fail, and it does (any non-zero fails).
test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

# the README's other command: the demo on the bundled faces model (CPU, under 3 minutes)
demo: install
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/exactpost demo

bench-pivot: install
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/pivot_cost.py

bench-gmm: install
	$(PY) benchmarks/gmm_exactness.py

bench-quality: install
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/model_quality.py --model faces-32 --data ../shared/data/faces64.npz \
		--train-split 0 --test-split 2 --n 100

# the paper's image table on the bundled faces model (100 test images, 4 samples; hours on 2 CPU cores; resumable)
bench-images: install
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/exactpost bench images --model faces-32

bench-ablations: install
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/ablations.py --model faces-32 --data ../shared/data/faces64.npz \
		--test-split 2 --n 32

# benchmarks/RESULTS.md from the committed result tables
results: install
	$(PY) benchmarks/collect_results.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache exactpost-demo
