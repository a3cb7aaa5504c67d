#!/bin/bash
#PBS -J 0-2
#PBS -N hpcxfer-finetune
#PBS -P ab12
#PBS -W depend='afterok:100[].pbs'
#PBS -j oe
#PBS -l select=1:ncpus=2:mem=3072mb:ngpus=1
#PBS -l walltime=1:30:00
#PBS -o /scratch/ab12/runs/pb/backends/pbs/logs/
#PBS -q gpu
# Written by hpcxfer VERSION for study /scratch/ab12/runs/pb; finetune, 3 task(s).
set -euo pipefail
export HPCXFER_JOB_ID="pbs:${PBS_JOBID}"
export HPCXFER_THREADS=2
export OMP_NUM_THREADS=2
# Node-local scratch for temporary files, where the site gives one.
export TMPDIR="${PBS_JOBFS:-${TMPDIR:-/tmp}}"
# Subjob PBS_ARRAY_INDEX runs the task on line PBS_ARRAY_INDEX+1 of the chunk's task list.
task=$(sed -n "$((PBS_ARRAY_INDEX + 1))p" /scratch/ab12/runs/pb/backends/pbs/lists/001-finetune-0.txt)
# exec: the worker itself gets PBS's SIGTERM at walltime or qdel and checkpoints within
# kill_delay; the next `hpcxfer submit` resumes it (PBS users cannot requeue).
exec PYTHON -P -m hpcxfer run-task /scratch/ab12/runs/pb "$task"
