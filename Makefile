# The two entry points of a fresh machine (see README.md).
.PHONY: setup quickstart lint test wheel

# Everything: hpcxfer with every extra, the test tools and the one-node SLURM cluster's packages.
setup:
	./scripts/setup.sh test

# A small real transfer-learning study on the local backend, then its summary table and
# each protocol's paired difference from scratch (the README's quick-start table).
# It installs only what that needs (the images and hpcxfer[train]: no SLURM, no test tools).
quickstart:
	./scripts/setup.sh quickstart
	.venv/bin/hpcxfer submit jobs/quickstart.yaml --backend local --wait
	.venv/bin/hpcxfer collect runs/quickstart --view cells,paired --ref scratch

# The static checks, first and fast: ruff, the import contracts of docs/design.md §7
# ([tool.importlinter] in pyproject.toml) and mypy on the typed core ([tool.mypy]).
lint: setup
	.venv/bin/ruff check hpcxfer
	.venv/bin/lint-imports --no-cache
	.venv/bin/mypy

# The test suite, after the static checks; starts the one-node SLURM cluster the scheduler
# tests submit to.
test: lint
	@if [ -x .ci/slurm-up.sh ]; then .ci/slurm-up.sh; fi
	.venv/bin/python -m pytest -q --durations=25

# A wheel of hpcxfer in dist/ (templates and example grids inside); tests/test_install.py
# builds one the same way, installs it into a fresh venv and runs it outside the clone.
wheel: setup
	.venv/bin/python -m pip wheel --no-deps -q -w dist .
