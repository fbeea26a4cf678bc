# Set-up and the two entry points the README promises. `make demo` and `make test` create .venv
# and install the project with the pinned CPU torch on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: install demo test params

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from its exact pin, so no later requirement can pull a CUDA build
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[cpu,dev,serve]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/sigrl demo

test: $(STAMP)
	$(PY) -m pytest -q

params: $(STAMP)
	$(VENV)/bin/sigrl params --config vit-b16
