# The two commands of the README. Each creates .venv when missing, installs the
# CPU build of torch first (so no CUDA build is pulled), then the exact versions of
# the lock file, then the package itself.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
LOCK    := requirements/dev.lock
STAMP   := $(VENV)/.installed

.PHONY: demo test test-random test-latest lock weights lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scrutiny audit --robust-model digits-cnn-pgd --out audit-report

# Both runs share the tests out to $(WORKERS) processes (pytest-xdist), a test file per process
# at a time so that module fixtures are built once; WORKERS=0 runs them in this process.
WORKERS ?= 2

# file order, one torch thread per process
test: $(STAMP)
	$(BIN)/python -m pytest -p no:randomly -n $(WORKERS) --dist loadfile

# random order (pytest-randomly), one torch thread in the first process and two in the other
# (so that a test file meets either, whichever process draws it); the seed is printed first:
# rerun an order with `make test-random SEED=N`
test-random: $(STAMP)
	@seed=$${SEED:-$$(date +%s)}; echo "random order: --randomly-seed=$$seed"; \
	    SCRUTINY_TEST_THREADS=mixed $(BIN)/python -m pytest --randomly-seed=$$seed \
	    -n $(WORKERS) --dist loadfile

# the newest releases pyproject.toml's ranges allow (torch stays $(TORCH)), in a venv of its own
test-latest:
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet "$(TORCH)"
	.venv-latest/bin/pip install --quiet --upgrade -e ".[dev]"
	.venv-latest/bin/pip freeze --exclude-editable > .venv-latest/versions.txt
	.venv-latest/bin/python -m pytest -p no:randomly

# refresh the lock file from pyproject.toml (pip-tools), torch pinned by requirements/torch.txt
lock: $(BIN)/python
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile pyproject.toml --quiet --upgrade --extra dev --strip-extras \
	    -c requirements/torch.txt --unsafe-package torch --no-emit-index-url \
	    --no-emit-find-links -o $(LOCK)

# retrain the shipped zoo and test-fixture weights (after a recipe or architecture change)
weights: $(STAMP)
	$(BIN)/python -c "import torch; torch.set_num_threads(1); \
	    from scrutiny.models.zoo import ship; ship()"
	$(BIN)/python -m tests.fixture_models

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-latest audit-report
