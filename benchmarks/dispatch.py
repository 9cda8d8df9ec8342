"""Dispatch cost of runmaker against xargs -P and GNU parallel (issue 2).

Three figures, each a ratio of medians measured in this run:

* dispatch: 2,000 trivial jobs (``true N``) at ``-j2``, console to
  /dev/null, against ``xargs -P2 -I{} sh -c '{}'`` over the same commands
  (target at most 1.1x); GNU ``parallel -j2`` alongside for reference;
* file size: the same 2,000 jobs behind 200,000 finished (``d``) lines
  against the 2,000 alone (target at most 1.1x: finding the next job must
  not grow with the file);
* output volume: one job printing 1,000,000 lines (``seq 1000000``) through
  runmaker's tagged console into a file, against ``parallel --tag`` running
  the same command into a file (target at most 0.5x).

Run from the repository root:  python benchmarks/dispatch.py [--quick]
It prints a table and exits 0 whatever the figures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from _benchlib import (
    BenchmarkFailed,
    Row,
    Timing,
    cpu_row,
    failed_row,
    find_gnu_parallel,
    interleaved_timings,
    machine_note,
    parse_args,
    print_table,
    ratio_row,
    run_process,
    runmaker_argv,
    scratch_dir,
    skipped_row,
    states_of,
    write_job_file,
)

__all__ = ["Sizes", "measure_dispatch", "measure_file_size", "measure_output", "main"]


class Sizes:
    """Workload sizes: the issue's, or a tenth of them for ``--quick``."""

    def __init__(self, quick: bool) -> None:
        scale = 10 if quick else 1
        self.jobs = 2_000 // scale
        self.done = 200_000 // scale
        self.lines = 1_000_000 // scale


def _timed_runmaker(tmp: Path, template: Path, *options: str, stdout: Path | None = None) -> Timing:
    """Time one runmaker worker over a fresh copy of ``template``; check every job ran."""
    job_file = tmp / "runs.txt"
    shutil.copyfile(template, job_file)  # not timed: every repetition starts all pending
    measured = run_process(runmaker_argv(*options, job_file), stdout=stdout, cwd=tmp)
    measured.check("runmaker")
    left = states_of(job_file).replace("d", "")
    if left:
        raise BenchmarkFailed(f"runmaker left {len(left)} jobs not done")
    return measured.timing


def _timed(argv: list[str], tmp: Path, *, stdin: Path, stdout: Path | None = None) -> Timing:
    return run_process(argv, stdin=stdin, stdout=stdout, cwd=tmp).check(argv[0]).timing


def measure_dispatch(jobs: int, reps: int, parallel: str | None, *, workers: int = 2) -> list[Row]:
    """``jobs`` trivial jobs: one runmaker ``-jW`` against ``xargs -PW`` and ``parallel -jW``."""
    label = f"dispatch: {jobs:,} `true N` jobs, -j{workers}"
    with scratch_dir("dispatch") as d:
        tmp = Path(d)
        commands = [f"true {i}" for i in range(jobs)]
        template = tmp / "template.txt"
        write_job_file(template, commands)
        cmd_list = tmp / "commands.txt"
        cmd_list.write_text("".join(c + "\n" for c in commands))
        contenders = {
            "runmaker": lambda: _timed_runmaker(tmp, template, f"-j{workers}"),
            "xargs": lambda: _timed(
                ["xargs", f"-P{workers}", "-I{}", "sh", "-c", "{}"], tmp, stdin=cmd_list
            ),
        }
        if parallel:
            contenders["parallel"] = lambda: _timed(
                [parallel, "--will-cite", f"-j{workers}"], tmp, stdin=cmd_list
            )
        try:
            t = interleaved_timings(reps, contenders)
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 1.1x", exc)]
    rows = [
        ratio_row(f"{label} vs xargs -P{workers}", t["runmaker"].seconds, t["xargs"].seconds,
                  "xargs", 1.1),
        cpu_row(f"{label} vs xargs -P{workers}", t["runmaker"], t["xargs"], "xargs"),
    ]
    if parallel:
        rows.append(ratio_row(f"{label} vs parallel -j{workers}", t["runmaker"].seconds,
                              t["parallel"].seconds, "parallel", None))
        rows.append(ratio_row(f"reference: parallel -j{workers} vs xargs -P{workers}",
                              t["parallel"].seconds, t["xargs"].seconds, "xargs", None))
    else:
        rows.append(skipped_row(f"{label} vs parallel -j{workers}", "GNU parallel missing"))
    return rows


def measure_file_size(jobs: int, done: int, reps: int) -> list[Row]:
    """``jobs`` pending jobs behind ``done`` finished lines, against the jobs alone."""
    label = f"file size: {jobs:,} jobs after {done:,} `d` lines, -j2"
    with scratch_dir("filesize") as d:
        tmp = Path(d)
        commands = [f"true {i}" for i in range(jobs)]
        alone, behind = tmp / "alone.txt", tmp / "behind.txt"
        write_job_file(alone, commands)
        write_job_file(behind, commands, done=done)
        try:
            t = interleaved_timings(reps, {
                "behind": lambda: _timed_runmaker(tmp, behind, "-j2"),
                "alone": lambda: _timed_runmaker(tmp, alone, "-j2"),
            })
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 1.1x", exc)]
    return [
        ratio_row(label, t["behind"].seconds, t["alone"].seconds, f"{jobs:,} alone", 1.1),
        cpu_row(label, t["behind"], t["alone"], f"{jobs:,} alone"),
    ]


def measure_output(lines: int, reps: int, parallel: str | None) -> list[Row]:
    """One job printing ``lines`` lines: runmaker's tagged console against ``parallel --tag``."""
    label = f"output: one job printing {lines:,} lines, tagged, into a file"
    if not parallel:
        return [skipped_row(label, "GNU parallel missing: no baseline")]
    with scratch_dir("output") as d:
        tmp = Path(d)
        command = f"seq {lines}"
        template = tmp / "template.txt"
        write_job_file(template, [command])
        cmd_list = tmp / "commands.txt"
        cmd_list.write_text(command + "\n")
        out = tmp / "out.txt"

        def runmaker() -> Timing:
            timing = _timed_runmaker(tmp, template, "-j1", stdout=out)
            _expect_lines(out, lines + 3, "runmaker")  # executing, forked, exit lines
            return timing

        def gnu_parallel() -> Timing:
            timing = _timed([parallel, "--will-cite", "--tag"], tmp, stdin=cmd_list, stdout=out)
            _expect_lines(out, lines, "parallel --tag")
            return timing

        try:
            t = interleaved_timings(reps, {"runmaker": runmaker, "parallel": gnu_parallel})
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 0.5x", exc)]
    return [ratio_row(label, t["runmaker"].seconds, t["parallel"].seconds, "parallel --tag", 0.5)]


def _expect_lines(path: Path, count: int, who: str) -> None:
    got = path.read_bytes().count(b"\n")
    if got != count:
        raise BenchmarkFailed(f"{who} wrote {got} lines, expected {count}")


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0])
    sizes = Sizes(args.quick)
    parallel, parallel_note = find_gnu_parallel()
    rows = measure_dispatch(sizes.jobs, args.reps, parallel)
    rows += measure_file_size(sizes.jobs, sizes.done, args.reps)
    rows += measure_output(sizes.lines, args.reps, parallel)
    print_table(
        f"runmaker dispatch benchmark ({'quick, ' if args.quick else ''}"
        f"median of {args.reps}; time ratios, lower is better)",
        rows,
        notes=(["--quick: a tenth of the sizes, so start-up dominates: not the ratios the "
                "targets are about"] if args.quick else []) + [parallel_note, machine_note()],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
