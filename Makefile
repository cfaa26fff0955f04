# Quick start: `make train` (MNIST; needs the network once) or `make train ARGS="data=digits"` (offline), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[test,optuna,export,timeseries,mlflow,text,docs,lint]"
	touch $@

.PHONY: venv train test test-all bench lint docs
venv: $(VENV)/.installed

train: venv
	$(PY) -m birnn.train $(ARGS)

test: venv  # the suite without the tests marked slow (end-to-end: servers, several processes, kills)
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=20 -m "not slow"

test-all: venv  # every test: what CI runs
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=20

bench: venv
	$(PY) -m birnn.bench $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
