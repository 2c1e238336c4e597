# Every target sets itself up: .venv is created when missing and filled from constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONHASHSEED := 0

.PHONY: setup demo demo-fashion fashion-data test bench clean
FASHION_DIR := /usr/share/datasets/fashion-mnist

setup: $(STAMP) fashion-data

# Real data (Fashion-MNIST) comes from Debian's dataset-fashion-mnist: installed here when we are
# root with apt-get; otherwise say how (the real-data tests then skip, naming the package).
fashion-data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	  || echo "note: could not install dataset-fashion-mnist; real-data tests and demo-fashion need it"; \
	else echo "note: Fashion-MNIST is not installed; run: sudo apt-get install dataset-fashion-mnist"; fi

$(STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tradeoff demo --out results/demo

# Real data: needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist).
demo-fashion: $(STAMP) fashion-data
	$(PY) -m tradeoff demo --data fashion-mnist --out results/fashion

test: $(STAMP) fashion-data
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m benchmarks --out results/bench

clean:
	rm -rf $(VENV) results/cache results/demo results/fashion results/bench
