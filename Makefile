# The whole set-up: `make train` runs the main job, `make test` runs the tests. Both create
# .venv and install the pinned stack (requirements/dev-lock.txt) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt setup.py | cksum | cut -d' ' -f1)
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k packing -x".
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`, a test file to a worker, one torch thread each (tests/conftest.py):
# two keep both cores of the CI machine busy while one waits on a recipe process (three: the whole suite's pytest
# took 16 min 11 s against 15 min 31 s with two, though tests/training + tests/utils alone ran 9% faster). 0 runs
# in one process.
TEST_WORKERS ?= 2

.PHONY: venv test lint format train train-clip finetune-clip evaluate bench clean

venv: $(STAMP)

$(STAMP): requirements/dev-lock.txt requirements/peers-nodeps.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements/dev-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -r requirements/peers-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# pip byte-compiles one file at a time (~80 s of the install on 2 cores); compileall uses every
	@# core. A file it cannot compile (one meant for another Python) is skipped, as pip skips it.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

# The tests start Python processes (recipe runs, ranks, commands): each compiled torchflava's sources anew where
# PYTHONDONTWRITEBYTECODE is set (~0.6 s a process), so `make test` lets Python cache bytecode (__pycache__,
# git-ignored): pytest 865 -> 827 s on 2 cores, with 4c03a9a's meta_device (CONTRIBUTING.md has the rest).
test: $(STAMP) lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Format and lint (ruff.toml); `make format` rewrites the files in place.
lint: $(STAMP)
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .

format: $(STAMP)
	$(BIN)/ruff format --quiet .
	$(BIN)/ruff check --quiet --fix .

# Extra recipe overrides, e.g. make train TRAIN_ARGS="training.max_steps=100 training.output_dir=runs/short".
TRAIN_ARGS ?=

train: $(STAMP)
	$(BIN)/python examples/flava/train.py config=examples/flava/configs/pretraining/tiny.yaml $(TRAIN_ARGS)

# The CLIP recipe on the same loop: a small CLIP on the built-in shapes world, then zero-shot and retrieval.
train-clip: $(STAMP)
	$(BIN)/python examples/clip/train.py config=examples/clip/configs/tiny.yaml $(TRAIN_ARGS)

# The `make train-clip` checkpoint fine-tuned as a 30-class shapes classifier, its head the zero-shot classifier.
finetune-clip: $(STAMP)
	$(BIN)/python examples/clip/finetune.py config=examples/clip/configs/finetune_shapes.yaml $(TRAIN_ARGS)

# Zero-shot, linear probe and fine-tuning of the `make train` checkpoint on the held-out shapes task.
evaluate: $(STAMP)
	$(BIN)/python examples/flava/shapes_report.py --run runs/tiny

bench: $(STAMP)
	$(BIN)/python benchmarks/encoders.py
	$(BIN)/python benchmarks/pretrain_step.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/vit_tower.py
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/linear.py
	$(BIN)/python benchmarks/accumulation.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
