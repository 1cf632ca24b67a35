# `make demo` runs the whole pipeline on a tiny built-in example on the CPU; `make test` runs the test suite.
# Both create .venv first (scripts/setup.sh).
.PHONY: setup demo test bench-check fuzz clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m ftplan_runtime.demo

test: setup
	.venv/bin/python -m pytest

bench-check: setup
	.venv/bin/python bench/check_speed.py

fuzz: setup
	.venv/bin/python bench/fuzz.py --cases 10000

clean:
	rm -rf .demo .pytest_cache .hypothesis
