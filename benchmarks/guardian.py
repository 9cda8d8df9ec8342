"""How soon a SIGKILLed worker's jobs are gone (issue 11; SPEC 3: within a second).

A worker runs two jobs at ``-j2``, each a process group of a shell and a
``sleep``.  The worker process alone is SIGKILLed (the OOM killer's way);
its guardian sees its pipe close and SIGKILLs both groups.  Measured: the
time from the kill to the moment no process of either group is left
(no process of theirs but zombies in ``/proc``), polled every millisecond
(each look reads ``/proc``: a few milliseconds), over many repetitions.
Target: the worst at most 1 s.

Run from the repository root:  python benchmarks/guardian.py [--quick]
(``--quick``: 5 repetitions instead of 30).  Exits 0 whatever the figures.
"""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _benchlib import (
    BenchmarkFailed,
    Row,
    failed_row,
    machine_note,
    parse_args,
    print_table,
    runmaker_argv,
    scratch_dir,
)

__all__ = ["measure_guardian", "main"]

_DEADLINE = 30.0  # seconds for the jobs to start, or to go: past it the run failed


def _groups_running(pgids: set[int]) -> bool:
    """True while a process of one of these groups runs.  Zombies do not
    count: the killed jobs' parent is gone, so init reaps them when it will
    (killpg(pgid, 0) would still succeed on a group of zombies)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) in pgids:
            return True
    return False


def _has_pid(path: Path) -> bool:
    return path.exists() and path.read_text().strip().isdigit()


def _wait(what: str, ready: Callable[[], object], deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out waiting for {what}")
        time.sleep(0.001)


def _one_kill(tmp: Path) -> float:
    """Seconds from SIGKILL of a worker running two jobs to both groups gone."""
    job_file = tmp / "runs.txt"
    job = "echo $$ > pid.$RUNMAKER_LINE; sleep 600"
    job_file.write_text(f". {job}\n. {job}\n")
    for line in (1, 2):
        (tmp / f"pid.{line}").unlink(missing_ok=True)
    worker = subprocess.Popen(runmaker_argv("-q", "-j2", job_file), cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    groups: list[int] = []
    try:
        deadline = time.monotonic() + _DEADLINE
        for pid_file in (tmp / "pid.1", tmp / "pid.2"):
            _wait("the jobs to start", functools.partial(_has_pid, pid_file), deadline)
            groups.append(int(pid_file.read_text()))  # each job leads its own group
        killed = time.monotonic()
        os.kill(worker.pid, signal.SIGKILL)
        _wait("the jobs to go", lambda: not _groups_running(set(groups)), killed + _DEADLINE)
        return time.monotonic() - killed
    finally:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.kill()
        worker.wait()


def measure_guardian(reps: int) -> list[Row]:
    label = f"worker SIGKILLed alone while running 2 jobs: kill -> both job groups gone ({reps} runs)"
    with scratch_dir("guardian") as d:
        try:
            times = [_one_kill(Path(d)) for _ in range(reps)]
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 1 s", exc)]
    worst = max(times)
    return [Row(label, f"{statistics.median(times) * 1000:.1f} ms median",
                f"worst {worst * 1000:.1f} ms", f"{worst * 1000:.1f} ms", "<= 1 s", worst <= 1.0)]


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], reps=(5, 30))
    rows = measure_guardian(args.reps)
    print_table("a killed worker's jobs", rows, notes=[
        machine_note(), f"reproduce: python benchmarks/guardian.py{' --quick' if args.quick else ''}",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
