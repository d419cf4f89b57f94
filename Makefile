# The two commands of the README: `make demo` (the main job) and `make test` (the suite CI runs).
.PHONY: setup demo test bench-engine

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/fedsqueeze run configs/fmnist-demo.toml --out runs/demo --overwrite

test: setup
	.venv/bin/python -m pytest -q

bench-engine: setup
	.venv/bin/fedsqueeze bench engine
