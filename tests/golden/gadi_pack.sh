#!/bin/bash
#PBS -N hpcxfer-finetune
#PBS -P ab12
#PBS -W depend=afterok:100.gadi-pbs
#PBS -j oe
#PBS -l jobfs=20GB
#PBS -l mem=190GB
#PBS -l ncpus=24
#PBS -l ngpus=2
#PBS -l storage=gdata/ab12+scratch/ab12
#PBS -l walltime=00:30:00
#PBS -l wd
#PBS -o /scratch/ab12/runs/gd/backends/gadi/logs/
#PBS -q gpuvolta
# Written by hpcxfer VERSION for study /scratch/ab12/runs/gd; finetune, 2 task(s) on 2 GPU(s) of gpuvolta: 72 SU/h, at most 36 SU.
set -euo pipefail
export HPCXFER_JOB_ID="pbs:${PBS_JOBID}"
export HPCXFER_THREADS=12
export OMP_NUM_THREADS=12
# Node-local scratch for temporary files, where the site gives one.
export TMPDIR="${PBS_JOBFS:-${TMPDIR:-/tmp}}"
# No arrays on Gadi: this job runs one task per GPU at a time from its own task list,
# taking the next unfinished one until the list or the walltime runs out. Tasks are
# given to exactly one packed job at submit, so no two jobs share a task (no locks).
exec PYTHON -P -m hpcxfer.backends.pack /scratch/ab12/runs/gd /scratch/ab12/runs/gd/backends/gadi/lists/000-finetune-0.txt --slots 2 --walltime-s 1800
