# Two commands do all set-up on a fresh machine with only Python and pip:
#   make demo   -- install, build the captioned-shapes data, train a small model, evaluate it
#   make test   -- install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= runs/demo
DATA_DIR ?= data

.PHONY: install demo test test-slow notebooks bench clean

# Reinstalls only when the pins change: the stamp depends on them.
$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/lock.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mmfm.train --config experiments/configs/demo.py --workdir $(WORKDIR) --config.data.dir=$(DATA_DIR)

# Notebooks share one tiny trained model, built fresh in a temp dir each run (MMFM_NOTEBOOK_DIR).
# notebooks/conftest.py executes each notebook once and fails it when it shows fewer figures than
# the README's notebook table promises (or errors, or leaves files in notebooks/).
test: $(STAMP)
	MMFM_NOTEBOOK_DIR=$$(mktemp -d) $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=15 \
		tests notebooks

# Executes every notebook and stores it with its outputs (figures included): run after editing one.
notebooks: $(STAMP)
	MMFM_NOTEBOOK_DIR=$$(mktemp -d) $(PY) notebooks/run_notebooks.py --inplace notebooks/*.ipynb

# Multi-process, SIGKILL/resume, every-mesh and every-config runs: minutes each. CI runs these too.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow --durations=15 tests

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs
