"""What the benchmark scripts share: timing real processes, job files, the table.

Stdlib only.  Every figure is measured by running real processes: the
checkout's ``runmaker.py`` under ``sys.executable`` (no install needed),
``xargs`` and GNU ``parallel``.  Timings are medians of several repetitions,
with the contenders interleaved (A, B, A, B, ...) so that a machine that gets
busier or quieter during the run shifts both sides alike.  Nothing here
asserts a timing: the scripts print figures and exit 0.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RUNMAKER = ROOT / "runmaker.py"
PYTHON = sys.executable

# Compiled modules go to a cache outside the checkout, for this process and
# every Python it starts: a benchmark writes nothing into the checkout.
PYCACHE = Path(tempfile.gettempdir()) / "runmaker-bench-pycache"
sys.pycache_prefix = os.fspath(PYCACHE)
os.environ["PYTHONPYCACHEPREFIX"] = os.fspath(PYCACHE)

__all__ = [
    "PYTHON",
    "ROOT",
    "RUNMAKER",
    "BenchmarkFailed",
    "Measured",
    "Row",
    "Timing",
    "cpu_row",
    "failed_row",
    "find_gnu_parallel",
    "interleaved_medians",
    "interleaved_timings",
    "machine_note",
    "parse_args",
    "print_table",
    "ratio_row",
    "read_hwm",
    "run_process",
    "runmaker_argv",
    "scratch_dir",
    "skipped_row",
    "states_of",
    "write_job_file",
]


# --------------------------------------------------------------------------
# Running and timing processes
# --------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall seconds, and CPU seconds (user + system, its reaped children included)."""

    seconds: float
    cpu: float


@dataclass
class Measured:
    """One run of one process: wall time, its peak memory, how it ended."""

    seconds: float
    # os.wait4's ru_maxrss.  Beware: Linux keeps a process's peak across
    # exec, and a child spawned by this (Python) process starts with this
    # process's address space, so it is never below the harness's own peak.
    maxrss_mb: float
    hwm_mb: float | None  # /proc/PID/status VmHWM, last seen: the process alone
    returncode: int
    stderr: str = ""  # its last lines, to explain a failed run
    cpu: float = 0.0  # user + system seconds, its reaped children (the jobs) included

    @property
    def timing(self) -> Timing:
        return Timing(self.seconds, self.cpu)

    @property
    def peak_mb(self) -> float:
        """Peak resident memory of the process itself (VmHWM; ru_maxrss off Linux)."""
        return self.hwm_mb if self.hwm_mb is not None else self.maxrss_mb

    def check(self, what: str) -> "Measured":
        """Raise BenchmarkFailed when the run did not exit 0."""
        if self.returncode != 0:
            raise BenchmarkFailed(f"{what} exited {self.returncode}: {self.stderr.strip()[-300:]}")
        return self


class BenchmarkFailed(Exception):
    """A contender did not do the work it was timed for: its figure is void."""


def run_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: str | os.PathLike[str] | None = None,
    stdout: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    watch_memory: bool = False,
) -> Measured:
    """Run ``argv`` to its end; stdin/stdout from/to a path (default /dev/null).

    Wall time runs from just before the fork to the moment ``os.wait4``
    reaps it.  With ``watch_memory`` the process's VmHWM is sampled from
    /proc while it runs (Linux): the peak of the process alone, which
    ru_maxrss is not (see Measured).
    """
    stdin_f = open(stdin if stdin is not None else os.devnull, "rb")
    stdout_f = open(stdout if stdout is not None else os.devnull, "wb")
    stderr_f = tempfile.TemporaryFile()
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            [os.fspath(a) for a in argv], stdin=stdin_f, stdout=stdout_f,
            stderr=stderr_f, cwd=cwd, env=env,
        )
        hwm = None
        if watch_memory:
            status_path = f"/proc/{proc.pid}/status"
            while True:
                pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                hwm = read_hwm(status_path) or hwm
                time.sleep(0.01)  # VmHWM only grows: the last look is the peak but for 10 ms
        else:
            _, wait_status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(wait_status)  # Popen must not wait again
        stderr_f.seek(max(0, stderr_f.seek(0, os.SEEK_END) - 2000))
        stderr = stderr_f.read().decode("utf-8", "replace")
    finally:
        stdin_f.close()
        stdout_f.close()
        stderr_f.close()
    return Measured(seconds, usage.ru_maxrss / 1024.0, hwm, proc.returncode, stderr,
                    usage.ru_utime + usage.ru_stime)


def read_hwm(status_path: str) -> float | None:
    """VmHWM (peak resident memory) in MB from a /proc/PID/status file, or None."""
    try:
        with open(status_path, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


# runmaker as `pip install .` runs it: the console script imports the
# module, compiled once (pip compiles at install time).  Running the file
# itself would compile its few thousand lines at every start, a cost no
# installed user pays (and this machine sets PYTHONDONTWRITEBYTECODE).
_ENTRY = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from runmaker import main; "
    "sys.argv[0] = 'runmaker'; main()"
)


def compile_runmaker() -> None:
    """Write runmaker's .pyc once (to PYCACHE), as pip does at install time."""
    for module in (RUNMAKER, ROOT / "runmaker_tcp.py"):
        if module.exists():
            py_compile.compile(os.fspath(module), doraise=True)


def runmaker_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The checkout's runmaker, started the way its console script starts it."""
    return [PYTHON, "-c", _ENTRY, os.fspath(ROOT), *(os.fspath(a) for a in args)]


def interleaved_medians(
    reps: int, contenders: dict[str, Callable[[], float]]
) -> dict[str, float]:
    """Run each contender ``reps`` times, interleaved; the median of each (seconds)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, run in contenders.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def interleaved_timings(
    reps: int, contenders: dict[str, Callable[[], Timing]]
) -> dict[str, Timing]:
    """As interleaved_medians, for contenders that return wall and CPU time."""
    runs: dict[str, list[Timing]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, run in contenders.items():
            runs[name].append(run())
    return {
        name: Timing(statistics.median(t.seconds for t in timings),
                     statistics.median(t.cpu for t in timings))
        for name, timings in runs.items()
    }


def find_gnu_parallel() -> tuple[str | None, str]:
    """Path of GNU parallel, if installed; a benchmark installs nothing.

    Returns ``(path, note)``; path is None (and the note says what is
    missing) when it is not there, so the caller skips that comparison.
    moreutils' own ``parallel`` is not GNU parallel and does not count.
    """
    path = shutil.which("parallel")
    if path is None:
        return None, "GNU parallel is missing (install the 'parallel' package to compare): skipped"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = b""
    if not version.startswith(b"GNU parallel"):
        return None, f"{path} is not GNU parallel (moreutils?): skipped"
    return path, version.split(b"\n", 1)[0].decode()


# --------------------------------------------------------------------------
# Job files
# --------------------------------------------------------------------------


def write_job_file(path: Path, commands: Sequence[str], *, done: int = 0) -> None:
    """A job file: ``done`` finished lines (``d true N``), then the commands pending."""
    with open(path, "wb") as f:
        if done:
            f.write(b"".join(b"d true %d\n" % i for i in range(done)))
        f.write("".join(f". {c}\n" for c in commands).encode())


def states_of(path: Path) -> str:
    """The state byte of every job line (enough for the files made here)."""
    return "".join(chr(line[0]) for line in path.read_bytes().splitlines() if len(line) >= 3)


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"runmaker-bench-{prefix}-")


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a results table.

    ``result`` is the figure held against ``target`` (a ratio or an
    absolute amount); ``met`` is True/False, or None for reference figures
    and skipped rows.
    """

    measure: str
    runmaker: str
    baseline: str
    result: str
    target: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.met]


def ratio_row(measure: str, ours: float, theirs: float, baseline_name: str,
              limit: float | None, *, unit: str = "s") -> Row:
    """A row for a ratio ours/theirs against an upper limit (None: reference)."""
    ratio = ours / theirs if theirs > 0 else float("inf")
    return Row(
        measure,
        f"{ours:.3f} {unit}",
        f"{theirs:.3f} {unit} ({baseline_name})",
        f"{ratio:.2f}x",
        f"<= {limit:g}x" if limit is not None else "reference",
        # Judged on the figure as shown: a reader sees "1.10x" against "<= 1.1x".
        (round(ratio, 2) <= limit) if limit is not None else None,
    )


def cpu_row(measure: str, ours: Timing, theirs: Timing, baseline_name: str) -> Row:
    """A reference row of CPU seconds: steadier than wall time on a busy machine."""
    return ratio_row(f"{measure}, CPU user+sys", ours.cpu, theirs.cpu, baseline_name, None,
                     unit="s cpu")


def skipped_row(measure: str, note: str) -> Row:
    return Row(measure, "-", "-", "skipped", note, None)


def failed_row(measure: str, target: str, why: object) -> Row:
    """A contender failed to do the work: no figure, the reason instead."""
    return Row(measure, "FAILED", str(why)[:200], "-", target, False)


_HEADERS = ("measure", "runmaker", "against", "result", "target", "met")


def print_table(title: str, rows: Sequence[Row], *, markdown: bool = False,
                notes: Sequence[str] = ()) -> None:
    """Print rows as an aligned text table, or as a Markdown table for the README."""
    cells = [(r.measure, r.runmaker, r.baseline, r.result, r.target, r.verdict) for r in rows]
    if markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(_HEADERS) + " |")
        print("|" + "|".join("---" for _ in _HEADERS) + "|")
        for row in cells:
            print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        if notes:
            print()
            for note in notes:
                print(f"- {note}")
        print()
        return
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
              for i, h in enumerate(_HEADERS)]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for note in notes:
        print(f"note: {note}")
    print()


def parse_args(description: str, *, markdown: bool = False, reps: tuple[int, int] = (3, 5),
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """--quick, --reps (default ``reps``: quick, full) and, if asked, --markdown."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: smaller sizes, fewer repetitions")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions per figure (median reported)")
    if markdown:
        parser.add_argument("--markdown", action="store_true",
                            help="print the table as Markdown, for the README")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = reps[0] if args.quick else reps[1]
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def machine_note() -> str:
    """Where the figures were taken: CPUs and load, since they depend on both."""
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"{os.cpu_count()} CPUs, load average {load} at the end, "
            f"Python {sys.version.split()[0]}")


compile_runmaker()
