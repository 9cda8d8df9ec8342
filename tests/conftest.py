"""Shared helpers: real files under tmp_path, real processes, deadlines, reaping."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runmaker import JobFile  # noqa: E402 (importable only once ROOT is on the path)

PYTHON = sys.executable


def command(name: str) -> list[str]:
    """How to run one of the three commands straight from the checkout."""
    return [PYTHON, str(ROOT / f"{name}.py")]


def shebang_env() -> dict[str, str]:
    """The environment to run a checkout's script by its ``#!/usr/bin/env python3``
    line: this test's Python first on PATH (the machine's own python3 may lack click)."""
    return dict(os.environ, PATH=f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}")


def stress_scale() -> int:
    """1 in CI's short form; RUNMAKER_STRESS=long makes stress loops 10x longer."""
    return 10 if os.environ.get("RUNMAKER_STRESS") == "long" else 1


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def states(path: Path) -> str:
    """The state bytes of every job line, in file order."""
    out = []
    for line in path.read_bytes().split(b"\n"):
        if len(line) >= 3 and line[1:2] in (b" ", b"\t") and line[:1] not in (b"#", b"/", b" ", b"\t"):
            out.append(chr(line[0]))
    return "".join(out)


def read_int(path: Path) -> int | None:
    """The number a job wrote to ``path`` (a pid, say), or None while there is none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    """True while ``pid`` is a process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != b"Z"


def group_running(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs; zombies that init has not reaped yet do not count."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def write_jobs(path: Path, commands: list[str], state: str = ".") -> Path:
    path.write_text("".join(f"{state} {c}\n" for c in commands))
    return path


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """Wait until ``proc`` ends, reading its pipes meanwhile; return its exit status.

    A process writing into a pipe nobody reads would stall; so this reads
    (and drops) what its pipes hold.  Give it files to read its output later.
    """
    proc.communicate(timeout=timeout)
    return proc.returncode


_REAP_TAG = "RUNMAKER_TEST_REAP"  # in the environment of every process Procs starts


def _tagged_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``_REAP_TAG=tag``."""
    marker = f"{_REAP_TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue  # gone, or not ours to read
        if alive(int(entry)):
            found.append(int(entry))
    return found


class Procs:
    """Starts real processes and reaps every one of them, whatever happens.

    Each gets a tag in its environment, which the jobs of a runmaker worker
    inherit; ``reap`` kills the processes started and then the process group
    of every process still carrying the tag (jobs run in their own groups,
    and may outlive a killed worker).
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tag = secrets.token_hex(8)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this environment) with the tag that ``reap`` looks for."""
        return dict(os.environ if base is None else base, **{_REAP_TAG: self.tag})

    def start(self, name: str, *args: str, cwd: Path | None = None, **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["env"] = self.env(kw.get("env"))  # type: ignore[arg-type]
        proc = subprocess.Popen(command(name) + list(args), cwd=cwd, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        self.kill_job_groups()

    def kill_job_groups(self, timeout: float = 10.0) -> None:
        """SIGKILL the process group of every process that carries our tag, until none is left."""
        deadline = time.monotonic() + timeout
        own_group = os.getpgrp()
        while (pids := _tagged_processes(self.tag)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    group = os.getpgid(pid)
                    if group == own_group:
                        os.kill(pid, signal.SIGKILL)  # started by us, in pytest's own group
                    else:
                        os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.reap()


def run(name: str, *args: str, cwd: Path | None = None, input: bytes | None = None,
        timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one command to its end and return its exit status and output."""
    return subprocess.run(
        command(name) + list(args), cwd=cwd, input=input, capture_output=True,
        timeout=timeout, env=env, stdin=None if input is not None else subprocess.DEVNULL,
    )


class Opened:
    """A JobFile with its warnings collected, closed by the ``opened`` fixture."""

    def __init__(self) -> None:
        self.files: list[JobFile] = []
        self.warnings: list[str] = []

    def __call__(self, path: Path, *, writable: bool = False) -> JobFile:
        jobfile = JobFile(str(path), writable=writable, warn=self.warnings.append)
        self.files.append(jobfile)
        return jobfile


@pytest.fixture
def opened():
    o = Opened()
    try:
        yield o
    finally:
        for jobfile in o.files:
            jobfile.close()


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def timed_job(seconds: float) -> str:
    """A job that logs its start and end (line, wall clock ns) to ./events."""
    return (f'echo "s $RUNMAKER_LINE $(date +%s%N)" >> events; sleep {seconds}; '
            f'echo "e $RUNMAKER_LINE $(date +%s%N)" >> events')


def gated_job(name: str, then: str = "") -> str:
    """A job that touches NAME.started, runs until NAME.go exists, then runs ``then``."""
    return f"touch {name}.started; while [ ! -e {name}.go ]; do sleep 0.02; done{then}"


def holds_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Assert ``predicate`` stays true for ``seconds`` (a negative check needs a window)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(0.02)
    assert predicate(), f"{what} stopped holding"


def kill_group(pgid: int | None) -> None:
    """SIGKILL a job's process group if it is still there (cleanup in finally)."""
    if pgid is None:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_LOCK_HOLDER = """\
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.lockf(fd, fcntl.LOCK_SH, int(sys.argv[3]), int(sys.argv[2]))
print("held", flush=True)
sys.stdin.readline()
"""


def hold_shared_lock(procs: Procs, path: Path, offset: int, length: int = 1) -> subprocess.Popen[bytes]:
    """Another process holding a shared lock on ``length`` bytes of ``path``
    from ``offset`` (0: every byte, to the end and beyond), as a reader
    would; returned once it holds it.  It lets go when a line reaches its
    stdin, or when it is killed (``procs.reap`` does).  A process of its own:
    closing any descriptor of the file would drop the test process's locks."""
    holder = subprocess.Popen([PYTHON, "-c", _LOCK_HOLDER, str(path), str(offset), str(length)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.procs.append(holder)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder
