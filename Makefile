# Every target sets itself up: .venv is created when missing and filled from constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONHASHSEED := 0

.PHONY: setup demo demo-fashion test bench clean

setup: $(STAMP)

$(STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tradeoff demo --out results/demo

# Real data: needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist).
demo-fashion: $(STAMP)
	$(PY) -m tradeoff demo --data fashion-mnist --out results/fashion

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks --out results/bench

clean:
	rm -rf $(VENV) results/cache results/demo results/fashion results/bench
