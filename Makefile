# seqctr: make demo (set-up + the main job on the embedded default) · make test · make bench · make lint
# make lint: ruff (lint + format) and the import-linter layer contract in pyproject.toml
VENV ?= .venv
PY := $(VENV)/bin/python
SEQCTR := $(VENV)/bin/seqctr
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_TRAIN_V2_ENABLED := 1

.PHONY: install demo test test-all lint bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(SEQCTR) demo --config configs/default.yaml

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/run_all.py

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf work .pytest_cache
