"""Peak memory of a runmaker worker whose job writes 1 GB to stdout (issue 3).

One job, ``yes XXX... | head -c 1000000000`` (100-byte lines, ten million of
them), run by one worker:

* with ``-l LOGFILE`` (only the last ``-n`` lines are kept): peak resident
  memory of the worker process, target under 50 MB;
* without ``-l``, console to /dev/null: the same figure, for reference;
* an idle worker (one ``true`` job): what Python and the module cost before
  any output, for reference;
* GNU ``parallel --tag --line-buffer`` running the same command, console to
  /dev/null (``--line-buffer`` because its default buffers the output in
  temporary files): its peak, for reference;
* a worker on a job file of 1,000,000 finished lines and one job: the cost
  of the file's index, for reference.

The peak is the process's own VmHWM, sampled from /proc while it runs.
(``os.wait4``'s ru_maxrss is no good here: Linux carries a process's peak
across exec, so every child of this Python script starts at the script's own
peak.)

Run from the repository root:  python benchmarks/memory.py [--quick]
It prints a table and exits 0 whatever the figures.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

from _benchlib import (
    BenchmarkFailed,
    Measured,
    Row,
    failed_row,
    find_gnu_parallel,
    machine_note,
    parse_args,
    print_table,
    run_process,
    runmaker_argv,
    scratch_dir,
    skipped_row,
    states_of,
    write_job_file,
)

__all__ = ["LIMIT_MB", "measure_big_file_memory", "measure_memory", "stream_command", "main"]

LIMIT_MB = 50.0


def stream_command(total_bytes: int) -> str:
    """A shell command writing ``total_bytes`` of 100-byte lines to stdout, fast."""
    return f"yes {'x' * 99} | head -c {total_bytes}"


def _runmaker_peak(tmp: Path, command: str, *options: str, done: int = 0) -> Measured:
    job_file = tmp / "runs.txt"
    write_job_file(job_file, [command], done=done)
    measured = run_process(runmaker_argv(*options, job_file), cwd=tmp, watch_memory=True)
    measured.check("runmaker")
    if states_of(job_file).strip("d"):
        raise BenchmarkFailed("runmaker left its job not 'd'")
    return measured


def _median_peak(reps: int, run) -> tuple[float, float]:
    """Median peak (MB) and median seconds of ``reps`` runs."""
    runs = [run() for _ in range(reps)]
    return (statistics.median(m.peak_mb for m in runs),
            statistics.median(m.seconds for m in runs))


def measure_memory(total_bytes: int, reps: int, parallel: str | None) -> list[Row]:
    """Rows for the worker's peak memory while one job writes ``total_bytes``."""
    size = f"{total_bytes / 1e9:g} GB" if total_bytes >= 1e9 else f"{total_bytes / 1e6:g} MB"
    command = stream_command(total_bytes)
    label = f"memory: worker peak RSS, one job writing {size}, -l LOG"
    rows: list[Row] = []
    with scratch_dir("memory") as d:
        tmp = Path(d)
        log = tmp / "log.txt"

        def with_log() -> Measured:
            log.unlink(missing_ok=True)
            measured = _runmaker_peak(tmp, command, "-l", str(log))
            if b"exit 0" not in log.read_bytes()[-500:]:
                raise BenchmarkFailed("the log has no status line for the job")
            return measured

        try:
            idle, _ = _median_peak(reps, lambda: _runmaker_peak(tmp, "true"))
            peak, seconds = _median_peak(reps, with_log)
        except BenchmarkFailed as exc:
            return [failed_row(label, f"< {LIMIT_MB:g} MB", exc)]
        rows.append(Row(label, f"{peak:.1f} MB ({seconds:.1f} s)", f"idle worker {idle:.1f} MB",
                        f"{peak:.1f} MB", f"< {LIMIT_MB:g} MB", peak < LIMIT_MB))

        console_label = "memory: same, no -l, console to /dev/null"
        try:
            peak_c, seconds_c = _median_peak(reps, lambda: _runmaker_peak(tmp, command))
            rows.append(Row(console_label, f"{peak_c:.1f} MB ({seconds_c:.1f} s)",
                            f"idle worker {idle:.1f} MB", f"{peak_c:.1f} MB", "reference", None))
        except BenchmarkFailed as exc:
            rows.append(failed_row(console_label, "reference", exc))

        parallel_label = "memory: -l worker vs parallel --tag --line-buffer"
        if parallel is None:
            rows.append(skipped_row(parallel_label, "GNU parallel missing"))
            return rows
        cmd_list = tmp / "commands.txt"
        cmd_list.write_text(command + "\n")
        try:
            peak_p, seconds_p = _median_peak(reps, lambda: run_process(
                [parallel, "--will-cite", "--tag", "--line-buffer"], stdin=cmd_list, cwd=tmp,
                watch_memory=True).check("parallel"))
            rows.append(Row(parallel_label, f"{peak:.1f} MB", f"{peak_p:.1f} MB ({seconds_p:.1f} s)",
                            f"{peak / peak_p:.2f}x", "reference", None))
        except BenchmarkFailed as exc:
            rows.append(failed_row(parallel_label, "reference", exc))
    return rows


def measure_big_file_memory(done: int, reps: int) -> list[Row]:
    """Reference: the worker's peak on a file of ``done`` finished lines and one job.

    Not an issue's target, but JobFile's promise: a million lines cost "tens
    of megabytes, not hundreds".
    """
    label = f"memory: worker peak RSS, job file of {done:,} `d` lines + 1 job"
    with scratch_dir("bigfile") as d:
        tmp = Path(d)
        try:
            idle, _ = _median_peak(reps, lambda: _runmaker_peak(tmp, "true"))
            peak, seconds = _median_peak(reps, lambda: _runmaker_peak(tmp, "true", done=done))
        except BenchmarkFailed as exc:
            return [failed_row(label, "reference", exc)]
    return [Row(label, f"{peak:.1f} MB ({seconds:.1f} s)", f"idle worker {idle:.1f} MB",
                f"{peak:.1f} MB", "reference (JobFile: tens of MB per 1M lines)", None)]


def main() -> int:
    # Memory hardly varies between runs, and each full run streams 1 GB.
    args = parse_args(__doc__.split("\n", 1)[0], reps=(2, 3))
    total = 100_000_000 if args.quick else 1_000_000_000
    parallel, parallel_note = find_gnu_parallel()
    if shutil.which("yes") is None or shutil.which("head") is None:
        print("memory benchmark skipped: needs `yes` and `head` (coreutils)")
        return 0
    rows = measure_memory(total, args.reps, parallel)
    rows += measure_big_file_memory(100_000 if args.quick else 1_000_000, args.reps)
    print_table(
        f"runmaker memory benchmark ({'quick, ' if args.quick else ''}median of {args.reps})",
        rows,
        notes=["peak = VmHWM of the process alone, sampled from /proc every 10 ms",
               parallel_note, machine_note()],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
