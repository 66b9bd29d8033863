# unipipe: two commands do everything on a fresh clone.
#   make demo   set up .venv, then run the whole pipeline on the bundled real data
#   make test   set up .venv, then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CORES ?= 2
BIN = $(VENV)/bin

.PHONY: setup demo test test-fast lint format bench clean

setup: $(VENV)/.installed

# Reinstall when the pins change; torch/torchvision come from the machine's local wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[workflow,dev]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --profile profiles/local

test: setup
	$(BIN)/pytest -n 2 --dist loadfile --durations=30

test-fast: setup
	$(BIN)/pytest -n 2 -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks workflow
	$(BIN)/ruff format --check src tests benchmarks workflow
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

format: setup
	$(BIN)/ruff format src tests benchmarks workflow
	$(BIN)/ruff check --fix src tests benchmarks workflow
	$(BIN)/snakefmt Snakefile workflow/rules


# .snakemake/ stays: it records how the outputs of every results_dir were made.
clean:
	rm -rf results logs
