"""An outline of per-item pipelines against the same jobs flat (issue 14).

10,000 items, each a 4-step tree as SPEC section 1 writes one (a first
step; below it two children, the first with a child of its own):

    . true 17 dump
    .   true 17 compress
    .     true 17 upload
    .   true 17 restore

40,000 jobs of ``true`` at ``-j8``, against the same 40,000 commands with no
indent (no dependencies).  Target: at most 1.2x (finding the next job must
not rescan waiting subtrees).  Until the outline exists the indented jobs
just run in file order, so the ratio is then that of the indent alone.

Run from the repository root:  python benchmarks/tree.py [--quick]
(``--quick``: 1,000 items).  Prints a table and exits 0 whatever the figures.
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
    interleaved_timings,
    machine_note,
    parse_args,
    print_table,
    ratio_row,
    run_process,
    runmaker_argv,
    scratch_dir,
    states_of,
)

__all__ = ["STEPS", "main", "measure_tree"]

# (indent, step name) of one item's tree.
STEPS = ((0, "dump"), (2, "compress"), (4, "upload"), (2, "restore"))


def _write(path: Path, items: int, *, indented: bool) -> None:
    with open(path, "wb") as f:
        f.write(b"".join(
            b". %s%s\n" % (b" " * indent if indented else b"", b"true %d %s" % (i, name.encode()))
            for i in range(items) for indent, name in STEPS
        ))


def _timed(tmp: Path, template: Path, jobs: int) -> Timing:
    job_file = tmp / "runs.txt"
    shutil.copyfile(template, job_file)
    measured = run_process(runmaker_argv("-j8", "-q", job_file), cwd=tmp).check("runmaker")
    if states_of(job_file).count("d") != jobs:
        raise BenchmarkFailed("runmaker left jobs not done")
    return measured.timing


def measure_tree(items: int, reps: int) -> list[Row]:
    jobs = items * len(STEPS)
    label = f"{items:,} items x a {len(STEPS)}-step tree ({jobs:,} `true` jobs), -j8"
    with scratch_dir("tree") as d:
        tmp = Path(d)
        tree, flat = tmp / "tree.txt", tmp / "flat.txt"
        _write(tree, items, indented=True)
        _write(flat, items, indented=False)
        try:
            t = interleaved_timings(reps, {
                "tree": lambda: _timed(tmp, tree, jobs),
                "flat": lambda: _timed(tmp, flat, jobs),
            })
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 1.2x", exc)]
    return [
        ratio_row(f"{label} vs the same jobs flat", t["tree"].seconds, t["flat"].seconds,
                  "flat", 1.2),
        cpu_row(f"{label} vs the same jobs flat", t["tree"], t["flat"], "flat"),
    ]


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], reps=(1, 3))
    rows = measure_tree(1_000 if args.quick else 10_000, args.reps)
    print_table(f"runmaker outline benchmark ({'quick, ' if args.quick else ''}"
                f"median of {args.reps}; time ratios, lower is better)", rows,
                notes=[machine_note(), (f"reproduce: python benchmarks/tree.py"
                                       f"{' --quick' if args.quick else ''}")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
