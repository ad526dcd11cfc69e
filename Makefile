# Two entry points, each builds its own .venv: `make study` (the main job) and `make test`;
# `make toy` reproduces the paper's toy claims (hours on a CPU).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

TOY     ?= outputs/toy
TOY_JOBS := localization packnorm_overlap groupnorm_groups batchnorm_stats localization_norms uninformative_inputs

.PHONY: study test toy venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,minari,ogbench]'
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python scripts/study.py

# The paper's toy claims at full strength (about 2 h on 2 cores): every toy job, then the claims judged
# from their runs into $(TOY)/summary.json. `make toy TOY=docs/results/toy` regenerates the committed ones.
toy: $(STAMP)
	for job in $(TOY_JOBS); do \
	  MPLBACKEND=Agg $(BIN)/python scripts/$$job.py hydra.run.dir=$(TOY)/$$job || exit $$?; done
	MPLBACKEND=Agg $(BIN)/python scripts/toy_summary.py $(foreach j,$(TOY_JOBS),runs.$(j)=$(TOY)/$(j)) \
	  summary=$(TOY)/summary.json hydra.run.dir=$(TOY)/summary

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -x --timeout=900

clean:
	rm -rf $(VENV) outputs multirun
