# Quick start: `make demo`, `make test`. Both create .venv with pinned versions if needed.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): requirements/base.txt requirements/test.txt requirements/lock.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/lock.txt \
	    -r requirements/base.txt -r requirements/test.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Trains a Glow on the 2D two-moons density (about 2 minutes on 2 CPU cores), exports it
# as a SavedModel and writes density and sample PNGs, all under demo_out/.
demo: $(STAMP)
	$(PY) -m trainers.train --model=glow --dataset=moons --steps=6000 --batch_size=256 \
	    --eval_every=1000 --model_dir=demo_out/model --export_dir=demo_out/export --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/bench.txt
	@touch $@

bench: $(BENCH_STAMP)
	$(PY) bench/glow_throughput.py
	$(PY) bench/resflow_bench.py
	$(PY) bench/vi_bench.py
	$(PY) bench/cif_bench.py --plot bench/out
	$(PY) bench/mnist_bench.py --plot bench/out

clean:
	rm -rf demo_out .pytest_cache
