"""Scenario benchmark (issue #6): the core controller in closed loop against comparators and the
perfect-foresight optimum. Entry point: `make bench` (tools/bench/main.py). See docs/benchmarks.md."""
