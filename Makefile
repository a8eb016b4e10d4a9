# Two entry points (see README): `make demo` runs the whole pipeline, `make test` the tests.
# Both create .venv and install the pinned requirements first (once, or when they change).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo lint test test-fast bench plots-template

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# openai-clip only provides the CLIP BPE vocabulary file; its torch/torchvision pins are not wanted.
	$(PY) -m pip install -q --no-deps openai-clip==1.0.1
	touch $@

setup: $(VENV)/.installed

# Benchmarks (minutes on 2 cores); results in reports/bench/, table into README.md.
bench: setup
	python -m benchmarks.data_throughput
	python -m benchmarks.train_step
	python -m benchmarks.dvc_overhead
	python -m benchmarks.memory
	python -m benchmarks.judge_memory
	python -m benchmarks.previous_stack
	python -m benchmarks.readme_table

# Rebuild the committed offline plots page after changing the pins in tools/plots/package.json.
plots-template:
	cd tools/plots && npm install --no-audit --no-fund --loglevel=error
	python3 tools/plots/build_template.py

demo: setup
	dvc repro

# ruff (pinned in requirements.txt, rules in pyproject.toml) runs first: a lint error fails the tests.
lint: setup
	ruff check .

# Two workers (pytest-xdist): one torch thread each (tests/conftest.py); the tests that copy the
# session's small pipeline share one worker (xdist_group), so it is built once.
test: lint
	pytest -n 2 --dist loadgroup

test-fast: lint
	pytest -n 2 --dist loadgroup -m "not slow"
