#!/bin/bash
# Workers as a Slurm job array against one shared job file.
#
#   sbatch --array=1-20 --cpus-per-task=8 --time=24:00:00 examples/slurm.sh /shared/project/runs.txt [RUNMAKER OPTIONS]
#
# Each array task is one runmaker worker using the CPUs Slurm gave it (-j0:
# the smallest of its CPU affinity, its cgroup's CPU quota and
# SLURM_CPUS_PER_TASK). Every job runs exactly once, however many tasks
# start; a task that finds nothing left ends and frees its node. Every
# argument after the job file goes to runmaker: `... runs.txt -r` reruns
# failed jobs, `... runs.txt -j2 --timeout 3600` overrides -j0.
#
# Time limits and preemption: 120 s before the limit Slurm sends SIGUSR1
# (--signal=B:USR1@120 below): runmaker claims nothing new and lets its running
# jobs finish. At the limit Slurm sends SIGTERM, and SIGKILL KillWait seconds
# later: with --requeue runmaker stops the jobs still running and puts each
# back to pending (`.`, or `+` for an urgent job), for the next task or the
# next array to run. A job should be able to start over from scratch.
#
# CPUs and time are yours to give on the sbatch command line (the site's
# defaults apply otherwise). To make them defaults of this script, take one
# `#` off these lines:
##SBATCH --cpus-per-task=8
##SBATCH --time=24:00:00
#SBATCH --job-name=runmaker
#SBATCH --signal=B:USR1@120
#SBATCH --output=runmaker-%A_%a.out
set -eu
usage="usage: sbatch --array=1-N slurm.sh /shared/path/runs.txt [RUNMAKER OPTIONS]"
# sbatch copies this script without running it, so this check runs when the
# script does: at once when run by hand, first thing in every array task.
if [ $# -lt 1 ]; then
    printf '%s\n' "slurm.sh: no job file given" "$usage" >&2
    exit 2
fi
jobs_file=$1
shift
if [ ! -f "$jobs_file" ]; then
    printf '%s\n' "slurm.sh: $jobs_file: no such job file" "$usage" >&2
    exit 2
fi
# Slurm signals the batch shell only, so it must be runmaker itself (exec).
# An early warning that comes while runmaker starts is ignored, not fatal.
trap '' USR1
exec runmaker -j0 --requeue --logfile "${jobs_file%.txt}.log" "$@" -- "$jobs_file"
