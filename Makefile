# The two entry points of a fresh machine (see README.md).
.PHONY: setup quickstart test

setup:
	./scripts/setup.sh

# A small real transfer-learning study on the local backend, then its summary table.
quickstart: setup
	.venv/bin/hpcxfer submit jobs/quickstart.yaml --backend local --wait
	.venv/bin/hpcxfer collect runs/quickstart

# The test suite; starts the one-node SLURM cluster the scheduler tests submit to.
test: setup
	@if [ -x .ci/slurm-up.sh ]; then .ci/slurm-up.sh; fi
	.venv/bin/python -m pytest -q
