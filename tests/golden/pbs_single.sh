#!/bin/bash
#PBS -N hpcxfer-pretrain
#PBS -P ab12
#PBS -j oe
#PBS -l select=1:ncpus=2:mem=3072mb:ngpus=1
#PBS -l walltime=1:30:00
#PBS -o /scratch/ab12/runs/pb/backends/pbs/logs/
#PBS -q gpu
# Written by hpcxfer VERSION for study /scratch/ab12/runs/pb; pretrain, 1 task(s).
set -euo pipefail
export HPCXFER_JOB_ID="pbs:${PBS_JOBID}"
export HPCXFER_THREADS=2
export OMP_NUM_THREADS=2
# Node-local scratch for temporary files, where the site gives one.
export TMPDIR="${PBS_JOBFS:-${TMPDIR:-/tmp}}"
task=pt-s0-abc
# exec: the worker itself gets PBS's SIGTERM at walltime or qdel and checkpoints within
# kill_delay; the next `hpcxfer submit` resumes it (PBS users cannot requeue).
exec PYTHON -P -m hpcxfer run-task /scratch/ab12/runs/pb "$task"
