# Two commands matter on a fresh machine: `make sim` and `make test`. Everything they need
# (virtualenv, pip packages, the 32-bit MicroPythons: npm's WebAssembly port and a fixed-heap unix
# build from ../shared/micropython) is installed here, idempotently.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
BUILD  := build
MP32   := $(BUILD)/mp32
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all sim sim-day test bench-core bench bench-heap bench-latency deps clean help build deploy repl logs prereqs faults fleet fleet-bench

help:
	@echo "make sim         firmware on MicroPython controls a simulated site over Modbus RTU (60 s)"
	@echo "make sim-day     the control core alone against the site model for one simulated day"
	@echo "make test        run all tests (CPython, MicroPython unix, 32-bit MicroPython, mpy-cross)"
	@echo "make bench-core  core step and whole-cycle time, allocation, heap and .mpy sizes"
	@echo "make bench-heap  smallest fixed 32-bit heap the deployed firmware runs in (.mpy and frozen)"
	@echo "make bench-latency  meter step -> new setpoint written, worst timing (firmware on the unix port)"
	@echo "make bench       scenario benchmark vs comparators and the LP optimum (docs/benchmarks.md)"
	@echo "make faults      fault-injection suite, full (~25 min): table in out/faults.md (docs/reliability.md)"
	@echo "make fleet       the whole VPP on one machine, the heat-advisory day at 30x: broker, twins, firmware, service, console :8080"
	@echo "make fleet-bench fleet at scale on loopback: twins + real firmware, plan, push, ingest (docs/fleet.md)"
	@echo "make build BOARD=esp32                 device filesystem in build/device/BOARD, .mpy sizes"
	@echo "make deploy BOARD=esp32 PORT=/dev/ttyUSB0 [VALUES=site.env] [SITE=site.json] [NAME=VALUE ...]"
	@echo "                 copy what changed, write site.json, soft reset, boot log (docs/deploy.md)"
	@echo "make repl PORT=...   REPL on the board (Ctrl-] leaves)    make logs PORT=...   the board's output"

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

# Third-party MicroPython packages (umodbus, umqtt.simple): sdist -> build/vendor/, never committed.
$(BUILD)/vendor/.stamp: tools/fetch_vendor.py $(VENV)/.stamp
	$(VPY) tools/fetch_vendor.py --dest $(BUILD)/vendor
	touch $@

# 32-bit MicroPython unix port with a fixed heap (-X heapsize), built from source (gcc-multilib).
$(BUILD)/mp32fixed/micropython: tools/mp32fixed.py $(VENV)/.stamp
	$(VPY) tools/mp32fixed.py

deps: $(VENV)/.stamp $(MP32)/.stamp $(BUILD)/vendor/.stamp $(BUILD)/mp32fixed/micropython

# System packages `make test` needs (mosquitto, openssl, node/npm, gcc-multilib): installed as root,
# else one line naming the missing ones.
prereqs:
	@bash tools/prereqs.sh

# The main job: firmware on the MicroPython unix port against the Modbus RTU site simulator.
sim: deps
	$(VPY) tools/sim_fil.py $(if $(MQTT),--mqtt "$(MQTT)")

# The control core alone against the physics model, one simulated day in about a second.
sim-day: $(VENV)/.stamp
	$(VPY) tools/sim.py

test: prereqs deps $(VENV)/.stamp-bench $(VENV)/.stamp-fleet
	$(VPY) -m pytest -q --durations=15 host_tests

# Bisects the smallest heap that passes the fixed-heap run (tools/heapfit.py), .mpy and frozen.
bench-heap: deps
	$(VPY) tools/mp32fixed.py --frozen
	@mkdir -p out
	$(VPY) tools/heapfit.py --search 80000 130000 --cycles 300 > out/heapfit-mpy.json
	$(VPY) tools/heapfit.py --frozen --search 30000 80000 --cycles 300 > out/heapfit-frozen.json
	@$(VPY) -c "import json; [print('%-7s smallest passing heap: %s bytes' % (k, json.load(open('out/heapfit-%s.json' % k))['smallest_passing'])) for k in ('mpy', 'frozen')]"

bench-latency: deps
	$(VPY) tools/bench_latency.py

# Every fault class of issue 10 against the real firmware, with figures (tools/faults.py; the
# bounds are asserted by host_tests/test_faults.py in make test). FAULTS_ARGS=--quick: ~10 min.
faults: prereqs deps
	@mkdir -p out
	$(VPY) tools/faults.py --out out/faults.json --md out/faults.md $(FAULTS_ARGS)

bench-core: deps
	$(VPY) tools/bench_core.py

clean:
	rm -rf $(BUILD) out .pytest_cache .hypothesis

# Scenario benchmark (issue #6): its own pinned requirements on top of the venv, its own stamp.
$(VENV)/.stamp-bench: requirements-bench.txt $(VENV)/.stamp
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	cp requirements-bench.txt $@

# Fleet side (issue 12, tools/fleet): its own pinned requirements, its own stamp.
# make fleet-bench: 800 twins by default; FLEET_BENCH_ARGS="--devices 10000 --plan-sites 10000" for the large fleet.
# make fleet: the whole VPP on one machine until Ctrl-C (tools/fleet/demo.py; console on :8080).
fleet: prereqs deps $(VENV)/.stamp-bench $(VENV)/.stamp-fleet
	$(VPY) tools/fleet/demo.py $(FLEET_ARGS)

fleet-bench: prereqs deps $(VENV)/.stamp-bench $(VENV)/.stamp-fleet
	@mkdir -p out
	$(VPY) tools/fleet/fleet_bench.py $(FLEET_BENCH_ARGS)

$(VENV)/.stamp-fleet: requirements-fleet.txt $(VENV)/.stamp-bench
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-fleet.txt
	cp requirements-fleet.txt $@

bench: $(VENV)/.stamp-bench
	$(VPY) tools/bench/main.py $(BENCH_ARGS)

# Boards and deployment (issue #5, docs/deploy.md). Site config values: VALUES=file of NAME=VALUE
# lines and/or NAME=VALUE on the make line (names in tools/site.template.json), or SITE=a JSON file.
SITE_VARS := $(strip $(foreach v,$(filter-out BOARD PORT VALUES SITE FROZEN LOG_S SECONDS,$(.VARIABLES)),$(if $(filter command line,$(origin $(v))),$(v)=$($(v)))))
build: deps
	$(VPY) tools/build.py "$(BOARD)"

deploy: deps
	$(VPY) tools/deploy.py deploy --board "$(BOARD)" --port "$(PORT)" $(if $(VALUES),--values "$(VALUES)") \
		$(if $(SITE),--site "$(SITE)") $(if $(FROZEN),--frozen) $(if $(LOG_S),--log-seconds $(LOG_S)) $(SITE_VARS)

repl: $(VENV)/.stamp
	@test -n "$(PORT)" || { echo "PORT missing, e.g. make repl PORT=/dev/ttyUSB0" >&2; exit 2; }
	$(VENV)/bin/mpremote connect "$(PORT)" resume repl

logs: $(VENV)/.stamp
	$(VPY) tools/deploy.py logs --port "$(PORT)" $(if $(SECONDS),--seconds $(SECONDS))
