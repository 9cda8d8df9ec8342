#!/bin/bash
# Workers as a Slurm job array against one shared job file.
#
#   sbatch --array=1-20 examples/slurm.sh /shared/project/runs.txt
#
# Each array task is one runmaker worker using the CPUs Slurm gave it
# (-j0 = the CPUs this process may use). Every job runs exactly once, however
# many tasks start; a task that ends early (nothing left) frees its node.
# Tasks killed by Slurm (time limit, preemption) leave their jobs lost: the
# next worker marks them `e`; rerun them with a task started with -r.
#SBATCH --job-name=runmaker
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=runmaker-%A_%a.out
set -eu
jobs_file=${1:?usage: sbatch --array=1-N slurm.sh /shared/path/runs.txt}
# Slurm sends SIGTERM before the kill at the time limit: runmaker drains
# (finishes its running jobs if it can, claims nothing new).
exec runmaker -j0 --logfile "${jobs_file%.txt}.log" "$jobs_file"
