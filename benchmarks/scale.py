"""Cluster scale: what a worker, runwait and runset cost on huge job files (issue 13).

Every row of issue 13's table, measured in one run with real processes of
the checkout's commands, each beside its target:

* idle ``--follow`` worker on a file of 1,000,000 finished lines: bytes it
  reads per second once it has indexed the file (target <= 64 KiB/s); how
  soon it runs a job appended with ``runset --add`` (SPEC: within 0.1 s) and
  one set back to ``.`` in place with ``runset --set`` (about a second);
* busy worker: 400 jobs of ``sleep 0.05`` at ``-j4`` after 1,000,000
  finished lines: bytes read per job beyond its start-up (<= 16 KiB), wall
  against the same 400 jobs alone (<= 1.1x), its peak memory (<= 40 MB);
* ``runwait`` on a file of 1,000,000 lines, default interval: bytes read per
  second (<= 1 MB/s), and how soon it ends once the last jobs are set done;
* ``runset --summary`` / ``-l`` / ``--json`` on 5,000,000 jobs: wall time
  (<= 2 s / 5 s / 8 s) and the summary's peak memory (<= 100 MB);
* dispatch: 2,000 ``true N`` at ``-j2`` against ``xargs -P2`` (<= 1.1x);
* 16 workers of ``-j1`` on one file of 5,000 trivial jobs: wall against
  ``xargs -P16`` (<= 1.3x), and job-lock attempts per claimed job (<= 2),
  counted by the workers themselves in a separate run: each appends its
  attempts and refusals to the file RUNMAKER_LOCK_COUNTS names as it ends.

Bytes read are ``rchar`` of ``/proc/PID/io``: every byte the process's
read/pread calls returned, page cache or not (``read_bytes`` counts only
what came from the disk, which a cached file never does).  On NFS each byte
a worker reads after taking a lock goes to the server again, so rchar is
the server's load.  Beware: Linux adds a reaped child's rchar to its parent,
so a busy worker's figure includes its jobs' own reads (the dynamic loader
reading ELF headers: about a kilobyte or two a job).  The end totals are
read from the exited worker before it is reaped (``waitid(WNOWAIT)``).
Peak memory is VmHWM of the process alone, sampled every 10 ms.

Files go under a temporary directory.  Run from the repository root:
    python benchmarks/scale.py [--quick]
``--quick`` shrinks every size (a tenth, or less); its figures show the
shape, not the targets' sizes.  Exits 0 whatever the figures.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _benchlib import (
    PYTHON,
    ROOT,
    BenchmarkFailed,
    Row,
    failed_row,
    machine_note,
    parse_args,
    print_table,
    ratio_row,
    read_hwm,
    run_process,
    runmaker_argv,
    scratch_dir,
    states_of,
)
from dispatch import measure_dispatch

__all__ = ["Sizes", "main"]

KIB = 1024
_CHUNK = 100_000  # lines generated per write
_DEADLINE = 600.0  # seconds any one process may take before the row fails


class Sizes:
    """The issue's sizes, or smaller ones for ``--quick``."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.finished = 100_000 if quick else 1_000_000
        self.busy_jobs = 100 if quick else 400
        self.idle_window = 4.0 if quick else 30.0  # a loaded machine rescans less often
        self.runset_jobs = 500_000 if quick else 5_000_000
        self.dispatch_jobs = 200 if quick else 2_000
        self.contention_jobs = 500 if quick else 5_000
        self.workers = 16
        self.promptness_tries = 3 if quick else 5


# --------------------------------------------------------------------------
# Processes: bytes read, peak memory
# --------------------------------------------------------------------------


def _proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io as a dict (rchar, read_bytes, ...)."""
    with open(f"/proc/{pid}/io", "rb") as f:
        return {k.decode(): int(v) for k, v in (line.split(b":") for line in f if b":" in line)}


@dataclass
class Ended:
    """One process run to its end: wall, bytes read, peak memory, status."""

    seconds: float
    rchar: int
    hwm_mb: float
    returncode: int
    stderr: str

    def check(self, what: str, *codes: int) -> Ended:
        if self.returncode not in (codes or (0,)):
            raise BenchmarkFailed(f"{what} exited {self.returncode}: {self.stderr.strip()[-300:]}")
        return self


class Live:
    """A process started now; its reading and memory looked at while it runs."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], *, cwd: Path) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in wait)
        self.started = time.monotonic()
        self.proc = subprocess.Popen([os.fspath(a) for a in argv], cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
        self.hwm = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> bool:
        """True once it exited (left a zombie: /proc/PID/io stays readable)."""
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    def rchar(self) -> int:
        return _proc_io(self.pid)["rchar"]

    def sample(self) -> None:
        self.hwm = max(self.hwm, read_hwm(f"/proc/{self.pid}/status") or 0.0)

    def wait(self, timeout: float = _DEADLINE) -> Ended:
        """Wait for its end, sampling memory; the totals come from its zombie."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                self.kill()
                raise BenchmarkFailed(f"{self.proc.args[:3]} still running after {timeout:g} s")
            self.sample()
            time.sleep(0.01)
        seconds = time.monotonic() - self.started
        rchar = self.rchar()
        code = self.proc.wait()
        self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - 2000))
        stderr = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()
        return Ended(seconds, rchar, self.hwm, code, stderr)

    def stop(self) -> Ended:
        """SIGTERM (a worker drains and exits 130; runwait exits 130)."""
        if not self.exited():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(30.0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_until(what: str, ready: Callable[[], bool], timeout: float, live: Live | None = None) -> float:
    """Poll ``ready`` every 2 ms; return the seconds it took, or raise."""
    started = time.monotonic()
    while not ready():
        if live is not None and live.exited():
            raise BenchmarkFailed(f"the process exited while waiting for {what}: "
                                  f"{live.wait().stderr.strip()[-300:]}")
        if time.monotonic() - started > timeout:
            raise BenchmarkFailed(f"no {what} within {timeout:g} s")
        time.sleep(0.002)
    return time.monotonic() - started


def _settle(live: Live, size: int, timeout: float = 300.0) -> None:
    """Wait until ``live`` has read the whole file once and then less than
    4 KiB in 2 s (a poll for appended lines reads a few bytes a second).

    (Its start-up reads modules too, so rchar passes the file's size before
    the indexing ends; on a busy machine that end comes seconds later.)
    """
    _wait_until("first read of the file", lambda: live.rchar() >= size, timeout, live)
    deadline = time.monotonic() + timeout
    last, since = live.rchar(), time.monotonic()
    while time.monotonic() - since < 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = live.rchar()
        if now - last >= 4 * KIB:
            last, since = now, time.monotonic()


def _read_rate(live: Live, window: float) -> float:
    """Bytes read per second over ``window`` seconds."""
    before, started = live.rchar(), time.monotonic()
    end = started + window
    while time.monotonic() < end:
        live.sample()
        time.sleep(0.05)
    return (live.rchar() - before) / (time.monotonic() - started)


def runset_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [PYTHON, os.fspath(ROOT / "runset.py"), *(os.fspath(a) for a in args)]


def runwait_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [PYTHON, os.fspath(ROOT / "runwait.py"), *(os.fspath(a) for a in args)]


def _runset(*args: str | os.PathLike[str], cwd: Path) -> float:
    """Run runset to its end; return its wall time."""
    started = time.monotonic()
    done = subprocess.run(runset_argv(*args), check=False, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    if done.returncode != 0:
        raise BenchmarkFailed(f"runset {' '.join(map(str, args[:3]))} exited {done.returncode}: "
                              f"{done.stderr.decode('utf-8', 'replace')[-300:]}")
    return time.monotonic() - started


def _append(path: Path, record: bytes) -> None:
    """Append a record with SPEC's recipe (the append lock, size under it, fsync)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 2**40 - 1)
        os.pwrite(fd, record, os.fstat(fd).st_size)
        os.fsync(fd)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 2**40 - 1)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Job files, written fast
# --------------------------------------------------------------------------


def write_lines(path: Path, count: int, line: Callable[[int], bytes],
                *, tail: Sequence[bytes] = (), head: Sequence[bytes] = ()) -> int:
    """Write ``head``, ``count`` lines ``line(i)``, then ``tail``; return the size."""
    with open(path, "wb") as f:
        f.writelines(head)
        f.writelines(b"".join([line(i) for i in range(start, min(count, start + _CHUNK))])
                     for start in range(0, count, _CHUNK))
        f.writelines(tail)
    return path.stat().st_size


def _finished(i: int) -> bytes:
    return b"d true %d\n" % i


def _human(n: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _rate_row(measure: str, rate: float, limit: float, target: str) -> Row:
    return Row(measure, f"{_human(rate)}/s", "-", f"{rate / KIB:.1f} KiB/s", target, rate <= limit)


def _latency_row(measure: str, seconds: list[float], limit: float, target: str) -> Row:
    med = statistics.median(seconds)
    return Row(measure, f"{med:.3f} s", f"worst {max(seconds):.3f} s of {len(seconds)}",
               f"{med:.3f} s", target, med <= limit)


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def measure_idle_worker(sizes: Sizes) -> list[Row]:
    """An idle --follow worker on finished lines: reading, and promptness."""
    n = sizes.finished
    label = f"idle --follow worker, {n:,} finished lines"
    with scratch_dir("idle") as d:
        tmp = Path(d)
        job_file = tmp / "runs.txt"
        middle = n // 2
        set_mark = tmp / "set.mark"
        # One finished line in the middle that, set back to '.', leaves a mark.
        size = write_lines(job_file, n, lambda i: b"d touch %s\n" % bytes(set_mark)
                           if i == middle else _finished(i))
        live = Live(runmaker_argv("--follow", "-j1", "-q", job_file), cwd=tmp)
        rows: list[Row] = []
        try:
            _settle(live, size)
            rate = _read_rate(live, sizes.idle_window)
            rows.append(_rate_row(f"{label} ({_human(size)}): bytes read per second "
                                  f"(rchar, {sizes.idle_window:g} s)", rate, 64 * KIB,
                                  "<= 64 KiB/s"))
            appended = []
            for k in range(sizes.promptness_tries):
                mark = tmp / f"add{k}.mark"
                _append(job_file, b". touch %s\n" % bytes(mark))
                appended.append(_wait_until("appended job's mark", mark.exists, 30.0, live))
                time.sleep(0.37)  # the next append at another phase of the worker's loop
            rows.append(_latency_row(f"{label}: a job appended (SPEC recipe) -> it has run",
                                     appended, 0.1, "<= 0.1 s (SPEC)"))
            started = time.monotonic()
            runset_seconds = _runset("--set", ".", job_file, str(middle + 1), cwd=tmp)
            _wait_until("the job set back to '.'", set_mark.exists, 60.0, live)
            seen = time.monotonic() - started
            rows.append(Row(f"{label}: runset --set . on line {middle + 1:,} starts -> "
                            "the job has run", f"{seen:.3f} s",
                            f"runset itself {runset_seconds:.3f} s", f"{seen:.3f} s",
                            "<= 1 s + runset's own time (README: about a second)",
                            seen <= 1.0 + runset_seconds))
        except BenchmarkFailed as exc:
            rows.append(failed_row(label, "<= 64 KiB/s", exc))
        finally:
            try:
                live.stop()
            except BenchmarkFailed:
                live.kill()
    return rows


def measure_busy_worker(sizes: Sizes, reps: int) -> list[Row]:
    """400 short jobs at -j4 after a million finished lines, against them alone."""
    n, jobs = sizes.finished, sizes.busy_jobs
    label = f"busy worker, {jobs} x `sleep 0.05` at -j4 after {n:,} finished lines"
    pending = [b". sleep 0.05\n"] * jobs
    with scratch_dir("busy") as d:
        tmp = Path(d)
        big, alone, start_only = tmp / "big.txt", tmp / "alone.txt", tmp / "start.txt"
        write_lines(big, n, _finished, tail=pending)
        write_lines(alone, 0, _finished, tail=pending)
        write_lines(start_only, n, _finished)
        job_file = tmp / "runs.txt"

        def run(template: Path, expect_jobs: int) -> Ended:
            shutil.copyfile(template, job_file)
            ended = Live(runmaker_argv("-j4", "-q", job_file), cwd=tmp).wait().check("runmaker")
            if states_of(job_file).count("d") != n * (template != alone) + expect_jobs:
                raise BenchmarkFailed("runmaker left jobs not done")
            return ended

        runs: dict[str, list[Ended]] = {"big": [], "alone": [], "start": []}
        try:
            for _ in range(reps):
                runs["big"].append(run(big, jobs))
                runs["alone"].append(run(alone, jobs))
                runs["start"].append(run(start_only, 0))
        except BenchmarkFailed as exc:
            return [failed_row(label, "<= 16 KiB a job; <= 1.1x", exc)]

    def med(name: str, key: Callable[[Ended], float]) -> float:
        return statistics.median(key(e) for e in runs[name])

    per_job = (med("big", lambda e: e.rchar) - med("start", lambda e: e.rchar)) / jobs
    alone_per_job = med("alone", lambda e: e.rchar) / jobs
    peak = med("big", lambda e: e.hwm_mb)
    return [
        Row(f"{label}: bytes read per job beyond start-up (rchar)", _human(per_job),
            f"{_human(alone_per_job)} a job with no finished lines, start-up included",
            f"{per_job / KIB:.1f} KiB", "<= 16 KiB", per_job <= 16 * KIB),
        ratio_row(f"{label}: wall vs the {jobs} jobs alone", med("big", lambda e: e.seconds),
                  med("alone", lambda e: e.seconds), "alone", 1.1),
        Row(f"worker start-up alone on {n:,} finished lines (reference)",
            f"{med('start', lambda e: e.seconds):.3f} s",
            f"read {_human(med('start', lambda e: e.rchar))}", "-", "reference", None),
        Row(f"{label}: worker peak memory (VmHWM)", f"{peak:.1f} MB",
            f"{med('alone', lambda e: e.hwm_mb):.1f} MB with no finished lines",
            f"{peak:.1f} MB", "<= 40 MB", peak <= 40),
    ]


def measure_runwait(sizes: Sizes) -> list[Row]:
    """runwait on a file of a million lines: bytes read per second; promptness at the end."""
    n, left = sizes.finished, 10
    label = f"runwait, {n:,} lines ({left} pending), default interval"
    with scratch_dir("runwait") as d:
        tmp = Path(d)
        job_file = tmp / "runs.txt"
        size = write_lines(job_file, n - left, _finished, tail=[b". true\n"] * left)
        live = Live(runwait_argv(job_file), cwd=tmp)
        rows: list[Row] = []
        try:
            _settle(live, size)
            rate = _read_rate(live, sizes.idle_window)
            rows.append(_rate_row(f"{label}: bytes read per second (rchar)", rate, 1e6,
                                  "<= 1 MB/s"))
            started = time.monotonic()
            runset_seconds = _runset("--set", "d", job_file, f"{n - left + 1}-{n}", cwd=tmp)
            live.wait(60.0).check("runwait")
            seen = time.monotonic() - started
            rows.append(Row(f"{label}: runset --set d of the last jobs starts -> runwait ends",
                            f"{seen:.3f} s", f"runset itself {runset_seconds:.3f} s",
                            f"{seen:.3f} s", "<= 1 s (the interval) + runset's own time",
                            seen <= 1.0 + runset_seconds))
        except BenchmarkFailed as exc:
            rows.append(failed_row(label, "<= 1 MB/s", exc))
        finally:
            live.kill()
    return rows


def _runset_line(i: int) -> bytes:
    state = b"d" if i % 4 == 0 else b"."
    return b"%s ./simulate --seed %d --out results/%07d.csv\n" % (state, i, i)


def measure_runset(sizes: Sizes, reps: int) -> list[Row]:
    """runset --summary / -l / --json on millions of jobs: wall and peak memory."""
    n = sizes.runset_jobs
    label = f"runset on {n:,} jobs"
    targets = {"--summary": (2.0, 100.0), "-l": (5.0, None), "--json": (8.0, None)}
    rows: list[Row] = []
    with scratch_dir("runset") as d:
        tmp = Path(d)
        job_file = tmp / "runs.txt"
        size = write_lines(job_file, n, _runset_line)
        for option, (limit, mem_limit) in targets.items():
            what = f"{label} ({_human(size)}): runset {option} > /dev/null"
            try:
                runs = [run_process(runset_argv(option, job_file), cwd=tmp, watch_memory=True)
                        .check("runset") for _ in range(reps)]
            except BenchmarkFailed as exc:
                rows.append(failed_row(what, f"<= {limit:g} s", exc))
                continue
            seconds = statistics.median(m.seconds for m in runs)
            peak = statistics.median(m.peak_mb for m in runs)
            rows.append(Row(f"{what}: wall", f"{seconds:.2f} s", f"peak {peak:.0f} MB",
                            f"{seconds:.2f} s", f"<= {limit:g} s", round(seconds, 2) <= limit))
            if mem_limit is not None:
                rows.append(Row(f"{what}: peak memory", f"{peak:.0f} MB", "-", f"{peak:.0f} MB",
                                f"<= {mem_limit:g} MB", peak <= mem_limit))
    return rows


def _start_workers(tmp: Path, job_file: Path, workers: int,
                   wrap: Callable[[int], list[str]] = lambda k: []) -> list[Live]:
    return [Live([*wrap(k), *runmaker_argv("-j1", "-q", job_file)], cwd=tmp) for k in range(workers)]


def measure_contention(sizes: Sizes, reps: int) -> list[Row]:
    """16 -j1 workers on one file of 5,000 trivial jobs: wall vs xargs; lock attempts."""
    jobs, workers = sizes.contention_jobs, sizes.workers
    label = f"{workers} workers of -j1, one file of {jobs:,} `true N` jobs"
    rows: list[Row] = []
    with scratch_dir("contention") as d:
        tmp = Path(d)
        template, job_file, cmd_list = tmp / "template.txt", tmp / "runs.txt", tmp / "cmds.txt"
        write_lines(template, jobs, lambda i: b". true %d\n" % i)
        write_lines(cmd_list, jobs, lambda i: b"true %d\n" % i)

        def run_workers(wrap: Callable[[int], list[str]] = lambda k: []) -> float:
            shutil.copyfile(template, job_file)
            started = time.monotonic()
            for live in _start_workers(tmp, job_file, workers, wrap):
                live.wait().check("runmaker")
            seconds = time.monotonic() - started
            if states_of(job_file).replace("d", ""):
                raise BenchmarkFailed("the workers left jobs not done")
            return seconds

        def xargs() -> float:
            return run_process(["xargs", f"-P{workers}", "-I{}", "sh", "-c", "{}"],
                               stdin=cmd_list, cwd=tmp).check("xargs").seconds

        try:
            times: dict[str, list[float]] = {"runmaker": [], "xargs": []}
            for _ in range(reps):
                times["runmaker"].append(run_workers())
                times["xargs"].append(xargs())
            rows.append(ratio_row(f"{label}: wall vs xargs -P{workers}",
                                  statistics.median(times["runmaker"]),
                                  statistics.median(times["xargs"]), "xargs", 1.3))
        except BenchmarkFailed as exc:
            rows.append(failed_row(f"{label}: wall", "<= 1.3x", exc))

        count_label = f"{label}: job-lock attempts per claimed job (the workers' own count)"
        counts = tmp / "lock-counts.txt"
        os.environ["RUNMAKER_LOCK_COUNTS"] = str(counts)
        try:
            seconds = run_workers()
        except BenchmarkFailed as exc:
            rows.append(failed_row(count_label, "<= 2", exc))
            return rows
        finally:
            del os.environ["RUNMAKER_LOCK_COUNTS"]
        attempts = refused = 0
        for line in counts.read_text().splitlines():
            tried, lost = map(int, line.split())
            attempts, refused = attempts + tried, refused + lost
        per_job = attempts / jobs
        rows.append(Row(count_label, f"{per_job:.2f} ({attempts:,} for {jobs:,} jobs)",
                        f"{refused:,} refused (held by another worker); claims, rechecks and "
                        f"probes for lost jobs all count; {seconds:.1f} s",
                        f"{per_job:.2f}", "<= 2", per_job <= 2))
    return rows


def main() -> int:
    args = parse_args(__doc__.split("\n", 1)[0], reps=(1, 3))
    sizes = Sizes(args.quick)
    started = time.monotonic()
    rows = measure_idle_worker(sizes)
    rows += measure_busy_worker(sizes, args.reps)
    rows += measure_runwait(sizes)
    rows += measure_runset(sizes, args.reps)
    rows += [r for r in measure_dispatch(sizes.dispatch_jobs, max(args.reps, 3), None)
             if r.result != "skipped"]
    rows += measure_contention(sizes, args.reps)
    notes = [
        ("bytes read = rchar of /proc/PID/io (every byte read()/pread() returned, cached or "
        "not; a reaped job's own reads count too); memory = VmHWM of the process alone"),
        machine_note() + f"; whole run {time.monotonic() - started:.0f} s",
        f"reproduce: python benchmarks/scale.py{' --quick' if args.quick else ''}",
    ]
    if args.quick:
        notes.insert(0, "--quick: smaller sizes than the targets are about")
    print_table(f"runmaker at cluster scale ({'quick, ' if args.quick else ''}"
                f"median of {args.reps})", rows, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
