# Two entry points, each builds its own .venv: `make study` (the main job) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: study test venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,minari,ogbench]'
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python scripts/study.py

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -x --timeout=900

clean:
	rm -rf $(VENV) outputs multirun
