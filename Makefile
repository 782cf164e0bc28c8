# seriesflow — the commands a newcomer needs. Each target bootstraps what it uses.
#   make run    the all-in-one service (embedded PostgreSQL unless SERIESFLOW_DATABASE_URL is set)
#   make test   the test suite, with the system tools it talks to (dcmtk, Orthanc, helm, ...)
#   make lint   ruff + mypy
#   make bench  the benchmarks (store, receiver, memory, completion replay, event delivery,
#               previews on/off, QIDO-RS on a 1M-instance catalog), printing figures and ratios
#   make bench-smoke  the same benchmarks on a small corpus (CI runs this; no pass/fail on speed)
#   make bench-scale  the catalog grown to 10M instances, queries timed at 0/1M/5M/10M
#   make proto  regenerate the seriesflow.v1 stubs after editing proto/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test lint bench bench-smoke bench-scale proto tools venv clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "seriesflow needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# `make run` installs only what the services need, so a first run starts quickly.
$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[embedded]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@ $(RUNTIME_STAMP)

venv: $(DEV_STAMP)

tools:
	bash scripts/install-tools.sh

run: $(RUNTIME_STAMP)
	$(VENV)/bin/seriesflow run

# Files are spread over TEST_WORKERS processes (each with its own PostgreSQL); the Docker
# tests then run alone, so image builds do not compete with timing-sensitive tests. Exit
# code 5 ("no tests collected") is fine for the second run: PYTEST_ARGS may select none.
TEST_WORKERS ?= 3
test: $(DEV_STAMP) tools
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m "not docker" $(PYTEST_ARGS)
	$(VENV)/bin/pytest -m docker $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check seriesflow receiver store migrations tests bench scripts
	$(VENV)/bin/mypy

bench: $(DEV_STAMP) tools
	$(PY) bench/store_bench.py
	$(PY) bench/receiver_bench.py
	$(PY) bench/memory_bench.py
	$(PY) bench/completion_replay.py
	$(PY) bench/watch_bench.py
	$(PY) bench/preview_bench.py
	$(PY) bench/qido_bench.py

bench-smoke: $(DEV_STAMP) tools
	$(PY) bench/store_bench.py --series 50 --probe 10
	$(PY) bench/receiver_bench.py --quick
	$(PY) bench/memory_bench.py --quick
	$(PY) bench/completion_replay.py --quick
	$(PY) bench/watch_bench.py --quick
	$(PY) bench/preview_bench.py --quick
	$(PY) bench/qido_bench.py --quick
	$(PY) bench/scale_bench.py --sizes 0,2000 --samples 20

# The catalog grown to 10M instances (~12 min on a quiet machine, ~4.5 GB in /tmp); not in
# `make bench`, which stays a coffee break.
bench-scale: $(DEV_STAMP) tools
	$(PY) bench/scale_bench.py

proto: $(DEV_STAMP)
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
