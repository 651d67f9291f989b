# The single entry point: `make demo`, `make test`, `make lint`, `make bench`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test lint bench clean-lab bpf

setup:
	@bash scripts/setup.sh

bpf:
	@$(MAKE) -s -C bpf

demo: setup
	$(VENV)/ciliary demo

test: setup lint
	bash scripts/run-tests.sh

lint: setup
	$(VENV)/ruff check src tests bench
	$(VENV)/ruff format --check src tests bench
	$(VENV)/mypy
	$(VENV)/lint-imports

bench: setup
	$(VENV)/python -m bench.run $(if $(GROUP),--only $(GROUP))

clean-lab: setup
	$(VENV)/ciliary lab down --all
