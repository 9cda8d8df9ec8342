#!/usr/bin/env python3
"""runset and runwait on a job file of 1,000,000 jobs: wall time and CPU share.

Builds the file in a temporary directory: a quarter of the jobs done, eight
running (their job locks held by a helper process, as a worker would), the
rest pending, so runwait keeps waiting.  Then it measures, with real
processes of the checkout's commands:

- ``runset -l FILE > /dev/null``: wall time, median of three (target < 3 s),
  and its CPU time, which a busy machine disturbs less;
- ``runwait FILE`` polling at the default interval (1 s) for about ten
  seconds: its CPU time from the child's resource usage (wait4), as a share
  of one core (target < 10 %), both over the whole run and for the polling
  alone (the run minus a run that stops after its first look, which pays
  the start-up and the first indexing of the file).

Prints the figures and exits 0; it asserts nothing.

    python benchmarks/runset_runwait.py [--jobs N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Compiled modules go to a cache outside the checkout (this process and the
# commands it starts): a benchmark writes nothing into the checkout.
sys.pycache_prefix = os.path.join(tempfile.gettempdir(), "runmaker-bench-pycache")
os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix

__all__ = ["main"]

_RUNNING = 8

# The helper that holds the running jobs' locks: exactly what a worker holds.
_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import runmaker
jobfile = runmaker.JobFile(sys.argv[2])
jobfile.read()
for index in range(int(sys.argv[3])):
    runmaker._lock_byte(jobfile.fd, jobfile.offsets[index], exclusive=True, wait=False)
print("held", flush=True)
time.sleep(3600)
"""


def _write_job_file(path: Path, jobs: int) -> None:
    done = jobs // 4
    with open(path, "w", encoding="ascii") as f:
        for i in range(jobs):
            state = "r" if i < _RUNNING else "d" if i < done else "."
            f.write(f"{state} ./simulate --seed {i} --out results/{i:07d}.csv\n")


def _timed(argv: list[str]) -> tuple[float, float]:
    """Run a process to its end; return its wall time and CPU time (user + system)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped by wait4
    return time.monotonic() - started, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runmaker-bench-") as tmp:
        path = Path(tmp) / "runs.txt"
        _write_job_file(path, args.jobs)
        size = path.stat().st_size
        holder = subprocess.Popen(
            [PYTHON, "-c", _HOLDER, str(ROOT), str(path), str(_RUNNING)], stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            runset = [PYTHON, str(ROOT / "runset.py"), "-l", str(path)]
            listed = [_timed(runset) for _ in range(3)]
            runwait = [PYTHON, str(ROOT / "runwait.py"), str(path), "--timeout"]
            first_wall, first_cpu = _timed(runwait + ["0.001"])
            wall, cpu = _timed(runwait + [str(args.seconds)])
        finally:
            holder.kill()
            holder.wait()
    polling = (cpu - first_cpu) / (wall - first_wall)
    print(f"job file: {args.jobs:,} jobs, {size / 1e6:.1f} MB, {_RUNNING} running (locks held)")
    walls = [w for w, _ in listed]
    print(f"runset -l > /dev/null: {statistics.median(walls):.2f} s wall "
          f"(median of {', '.join(f'{w:.2f}' for w in walls)}; target < 3 s), "
          f"{statistics.median(c for _, c in listed):.2f} s CPU")
    print(f"runwait, start-up and first look: {first_wall:.2f} s wall, {first_cpu:.2f} s CPU")
    print(f"runwait, {wall:.1f} s at --interval 1: {cpu:.2f} s CPU = {100 * cpu / wall:.1f} % of one core "
          f"overall, {100 * polling:.1f} % while polling (target < 10 %)")


if __name__ == "__main__":
    main()
