# Two commands (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CORES ?= 2

$(BIN)/dicomprep: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,slurm]'
	touch $(BIN)/dicomprep

install: $(BIN)/dicomprep

demo: install
	$(BIN)/dicomprep run demo demo-out --cores $(CORES)

test: install
	bash .ci/install-browser
	bash .ci/install-debian
	bash .ci/install-bids-validator
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

.PHONY: install demo test
