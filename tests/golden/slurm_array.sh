#!/bin/bash
#SBATCH --account=ab12
#SBATCH --array=0-2%2
#SBATCH --constraint=v100
#SBATCH --cpus-per-task=2
#SBATCH --dependency=afterok:100_0:100_1
#SBATCH --gpus-per-task=1
#SBATCH --job-name=hpcxfer-sl
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mem=3072M
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --open-mode=append
#SBATCH --output='/scratch/ab12/runs 50%%/sl/backends/slurm/logs/%A_%a.log'
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@90
#SBATCH --time=90
# Written by hpcxfer VERSION for study '/scratch/ab12/runs 50%/sl'; finetune, 3 task(s).
set -euo pipefail
export HPCXFER_THREADS=2
export OMP_NUM_THREADS=2
# srun makes the element a job step, which --signal's USR2 reaches (the batch shell it
# does not). The element runs the task on line SLURM_ARRAY_TASK_ID+1 of the chunk's task
# list and requeues itself when the worker checkpointed on that signal. A step inherits
# neither the job's CPUs per task nor (on every SLURM) its GPUs: both are asked again.
exec srun --ntasks=1 --cpus-per-task=2 --gpus-per-task=1 --unbuffered PYTHON -P -m hpcxfer.backends.slurm_element '/scratch/ab12/runs 50%/sl' '/scratch/ab12/runs 50%/sl/backends/slurm/lists/002-finetune-0.txt' 3
