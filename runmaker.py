#!/usr/bin/env python3
"""runmaker: run the shell commands of a plain text job file, on one host or many.

A job file holds one shell command per line behind a one-byte state
(``.`` pending, ``+`` urgent, ``r`` running, ``d`` done, ``!`` failed,
``e`` error, ``-`` retired); an indented command waits for the job above
it with less indent (an outline of dependencies).  Workers on any number of
hosts that share the file claim lines with POSIX ``fcntl`` record locks on
the file itself, run up to ``-j`` commands at once and write each state byte
back in place.  No server is needed; ``--serve``/``--connect`` offer a TCP
mode for hosts without a shared file system.

This module owns everything the three commands share: the job-file format,
the locks, the scheduler, the worker and the records of finished jobs.
TCP mode lives in runmaker_tcp.py, imported only for ``--serve`` and
``--connect``.  ``runset`` and ``runwait`` are thin commands over its public
functions.  The contract (file format, locks, output, exit codes) is SPEC.md.
"""

from __future__ import annotations

import array
import bisect
import collections
import contextlib
import dataclasses
import enum
import errno
import fcntl
import itertools
import json
import operator
import os
import random
import re
import resource
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol

try:
    import click
except ModuleNotFoundError as _missing:  # a checkout run by a Python that lacks click
    if _missing.name != "click":
        raise
    sys.exit("Error: runmaker needs the Python package click: "
             "apt install python3-click, or pip install click in a venv, "
             "or run runmaker.pyz (README: Install)")

__version__ = "1.0.0"

__all__ = [
    "APPEND_BYTE",
    "CLICK_CONTEXT",
    "Claim",
    "IdleReason",
    "JobCounts",
    "JobFile",
    "JobSelection",
    "JobSource",
    "JobWatcher",
    "KillReport",
    "MAX_CAP",
    "OneLineErrorCommand",
    "RunmakerError",
    "RunmakerFailure",
    "SLOT_BASE",
    "STATE_NAMES",
    "Scheduler",
    "Worker",
    "WorkerOptions",
    "append_jobs",
    "append_to_shared_file",
    "check_file_locking",
    "check_job_file",
    "default_fence",
    "echo_to_stderr",
    "host_name",
    "job_file_failed",
    "kill_jobs",
    "list_jobs",
    "main",
    "parse_cap",
    "progress_cells",
    "progress_line",
    "run_worker",
    "set_job_states",
    "shorten_number",
    "stop_signals_waking",
    "usable_cpus",
    "wait_for_jobs",
    "work_is_over",
]

# Lock offsets (SPEC section 3).  Both lie far beyond any real data, so they
# never collide with a state byte.
SLOT_BASE = 2**40
APPEND_BYTE = 2**40 - 1
# The largest max-running: slot locks stay far below any file offset limit.
MAX_CAP = 2**31 - 1

STATE_NAMES = {
    ".": "pending",
    "+": "pending, high priority",
    "r": "running",
    "d": "done",
    "!": "failed",
    "e": "error",
    "-": "retired",
}

# State bytes as the ints that indexing ``bytes`` gives.
_PENDING, _HIGH, _RUNNING, _DONE, _FAILED, _ERROR = b".+rd!e"
_PARENT_DONE = b"d-"  # a child may start once its parent is in one of these
_PARENT_DONE_TABLE = bytes(1 if byte in _PARENT_DONE else 0 for byte in range(256))
_LIVE_OR_DONE = b".+rd-"  # the states that are no failure
_HIGH_QUEUE = re.compile(rb"\+")

# A job line's first byte may be anything but these: '#' and '/' start
# comments, white space starts a blank or mistaken line.
_NOT_STATE = b"#/ \t\r\n\x0b\x0c"
_SEPARATORS = b" \t"
_TRAILING_SPACE = b" \t\r\x0b\x0c"
_json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str, in C
_JSON_STATES = [_json_string(bytes([byte]).decode("utf-8", "replace")) for byte in range(256)]
_FINISHED = re.compile(rb"[d\-]*")
# Lines a worker need not index at the head of a file (JobFile's ``fold``):
# finished job lines that are not indented, comments other than directives,
# blank lines.  No line here is a directive, a warning or a job to run.
_FOLDABLE = re.compile(
    rb"(?:[d\-][ \t][^ \t\r\n\x0b\x0c][^\n]*\n|#(?!runmaker)[^\n]*\n|[ \t\r\x0b\x0c]*\n)*"
)
_NOT_DONE_YET = re.compile(rb"[^d\-.+r]")  # neither finished, nor pending, nor running
_NORMAL_QUEUE = re.compile(rb"\.")
_NORMAL_QUEUE_RETRY = re.compile(rb"[.!e]")

_CONTROL_CHARACTER = re.compile(rb"[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f]")
_MAX_WARNINGS = 20  # mistaken lines named one by one, then one summary line
_MAX_LINE = 1 << 20  # a longer output line is cut into pieces of this size
_CONSOLE_BEHIND = 1 << 18  # console bytes not yet written before the jobs' pipes wait
_READ_CHUNK = 1 << 16
_INDEX_CHUNK = 1 << 18  # bytes of the job file split into lines at once (its lines cost ~5x)
_WAIT_NOTICE_AFTER = 1.0  # seconds of waiting for a lock before saying so
_REFRESH_GAP = 0.1  # seconds between looks for appended lines while busy
_POLL = 0.5  # seconds between looks while waiting for a cap, barrier or work
# A worker's rescans of the unfinished part of the file: at most these many
# bytes a second (on NFS, 200 workers' rescans are one server's load).
_RESCAN_RATE = 256 << 10
_PEEK_EXTRA = 16  # jobs read beyond 2 per wanted one at the queue heads
_PEEK_BYTES = 16 << 10  # at most this much of the file read at each queue head
_LOST_PROBE_GAP = 5.0  # seconds between probes for lost jobs, but at a whole rescan
_SPREAD = 32  # after losing a job to another worker, try one of the next this many
_KILL_GRACE = 5.0  # seconds from SIGTERM to SIGKILL
_LONGEST_SLEEP = 3600.0  # the event loop wakes at least this often
_SPARE_FILES = 16  # descriptors a worker needs besides its jobs' (job file, logs, pipes)
# Set in the jobs of Slurm, PBS/Torque and LSF: their time limit ends in SIGKILL.
_BATCH_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
_EXIT_SIGNALLED = 130
_TCP_PORT = 9998  # --port's default; TCP mode itself lives in runmaker_tcp.py

_JOBLOG_HEADER = b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class RunmakerError(click.ClickException):
    """A usage or input error: the user sees one ``Error:`` line, exit status 2.

    The message names the file (and line) the user has to look at.
    """

    exit_code = 2


class RunmakerFailure(click.ClickException):
    """A runtime failure (the file system failed under us): one ``Error:`` line, exit status 1."""

    exit_code = 1


@contextlib.contextmanager
def _failing_as_runtime_error(path: str) -> Iterator[None]:
    """Turn an OSError of the file system into a RunmakerFailure naming ``path``.

    For the public entry points of runset and runwait: a disk that fails or
    fills under them is one ``Error:`` line, never a traceback.
    """
    try:
        yield
    except OSError as exc:
        raise RunmakerFailure(f"{path}: {exc.strerror or exc}") from None


def job_file_failed(path: str, exc: OSError) -> RunmakerFailure:
    """The one error a worker or TCP server ends with when its job file raised ``exc``.

    EIO, EROFS, ENOSPC: the caller has stopped its running jobs and writes
    nothing more into the file; the user sees this one line and exit status
    1.  EIO is a failed disk, or, from an NFS job file, the server saying it
    dropped this host's locks (its lease ran out while the host was cut
    off): other hosts may already see its jobs lost.
    """
    if exc.errno == errno.EIO:
        return RunmakerFailure(
            f"{path}: input/output error (EIO) on the job file: a failed disk, or on NFS its locks "
            "are gone (the server drops them when this host was silent past its lease); "
            "running jobs killed, nothing more written"
        )
    why = exc.strerror or str(exc)
    return RunmakerFailure(
        f"{path}: the file system failed under this worker ({why}); its running jobs were stopped"
    )


# --------------------------------------------------------------------------
# Locks.  Every fcntl call of the project is in these helpers.
# --------------------------------------------------------------------------


def _lock_byte(fd: int, offset: int, *, exclusive: bool, wait: bool, length: int = 1) -> bool:
    """Take a POSIX record lock on one byte; return False if held elsewhere.

    POSIX (fcntl) record locks, never flock(): on NFS flock() is emulated as
    a lock on the whole file, which would block every other worker's claim,
    and only fcntl locks travel to the server (NLM on NFSv3, NFSv4 locks).
    Taking a lock is also the moment the Linux NFS client revalidates its
    cached pages, which is why every read in this module follows a lock.
    """
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if not wait:
        kind |= fcntl.LOCK_NB
    while True:
        try:
            fcntl.lockf(fd, kind, length, offset)  # length 0: from offset on, without end
            return True
        except InterruptedError:
            continue  # a signal arrived while we waited: ask again
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False  # held by another process (or host)
            if exc.errno == errno.ENOLCK:
                raise RunmakerError(
                    "record locks are not available here (ENOLCK): is the NFS lock "
                    "service (rpc.statd/lockd) running on this host and the server?"
                ) from exc
            raise


def _unlock_byte(fd: int, offset: int, length: int = 1) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, length, offset)


def _is_locked_elsewhere(fd: int, offset: int, length: int = 1) -> bool:
    """Probe a byte (or with ``length`` 0 every byte from it on): True while
    another process holds a lock on it.

    A real lock attempt, released at once if won, rather than F_GETLK: over
    NFS F_GETLK may answer from stale state, a lock attempt asks the lock
    manager.  The probe is shared, so a read-only descriptor is enough, and
    it still conflicts with the exclusive job lock of a running job.  Never
    probe a byte this process holds: POSIX locks do not conflict with their
    owner, and the unlock would drop the owner's lock.  ``length`` 0 probes
    every byte from ``offset`` on with one request (one NFS round trip).
    """
    if _lock_byte(fd, offset, exclusive=False, wait=False, length=length):
        _unlock_byte(fd, offset, length)
        return False
    return True


# No runmaker process ever holds a lock in this range, so only a lock over a
# range that covers it can be held there: runmaker4's whole-file read lock
# (lockf(f, LOCK_SH, 0, 0), taken by runmaker4, runset4.py and runwait4.py
# to read the file), or any other whole-file lock.  Each probe picks one of
# its bytes at random: runmaker processes starting together probe at the
# same moments, and two probes of one byte would take each other for a
# whole-file lock.
_WHOLE_FILE_PROBES = range(APPEND_BYTE - (1 << 20), APPEND_BYTE)


def _whole_file_locked_elsewhere(fd: int) -> bool:
    """True while another process holds a lock covering the whole file.

    Two exclusive attempts (so a shared lock conflicts too; the descriptor
    must be writable) at random bytes of _WHOLE_FILE_PROBES, each released
    at once if won: a whole-file lock refuses both.
    """
    for _ in range(2):
        probe = random.choice(_WHOLE_FILE_PROBES)
        if _lock_byte(fd, probe, exclusive=True, wait=False):
            _unlock_byte(fd, probe)
            return False
    return True


class _ReadingLock:
    """The reading rule: a shared lock on the append byte around every read.

    Taking it makes the NFS client refresh its cache (and the file size), and
    it keeps a half-written append out of view, since appenders hold the same
    byte exclusively.  Never a whole-file lock: job locks are held for hours.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        _lock_byte(self.fd, APPEND_BYTE, exclusive=False, wait=True)

    def __exit__(self, *exc: object) -> None:
        _unlock_byte(self.fd, APPEND_BYTE)


def append_to_shared_file(
    fd: int,
    record: bytes,
    *,
    header: bytes = b"",
    real: Sequence[bytes] = (),
    patience: float | None = None,
    waiting: Callable[[], None] | None = None,
) -> int:
    """Append ``record`` whole at the end of a shared file, or not at all; return its offset.

    The append recipe of SPEC section 3: an exclusive lock on the append byte
    of that very file, the size from fstat under it, a missing final newline
    mended, one pwrite of the whole record, fsync, unlock.  O_APPEND is not
    used: on NFS it is emulated by the client with a stale size and two
    hosts' appends overwrite each other.  ``header`` is written first when
    the file is empty (the job log's column names).

    Whole or absent: a write that fails part-way (disk full, file size limit)
    is cut off again before the lock goes, so no reader (they read only under
    the same lock) ever sees it.  An appender killed mid-write cannot cut, so
    a job file's record is written with placeholders first: ``record`` holds
    each line with a first byte nothing runs or obeys (``~``, ``/``), and
    ``real`` the same record in pieces with the real first bytes.  Each piece
    is written over its placeholders, and made durable, only once the whole
    record is: whatever a SIGKILL or a crash leaves, every line that can run
    is whole (the bytes differ only in first bytes), and the directives of
    the first piece take effect before the jobs of the next.

    Waits for the lock at most ``patience`` seconds (None: as long as it
    takes), calling ``waiting`` once if the wait lasts _WAIT_NOTICE_AFTER
    seconds (appenders and workers take turns for milliseconds all the time;
    that is no news).  Raises OSError (the file is as it was), or
    TimeoutError if the lock stayed held.
    """
    if not _lock_byte(fd, APPEND_BYTE, exclusive=True, wait=False):
        if patience is None and waiting is None:
            _lock_byte(fd, APPEND_BYTE, exclusive=True, wait=True)
        else:
            _lock_byte_within(fd, APPEND_BYTE, patience, waiting)
    try:
        size = os.fstat(fd).st_size
        prefix = header if size == 0 else b""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            prefix = b"\n"  # mend a last line left without newline
        start = size + len(prefix)
        try:
            _pwrite_all(fd, prefix + record, size)
            os.fsync(fd)  # before unlock: another host reads only after locking
            offset = start
            for piece in real:
                _pwrite_all(fd, piece, offset)
                os.fsync(fd)
                offset += len(piece)
        except OSError:
            # Our own partial record, which nobody can have read: cut it off.
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                pass
            raise
    finally:
        _unlock_byte(fd, APPEND_BYTE)
    return start


def _lock_byte_within(
    fd: int, offset: int, patience: float | None, waiting: Callable[[], None] | None = None
) -> None:
    """Take an exclusive lock, trying for at most ``patience`` seconds (None: no limit).

    A blocking lock request cannot be given a deadline; a user who may only
    read a file can still hold a shared lock on it for as long as they like.
    Calls ``waiting`` once when _WAIT_NOTICE_AFTER seconds have gone by.
    Raises TimeoutError.
    """
    begun = time.monotonic()
    pause = 0.01
    while not _lock_byte(fd, offset, exclusive=True, wait=False):
        waited = time.monotonic() - begun
        if patience is not None and waited >= patience:
            raise TimeoutError
        if waiting is not None and waited >= _WAIT_NOTICE_AFTER:
            waiting()
            waiting = None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)  # readers take turns often: look often


# --------------------------------------------------------------------------
# Job locks (SPEC section 3).  The rules, and the code that carries each:
#
#  1. Lock a job's state byte without waiting (a held byte is a job that
#     runs, maybe for hours) and reread the byte under the lock: the cached
#     byte may be old, and on NFS taking a lock is what refreshes the page.
#     Both: _lock_and_reread_job.
#  2. Decide on the byte reread, never on a cached one: Scheduler._claim
#     (runnable? and its parent, read under the child's lock, done?:
#     Scheduler._parent_done_now), Scheduler._mark_lost_jobs (still 'r'?),
#     _set_unlocked_jobs (still selected?), _probe_running_jobs and
#     _running_without_lock (still 'r'?).
#  3. Write the one byte while holding the lock (a host that holds no lock
#     may write back whole cached pages over other hosts' bytes):
#     _write_job_state.
#  4. fsync, then unlock: another host reads the byte as soon as it wins the
#     lock, so it must be on the server first: _release_job_locks, and for a
#     worker's finished jobs the _Committer (group commit off the loop).
#     A claim's lock is kept for the whole job: 'r' locked = running.
#  5. A liveness probe is a lock attempt released at once (shared: enough to
#     conflict with a running job's exclusive lock), never F_GETLK, which
#     over NFS may answer from stale state: _probe_job (jobs),
#     _is_locked_elsewhere (slots).
# --------------------------------------------------------------------------

# A job line is ``S C``: the state byte, one separator, then the command.
_COMMAND_SKIP = 2  # from a job's state byte to its command


# Job-lock attempts of this process and how many were refused, for the
# benchmark of lock attempts per claimed job (benchmarks/scale.py): a worker
# appends them to the file named by RUNMAKER_LOCK_COUNTS when it ends.
_job_lock_counts = [0, 0]


def _lock_and_reread_job(fd: int, offset: int, *, exclusive: bool = True) -> bytes | None:
    """Rule 1: lock the state byte at ``offset`` without waiting and reread it.

    Returns None when another process (or host) holds the lock; then nothing
    is locked.  Otherwise the lock is held and the byte reread under it is
    returned (``b""`` if the file now ends before it); the caller decides,
    and releases with _release_job_locks (or keeps a claim's lock).
    """
    _job_lock_counts[0] += 1
    if not _lock_byte(fd, offset, exclusive=exclusive, wait=False):
        _job_lock_counts[1] += 1
        return None
    try:
        return os.pread(fd, 1, offset)
    except BaseException:
        _unlock_byte(fd, offset)
        raise


def _write_job_state(fd: int, offset: int, state: bytes) -> None:
    """Rule 3: write one state byte; the caller holds its job lock."""
    os.pwrite(fd, state, offset)


def _release_job_locks(fd: int, offsets: Iterable[int], written: bool) -> None:
    """Rule 4: make the bytes written durable, then let go of their job locks."""
    if written:
        os.fsync(fd)  # before unlocking: over NFS another host reads once it wins the lock
    for offset in offsets:
        _unlock_byte(fd, offset)


def _probe_job(fd: int, offset: int) -> bytes | None:
    """Rule 5: None while a process holds the job's lock (it is live);
    otherwise its byte as reread under a shared lock, let go at once
    (``b"r"``: a lost job; ``b""``: the file now ends before it)."""
    current = _lock_and_reread_job(fd, offset, exclusive=False)
    if current is not None:
        _release_job_locks(fd, (offset,), written=False)
    return current


# --------------------------------------------------------------------------
# Small private helpers
# --------------------------------------------------------------------------


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _gather(data: bytes, base: int, offsets: Iterable[int]) -> bytes:
    """The bytes of ``data`` (read at file offset ``base``) at these file offsets.

    Two C-level maps: no list or tuple of a million ints is ever built.
    """
    if base:
        offsets = map(operator.sub, offsets, itertools.repeat(base))
    return bytes(map(data.__getitem__, offsets))


def _spread_pick(length: int) -> int:
    """A position among the first _SPREAD of ``length`` queued jobs, at random."""
    return random.randrange(min(length, _SPREAD))


def _shown(command: bytes | bytearray) -> str:
    """A command as the user reads it: undecodable bytes replaced."""
    return command.decode("utf-8", "replace")


def _shown_bytes(command: bytes) -> bytes:
    """The same, as UTF-8 bytes for the console and the logs."""
    return _shown(command).encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def parse_cap(digits: bytes) -> int | None:
    """ASCII digits (any number of them) as a cap; None when above MAX_CAP."""
    significant = digits.lstrip(b"0") or b"0"
    if len(significant) > len(str(MAX_CAP)):
        return None  # int() refuses more than 4,300 digits: never try it
    value = int(significant)
    return value if value <= MAX_CAP else None


def shorten_number(text: str) -> str:
    """A number as an error message shows it: a huge one by its first digits."""
    return text if len(text) <= 20 else f"{text[:10]}... ({len(text)} digits)"


def host_name() -> str:
    """This host's name in full, as runmaker4 prints it (``socket.gethostname()``)."""
    return socket.gethostname() or "localhost"


def _reads_like_a_command(raw: bytes) -> bool:
    """True for a line of text a user may have meant as a command: UTF-8,
    no control characters but tabs and a carriage return (not binary data)."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return _CONTROL_CHARACTER.search(raw) is None


def usable_cpus() -> int:
    """The CPUs this process may use: what ``-j 0`` means (SPEC section 4).

    The smallest of its CPU affinity, its cgroups' CPU quota (cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``, its own or any parent's, rounded
    up) and ``SLURM_CPUS_PER_TASK``: containers and batch systems that do
    not bind CPUs limit a process in the last two ways only.
    """
    counts = [len(os.sched_getaffinity(0))]
    quota = _cgroup_cpu_quota()
    if quota is not None:
        counts.append(quota)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def _cgroup_cpu_quota() -> int | None:
    """The CPU quota of this process's cgroups in whole CPUs (rounded up), None if unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            memberships = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for membership in memberships:
        hierarchy, controllers, path = membership.split(":", 2)
        version2 = hierarchy == "0" and not controllers
        if not version2 and "cpu" not in controllers.split(","):
            continue
        for root, mount_point in _cgroup_mounts(mounts, version2):
            if root != "/" and path != root and not path.startswith(root + "/"):
                continue  # another part of the hierarchy is mounted here
            relative = path[len(root):] if root != "/" else path
            directory = os.path.normpath(mount_point + "/" + relative)
            # A parent's limit holds for everything below it: look up to the mount.
            while True:
                limit = _cpu_limit_in(directory, version2)
                if limit is not None:
                    limits.append(limit)
                if len(directory) <= len(mount_point):
                    break
                directory = os.path.dirname(directory)
    return min(limits) if limits else None


def _cgroup_mounts(mounts: list[str], version2: bool) -> list[tuple[str, str]]:
    """(root, mount point) of every cgroup2 mount, or of every v1 mount holding ``cpu``."""
    found = []
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, more = left.split(), right.split()
        if len(fields) < 5 or len(more) < 3:
            continue
        if version2 and more[0] != "cgroup2":
            continue
        if not version2 and (more[0] != "cgroup" or "cpu" not in more[2].split(",")):
            continue
        found.append((_unescape_mount(fields[3]), _unescape_mount(fields[4])))
    return found


def _unescape_mount(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cpu_limit_in(directory: str, version2: bool) -> int | None:
    """The CPU quota set on one cgroup directory, in whole CPUs rounded up, or None."""
    try:
        if version2:
            with open(os.path.join(directory, "cpu.max")) as f:
                quota_text, _, period_text = f.read().strip().partition(" ")
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
                quota_text = f.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
                period_text = f.read().strip()
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):
        return None  # "max" or -1: no limit; no such file: no cpu controller here
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def _writable_by_others(fd: int) -> bool:
    """True when users other than this one may write the open file.

    World-writable, or group-writable for a group other than our own
    primary group (with user-private groups that group is just us).
    """
    st = os.fstat(fd)
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and st.st_gid != os.getgid()


def _open_job_file(path: str, writable: bool) -> int:
    """Open the job file, or raise one clear error naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RunmakerError(f"{path}: no such file") from None
    except OSError as exc:
        raise RunmakerError(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise RunmakerError(f"{path}: is a directory, not a job file")
    if not stat.S_ISREG(st.st_mode):
        raise RunmakerError(f"{path}: not a regular file")
    try:
        return os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot open: {exc.strerror}") from None


def check_file_locking(path: str, mountinfo: str | None = None, *, fd: int | None = None) -> None:
    """Refuse a job file on a mount whose locks would not reach other hosts.

    An NFS mount with ``nolock`` or ``local_lock=posix|all`` keeps POSIX
    locks on the client: two hosts would both win the same job.  The file's
    mount is found in ``/proc/self/mountinfo`` (or ``mountinfo``, for tests)
    by its device number.  Raises RunmakerError naming the option.
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return  # not Linux: nothing to read, nothing to refuse
    st = os.fstat(fd) if fd is not None else os.stat(path)  # the file we hold, if open
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for entry in mountinfo.splitlines():
        fields = entry.split()
        if len(fields) < 7 or fields[2] != device or "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        fstype = fields[dash + 1] if len(fields) > dash + 1 else ""
        if not fstype.startswith("nfs"):
            continue
        options = set(fields[5].split(","))
        if len(fields) > dash + 3:
            options |= set(fields[dash + 3].split(","))
        for bad in ("nolock", "local_lock=posix", "local_lock=all"):
            if bad in options:
                raise RunmakerError(
                    f"{path}: its NFS mount {fields[4]} has '{bad}', so record locks "
                    "would not reach other hosts; remount without it"
                )


# --------------------------------------------------------------------------
# The job file
# --------------------------------------------------------------------------

# What JobFile needs to undo the outline's growth: the stack (None while no
# job is indented yet).
_OutlineMark = list[tuple[int, int]] | None


class JobFile:
    """One open job file: its single descriptor and the index of its lines.

    The index keeps, per job, the offset of its state byte, the end of its
    command and its line number, in compact arrays (12 bytes a job below
    4 GiB, 20 above), and is built from the file a piece at a time
    (read_new_states), never holding its bytes whole.  A worker's JobFile
    (``fold``) indexes nothing of the finished head of the file: it counts
    those lines in C (a regular expression) and starts its index below
    them, so a worker on a file of a million finished lines starts in half
    a second and peaks at 21 MB (17 with no finished lines).  Lines appended later are
    indexed incrementally; finding work never rereads the whole file
    unless asked to (``read(whole=True)``).

    A process that holds job locks keeps exactly one descriptor of the file:
    closing any descriptor of it would drop every POSIX lock the process
    holds.  So everything in this module goes through one JobFile.
    """

    def __init__(
        self,
        path: str,
        *,
        writable: bool = True,
        warn: Callable[[str], None] | None = None,
        fold: bool = False,
    ) -> None:
        """``fold``: the first read does not index the file's finished head
        (see ``folded_lines``); a worker's JobFile, not runset's or runwait's."""
        self.path = path
        self.fd = _open_job_file(path, writable)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)
        # The highest cap the file ever set: no worker holds a slot above it.
        self.max_running_peak = 0
        self.shrunk = False  # the file got shorter: someone broke the rules
        # SPEC: a last line without newline is a job as usual only as the
        # first read found it.  One that appeared or grew later may be a
        # writer's first half (or a killed writer's piece): it waits for its
        # newline.  (offset, length) of the one the first read found.
        self._first_tail: tuple[int, int] | None = None
        self._read_before = False
        self._warn = warn
        self._warned: set[int] = set()
        # Lines that are no job, comment, directive or blank line but read
        # like a command: how many, and the first (a file of bare commands
        # has nothing else).
        self.command_like_lines = 0
        self.first_command_like: tuple[int, bytes] | None = None
        self._last_command_like = 0
        self._start_index(fold)

    def _start_index(self, fold: bool) -> None:
        """An empty index: the next read indexes the file from its first byte."""
        # Offsets take 4 bytes each while the file is below 4 GiB, then 8 (_widen_for).
        self.offsets = array.array("I")  # offset of each job's state byte
        self.ends = array.array("I")  # offset just past each job's command
        self.lines = array.array("i")  # 1-based line number of each job (4 bytes: 2**31 lines)
        self.barriers: list[int] = []  # index of the first job below each barrier
        self.barrier_lines: list[int] = []
        self.max_running: int | None = None
        # The lines each '#runmaker kill' names, in file order (runset --kill).
        self.kills: list[tuple[int, ...]] = []
        self.size = 0  # bytes indexed
        self.line_count = 0
        # The folded head: its first folded_lines lines (folded_size bytes)
        # are finished job lines, comments and blank lines that the first
        # read only counted (folded_jobs: the jobs per state byte), so job
        # index 0 is the first job below them.  Indexing a million such
        # lines would cost a worker a second and 12 MB; unfold() indexes
        # them after all, when runset --set changes one.
        self._folding = fold
        self.folded_lines = 0
        self.folded_size = 0
        self.folded_jobs: collections.Counter[int] = collections.Counter()
        self._last_folded_job: tuple[int, int] | None = None  # (offset, state) of the head's last job line
        # An unterminated last line is indexed, but may still grow; this
        # remembers what to undo to index it again.
        self._tail: tuple[int, int, int, int, int | None, _OutlineMark] | None = None
        # The outline (see _place_in_outline): each job's parent index, -1
        # for none; None until a job is indented, so a flat file pays nothing.
        self.parents: array.array[int] | None = None
        # Each job's first child and next sibling (-1: none), for children_of.
        self._first_child = array.array("i")
        self._next_sibling = array.array("i")
        self._outline: list[tuple[int, int]] = []  # (indent, index): where a new job may hang
        # The link the last job placed made (array, index), and the one an
        # unterminated last line made, to undo when it is indexed again.
        self._last_link: tuple[array.array[int], int] | None = None
        self._tail_link: tuple[array.array[int], int] | None = None
        # The offset of each kill line (as ``kills``): it acts on the runs
        # claimed before it was appended, which saw the file shorter.
        self.kill_offsets: list[int] = []
        self._in_tail = False
        self._settled = True  # False while indexing a last line a writer may still be writing
        # A job whose line appeared or grew since the first read and has no
        # newline yet: indexed (its index must stay put) but not to be claimed.
        self.unfinished: int | None = None
        # Line ranges of ``#runmaker set`` notices not yet taken (take_set_notices).
        self._set_notices: list[tuple[int, int]] = []

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            # NFS reports write-back errors again at close; every state
            # byte that mattered was fsynced (and checked) before its unlock.
            pass

    @contextlib.contextmanager
    def warnings_held(self) -> Iterator[list[str]]:
        """Collect the warnings of the reads meanwhile instead of passing them on."""
        held: list[str] = []
        warn, self._warn = self._warn, held.append
        try:
            yield held
        finally:
            self._warn = warn

    # -- reading -----------------------------------------------------------

    def read(self, *, whole: bool = False) -> tuple[bytes, int, int]:
        """Index lines appended since the last read.

        Returns ``(data, base, first_new)``: the bytes read, the offset they
        start at, and the index of the first job (re)indexed.  With
        ``whole`` the data is the whole file (for every state byte at once);
        otherwise just what is new.  Takes the shared append lock to read.
        """
        resume = self._resume_offset()
        with _ReadingLock(self.fd):
            size = os.fstat(self.fd).st_size
            start = 0 if whole else resume
            data = _pread_all(self.fd, max(size - start, 0), start) if size > start else b""
        first_new = len(self.offsets)
        self._folding = False
        if size < self.size:
            self.shrunk = True
        elif size > self.size or self._tail:
            # Index only what is new, even when the whole file was read:
            # lines already indexed must not be indexed a second time.
            new = data if start == resume else data[resume - start :]
            first_new = self._index_from(new, resume)
        self._read_before = True
        return data, start, first_new

    def index_whole(self, data: bytes) -> None:
        """Index ``data``: the whole file as the caller read it under the
        reading lock, before this JobFile read anything (``read(whole=True)``
        in two steps)."""
        self._folding = False
        self._index_from(data, 0)
        self._read_before = True

    def read_new_states(self) -> tuple[int, bytes]:
        """Index lines appended since the last read, a piece at a time.

        Returns ``(first_new, states)``: the index of the first job
        (re)indexed and the state bytes of the jobs from it on.  The file's
        bytes are never held whole (a file of millions of lines costs its
        index, not its size): each piece of up to _INDEX_CHUNK bytes is read
        under the reading lock, indexed and dropped.  Only the bytes below
        the size seen at the first lock are read.
        """
        resume = self._resume_offset()
        with _ReadingLock(self.fd):
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, min(max(size - resume, 0), _INDEX_CHUNK), resume)
        if size < self.size or (size == self.size and not self._tail):
            self.shrunk = self.shrunk or size < self.size
            self._read_before = True
            self._folding = False
            return len(self.offsets), b""
        first_new = -1
        parts = []
        pos = resume
        while True:
            final = pos + len(data) >= size or not data
            if not final:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a piece: read on to its end
                    with _ReadingLock(self.fd):
                        data += os.pread(self.fd, min(size - pos - len(data), _INDEX_CHUNK), pos + len(data))
                    continue
                data = data[:cut]
            if self._folding:
                data, pos = self._fold(data, pos, final)
            first = self._index_from(data, pos)
            first_new = first if first_new < 0 else first_new
            parts.append(self.states_of(data, pos, first))
            pos += len(data)
            if final:
                self._read_before = True  # a last line without newline seen later waits for it
                self._folding = False  # only the head the first read found is folded
                return first_new, b"".join(parts)
            with _ReadingLock(self.fd):
                data = os.pread(self.fd, min(size - pos, _INDEX_CHUNK), pos)

    def _fold(self, data: bytes, pos: int, final: bool) -> tuple[bytes, int]:
        """Count, not index, the foldable lines that ``data`` (read at ``pos``) starts with.

        Returns the data left to index and the offset it starts at.
        Folding ends at the first line that is not foldable (_FOLDABLE), or
        with the file.  The head's last job line is indexed all the same: a
        job indented below the head hangs under it, and a child rereads its
        parent's state byte under its own lock before it starts (the parent
        may have been set back to '.', its notice not read yet).
        """
        end = _FOLDABLE.match(data).end()  # type: ignore[union-attr]  # it matches b""
        last = max(data.rfind(b"\nd", 0, end), data.rfind(b"\n-", 0, end)) + 1
        if last == 0 and (not end or data[0] not in b"d-"):
            last = -1  # no job line in the folded part of this piece
        if end == len(data) and not final:
            if last >= 0:
                self._last_folded_job = (pos + last, data[last])
            self._count_folded(data, end, 1)
            return b"", pos + end
        self._folding = False
        if last >= 0:
            self._count_folded(data, last, 1)
            return data[last:], pos + last
        if self._last_folded_job is None:
            self._count_folded(data, end, 1)
            return data[end:], pos + end  # no job line in the head at all
        # The head's last job line lies in an earlier piece: from it on,
        # the lines are counted no more, but indexed.
        start, state = self._last_folded_job
        with _ReadingLock(self.fd):
            before = _pread_all(self.fd, pos - start, start)
        self._count_folded(before, len(before), -1)
        self.folded_jobs[state] -= 1
        self.folded_jobs = +self.folded_jobs
        return before + data, start

    def _count_folded(self, data: bytes, end: int, sign: int) -> None:
        """Count (``sign`` 1) or uncount (-1) the folded lines ``data[:end]``."""
        if sign > 0:
            # A job line starts the data or follows a newline; no other
            # foldable line starts with 'd' or '-'.
            for state in b"d-":
                jobs = data.count(bytes((10, state)), 0, end) + (end > 0 and data[0] == state)
                if jobs:
                    self.folded_jobs[state] += jobs
        self.folded_lines += sign * data.count(b"\n", 0, end)
        self.folded_size += sign * end
        self.line_count = self.folded_lines
        self.size = self.folded_size

    def names_folded(self, notices: list[tuple[int, int]]) -> bool:
        """True when a ``#runmaker set`` notice names a line of the folded head
        (a notice without lines, ``(1, 0)``, does once anything is folded)."""
        return any(first <= self.folded_lines for first, _ in notices)

    def unfold(self) -> int:
        """Index the folded head after all: forget the index, so that the next
        read indexes the whole file.  Returns how many jobs were folded (every
        job index grows by that much); any job lock held stays held."""
        shift = sum(self.folded_jobs.values())
        if self.folded_lines:
            self._start_index(False)
        return shift

    def states_of(self, data: bytes, base: int = 0, first: int = 0) -> bytes:
        """The state bytes of jobs ``first..`` found in ``data`` (read at ``base``)."""
        return _gather(data, base, memoryview(self.offsets)[first:])

    def states_between(self, first: int, last: int) -> bytes:
        """Read the state bytes of jobs ``first..last-1`` from the file now.

        Reads only the stretch of the file from the first one's state byte
        to the last one's, a piece at a time (never the bytes before or
        after it), under the reading lock.
        """
        parts = []
        with _ReadingLock(self.fd):
            while first < last:
                start = self.offsets[first]
                # The jobs whose state bytes lie in the next piece.
                stop = bisect.bisect_right(self.offsets, start + _INDEX_CHUNK, first + 1, last)
                data = os.pread(self.fd, self.offsets[stop - 1] + 1 - start, start)
                parts.append(self._gathered(data, start, first, stop))
                first = stop
        return b"".join(parts)

    def _gathered(self, data: bytes, base: int, first: int, stop: int) -> bytes:
        """The state bytes of jobs ``first..stop-1`` in ``data``; a cut file reads as ``d``."""
        if len(data) < self.offsets[stop - 1] + 1 - base:
            data += b"d" * (self.offsets[stop - 1] + 1 - base - len(data))
        return _gather(data, base, memoryview(self.offsets)[first:stop])

    def take_set_notices(self) -> list[tuple[int, int]]:
        """The line ranges named by ``#runmaker set`` lines indexed since the last call.

        ``(1, 0)`` stands for a notice without lines: every line may have changed.
        """
        notices, self._set_notices = self._set_notices, []
        return notices

    def command(self, index: int) -> bytes:
        """The command of job ``index``, read from the file (it never changes)."""
        start = self.offsets[index] + _COMMAND_SKIP
        return os.pread(self.fd, self.ends[index] - start, start)

    def index_of_line(self, line: int) -> int | None:
        """The job index of a line number, or None if that line is no job."""
        i = bisect.bisect_left(self.lines, line)
        return i if i < len(self.lines) and self.lines[i] == line else None

    def intact(self) -> bool:
        """False once the file is known to have shrunk: nothing may be written then.

        Looks at its size again (fstat): a truncation is seen even between
        two reads.
        """
        if not self.shrunk and os.fstat(self.fd).st_size < self.size:
            self.shrunk = True
        return not self.shrunk

    def replaced(self) -> bool:
        """True when the path now names another file than the one held open.

        An editor that saves a new copy replaces the file: writing at old
        offsets into the new one would corrupt it.
        """
        if self.shrunk:
            return True
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    # -- indexing ----------------------------------------------------------

    def _resume_offset(self) -> int:
        return self._tail[0] if self._tail else self.size

    def _widen_for(self, end: int) -> None:
        """Make the offset arrays hold offsets up to ``end`` (8 bytes each from 4 GiB on)."""
        if end >= 1 << 32 and self.offsets.typecode != "q":
            self.offsets = array.array("q", self.offsets)
            self.ends = array.array("q", self.ends)

    def _index_from(self, data: bytes, base: int) -> int:
        self._widen_for(base + len(data))
        if self._tail is not None:
            _, jobs, barriers, lines, max_running, outline = self._tail
            del self.offsets[jobs:], self.ends[jobs:], self.lines[jobs:]
            del self.barriers[barriers:], self.barrier_lines[barriers:]
            self.line_count, self.max_running = lines, max_running
            self._undo_outline(outline, jobs)
            self._tail = None
        first_new = len(self.offsets)
        # Split a large read a piece at a time: a list of every line of a
        # file of a million jobs would cost more than the whole index.
        start, pos = 0, base
        end = data.rfind(b"\n") + 1  # complete lines end here
        while start < end:
            cut = data.find(b"\n", start + _INDEX_CHUNK) + 1 if end - start > _INDEX_CHUNK else end
            pos = self._index_lines(data[start:cut], pos)
            start = cut
        last = data[end:]
        self.unfinished = None
        if last:
            if not self._read_before:
                self._first_tail = (pos, len(last))
            # Indexed like any line, and undone to be indexed again if it
            # grows.  Unless the first read found it as it is, a writer may
            # still be at it: its job is not claimed and its directive not
            # obeyed until the newline arrives (a piece of a kill directive
            # must not kill anything either).
            settled = self._first_tail == (pos, len(last))
            self._tail = (pos, len(self.offsets), len(self.barriers), self.line_count, self.max_running,
                          self._outline_mark())
            jobs = len(self.offsets)
            self._in_tail = True
            self._settled = settled
            self._last_link = None
            try:
                self._index_lines(last + b"\n", pos)
            finally:
                self._in_tail = False
                self._settled = True
            self._tail_link = self._last_link
            if not settled and len(self.offsets) > jobs:
                self.unfinished = jobs
        self.size = pos + len(last)
        return first_new

    def _index_lines(self, chunk: bytes, pos: int) -> int:
        """Index the complete lines of ``chunk`` (read at ``pos``); return its end."""
        pieces = chunk.split(b"\n")
        pieces.pop()  # the empty piece after the last newline
        # The hot loop of a large file: names bound locally, one len() a line.
        add_offset, add_end, add_line = self.offsets.append, self.ends.append, self.lines.append
        separators, not_state, trailing = _SEPARATORS, _NOT_STATE, _TRAILING_SPACE
        line = self.line_count
        outline = self.parents is not None
        for raw in pieces:
            line += 1
            size = len(raw)
            if size >= 3 and raw[1] in separators and raw[0] not in not_state:
                end = len(raw.rstrip()) if raw[-1] in trailing else size
                if end > 2:
                    add_offset(pos)
                    add_end(pos + end)
                    add_line(line)
                    if outline or raw[2] in separators:
                        self._place_in_outline(raw[2:end], line)
                        outline = True
                    pos += size + 1
                    continue
            self._index_other(raw, line, pos)
            pos += size + 1
        self.line_count = line
        return pos

    def _index_other(self, raw: bytes, line: int, pos: int) -> None:
        if not raw or raw.isspace() or not self._settled:
            return
        if raw[0] in b"#/":
            if raw.startswith(b"#runmaker") and (len(raw) == 9 or raw[9] in b" \t\r"):
                kills = len(self.kills)
                self._directive(raw[9:].split(), line)
                if len(self.kills) > kills:
                    self._place_kill(kills, pos)
            return
        # Counted once: an unterminated last line is indexed again as it grows.
        if line > self._last_command_like and _reads_like_a_command(raw):
            self._last_command_like = line
            self.command_like_lines += 1
            if self.first_command_like is None:
                self.first_command_like = (line, raw)
        self._warn_line(line, "not a job line (a state byte, a space or tab, then the command)")

    # -- the outline -------------------------------------------------------
    #
    # A job's parent is the nearest job line above it with a smaller indent
    # (the leading blanks of its command; a tab counts as one space).  One
    # pass keeps a stack of the jobs a new job may hang under, their indents
    # rising: pop those indented as deep or deeper, and the top is the
    # parent.  Each job is pushed and popped once, so indexing stays linear.
    # Each job also links to its first child and its next sibling (the entry
    # popped last sat right above the parent: it is the previous child), so
    # children_of costs the children only, however deep the subtree.

    def parent_of(self, index: int) -> int:
        """The index of job ``index``'s parent, or -1 if it has none."""
        return -1 if self.parents is None else self.parents[index]

    def children_of(self, index: int) -> Iterator[int]:
        """The indexes of job ``index``'s children, in file order."""
        if self.parents is None:
            return
        child = self._first_child[index]
        while child >= 0:
            yield child
            child = self._next_sibling[child]

    def _place_in_outline(self, command: bytes, line: int) -> None:
        index = len(self.offsets) - 1
        indent = len(command) - len(command.lstrip(b" \t"))
        if self.parents is None:
            # The first indented job: every job before it has indent 0.
            self.parents = array.array("i", [-1]) * index
            self._first_child = array.array("i", [-1]) * index
            self._next_sibling = array.array("i", [-1]) * index
            self._outline = [(0, index - 1)] if index else []
        outline = self._outline
        previous = -1  # the parent's latest child, if any: the entry popped last
        while outline and outline[-1][0] >= indent:
            previous = outline.pop()[1]
        parent = outline[-1][1] if outline else -1
        self.parents.append(parent)
        self._first_child.append(-1)
        self._next_sibling.append(-1)
        if parent >= 0:
            link = (self._next_sibling, previous) if previous >= 0 else (self._first_child, parent)
            link[0][link[1]] = index
            self._last_link = link
        outline.append((indent, index))
        if b"\t" in command[:indent]:
            self._warn_once(line, f"Warning: {self.path}:{line}: tabs in the indent count as one space each")

    def _outline_mark(self) -> _OutlineMark:
        return None if self.parents is None else list(self._outline)

    def _undo_outline(self, outline: _OutlineMark, jobs: int) -> None:
        if self._tail_link is not None:
            links, at = self._tail_link
            links[at] = -1
            self._tail_link = None
        if outline is None:
            self.parents = None
            self._outline = []
        elif self.parents is not None:
            del self.parents[jobs:], self._first_child[jobs:], self._next_sibling[jobs:]
            self._outline = outline

    def _place_kill(self, kills: int, pos: int) -> None:
        if self._in_tail:
            # A line still being written may be a piece of a longer one
            # ("kill 1" of "kill 12"): it kills nothing until it is whole.
            del self.kills[kills:]
        else:
            self.kill_offsets.append(pos)

    def _directive(self, words: list[bytes], line: int) -> None:
        if words[:1] == [b"barrier"] and len(words) == 1:
            self.barriers.append(len(self.offsets))
            self.barrier_lines.append(line)
        elif words[:1] == [b"max-running"] and len(words) == 2:
            if words[1] == b"none":
                self.max_running = None
            elif words[1].isdigit():  # bytes: ASCII digits only
                cap = parse_cap(words[1])
                if cap is None:
                    self._warn_line(line, f"max-running above {MAX_CAP}")
                    return
                self.max_running = cap
                self.max_running_peak = max(self.max_running_peak, cap)
            else:
                self._warn_line(line, "max-running takes a whole number or 'none'")
        elif words[:1] == [b"set"]:
            self._set_notice(words[1:], line)
        elif words[:1] == [b"kill"] and len(words) > 1 and all(w.isdigit() for w in words[1:]):
            self.kills.append(tuple(int(w) for w in words[1:]))
        else:
            self._warn_line(
                line, "unknown #runmaker directive (known: max-running N|none, barrier, set, kill)"
            )

    def _set_notice(self, specs: list[bytes], line: int) -> None:
        """``#runmaker set [LINE|A-B]...``: state bytes of these lines changed in place."""
        ranges = []
        for spec in specs:
            match = _JOB_SPEC.match(spec.decode("ascii", "replace"))
            if match is None:
                self._warn_line(line, "set takes line numbers and ranges A-B")
                ranges = [(1, 0)]  # reread everything rather than miss a change
                break
            ranges.append((int(match[1]), int(match[2] or match[1])))
        self._set_notices.extend(ranges or [(1, 0)])

    def _warn_line(self, line: int, why: str) -> None:
        self._warn_once(line, f"Warning: {self.path}:{line}: {why}; ignored")

    def _warn_once(self, line: int, text: str) -> None:
        if self._warn is None or line in self._warned:
            return
        self._warned.add(line)
        if len(self._warned) <= _MAX_WARNINGS:
            self._warn(text)
        elif len(self._warned) == _MAX_WARNINGS + 1:
            self._warn(f"Warning: {self.path}: more lines are ignored; not naming them all")


# --------------------------------------------------------------------------
# What holds pending jobs back: failed parents and barriers
# --------------------------------------------------------------------------

_MAX_NAMED = 10  # failures, and ranges of jobs per failure, that a worker names


def _find_held_back(
    jobfile: JobFile,
    states: bytes | bytearray,
    pending: Iterable[int],
    failed: Callable[[int], bool],
    first_failure: int | None,
) -> dict[int, tuple[int, bool]]:
    """Which of the ``pending`` jobs (indexes, in file order) failures hold back.

    Returns, for each job held, the failed job that holds it and whether it
    does so through a barrier.  A job is held when its parent failed
    (``failed`` says which jobs are failures), when its parent is held
    itself, or when it lies below a barrier with a failure above it (the
    first failure in the file, ``first_failure``, is above every such
    barrier).  A job whose parent runs or may still run is not held: it
    waits.  One pass, since parents come before their children.
    """
    held: dict[int, tuple[int, bool]] = {}
    if first_failure is None:
        return held
    barriers = jobfile.barriers
    at = bisect.bisect_right(barriers, first_failure)
    shut_from = barriers[at] if at < len(barriers) else None  # first job below a shut barrier
    parents = jobfile.parents
    for index in pending:
        parent = parents[index] if parents is not None else -1
        if parent >= 0 and states[parent] not in _PARENT_DONE:
            if failed(parent):
                held[index] = (parent, False)
                continue
            if parent in held:
                held[index] = held[parent]
                continue
        if shut_from is not None and index >= shut_from:
            held[index] = (first_failure, True)
    return held


def _describe_held_back(
    jobfile: JobFile, states: bytes | bytearray, held: dict[int, tuple[int, bool]]
) -> list[str]:
    """A line per cause: the barrier a failure holds shut, then each failed parent and its jobs."""
    text = []
    if any(through_barrier for _, through_barrier in held.values()):
        first = min(failure for failure, through_barrier in held.values() if through_barrier)
        at = bisect.bisect_right(jobfile.barriers, first)
        text.append(
            f"{jobfile.path}: jobs below the barrier at line {jobfile.barrier_lines[at]} "
            "wait for failed jobs above it"
        )
    by_failure: dict[int, list[int]] = {}
    for index, (failure, through_barrier) in held.items():
        if not through_barrier:
            by_failure.setdefault(failure, []).append(index)
    failures = sorted(by_failure)
    for failure in failures[:_MAX_NAMED]:
        jobs = by_failure[failure]
        ranges = _line_ranges(jobfile.lines, jobs).split(" ")
        named = " ".join(ranges[:_MAX_NAMED])
        if len(ranges) > _MAX_NAMED:
            named += f" ... ({len(jobs)} jobs)"
        state = _shown(bytes((states[failure],)))
        text.append(f"{jobfile.path}: blocked by {jobfile.lines[failure]} ('{state}'): {named}")
    if len(failures) > _MAX_NAMED:
        more = failures[_MAX_NAMED:]
        text.append(
            f"{jobfile.path}: {len(more)} more failures hold back "
            f"{sum(len(by_failure[failure]) for failure in more)} jobs (runset -l names them)"
        )
    return text


# --------------------------------------------------------------------------
# The scheduler: which job runs next, claimed under its lock
# --------------------------------------------------------------------------


class _Committer:
    """Makes state bytes durable off the event loop, then lets go of their locks.

    One thread does fsync after fsync, each covering every byte written
    before it began (group commit), and only after its fsync releases the
    job and slot locks handed in with it: over NFS another host reads the
    byte as soon as it wins the lock, so the byte must be on the server
    first.  The event loop never waits for the disk.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._queue: list[Callable[[], None]] = []
        self._dirty = False
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="runmaker-fsync", daemon=True)
        self._thread.start()

    def submit(self, releases: list[Callable[[], None]]) -> None:
        """fsync what was written so far, then run ``releases``."""
        with self._cond:
            self._raise_error()
            self._dirty = True
            self._queue.extend(releases)
            self._cond.notify()

    def wait(self) -> None:
        """Return once everything submitted is durable and released."""
        with self._cond:
            while self._dirty or self._busy:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closed:
                    self._cond.wait()
                if not self._dirty:
                    return
                releases, self._queue = self._queue, []
                self._dirty = False
                self._busy = True
            try:
                os.fsync(self._fd)
                for release in releases:
                    release()
            except BaseException as exc:  # handed to the event loop by submit/wait
                self._error = exc
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class IdleReason(str, enum.Enum):
    """Why a claim got fewer jobs than asked (``idle_reason`` of a JobSource)."""

    WAITING = "waiting"  # a cap, or a barrier whose jobs above still run: it will clear
    STALE = "stale"  # a lock was held elsewhere, or the view is old: look again later
    DONE = "done"  # nothing is left that this process could run
    BLOCKED = "blocked"  # only jobs that failures hold back (failed parents, barriers) are left


def work_is_over(reason: IdleReason | None, *, running: bool, follow: bool) -> bool:
    """The end rule of a worker and of a TCP server (SPEC section 4, "Ending").

    One stops once it runs nothing and its source says nothing is left that
    it could run (DONE) or only jobs that a failure holds back (BLOCKED).
    WAITING and STALE keep it going, and so does ``follow``, always.
    """
    return not running and not follow and reason in (IdleReason.DONE, IdleReason.BLOCKED)


@dataclass(eq=False)
class Claim:
    """A job this process holds the lock of (and, under a cap, a slot lock)."""

    index: int
    line: int
    command: bytes
    slot: int | None = None
    was: str = "."  # its state before the claim: what --requeue puts back
    # The job file's size when the job was claimed: a kill line that starts
    # at or past it was appended while this run lived (see _take_kill_lines).
    file_size: int = 0


class Scheduler:
    """Claims the jobs of one job file in SPEC order, for a worker or a server.

    Order: ``+`` jobs in file order, then ``.`` jobs (and with ``retry``
    ``!``/``e`` jobs this process has not run yet) in file order.  A job
    below a barrier waits until every job above it is ``d`` or ``-``; under
    ``#runmaker max-running N`` a job starts only with one of the N slot
    locks held.  The cached state bytes only say where to look: every claim
    is decided by the byte reread under the job's own lock.

    Writes are grouped: ``claim_jobs`` and ``finish_job`` write state bytes,
    ``commit`` makes them durable with one fsync and only then releases the
    locks of finished jobs (another host may read the byte once we unlock).
    """

    def __init__(
        self,
        jobfile: JobFile,
        *,
        retry: bool = False,
        notify: Callable[[str], None] | None = None,
        states: bytes | None = None,
    ) -> None:
        """``states``: every indexed job's state byte as the caller just read
        them (check_job_file); the first rescan then reads them again only if
        lines were appended since."""
        self.jobfile = jobfile
        self.retry = retry
        self._notify = notify  # says which lost jobs it marked 'e'
        self.states = bytearray()
        self.held: dict[int, Claim] = {}
        self.held_slots: set[int] = set()
        self.attempted: set[int] = set()
        # Why the last claim_jobs call claimed fewer jobs than asked, or None.
        self.idle_reason: IdleReason | None = None
        # Job indexes in file order that may start as far as their parents
        # go.  A child joins (bisect.insort) when its parent ends
        # (_release_children), so subtrees that wait are never walked.
        self._high: list[int] = []
        self._normal: list[int] = []
        # Called with the line of a held job that a new kill line names
        # (the Worker's kill_job); kill lines before this one are old.
        self.on_kill: Callable[[int], object] | None = None
        self._kills_seen = 0
        self._block: list[str] = []  # why pending jobs are held, once BLOCKED
        self._done_prefix = 0
        self._dirty = False
        self._releasing: set[int] = set()  # final byte written, lock not yet released
        self._release_later: list[Claim] = []
        self._committer = _Committer(jobfile.fd)
        self._last_refresh = 0.0
        self._last_identity_check = 0.0
        self._acted_since_rescan = False
        self._last_rescan = 0.0
        self._rescan_cost = 0.0
        self._last_lost_probe = 0.0
        self._blocked_by: str | None = None
        self._contended = False  # a queued job's lock was held elsewhere
        self._abandoned = False
        self._first_states = states
        self.rescan()

    # -- public ------------------------------------------------------------

    def rescan(self, *, whole: bool = True, probe: bool = False) -> None:
        """Reread state bytes; mark lost jobs ``e``; rebuild the queues.

        ``whole``: every state byte of the file.  Otherwise only from the
        finished prefix on (every job above it is ``d`` or ``-``, which only
        ``runset --set`` changes, and it says so with a ``#runmaker set``
        notice that _refresh follows), after reading what was appended.
        Running jobs are probed for lost ones at a whole rescan, with
        ``probe``, and otherwise every _LOST_PROBE_GAP seconds.
        """
        started = time.monotonic()
        if whole:
            first_new, new_states = self.jobfile.read_new_states()
            if self.jobfile.shrunk:
                return  # our offsets point past its end now: claim nothing (see _why_idle)
            notices = self.jobfile.take_set_notices()  # every indexed byte is read here
            if self.jobfile.names_folded(notices):
                self._unfold()  # but not the folded head's: a notice names a line there
                self.rescan()
                return
            known, self._first_states = self._first_states, None
            if known is not None and not new_states and not notices and len(known) == first_new:
                # Read moments ago, and nothing appended since (no job, no
                # "#runmaker set" notice): not read a second time.  A byte
                # another worker changed meanwhile is reread under its job
                # lock before anything is decided on it (rule 2).
                states = bytearray(known)
            else:
                states = bytearray(self.jobfile.states_between(0, first_new))
            states += new_states
            del new_states
            first = 0
        else:
            self._refresh()
            if self.jobfile.shrunk:
                return
            first = self._done_prefix
            states = self.states
            states[first:] = self.jobfile.states_between(first, len(self.jobfile.offsets))
        for index in self.held:
            states[index] = _RUNNING
        self.states = states
        self._take_kill_lines()
        if whole or probe or started - self._last_lost_probe >= _LOST_PROBE_GAP:
            # Each probe of a job running elsewhere is a failed lock round
            # trip (on NFS, to the server): not at every rescan.
            self._mark_lost_jobs(first)
            self._last_lost_probe = started
        self._rebuild_queues(0)
        if whole:
            self._done_prefix = 0
        self._advance_done_prefix()
        now = time.monotonic()
        self._last_rescan = self._last_refresh = now
        self._rescan_cost = now - started
        self._acted_since_rescan = False

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        """Claim up to ``count`` jobs: lock, reread, write ``r`` (no fsync yet).

        Appended lines (and ``#runmaker set`` notices of states changed in
        place) are read every 0.1 s; the state bytes below the finished
        prefix (for jobs lost, or changed by hand) are reread when half a
        second has passed, and no more often than _RESCAN_RATE bytes a
        second and ~5% of the time allow.  Before locking, the state bytes
        around the head of the queues are read once (_peek_queue_heads), so
        jobs others took are skipped without a lock attempt each.
        ``idle`` says the caller runs nothing: then a rescan after our own
        last claim or finish is worth its cost before saying there is nothing
        left.  Sets ``idle_reason``.
        """
        now = time.monotonic()
        fresh = False
        acted = self._acted_since_rescan
        if now - self._last_rescan >= self._rescan_gap():
            self.rescan(whole=False)
            fresh = True
        elif now - self._last_refresh >= _REFRESH_GAP / 2:
            # Half the gap: a caller that looks every _REFRESH_GAP reads at each look.
            self._refresh()
        if count and not fresh:
            self._peek_queue_heads(count)
        if self.jobfile.max_running is not None:
            self._adopt_slots()
        claims = self._claim_from_queues(count)
        if len(claims) < count and idle and acted:
            # Out of work (not just between two jobs, as a -j1 worker always
            # is): probe for lost jobs before it may end.  Each probe of a
            # job running elsewhere is a refused lock, on NFS a round trip.
            self.rescan(whole=False, probe=True)
            fresh = True
            claims += self._claim_from_queues(count - len(claims))
        elif not self._acted_since_rescan:
            fresh = True  # the last rescan is recent, and nothing we did since changes it
        self.idle_reason = self._why_idle(fresh, idle) if len(claims) < count else None
        return claims

    def refresh(self) -> None:
        """Read appended lines (at most every 0.1 s) and adopt a new cap; claim nothing.

        For a worker busy with -j jobs: a cap appended meanwhile counts its
        running jobs at once.
        """
        if time.monotonic() - self._last_refresh >= _REFRESH_GAP:
            self._refresh()
        if self.jobfile.max_running is not None:
            self._adopt_slots()
        self.idle_reason = None

    def finish_job(self, claim: Claim, state: str) -> None:
        """Write a held job's final state byte; ``commit`` then releases it."""
        offset = self.jobfile.offsets[claim.index]
        # A file truncated under us (SPEC: it never is) may since hold other
        # text at this offset: once we know it shrank, we write nothing.
        if self.jobfile.intact():
            _write_job_state(self.jobfile.fd, offset, state.encode())
        self._dirty = True
        self._acted_since_rescan = True
        self.states[claim.index] = ord(state)
        del self.held[claim.index]
        self._releasing.add(claim.index)
        self._release_later.append(claim)
        if state == "d":
            self._release_children(claim.index)

    def commit(self) -> None:
        """Make the state bytes written durable, then release finished jobs.

        Returns at once: the fsync, and the unlocks that must follow it, are
        the committer thread's.  Jobs just claimed are started without
        waiting for it; their ``r`` is durable a fraction of a millisecond
        later, and no other process can read the byte before then anyway,
        since it stays locked.
        """
        if not self._dirty:
            return
        self._dirty = False
        releases = [self._releaser(claim) for claim in self._release_later]
        self._release_later.clear()
        self._committer.submit(releases)
        self._advance_done_prefix()

    def close(self) -> None:
        """Make every state byte written durable and release its lock."""
        if self._abandoned:
            return
        try:
            self.commit()
        finally:
            self._committer.close()

    def abandon(self) -> None:
        """After the job file failed: write, fsync and release nothing more.

        Its locks may be gone already (EIO from NFS); an fsync could write
        pages back over bytes that other hosts now own.  Closing the
        descriptor, or the process ending, lets go of whatever is left.
        """
        self._abandoned = True

    def _releaser(self, claim: Claim) -> Callable[[], None]:
        # Read here, on the event loop: the committer thread must not index
        # arrays that the event loop changes (re-indexing a grown last line).
        fd, offset, slot, index = self.jobfile.fd, self.jobfile.offsets[claim.index], claim.slot, claim.index

        def release() -> None:
            _release_job_locks(fd, (offset,), written=False)  # the committer fsynced
            self._release_slot(slot)
            self._releasing.discard(index)

        return release

    def replaced(self) -> bool:
        """True once the job file was replaced under us (looked at every 0.1 s)."""
        now = time.monotonic()
        if now - self._last_identity_check < _REFRESH_GAP:
            return False
        self._last_identity_check = now
        return self.jobfile.replaced()

    def nothing_left(self) -> IdleReason | None:
        """Without claiming: DONE if no job is left to run, BLOCKED if only
        jobs that failures hold back (failed parents, barriers) are, else None.

        The end rule of a worker, for a TCP server with no client asking.
        Rereads the file below the finished prefix first.
        """
        self.rescan(whole=False)
        if self.jobfile.shrunk:
            return None  # the caller's replaced() check says so
        if any(
            index not in self._releasing
            and self._runnable(self.states[index], index)
            and not self._below_open_barrier(index)
            for queue in (self._high, self._normal)
            for index in queue
        ):
            return None  # a job may start now
        return self._held_back_by_failures()

    def describe_nothing_to_run(self) -> str:
        """One line on a file with nothing to run: what its jobs are, what would run them.

        ``nothing to run in runs.txt (12 done, 2 failed; -r reruns them)``.
        """
        counts = collections.Counter(self.states) + self.jobfile.folded_jobs
        named = ((_DONE, "done"), (_FAILED, "failed"), (_ERROR, "error"), (ord("-"), "retired"),
                 (_RUNNING, "running"), (_PENDING, "pending"), (_HIGH, "pending, high priority"))
        parts = [f"{counts[state]} {name}" for state, name in named if counts[state]]
        others = counts.total() - sum(counts[state] for state, _ in named)
        if others:
            parts.append(f"{others} in another state")
        what = ", ".join(parts) or "no jobs"
        if (counts[_FAILED] or counts[_ERROR]) and not self.retry:
            what += "; -r reruns them"
        return f"nothing to run in {self.jobfile.path} ({what})"

    def describe_block(self) -> str:
        """Why pending jobs will not start (for BLOCKED): a line per cause."""
        return "\n".join(self._block) or f"{self.jobfile.path}: jobs are held back"

    # -- queues ------------------------------------------------------------

    def _refresh(self) -> None:
        before = len(self.states)
        first_new, new_states = self.jobfile.read_new_states()
        self._last_refresh = time.monotonic()
        self._take_kill_lines()
        if first_new < len(self.jobfile.offsets) or first_new < before:
            del self.states[first_new:]
            self.states += new_states
            self._rebuild_queues(first_new)
        self._follow_set_notices()

    def _follow_set_notices(self) -> None:
        """Reread the state bytes that ``#runmaker set`` notices name.

        ``runset --set`` appends one after it changed state bytes in place
        (written, fsynced and unlocked first), so following the appended
        lines is enough to see every such change, however large the file.
        """
        notices = self.jobfile.take_set_notices()
        if not notices or self.jobfile.shrunk:
            return
        if (1, 0) in notices or self.jobfile.names_folded(notices):
            # A notice without lines (anything may have changed), or one
            # that names a line of the folded head: reread every byte.
            self._unfold()
            self.rescan()
            return
        lines, changed = self.jobfile.lines, len(self.states)
        for first_line, last_line in notices:
            first = bisect.bisect_left(lines, first_line)
            last = min(bisect.bisect_right(lines, last_line), len(self.states))
            if first >= last:
                continue
            fresh = self.jobfile.states_between(first, last)
            for index in range(first, last):
                if index in self.held or index in self._releasing:
                    continue  # ours: nobody else writes it
                if self.states[index] != fresh[index - first]:
                    self.states[index] = fresh[index - first]
                    changed = min(changed, index)
        if changed < len(self.states):
            self._rebuild_queues(0)
            self._done_prefix = min(self._done_prefix, changed)
            self._advance_done_prefix()

    def _unfold(self) -> None:
        """Have the JobFile index its folded head, and move every job index we keep.

        The committer's releases name job indexes: they finish first.
        """
        if not self.jobfile.folded_lines:
            return
        self.commit()
        self._committer.wait()
        shift = self.jobfile.unfold()
        for claim in self.held.values():
            claim.index += shift
        self.held = {claim.index: claim for claim in self.held.values()}
        self.attempted = {index + shift for index in self.attempted}
        self._releasing = {index + shift for index in self._releasing}  # empty after the wait

    def _peek_queue_heads(self, count: int) -> None:
        """Read the state bytes around the head of each queue, in one read each.

        Jobs other workers took (or finished) since our last look are then
        skipped without a lock attempt each: on NFS every attempt is a round
        trip to the server, and with many workers most would fail.  The
        read takes the reading lock, which on NFS is what makes it fresh.
        """
        for queue in (self._high, self._normal):
            if not queue:
                continue
            first = queue[0]
            # Every job a spread pick (_SPREAD) may try is looked at too.
            last = queue[min(len(queue) - 1, max(2 * count + _PEEK_EXTRA, _SPREAD))] + 1
            last = min(last, bisect.bisect_right(self.jobfile.offsets,
                                                 self.jobfile.offsets[first] + _PEEK_BYTES))
            fresh = self.jobfile.states_between(first, last)
            for index in range(first, last):
                if index not in self.held and index not in self._releasing:
                    self.states[index] = fresh[index - first]

    def _rebuild_queues(self, first: int) -> None:
        if first == 0:
            self._high.clear()
            self._normal.clear()
        states = self.states
        high = [m.start() for m in _HIGH_QUEUE.finditer(states, first)]
        pattern = _NORMAL_QUEUE_RETRY if self.retry else _NORMAL_QUEUE
        normal = [m.start() for m in pattern.finditer(states, first)]
        if self.jobfile.parents is not None:
            high, normal = self._with_parent_done(high), self._with_parent_done(normal)
        # Every index added is at least as large as every one queued, so
        # the lists stay sorted.
        self._high.extend(high)
        self._normal.extend(normal)

    # -- the outline and kill lines --------------------------------------

    def _with_parent_done(self, indexes: list[int]) -> list[int]:
        """The jobs among ``indexes`` whose parent is done (or who have none).

        A rescan asks this of every pending job: done as C loops (a byte per
        job, 1 where it is d or -, looked up by each parent's index; the
        extra byte at the end answers for "no parent", index -1).
        """
        parents = self.jobfile.parents
        if parents is None or not indexes:
            return indexes
        done = self.states.translate(_PARENT_DONE_TABLE) + b"\x01"
        flags = bytes(map(done.__getitem__, map(parents.__getitem__, indexes)))
        return list(itertools.compress(indexes, flags))

    def _release_children(self, index: int) -> None:
        """Queue the children of a job that just ended 'd': their parent is done."""
        for child in self.jobfile.children_of(index):
            state = self.states[child]
            if self._runnable(state, child):
                bisect.insort(self._high if state == _HIGH else self._normal, child)

    def _parent_done_now(self, index: int) -> bool:
        """Reread the parent's state byte, under the child's lock just taken.

        The cached byte may be old (the parent set back to '.' by hand, on
        another host); taking the lock made the NFS client drop its cache,
        so this read is fresh.  A parent not done sends the child back to
        wait: it is queued again when the parent ends.
        """
        parent = self.jobfile.parent_of(index)
        if parent < 0:
            return True
        current = os.pread(self.jobfile.fd, 1, self.jobfile.offsets[parent])
        if current and parent not in self.held:
            self.states[parent] = current[0]
        return not current or current[0] in _PARENT_DONE

    def _take_kill_lines(self) -> None:
        """Hand ``on_kill`` the held jobs that kill lines read since the last look name.

        A kill line acts on the runs that lived when it was appended: a run
        claimed after it found the file at least that long (a claim reads
        the size after taking the job lock, which on NFS revalidates it).
        """
        jobfile = self.jobfile
        for number in range(self._kills_seen, len(jobfile.kills)):
            for line in jobfile.kills[number]:
                index = jobfile.index_of_line(line)
                claim = self.held.get(index) if index is not None else None
                stale = claim is None or claim.file_size > jobfile.kill_offsets[number]
                if not stale and self.on_kill is not None:
                    self.on_kill(line)
        self._kills_seen = len(jobfile.kills)

    def _runnable(self, state: int, index: int) -> bool:
        if state in (_PENDING, _HIGH):
            return True
        return self.retry and state in (_FAILED, _ERROR) and index not in self.attempted

    def _rescan_gap(self) -> float:
        # A rescan reads the file below the finished prefix: keep its share
        # of the time, and of the (NFS) server's bytes, small.
        offsets = self.jobfile.offsets
        unfinished = offsets[-1] - offsets[self._done_prefix] if self._done_prefix < len(offsets) else 0
        return max(_POLL, 20 * self._rescan_cost, unfinished / _RESCAN_RATE)

    def _claim_from_queues(self, count: int) -> list[Claim]:
        claims: list[Claim] = []
        self._blocked_by = None
        self._contended = False
        if self.jobfile.shrunk:
            return claims  # a truncated file: the indexed lines are gone
        for queue in (self._high, self._normal):
            spread = False  # set once another worker won a job we tried
            while queue and len(claims) < count:
                at = _spread_pick(len(queue)) if spread else 0
                index = queue[at]
                if index in self._releasing or not self._runnable(self.states[index], index):
                    del queue[at]
                    continue
                if self._below_open_barrier(index):
                    if at:
                        spread = False  # the jobs before it may still start
                        continue
                    self._blocked_by = "barrier"
                    break  # every later job in this queue is below it too
                claim = self._claim(index)
                if claim is False:
                    self._blocked_by = "cap"
                    return claims
                del queue[at]
                if claim is not None:
                    claims.append(claim)
                elif self._contended:
                    # Others claim at the same moment: look at the queue
                    # head again, and try one of its first jobs at random
                    # rather than the one every other worker tries next.
                    spread = True
                    self._peek_queue_heads(count - len(claims))
        return claims

    def _claim(self, index: int) -> Claim | None | Literal[False]:
        """Claim one job; None if it is not to be had, False if no slot is free."""
        if index == self.jobfile.unfinished:
            return None  # its line is still being written: taken up again with its newline
        slot = None
        if self.jobfile.max_running is not None:
            slot = self._take_slot()
            if slot is None:
                return False
        fd, offset = self.jobfile.fd, self.jobfile.offsets[index]
        current = _lock_and_reread_job(fd, offset)
        if current is None:
            self._release_slot(slot)
            # Running elsewhere, or only looked at (runset --set, a probe):
            # not a reason to say nothing is left until a rescan tells.
            self._contended = True
            return None
        # Another worker may have run the job to its end since we looked.
        state = current[0] if current else _DONE
        if not self._runnable(state, index) or not self._parent_done_now(index):
            _release_job_locks(fd, (offset,), written=False)
            self._release_slot(slot)
            self.states[index] = state
            return None
        # The size now, read under the lock (fresh on NFS): kill lines
        # appended before this claim lie below it (see _take_kill_lines).
        size = os.fstat(fd).st_size
        _write_job_state(fd, offset, b"r")  # fsynced by commit(); the lock stays
        self._dirty = True
        self._acted_since_rescan = True
        self.states[index] = _RUNNING
        claim = Claim(index, self.jobfile.lines[index], self.jobfile.command(index), slot, chr(state))
        claim.file_size = size
        self.held[index] = claim
        self.attempted.add(index)
        return claim

    def _take_slot(self) -> int | None:
        cap = self.jobfile.max_running or 0
        if cap < self.jobfile.max_running_peak and self._slots_above_cap_held(cap):
            return None  # the cap was lowered: jobs started above it end first
        for claim in self._release_later:
            # A job that just ended holds its slot until the commit after
            # this claim; waiting for that release would leave the slot idle
            # until the next poll.  Hand it on instead.
            if claim.slot is not None and claim.slot < cap:
                slot, claim.slot = claim.slot, None
                return slot
        for slot in range(cap):
            # Our own slot locks would not conflict with us: skip them.
            if slot not in self.held_slots and _lock_byte(
                self.jobfile.fd, SLOT_BASE + slot, exclusive=True, wait=False
            ):
                self.held_slots.add(slot)
                return slot
        return None

    def _adopt_slots(self) -> None:
        """Give each job started before the cap appeared a free slot.

        A job started without a cap holds no slot, so a cap set later would
        not count it and new jobs would start beside it.  Taking free slots
        for such jobs as soon as the cap is seen makes them count; any that
        find none left run on uncounted, since a cap stops no running job.
        """
        for claim in self.held.values():
            if claim.slot is None:
                slot = self._take_slot()
                if slot is None:
                    return
                claim.slot = slot

    def _slots_above_cap_held(self, cap: int) -> bool:
        """True while a job started under an earlier, higher cap still runs.

        Lowering the cap stops no job, but no new one may start until fewer
        than ``cap`` run, so every slot from ``cap`` up must be free.  One
        lock request over all of them asks every host at once.
        """
        if max(self.held_slots, default=-1) >= cap:
            # Ours: a probe would not see them, and its unlock would drop them.
            return True
        return _is_locked_elsewhere(self.jobfile.fd, SLOT_BASE + cap, length=0)

    def _release_slot(self, slot: int | None) -> None:
        if slot is not None:
            _unlock_byte(self.jobfile.fd, SLOT_BASE + slot)
            self.held_slots.discard(slot)

    def _mark_lost_jobs(self, first: int = 0) -> None:
        """Mark ``e`` every ``r`` job from ``first`` on whose byte no process holds.

        The byte is reread under the lock we won: its worker may just have
        written the final state and let go.
        """
        fd, offsets, states = self.jobfile.fd, self.jobfile.offsets, self.states
        marked = []
        index = states.find(b"r", first)
        while index >= 0:
            if index not in self.held and index not in self._releasing:
                current = _lock_and_reread_job(fd, offsets[index])
                if current is not None:
                    lost = current == b"r"
                    if lost:
                        _write_job_state(fd, offsets[index], b"e")
                        states[index] = _ERROR
                        marked.append(index)
                    elif current:
                        states[index] = current[0]
                    _release_job_locks(fd, (offsets[index],), written=lost)
            index = states.find(b"r", index + 1)
        if marked and self._notify is not None:
            self._notify(
                f"runmaker: {self.jobfile.path}: lost jobs (r, but no worker holds them) marked 'e': "
                f"line {_line_ranges(self.jobfile.lines, marked)}; "
                + ("this worker runs them again (-r)" if self.retry else "-r reruns them")
            )

    def _advance_done_prefix(self) -> None:
        match = _FINISHED.match(self.states, self._done_prefix)
        self._done_prefix = match.end() if match else self._done_prefix

    def _below_open_barrier(self, index: int) -> bool:
        barriers = self.jobfile.barriers
        if not barriers or index < barriers[0]:
            return False
        return self._done_prefix < barriers[bisect.bisect_right(barriers, index) - 1]

    def _why_idle(self, fresh: bool, idle: bool) -> IdleReason:
        if self.jobfile.shrunk:
            return IdleReason.STALE  # not DONE: the worker must see replaced() and say so
        if self._blocked_by == "cap":
            return IdleReason.WAITING
        if not fresh:
            return IdleReason.WAITING if self._blocked_by == "barrier" else IdleReason.STALE
        if not idle:
            # Only a caller that runs nothing ends: the look at every job
            # left (below) is for that moment only.
            return IdleReason.WAITING
        ended = self._held_back_by_failures()
        if self._contended and ended is not IdleReason.BLOCKED:
            return IdleReason.STALE  # a job locked elsewhere (a claim, runset): look again
        return ended or IdleReason.WAITING

    def _held_back_by_failures(self) -> IdleReason | None:
        """DONE when no job is left to run, BLOCKED when failures hold back
        every one left (``describe_block`` then says which), else None.

        A failure is a ``!`` or ``e`` job this worker will not retry, or an
        unknown state: it becomes ``d`` or ``-`` only when the user acts.
        Looks at every job left to run, so only when idle (see _why_idle).
        """
        states = self.states
        pattern = _NORMAL_QUEUE_RETRY if self.retry else _NORMAL_QUEUE
        left = sorted(
            [m.start() for m in pattern.finditer(states, self._done_prefix)]
            + [m.start() for m in _HIGH_QUEUE.finditer(states, self._done_prefix)]
        )
        left = [index for index in left if self._runnable(states[index], index)]
        if not left:
            return IdleReason.DONE

        def failed(index: int) -> bool:
            state = states[index]
            return state not in _LIVE_OR_DONE and not self._runnable(state, index)

        first_failure = next(
            (m.start() for m in _NOT_DONE_YET.finditer(states, self._done_prefix) if failed(m.start())),
            None,
        )
        held = _find_held_back(self.jobfile, states, left, failed, first_failure)
        if len(held) < len(left):
            return None
        self._block = _describe_held_back(self.jobfile, states, held)
        return IdleReason.BLOCKED


# --------------------------------------------------------------------------
# Records of finished jobs: shared log, per-job files, GNU parallel job log
# --------------------------------------------------------------------------


# Records are opened safely (SPEC section 4): never through a symbolic link
# (O_NOFOLLOW), never a FIFO or device (O_NONBLOCK, so the open itself cannot
# hang, then fstat of the descriptor), never a file another user owns, never
# the job file.  Every check is made on a descriptor, not a name another user
# could swap between the check and the open, and a file is truncated only
# after the checks, through the descriptor.  A file that may be the job file
# is first opened with O_PATH: closing such a descriptor drops no POSIX lock,
# while closing any other descriptor of the job file drops every job lock
# this process holds.
_RECORD_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_O_PATH = getattr(os, "O_PATH", 0)
_RECORD_PATIENCE = 2.0  # seconds a worker waits for a record's append lock


def _stranger(st: os.stat_result, job_identity: tuple[int, int] | None) -> str | None:
    """Why a record file must not be written, or None if it may be."""
    if stat.S_ISLNK(st.st_mode):
        return "was a symbolic link"
    if stat.S_ISFIFO(st.st_mode):
        return "was a FIFO"
    if not stat.S_ISREG(st.st_mode):
        return "was not a regular file"
    if (st.st_dev, st.st_ino) == job_identity:
        return "is the job file itself"
    if st.st_uid != os.geteuid():
        return f"belonged to another user (uid {st.st_uid})"
    return None


def _check_record_path(path: str, what: str, job_identity: tuple[int, int] | None) -> None:
    """Refuse an unusable log or job log path before anything is created."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise RunmakerError(f"{path}: cannot open the {what}: No such file or directory") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunmakerError(f"{path}: cannot open the {what}: Permission denied") from None
        return
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot open the {what}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise RunmakerError(f"{path}: is a symbolic link; runmaker does not follow one to write the {what}")
    if stat.S_ISDIR(st.st_mode):
        raise RunmakerError(f"{path}: is a directory, not a {what}")
    _refuse_record(path, what, st, job_identity)


def _refuse_record(path: str, what: str, st: os.stat_result, job_identity: tuple[int, int] | None) -> None:
    why = _stranger(st, job_identity)
    if why is None:
        return
    if why.startswith("belonged"):
        raise RunmakerError(f"{path}: belongs to another user (uid {st.st_uid}), cannot be the {what}")
    if why.startswith("is the job file"):
        raise RunmakerError(f"{path}: is the job file itself, cannot be the {what}")
    raise RunmakerError(f"{path}: not a regular file, cannot be the {what}")


def _open_record_file(path: str, what: str, job_identity: tuple[int, int] | None) -> int:
    """Open (or create) a log or job log after _check_record_path said it may be."""
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _RECORD_FLAGS, 0o666)
        except FileExistsError:
            reopened = _reopen_checked(path, os.O_RDWR, job_identity)
            if reopened is None:
                _refuse_record(path, what, os.lstat(path), job_identity)
                raise RunmakerError(f"{path}: changed while it was opened, cannot be the {what}") from None
            fd = reopened
    except IsADirectoryError:
        raise RunmakerError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunmakerError(
                f"{path}: is a symbolic link; runmaker does not follow one to write the {what}"
            ) from None
        raise RunmakerError(f"{path}: cannot open the {what}: {exc.strerror}") from None
    os.set_blocking(fd, True)
    return fd


def _reopen_checked(path: str, mode: int, job_identity: tuple[int, int] | None) -> int | None:
    """Open an existing record file for writing if it may be written, else None.

    Looked at through an O_PATH descriptor (no open of a FIFO, and no lock
    dropped if it is the job file), then opened again through that very
    descriptor, so it is the file that was checked.
    """
    if not _O_PATH:
        fd = os.open(path, mode | _RECORD_FLAGS)
        if _stranger(os.fstat(fd), job_identity) is not None:
            os.close(fd)  # no O_PATH: not Linux, where a close of the job file could drop locks
            return None
        return fd
    probe = os.open(path, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _stranger(os.fstat(probe), job_identity) is not None:
            return None
        try:
            return os.open(f"/proc/self/fd/{probe}", mode | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:  # no /proc: open the name and compare
            fd = os.open(path, mode | _RECORD_FLAGS)
            mine, checked = os.fstat(fd), os.fstat(probe)
            if (mine.st_dev, mine.st_ino) != (checked.st_dev, checked.st_ino):
                os.close(fd)
                return None
            return fd
    finally:
        os.close(probe)


def _check_logdir(path: str) -> None:
    """Refuse an unusable --logdir before anything is created."""
    try:
        st = os.stat(path)  # a symbolic link to a directory is the user's choice
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise RunmakerError(f"{path}: cannot create the log directory: Not a directory") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunmakerError(f"{path}: cannot create the log directory: Permission denied") from None
        return
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot create the log directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunmakerError(f"{path}: not a directory, cannot be the log directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunmakerError(f"{path}: log directory is not writable")


@dataclass
class _Outcome:
    """How one attempt of a job ended."""

    state: str  # "d", "!" or "e"; or the state before the claim, for "requeued"
    status: str  # "exit 0", "signal SIGKILL", "timeout", "requeued", "error ..."
    exitval: int
    signal: int


class _Records:
    """Where finished jobs are written down, opened and checked before any job runs.

    Every path is checked before any is created, so an input error creates
    nothing.  Writing a record never stops the worker: each kind of record
    that cannot be written is named once on stderr (through ``notify``) and
    the jobs go on.
    """

    def __init__(
        self,
        options: WorkerOptions,
        job_identity: tuple[int, int] | None,
        notify: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.loglines = options.loglines
        self.job_identity = job_identity
        self.notify = notify
        self.cwd = os.getcwd()
        self.logdir = options.logdir
        self.logfile, self.joblog = options.logfile, options.joblog
        self._told: set[str] = set()
        for path, what in ((options.logfile, "log file"), (options.joblog, "job log")):
            if path:
                _check_record_path(path, what, job_identity)
        if self.logdir is not None:
            _check_logdir(self.logdir)
        self.log_fd = (
            _open_record_file(options.logfile, "log file", job_identity) if options.logfile else None
        )
        self.joblog_fd = (
            _open_record_file(options.joblog, "job log", job_identity) if options.joblog else None
        )
        if self.logdir is not None:
            try:
                os.makedirs(self.logdir, exist_ok=True)
            except OSError as exc:
                self.close()
                raise RunmakerError(
                    f"{self.logdir}: cannot create the log directory: {exc.strerror}"
                ) from None

    def logdir_open_to_others(self) -> bool:
        """True when users other than this one may write in --logdir."""
        if self.logdir is None:
            return False
        try:
            st = os.stat(self.logdir)
        except OSError:
            return False
        if st.st_mode & stat.S_IWOTH:
            return True
        return bool(st.st_mode & stat.S_IWGRP) and st.st_gid != os.getgid()

    def open_job_files(self, line: int, first_attempt: bool) -> tuple[int, int] | None:
        """Open LINE.out and LINE.err (fresh for a new claim, continued on retry).

        A file another user put in the way (a symbolic link, a FIFO, a file
        of theirs) is replaced with a new one of ours, and named; None when
        the files cannot be had (the job then runs without them).
        """
        if self.logdir is None:
            return None
        fds: list[int] = []
        for kind in ("out", "err"):
            fd = self._open_job_file(line, kind, first_attempt)
            if fd is None:
                for opened in fds:
                    os.close(opened)
                return None
            fds.append(fd)
        return fds[0], fds[1]

    def _open_job_file(self, line: int, kind: str, first_attempt: bool) -> int | None:
        assert self.logdir is not None
        name = os.path.join(self.logdir, f"{line}.{kind}")
        for _ in range(3):
            try:
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _RECORD_FLAGS, 0o666)
                except FileExistsError:
                    mode = os.O_WRONLY | (0 if first_attempt else os.O_APPEND)
                    reopened = _reopen_checked(name, mode, self.job_identity)
                    if reopened is None:
                        if not self._replace(line, name):
                            return None
                        continue
                    fd = reopened
                    if first_attempt:
                        os.ftruncate(fd, 0)  # only now: after the checks, on the descriptor
                os.set_blocking(fd, True)
                return fd
            except FileNotFoundError:
                if not self._make_logdir_again():
                    return None
            except OSError as exc:
                self.tell_once("logdir", f"runmaker: {self.logdir}: cannot write the --logdir files "
                                         f"({exc.strerror}); the jobs go on without them")
                return None
        self.notify(
            f"runmaker: line {line}: {name} was replaced while it was opened; its output is not recorded"
        )
        return None

    def _replace(self, line: int, name: str) -> bool:
        """Remove a file another user put where a job's output goes; False if it must stay."""
        try:
            why = _stranger(os.lstat(name), self.job_identity) or "was replaced while it was opened"
        except FileNotFoundError:
            return True  # gone already: create ours
        if why.startswith("is the job file"):
            self.notify(f"runmaker: line {line}: {name} is the job file itself; its output is not recorded")
            return False
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.notify(f"runmaker: line {line}: {name} {why} and cannot be removed ({exc.strerror}); "
                        "its output is not recorded")
            return False
        self.notify(f"runmaker: line {line}: {name} {why}; replaced it with a new file")
        return True

    def _make_logdir_again(self) -> bool:
        assert self.logdir is not None
        try:
            os.makedirs(self.logdir, exist_ok=True)
        except OSError as exc:
            self.tell_once("logdir", f"runmaker: {self.logdir}: cannot write the --logdir files "
                                     f"({exc.strerror}); the jobs go on without them")
            return False
        self.notify(f"runmaker: {self.logdir}: the log directory was removed; made it again")
        return True

    def tell_once(self, key: str, message: str) -> None:
        """Name a record that cannot be written, once per kind of record."""
        if key not in self._told:
            self._told.add(key)
            self.notify(message)

    def job_ended(
        self,
        command: bytes,
        tail: collections.deque[bytes] | None,
        status_line: bytes,
        line: int,
        host: str,
        started: float,
        runtime: float,
        outcome: _Outcome,
    ) -> None:
        """Append the job's log block and job-log row, each whole or not at all.

        A full disk or a vanished server must not cost the job its state
        byte (the worker would die holding it, and the job would look
        lost): a record that cannot be written is named once and dropped.
        """
        if self.log_fd is not None:
            parts = [b".-> ", command, b" (in ", os.fsencode(self.cwd), b")\n"]
            lines = list(tail or ())
            lines.append(b"+ " + status_line)
            if self.loglines:
                lines = lines[-self.loglines :]
            parts.extend(part + b"\n" for part in lines)
            self._append("log", self.log_fd, b"".join(parts), b"")
        if self.joblog_fd is not None:
            row = "%d\t%s\t%.3f\t%.3f\t0\t0\t%d\t%d\t%s\n" % (
                line,
                host,
                started,
                runtime,
                outcome.exitval,
                outcome.signal,
                _shown(command),
            )
            self._append("joblog", self.joblog_fd, row.encode(), _JOBLOG_HEADER)

    def _append(self, key: str, fd: int, record: bytes, header: bytes) -> None:
        what = "log file" if key == "log" else "job log"
        try:
            append_to_shared_file(fd, record, header=header, patience=_RECORD_PATIENCE)
        except TimeoutError:
            self.tell_once(key + "-lock", f"runmaker: the {what}'s append lock is held by another process; "
                                          "records it could not take are dropped, the jobs go on")
        except OSError as exc:
            path = self.logfile if key == "log" else self.joblog
            self.tell_once(key, f"runmaker: {path}: cannot write the {what} ({exc.strerror}); "
                                "records it cannot take are dropped, the jobs go on")

    def close(self) -> None:
        for fd in (self.log_fd, self.joblog_fd):
            if fd is not None:
                os.close(fd)
        self.log_fd = self.joblog_fd = None


# --------------------------------------------------------------------------
# The worker: runs claimed jobs, up to -j at once, in one event loop
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker does with the jobs it claims (the command's options)."""

    jobs: int = 1
    one_only: bool = False
    quiet: bool = False
    follow: bool = False
    timeout: float | None = None
    retries: int = 0
    logfile: str | None = None
    loglines: int = 3
    logdir: str | None = None
    joblog: str | None = None
    requeue: bool = False  # a stop signal puts running jobs back (SPEC section 4, Signals)
    host: str = field(default_factory=host_name)
    job_file: str = ""  # RUNMAKER_FILE: absolute path of the job file
    fence: float | None = None  # seconds; None: by the job file's mount (default_fence)


class _JobProcess:
    """One attempt of a claimed job: its process group and its output.

    Started with posix_spawn in its own session (so its whole process group
    can be signalled), stdin ``/dev/null``, stdout and stderr on pipes.  What
    the pipes bring is written as it comes to the ``--logdir`` files, split
    into whole lines and tagged: console lines are appended to ``console``
    (the Worker's buffer, written out by its loop), or, with a shared log,
    the last lines are kept in ``tail`` for the job's log block.  No line is
    ever cut by another job's, since only whole lines leave this class.
    ``notify`` hears why the ``--logdir`` files could not be written.
    """

    def __init__(
        self,
        claim: Claim,
        attempt: int,
        local_slot: int,
        *,
        env: dict[str, str],
        host: bytes,
        files: tuple[int, int] | None,
        tail: collections.deque[bytes] | None,
        timeout: float | None,
        console: list[bytes],
        notify: Callable[[str], None],
    ) -> None:
        """Start the job; raises OSError or ValueError if it cannot be."""
        self.claim = claim
        self.attempt = attempt
        self.local_slot = local_slot
        self.files = files  # --logdir LINE.out, LINE.err
        self.tail = tail
        self._console = console
        self._notify = notify
        self.pid = self._spawn(claim.command, env)
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.deadline = self.started_mono + timeout if timeout else None
        self.kill_at: float | None = None
        self.timed_out = False
        self.interrupted = False
        self.killed = False  # by runset --kill
        self.requeued = False  # goes back to the state it was claimed from
        self.killed = False  # by runset --kill
        pid_tag = b"%s,%d" % (host, self.pid)
        self.pid_tag = pid_tag
        self._tags = (b"stdout (" + pid_tag + b"): ", b"stderr (" + pid_tag + b"): ")
        self._log_tags = (b": stdout (" + pid_tag + b"): ", b"! stderr (" + pid_tag + b"): ")
        self._partial = [b"", b""]

    def _spawn(self, command: bytes, env: dict[str, str]) -> int:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:  # EMFILE: the job waits, and must not keep half its pipes
            os.close(out_r)
            os.close(out_w)
            raise
        try:
            pid = os.posix_spawn(
                "/bin/sh",
                [b"/bin/sh", b"-c", command],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,  # its own session and process group, to signal it whole
                # Python ignores SIGPIPE (and SIGXFSZ); a job must not
                # inherit that, or `yes | head -1` would never end.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.streams = {out_r: 0, err_r: 1}  # pipe fd -> 0 (stdout) or 1 (stderr)
        return pid

    # -- signals -----------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the job's whole process group."""
        _signal_group(self.pid, signum)

    def interrupt(self, kill_at: float, *, requeue: bool = False) -> None:
        """SIGTERM now, SIGKILL at ``kill_at``; the job ends 'e', or with ``requeue`` goes back."""
        if self.interrupted:
            return  # being stopped already: its SIGKILL time and its fate stand
        self.interrupted = True
        self.requeued = requeue
        self.kill_at = kill_at
        self.signal(signal.SIGTERM)

    def kill(self, kill_at: float) -> None:
        """runset --kill: SIGTERM now, SIGKILL at ``kill_at``; the job ends '!' (killed)."""
        self.killed = True
        if self.kill_at is None:
            self.kill_at = kill_at
        self.signal(signal.SIGTERM)

    def enforce_deadlines(self, now: float) -> None:
        """SIGKILL a stopped job whose grace is over; SIGTERM one past --timeout."""
        if self.kill_at is not None and now >= self.kill_at:
            self.signal(signal.SIGKILL)
            self.kill_at = None
            self.deadline = None
        elif self.deadline is not None and now >= self.deadline and not self.timed_out:
            self.timed_out = True
            self.deadline = None
            self.kill_at = now + _KILL_GRACE
            self.signal(signal.SIGTERM)

    # -- output ------------------------------------------------------------

    def read(self, fd: int, *, until_empty: bool = False) -> bool:
        """Take what pipe ``fd`` holds (one chunk, or all); True once it is at its end."""
        stream = self.streams[fd]
        while True:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return False  # a background grandchild still holds the pipe open
            if not data:
                return True
            self._take(stream, data)
            if not until_empty:
                return False

    def close_stream(self, fd: int) -> None:
        """Close pipe ``fd`` (the caller stopped watching it); emit its last partial line."""
        stream = self.streams.pop(fd)
        os.close(fd)
        if self._partial[stream]:
            rest, self._partial[stream] = self._partial[stream], b""
            self._emit(stream, [rest])

    def _take(self, stream: int, data: bytes) -> None:
        if self.files is not None:
            try:
                _write_all(self.files[stream], data)
            except OSError as exc:
                # Keep the job running and its other records going.
                self._notify(exc.strerror or str(exc))
                self.close_files()
        if self._partial[stream]:
            data = self._partial[stream] + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) >= _MAX_LINE:
            lines.append(rest)  # a line without end: cut it rather than hoard it
            rest = b""
        self._partial[stream] = rest
        if lines:
            self._emit(stream, lines)

    def _emit(self, stream: int, lines: list[bytes]) -> None:
        if self.tail is not None:
            keep = self.tail.maxlen
            tag = self._log_tags[stream]
            self.tail.extend(tag + line for line in (lines[-keep:] if keep else lines))
            return
        tag = self._tags[stream]
        self._console.append(tag + (b"\n" + tag).join(lines) + b"\n")

    # -- the end -----------------------------------------------------------

    def close_files(self) -> None:
        if self.files:
            for fd in self.files:
                os.close(fd)
        self.files = None

    def outcome(self, wait_status: int) -> _Outcome:
        """How the job ended, from its wait status; the caller read its pipes to the end.

        Background grandchildren of a stopped job go with it; its
        ``--logdir`` files are closed.
        """
        if self.timed_out or self.interrupted or self.killed:
            self.signal(signal.SIGKILL)
        self.close_files()
        code = os.waitstatus_to_exitcode(wait_status)
        signum = -code if code < 0 else 0
        if self.requeued:
            # Stopped by --requeue: however it ended, it did not run to its end.
            return _Outcome(self.claim.was, "requeued", -1, signum)
        if self.killed and not self.interrupted:
            outcome = _Outcome("!", "killed", -1, signum)
        elif self.timed_out and not self.interrupted:
            outcome = _Outcome("!", "timeout", -1, signum)
        elif code < 0:
            outcome = _Outcome("!", f"signal {_signal_name(signum)}", 0, signum)
        else:
            outcome = _Outcome("d" if code == 0 else "!", f"exit {code}", code, 0)
        if self.interrupted:
            outcome.state = "e"
        return outcome


# The guardian: a job never outlives its worker (SPEC section 3).  posix_spawn
# cannot give a job a parent-death signal, and a job in its own session is
# not killed with its worker's process group either.  So each worker starts
# one small process in a session of its own, holding the only reading end of
# a pipe whose writing end only the worker holds (close-on-exec: no job
# inherits it).  The worker writes "+PGID" as it starts a job and "-PGID"
# once it has reaped it; when the pipe reaches end of file -- the worker has
# exited, however it died -- the guardian SIGKILLs every group still listed.
# A job the worker had spawned but not yet announced when it died (spawn
# returns, the job's shell runs at once on another CPU, the "+PGID" follows
# a fraction of a millisecond later) is found by its environment instead:
# each job carries its worker's random token in RUNMAKER_WORKER_TOKEN.  The
# guardian looks for it in /proc only when the worker died without saying
# "end" (so a normal end never touches what its jobs left running), twice,
# as such a job may still be inside its exec.
_GUARDIAN = r"""
import os, signal, sys, time
for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(signum, signal.SIG_IGN)
mark = b"\0RUNMAKER_WORKER_TOKEN=" + sys.argv[1].encode() + b"\0"
groups, rest, ended = set(), b"", False
while True:
    try:
        data = os.read(0, 65536)
    except OSError:
        break
    if not data:
        break
    *lines, rest = (rest + data).split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
        elif line == b"end":
            ended = True
def kill(group):
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
for group in groups:
    kill(group)
for look in range(0 if ended else 2):
    if look:
        time.sleep(0.05)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/" + entry + "/environ", "rb") as f:
                    environ = b"\0" + f.read()
                if mark in environ:
                    kill(os.getpgid(int(entry)))
            except OSError:
                pass
"""


class _Guardian:
    """The worker's side of its guardian process (see _GUARDIAN)."""

    def __init__(self, token: str, *, start: bool = True) -> None:
        self._token = token  # RUNMAKER_WORKER_TOKEN of the worker's jobs
        self._ended = False  # the worker ends normally: its guardian need not look for jobs
        self._groups: set[int] = set()
        self._pending = b""
        self._fd: int | None = None
        self._pid: int | None = None
        if start:
            self._start()

    def watch(self, pgid: int) -> None:
        """A job just started in process group ``pgid``."""
        self._groups.add(pgid)
        self._send(b"+%d\n" % pgid)

    def forget(self, pgids: list[int]) -> None:
        """These jobs were reaped: their groups are no longer ours to kill."""
        self._groups.difference_update(pgids)
        self._send(b"".join(b"-%d\n" % pgid for pgid in pgids))

    def close(self, *, ended: bool) -> None:
        """Let the guardian go (it kills what is still listed) and reap it.

        ``ended``: the worker ends normally, with no job of its own left to
        stop, so the guardian does not look for its token (it would kill
        what jobs left running on purpose).  Otherwise it does.
        """
        if ended:
            self._ended = True
            self._send(b"end\n")
            if self._fd is not None and self._pending:
                # A guardian slow to read: give it a second, then let it look.
                _, writable, _ = select.select([], [self._fd], [], 1.0)
                if writable:
                    self._send(b"")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pid is not None:
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass  # reaped by the worker's waitpid(-1) already
            self._pid = None

    def _start(self) -> None:
        if not sys.executable:
            return  # no interpreter to run it with: jobs may outlive a SIGKILLed worker
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-c", _GUARDIAN, self._token],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
                ],
                setsid=True,  # outlives a SIGKILL of the worker's process group (scancel)
            )
        except OSError:
            os.close(write_end)
            return
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)  # a stopped guardian must not stop the worker
        self._fd = write_end
        self._pending = b"".join(b"+%d\n" % pgid for pgid in self._groups)
        self._send(b"end\n" if self._ended else b"")  # a restart while closing keeps the goodbye

    def _send(self, data: bytes) -> None:
        if self._fd is None:
            return
        self._pending += data
        try:
            while self._pending:
                self._pending = self._pending[os.write(self._fd, self._pending) :]
        except BlockingIOError:
            pass  # sent with the next message
        except OSError:
            # The guardian died (someone killed it): start another that
            # knows every running job.
            os.close(self._fd)
            self._fd = None
            if self._pid is not None:
                try:
                    os.waitpid(self._pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            self._start()


class _OutputBuffer:
    """Bytes for a stream that a thread of its own writes, in order.

    The loop that puts them never waits on the stream: a console piped into
    a reader that stopped, a terminal on hold or a hung disk would otherwise
    stop its heartbeats, deadlines and kill timers too.  ``full`` tells the
    loop to stop reading its jobs' pipes until there is room again (the
    jobs then wait in their writes: back-pressure); ``on_room`` is called,
    from the writing thread, when there is.  A failed write (a closed pipe,
    a full disk) drops the rest: ``failure`` says why.
    """

    def __init__(self, write: Callable[[bytes], None], limit: int) -> None:
        self._write = write
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0  # bytes put and not yet written, those being written included
        self._writing = False
        self._cond = threading.Condition()
        self.failure: OSError | None = None
        self.on_room: Callable[[], None] | None = None

    @property
    def full(self) -> bool:
        return self._size >= self._limit

    def put(self, data: bytes) -> None:
        """Queue ``data`` to be written; never blocks (the limit is the caller's to heed)."""
        with self._cond:
            if self.failure is not None or not data:
                return
            self._chunks.append(data)
            self._size += len(data)
            if not self._writing:
                self._writing = True
                threading.Thread(target=self._run, name="runmaker-output", daemon=True).start()

    def drain(self) -> None:
        """Wait until every byte put is written (or writing failed)."""
        with self._cond:
            while self._writing:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._chunks:
                    self._writing = False  # the next put starts a new thread
                    self._cond.notify_all()
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
            failure = None
            try:
                self._write(data)
            except OSError as exc:
                failure = exc
            with self._cond:
                was_full = self.full
                self._size -= len(data)
                if failure is not None:
                    self.failure = failure
                    self._size -= sum(map(len, self._chunks))
                    self._chunks.clear()
            if was_full and not self.full and self.on_room is not None:
                self.on_room()


class JobSource(Protocol):
    """Where a Worker's jobs come from: a Scheduler on the job file, or a TCP server."""

    idle_reason: IdleReason | None

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]: ...

    def refresh(self) -> None: ...

    def finish_job(self, claim: Claim, state: str) -> None: ...

    def commit(self) -> None: ...

    def replaced(self) -> bool: ...

    def describe_block(self) -> str: ...


class _Link(Protocol):
    """A remote job source's connection, which the Worker's loop serves too.

    Data arriving on ``fileno()`` wakes the loop, which then calls the
    source's ``commit`` (that reads it); ``timeout`` says when the link
    needs the loop next (heartbeats); once ``broken`` gives a reason, the
    worker claims nothing more and stops every running job (they end 'e').
    """

    def fileno(self) -> int: ...

    def timeout(self, now: float) -> float | None: ...

    def broken(self) -> str | None: ...


_FENCE_DEFAULT = 30.0  # seconds, on NFSv4 mounts


def default_fence(fd: int, mountinfo: str | None = None, mountstats: str | None = None) -> float:
    """The ``--fence`` a worker on the open job file ``fd`` gets by default.

    30 s on an NFSv4 mount, but at most half the lease time the server told
    the client (``lease_time`` in ``/proc/self/mountstats``), so that our
    jobs are dead well before the server may drop our locks; 0 (off)
    anywhere else: an NFSv3 server keeps the locks of a silent client, and
    a local file system cannot lose them.  ``mountinfo`` and ``mountstats``
    are the texts of those files (read from /proc when None).
    """
    try:
        if mountinfo is None:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        st = os.fstat(fd)
    except OSError:
        return 0.0
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    mountpoint = None
    for entry in mountinfo.splitlines():
        fields = entry.split()
        if len(fields) > 7 and fields[2] == device and "-" in fields[6:]:
            fstype = fields[fields.index("-", 6) + 1:][:1]
            if fstype == ["nfs4"]:
                mountpoint = fields[4]
                break
    if mountpoint is None:
        return 0.0
    try:
        if mountstats is None:
            with open("/proc/self/mountstats", encoding="utf-8", errors="replace") as f:
                mountstats = f.read()
    except OSError:
        return _FENCE_DEFAULT
    section = None
    for line in mountstats.splitlines():
        if line.startswith("device "):
            section = f" mounted on {mountpoint} with fstype nfs4" in line
        elif section:
            match = re.search(r"[\t ,]lease_time=([0-9]+)", line)
            if match and int(match.group(1)) > 0:
                return min(_FENCE_DEFAULT, int(match.group(1)) / 2)
    return _FENCE_DEFAULT


class _Fence:
    """Stops this worker's jobs when the job file stops answering (SPEC 3, Fencing).

    A lock can vanish while its holder lives: an NFSv4 server drops the
    locks of a client it has not heard from for its lease time (a network
    partition), and another host then sees our jobs lost and may run them
    again.  So when an operation on the job file has not completed for
    ``seconds``, ``on_stall`` kills the running jobs.  The watch is a thread
    of its own, as the operation that hangs (a hard NFS mount waits for its
    server) holds the event loop with it.  ``seconds`` 0: no watch at all.
    """

    def __init__(self, seconds: float, on_stall: Callable[[float], None]) -> None:
        self.seconds = seconds
        self.tripped = False
        self._on_stall = on_stall
        self._cond = threading.Condition()
        self._pending: dict[int, float] = {}  # operation -> when it began
        self._count = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        if seconds > 0:
            self._thread = threading.Thread(target=self._watch, name="runmaker-fence", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """Around every call that touches the job file."""
        if self._thread is None:
            yield
            return
        with self._cond:
            self._count += 1
            token = self._count
            self._pending[token] = time.monotonic()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                del self._pending[token]

    def answered(self) -> bool:
        """True once after a stall, as soon as no operation is stuck any more."""
        with self._cond:
            if self.tripped and not self._pending:
                self.tripped = False
                self._cond.notify()
                return True
            return False

    def close(self) -> None:
        if self._thread is not None:
            with self._cond:
                self._closed = True
                self._cond.notify()
            self._thread.join()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._pending or self.tripped:
                    self._cond.wait()
                    continue
                began = min(self._pending.values())
                left = began + self.seconds - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.tripped = True
                self._cond.release()
                try:
                    self._on_stall(time.monotonic() - began)
                finally:
                    self._cond.acquire()


class _FencedSource:
    """A Scheduler whose every call is an operation the fence watches."""

    def __init__(self, source: JobSource, fence: _Fence) -> None:
        self._source = source
        self._fence = fence
        self.idle_reason: IdleReason | None = source.idle_reason

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        with self._fence.operation():
            claims = self._source.claim_jobs(count, idle=idle)
        self.idle_reason = self._source.idle_reason
        return claims

    def refresh(self) -> None:
        with self._fence.operation():
            self._source.refresh()

    def finish_job(self, claim: Claim, state: str) -> None:
        with self._fence.operation():
            self._source.finish_job(claim, state)

    def commit(self) -> None:
        with self._fence.operation():
            self._source.commit()

    def replaced(self) -> bool:
        with self._fence.operation():
            return self._source.replaced()

    def describe_block(self) -> str:
        return self._source.describe_block()


class Worker:
    """Runs jobs from a source (a Scheduler, or a TCP server), up to -j at once.

    One thread and one event loop: job processes are started with
    posix_spawn in their own session (so their whole process group can be
    signalled), their output pipes are read as data arrives, and only whole
    lines are written, so no job's line is ever cut by another's.  SIGCHLD
    and the stop signals wake the loop through a self-pipe.
    """

    def __init__(
        self,
        source: JobSource,
        options: WorkerOptions,
        records: _Records,
        *,
        console: BinaryIO,
        notify: Callable[[str], None],
        link: _Link | None = None,
    ) -> None:
        self.source = source
        self.link = link
        self._link_broken = False
        self.options = options
        self.records = records
        self.notify = notify
        console.flush()
        self._console_fd = console.fileno()
        self._console_parts: list[bytes] = []
        self._output = _OutputBuffer(self._write_console, _CONSOLE_BEHIND)
        self._output_paused = False  # the jobs' pipes wait for the console
        self._output_failure_told = False
        self._room_r = -1  # readable once the console has room again
        self._running: dict[int, _JobProcess] = {}  # pid -> attempt
        self._deferred: list[tuple[Claim, int, int]] = []  # claimed, waiting for descriptors
        self._guardian = _Guardian("", start=False)  # started by run(), knowing the jobs' token
        self._free_slots = list(range(options.jobs))
        self._poller = select.poll()
        self._watched: dict[int, _JobProcess] = {}  # pipe fd -> its job
        self._signals: list[int] = []
        self._stop_signals = 0  # SIGINT, SIGTERM, SIGHUP seen (SIGUSR1 is no stop signal)
        self._draining = False
        self._replaced = False
        self._succeeded = False
        self._next_look = 0.0
        self._failures = 0
        self.jobs_started = 0  # attempts started, for "nothing to run"
        host = options.host
        self._host = host.encode()
        env = dict(os.environ)
        env["RUNMAKER_FILE"] = options.job_file
        env["RUNMAKER_HOST"] = host
        env["RUNMAKER_WORKER_TOKEN"] = os.urandom(8).hex()  # how its guardian knows its jobs
        self._env = env
        self._fence = _Fence(options.fence or 0.0, self._fence_jobs)
        if options.fence:
            self.source = _FencedSource(source, self._fence)

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Run jobs until nothing is left (or a signal drains); return the exit status."""
        with stop_signals_waking(self._on_signal, children=True, planned=True) as wake_r:
            self._poller.register(wake_r, select.POLLIN)
            if self.link is not None:
                self._poller.register(self.link.fileno(), select.POLLIN)
            self._guardian = _Guardian(self._env["RUNMAKER_WORKER_TOKEN"])
            self._room_r, room_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._poller.register(self._room_r, select.POLLIN)
            self._output.on_room = lambda: _wake(room_w)
            ended = False  # the loop returned: no job of ours is left to stop
            try:
                try:
                    self._loop(wake_r)
                    ended = True
                finally:
                    self._fence.close()
            except BaseException:
                # A bug, or a file system failing under us: our job locks go
                # with this process, so our jobs must not run on unowned
                # (another worker would call them lost and, with -r, start them
                # again while they still run).
                self._stop_jobs_now()
                raise
            finally:
                self._guardian.close(ended=ended)
                self._output.on_room = None
                os.close(self._room_r)
                os.close(room_w)
                self._flush_console()
                self._output.drain()
        if self._stop_signals:
            return _EXIT_SIGNALLED
        return 1 if self._failures or self._replaced else 0

    def _loop(self, wake_r: int) -> None:
        while True:
            if self._fence.answered():
                self.notify(
                    f"runmaker: {self.options.job_file}: the job file answers again; claiming jobs again"
                )
            self._handle_signals()
            self._check_link()
            self._reap()
            now = time.monotonic()
            self._enforce_deadlines(now)
            claims: list[Claim] = []
            free = len(self._free_slots)
            if free and self._may_claim() and not self._deferred:  # out of descriptors: claim no more
                if self.source.replaced():
                    self._replaced = True
                    self.notify(
                        f"runmaker: {self.options.job_file}: the file was replaced or shrunk "
                        f"under this worker; claiming no more jobs, "
                        f"{len(self._running)} still running"
                    )
                else:
                    claims = self.source.claim_jobs(free, idle=not self._running)
                self._next_look = now + _POLL
            elif (self._may_claim() or self._running) and now >= self._next_look:
                # Busy with -j jobs (or draining): still read new lines now
                # and then, so a cap appended meanwhile counts our running
                # jobs at once, and a kill line reaches its job.
                self.source.refresh()
                self._next_look = now + _POLL
            self.source.commit()
            deferred, self._deferred = self._deferred, []
            for claim, attempt, local_slot in deferred:
                if self._may_claim():
                    self._start(claim, attempt, local_slot)
                else:  # draining: a job that never started is not begun now
                    # (a retry that never started ends as its failed attempt did)
                    self._finish(claim, claim.was if attempt == 1 else "!", local_slot)
            for claim in claims:
                self._start(claim, 1, self._free_slots.pop(0))
            self._flush_console()
            if not self._running and not claims and not self._deferred:
                if not self._may_claim():
                    return
                reason = self.source.idle_reason
                if work_is_over(reason, running=False, follow=self.options.follow):
                    if reason is IdleReason.BLOCKED:
                        for cause in self.source.describe_block().splitlines():
                            self.notify("runmaker: " + cause)
                    return
            timeout = self._next_timeout(
                now, waiting=self._may_claim() or bool(self._running) or bool(self._deferred)
            )
            for fd, _ in self._poller.poll(None if timeout is None else timeout * 1000):
                if fd in (wake_r, self._room_r):
                    _drain_wakeup(fd)
                elif fd in self._watched:  # not closed earlier in this round
                    self._read_output(self._watched[fd], fd)
            self._flush_console()
            self._heed_output()

    def _may_claim(self) -> bool:
        return not (
            self._draining or self._replaced or (self.options.one_only and self._succeeded)
        )

    def _next_timeout(self, now: float, *, waiting: bool) -> float | None:
        moments = [job.kill_at or job.deadline for job in self._running.values()]
        times = [m - now for m in moments if m is not None]
        if waiting:
            # With a free slot, look as often as appended jobs must be seen
            # (SPEC: within 0.1 s); a full worker only keeps directives current.
            times.append(_REFRESH_GAP if self._free_slots else _POLL)
        if self.link is not None and not self._link_broken:
            wait = self.link.timeout(now)
            if wait is not None:
                times.append(wait)
        # Bounded: a --timeout of 1e300 seconds must not overflow poll().
        return max(0.0, min(min(times), _LONGEST_SLEEP)) if times else None

    def _check_link(self) -> None:
        """Once a remote source's link is broken: claim nothing more, stop every job."""
        if self.link is None or self._link_broken:
            return
        why = self.link.broken()
        if why is None:
            return
        self._link_broken = True
        self._draining = True
        self._poller.unregister(self.link.fileno())
        if self._running:
            self.notify(f"runmaker: {why}; stopping {len(self._running)} running jobs")
            self._kill_all()

    # -- signals -----------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        """Act on the signals caught since the last look (SPEC section 4, Signals).

        SIGUSR1, a batch system's warning before its time limit, drains:
        the running jobs may finish, and the exit status is the usual one.
        The first stop signal drains too; a second one kills the running
        jobs (they end 'e').  With --requeue a stop signal stops them at
        once and puts each back as it was, since a batch system sends
        SIGKILL soon after it.  Each message says what the next step does.
        """
        while self._signals:
            signum = self._signals.pop(0)
            name = _signal_name(signum)
            running = len(self._running)
            jobs = f"{running} running job" + ("" if running == 1 else "s")
            if signum == signal.SIGUSR1:
                if not self._draining:
                    self._draining = True
                    self.notify(
                        f"runmaker: {name}: draining, claiming no more jobs; "
                        + (f"letting {jobs} finish" if running else "none running")
                    )
                continue
            self._stop_signals += 1
            self._draining = True
            if self.options.requeue:
                if self._stop_signals == 1:
                    back = "it" if running == 1 else "them"
                    self.notify(
                        f"runmaker: {name}: stopping {jobs} and putting {back} back (--requeue)"
                        if running else f"runmaker: {name}: stopping; none running"
                    )
                    self._kill_all(requeue=True)
            elif self._stop_signals == 1:
                self.notify(f"runmaker: {name}: draining, claiming no more jobs; " + _what_next(running))
            elif self._stop_signals == 2:
                self.notify(f"runmaker: {name}: killing {running} running jobs")
                self._kill_all()

    def _fence_jobs(self, stalled: float) -> None:
        """The fence (its own thread): SIGKILL every running job's process group.

        The event loop is stuck in the operation that does not complete, so
        the jobs are marked here and reaped by the loop once it answers;
        they end 'e' (interrupted).
        """
        jobs = list(self._running.values())
        for job in jobs:
            job.interrupted = True
            job.signal(signal.SIGKILL)
        self.notify(
            f"runmaker: {self.options.job_file}: no answer from the job file for {stalled:.0f} s "
            f"(--fence {self.options.fence:g}); killed {len(jobs)} running jobs, whose locks the "
            f"server may drop; claiming nothing until it answers"
        )

    def _stop_jobs_now(self) -> None:
        """SIGKILL every running job's process group and reap it."""
        for job in self._running.values():
            job.signal(signal.SIGKILL)
        for pid in list(self._running):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._guardian.forget(list(self._running))
        self._running.clear()

    def kill_job(self, line: int) -> bool:
        """Stop the running job of ``line`` (runset --kill); False if none runs here.

        SIGTERM to its process group, SIGKILL after the grace; it ends '!'
        with status ``killed`` and is not run again by --retries.
        """
        for job in self._running.values():
            if job.claim.line == line and not job.killed:
                job.kill(time.monotonic() + _KILL_GRACE)
                return True
        return False

    def _kill_all(self, *, requeue: bool = False) -> None:
        """SIGTERM to every job's process group, SIGKILL later; they end 'e' (or go back)."""
        deadline = time.monotonic() + _KILL_GRACE
        for job in self._running.values():
            job.interrupt(deadline, requeue=requeue)

    # -- starting and ending jobs -------------------------------------------

    def _start(self, claim: Claim, attempt: int, local_slot: int) -> None:
        self.jobs_started += 1
        quoted = _shown_bytes(claim.command)
        if not self.options.quiet:
            self._console_parts.append(b"executing `" + quoted + b"'\n")
        env = dict(self._env)
        env["RUNMAKER_LINE"] = str(claim.line)
        env["RUNMAKER_SLOT"] = str(local_slot)
        files = None
        try:
            with self._fence.operation():  # records on the job file's server hang with it
                files = self.records.open_job_files(claim.line, attempt == 1)
            if self._fence.tripped:  # it fired meanwhile: this claim may be gone as well
                raise OSError(errno.ETIMEDOUT, "the job file did not answer (--fence)")
            job = _JobProcess(
                claim, attempt, local_slot, env=env, host=self._host, files=files,
                tail=collections.deque(maxlen=min(self.options.loglines, sys.maxsize) or None)
                if self.records.log_fd is not None
                else None,
                timeout=self.options.timeout, console=self._console_parts, notify=self._logdir_failed,
            )
        except (OSError, ValueError) as exc:
            for fd in files or ():
                os.close(fd)
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: start it later, once a job has ended or
                # the limit was raised (the claim and its local slot stay
                # held meanwhile; a worker that stops first puts it back).
                if not self.options.quiet:
                    self._console_parts.pop()  # its "executing" line, said again then
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                self.records.tell_once(
                    "descriptors",
                    f"runmaker: out of file descriptors ({exc.strerror}; ulimit -n is {soft}): "
                    "claimed jobs wait to start until some are free",
                )
                self._deferred.append((claim, attempt, local_slot))
                return
            reason = getattr(exc, "strerror", None) or str(exc)
            self._could_not_start(claim, attempt, local_slot, reason)
            return
        self._guardian.watch(job.pid)  # at once: the worker may be killed any moment now
        self._running[job.pid] = job
        for fd in job.streams:
            self._poller.register(fd, 0 if self._output_paused else select.POLLIN)
            self._watched[fd] = job
        if not self.options.quiet:
            self._console_parts.append(b"status (" + job.pid_tag + b'): forked "' + quoted + b'"\n')

    def _logdir_failed(self, why: str) -> None:
        self.records.tell_once(
            "logdir",
            f"runmaker: {self.records.logdir}: cannot write the --logdir files ({why}); "
            "the jobs go on, their files left incomplete",
        )

    def _could_not_start(self, claim: Claim, attempt: int, local_slot: int, reason: str) -> None:
        outcome = _Outcome("e", f"error {reason}", -1, 0)
        status = b'status (%s,-): %s "%s"' % (
            self._host,
            outcome.status.encode(),
            _shown_bytes(claim.command),
        )
        if not self.options.quiet:
            self._console_parts.append(status + b"\n")
        else:  # -q hides status lines, but not a job that never ran
            self.notify(status.decode("utf-8", "replace"))
        self._record(
            claim, None, status, time.time(), 0.0, outcome
        )
        self._finish(claim, outcome.state, local_slot)

    def _reap(self) -> None:
        reaped: list[int] = []
        try:
            while self._running:
                try:
                    pid, wait_status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                if pid in self._running:
                    # A batch system signals the jobs and this worker at nearly
                    # the same moment: a stop signal already caught decides how
                    # this job ends (with --requeue it goes back, not '!').
                    self._handle_signals()
                    reaped.append(pid)
                    self._ended(self._running.pop(pid), wait_status)
        finally:
            if reaped:
                self._guardian.forget(reaped)

    def _enforce_deadlines(self, now: float) -> None:
        for job in self._running.values():
            job.enforce_deadlines(now)

    def _ended(self, job: _JobProcess, wait_status: int) -> None:
        # A job's output ends with its shell: what the pipes hold now is
        # read, then they are closed, so a background process that writes
        # later gets EPIPE instead of writing into records already closed.
        for fd in list(job.streams):
            self._read_output(job, fd, until_empty=True)
            if fd in job.streams:
                self._close_stream(job, fd)
        outcome = job.outcome(wait_status)
        command = job.claim.command
        status = b"status (%s,%d): %s \"%s\"" % (
            self._host,
            job.pid,
            outcome.status.encode(),
            _shown_bytes(command),
        )
        if not self.options.quiet:
            self._console_parts.append(status + b"\n")
        self._record(
            job.claim, job.tail, status, job.started, time.monotonic() - job.started_mono, outcome
        )
        if outcome.state == "!" and job.attempt <= self.options.retries and not (
            self._draining or job.killed
        ):
            self._start(job.claim, job.attempt + 1, job.local_slot)
            return
        self._finish(job.claim, outcome.state, job.local_slot)

    def _record(
        self,
        claim: Claim,
        tail: collections.deque[bytes] | None,
        status: bytes,
        started: float,
        runtime: float,
        outcome: _Outcome,
    ) -> None:
        # A log on the job file's NFS server hangs with it, and the loop
        # stuck here keeps no claim alive either: the fence watches it too.
        with self._fence.operation():
            self.records.job_ended(
                claim.command, tail, status, claim.line, self.options.host, started, runtime, outcome
            )

    def _finish(self, claim: Claim, state: str, local_slot: int) -> None:
        self.source.finish_job(claim, state)
        bisect.insort(self._free_slots, local_slot)
        if state == "d":
            self._succeeded = True
        elif state in ("!", "e"):
            self._failures += 1

    # -- output ------------------------------------------------------------

    def _read_output(self, job: _JobProcess, fd: int, *, until_empty: bool = False) -> None:
        if job.read(fd, until_empty=until_empty):
            self._close_stream(job, fd)

    def _close_stream(self, job: _JobProcess, fd: int) -> None:
        self._poller.unregister(fd)
        del self._watched[fd]
        job.close_stream(fd)

    def _flush_console(self) -> None:
        """Hand this turn's console lines to the output thread (never waits)."""
        if self._console_parts:
            self._output.put(b"".join(self._console_parts))
            self._console_parts.clear()
        failure = self._output.failure
        if failure is not None and not self._output_failure_told:
            self._output_failure_told = True
            if not isinstance(failure, BrokenPipeError):  # nobody reads: the jobs go on
                self.notify(f"runmaker: cannot write to the console, its output is lost: "
                            f"{failure.strerror}; the jobs go on")

    def _heed_output(self) -> None:
        """Stop reading the jobs' pipes while the console is far behind; resume once it is not."""
        paused = self._output.full
        if paused != self._output_paused:
            self._output_paused = paused
            for fd in self._watched:
                self._poller.modify(fd, 0 if paused else select.POLLIN)

    def _write_console(self, data: bytes) -> None:
        # Straight to the descriptor: a buffered writer would keep what a
        # full disk refused and fail again when Python exits.  A write into
        # a full pipe that a signal interrupts writes only part.
        _write_all(self._console_fd, data)


def _wake(fd: int) -> None:
    """Wake a loop through its self-pipe (from another thread)."""
    try:
        os.write(fd, b"\0")
    except OSError:
        pass  # full: it wakes anyway; closed: it has ended


def _what_next(running: int) -> str:
    """The end of a drain message: what happens to the jobs still running."""
    if not running:
        return "0 still running"
    text = f"{running} still running (a second SIGINT, SIGTERM or SIGHUP kills them"
    if any(os.environ.get(name) for name in _BATCH_JOB_VARS):
        # Slurm, PBS and LSF follow their SIGTERM with SIGKILL, not a second signal.
        text += (
            "; if the batch system kills this worker first, they are lost: "
            "--requeue puts them back instead"
        )
    return text + ")"


def _wake_only(signum: int, frame: object) -> None:
    """SIGCHLD handler: its only job is the byte on the wakeup pipe."""


@contextlib.contextmanager
def stop_signals_waking(
    on_signal: Callable[[int, object], None], *, children: bool = False, planned: bool = False
) -> Iterator[int]:
    """Route SIGINT, SIGTERM and SIGHUP to ``on_signal``; yield a self-pipe's read end.

    With ``planned``, SIGUSR1 (a batch system's warning) goes there too.
    Every signal (with ``children``, SIGCHLD too) writes a byte to the pipe,
    so a poll() on its read end wakes for it: the loop then acts on what
    ``on_signal`` noted.  The handlers and the wakeup fd before are restored
    on leaving.  Shared by the Worker's and the TCP server's loops.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    caught = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP] + ([signal.SIGUSR1] if planned else [])
    previous = {sig: signal.signal(sig, on_signal) for sig in caught}
    if children:
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
    try:
        yield wake_r
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _drain_wakeup(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


# --------------------------------------------------------------------------
# ---- Listing and editing: the core of runset and runwait
# --------------------------------------------------------------------------

# The states --set may write.  Never 'r': a job runs only while a worker
# holds its lock, so an 'r' written by hand would look lost at once.
_SETTABLE = b".+d!e-"
_JOB_SPEC = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")
_MAX_RUNNING_ARG = re.compile(r"[0-9]+\Z|none\Z")
# A record's lines are written with these first, the real bytes after the
# record is durable: a line still holding one never runs (an unknown state)
# and is never obeyed (a comment).
_PLACEHOLDER = b"~ "
_APPEND_PATIENCE = 60.0  # seconds runset waits for the append lock
_SUMMARY_ORDER = b"+.rd!e-"
# A line that is no job line: no state byte, no space or tab after it, or
# only blanks after that; or a job line the index warns about (a tab in the
# indent of its command).
_NOT_JOB_LINE = re.compile(
    rb"\n(?:[#/ \t\r\n\x0b\x0c]|[^\n][^ \t]|[^\n][ \t][ \t\r\x0b\x0c]*\n|[^\n][ \t] *\t)"
)
_RUNNING_JOB = re.compile(rb"^r[ \t]", re.M)  # in a piece of job lines only (_count_states)
_UNKNOWN_STATE = re.compile(rb"[^.+rd!e\-]")
_UNKNOWN_OR_FAILED = re.compile(rb"[^.+rd\-]")
_PENDING_STATES = re.compile(rb"[.+]")
_LIST_CHUNK = 1 << 16  # jobs formatted per piece of runset's output
# After a newline, a line that is no plain job line (see _plain_and_live):
# a state other than .+rd-, no single space after it, or a command that
# starts blank or is none; else an ``r`` (two bytes: a running job's line).
_NOT_PLAIN_OR_RUNNING = re.compile(rb"\n(?:[^.+rd\-]|[^\n][^ ]|[^\n] [ \t\r\x0b\x0c\n]|r)")
# What a listing of plain job lines puts around each line number and command.
_PLAIN_TEXT = {state: f": {state} - " for state in ".+rd-"}
_PLAIN_JSON = {state: f', "state": "{state}", "command": ' for state in ".+rd-"}
_PLAIN_JSON_QUOTED = {state: text + '"' for state, text in _PLAIN_JSON.items()}
_PLAIN_JSON_END = ', "lost": false, "parent": null, "blocked_by": null}\n'
# What json.dumps escapes in a string (its ASCII encoder) besides the quote,
# the backslash and non-ASCII bytes: a piece without any needs each command
# only put between quotes.
_JSON_CONTROLS = bytes(range(0x20)).replace(b"\n", b"") + b"\x7f"
_THREE_DIGITS = [f"{low:03d}" for low in range(1000)]
_TRAILING_TEXT = _TRAILING_SPACE.decode()  # what bytes.rstrip() cuts, and not str.rstrip()'s Unicode blanks
_NOT_TRAILING = str.maketrans("", "", _TRAILING_TEXT)
_SET_BATCH = 1024  # job locks --set holds at once, so one fsync covers many bytes
_SET_TRIES = 5  # a lock held through all of them (~0.1 s) is a running job's
_SET_RETRY_PAUSE = 0.025
_MAX_NOTICE = 4096  # bytes of line numbers in one #runmaker set notice
_PROGRESS_CELLS = 16
_KILL_WAIT = 15.0  # seconds runset --kill waits for the jobs to end
_KILL_POLL = 0.05
_UNFINISHED = re.compile(rb"[^d\-]+")  # runs of jobs that may still change
_WATCH_RATE = 512 << 10  # bytes a second runwait rereads, at most (after its first look)
_WATCH_MIN_READ = 64 << 10  # bytes a look may read however soon it follows the last
_WATCH_GAP = 4096  # runs of unfinished jobs closer than this are read in one piece


@dataclass(frozen=True)
class JobSelection:
    """Which jobs ``runset`` acts on: everything given, combined with AND.

    ``jobs`` holds line numbers and ranges ``A-B`` as the user wrote them,
    ``states`` the state characters to keep, ``grep`` a regular expression
    searched for in each (decoded) command.  ``all_jobs`` selects every job
    explicitly, which ``--set`` needs when nothing else is given.
    """

    jobs: tuple[str, ...] = ()
    all_jobs: bool = False
    states: str | None = None
    grep: str | None = None

    def is_empty(self) -> bool:
        """True when nothing at all was selected, not even ``--all``."""
        return not (self.jobs or self.all_jobs or self.states is not None or self.grep is not None)


def list_jobs(
    path: str,
    selection: JobSelection,
    *,
    as_json: bool = False,
    summary: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Describe the selected jobs of the job file at ``path``, as text to print.

    Yields pieces of text, each a run of whole lines: ``LINE: S - COMMAND``
    per job (`` [lost]`` after a running job whose lock nobody holds), or
    with ``as_json`` one JSON object per job.  With ``summary`` the lines
    count the jobs per state instead (``as_json``: one JSON object).  No
    selection means every job.  The file is read once, under the reading
    lock; only ``r`` jobs are probed.  Raises RunmakerError for a bad
    selection, before anything is yielded, and RunmakerFailure when the
    file system fails under it.
    """
    with _failing_as_runtime_error(path):
        wanted, pattern = _compile_selection(path, selection)
        jobfile = JobFile(path, writable=False, warn=warn)
        try:
            check_file_locking(path, fd=jobfile.fd)
            if summary and not (selection.jobs or wanted is not None or pattern is not None):
                counts, lost_count = _count_states(jobfile)
                yield _summary_text(counts, lost_count, as_json)
                return
            whole: bytes | None = None
            if not summary and not (selection.jobs or wanted is not None or pattern is not None):
                whole = _read_whole(jobfile)
                if _plain_and_live(jobfile, whole):
                    yield from _plain_listing(whole, as_json)
                    return
            # Counting needs no command: then the file is indexed a piece at a
            # time and never held whole.
            data, states, chosen = _read_selection(
                jobfile, selection, wanted, pattern, commands=not summary or pattern is not None, data=whole
            )
            del whole
            lost = _probe_running_jobs(jobfile, states, chosen)
            if summary:
                picked = states if isinstance(chosen, range) else (states[i] for i in chosen)
                counts = collections.Counter(picked)
                yield _summary_text(counts, len(lost), as_json)
                return
            # What blocks a selected job may lie outside the selection.
            every_lost = lost if isinstance(chosen, range) else _probe_running_jobs(
                jobfile, states, range(len(states))
            )
            blocked = _blocking_failures(jobfile, states, every_lost)
            lines, offsets, ends = jobfile.lines, jobfile.offsets, jobfile.ends
            skip = _COMMAND_SKIP
            for start in range(0, len(chosen), _LIST_CHUNK):
                part = chosen[start : start + _LIST_CHUNK]
                if as_json:
                    # What json.dumps gives for each job's dict, written out:
                    # only the command goes through the (C) string encoder.
                    yield "".join([
                        '{"line": %d, "state": %s, "command": %s, "lost": %s, '
                        '"parent": %s, "blocked_by": %s}\n' % (
                            lines[i],
                            _JSON_STATES[states[i]],
                            _json_string(_shown(data[offsets[i] + skip : ends[i]])),
                            "true" if i in lost else "false",
                            _json_line(lines, jobfile.parent_of(i)),
                            _json_line(lines, blocked.get(i, -1)),
                        )
                        for i in part
                    ])
                else:
                    # Formatted as bytes and decoded once per piece: a million
                    # lines in about a second.
                    yield _shown(
                        b"".join(
                            [
                                b"%d: %c - %s%s\n"
                                % (
                                    lines[i],
                                    states[i],
                                    data[offsets[i] + skip : ends[i]],
                                    b" [lost]" if i in lost else (
                                        b" [blocked by %d]" % lines[blocked[i]] if i in blocked else b""
                                    ),
                                )
                                for i in part
                            ]
                        )
                    )
        finally:
            jobfile.close()


def set_job_states(
    path: str,
    selection: JobSelection,
    state: str,
    *,
    warn: Callable[[str], None] | None = None,
) -> list[int]:
    """Set the state byte of every selected job to ``state``; return the lines refused.

    Each byte changes under its job lock, taken without waiting.  A job whose
    lock another process still holds after a few tries over ~0.1 s is live
    (running): it is left as it is and its line returned.  The tries let a
    worker's brief look at a pending job (a claim that finds it taken)
    pass; a running job's lock is held for the whole job.
    Under the lock the byte is reread and written only if it differs; the
    bytes written are fsynced before their locks go, since another host
    reads a byte as soon as it wins its lock.  A lost job (``r`` that no
    process holds) may be set.  Jobs already in ``state`` when the file was
    read are not touched.  Locks are held a batch at a time, never waited for.

    Raises RunmakerError when ``state`` is ``r`` or no state ``--set`` may
    write, when nothing is selected, or for a bad selection; RunmakerFailure
    when the file system fails under it.
    """
    with _failing_as_runtime_error(path):
        target = _settable_state(state)
        if selection.is_empty():
            raise RunmakerError(
                f"{path}: --set needs a selection: JOB numbers or ranges, --all, --state or --grep"
            )
        wanted, pattern = _compile_selection(path, selection)
        jobfile = JobFile(path, writable=True, warn=warn)
        try:
            check_file_locking(path, fd=jobfile.fd)
            _, states, chosen = _read_selection(jobfile, selection, wanted, pattern)
            fd, offsets = jobfile.fd, jobfile.offsets
            byte = bytes((target,))
            busy = [index for index in chosen if states[index] != target]
            changed: list[int] = []
            try:
                for attempt in range(_SET_TRIES):
                    if attempt:
                        time.sleep(_SET_RETRY_PAUSE)
                    busy = _set_unlocked_jobs(fd, offsets, busy, byte, wanted, changed)
                    if not busy:
                        break
            finally:
                _append_set_notice(jobfile, changed)
            return [jobfile.lines[index] for index in busy]
        finally:
            jobfile.close()


def _set_unlocked_jobs(
    fd: int, offsets: array.array[int], chosen: list[int], byte: bytes, wanted: bytes | None,
    changed: list[int],
) -> list[int]:
    """Write ``byte`` to each chosen job whose lock is free; return the others.

    Adds the index of each job whose byte it wrote to ``changed``.
    """
    busy: list[int] = []
    held: list[int] = []
    written = False
    try:
        for index in chosen:
            offset = offsets[index]
            current = _lock_and_reread_job(fd, offset)
            if current is None:
                busy.append(index)
                continue
            held.append(offset)
            # A job chosen by --state may have moved on since the file was
            # read (a failed job rerun by `runmaker -r` and now done): then
            # it is no longer selected.
            selected = wanted is None or (current and current[0] in wanted)
            if selected and current and current != byte:
                _write_job_state(fd, offset, byte)
                written = True
                changed.append(index)
            if len(held) >= _SET_BATCH:
                _release_job_locks(fd, held, written)
                held.clear()
                written = False
    finally:
        _release_job_locks(fd, held, written)
    return busy


def _append_set_notice(jobfile: JobFile, changed: list[int]) -> None:
    """Append ``#runmaker set LINES`` naming the jobs whose bytes were changed in place.

    Workers and runwait follow what is appended, and reread no state byte
    of a finished stretch of the file: this notice is how they learn of
    the change.  Written after the bytes are durable and unlocked; a list
    too long for one line becomes a notice without lines (reread all).
    """
    if not changed:
        return
    ranges = _line_ranges(jobfile.lines, sorted(changed))
    notice = b"#runmaker set %s\n" % ranges.encode() if len(ranges) <= _MAX_NOTICE else b"#runmaker set\n"
    append_to_shared_file(jobfile.fd, notice)


def append_jobs(
    path: str,
    commands: Iterable[bytes] = (),
    *,
    high: bool = False,
    max_running: int | Literal["none"] | None = None,
    barrier: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[int]:
    """Append directives and new jobs to the job file at ``path`` as one record.

    The record holds, in this order: a ``#runmaker max-running`` directive
    (``max_running``: a whole number up to 2**31-1, or ``"none"`` to lift the
    cap), a ``#runmaker barrier`` line, then one job line per command,
    pending (``.``), or urgent (``+``) with ``high``.  Trailing white space
    of a command is dropped.  The record is written whole or not at all
    (append_to_shared_file, with placeholder first bytes): workers never see
    or run part of it, whatever happens to this process, and appends from
    other processes or hosts never tear its lines.  Waits at most
    _APPEND_PATIENCE seconds for the append lock, saying so through ``warn``
    if it has to wait.  Returns the line number of each job appended.  A
    command's leading blanks are its indent: a job indented deeper than the
    job line above it is its child (SPEC 1).

    Raises RunmakerError for an empty command, one with a line break in it,
    or a bad ``max_running``; RunmakerFailure when the file cannot take the
    record (disk full, file size limit: nothing was added) or its append
    lock stays held.
    """
    state = b"+ " if high else b". "
    directives: list[bytes] = []
    if max_running is not None:
        directives.append(b"runmaker max-running %s\n" % _cap_argument(path, max_running).encode())
    if barrier:
        directives.append(b"runmaker barrier\n")
    jobs: list[bytes] = []
    for command in commands:
        command = command.rstrip(_TRAILING_SPACE)
        if not command:
            raise RunmakerError(f"{path}: cannot add an empty command")
        if b"\n" in command or b"\r" in command:
            raise RunmakerError(
                f"{path}: a command must fit on one line: {_shown(command)!r}"
            )
        jobs.append(command + b"\n")
    if not directives and not jobs:
        return []
    # Placeholders first (see append_to_shared_file): "/runmaker" is a
    # comment, "~" a state nothing runs.
    record = b"".join(b"/" + line for line in directives) + b"".join(_PLACEHOLDER + line for line in jobs)
    real = [b"".join(b"#" + line for line in directives), b"".join(state + line for line in jobs)]
    real = [piece for piece in real if piece]
    fd = _open_job_file(path, writable=True)
    try:
        check_file_locking(path, fd=fd)

        def waiting() -> None:
            if warn is not None:
                warn(
                    f"runset: {path}: waiting for the append lock, which another process holds "
                    f"(gives up after {_APPEND_PATIENCE:.0f} s)"
                )

        try:
            start = append_to_shared_file(fd, record, real=real, patience=_APPEND_PATIENCE, waiting=waiting)
        except TimeoutError:
            raise RunmakerFailure(
                f"{path}: the append lock stayed held for {_APPEND_PATIENCE:.0f} s; nothing was added"
            ) from None
        except OSError as exc:
            raise RunmakerFailure(
                f"{path}: cannot append: {exc.strerror or exc}; nothing was added"
            ) from None
        with _failing_as_runtime_error(path):
            before = _count_lines_before(fd, start) + len(directives) if jobs else 0
    finally:
        os.close(fd)
    return [before + 1 + k for k in range(len(jobs))]


def _count_lines_before(fd: int, offset: int) -> int:
    """The number of lines before ``offset`` (the start of a line).

    Lines are only ever appended, never cut or joined, so the count of
    newlines before a record stays what it was when the record was written.
    """
    count = 0
    with _ReadingLock(fd):
        for start in range(0, offset, _INDEX_CHUNK):
            count += os.pread(fd, min(_INDEX_CHUNK, offset - start), start).count(b"\n")
    return count


@dataclass
class KillReport:
    """What ``kill_jobs`` did, by line: killed, not running, or ended otherwise."""

    killed: list[int] = field(default_factory=list)
    not_running: list[int] = field(default_factory=list)
    # (line, why) of jobs a kill line named that did not end killed.
    other: list[tuple[int, str]] = field(default_factory=list)


def kill_jobs(
    path: str,
    selection: JobSelection,
    *,
    wait: float = _KILL_WAIT,
    warn: Callable[[str], None] | None = None,
) -> KillReport:
    """Stop the selected running jobs, wherever they run, and wait for them to end.

    Appends one ``#runmaker kill LINE...`` naming the selected jobs that
    are live (``r`` with their lock held); the worker (or TCP client)
    running each stops its process group, and the job ends ``!`` (status
    ``killed``).  Selected jobs that are not running get no kill line and
    are named in the report.  Waits up to ``wait`` seconds for the jobs
    named to end (a job that ignores SIGTERM gets SIGKILL after 5 s).

    Raises RunmakerError when nothing is selected, or for a bad selection,
    and RunmakerFailure when the file system fails under it.
    """
    if selection.is_empty():
        raise RunmakerError(
            f"{path}: --kill needs a selection: JOB numbers or ranges, --all, --state or --grep"
        )
    with _failing_as_runtime_error(path):
        wanted, pattern = _compile_selection(path, selection)
        jobfile = JobFile(path, writable=True, warn=warn)
        try:
            check_file_locking(path, fd=jobfile.fd)
            _, states, chosen = _read_selection(jobfile, selection, wanted, pattern)
            lost = _probe_running_jobs(jobfile, states, chosen)
            live = [index for index in chosen if states[index] == _RUNNING and index not in lost]
            running = set(live)
            report = KillReport(not_running=[jobfile.lines[i] for i in chosen if i not in running])
            if live:
                lines = " ".join(str(jobfile.lines[index]) for index in live)
                append_to_shared_file(jobfile.fd, f"#runmaker kill {lines}\n".encode())
                _wait_for_kills(jobfile, live, report, wait)
            return report
        finally:
            jobfile.close()


def _wait_for_kills(jobfile: JobFile, live: list[int], report: KillReport, wait: float) -> None:
    """Wait until the jobs a kill line named have ended, at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        live = _jobs_still_running(jobfile, live, report)
        if not live:
            break
        if time.monotonic() >= deadline:
            report.other += [
                (jobfile.lines[index], f"still running {wait:g} s after the kill") for index in live
            ]
            break
        time.sleep(_KILL_POLL)
    report.killed.sort()
    report.other.sort()


def _jobs_still_running(jobfile: JobFile, live: list[int], report: KillReport) -> list[int]:
    """Look at each job a kill line named; note those that ended, return the others."""
    fd, offsets = jobfile.fd, jobfile.offsets
    left = []
    for index in live:
        current = _probe_job(fd, offsets[index])
        if current is None:
            left.append(index)  # its worker still holds it
            continue
        line = jobfile.lines[index]
        if current == b"!":
            report.killed.append(line)
        elif current == b"r":
            report.other.append((line, "lost: its worker died"))
        else:
            report.other.append((line, f"ended '{_shown(current)}' before the kill reached it"))
    return left


def _cap_argument(path: str, value: int | str) -> str:
    """A max-running argument as written to the file: ``none`` or digits."""
    text = str(value)
    if text == "none":
        return text
    if not _MAX_RUNNING_ARG.match(text):
        raise RunmakerError(f"{path}: max-running takes a whole number or 'none', not {text!r}")
    number = parse_cap(text.encode())
    if number is None:
        raise RunmakerError(
            f"{path}: max-running {shorten_number(text)} is above the largest cap, {MAX_CAP}"
        )
    return str(number)


@dataclass
class JobCounts:
    """One look at a job file, counted as ``runwait`` counts it.

    ``running`` counts live jobs only: a running job whose lock nobody holds
    is ``lost``, and counts as an error.  Retired jobs are left out of
    ``total``, as if deleted.  ``processed`` jobs are the ones nobody waits
    for any more; ``errors`` are those of them not done (failed, error,
    lost, or in an unknown state).  ``blocked`` counts the pending jobs
    that failures hold back (a parent or a barrier); it is counted only
    while nothing runs, the moment it matters.
    """

    pending: int = 0
    blocked: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    error: int = 0
    lost: int = 0
    unknown: int = 0
    retired: int = 0
    elapsed: float = 0.0  # seconds since the first look
    eta: float | None = None  # seconds left at the finishing rate observed, if any
    timed_out: bool = False
    # Filled on the last look only: kind -> line numbers and ranges ("3 5-9").
    unsuccessful: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.failed + self.error + self.lost + self.unknown

    @property
    def processed(self) -> int:
        return self.done + self.errors

    @property
    def total(self) -> int:
        return self.pending + self.running + self.processed

    @property
    def finished(self) -> bool:
        """True when none is live-running and failures hold back every pending job (or none is)."""
        return self.pending == self.blocked and self.running == 0


class JobWatcher:
    """Looks at a job file again and again, for ``runwait``, on one descriptor.

    The first look reads the whole file.  Later looks read what was
    appended, the state bytes that ``#runmaker set`` notices name, and the
    stretches of the file holding jobs not yet ``d`` or ``-`` (nothing else
    changes them), at most _WATCH_RATE bytes a second: when those stretches
    are larger, each look rereads the next part of them in turn.  Only
    ``r`` jobs are probed.  No lock is held between looks, and none that a
    worker would wait for more than one read.
    """

    def __init__(
        self, path: str, *, jobs: tuple[str, ...] = (), warn: Callable[[str], None] | None = None
    ) -> None:
        self.jobfile = JobFile(path, writable=False, warn=warn)
        self._jobs = jobs  # JOB arguments: watch these jobs only
        self._chosen: list[int] | None = None
        self._states = bytearray()
        self._lost: set[int] = set()
        self._blocked: dict[int, int] = {}
        self._looked = False
        self._last_look = 0.0
        self._cursor = 0  # the job index the next partial reread starts at

    def close(self) -> None:
        self.jobfile.close()

    def look(self) -> JobCounts:
        """Count the jobs per state now.

        Raises RunmakerError when the file was replaced or truncated since
        it was opened: workers stop using such a file, so waiting on is futile.
        """
        jobfile = self.jobfile
        if not self._looked:
            self._states = bytearray(jobfile.read_new_states()[1])
            jobfile.take_set_notices()  # every byte was just read
            self._looked = True
        else:
            self._read_changes()
        self._last_look = time.monotonic()
        if jobfile.replaced():
            raise RunmakerError(
                f"{jobfile.path}: the file was replaced or truncated while runwait watched it "
                "(an editor that saves a new copy?); workers stop using it"
            )
        states = self._states
        if self._jobs and self._chosen is None:
            self._chosen = _jobs_named(jobfile, self._jobs)  # RunmakerError: a line that is no job
        self._lost = _probe_running_jobs(jobfile, states, range(len(states)))
        mine = states if self._chosen is None else bytearray(states[i] for i in self._chosen)
        pending = mine.count(b".") + mine.count(b"+")
        lost = len(self._lost) if self._chosen is None else sum(i in self._lost for i in self._chosen)
        running = mine.count(b"r") - lost
        done, failed, error = mine.count(b"d"), mine.count(b"!"), mine.count(b"e")
        retired = mine.count(b"-")
        unknown = len(mine) - pending - running - lost - done - failed - error - retired
        self._blocked = {}
        if pending and not running:
            held = _blocking_failures(jobfile, states, self._lost)
            self._blocked = held if self._chosen is None else {
                i: held[i] for i in self._chosen if i in held
            }
        return JobCounts(
            pending=pending, blocked=len(self._blocked), running=running, done=done, failed=failed,
            error=error, lost=lost, unknown=unknown, retired=retired,
        )

    def _read_changes(self) -> None:
        """Bring the cached state bytes up to date, reading only what may have changed."""
        jobfile, states = self.jobfile, self._states
        first_new, new_states = jobfile.read_new_states()
        if jobfile.shrunk:
            return  # look() raises
        del states[first_new:]
        states += new_states
        for first_line, last_line in jobfile.take_set_notices():
            if (first_line, last_line) == (1, 0):
                states[:] = jobfile.states_between(0, len(states))
                continue
            first = bisect.bisect_left(jobfile.lines, first_line)
            last = min(bisect.bisect_right(jobfile.lines, last_line), len(states))
            if first < last:
                states[first:last] = jobfile.states_between(first, last)
        budget = max(_WATCH_MIN_READ, (time.monotonic() - self._last_look) * _WATCH_RATE)
        for first, last in self._unfinished_spans(budget):
            states[first:last] = jobfile.states_between(first, last)

    def _unfinished_spans(self, budget: float) -> list[tuple[int, int]]:
        """Runs of jobs to reread: every job not ``d`` or ``-``, from the cursor
        on (then from the start again), at most about ``budget`` bytes of
        the file; the cursor moves on to where the next look goes on.

        Runs closer than _WATCH_GAP bytes are read as one.
        """
        offsets, states = self.jobfile.offsets, self._states
        start = self._cursor if self._cursor < len(states) else 0
        spans: list[tuple[int, int]] = []
        spent = 0.0
        for begin, end in ((start, len(states)), (0, start)):
            for match in _UNFINISHED.finditer(states, begin, end):
                first, last = match.span()
                # Bytes between the last span and this run, if read with it.
                gap = _WATCH_GAP
                if spans and first > spans[-1][0]:
                    gap = offsets[first] - offsets[spans[-1][1] - 1]
                joined = gap < _WATCH_GAP
                cost = (gap if joined else 0) + offsets[last - 1] + 1 - offsets[first]
                if spent + cost > budget:
                    if spans:
                        self._cursor = first
                        return spans
                    # One run larger than the budget: its first part now.
                    last = bisect.bisect_right(offsets, offsets[first] + budget, first + 1, last)
                    self._cursor = last
                    return [(first, last)]
                spent += cost
                spans[-1:] = [(spans[-1][0], last)] if joined else [*spans[-1:], (first, last)]
        self._cursor = 0
        return spans

    def name_unsuccessful_jobs(self) -> dict[str, str]:
        """The lines of the last look's unsuccessful jobs, by kind, as ranges.

        Kinds: ``failed (!)``, ``error (e)``, ``lost (r)`` and ``unknown
        state``, then ``blocked by N`` for the pending jobs that the failure
        at line N holds back; ranges such as ``5-9`` join jobs next to each
        other, so the text can be handed back to ``runset`` as JOB arguments.
        """
        states, lines = self._states, self.jobfile.lines
        kinds = {
            "failed (!)": [m.start() for m in re.finditer(rb"!", states)],
            "error (e)": [m.start() for m in re.finditer(rb"e", states)],
            "lost (r)": sorted(self._lost),
            "unknown state": [m.start() for m in _UNKNOWN_STATE.finditer(states)],
        }
        if self._chosen is not None:
            mine = set(self._chosen)
            kinds = {kind: [i for i in found if i in mine] for kind, found in kinds.items()}
        by_failure: dict[int, list[int]] = {}
        for index, failure in sorted(self._blocked.items()):
            by_failure.setdefault(failure, []).append(index)
        for failure in sorted(by_failure):
            kinds[f"blocked by {lines[failure]}"] = by_failure[failure]
        return {kind: _line_ranges(lines, found) for kind, found in kinds.items() if found}


def wait_for_jobs(
    path: str,
    *,
    jobs: tuple[str, ...] = (),
    interval: float = 1.0,
    timeout: float | None = None,
    progress: Callable[[JobCounts], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobCounts:
    """Wait until no job of the job file at ``path`` is pending or live-running.

    With ``jobs`` (JOB arguments: line numbers and ranges ``A-B``) only
    those jobs count.  Pending jobs that failures hold back (a failed
    parent, or a failure above their barrier) do not keep it waiting once
    nothing runs: the last look names them by the failure that holds them.

    Looks at once, then every ``interval`` seconds (see JobWatcher), and
    hands every look to ``progress``, with the time elapsed and an ETA: the
    jobs not yet processed over the rate at which jobs were processed since
    the first look.  Lost jobs count as errors and are not waited for.
    Returns the last look, with its unsuccessful jobs named; when
    ``timeout`` seconds pass first, with ``timed_out`` set.  Raises
    RunmakerError as JobWatcher.look does, and RunmakerFailure when the
    file system fails under it.
    """
    with _failing_as_runtime_error(path):
        watcher = JobWatcher(path, jobs=jobs, warn=warn)
        try:
            check_file_locking(path, fd=watcher.jobfile.fd)
            started = time.monotonic()
            first_processed: int | None = None
            while True:
                counts = watcher.look()
                now = time.monotonic()
                counts.elapsed = now - started
                if first_processed is None:
                    first_processed = counts.processed
                finished_since = counts.processed - first_processed
                if finished_since > 0 and counts.elapsed > 0:
                    counts.eta = (counts.pending + counts.running) * counts.elapsed / finished_since
                counts.timed_out = (
                    not counts.finished and timeout is not None and counts.elapsed >= timeout
                )
                if counts.finished or counts.timed_out:
                    counts.unsuccessful = watcher.name_unsuccessful_jobs()
                if progress is not None:
                    progress(counts)
                if counts.finished or counts.timed_out:
                    return counts
                pause = interval if timeout is None else min(interval, timeout - counts.elapsed)
                time.sleep(min(max(pause, 0.0), _LONGEST_SLEEP))  # 1e300 s would overflow
        finally:
            watcher.close()


def progress_cells(counts: JobCounts, width: int = _PROGRESS_CELLS) -> str:
    """The bar of runmaker4's progress line, ``width`` cells wide.

    ``=`` done, ``e`` error (lost and unknown states too), ``!`` failed,
    ``>`` running, space the rest (pending).  Kinds are laid out in that
    order, and the kinds up to and including one cover the first
    ``width * C // total`` cells, C being their jobs: the cells stay
    proportional, always add up, and the bar is full only when no job is
    pending; a kind much smaller than one cell may get none.
    """
    total = counts.total
    cells = []
    covered = drawn = 0
    for char, count in (
        ("=", counts.done),
        ("e", counts.error + counts.lost + counts.unknown),
        ("!", counts.failed),
        (">", counts.running),
    ):
        covered += count
        end = width * covered // total if total else 0
        cells.append(char * (end - drawn))
        drawn = end
    return "".join(cells) + " " * (width - drawn)


def progress_line(counts: JobCounts) -> str:
    """runmaker4's progress line: ``progress:   2 of   4 jobs processed, 0 errors [...]``."""
    return "progress: %3d of %3d jobs processed, %d errors [%s]" % (
        counts.processed,
        counts.total,
        counts.errors,
        progress_cells(counts),
    )


def _compile_selection(path: str, selection: JobSelection) -> tuple[bytes | None, re.Pattern[str] | None]:
    """Check ``--state`` and ``--grep`` before the file is opened."""
    wanted = None
    if selection.states is not None:
        bad = [c for c in selection.states if not (c.isascii() and c.isprintable()) or c in "#/ "]
        if not selection.states or bad:
            raise RunmakerError(
                f"{path}: --state {selection.states!r}: "
                + (f"{bad[0]!r} can never be a state byte" if bad else "give one or more states")
                + " (states: . + r d ! e - or another printable character)"
            )
        wanted = selection.states.encode("ascii")
    pattern = None
    if selection.grep is not None:
        try:
            pattern = re.compile(selection.grep)
        except re.error as exc:
            raise RunmakerError(f"{path}: --grep {selection.grep!r}: {exc}") from None
    return wanted, pattern


def _settable_state(state: str) -> int:
    if state == "r":
        raise RunmakerError(
            "--set r is refused: a job is running only while a worker holds its lock, "
            "so a hand-made 'r' would look lost"
        )
    if len(state) != 1 or state.encode("ascii", "replace") not in _SETTABLE:
        raise RunmakerError(f"--set {state!r}: not a state to set; use one of . + d ! e -")
    return ord(state)


def _read_selection(
    jobfile: JobFile, selection: JobSelection, wanted: bytes | None, pattern: re.Pattern[str] | None,
    *, commands: bool = True, data: bytes | None = None,
) -> tuple[bytes, bytearray, Sequence[int]]:
    """Read the whole file once (reading lock) and pick the selected jobs.

    Returns the data, every job's state byte, and the selected job indexes
    in file order (a range when that is every job).  Without ``commands``
    the data is empty: the file is indexed a piece at a time instead.
    ``data``: the whole file if the caller just read it (_read_whole).
    """
    if commands:
        data = _read_whole(jobfile) if data is None else data
        jobfile.index_whole(data)
        states = bytearray(jobfile.states_of(data))
    else:
        data, states = b"", bytearray(jobfile.read_new_states()[1])
    chosen: Sequence[int] = range(len(states))
    if selection.jobs:
        chosen = _jobs_named(jobfile, selection.jobs)
    if wanted is not None:
        keep = set(wanted)
        chosen = [i for i in chosen if states[i] in keep]
    if pattern is not None:
        offsets, ends, skip = jobfile.offsets, jobfile.ends, _COMMAND_SKIP
        chosen = [i for i in chosen if pattern.search(_shown(data[offsets[i] + skip : ends[i]]))]
    return data, states, chosen


def _jobs_named(jobfile: JobFile, specs: tuple[str, ...]) -> list[int]:
    """The job indexes of JOB arguments: line numbers and ranges ``A-B``.

    A line number must be a job; a range takes the jobs among its lines and
    must lie within the file.
    """
    path, lines = jobfile.path, jobfile.lines
    chosen: set[int] = set()
    for spec in specs:
        match = _JOB_SPEC.match(spec)
        if match is None:
            raise RunmakerError(f"{path}: {spec!r} is not a line number or a range A-B")
        # Past the end of any file: int() would refuse a long one (4,300 digits).
        beyond = jobfile.line_count + 1
        first = _line_number(match[1], beyond)
        shown = shorten_number(match[1].lstrip("0") or "0")
        if match[2] is None:
            index = jobfile.index_of_line(first)
            if index is None:
                past = f" (the file has {jobfile.line_count} lines)" if first > jobfile.line_count else ""
                raise RunmakerError(f"{path}:{shown}: no job at this line{past}")
            chosen.add(index)
            continue
        last = _line_number(match[2], beyond)
        if not 1 <= first <= last:
            raise RunmakerError(f"{path}: {shorten_number(spec)!r}: a range A-B needs 1 <= A <= B")
        if last > jobfile.line_count:
            raise RunmakerError(
                f"{path}:{shown}-{shorten_number(match[2].lstrip('0') or '0')}: the range runs past "
                f"the end of the file ({jobfile.line_count} lines)"
            )
        chosen.update(range(bisect.bisect_left(lines, first), bisect.bisect_right(lines, last)))
    return sorted(chosen)


def _line_number(digits: str, beyond: int) -> int:
    """ASCII digits as a line number; ``beyond`` for one past any line we have."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= len(str(beyond)) else beyond


def _probe_running_jobs(jobfile: JobFile, states: bytearray, chosen: Sequence[int]) -> set[int]:
    """Probe the lock of every ``r`` job among ``chosen``; return the lost ones.

    Lost means ``r`` while no process holds the job's lock.  The probe is a
    shared lock attempt, released at once (like _is_locked_elsewhere), and
    the byte is reread while it is held: the job's worker may have written
    the final state and let go since the file was read; then the job is not
    lost, and ``states`` gets the new byte.
    """
    fd, offsets = jobfile.fd, jobfile.offsets
    running = [m.start() for m in re.finditer(rb"r", states)]
    if running and not isinstance(chosen, range):
        members = set(chosen)
        running = [i for i in running if i in members]
    lost = set()
    for index in running:
        current = _probe_job(fd, offsets[index])
        if current is None:
            continue  # held: the job is live
        if current == b"r":
            lost.add(index)
        elif current:
            states[index] = current[0]
    return lost


def _json_line(lines: array.array[int], index: int) -> str:
    """The line of job ``index`` as JSON: null for -1 (none)."""
    return str(lines[index]) if index >= 0 else "null"


def _blocking_failures(jobfile: JobFile, states: bytearray, lost: set[int]) -> dict[int, int]:
    """For each pending job that a failure holds back, the index of that failure.

    Failures here: ``!``, ``e``, unknown states and lost jobs (what the user
    must act on).  Only pending jobs after the first failure can be held,
    so a file without failures costs one regular expression search.
    """
    found = _UNKNOWN_OR_FAILED.search(states)
    first = found.start() if found else None
    if lost:
        first = min(lost) if first is None else min(first, min(lost))
    if first is None:
        return {}

    def failed(index: int) -> bool:
        return states[index] not in _LIVE_OR_DONE or index in lost

    pending = (m.start() for m in _PENDING_STATES.finditer(states, first + 1))
    held = _find_held_back(jobfile, states, pending, failed, first)
    return {index: failure for index, (failure, _) in held.items()}


def _read_whole(jobfile: JobFile) -> bytes:
    """The whole job file, read under the reading lock; nothing indexed."""
    with _ReadingLock(jobfile.fd):
        return _pread_all(jobfile.fd, os.fstat(jobfile.fd).st_size, 0)


def _plain_and_live(jobfile: JobFile, data: bytes) -> bool:
    """True when every line of ``data`` (the whole file) is a plain job line
    and no ``r`` job among them is lost: its listing needs no index.

    A plain job line: a state of ``.+rd-``, one space, a command that does
    not start blank (trailing blanks are cut as usual).  Such a file has no
    directive, comment, child, mistaken line or failure, so nothing in it
    is blocked, and job N is line N.  Each ``r`` job is probed
    (_probe_job); one lost, or ended since the read, sends the file the
    index's way, which says so.
    """
    if not data:
        return False
    tail = data.rfind(b"\n") + 1  # where a last line without newline starts
    running: set[int] = set()
    # The first line, which follows no newline; every line after a newline;
    # the last line without its newline, given one.
    first = b"\n" + data[:3]
    looks = [(first, len(first), -1), (data, tail, 0)]
    if tail < len(data):
        last = b"\n" + data[tail:] + b"\n"
        looks.append((last, len(last), tail - 1))
    for text, end, base in looks:
        pos = 0
        while (found := _NOT_PLAIN_OR_RUNNING.search(text, pos, end)) is not None:
            if found.end() - found.start() > 2 or text[found.start() + 1] != ord("r"):
                return False
            running.add(base + found.end() - 1)
            pos = found.end()
    return all(_probe_job(jobfile.fd, offset) is None for offset in sorted(running))


def _line_numbers(first: int, count: int, before: str) -> list[str]:
    """``before + str(n)`` for ``count`` line numbers from ``first``, a
    thousand at a time: the last three digits come from a table (str() of
    each int would be most of a listing's time)."""
    numbers: list[str] = []
    number, stop = first, first + count
    while number < stop:
        thousands, low = divmod(number, 1000)
        end = min(stop, number - low + 1000)
        if thousands:
            numbers += map((before + str(thousands)).__add__, _THREE_DIGITS[low : low + end - number])
        else:
            numbers += map(before.__add__, map(str, range(number, end)))
        number = end
    return numbers


def _plain_listing(data: bytes, as_json: bool) -> Iterator[str]:
    """``runset --list``/``--json`` of a file that _plain_and_live passed:
    the same text as list_jobs makes from the index, a piece at a time,
    with no Python statement per line: C-level maps over each piece, and
    one join of three parts a line (the end of the line before and this
    one's number, its state's text, its command), laid out by slice
    assignments."""
    line = 1
    start = 0
    while start < len(data):
        cut = data.find(b"\n", start + _INDEX_CHUNK) + 1 or len(data)
        piece = data[start:cut].rstrip(b"\n")
        start = cut
        # The state byte and the space are ASCII: decoding whole lines
        # decodes each command as the index's listing does.
        lines = _shown(piece).split("\n")
        if len("".join(map(operator.itemgetter(-1), lines)).translate(_NOT_TRAILING)) < len(lines):
            lines = list(map(operator.methodcaller("rstrip", _TRAILING_TEXT), lines))  # as the index does
        states = map(operator.itemgetter(0), lines)
        commands: Iterable[str] = map(operator.itemgetter(slice(_COMMAND_SKIP, None)), lines)
        if not as_json:
            end, head, texts = "\n", "", _PLAIN_TEXT
        elif (not piece.isascii() or b'"' in piece or b"\\" in piece
              or len(piece.translate(None, _JSON_CONTROLS)) < len(piece)):
            end, head, texts = _PLAIN_JSON_END, '{"line": ', _PLAIN_JSON
            commands = map(_json_string, commands)
        else:  # each command as JSON is itself between quotes
            end, head, texts = '"' + _PLAIN_JSON_END, '{"line": ', _PLAIN_JSON_QUOTED
        parts = [""] * (3 * len(lines))  # filled by C-level slice assignments
        parts[0::3] = _line_numbers(line, len(lines), end + head)
        parts[1::3] = map(texts.__getitem__, states)
        parts[2::3] = commands
        line += len(lines)
        yield "".join(parts)[len(end):] + end


def _count_states(jobfile: JobFile) -> tuple[collections.Counter[int], int]:
    """Count every job per state byte, and the lost ones, building no index.

    For ``runset --summary`` of a whole file: a piece at a time under the
    reading lock, job lines found by a regular expression in C.  A piece
    with a directive or a line that is neither a job, a comment nor blank
    is indexed by the JobFile instead, which warns about it as usual.
    ``r`` jobs are probed (a shared lock attempt, the byte reread).
    """
    counts: collections.Counter[int] = collections.Counter()
    running: list[int] = []
    fd = jobfile.fd
    with _ReadingLock(fd):
        size = os.fstat(fd).st_size
    pos = line = 0
    data = b""
    while pos + len(data) < size:
        with _ReadingLock(fd):
            more = os.pread(fd, min(size - pos - len(data), _INDEX_CHUNK), pos + len(data))
        if not more:
            break
        data += more
        cut = data.rfind(b"\n") + 1 if pos + len(data) < size else len(data)
        if cut == 0:
            continue  # a line longer than a piece: read on
        piece, data = data[:cut], data[cut:]
        if not piece.endswith(b"\n"):
            piece += b"\n"  # the last line, without its newline
        found = _count_job_lines(piece)
        if found is None:
            first = len(jobfile.offsets)
            jobfile.line_count = line
            jobfile._index_lines(piece, pos)
            line = jobfile.line_count
            states = jobfile.states_of(piece, pos, first)
            counts.update(states)
            running += [jobfile.offsets[first + m.start()] for m in re.finditer(rb"r", states)]
        else:
            counts.update(found)
            line += found.total()  # every line a job
            if found[_RUNNING]:
                running += [pos + m.start() for m in _RUNNING_JOB.finditer(piece)]
        pos += cut
    lost = 0
    for offset in running:
        current = _probe_job(fd, offset)
        if current is None:
            continue  # held: the job is live
        if current == b"r":
            lost += 1
        elif current:
            counts[_RUNNING] -= 1
            counts[current[0]] += 1
    return +counts, lost


def _count_job_lines(piece: bytes) -> collections.Counter[int] | None:
    """Lines of ``piece`` (whole lines) per state, when every line is a job;
    None when some line needs a closer look (the index's).

    One regular expression search and C-level maps: no Python work per line.
    """
    if _NOT_JOB_LINE.search(b"\n" + piece):
        return None
    lines = piece.split(b"\n")
    lines.pop()  # the empty piece after the last newline
    states = bytes(map(operator.itemgetter(0), lines))
    counts = collections.Counter({state: states.count(state) for state in _SUMMARY_ORDER})
    if counts.total() < len(states):
        counts = collections.Counter(states)  # some state byte no worker knows
    return counts


def _summary_text(counts: collections.Counter[int], lost: int, as_json: bool) -> str:
    order = list(_SUMMARY_ORDER) + sorted(set(counts) - set(_SUMMARY_ORDER))
    present = [(state, counts[state]) for state in order if counts[state]]
    total = sum(counts.values())
    if as_json:
        record = {_shown(bytes((state,))): count for state, count in present}
        return json.dumps({**record, "lost": lost, "total": total}) + "\n"
    width = len(str(total))
    text = []
    for state, count in present:
        name = STATE_NAMES.get(chr(state), "unknown")
        if state == _RUNNING and lost:
            name += f" ({lost} lost)"
        text.append(f"{_shown(bytes((state,)))} {count:>{width}} {name}\n")
    text.append(f"  {total:>{width}} jobs\n")
    return "".join(text)


def _line_ranges(lines: array.array[int], indexes: list[int]) -> str:
    """Line numbers of sorted job indexes, neighbouring jobs joined: ``3 5-9``."""
    parts = []
    start = 0
    for k in range(1, len(indexes) + 1):
        if k == len(indexes) or indexes[k] != indexes[k - 1] + 1:
            first, last = lines[indexes[start]], lines[indexes[k - 1]]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = k
    return " ".join(parts)


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


_RUNMAKER4 = (
    "runmaker4's running jobs hold no lock, so runmaker would take them for lost and run them "
    "a second time; stop runmaker4 first (never run both on one file)"
)


def check_job_file(jobfile: JobFile, notify: Callable[[str], None]) -> bytes:
    """Refuse a job file that runmaker must not work on; pass on its warnings.

    Reads it a first time, before anything is written or created, with the
    warnings about mistaken lines held back.  Raises RunmakerError for a
    file with no job line but lines that look like commands (a file of bare
    commands: one error, not a warning a line), and for a file that
    runmaker4 is seen using: a ``?`` state byte (runmaker4's claim in
    progress), or ``r`` jobs with no job lock while another process locks
    the whole file, as runmaker4, runset4.py and runwait4.py do to read.
    Otherwise hands the held warnings to ``notify`` and returns every job's
    state byte as read (a Scheduler made at once can start from them).
    """
    with jobfile.warnings_held() as held:
        _, states = jobfile.read_new_states()  # a piece at a time: never the whole file in memory
    jobfile.take_set_notices()  # every state byte was just read: older notices change nothing
    path, lines = jobfile.path, jobfile.lines
    if not jobfile.offsets and not jobfile.folded_jobs and jobfile.first_command_like is not None:
        line, raw = jobfile.first_command_like
        command = _shown(raw.rstrip())
        many = jobfile.command_like_lines
        what = "1 line that looks like a command" if many == 1 else f"{many} lines that look like commands"
        raise RunmakerError(
            f"{path}: no job line, but {what} (line {line}: '{command}'); "
            f"a job line is a state byte, a space, then the command: '. {command}'"
        )
    for message in held:
        notify(message)
    claiming = states.find(b"?")
    if claiming >= 0:
        raise RunmakerError(
            f"{path}:{lines[claiming]}: '?' is runmaker4's claim in progress, so runmaker4 uses this file; "
            f"{_RUNMAKER4}"
        )
    running = [m.start() for m in re.finditer(rb"r", states)]
    if running and _whole_file_locked_elsewhere(jobfile.fd):
        unlocked = _running_without_lock(jobfile, running)
        if unlocked:
            raise RunmakerError(
                f"{path}: jobs at line {_line_ranges(lines, unlocked)} are 'r' with no job lock while "
                "another process locks the whole file, as runmaker4 does, so runmaker4 uses this file; "
                f"{_RUNMAKER4}"
            )
    return states


def _running_without_lock(jobfile: JobFile, running: list[int]) -> list[int]:
    """The jobs among ``running`` that are ``r`` now with no job lock held.

    A shared probe: it passes a whole-file read lock, not a worker's job
    lock.  The byte is reread under it: a job that another worker finished
    since it was read is ``d`` and unlocked, and no trace of runmaker4.
    """
    return [index for index in running if _probe_job(jobfile.fd, jobfile.offsets[index]) == b"r"]


def _save_job_lock_counts() -> None:
    """Append "ATTEMPTS REFUSED" to the file RUNMAKER_LOCK_COUNTS names, if any."""
    where = os.environ.get("RUNMAKER_LOCK_COUNTS")
    if where:
        with contextlib.suppress(OSError), open(where, "a") as f:
            f.write(f"{_job_lock_counts[0]} {_job_lock_counts[1]}\n")


def run_worker(
    path: str,
    options: WorkerOptions,
    *,
    retry: bool = False,
    console: BinaryIO,
    notify: Callable[[str], None],
) -> int:
    """Run the jobs of the job file at ``path``; return the exit status.

    Every input (the job file, its mount, the log paths) is checked before
    the first byte of the job file is written; a bad one raises
    RunmakerError and leaves the file untouched.
    """
    _check_open_file_limit(options.jobs, options.logdir is not None)
    jobfile = JobFile(path, warn=notify, fold=True)
    try:
        check_file_locking(path, fd=jobfile.fd)
        states = check_job_file(jobfile, notify)
        fence = default_fence(jobfile.fd) if options.fence is None else options.fence
        options = dataclasses.replace(options, job_file=os.path.abspath(path), fence=fence)
        records = _Records(options, jobfile.identity, notify)
        for fd, name, what in (
            (jobfile.fd, path, "its lines run as you"),
            (records.log_fd, options.logfile, "it records what your jobs did"),
            (records.joblog_fd, options.joblog, "it records what your jobs did"),
        ):
            if fd is not None and _writable_by_others(fd):
                notify(f"Warning: {name}: other users can write this file, and {what}")
        if records.logdir_open_to_others():
            notify(f"Warning: {options.logdir}: other users can write this log directory: "
                   "they can delete your jobs' output files")
        try:
            return _run_scheduled(
                jobfile, options, records, retry=retry, console=console, notify=notify, states=states
            )
        finally:
            records.close()
    finally:
        jobfile.close()
        _save_job_lock_counts()


def _run_scheduled(
    jobfile: JobFile,
    options: WorkerOptions,
    records: _Records,
    *,
    retry: bool,
    console: BinaryIO,
    notify: Callable[[str], None],
    states: bytes | None = None,
) -> int:
    """The worker proper; a job file failing under it is one Error: line, exit 1.

    Any OSError that reaches here comes from the job file: console, records
    and job starts handle their own.  The Worker has stopped its jobs by
    then; nothing more is written (closing only releases the locks).
    """
    try:
        scheduler = Scheduler(jobfile, retry=retry, notify=notify, states=states)
    except OSError as exc:
        raise job_file_failed(jobfile.path, exc) from None
    failed = False
    try:
        worker = Worker(scheduler, options, records, console=console, notify=notify)
        scheduler.on_kill = worker.kill_job
        code = worker.run()
        if not worker.jobs_started and scheduler.idle_reason is IdleReason.DONE:
            notify("runmaker: " + scheduler.describe_nothing_to_run())
        return code
    except OSError as exc:  # the Worker has stopped its jobs
        failed = True
        scheduler.abandon()
        raise job_file_failed(jobfile.path, exc) from None
    finally:
        try:
            scheduler.close()
        except OSError as exc:
            if not failed:
                raise job_file_failed(jobfile.path, exc) from None


def _check_open_file_limit(jobs: int, logdir: bool) -> None:
    """Refuse a -j the open-file limit cannot serve (a usage error, exit 2).

    Each running job holds its two output pipes open in the worker (and with
    --logdir its two files); past the limit os.pipe2 fails with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 3
    per_job = 4 if logdir else 2
    room = max((soft - used - _SPARE_FILES) // per_job, 0)
    if jobs > room:
        most = "raise it" if hard == resource.RLIM_INFINITY or hard > soft else "it is the hard limit"
        raise RunmakerError(
            f"-j {jobs}: each job needs {per_job} open files and the open-file limit (ulimit -n) "
            f"is {soft}, enough for -j {room}; lower -j or {most}"
        )


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _TcpCommand:
    """The TCP options of ``main``, checked against the rest."""

    serve: bool
    connect: str | None
    bind: str | None
    port: int
    token: str | None
    timings: str | None  # the hidden --tcp-timings: NAME=SECONDS,... (for tests)

    def check(self, given: set[str]) -> None:
        """Refuse options that do not go with the mode (``given``: the options given)."""
        tcp = self
        if tcp.serve and tcp.connect:
            raise click.UsageError("--serve and --connect exclude each other")
        if (tcp.serve or tcp.connect) and "fence" in given:
            raise click.UsageError("--fence: an option of a worker on a shared job file, "
                                   "not of --serve or --connect")
        if tcp.serve:
            wrong = given & {"jobs", "logfile", "loglines", "one_only", "logdir", "joblog",
                             "timeout", "retries", "quiet", "requeue"}
            if wrong:
                raise click.UsageError(
                    f"{_flags(wrong)}: --serve runs no jobs itself; "
                    "give these to its clients (--connect)"
                )
        elif tcp.connect:
            wrong = given & {"retry", "follow", "bind"}
            if wrong:
                raise click.UsageError(
                    f"{_flags(wrong)}: an option of the server (--serve), not of a client"
                )
        else:
            wrong = given & {"bind", "port", "token"}
            if wrong:
                raise click.UsageError(f"{_flags(wrong)}: only with --serve or --connect")

    def run(self, file: str | None, options: WorkerOptions, *, retry: bool,
            console: BinaryIO, notify: Callable[[str], None]) -> int:
        # Imported here: file mode needs only this module and click.
        import runmaker_tcp

        try:
            timings = runmaker_tcp.TcpTimings.from_text(self.timings or "")
        except (TypeError, ValueError) as exc:
            raise click.UsageError(f"--tcp-timings: {exc}") from None
        if self.connect:
            if file:
                raise click.UsageError("--connect takes no FILE: the server has it")
            return runmaker_tcp.run_tcp_client(
                self.connect, options, token=self.token, port=self.port,
                console=console, notify=notify, timings=timings,
            )
        server = runmaker_tcp.ServerOptions(bind=self.bind, port=self.port, token=self.token,
                                            retry=retry, follow=options.follow)
        return runmaker_tcp.serve_job_file(str(file), server, console=console, notify=notify,
                                           timings=timings)


def _given_options() -> set[str]:
    """The names of the options given on the command line (not left at their default)."""
    ctx = click.get_current_context()
    return {
        name for name in ctx.params
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    }


def _flags(names: set[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in sorted(names))



CLICK_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def echo_to_stderr(message: str) -> None:
    """The commands' way of showing a warning or notice: one line on stderr.

    Never raises: a full disk or a closed pipe behind stderr must not stop a
    worker, and there is nowhere left to say so.  Written straight to the
    descriptor, so nothing refused stays buffered to fail again at exit.
    """
    data = (message + "\n").encode("utf-8", "replace")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness
        click.echo(message, err=True)
        return
    try:
        _write_all(fd, data)
    except OSError:
        pass


class OneLineErrorCommand(click.Command):
    """A click command whose every error is one ``Error:`` line on stderr.

    click prints a usage error with the usage and a hint line before it;
    SPEC promises scripts exactly one line starting ``Error:``, so bad
    options read like every other input error (exit status 2).
    """

    def main(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)  # type: ignore[call-overload]
        except click.ClickException as exc:
            program = kwargs.get("prog_name") or os.path.basename(sys.argv[0]) or self.name
            hint = f" (see '{program} --help')" if isinstance(exc, click.UsageError) else ""
            echo_to_stderr(f"Error: {exc.format_message()}{hint}")
            sys.exit(exc.exit_code)
        except click.Abort:
            echo_to_stderr("Aborted!")
            sys.exit(1)
        except OSError as exc:
            # The last resort for a file system failing under a command
            # (EIO, EROFS): a runtime failure, never a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            echo_to_stderr(f"Error: {where}{exc.strerror or exc}")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.command(cls=OneLineErrorCommand, context_settings=CLICK_CONTEXT)
@click.argument("file", required=False, type=click.Path())
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Jobs run at once by this worker; 0 = the CPUs this process may use.")
@click.option("-r", "--retry", is_flag=True, help="Also run failed (!) and error (e) jobs, once each.")
@click.option("-l", "--logfile", type=click.Path(), metavar="FILE",
              help="Append each finished job's block (last -n lines) to this shared log.")
@click.option("-n", "--loglines", type=click.IntRange(min=0), default=3, show_default=True,
              help="Lines of a job kept in its log block, its status line included; 0 = all.")
@click.option("-1", "--one-only", is_flag=True, help="Claim nothing more once one job succeeded.")
@click.option("--logdir", type=click.Path(), metavar="DIR",
              help="Write every job's output to DIR/LINE.out and DIR/LINE.err.")
@click.option("--joblog", type=click.Path(), metavar="FILE",
              help="Append a GNU parallel job log row per finished job.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop a job after SECONDS (SIGTERM, SIGKILL 5 s later); it ends '!'.")
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run a failing job up to N more times before marking it '!'.")
@click.option("--follow", is_flag=True, help="Do not exit when idle: wait for appended jobs.")
@click.option("--fence", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Kill the running jobs when the job file has not answered for SECONDS, before an "
                   "NFS server drops this host's locks; 0 = never  [default: 30 on NFSv4 mounts, at "
                   "most half the lease time; off elsewhere]")
@click.option("--requeue", is_flag=True,
              help="On SIGINT, SIGTERM or SIGHUP stop the running jobs at once and put each back "
                   "as it was before the claim (. or +), for a later worker: for batch time limits.")
@click.option("-q", "--quiet", is_flag=True, help="Print no executing/status lines, only job output.")
@click.option("--serve", is_flag=True,
              help="Serve FILE's jobs to TCP clients (runmaker --connect) instead of running them.")
@click.option("--connect", metavar="HOST[:PORT]", help="Run the jobs of the runmaker --serve at HOST.")
@click.option("--bind", metavar="ADDR", help="With --serve: listen on ADDR only (default: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=_TCP_PORT, show_default=True,
              help="TCP port of --serve and --connect (--serve --port 0: any free port).")
@click.option("--token", type=click.Path(), metavar="TOKEN|FILE",
              help="The shared secret, or a file holding it [--serve: a new one in ~/.runmaker.token; "
                   "--connect: that file].")
@click.option("--tcp-timings", metavar="NAME=SECONDS,...", hidden=True,
              help="The TCP protocol's deadlines (runmaker_tcp.TcpTimings); for tests.")
@click.version_option(__version__, "--version", prog_name="runmaker")
def main(
    file: str | None, jobs: int, retry: bool, logfile: str | None, loglines: int, one_only: bool,
    logdir: str | None, joblog: str | None, timeout: float | None, retries: int, follow: bool,
    fence: float | None, requeue: bool, quiet: bool, serve: bool, connect: str | None,
    bind: str | None, port: int, token: str | None, tcp_timings: str | None,
) -> None:
    """Run the pending jobs of the job FILE, up to -j at a time, beside any
    number of other workers on this or other hosts sharing FILE.

    \b
    FILE: one job per line, a state byte, a space, a shell command.
    States: . pending  + urgent  r running  d done  ! failed  e error
            - retired;  lines starting # or / are comments.
    Runs the + jobs, then the . jobs (with -r also ! and e), in file order,
    and writes each one's state back in place: . -> r -> d (or !).

    \b
    Examples:
        runmaker -j8 runs.txt                         up to 8 jobs at once
        runmaker -r runs.txt                          run failed and error jobs again
        runmaker -j0 -l runs.log runs.txt             a job per CPU, a shared log
        runmaker --serve runs.txt                     (on the host with the file)
        runmaker --connect lab-ws --token FILE -j8    (on each other host)

    \b
    Exit status: 0 every job it ran ended d (or there was nothing to run);
    1 a job it ran ended ! or e, or a runtime failure; 2 usage or input
    error (the file untouched); 130 after a drain that SIGINT, SIGTERM or
    SIGHUP started.
    """
    tcp = _TcpCommand(serve, connect, bind, port, token, tcp_timings)
    tcp.check(_given_options())
    if not file and not connect:
        raise click.UsageError("missing the job FILE")
    options = WorkerOptions(
        jobs=jobs or usable_cpus(), one_only=one_only, quiet=quiet, follow=follow,
        timeout=timeout, retries=retries, logfile=logfile, loglines=loglines, logdir=logdir,
        joblog=joblog, fence=fence, requeue=requeue,
    )
    console, notify = sys.stdout.buffer, echo_to_stderr
    if serve or connect:
        sys.exit(tcp.run(file, options, retry=retry, console=console, notify=notify))
    sys.exit(run_worker(str(file), options, retry=retry, console=console, notify=notify))


if __name__ == "__main__":
    main()
