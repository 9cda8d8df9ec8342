"""NFS RPCs per claimed job, on real NFS between separate kernels (issue 12).

Boots the NFS tests' lab (``tests/nfs/umlnfs.py``: an NFS server and three
clients, each a User-mode Linux kernel; needs root, /dev/shm and the Debian
package mirror on the first run) and runs 3 hosts x ``runmaker -q -j4`` over
600 trivial jobs (``true N``) on NFSv4.2, twice:

* small: a file of just the 600 jobs;
* big: the same 600 jobs below 200,000 finished (``d``) lines.

Each client's RPCs on the mount are counted from its
``/proc/self/mountstats`` (per-operation counts, summed) before and after;
the figure is all three clients' RPCs divided by the 600 claimed jobs.

Run from the repository root:  python benchmarks/nfs_rpc.py [--quick]
(--quick: 150 jobs, 50,000 finished lines).  It prints the figures and
exits 0 whatever they are; it exits 1 if the jobs did not all run once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from nfs.umlnfs import Guest, Lab, prepare

__all__ = ["main", "measure", "mount_rpcs"]

_MOUNT = "/n4"


def mount_rpcs(mountstats: str, mountpoint: str) -> Counter[str]:
    """RPCs per NFS operation of the mount at ``mountpoint``, from the text
    of /proc/self/mountstats (its "per-op statistics": ``OP: ops trans ...``)."""
    counts: Counter[str] = Counter()
    mine = False
    for line in mountstats.splitlines():
        if line.startswith("device "):
            mine = f" mounted on {mountpoint} " in line
        elif mine and line.startswith("\t") and ":" in line:
            op, _, rest = line.strip().partition(":")
            fields = rest.split()
            if op.isupper() and len(fields) >= 8 and fields[0].isdigit():
                counts[op] += int(fields[0])
    return counts


def _rpcs(guest: Guest) -> Counter[str]:
    return mount_rpcs(guest.sh("cat /proc/self/mountstats").out, _MOUNT)


def measure(lab: Lab, name: str, jobs: int, finished: int) -> tuple[int, Counter[str], float]:
    """Run ``jobs`` trivial jobs below ``finished`` done lines on 3 hosts x -j4.

    Returns (RPCs of all clients, RPCs per operation, wall seconds).
    """
    d = f"{_MOUNT}/bench-{name}"
    text = "".join(f"d true {i}\n" for i in range(finished)) + "".join(f". true {i}\n" for i in range(jobs))
    c0 = lab.clients[0]
    c0.sh(f"rm -rf {d}; mkdir -p {d}; cp {lab.put(f'{name}.txt', text)} {d}/runs.txt; sync")
    before = [_rpcs(c) for c in lab.clients]
    t0 = time.monotonic()
    workers = [c.start(f"runmaker -q -j4 {d}/runs.txt") for c in lab.clients]
    results = [w.wait(1800) for w in workers]
    wall = time.monotonic() - t0
    after = [_rpcs(c) for c in lab.clients]
    per_op: Counter[str] = Counter()
    for b, a in zip(before, after, strict=True):
        per_op.update(a)
        per_op.subtract(b)
    left = c0.sh(f"grep -c -v '^d' {d}/runs.txt", check=False).out.strip()
    if any(r.rc != 0 for r in results) or left != "0":
        raise SystemExit(f"{name}: workers exited {[r.rc for r in results]}, {left} lines not done")
    c0.sh(f"rm -rf {d}")
    return sum(per_op.values()), +per_op, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 jobs below 50,000 finished lines")
    args = parser.parse_args(argv)
    jobs, finished = (150, 50_000) if args.quick else (600, 200_000)
    why = prepare()
    if why:
        print(f"skipped: {why}")
        return 0
    lab = Lab(Path(tempfile.mkdtemp(prefix="rmk-nfs-bench-")))
    try:
        lab.start()
        figures = {}
        for name, done in (("small", 0), ("big", finished)):
            total, per_op, wall = measure(lab, name, jobs, done)
            figures[name] = total / jobs
            top = ", ".join(f"{op} {n / jobs:.1f}" for op, n in per_op.most_common(6))
            print(f"{name:5}: {jobs} jobs below {done:,} finished lines, 3 hosts x -j4 on NFSv4.2: "
                  f"{total} RPCs, {total / jobs:.1f} per claimed job ({wall:.1f} s); per job: {top}")
        print(f"big/small: {figures['big'] / figures['small']:.2f}x RPCs per claimed job")
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
