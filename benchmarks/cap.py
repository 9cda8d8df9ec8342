"""What a max-running cap costs the dispatch of trivial jobs (issue 5).

Ratios of medians measured in this run, the contenders interleaved:

* cap: 2,000 trivial jobs (``true N``) at ``-j2`` under
  ``#runmaker max-running 2`` against the same file without a cap
  (target at most 1.2x): every start then holds one of the file's slot locks;
* lowered cap, for reference: the same under ``max-running 8`` then
  ``max-running 2``, so that every start also asks whether a job started
  under the higher cap still holds a slot above 2.

Run from the repository root:  python benchmarks/cap.py [--quick] [--markdown]
It prints a table and exits 0 whatever the figures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from _benchlib import (
    BenchmarkFailed,
    Row,
    failed_row,
    interleaved_medians,
    machine_note,
    parse_args,
    print_table,
    ratio_row,
    run_process,
    runmaker_argv,
    scratch_dir,
    states_of,
    write_job_file,
)

__all__ = ["measure_cap", "main"]

_LIMIT = 1.2


def _job_file(path: Path, jobs: int, directives: list[str]) -> Path:
    write_job_file(path, [f"true {i}" for i in range(jobs)])
    with open(path, "ab") as f:
        # Appended as runset appends them: the last one in the file wins.
        f.write("".join(f"#runmaker {d}\n" for d in directives).encode())
    return path


def _timed_runmaker(tmp: Path, template: Path, workers: int) -> float:
    """Time one runmaker -jW over a fresh copy of ``template``; check every job ran."""
    job_file = tmp / "runs.txt"
    shutil.copyfile(template, job_file)
    measured = run_process(runmaker_argv(f"-j{workers}", job_file), cwd=tmp).check("runmaker")
    left = states_of(job_file).replace("d", "").replace("#", "")  # "#": the directives
    if left:
        raise BenchmarkFailed(f"runmaker left {len(left)} jobs not done")
    return measured.seconds


def measure_cap(jobs: int, reps: int, *, workers: int = 2) -> list[Row]:
    """``jobs`` trivial jobs at ``-jW``: capped at W, lowered to W, and uncapped."""
    label = f"cap: {jobs:,} `true N` jobs, -j{workers}"
    with scratch_dir("cap") as d:
        tmp = Path(d)
        templates = {
            "none": _job_file(tmp / "none.txt", jobs, []),
            "capped": _job_file(tmp / "capped.txt", jobs, [f"max-running {workers}"]),
            "lowered": _job_file(
                tmp / "lowered.txt", jobs, ["max-running 8", f"max-running {workers}"]
            ),
        }
        try:
            t = interleaved_medians(reps, {
                name: (lambda template=template: _timed_runmaker(tmp, template, workers))
                for name, template in templates.items()
            })
        except BenchmarkFailed as exc:
            return [failed_row(label, f"<= {_LIMIT:g}x", exc)]
    return [
        ratio_row(f"{label}, max-running {workers} vs no cap", t["capped"], t["none"],
                  "no cap", _LIMIT),
        ratio_row(f"{label}, max-running 8 then {workers} vs no cap", t["lowered"], t["none"],
                  "no cap", None),
    ]


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], markdown=True, reps=(3, 7))
    jobs = 200 if args.quick else 2_000
    rows = measure_cap(jobs, args.reps)
    print_table(
        f"runmaker cap benchmark ({'quick, ' if args.quick else ''}"
        f"median of {args.reps}; time ratios, lower is better)",
        rows,
        markdown=args.markdown,
        notes=(["--quick: a tenth of the jobs, so start-up dominates"] if args.quick else [])
        + [machine_note()],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
