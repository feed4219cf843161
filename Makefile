# The two commands of the README:
#   make demo   set everything up and run the end-to-end demo on this machine
#   make test   set everything up and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean

setup:
	@bash scripts/setup.sh test

demo:
	@bash scripts/setup.sh demo
	@$(PY) -m opsrg.ops.demo

# The tests mostly wait (on tmux, sshd, Slurm); on TEST_WORKERS pytest-xdist workers (0: one
# process) they overlap. Each Slurm module stays on one worker (--dist loadgroup).
TEST_WORKERS ?= 3

test: setup
	@$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	@$(VENV)/bin/ruff check opsrg tests tasks.py bench

clean:
	rm -rf .opsrg artifacts
