"""All of runmaker's figures in one table, measured in one run (issue 7).

Ratios against ``xargs -P`` and GNU ``parallel`` (if installed; else
skipped with a note saying so), each beside its target:

* dispatch: 2,000 ``true N`` jobs at ``-j2`` against ``xargs -P2`` (<= 1.1x),
  and GNU ``parallel -j2`` for reference;
* file size: the 2,000 jobs behind 200,000 ``d`` lines against them alone
  (<= 1.1x);
* output volume: one job printing 1,000,000 lines through the tagged
  console against ``parallel --tag`` (<= 0.5x);
* contention: 8 runmaker workers of ``-j1`` on one file of 2,000 jobs
  against ``xargs -P8`` (and ``parallel -j8``);
* memory: the worker's peak while one job writes 1 GB with ``-l`` (< 50 MB),
  and on a job file of 1,000,000 lines (reference);

then the output of the other benchmark scripts, where they exist:
``cap.py`` (cap against no cap, <= 1.2x), ``runset_runwait.py`` (``runset
-l`` on 1M jobs < 3 s, ``runwait`` CPU < 10%) and ``tcp.py`` (TCP against
the shared file, <= 2x), ``scale.py`` (huge files and many workers: each
row with its own target), ``tree.py`` (an outline against flat, <= 1.2x)
and ``guardian.py`` (a SIGKILLed worker's jobs gone within 1 s).

Run from the repository root:
    python benchmarks/run.py [--quick] [--markdown]
``--markdown`` prints the table ready to paste into the README.  Exits 0
whatever the figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _benchlib import (
    PYTHON,
    ROOT,
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
from dispatch import Sizes, measure_dispatch, measure_file_size, measure_output
from memory import measure_big_file_memory, measure_memory

__all__ = ["OTHER_SCRIPTS", "measure_contention", "main"]

HERE = Path(__file__).resolve().parent

# The other engineers' scripts: file name, what it measures, its targets.
OTHER_SCRIPTS = [
    ("cap.py", "max-running cap against no cap", "<= 1.2x"),
    ("runset_runwait.py", "runset -l on 1M jobs; runwait's CPU", "< 3 s; < 10% CPU"),
    ("tcp.py", "TCP mode against the shared file", "<= 2x"),
    ("scale.py", "cluster scale: huge files, many workers (issue 13)", "each row's own"),
    ("tree.py", "outline of 10,000 4-step trees against flat", "<= 1.2x"),
    ("guardian.py", "a SIGKILLed worker's jobs gone", "<= 1 s"),
]
_OTHER_TIMEOUT = {True: 600, False: 3600}  # seconds, by --quick


def _timed_workers(tmp: Path, template: Path, workers: int) -> Timing:
    """Time ``workers`` runmaker -j1 processes started together on one fresh file."""
    job_file = tmp / "runs.txt"
    shutil.copyfile(template, job_file)
    with tempfile.TemporaryFile() as errors:
        started = time.monotonic()
        procs = [
            subprocess.Popen(runmaker_argv("-j1", job_file), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=errors, cwd=tmp)
            for _ in range(workers)
        ]
        codes, cpu = [], 0.0
        for proc in procs:
            _, wait_status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wait_status)  # Popen must not wait again
            codes.append(proc.returncode)
            cpu += usage.ru_utime + usage.ru_stime
        seconds = time.monotonic() - started
        if any(codes):
            errors.seek(0)
            raise BenchmarkFailed(f"runmaker workers exited {codes}: "
                                  f"{errors.read()[-300:].decode('utf-8', 'replace')}")
    left = states_of(job_file).replace("d", "")
    if left:
        raise BenchmarkFailed(f"{workers} runmaker workers left {len(left)} jobs not done")
    return Timing(seconds, cpu)


def measure_contention(jobs: int, workers: int, reps: int, parallel: str | None) -> list[Row]:
    """``workers`` runmaker -j1 processes on one file against ``xargs -P<workers>``."""
    label = f"contention: {workers} workers of -j1, one file of {jobs:,} jobs"
    with scratch_dir("contention") as d:
        tmp = Path(d)
        commands = [f"true {i}" for i in range(jobs)]
        template = tmp / "template.txt"
        write_job_file(template, commands)
        cmd_list = tmp / "commands.txt"
        cmd_list.write_text("".join(c + "\n" for c in commands))

        def baseline(argv: list[str]) -> Timing:
            return run_process(argv, stdin=cmd_list, cwd=tmp).check(argv[0]).timing

        contenders = {
            "runmaker": lambda: _timed_workers(tmp, template, workers),
            "xargs": lambda: baseline(["xargs", f"-P{workers}", "-I{}", "sh", "-c", "{}"]),
        }
        if parallel:
            contenders["parallel"] = lambda: baseline([parallel, "--will-cite", f"-j{workers}"])
        try:
            t = interleaved_timings(reps, contenders)
        except BenchmarkFailed as exc:
            return [failed_row(label, "none set", exc)]
    rows = [
        ratio_row(f"{label} vs xargs -P{workers}", t["runmaker"].seconds, t["xargs"].seconds,
                  "xargs", None),
        cpu_row(f"{label} vs xargs -P{workers}", t["runmaker"], t["xargs"], "xargs"),
    ]
    rows[0].target = "none set (dispatch: <= 1.1x)"
    if parallel:
        rows.append(ratio_row(f"{label} vs parallel -j{workers}", t["runmaker"].seconds,
                              t["parallel"].seconds, "parallel", None))
    return rows


def _run_other(script: str, quick: bool, markdown: bool) -> tuple[str, str]:
    """Run another benchmark script; return (status, its output).

    Passes on --quick and --markdown; a script that rejects an option
    (argparse's exit 2) is run again without it.
    """
    path = HERE / script
    if not path.exists():
        return "missing", ""
    options = [o for o, on in (("--quick", quick), ("--markdown", markdown)) if on]
    while True:
        try:
            done = subprocess.run([PYTHON, str(path), *options], cwd=ROOT, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=_OTHER_TIMEOUT[quick])
        except subprocess.TimeoutExpired:
            return f"timed out after {_OTHER_TIMEOUT[quick]} s", ""
        err = done.stderr.decode("utf-8", "replace")
        if done.returncode == 2 and "unrecognized arguments" in err and options:
            options.pop()  # --markdown first, then --quick
            continue
        out = done.stdout.decode("utf-8", "replace").rstrip("\n")
        if done.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-5:])
            return f"exited {done.returncode}", (out + "\n" + tail).strip("\n")
        status = "ran (quick)" if "--quick" in options else "ran (full size)"
        return status, out


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], markdown=True)
    sizes = Sizes(args.quick)
    parallel, parallel_note = find_gnu_parallel()
    started = time.monotonic()
    rows = measure_dispatch(sizes.jobs, args.reps, parallel)
    rows += measure_file_size(sizes.jobs, sizes.done, args.reps)
    rows += measure_output(sizes.lines, args.reps, parallel)
    rows += measure_contention(sizes.jobs, 8, args.reps, parallel)
    rows += measure_memory(100_000_000 if args.quick else 1_000_000_000,
                           min(args.reps, 3), parallel)
    rows += measure_big_file_memory(100_000 if args.quick else 1_000_000, min(args.reps, 3))

    outputs = []
    for script, what, target in OTHER_SCRIPTS:
        status, out = _run_other(script, args.quick, args.markdown)
        if status == "missing":
            rows.append(skipped_row(f"{what} ({script})", f"{target}; script not written yet"))
            continue
        rows.append(Row(f"{what} ({script})", status, "-", "see its output below", target, None))
        outputs.append((script, status, out))

    notes = [
        "time ratios are runmaker's median over the other tool's median, lower is better; "
        "memory is the worker's own peak (VmHWM)",
        parallel_note,
        machine_note() + f"; whole run {time.monotonic() - started:.0f} s",
        f"reproduce: python benchmarks/run.py{' --quick' if args.quick else ''}",
    ]
    if args.quick:
        notes.insert(0, "--quick: a tenth of the sizes, so start-up dominates: "
                        "the ratios are not the ones the targets are about")
    print_table(f"runmaker against xargs and GNU parallel ({'quick, ' if args.quick else ''}"
                f"median of {args.reps})", rows, markdown=args.markdown, notes=notes)
    for script, status, out in outputs:
        if args.markdown:
            print(f"**benchmarks/{script}** ({status})\n")
            print(out if "|---" in out or "| ---" in out else f"```\n{out}\n```")
            print()
        else:
            print(f"== benchmarks/{script} ({status})")
            print(out)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
