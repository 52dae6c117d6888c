# Every target sets up what it needs from nothing: a fresh clone has only
# Python, pip and gcc. The venv is rebuilt when the build inputs change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= test,plot,dask
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test notebooks bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py src/concmagic/_core.pyx
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m concmagic demo

test: $(STAMP)
	$(PY) -m pytest -q

# Runs every notebook top to bottom; executed copies and HTML in notebooks/_build/.
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py

# Every benchmark group of issue 6 into benchmarks/RESULTS.md; the peers
# (numba, loky, joblib, gilknocker, ipyparallel) come with the bench extra.
# `make bench BENCH_ARGS=--quick` for a short pass.
BENCH_STAMP := $(VENV)/.installed-bench-$(subst $(comma),-,$(EXTRAS))
BENCH_ARGS  ?=

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build notebooks/_build src/concmagic/_core.c src/concmagic/*.so src/*.egg-info
