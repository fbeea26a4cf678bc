# Set-up and the two entry points the README promises. `make demo` and `make test` create .venv
# and install the project with the pinned CPU torch on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast lint params perf-analyzer bench-quick

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from its exact pin, so no later requirement can pull a CUDA build
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[cpu,dev,serve,bench]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/sigrl demo

test: $(STAMP)
	$(PY) -m pytest -q

# The suite without the tests marked slow (a few hundred training steps, the real-server security probes).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# ruff (style, imports, common bugs) and mypy (types) on the package, both configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check sigrl tests benchmarks export
	$(VENV)/bin/mypy

params: $(STAMP)
	$(VENV)/bin/sigrl params --config vit-b16

# perf_analyzer 2.51 (matching the bundled Triton) ships in the tritonclient 2.51.0 manylinux wheel, which is
# installed beside the project, not into .venv (that keeps the pure-Python tritonclient it was tested with).
# The binary asks for libb64.so.0d and libcudart.so.12 by those names; nvidia-pytriton bundles both under
# hashed names, so lib/ links them (`sigrl bench` puts lib/ on LD_LIBRARY_PATH).
PERF_ANALYZER := tools/perf_analyzer
perf-analyzer: $(PERF_ANALYZER)/lib/libb64.so.0d

$(PERF_ANALYZER)/lib/libb64.so.0d: $(STAMP)
	$(PY) -m pip install -q --no-deps --target $(PERF_ANALYZER) tritonclient==2.51.0
	mkdir -p $(PERF_ANALYZER)/lib
	libs=$$($(PY) -c "from sigrl.serving.server import bundled_libs_dir; print(bundled_libs_dir())") && \
	ln -sf $$libs/libcudart-*.so.12* $(PERF_ANALYZER)/lib/libcudart.so.12 && \
	ln -sf $$libs/libb64-*.so.0d $(PERF_ANALYZER)/lib/libb64.so.0d
	LD_LIBRARY_PATH=$(PERF_ANALYZER)/lib $(PERF_ANALYZER)/bin/perf_analyzer --version

bench-quick: $(STAMP) perf-analyzer
	$(VENV)/bin/sigrl bench --config tiny --quick --out runs/bench-tiny
