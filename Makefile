# Quick start: `make train` (MNIST; needs the network once) or `make train ARGS="data=digits"` (offline), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

# One venv; each target installs what it runs into it, once (a stamp per set): training needs birnn alone.
EXTRAS_train :=
EXTRAS_test := [test,optuna,export,timeseries,mlflow,tables,text]
EXTRAS_lint := [lint]
EXTRAS_docs := [docs]

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e ".$(EXTRAS_$*)"
	touch $@

.PHONY: venv train test test-all bench lint docs
venv: $(VENV)/.installed-train $(VENV)/.installed-test $(VENV)/.installed-lint $(VENV)/.installed-docs  # every extra

train: $(VENV)/.installed-train
	$(PY) -m birnn.train $(ARGS)

test: $(VENV)/.installed-test  # the suite without the tests marked slow (end-to-end: servers, several processes, kills)
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=20 -v -m "not slow"

test-all: $(VENV)/.installed-test  # every test: what CI runs
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=20 -v

bench: $(VENV)/.installed-train
	$(PY) -m birnn.bench $(ARGS)

lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
