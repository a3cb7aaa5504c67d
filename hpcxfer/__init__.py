"""hpcxfer: transfer-learning protocol studies on supercomputers.

The package layout is the pipeline:

    grid/      grid.yaml -> validated Grid -> list of Tasks (pure)
    layout.py  where every file of a study and a task lives
    backends/  Tasks -> scheduler scripts and submissions (local, slurm, pbs, gadi)
    worker/    one task: data -> model -> protocol -> training -> records
    collect/   records -> summary tables, the paper's tables and figures
    cli.py     the command line (plan, submit, status, collect, run-task, cancel)
"""

__version__ = "0.1.0"
