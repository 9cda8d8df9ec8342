#!/usr/bin/env python3
"""runmaker: run the shell commands of a plain text job file, on one host or many.

A job file holds one shell command per line behind a one-byte state
(``.`` pending, ``+`` urgent, ``r`` running, ``d`` done, ``!`` failed,
``e`` error, ``-`` retired).  Workers on any number of hosts that share the
file claim lines with POSIX ``fcntl`` record locks on the file itself, run up
to ``-j`` commands at once and write each state byte back in place.  No
server is needed; ``--serve``/``--connect`` offer a TCP mode for hosts
without a shared file system.

This module owns everything the three commands share: the job-file format,
the locks, the scheduler, the worker, the records of finished jobs and the
TCP mode.  ``runset`` and ``runwait`` are thin commands over its public
functions.  The contract (file format, locks, output, exit codes) is SPEC.md.
"""

from __future__ import annotations

import array
import base64
import bisect
import collections
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import operator
import os
import re
import secrets
import select
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol, Sequence

import click

__version__ = "1.0.0"

__all__ = [
    "APPEND_BYTE",
    "CLICK_CONTEXT",
    "Claim",
    "JobCounts",
    "JobFile",
    "JobFileFailed",
    "JobSelection",
    "JobSource",
    "JobWatcher",
    "OneLineErrorCommand",
    "RunmakerError",
    "SLOT_BASE",
    "STATE_NAMES",
    "Scheduler",
    "ServerOptions",
    "Worker",
    "WorkerOptions",
    "append_jobs",
    "append_to_shared_file",
    "check_file_locking",
    "default_fence",
    "echo_to_stderr",
    "job_file_failed",
    "list_jobs",
    "main",
    "progress_cells",
    "progress_line",
    "run_tcp_client",
    "run_worker",
    "serve_job_file",
    "set_job_states",
    "short_hostname",
    "wait_for_jobs",
]

# Lock offsets (SPEC section 3).  Both lie far beyond any real data, so they
# never collide with a state byte.
SLOT_BASE = 2**40
APPEND_BYTE = 2**40 - 1

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
_PENDING, _HIGH, _RUNNING, _DONE, _FAILED, _ERROR, _RETIRED = b".+rd!e-"

# A job line's first byte may be anything but these: '#' and '/' start
# comments, white space starts a blank or mistaken line.
_NOT_STATE = b"#/ \t\r\n\x0b\x0c"
_SEPARATORS = b" \t"
_TRAILING_SPACE = b" \t\r\x0b\x0c"
_FINISHED = re.compile(rb"[d\-]*")
_NOT_DONE_YET = re.compile(rb"[^d\-.+r]")  # neither finished, nor pending, nor running
_NORMAL_QUEUE = re.compile(rb"\.")
_NORMAL_QUEUE_RETRY = re.compile(rb"[.!e]")

_MAX_WARNINGS = 20  # mistaken lines named one by one, then one summary line
_MAX_LINE = 1 << 20  # a longer output line is cut into pieces of this size
_READ_CHUNK = 1 << 16
_INDEX_CHUNK = 1 << 20  # bytes of the job file split into lines at once
_REFRESH_GAP = 0.1  # seconds between looks for appended lines while busy
_POLL = 0.5  # seconds between looks while waiting for a cap, barrier or work
_KILL_GRACE = 5.0  # seconds from SIGTERM to SIGKILL
_EXIT_SIGNALLED = 130

_JOBLOG_HEADER = b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class JobFileFailed(click.ClickException):
    """The job file failed under a running worker or server: one ``Error:`` line, exit status 1."""

    exit_code = 1


def job_file_failed(path: str, exc: OSError) -> JobFileFailed:
    """The error to end with when an operation on the job file raised ``exc``.

    The caller has killed its running jobs and writes nothing more to the
    file.  EIO from an NFS job file means the server dropped this host's
    locks (a lease that ran out while the host was cut off): other hosts
    may already see its jobs lost.
    """
    if exc.errno == errno.EIO:
        return JobFileFailed(
            f"{path}: input/output error (EIO) on the job file: its locks are gone (an NFS server "
            "drops them when this host was silent past its lease); running jobs killed, "
            "nothing more written"
        )
    return JobFileFailed(f"{path}: {exc.strerror or exc}; running jobs killed")


class RunmakerError(click.ClickException):
    """A usage or input error: the user sees one ``Error:`` line, exit status 2.

    The message names the file (and line) the user has to look at.
    """

    exit_code = 2


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


def append_to_shared_file(fd: int, record: bytes, *, header: bytes = b"") -> None:
    """Append ``record`` whole at the end of a shared file.

    The append recipe of SPEC section 3: an exclusive lock on the append byte
    of that very file, the size from fstat under it, a missing final newline
    mended, one pwrite of the whole record, fsync, unlock.  O_APPEND is not
    used: on NFS it is emulated by the client with a stale size and two
    hosts' appends overwrite each other.  ``header`` is written first when
    the file is empty (the job log's column names).
    """
    _lock_byte(fd, APPEND_BYTE, exclusive=True, wait=True)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            record = header + record
        elif os.pread(fd, 1, size - 1) != b"\n":
            record = b"\n" + record  # mend a last line left without newline
        _pwrite_all(fd, record, size)
        os.fsync(fd)  # before unlock: another host reads only after locking
    finally:
        _unlock_byte(fd, APPEND_BYTE)


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


def _shown(command: bytes) -> str:
    """A command as the user reads it: undecodable bytes replaced."""
    return command.decode("utf-8", "replace")


def _shown_bytes(command: bytes) -> bytes:
    """The same, as UTF-8 bytes for the console and the logs."""
    return _shown(command).encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def short_hostname() -> str:
    """This host's name as runmaker4 prints it: up to the first dot."""
    return socket.gethostname().split(".")[0] or "localhost"


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


class JobFile:
    """One open job file: its single descriptor and the index of its lines.

    The index keeps, per job, the offset of its state byte, the end of its
    command and its line number, in compact arrays (24 bytes a job; with
    the cached getter of all state bytes, about 60).  A worker on a file of
    a million jobs measured 85 MB above an idle one, the file's own bytes
    included while it rereads them.  Lines appended later are indexed
    incrementally; finding work never rereads the whole file unless asked
    to (``read(whole=True)``).

    A process that holds job locks keeps exactly one descriptor of the file:
    closing any descriptor of it would drop every POSIX lock the process
    holds.  So everything in this module goes through one JobFile.
    """

    def __init__(
        self, path: str, *, writable: bool = True, warn: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.fd = _open_job_file(path, writable)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)
        self.offsets = array.array("q")  # offset of each job's state byte
        self.ends = array.array("q")  # offset just past each job's command
        self.lines = array.array("q")  # 1-based line number of each job
        self.barriers: list[int] = []  # index of the first job below each barrier
        self.barrier_lines: list[int] = []
        self.max_running: int | None = None
        # The highest cap the file ever set: no worker holds a slot above it.
        self.max_running_peak = 0
        self.size = 0  # bytes indexed
        self.line_count = 0
        self.shrunk = False  # the file got shorter: someone broke the rules
        # An unterminated last line is indexed, but may still grow; this
        # remembers what to undo to index it again.
        self._tail: tuple[int, int, int, int, int | None] | None = None
        self._warn = warn
        self._warned: set[int] = set()
        self._getter: tuple[int, Callable[[bytes], object]] | None = None

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            # NFS reports write-back errors again at close; every state
            # byte that mattered was fsynced (and checked) before its unlock.
            pass

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
        if size < self.size:
            self.shrunk = True
            return data, start, len(self.offsets)
        if size > self.size or self._tail:
            # Index only what is new, even when the whole file was read:
            # lines already indexed must not be indexed a second time.
            new = data if start == resume else data[resume - start :]
            return data, start, self._index_from(new, resume)
        return data, start, len(self.offsets)

    def states_of(self, data: bytes, base: int = 0, first: int = 0) -> bytes:
        """The state bytes of jobs ``first..`` found in ``data`` (read at ``base``)."""
        count = len(self.offsets) - first
        if count <= 0:
            return b""
        if base == 0 and first == 0:
            # One C call for every state byte: cached per job count.
            if self._getter is None or self._getter[0] != count:
                self._getter = (count, operator.itemgetter(*self.offsets))
            got = self._getter[1](data)
            return bytes(got) if count > 1 else bytes((got,))  # type: ignore[arg-type]
        return bytes(data[self.offsets[i] - base] for i in range(first, len(self.offsets)))

    def command(self, index: int) -> bytes:
        """The command of job ``index``, read from the file (it never changes)."""
        start = self.offsets[index] + 2
        return os.pread(self.fd, self.ends[index] - start, start)

    def index_of_line(self, line: int) -> int | None:
        """The job index of a line number, or None if that line is no job."""
        i = bisect.bisect_left(self.lines, line)
        return i if i < len(self.lines) and self.lines[i] == line else None

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

    def _index_from(self, data: bytes, base: int) -> int:
        if self._tail is not None:
            _, jobs, barriers, lines, max_running = self._tail
            del self.offsets[jobs:], self.ends[jobs:], self.lines[jobs:]
            del self.barriers[barriers:], self.barrier_lines[barriers:]
            self.line_count, self.max_running = lines, max_running
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
        if last:
            # Indexed like any line, and undone to be indexed again if it grows.
            self._tail = (pos, len(self.offsets), len(self.barriers), self.line_count, self.max_running)
            self._index_lines(last + b"\n", pos)
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
        for raw in pieces:
            line += 1
            size = len(raw)
            if size >= 3 and raw[1] in separators and raw[0] not in not_state:
                end = len(raw.rstrip()) if raw[-1] in trailing else size
                if end > 2:
                    add_offset(pos)
                    add_end(pos + end)
                    add_line(line)
                    pos += size + 1
                    continue
            self._index_other(raw, line)
            pos += size + 1
        self.line_count = line
        return pos

    def _index_other(self, raw: bytes, line: int) -> None:
        if not raw or raw.isspace():
            return
        if raw[0] in b"#/":
            if raw.startswith(b"#runmaker") and (len(raw) == 9 or raw[9] in b" \t\r"):
                self._directive(raw[9:].split(), line)
            return
        self._warn_line(line, "not a job line (a state byte, a space or tab, then the command)")

    def _directive(self, words: list[bytes], line: int) -> None:
        if words[:1] == [b"barrier"] and len(words) == 1:
            self.barriers.append(len(self.offsets))
            self.barrier_lines.append(line)
        elif words[:1] == [b"max-running"] and len(words) == 2:
            if words[1] == b"none":
                self.max_running = None
            elif words[1].isdigit():
                self.max_running = int(words[1])
                self.max_running_peak = max(self.max_running_peak, self.max_running)
            else:
                self._warn_line(line, "max-running takes a whole number or 'none'")
        else:
            self._warn_line(line, "unknown #runmaker directive (known: max-running N|none, barrier)")

    def _warn_line(self, line: int, why: str) -> None:
        if self._warn is None or line in self._warned:
            return
        self._warned.add(line)
        if len(self._warned) <= _MAX_WARNINGS:
            self._warn(f"Warning: {self.path}:{line}: {why}; ignored")
        elif len(self._warned) == _MAX_WARNINGS + 1:
            self._warn(f"Warning: {self.path}: more lines are ignored; not naming them all")


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


@dataclass(eq=False)
class Claim:
    """A job this process holds the lock of (and, under a cap, a slot lock)."""

    index: int
    line: int
    command: bytes
    slot: int | None = None


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

    def __init__(self, jobfile: JobFile, *, retry: bool = False) -> None:
        self.jobfile = jobfile
        self.retry = retry
        self.states = bytearray()
        self.held: dict[int, Claim] = {}
        self.held_slots: set[int] = set()
        self.attempted: set[int] = set()
        # Why the last claim_jobs call claimed fewer jobs than asked:
        # None, "waiting" (cap or barrier will clear), "stale" (look again
        # later), "done" (nothing left) or "blocked" (a barrier above failed).
        self.idle_reason: str | None = None
        self._high: collections.deque[int] = collections.deque()
        self._normal: collections.deque[int] = collections.deque()
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
        self._blocked_by: str | None = None
        self._contended = False  # a queued job's lock was held elsewhere
        self._abandoned = False
        self.rescan()

    # -- public ------------------------------------------------------------

    def rescan(self) -> None:
        """Reread every state byte; mark lost jobs ``e``; rebuild the queues."""
        started = time.monotonic()
        data, _, _ = self.jobfile.read(whole=True)
        if self.jobfile.shrunk:
            return  # our offsets point past its end now: claim nothing (see _why_idle)
        states = bytearray(self.jobfile.states_of(data))
        for index in self.held:
            states[index] = _RUNNING
        self.states = states
        self._mark_lost_jobs()
        self._rebuild_queues(0)
        self._done_prefix = 0
        self._advance_done_prefix()
        now = time.monotonic()
        self._last_rescan = self._last_refresh = now
        self._rescan_cost = now - started
        self._acted_since_rescan = False

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        """Claim up to ``count`` jobs: lock, reread, write ``r`` (no fsync yet).

        Appended lines are read every 0.1 s; the whole file (for states
        changed in place, such as ``runset --set``) is reread when half a
        second has passed (more for a huge file: at most ~5% of the time).
        ``idle`` says the caller runs nothing: then a rescan after our own
        last claim or finish is worth its cost before saying there is nothing
        left.  ``count`` 0 just keeps the directives current.  Sets
        ``idle_reason``.
        """
        now = time.monotonic()
        fresh = False
        if count and now - self._last_rescan >= self._rescan_gap():
            self.rescan()
            fresh = True
        elif now - self._last_refresh >= _REFRESH_GAP:
            self._refresh()
        if self.jobfile.max_running is not None:
            self._adopt_slots()
        claims = self._claim_from_queues(count)
        if len(claims) < count and not fresh and idle and self._acted_since_rescan:
            self.rescan()
            fresh = True
            claims += self._claim_from_queues(count - len(claims))
        elif not self._acted_since_rescan:
            fresh = True  # the last rescan is recent, and nothing we did since changes it
        self.idle_reason = self._why_idle(fresh) if len(claims) < count else None
        return claims

    def finish_job(self, claim: Claim, state: str) -> None:
        """Write a held job's final state byte; ``commit`` then releases it."""
        offset = self.jobfile.offsets[claim.index]
        # A file truncated under us (SPEC: it never is) has no state byte
        # here any more; a write past its end would grow it with NULs.
        if os.pread(self.jobfile.fd, 1, offset):
            os.pwrite(self.jobfile.fd, state.encode(), offset)
        self._dirty = True
        self._acted_since_rescan = True
        self.states[claim.index] = ord(state)
        del self.held[claim.index]
        self._releasing.add(claim.index)
        self._release_later.append(claim)

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
            _unlock_byte(fd, offset)
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

    def nothing_left(self) -> str | None:
        """Without claiming: "done" if no job is left to run, "blocked" if
        only jobs below a barrier held shut by a failure are, else None.

        The end rule of a worker, for a TCP server with no client asking.
        Rereads the whole file first.
        """
        self.rescan()
        if self.jobfile.shrunk:
            return None  # the caller's replaced() check says so
        candidates = [
            index
            for queue in (self._high, self._normal)
            for index in queue
            if index not in self._releasing and self._runnable(self.states[index], index)
        ]
        if not candidates:
            return "done"
        if any(not self._below_open_barrier(index) for index in candidates):
            return None
        return "blocked" if self._barrier_held_by_failure() else None

    def describe_block(self) -> str:
        """One line on why pending jobs will not start (for ``blocked``)."""
        waiting = len(self.states) - self._done_prefix
        first = bisect.bisect_right(self.jobfile.barriers, self._done_prefix)
        if first < len(self.jobfile.barriers):
            return (
                f"{self.jobfile.path}: jobs below the barrier at line "
                f"{self.jobfile.barrier_lines[first]} wait for failed jobs above it"
            )
        return f"{self.jobfile.path}: {waiting} jobs are not done"

    # -- queues ------------------------------------------------------------

    def _refresh(self) -> None:
        before = len(self.states)
        data, base, first_new = self.jobfile.read()
        self._last_refresh = time.monotonic()
        if first_new >= len(self.jobfile.offsets) and first_new >= before:
            return
        del self.states[first_new:]
        self.states += self.jobfile.states_of(data, base, first_new)
        self._rebuild_queues(first_new)

    def _rebuild_queues(self, first: int) -> None:
        if first == 0:
            self._high.clear()
            self._normal.clear()
        states = self.states
        pos = states.find(b"+", first)
        while pos >= 0:
            self._high.append(pos)
            pos = states.find(b"+", pos + 1)
        pattern = _NORMAL_QUEUE_RETRY if self.retry else _NORMAL_QUEUE
        self._normal.extend(m.start() for m in pattern.finditer(states, first))

    def _runnable(self, state: int, index: int) -> bool:
        if state == _PENDING or state == _HIGH:
            return True
        return self.retry and state in (_FAILED, _ERROR) and index not in self.attempted

    def _rescan_gap(self) -> float:
        # A rescan reads the whole file: keep its share of the time small.
        return max(_POLL, 20 * self._rescan_cost)

    def _claim_from_queues(self, count: int) -> list[Claim]:
        claims: list[Claim] = []
        self._blocked_by = None
        self._contended = False
        if self.jobfile.shrunk:
            return claims  # a truncated file: the indexed lines are gone
        for queue in (self._high, self._normal):
            while queue and len(claims) < count:
                index = queue[0]
                if index in self._releasing or not self._runnable(self.states[index], index):
                    queue.popleft()
                    continue
                if self._below_open_barrier(index):
                    self._blocked_by = "barrier"
                    break  # every later job in this queue is below it too
                claim = self._claim(index)
                if claim is False:
                    self._blocked_by = "cap"
                    return claims
                queue.popleft()
                if claim is not None:
                    claims.append(claim)
        return claims

    def _claim(self, index: int) -> Claim | None | bool:
        """Claim one job; None if it is not to be had, False if no slot is free."""
        slot = None
        if self.jobfile.max_running is not None:
            slot = self._take_slot()
            if slot is None:
                return False
        fd, offset = self.jobfile.fd, self.jobfile.offsets[index]
        # Non-blocking: a held byte is a job someone else is starting or
        # running; waiting for it could take hours.
        if not _lock_byte(fd, offset, exclusive=True, wait=False):
            self._release_slot(slot)
            # Running elsewhere, or only looked at (runset --set, a probe):
            # not a reason to say nothing is left until a rescan tells.
            self._contended = True
            return None
        # Reread under the lock: the cached byte may be old, and another
        # worker may have run the job to its end since we looked.
        current = os.pread(fd, 1, offset)
        state = current[0] if current else _DONE
        if not self._runnable(state, index):
            _unlock_byte(fd, offset)
            self._release_slot(slot)
            self.states[index] = state
            return None
        os.pwrite(fd, b"r", offset)
        self._dirty = True
        self._acted_since_rescan = True
        self.states[index] = _RUNNING
        claim = Claim(index, self.jobfile.lines[index], self.jobfile.command(index), slot)
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

    def _mark_lost_jobs(self) -> None:
        """Mark ``e`` every ``r`` job whose byte no process holds.

        The byte is reread under the lock we won: its worker may just have
        written the final state and let go.
        """
        fd, offsets, states = self.jobfile.fd, self.jobfile.offsets, self.states
        index = states.find(b"r")
        while index >= 0:
            if (
                index not in self.held
                and index not in self._releasing
                and _lock_byte(fd, offsets[index], exclusive=True, wait=False)
            ):
                current = os.pread(fd, 1, offsets[index])
                if current == b"r":
                    os.pwrite(fd, b"e", offsets[index])
                    os.fsync(fd)  # before unlock, as for every state change
                    states[index] = _ERROR
                elif current:
                    states[index] = current[0]
                _unlock_byte(fd, offsets[index])
            index = states.find(b"r", index + 1)

    def _advance_done_prefix(self) -> None:
        match = _FINISHED.match(self.states, self._done_prefix)
        self._done_prefix = match.end() if match else self._done_prefix

    def _below_open_barrier(self, index: int) -> bool:
        barriers = self.jobfile.barriers
        if not barriers or index < barriers[0]:
            return False
        return self._done_prefix < barriers[bisect.bisect_right(barriers, index) - 1]

    def _why_idle(self, fresh: bool) -> str:
        if self.jobfile.shrunk:
            return "stale"  # not "done": the worker must see replaced() and say so
        if self._blocked_by == "cap":
            return "waiting"
        if self._blocked_by == "barrier":
            return "blocked" if fresh and self._barrier_held_by_failure() else "waiting"
        return "done" if fresh and not self._contended else "stale"

    def _barrier_held_by_failure(self) -> bool:
        """True when a failure above the first closed barrier holds it shut.

        A ``!`` or ``e`` job this worker will not retry, or an unknown state,
        becomes ``d`` or ``-`` only when the user acts: the jobs below wait
        for the user, not for jobs still running.
        """
        end = self._first_blocking_barrier()
        for match in _NOT_DONE_YET.finditer(self.states, self._done_prefix, end):
            if not self._runnable(self.states[match.start()], match.start()):
                return True
        return False

    def _first_blocking_barrier(self) -> int:
        barriers = self.jobfile.barriers
        at = bisect.bisect_right(barriers, self._done_prefix)
        return barriers[at] if at < len(barriers) else len(self.states)


# --------------------------------------------------------------------------
# Records of finished jobs: shared log, per-job files, GNU parallel job log
# --------------------------------------------------------------------------


def _open_record_file(path: str, what: str, job_identity: tuple[int, int] | None) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except IsADirectoryError:
        raise RunmakerError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot open the {what}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RunmakerError(f"{path}: not a regular file, cannot be the {what}")
    if (st.st_dev, st.st_ino) == job_identity:
        # Closing this second descriptor would drop every job lock we hold.
        os.close(fd)
        raise RunmakerError(f"{path}: is the job file itself, cannot be the {what}")
    return fd


@dataclass
class _Outcome:
    """How one attempt of a job ended."""

    state: str  # "d", "!" or "e"
    status: str  # "exit 0", "signal SIGKILL", "timeout", "error ..."
    exitval: int
    signal: int


class _Records:
    """Where finished jobs are written down, opened and checked before any job runs."""

    def __init__(self, options: WorkerOptions, job_identity: tuple[int, int] | None) -> None:
        self.loglines = options.loglines
        self.job_identity = job_identity
        self.cwd = os.getcwd()
        self.log_fd = (
            _open_record_file(options.logfile, "log file", job_identity) if options.logfile else None
        )
        self.joblog_fd = (
            _open_record_file(options.joblog, "job log", job_identity) if options.joblog else None
        )
        self.logdir = options.logdir
        if self.logdir is not None:
            try:
                os.makedirs(self.logdir, exist_ok=True)
            except OSError as exc:
                raise RunmakerError(
                    f"{self.logdir}: cannot create the log directory: {exc.strerror}"
                ) from None
            if not os.path.isdir(self.logdir):
                raise RunmakerError(f"{self.logdir}: not a directory, cannot be the log directory")
            if not os.access(self.logdir, os.W_OK | os.X_OK):
                raise RunmakerError(f"{self.logdir}: log directory is not writable")

    def open_job_files(self, line: int, first_attempt: bool) -> tuple[int, int] | None:
        """Open LINE.out and LINE.err (fresh for a new claim, continued on retry)."""
        if self.logdir is None:
            return None
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if first_attempt else os.O_APPEND)
        base = os.path.join(self.logdir, str(line))
        fds: list[int] = []
        try:
            for name in (base + ".out", base + ".err"):
                try:
                    st = os.stat(name)
                except FileNotFoundError:
                    pass
                else:
                    if (st.st_dev, st.st_ino) == self.job_identity:
                        # O_TRUNC would empty it, and closing it would drop our locks.
                        raise OSError(errno.EEXIST, f"{name} is the job file itself")
                fds.append(os.open(name, flags, 0o666))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds[0], fds[1]

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
    ) -> list[str]:
        """Append the job's log block and job-log row; return what could not be written.

        A full disk or a vanished server must not cost the job its state
        byte (the worker would die holding it, and the job would look
        lost), so write errors are handed back as messages instead.
        """
        problems = []
        if self.log_fd is not None:
            parts = [b".-> ", command, b" (in ", os.fsencode(self.cwd), b")\n"]
            lines = list(tail or ())
            lines.append(b"+ " + status_line)
            if self.loglines:
                lines = lines[-self.loglines :]
            parts.extend(part + b"\n" for part in lines)
            try:
                append_to_shared_file(self.log_fd, b"".join(parts))
            except OSError as exc:
                problems.append(f"cannot append to the log file: {exc.strerror}")
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
            try:
                append_to_shared_file(self.joblog_fd, row.encode(), header=_JOBLOG_HEADER)
            except OSError as exc:
                problems.append(f"cannot append to the job log: {exc.strerror}")
        return problems

    def close(self) -> None:
        for fd in (self.log_fd, self.joblog_fd):
            if fd is not None:
                os.close(fd)


# --------------------------------------------------------------------------
# The worker: runs claimed jobs, up to -j at once, in one event loop
# --------------------------------------------------------------------------


@dataclass
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
    host: str = field(default_factory=short_hostname)
    job_file: str = ""  # RUNMAKER_FILE: absolute path of the job file
    fence: float | None = None  # seconds; None: by the job file's mount (default_fence)


@dataclass(eq=False)
class _Running:
    """One attempt of a claimed job, running in its own process group."""

    claim: Claim
    attempt: int
    local_slot: int
    pid: int
    started: float
    started_mono: float
    tags: tuple[bytes, bytes]  # console prefixes for stdout and stderr
    log_tags: tuple[bytes, bytes]
    streams: dict[int, int]  # pipe fd -> 0 (stdout) or 1 (stderr)
    partial: list[bytes]
    tail: collections.deque[bytes] | None
    files: tuple[int, int] | None  # --logdir LINE.out, LINE.err
    deadline: float | None
    kill_at: float | None = None
    timed_out: bool = False
    interrupted: bool = False


class JobSource(Protocol):
    """Where a Worker's jobs come from: a Scheduler on the job file, or a TCP server."""

    idle_reason: str | None

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]: ...

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
        self.idle_reason = source.idle_reason

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        with self._fence.operation():
            claims = self._source.claim_jobs(count, idle=idle)
        self.idle_reason = self._source.idle_reason
        return claims

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
        self._console = console
        self._console_parts: list[bytes] = []
        self._console_broken = False
        self._running: dict[int, _Running] = {}  # pid -> attempt
        self._free_slots = list(range(options.jobs))
        self._poller = select.poll()
        self._watched: dict[int, tuple[_Running, int]] = {}  # pipe fd -> (job, stream)
        self._signals: list[int] = []
        self._signals_seen = 0
        self._draining = False
        self._signalled = False
        self._replaced = False
        self._succeeded = False
        self._next_look = 0.0
        self._failures = 0
        host = options.host
        self._host = host.encode()
        env = dict(os.environ)
        env["RUNMAKER_FILE"] = options.job_file
        env["RUNMAKER_HOST"] = host
        self._env = env
        self._fence = _Fence(options.fence or 0.0, self._fence_jobs)
        if options.fence:
            self.source = _FencedSource(source, self._fence)

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Run jobs until nothing is left (or a signal drains); return the exit status."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(wake_r, select.POLLIN)
        if self.link is not None:
            self._poller.register(self.link.fileno(), select.POLLIN)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
        try:
            try:
                self._loop(wake_r)
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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self._flush_console()
        if self._signalled:
            return _EXIT_SIGNALLED
        return 1 if self._failures or self._replaced else 0

    def _loop(self, wake_r: int) -> None:
        while True:
            if self._fence.answered():
                self.notify(f"runmaker: {self.options.job_file}: the job file answers again; claiming jobs again")
            self._handle_signals()
            self._check_link()
            self._reap()
            now = time.monotonic()
            self._enforce_deadlines(now)
            claims: list[Claim] = []
            free = len(self._free_slots)
            if free and self._may_claim():
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
            elif self._may_claim() and now >= self._next_look:
                # Busy with -j jobs: still read new lines now and then, so a
                # cap appended meanwhile counts our running jobs at once.
                self.source.claim_jobs(0)
                self._next_look = now + _POLL
            self.source.commit()
            for claim in claims:
                self._start(claim, 1, self._free_slots.pop(0))
            self._flush_console()
            if not self._running and not claims:
                if not self._may_claim():
                    return
                if self.source.idle_reason in ("done", "blocked") and not self.options.follow:
                    if self.source.idle_reason == "blocked":
                        self.notify("runmaker: " + self.source.describe_block())
                    return
            timeout = self._next_timeout(now, waiting=self._may_claim())
            for fd, _ in self._poller.poll(None if timeout is None else timeout * 1000):
                if fd == wake_r:
                    _drain_wakeup(wake_r)
                elif fd in self._watched:  # not closed earlier in this round
                    job, stream = self._watched[fd]
                    self._read_output(job, fd, stream)
            self._flush_console()

    def _may_claim(self) -> bool:
        return not (
            self._draining or self._replaced or (self.options.one_only and self._succeeded)
        )

    def _next_timeout(self, now: float, *, waiting: bool) -> float | None:
        moments = [job.kill_at or job.deadline for job in self._running.values()]
        times = [m - now for m in moments if m is not None]
        if waiting:
            times.append(_POLL)
        if self.link is not None and not self._link_broken:
            wait = self.link.timeout(now)
            if wait is not None:
                times.append(wait)
        return max(0.0, min(times)) if times else None

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
        while self._signals:
            signum = self._signals.pop(0)
            self._signals_seen += 1
            name = signal.Signals(signum).name
            self._signalled = True
            if self._signals_seen == 1:
                self._draining = True
                self.notify(
                    f"runmaker: {name}: draining, claiming no more jobs; "
                    f"{len(self._running)} still running (a second signal kills them)"
                )
            elif self._signals_seen == 2:
                self.notify(f"runmaker: {name}: killing {len(self._running)} running jobs")
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
            _signal_group(job.pid, signal.SIGKILL)
        self.notify(
            f"runmaker: {self.options.job_file}: no answer from the job file for {stalled:.0f} s "
            f"(--fence {self.options.fence:g}); killed {len(jobs)} running jobs, whose locks the "
            f"server may drop; claiming nothing until it answers"
        )

    def _stop_jobs_now(self) -> None:
        """SIGKILL every running job's process group and reap it."""
        for job in self._running.values():
            _signal_group(job.pid, signal.SIGKILL)
        for pid in list(self._running):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._running.clear()

    def _kill_all(self) -> None:
        """SIGTERM to every job's process group, SIGKILL later; they end 'e'."""
        deadline = time.monotonic() + _KILL_GRACE
        for job in self._running.values():
            job.interrupted = True
            job.kill_at = deadline
            _signal_group(job.pid, signal.SIGTERM)

    # -- starting and ending jobs -------------------------------------------

    def _start(self, claim: Claim, attempt: int, local_slot: int) -> None:
        command = claim.command
        quoted = _shown_bytes(command)
        if not self.options.quiet:
            self._console_parts.append(b"executing `" + quoted + b"'\n")
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        env = dict(self._env)
        env["RUNMAKER_LINE"] = str(claim.line)
        env["RUNMAKER_SLOT"] = str(local_slot)
        files = None
        try:
            with self._fence.operation():  # records on the job file's server hang with it
                files = self.records.open_job_files(claim.line, attempt == 1)
            if self._fence.tripped:  # it fired meanwhile: this claim may be gone as well
                raise OSError(errno.ETIMEDOUT, "the job file did not answer (--fence)")
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
        except (OSError, ValueError) as exc:
            for fd in (out_r, err_r) + (files or ()):
                os.close(fd)
            reason = getattr(exc, "strerror", None) or str(exc)
            self._could_not_start(claim, attempt, local_slot, reason)
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        now = time.monotonic()
        pid_tag = b"%s,%d" % (self._host, pid)
        job = _Running(
            claim=claim,
            attempt=attempt,
            local_slot=local_slot,
            pid=pid,
            started=time.time(),
            started_mono=now,
            tags=(b"stdout (" + pid_tag + b"): ", b"stderr (" + pid_tag + b"): "),
            log_tags=(b": stdout (" + pid_tag + b"): ", b"! stderr (" + pid_tag + b"): "),
            streams={out_r: 0, err_r: 1},
            partial=[b"", b""],
            tail=collections.deque(maxlen=self.options.loglines or None)
            if self.records.log_fd is not None
            else None,
            files=files,
            deadline=now + self.options.timeout if self.options.timeout else None,
        )
        self._running[pid] = job
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            self._poller.register(fd, select.POLLIN)
            self._watched[fd] = (job, job.streams[fd])
        if not self.options.quiet:
            self._console_parts.append(b"status (" + pid_tag + b'): forked "' + quoted + b'"\n')

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
        while self._running:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self._running.pop(pid, None)
            if job is not None:
                self._ended(job, wait_status)

    def _enforce_deadlines(self, now: float) -> None:
        for job in self._running.values():
            if job.kill_at is not None and now >= job.kill_at:
                _signal_group(job.pid, signal.SIGKILL)
                job.kill_at = None
                job.deadline = None
            elif job.deadline is not None and now >= job.deadline and not job.timed_out:
                job.timed_out = True
                job.deadline = None
                job.kill_at = now + _KILL_GRACE
                _signal_group(job.pid, signal.SIGTERM)

    def _ended(self, job: _Running, wait_status: int) -> None:
        # A job's output ends with its shell: what the pipes hold now is
        # read, then they are closed, so a background process that writes
        # later gets EPIPE instead of writing into records already closed.
        for fd, stream in list(job.streams.items()):
            self._read_output(job, fd, stream, until_empty=True)
            if fd in job.streams:
                self._close_stream(job, fd, stream)
        if job.timed_out or job.interrupted:
            # Background grandchildren of a stopped job go with it.
            _signal_group(job.pid, signal.SIGKILL)
        if job.files:
            for fd in job.files:
                os.close(fd)
            job.files = None
        code = os.waitstatus_to_exitcode(wait_status)
        signum = -code if code < 0 else 0
        if job.timed_out and not job.interrupted:
            outcome = _Outcome("!", "timeout", -1, signum)
        elif code < 0:
            outcome = _Outcome("!", f"signal {_signal_name(signum)}", 0, signum)
        else:
            outcome = _Outcome("d" if code == 0 else "!", f"exit {code}", code, 0)
        if job.interrupted:
            outcome.state = "e"
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
        if outcome.state == "!" and job.attempt <= self.options.retries and not self._draining:
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
            problems = self.records.job_ended(
                claim.command, tail, status, claim.line, self.options.host, started, runtime, outcome
            )
        for problem in problems:
            self.notify(f"runmaker: line {claim.line}: {problem}")

    def _finish(self, claim: Claim, state: str, local_slot: int) -> None:
        self.source.finish_job(claim, state)
        bisect.insort(self._free_slots, local_slot)
        if state == "d":
            self._succeeded = True
        else:
            self._failures += 1

    # -- output ------------------------------------------------------------

    def _read_output(self, job: _Running, fd: int, stream: int, *, until_empty: bool = False) -> None:
        while True:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return  # a background grandchild still holds the pipe open
            if not data:
                self._close_stream(job, fd, stream)
                return
            self._take_output(job, stream, data)
            if not until_empty:
                return

    def _close_stream(self, job: _Running, fd: int, stream: int) -> None:
        self._poller.unregister(fd)
        del self._watched[fd]
        os.close(fd)
        del job.streams[fd]
        if job.partial[stream]:
            rest, job.partial[stream] = job.partial[stream], b""
            self._emit(job, stream, [rest])

    def _take_output(self, job: _Running, stream: int, data: bytes) -> None:
        if job.files is not None:
            try:
                _write_all(job.files[stream], data)
            except OSError as exc:
                # Keep the job running and its other records going.
                self.notify(
                    f"runmaker: line {job.claim.line}: cannot write to --logdir, "
                    f"its files are left incomplete: {exc.strerror}"
                )
                for fd in job.files:
                    os.close(fd)
                job.files = None
        if job.partial[stream]:
            data = job.partial[stream] + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) >= _MAX_LINE:
            lines.append(rest)  # a line without end: cut it rather than hoard it
            rest = b""
        job.partial[stream] = rest
        if lines:
            self._emit(job, stream, lines)

    def _emit(self, job: _Running, stream: int, lines: list[bytes]) -> None:
        if job.tail is not None:
            keep = job.tail.maxlen
            tag = job.log_tags[stream]
            job.tail.extend(tag + line for line in (lines[-keep:] if keep else lines))
            return
        tag = job.tags[stream]
        self._console_parts.append(tag + (b"\n" + tag).join(lines) + b"\n")

    def _flush_console(self) -> None:
        if not self._console_parts:
            return
        data = b"".join(self._console_parts)
        self._console_parts.clear()
        if self._console_broken:
            return
        try:
            # Under PYTHONUNBUFFERED sys.stdout.buffer is a raw FileIO: a
            # write into a full pipe that SIGCHLD interrupts writes only part.
            view = memoryview(data)
            while view:
                view = view[self._console.write(view) :]
            self._console.flush()
        except BrokenPipeError:
            self._console_broken = True  # nobody reads: the jobs go on


def _wake_only(signum: int, frame: object) -> None:
    """SIGCHLD handler: its only job is the byte on the wakeup pipe."""


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
_SUMMARY_ORDER = b"+.rd!e-"
_UNKNOWN_STATE = re.compile(rb"[^.+rd!e\-]")
_LIST_CHUNK = 1 << 16  # jobs formatted per piece of runset's output
_SET_BATCH = 1024  # job locks --set holds at once, so one fsync covers many bytes
_SET_TRIES = 5  # a lock held through all of them (~0.1 s) is a running job's
_SET_RETRY_PAUSE = 0.025
_PROGRESS_CELLS = 16


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
    selection, before anything is yielded.
    """
    wanted, pattern = _compile_selection(path, selection)
    jobfile = JobFile(path, writable=False, warn=warn)
    try:
        check_file_locking(path, fd=jobfile.fd)
        data, states, chosen = _read_selection(jobfile, selection, wanted, pattern)
        lost = _probe_running_jobs(jobfile, states, chosen)
        if summary:
            yield _summary_text(states, chosen, len(lost), as_json)
            return
        lines, offsets, ends = jobfile.lines, jobfile.offsets, jobfile.ends
        for start in range(0, len(chosen), _LIST_CHUNK):
            part = chosen[start : start + _LIST_CHUNK]
            if as_json:
                yield "".join(
                    json.dumps(
                        {
                            "line": lines[i],
                            "state": _shown(states[i : i + 1]),
                            "command": _shown(data[offsets[i] + 2 : ends[i]]),
                            "lost": i in lost,
                        }
                    )
                    + "\n"
                    for i in part
                )
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
                                data[offsets[i] + 2 : ends[i]],
                                b" [lost]" if i in lost else b"",
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
    write, when nothing is selected, or for a bad selection.
    """
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
        for attempt in range(_SET_TRIES):
            if attempt:
                time.sleep(_SET_RETRY_PAUSE)
            busy = _set_unlocked_jobs(fd, offsets, busy, byte, wanted)
            if not busy:
                break
        return [jobfile.lines[index] for index in busy]
    finally:
        jobfile.close()


def _set_unlocked_jobs(
    fd: int, offsets: array.array[int], chosen: list[int], byte: bytes, wanted: bytes | None
) -> list[int]:
    """Write ``byte`` to each chosen job whose lock is free; return the others."""
    busy: list[int] = []
    held: list[int] = []
    written = False
    try:
        for index in chosen:
            offset = offsets[index]
            if not _lock_byte(fd, offset, exclusive=True, wait=False):
                busy.append(index)
                continue
            held.append(offset)
            current = os.pread(fd, 1, offset)
            # A job chosen by --state may have moved on since the file was
            # read (a failed job rerun by `runmaker -r` and now done): then
            # it is no longer selected.
            selected = wanted is None or (current and current[0] in wanted)
            if selected and current and current != byte:
                os.pwrite(fd, byte, offset)
                written = True
            if len(held) >= _SET_BATCH:
                _release_written_jobs(fd, held, written)
                written = False
    finally:
        _release_written_jobs(fd, held, written)
    return busy


def append_jobs(
    path: str,
    commands: Iterable[bytes] = (),
    *,
    high: bool = False,
    max_running: int | str | None = None,
    barrier: bool = False,
) -> int:
    """Append directives and new jobs to the job file at ``path`` as one record.

    The record holds, in this order: a ``#runmaker max-running`` directive
    (``max_running``: a whole number, or ``"none"`` to lift the cap), a
    ``#runmaker barrier`` line, then one job line per command, pending
    (``.``), or urgent (``+``) with ``high``.  Trailing white space of a
    command is dropped.  The record is written whole with the append recipe
    (append_to_shared_file): workers never see part of it, and appends from
    other processes or hosts never tear its lines.  Returns the number of
    jobs appended.

    Raises RunmakerError for an empty command, one with a line break in it,
    or a ``max_running`` that is neither a whole number nor ``"none"``.
    """
    state = b"+ " if high else b". "
    parts: list[bytes] = []
    if max_running is not None:
        if not _MAX_RUNNING_ARG.match(str(max_running)):
            raise RunmakerError(
                f"{path}: max-running takes a whole number or 'none', not {max_running!r}"
            )
        parts.append(b"#runmaker max-running %s\n" % str(max_running).encode())
    if barrier:
        parts.append(b"#runmaker barrier\n")
    count = 0
    for command in commands:
        command = command.rstrip(_TRAILING_SPACE)
        if not command:
            raise RunmakerError(f"{path}: cannot add an empty command")
        if b"\n" in command or b"\r" in command:
            raise RunmakerError(
                f"{path}: a command must fit on one line: {_shown(command)!r}"
            )
        parts.append(state + command + b"\n")
        count += 1
    if not parts:
        return 0
    fd = _open_job_file(path, writable=True)
    try:
        check_file_locking(path, fd=fd)
        append_to_shared_file(fd, b"".join(parts))
    finally:
        os.close(fd)
    return count


@dataclass
class JobCounts:
    """One look at a job file, counted as ``runwait`` counts it.

    ``running`` counts live jobs only: a running job whose lock nobody holds
    is ``lost``, and counts as an error.  Retired jobs are left out of
    ``total``, as if deleted.  ``processed`` jobs are the ones nobody waits
    for any more; ``errors`` are those of them not done (failed, error,
    lost, or in an unknown state).
    """

    pending: int = 0
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
        """True when no job is pending and none is live-running."""
        return self.pending == 0 and self.running == 0


class JobWatcher:
    """Looks at a job file again and again, for ``runwait``, on one descriptor.

    Each look takes the reading lock once, reads the file in one pread,
    indexes only lines appended since the last look and takes every state
    byte in one C call; only ``r`` jobs are probed.  No lock is held between
    looks, and none that a worker would wait for more than one read.
    """

    def __init__(self, path: str, *, warn: Callable[[str], None] | None = None) -> None:
        self.jobfile = JobFile(path, writable=False, warn=warn)
        self._states = bytearray()
        self._lost: set[int] = set()

    def close(self) -> None:
        self.jobfile.close()

    def look(self) -> JobCounts:
        """Count the jobs per state now.

        Raises RunmakerError when the file was replaced or truncated since
        it was opened: workers stop using such a file, so waiting on is futile.
        """
        jobfile = self.jobfile
        data, _, _ = jobfile.read(whole=True)
        if jobfile.replaced():
            raise RunmakerError(
                f"{jobfile.path}: the file was replaced or truncated while runwait watched it "
                "(an editor that saves a new copy?); workers stop using it"
            )
        states = bytearray(jobfile.states_of(data))
        del data
        self._lost = _probe_running_jobs(jobfile, states, range(len(states)))
        self._states = states
        pending = states.count(b".") + states.count(b"+")
        running = states.count(b"r") - len(self._lost)
        done, failed, error = states.count(b"d"), states.count(b"!"), states.count(b"e")
        retired = states.count(b"-")
        lost = len(self._lost)
        unknown = len(states) - pending - running - lost - done - failed - error - retired
        return JobCounts(
            pending=pending, running=running, done=done, failed=failed, error=error,
            lost=lost, unknown=unknown, retired=retired,
        )

    def name_unsuccessful_jobs(self) -> dict[str, str]:
        """The lines of the last look's unsuccessful jobs, by kind, as ranges.

        Kinds: ``failed (!)``, ``error (e)``, ``lost (r)`` and ``unknown
        state``; ranges such as ``5-9`` join jobs next to each other, so the
        text can be handed back to ``runset`` as JOB arguments.
        """
        states, lines = self._states, self.jobfile.lines
        kinds = {
            "failed (!)": [m.start() for m in re.finditer(rb"!", states)],
            "error (e)": [m.start() for m in re.finditer(rb"e", states)],
            "lost (r)": sorted(self._lost),
            "unknown state": [m.start() for m in _UNKNOWN_STATE.finditer(states)],
        }
        return {kind: _line_ranges(lines, found) for kind, found in kinds.items() if found}


def wait_for_jobs(
    path: str,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    progress: Callable[[JobCounts], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobCounts:
    """Wait until no job of the job file at ``path`` is pending or live-running.

    Looks at once, then every ``interval`` seconds (see JobWatcher), and
    hands every look to ``progress``, with the time elapsed and an ETA: the
    jobs not yet processed over the rate at which jobs were processed since
    the first look.  Lost jobs count as errors and are not waited for.
    Returns the last look, with its unsuccessful jobs named; when
    ``timeout`` seconds pass first, with ``timed_out`` set.  Raises
    RunmakerError as JobWatcher.look does.
    """
    watcher = JobWatcher(path, warn=warn)
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
            time.sleep(max(pause, 0.0))
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
    jobfile: JobFile, selection: JobSelection, wanted: bytes | None, pattern: re.Pattern[str] | None
) -> tuple[bytes, bytearray, Sequence[int]]:
    """Read the whole file once (reading lock) and pick the selected jobs.

    Returns the data, every job's state byte, and the selected job indexes
    in file order (a range when that is every job).
    """
    data, _, _ = jobfile.read(whole=True)
    states = bytearray(jobfile.states_of(data))
    chosen: Sequence[int] = range(len(states))
    if selection.jobs:
        chosen = _jobs_named(jobfile, selection.jobs)
    if wanted is not None:
        keep = set(wanted)
        chosen = [i for i in chosen if states[i] in keep]
    if pattern is not None:
        offsets, ends = jobfile.offsets, jobfile.ends
        chosen = [i for i in chosen if pattern.search(_shown(data[offsets[i] + 2 : ends[i]]))]
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
        first = int(match[1])
        if match[2] is None:
            index = jobfile.index_of_line(first)
            if index is None:
                past = f" (the file has {jobfile.line_count} lines)" if first > jobfile.line_count else ""
                raise RunmakerError(f"{path}:{first}: no job at this line{past}")
            chosen.add(index)
            continue
        last = int(match[2])
        if not 1 <= first <= last:
            raise RunmakerError(f"{path}: {spec!r}: a range A-B needs 1 <= A <= B")
        if last > jobfile.line_count:
            raise RunmakerError(
                f"{path}:{spec}: the range runs past the end of the file "
                f"({jobfile.line_count} lines)"
            )
        chosen.update(range(bisect.bisect_left(lines, first), bisect.bisect_right(lines, last)))
    return sorted(chosen)


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
        offset = offsets[index]
        if not _lock_byte(fd, offset, exclusive=False, wait=False):
            continue  # held: the job is live
        try:
            current = os.pread(fd, 1, offset)
        finally:
            _unlock_byte(fd, offset)
        if current == b"r":
            lost.add(index)
        elif current:
            states[index] = current[0]
    return lost


def _release_written_jobs(fd: int, held: list[int], written: bool) -> None:
    """Make the bytes written durable, then let go of their job locks."""
    if written:
        os.fsync(fd)  # before unlocking: over NFS another host reads once it wins the lock
    for offset in held:
        _unlock_byte(fd, offset)
    held.clear()


def _summary_text(states: bytearray, chosen: Sequence[int], lost: int, as_json: bool) -> str:
    counts = collections.Counter(states if isinstance(chosen, range) else (states[i] for i in chosen))
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
# ---- TCP mode: a server for hosts without a shared file system
# --------------------------------------------------------------------------
#
# ``runmaker --serve FILE`` opens the job file with the same JobFile and
# Scheduler as a worker and claims jobs on behalf of its clients, so order,
# caps, barriers, --retry and lost jobs all hold, and runset and runwait on
# the server's host see the clients' jobs as the server's locked 'r' bytes.
# ``runmaker --connect HOST`` runs them with the same Worker as file mode:
# a _RemoteSource stands in for the Scheduler.
#
# The wire: one JSON object per line, a line at most _MAX_MESSAGE bytes
# (_MAX_GREETING before authentication).  The handshake proves the token
# both ways before any command or state crosses:
#
#   server: {"runmaker": 1, "nonce": NS}
#   client: {"nonce": NC, "proof": HMAC(token, "client" NS NC), "host": H, "jobs": J}
#   server: {"proof": HMAC(token, "server" NS NC), "file": PATH, "host": H}
#           or {"denied": WHY}, and it hangs up
#
# Both nonces are fresh random bytes and each direction has its own label,
# so neither a recorded nor a reflected proof passes.  From then on every
# line is "MAC JSON", the MAC an HMAC under a session key drawn from the
# token and both nonces, over the direction, the line's sequence number and
# the JSON: a line injected, replayed, reordered or reflected by someone
# without the token is refused.  There is no encryption (see the README).
#
#   client: claim {n, done}   done {done}   ping   bye
#   server: jobs {jobs}       end {block}   stop   ping   bye
#
# ``done`` lists [line, state] of jobs the client finished; each ``claim``
# is answered at once by one ``jobs`` with up to n [line, base64 command];
# ``end`` says nothing is left (the same rule as a worker's), ``stop`` that
# the server was signalled twice.  Either side pings after _HEARTBEAT
# seconds of sending nothing and gives up a peer silent for longer than its
# deadline; the server never waits on any one peer.
#
# Reconnecting: a client that loses its server stops its running jobs (they
# end 'e', as the server marks them) and connects again only once none is
# left, so no job of the old connection runs beside the new one's.  The
# server, in turn, holds a lost connection's jobs locked before it marks
# them 'e': _LOST_RELEASE seconds when the client hung up,
# _LOST_RELEASE_UNHEARD when the server hung up (the client may learn it
# only at its own silence deadline), none after _SERVER_SILENCE: by then
# the client, if alive, has stopped them, so nobody (with --retry) starts
# one of them again while it still runs.

_TCP_PORT = 9998
_PROTOCOL = 1
_TOKEN_FILE = "~/.runmaker.token"
_TOKEN_BYTES = 16  # 128 random bits
_NONCE_BYTES = 32
_MAX_GREETING = 4096  # bytes of a line before authentication
_MAX_WELCOME = 64 << 10  # the server's welcome: its proof, host name and job file path
_MAX_MESSAGE = 1 << 20  # bytes of a line after it
_MAX_COMMAND = 128 << 10  # Linux's exec refuses a longer argument (MAX_ARG_STRLEN)
_MAX_ENCODED_JOB = (_MAX_COMMAND + 2) // 3 * 4 + 32  # one [line, base64] in a jobs line
_MAX_BACKLOG = 4 * _MAX_MESSAGE  # unsent bytes kept for a peer that does not read
_RECEIVE_BUDGET = 1 << 18  # bytes read from one peer per turn of the loop
_MAX_PEERS = 512
_MAX_STRANGERS = 64  # connections not yet authenticated
_MAX_CLAIM = 1024  # jobs asked for at once
_AUTH_DEADLINE = 10.0  # seconds a new connection has to authenticate
_HEARTBEAT = 5.0  # a ping after this long without sending anything
_CLIENT_SILENCE = 15.0  # a client gives up a server silent this long
# The server gives up a silent client only once it has surely stopped its
# jobs: after its own deadline and the grace of the kill.
_SERVER_SILENCE = _CLIENT_SILENCE + _KILL_GRACE + 5.0
# A client that hung up (or whose host reset the connection) knows it is
# gone and stops its jobs within the grace of the kill.
_LOST_RELEASE = _HEARTBEAT + _KILL_GRACE + 2.0
# One the server hangs up on may hear of it only at its own silence deadline.
_LOST_RELEASE_UNHEARD = _CLIENT_SILENCE + _KILL_GRACE + 2.0
_GOODBYE = 2.0  # seconds spent delivering last words before hanging up
_GIVE_UP = 60.0  # a client stops trying to reach its server after this long
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 8.0


class _PeerError(Exception):
    """The peer broke the protocol; the message says how, after its address."""


class _ConnectionGone(_PeerError):
    """The connection itself ended: closed, reset or timed out."""


class _ServerGone(click.ClickException):
    """A client found no server for longer than it waits: one ``Error:`` line, exit status 1."""

    exit_code = 1


class _Interrupted(Exception):
    """A stop signal arrived while a client was (re)connecting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _peer_name(address: tuple[object, ...]) -> str:
    """``host:port`` as a user writes it; IPv4 peers of a dual-stack socket unmapped."""
    host, port = str(address[0]), address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_hex(value: object, size: int) -> bool:
    if not isinstance(value, str) or len(value) != 2 * size:
        return False
    return re.fullmatch(r"[0-9a-f]*", value) is not None


def _proof(token: bytes, side: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What ``side`` sends to show it knows the token (nonces have a fixed size)."""
    message = b"runmaker " + side + b" proof\0" + server_nonce + client_nonce
    return hmac.new(token, message, hashlib.sha256).digest()


def _session_key(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    message = b"runmaker session\0" + server_nonce + client_nonce
    return hmac.new(token, message, hashlib.sha256).digest()


def _tune(sock: socket.socket) -> None:
    # Claims and answers are small and wait for each other: without
    # TCP_NODELAY, Nagle's algorithm and delayed ACKs add 40 ms to each.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class _Channel:
    """One connection's messages: bounded JSON lines, signed once authenticated."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.last_received = self.last_sent = time.monotonic()
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._limit = _MAX_GREETING
        self._key: bytes | None = None
        self._labels = (b"", b"")  # sending, receiving
        self._numbers = [0, 0]

    def expect_line_of(self, limit: int) -> None:
        """Accept a next line of up to ``limit`` bytes."""
        self._limit = limit

    def secure(self, key: bytes, *, server: bool) -> None:
        """Sign every later line sent and check every later line received."""
        self._key = key
        self._labels = (b"server\0", b"client\0") if server else (b"client\0", b"server\0")
        self._limit = _MAX_MESSAGE

    def _signature(self, direction: int, data: bytes) -> bytes:
        assert self._key is not None
        number = self._numbers[direction]
        self._numbers[direction] = number + 1
        signed = self._labels[direction] + number.to_bytes(8, "big") + data
        return hmac.new(self._key, signed, hashlib.sha256).hexdigest().encode()

    @property
    def sending(self) -> bool:
        return bool(self._out)

    def send(self, message: dict[str, object]) -> None:
        """Queue one message; ``flush`` hands it to the kernel."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if self._key is not None:
            data = self._signature(0, data) + b" " + data
        if len(self._out) + len(data) >= _MAX_BACKLOG:
            raise _PeerError("does not read what it is sent")
        self._out += data + b"\n"
        self.last_sent = time.monotonic()

    def flush(self) -> None:
        """Send what the kernel takes now; the rest waits for the next call."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError as exc:
                raise _ConnectionGone(_reason(exc)) from None
            del self._out[:sent]

    def receive(self) -> None:
        """Take what has arrived, up to a budget, so one peer cannot hold up others."""
        taken = 0
        while taken < _RECEIVE_BUDGET and not self._eof:
            try:
                chunk = self.sock.recv(_READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:  # reset, or the handshake's timeout
                raise _ConnectionGone(_reason(exc)) from None
            if not chunk:
                self._eof = True
                return
            self._in += chunk
            taken += len(chunk)
            self.last_received = time.monotonic()
            if self.sock.gettimeout() != 0.0:
                return  # a blocking socket (the client's handshake): one read

    def next_message(self) -> dict[str, object] | None:
        """The next whole message received, or None; raises _PeerError for a bad one."""
        end = self._in.find(b"\n", 0, self._limit + 1)
        if end < 0:
            if len(self._in) > self._limit:
                raise _PeerError(f"sent a line longer than {self._limit} bytes")
            return None
        line = bytes(self._in[:end])
        del self._in[: end + 1]
        if self._key is not None:
            signature, _, line = line.partition(b" ")
            if not hmac.compare_digest(signature, self._signature(1, line)):
                raise _PeerError("sent a line with a wrong signature")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise _PeerError("sent a malformed line") from None
        if not isinstance(message, dict):
            raise _PeerError("sent a malformed line")
        return message

    def raise_if_closed(self) -> None:
        """Once every whole message is taken: raise _ConnectionGone if the peer hung up."""
        if self._eof:
            raise _ConnectionGone("connection closed")

    def finish_sending(self) -> None:
        """Send the end of the stream once every message is sent.

        Hanging up on a peer whose data we have not read makes the kernel
        send a reset, which may destroy our last message before the peer
        reads it; so the server says it is done, and waits for the peer to
        hang up first (``discard_input``).
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def discard_input(self) -> bool:
        """Read and drop what has arrived (up to a budget); True once the peer has hung up."""
        for _ in range(_RECEIVE_BUDGET // _READ_CHUNK):
            try:
                if not self.sock.recv(_READ_CHUNK):
                    return True
            except BlockingIOError:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


# -- tokens and addresses ---------------------------------------------------


def _read_token(value: str) -> tuple[str, str]:
    """The token of ``--token``: the value itself, or the contents of a file.

    Returns the token and where it came from, for the server's first line.
    A value with a slash in it is a path (tokens made here are hex).
    """
    if os.path.isfile(value) or os.sep in value:
        try:
            with open(value, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not a text file"
            raise RunmakerError(f"{value}: cannot read the token: {why}") from None
        if not token or "\n" in token:
            raise RunmakerError(f"{value}: a token file holds one token on one line")
        return token, f"read from {value}"
    if not value.strip():
        raise RunmakerError("--token: the token is empty")
    return value, "given with --token"


def _make_token_file() -> tuple[str, str]:
    """A new random token, written to ~/.runmaker.token (mode 0600)."""
    token = secrets.token_hex(_TOKEN_BYTES)
    path = os.path.expanduser(_TOKEN_FILE)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file may have been readable by others
            _write_all(fd, token.encode() + b"\n")
        finally:
            os.close(fd)
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot write the token: {_reason(exc)}") from None
    return token, f"written to {path}"


def _client_token(value: str | None) -> str:
    """The client's token: ``--token``, or else the token file this user's server wrote."""
    if value is not None:
        return _read_token(value)[0]
    path = os.path.expanduser(_TOKEN_FILE)
    if not os.path.isfile(path):
        raise click.UsageError("--connect needs --token TOKEN|FILE (the server printed it)")
    return _read_token(path)[0]


def _split_address(address: str, port: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPV6]:PORT or a bare IPv6 address, and the port to use."""
    host, port_text = address, None
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise RunmakerError(f"{address}: not HOST[:PORT]")
        port_text = rest[1:] if rest else None
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RunmakerError(f"{address}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host or port == 0:
        raise RunmakerError(f"{address}: not HOST[:PORT] (with a port from 1 to 65535)")
    return host, port


def _listen(bind: str | None, port: int) -> socket.socket:
    """The server's listening socket: every interface (IPv6 and IPv4), or ``bind``."""
    try:
        if bind is None:
            if socket.has_dualstack_ipv6():
                try:
                    sock = socket.create_server(
                        ("::", port), family=socket.AF_INET6, dualstack_ipv6=True
                    )
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise
                    sock = socket.create_server(("0.0.0.0", port))  # IPv6 switched off
            else:
                sock = socket.create_server(("0.0.0.0", port))
        else:
            family, _, _, _, address = socket.getaddrinfo(
                bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(address, family=family)
    except OSError as exc:
        where = bind or "every interface"
        raise RunmakerError(f"cannot listen on {where}, port {port}: {_reason(exc)}") from None
    sock.setblocking(False)
    return sock


# -- the server ------------------------------------------------------------


@dataclass
class ServerOptions:
    """How ``runmaker --serve`` listens and hands out the jobs of its file."""

    bind: str | None = None  # None: every interface
    port: int = _TCP_PORT  # 0: any free port (it is announced)
    token: str | None = None  # a token or a file holding one; None: a new one in ~/.runmaker.token
    retry: bool = False
    follow: bool = False


@dataclass(eq=False)
class _Peer:
    """One connection to the server, and the jobs it runs."""

    channel: _Channel
    nonce: bytes
    deadline: float  # to authenticate by (or, closing, to be gone by)
    host: str | None = None  # the client's host name, once authenticated
    claims: dict[int, Claim] = field(default_factory=dict)  # by line number
    closing: bool = False  # its last message is queued: hang up once it is sent
    shut: bool = False  # the last message is sent: wait for the peer to hang up
    events: int = 0

    @property
    def label(self) -> str:
        return f"{self.channel.name} ({self.host})" if self.host else self.channel.name


class _Server:
    """The server's loop: one thread, one poll, never waiting on any one peer."""

    def __init__(
        self,
        scheduler: Scheduler,
        listener: socket.socket,
        token: str,
        options: ServerOptions,
        notify: Callable[[str], None],
    ) -> None:
        self._scheduler = scheduler
        self._listener = listener
        self._token = token.encode()
        self._options = options
        self._notify = notify
        self._path = os.path.abspath(scheduler.jobfile.path)
        self._poller = select.poll()
        self._peers: dict[int, _Peer] = {}  # socket fd -> peer
        self._lost: list[tuple[float, list[Claim]]] = []  # release time, claims
        self._signals: list[int] = []
        self._signals_seen = 0
        self._stop_deadline: float | None = None
        self._accept_again: float | None = None
        self._failures = 0
        self._replaced = False
        self._nothing_left: str | None = None  # "done" or "blocked", once seen idle
        self._block = ""
        self._next_look = 0.0

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(wake_r, select.POLLIN)
        self._poller.register(self._listener.fileno(), select.POLLIN)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self._loop(wake_r)
            self._say_goodbye(wake_r)
        except OSError:
            # The job file failed (EIO: the NFS server dropped our locks):
            # the clients' jobs are no longer ours to run.  Best effort, as
            # the caller ends at once: their connections close with it.
            for peer in self._clients():
                try:
                    peer.channel.send({"t": "stop"})
                    peer.channel.flush()
                except (OSError, _PeerError):
                    pass
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            for peer in self._peers.values():
                peer.channel.close()
            os.close(wake_r)
            os.close(wake_w)
        if self._signals_seen:
            return _EXIT_SIGNALLED
        return 1 if self._failures or self._replaced else 0

    def _loop(self, wake_r: int) -> None:
        listener = self._listener.fileno()
        while True:
            self._handle_signals()
            now = time.monotonic()
            wake_at = self._keep_time(now)
            self._scheduler.commit()
            if self._is_over(now):
                return
            for peer in list(self._peers.values()):
                self._update(peer)
            timeout = max(0.0, min(wake_at, now + _POLL) - now)
            for fd, events in self._poller.poll(timeout * 1000):
                if fd == wake_r:
                    _drain_wakeup(wake_r)
                elif fd == listener:
                    self._accept()
                elif fd in self._peers:  # not dropped earlier in this round
                    self._serve(self._peers[fd], events)
            self._scheduler.commit()

    # -- signals -----------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            name = _signal_name(self._signals.pop(0))
            self._signals_seen += 1
            running = len(self._scheduler.held)
            if self._signals_seen == 1:
                self._notify(
                    f"runmaker: {name}: draining, handing out no more jobs; {running} still "
                    "running on clients (a second signal stops them)"
                )
            elif self._signals_seen == 2:
                self._notify(f"runmaker: {name}: stopping {running} running jobs")
                for peer in self._clients():
                    self._send(peer, {"t": "stop"})
                self._stop_deadline = time.monotonic() + _KILL_GRACE + _HEARTBEAT

    # -- time --------------------------------------------------------------

    def _keep_time(self, now: float) -> float:
        """Drop late and silent peers, ping quiet ones, release lost jobs; return when next."""
        wake_at = now + _POLL
        for peer in list(self._peers.values()):
            channel = peer.channel
            if peer.host is None or peer.closing:
                if now >= peer.deadline:
                    late = "did not hang up after its last message" if peer.closing else (
                        f"no authentication within {_AUTH_DEADLINE:g} s"
                    )
                    self._drop(peer, late)
                    continue
                wake_at = min(wake_at, peer.deadline)
            elif now - channel.last_received >= _SERVER_SILENCE:
                self._drop(peer, f"silent for {_SERVER_SILENCE:g} s", silent=True)
                continue
            else:
                if now - channel.last_sent >= _HEARTBEAT:
                    self._send(peer, {"t": "ping"})
                wake_at = min(
                    wake_at, channel.last_sent + _HEARTBEAT, channel.last_received + _SERVER_SILENCE
                )
        if self._lost:
            due = [claims for moment, claims in self._lost if moment <= now]
            self._lost = [(moment, claims) for moment, claims in self._lost if moment > now]
            for claims in due:
                self._mark_errors(claims)
            for moment, _ in self._lost:
                wake_at = min(wake_at, moment)
        if self._accept_again is not None:
            if now >= self._accept_again:
                self._accept_again = None
                self._poller.register(self._listener.fileno(), select.POLLIN)
            else:
                wake_at = min(wake_at, self._accept_again)
        return wake_at

    def _mark_errors(self, claims: list[Claim]) -> None:
        for claim in claims:
            self._scheduler.finish_job(claim, "e")
        self._failures += len(claims)

    def _is_over(self, now: float) -> bool:
        """The end rule: nothing is held, and nothing is left, or a signal or a replaced file."""
        if self._scheduler.held:
            if self._stop_deadline is not None and now >= self._stop_deadline:
                self._notify("runmaker: clients did not stop their jobs in time; marking them e")
                for peer in self._peers.values():
                    self._mark_errors(list(peer.claims.values()))
                    peer.claims.clear()
                for _, claims in self._lost:
                    self._mark_errors(claims)
                self._lost.clear()
                self._scheduler.commit()
                return True
            return False
        if self._signals_seen or self._replaced or self._nothing_left:
            return True
        if self._options.follow or any(peer.host for peer in self._peers.values()):
            return False  # clients that ask find out whether anything is left
        if now < self._next_look:
            return False
        # Nobody asks: look for anything left to run, as seldom as a worker would.
        ended = self._scheduler.nothing_left()
        self._next_look = time.monotonic() + max(_POLL, 20 * (time.monotonic() - now))
        if ended:
            self._nothing_left = ended
            if ended == "blocked":
                self._block = self._scheduler.describe_block()
        return ended is not None

    # -- peers -------------------------------------------------------------

    def _clients(self) -> list[_Peer]:
        return [peer for peer in self._peers.values() if peer.host and not peer.closing]

    def _accept(self) -> None:
        for _ in range(64):  # then let the others have their turn
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of descriptors, say: the listener stays readable, so
                # stop listening for a moment rather than spin.
                self._notify(f"runmaker: cannot accept a connection: {_reason(exc)}")
                self._poller.unregister(self._listener.fileno())
                self._accept_again = time.monotonic() + 1.0
                return
            name = _peer_name(address)
            if len(self._peers) >= _MAX_PEERS:
                self._notify(f"runmaker: {name}: refused: already {_MAX_PEERS} connections")
                sock.close()
                continue
            # Strangers get a small share, so a flood of them cannot keep
            # real clients (reconnecting after a network fault) out.
            if sum(peer.host is None for peer in self._peers.values()) >= _MAX_STRANGERS:
                self._notify(f"runmaker: {name}: refused: {_MAX_STRANGERS} connections still authenticating")
                sock.close()
                continue
            sock.setblocking(False)
            _tune(sock)
            nonce = secrets.token_bytes(_NONCE_BYTES)
            peer = _Peer(_Channel(sock, name), nonce, time.monotonic() + _AUTH_DEADLINE)
            self._peers[sock.fileno()] = peer
            self._poller.register(sock.fileno(), select.POLLIN)
            peer.events = select.POLLIN
            self._notify(f"runmaker: connection from {name}")
            self._send(peer, {"runmaker": _PROTOCOL, "nonce": nonce.hex()})

    def _send(self, peer: _Peer, message: dict[str, object]) -> None:
        try:
            peer.channel.send(message)
        except _PeerError as exc:
            self._drop(peer, str(exc), hung_up=isinstance(exc, _ConnectionGone))

    def _update(self, peer: _Peer) -> None:
        """Send what the peer can take, then (closing) the end of the stream; watch for input."""
        if peer.channel.sock.fileno() not in self._peers:
            return  # dropped
        try:
            peer.channel.flush()
        except _PeerError as exc:
            if peer.closing:
                self._forget(peer)  # it left first: nothing was lost
            else:
                self._drop(peer, str(exc), hung_up=isinstance(exc, _ConnectionGone))
            return
        if peer.closing and not peer.channel.sending and not peer.shut:
            peer.channel.finish_sending()
            peer.shut = True
        events = select.POLLIN | (select.POLLOUT if peer.channel.sending else 0)
        if events != peer.events:
            self._poller.modify(peer.channel.sock.fileno(), events)
            peer.events = events

    def _serve(self, peer: _Peer, events: int) -> None:
        if peer.closing:
            # What it says now no longer counts; once it hangs up, so do we.
            if events & ~select.POLLOUT and peer.channel.discard_input():
                self._forget(peer)
            else:
                self._update(peer)
            return
        try:
            if events & ~select.POLLOUT:  # data, a hang-up or an error: recv tells which
                peer.channel.receive()
                while not peer.closing:
                    message = peer.channel.next_message()
                    if message is None:
                        peer.channel.raise_if_closed()
                        break
                    self._handle(peer, message)
        except _PeerError as exc:
            self._drop(peer, str(exc), hung_up=isinstance(exc, _ConnectionGone))
            return
        self._update(peer)

    def _forget(self, peer: _Peer) -> None:
        fd = peer.channel.sock.fileno()
        self._poller.unregister(fd)
        del self._peers[fd]
        peer.channel.close()

    def _drop(self, peer: _Peer, why: str, *, silent: bool = False, hung_up: bool = False) -> None:
        """Hang up on a peer; its jobs end 'e' once it has surely stopped them.

        A client that hung up knows it is gone and stops its jobs within
        the grace of the kill (``_LOST_RELEASE``).  One we hang up on may
        not hear of it (a network that fails one way) until its own silence
        deadline (``_LOST_RELEASE_UNHEARD``); one silent for
        ``_SERVER_SILENCE`` has passed that already.
        """
        if peer.channel.sock.fileno() not in self._peers:
            return
        self._forget(peer)
        claims = list(peer.claims.values())
        peer.claims.clear()
        if not claims:
            self._notify(f"runmaker: {peer.label}: dropped ({why})")
            return
        delay = 0.0 if silent else _LOST_RELEASE if hung_up else _LOST_RELEASE_UNHEARD
        self._lost.append((time.monotonic() + delay, claims))
        lines = ", ".join(str(claim.line) for claim in claims[:10])
        lines += ", ..." if len(claims) > 10 else ""
        when = f" in {delay:g} s, once it has surely stopped them" if delay else ""
        self._notify(
            f"runmaker: {peer.label}: dropped ({why}); its {len(claims)} running "
            f"jobs (line {lines}) end 'e'{when}"
        )

    # -- messages ------------------------------------------------------------

    def _handle(self, peer: _Peer, message: dict[str, object]) -> None:
        if peer.host is None:
            self._authenticate(peer, message)
            return
        kind = message.get("t")
        if kind == "claim":
            count = message.get("n")
            if not isinstance(count, int) or not 0 < count <= _MAX_CLAIM:
                raise _PeerError("sent a malformed claim")
            self._take_states(peer, message.get("done"))
            self._hand_out(peer, count)
        elif kind == "done":
            self._take_states(peer, message.get("done"))
        elif kind == "bye":
            if peer.claims:
                raise _PeerError("said goodbye while it held jobs")
            self._notify(f"runmaker: {peer.label}: client left")
            peer.channel.send({"t": "bye"})
            peer.closing = True
            peer.deadline = time.monotonic() + _GOODBYE
        elif kind != "ping":
            raise _PeerError("sent an unknown message")

    def _authenticate(self, peer: _Peer, message: dict[str, object]) -> None:
        nonce, proof, host = message.get("nonce"), message.get("proof"), message.get("host")
        if not (
            _is_hex(nonce, _NONCE_BYTES)
            and _is_hex(proof, hashlib.sha256().digest_size)
            and isinstance(host, str)
            and 0 < len(host) <= 255
            and host.isprintable()
            and isinstance(message.get("jobs"), int)
        ):
            raise _PeerError("sent a malformed greeting")
        client_nonce = bytes.fromhex(str(nonce))
        expected = _proof(self._token, b"client", peer.nonce, client_nonce)
        if not hmac.compare_digest(bytes.fromhex(str(proof)), expected):
            self._notify(f"runmaker: {peer.label}: authentication failed (wrong token)")
            peer.channel.send({"denied": "wrong token"})
            peer.closing = True
            peer.deadline = time.monotonic() + _GOODBYE
            return
        peer.channel.send({
            "proof": _proof(self._token, b"server", peer.nonce, client_nonce).hex(),
            "file": self._path,
            "host": short_hostname(),
        })
        peer.channel.secure(_session_key(self._token, peer.nonce, client_nonce), server=True)
        peer.host = host
        self._notify(f"runmaker: {peer.label}: authenticated, runs up to {message['jobs']} jobs")

    def _take_states(self, peer: _Peer, done: object) -> None:
        """Write the final states a client reports, through the scheduler."""
        if done is None:
            return
        if not isinstance(done, list):
            raise _PeerError("sent malformed job states")
        for entry in done:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], int)
                and entry[1] in ("d", "!", "e")
            ):
                raise _PeerError("sent malformed job states")
            claim = peer.claims.pop(entry[0], None)
            if claim is None:
                raise _PeerError(f"reported line {entry[0]}, which it does not run")
            self._scheduler.finish_job(claim, entry[1])
            if entry[1] != "d":
                self._failures += 1

    def _hand_out(self, peer: _Peer, count: int) -> None:
        """Answer a claim: up to ``count`` jobs claimed for ``peer``, perhaps none."""
        jobs: list[list[object]] = []
        if not (self._signals_seen or self._replaced or self._nothing_left):
            if self._scheduler.replaced():
                self._replaced = True
                self._notify(
                    f"runmaker: {self._path}: the file was replaced or shrunk under this "
                    f"server; handing out no more jobs, {len(self._scheduler.held)} still running"
                )
            else:
                jobs = self._claim_for(peer, count)
        peer.channel.send({"t": "jobs", "jobs": jobs})

    def _claim_for(self, peer: _Peer, count: int) -> list[list[object]]:
        jobs: list[list[object]] = []
        room = _MAX_MESSAGE - _MAX_GREETING
        scheduler = self._scheduler
        while len(jobs) < count and room >= _MAX_ENCODED_JOB:
            want = min(count - len(jobs), room // _MAX_ENCODED_JOB)
            claims = scheduler.claim_jobs(want, idle=not scheduler.held)
            for claim in claims:
                if len(claim.command) > _MAX_COMMAND:
                    self._notify(
                        f"runmaker: {self._path}:{claim.line}: the command is longer than "
                        f"{_MAX_COMMAND} bytes, more than exec takes; it ends 'e'"
                    )
                    self._mark_errors([claim])
                    continue
                peer.claims[claim.line] = claim
                encoded = base64.b64encode(claim.command).decode("ascii")
                jobs.append([claim.line, encoded])
                room -= len(encoded) + 32
            if len(claims) < want:
                reason = scheduler.idle_reason
                if reason in ("done", "blocked") and not (scheduler.held or self._options.follow):
                    self._nothing_left = reason
                    if reason == "blocked":
                        self._block = scheduler.describe_block()
                break
        return jobs

    def _say_goodbye(self, wake_r: int) -> None:
        """Tell every client to end, and give the words a moment to reach them."""
        if self._accept_again is None:
            self._poller.unregister(self._listener.fileno())
        if self._block:
            self._notify("runmaker: " + self._block)
        clients = self._clients()
        why = "signalled" if self._signals_seen else (
            "the job file was replaced" if self._replaced else "nothing left to run"
        )
        whom = "1 client" if len(clients) == 1 else f"{len(clients)} clients"
        self._notify(f"runmaker: {why}; telling {whom} to end")
        for peer in list(self._peers.values()):
            if peer in clients:
                self._send(peer, {"t": "end", "block": self._block or None})
                peer.closing = True
                self._update(peer)
            elif not peer.closing:
                self._forget(peer)  # not authenticated: nothing to tell it
        deadline = time.monotonic() + _GOODBYE
        while self._peers and time.monotonic() < deadline:
            for fd, events in self._poller.poll(50):
                if fd == wake_r:
                    _drain_wakeup(wake_r)
                elif fd in self._peers:
                    self._serve(self._peers[fd], events)


# -- the client ------------------------------------------------------------


class _RemoteSource:
    """Stands in for the Scheduler in a TCP client's Worker: the server claims.

    As the Worker's JobSource it asks the server for jobs and reports their
    final states; as its Link it is watched by the Worker's loop, which calls
    ``commit`` whenever data arrives or a heartbeat is due, and stops every
    running job once ``broken`` says the server is gone or stops them.
    """

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.idle_reason: str | None = None
        self.ended = False  # the server said nothing is left
        self.gone: str | None = None  # why the connection is lost
        self.succeeded = False
        self.unrecorded: list[int] = []  # lines done here the server may not know of
        self._stop = False
        self._block = ""
        self._done: list[list[object]] = []  # final states not sent yet
        self._unconfirmed: list[list[object]] = []  # sent, not yet answered
        self._held: set[int] = set()
        self._awaiting = ""  # the answer a blocking call waits for
        self._quiet_until = 0.0
        self._poller = select.poll()
        self._poller.register(channel.sock.fileno(), select.POLLIN)

    # -- the JobSource ---------------------------------------------------------

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        """Ask the server for up to ``count`` jobs and wait for its answer."""
        self._serve()
        if count <= 0:
            return []  # a worker's look for new lines: the server's business here
        if self.gone or self.ended or self._stop:
            self.idle_reason = ("blocked" if self._block else "done") if self.ended else "waiting"
            return []
        now = time.monotonic()
        if now < self._quiet_until:
            return []  # it had nothing a moment ago; the Worker looks again soon
        try:
            self._send({"t": "claim", "n": min(count, _MAX_CLAIM), "done": self._take_done()})
            answer = self._wait_for("jobs")
            claims = self._claims_from(answer, count) if answer is not None else []
        except _PeerError as exc:
            self._lose(str(exc))
            claims = []
        if len(claims) < count:
            self.idle_reason = ("blocked" if self._block else "done") if self.ended else "waiting"
            self._quiet_until = now + _REFRESH_GAP
        else:
            self.idle_reason = None
        return claims

    def finish_job(self, claim: Claim, state: str) -> None:
        self._held.discard(claim.line)
        if state == "d":
            self.succeeded = True
        if self.gone is None:
            self._done.append([claim.line, state])
        elif state == "d":
            self.unrecorded.append(claim.line)

    def commit(self) -> None:
        """Send finished jobs' states, read what came, keep the connection alive."""
        self._serve()

    def replaced(self) -> bool:
        return False

    def describe_block(self) -> str:
        return self._block

    # -- the Link ----------------------------------------------------------

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def timeout(self, now: float) -> float | None:
        if self.gone or self._stop:
            return 0.0  # the worker is to act on broken() at once
        if self._done or self.channel.sending:
            return 0.0 if self._done else 0.05
        channel = self.channel
        moment = min(channel.last_sent + _HEARTBEAT, channel.last_received + _CLIENT_SILENCE)
        return max(0.0, moment - now)

    def broken(self) -> str | None:
        if self._stop:
            return f"{self.channel.name}: the server stops every job"
        return f"lost the connection to {self.channel.name} ({self.gone})" if self.gone else None

    # -- the connection ------------------------------------------------------

    def close(self) -> None:
        """Report the last states and say goodbye (unless lost or ended); hang up."""
        try:
            if self.gone is None and not self.ended:
                if self._done:
                    self._send({"t": "done", "done": self._take_done()})
                self._send({"t": "bye"})
                self._wait_for("bye")  # or "end": the server took every state either way
                self._unconfirmed.clear()
        except _PeerError as exc:
            self._lose(str(exc))
        finally:
            self._lose_unconfirmed()
            self.channel.close()

    def _serve(self) -> None:
        if self.gone:
            return
        try:
            if self._done:
                self._send({"t": "done", "done": self._take_done()})
            if time.monotonic() - self.channel.last_sent >= _HEARTBEAT:
                self._send({"t": "ping"})
            self.channel.flush()
            self.channel.receive()
            self._read()
            self.channel.raise_if_closed()
            if time.monotonic() - self.channel.last_received >= _CLIENT_SILENCE:
                raise _ConnectionGone(f"the server was silent for {_CLIENT_SILENCE:g} s")
        except _PeerError as exc:
            self._lose(str(exc))

    def _send(self, message: dict[str, object]) -> None:
        self.channel.send(message)
        self.channel.flush()

    def _take_done(self) -> list[list[object]]:
        done, self._done = self._done, []
        self._unconfirmed += done
        return done

    def _read(self) -> dict[str, object] | None:
        """Act on every message received; return the answer awaited, if it came."""
        answer = None
        while (message := self.channel.next_message()) is not None:
            kind = message.get("t")
            if kind == self._awaiting and answer is None:
                answer = message
                self._awaiting = ""
                self._unconfirmed.clear()  # the server took them before it answered
            elif kind == "end":
                self.ended = True
                block = message.get("block")
                self._block = block if isinstance(block, str) else ""
            elif kind == "stop":
                self._stop = True
            elif kind != "ping":
                raise _PeerError("sent an unexpected message")
        return answer

    def _wait_for(self, kind: str) -> dict[str, object] | None:
        """Wait for the server's answer (None if it ended first); raises _PeerError."""
        self._awaiting = kind
        try:
            while True:
                self.channel.flush()
                self.channel.receive()
                answer = self._read()
                if answer is not None:
                    return answer
                if self.ended:
                    return None
                self.channel.raise_if_closed()
                now = time.monotonic()
                left = self.channel.last_received + _CLIENT_SILENCE - now
                if left <= 0:
                    raise _ConnectionGone(f"no answer from the server for {_CLIENT_SILENCE:g} s")
                if now - self.channel.last_sent >= _HEARTBEAT:
                    self.channel.send({"t": "ping"})
                wait = min(left, _HEARTBEAT, 0.05 if self.channel.sending else left)
                self._poller.poll(wait * 1000)
        finally:
            self._awaiting = ""

    def _claims_from(self, answer: dict[str, object], count: int) -> list[Claim]:
        jobs = answer.get("jobs")
        if not isinstance(jobs, list) or len(jobs) > count:
            raise _PeerError("sent a malformed answer")
        claims = []
        for entry in jobs:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], int)
                and isinstance(entry[1], str)
                and entry[0] not in self._held
            ):
                raise _PeerError("sent a malformed answer")
            try:
                command = base64.b64decode(entry[1], validate=True)
            except ValueError:
                raise _PeerError("sent a malformed answer") from None
            self._held.add(entry[0])
            claims.append(Claim(entry[0], entry[0], command))
        return claims

    def _lose(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            self._lose_unconfirmed()

    def _lose_unconfirmed(self) -> None:
        # States sent but not answered may not have reached the server: it
        # marks those jobs 'e' with the rest of the connection's.  A server
        # that ended had taken every state (it ends only when it holds none).
        if self.ended:
            self._unconfirmed.clear()
        for line, state in self._unconfirmed + self._done:
            if state == "d":
                self.unrecorded.append(int(line))  # type: ignore[call-overload]
        self._unconfirmed.clear()
        self._done.clear()


def _connect_to_server(
    host: str, port: int, token: str, options: WorkerOptions
) -> tuple[_Channel, dict[str, object]]:
    """Connect and authenticate both ways; return the channel and the server's welcome.

    Raises OSError or _ConnectionGone when worth trying again later, and
    RunmakerError when not: a wrong token, or no runmaker server there.
    """
    name = _peer_name((host, port))
    sock = socket.create_connection((host, port), timeout=_AUTH_DEADLINE)
    authenticated = False
    try:
        _tune(sock)
        channel = _Channel(sock, name)
        deadline = time.monotonic() + _AUTH_DEADLINE
        try:
            hello = _receive_one(channel, deadline)
            nonce = hello.get("nonce")
            if hello.get("runmaker") != _PROTOCOL or not _is_hex(nonce, _NONCE_BYTES):
                raise _PeerError("sent a greeting of another protocol or version")
            server_nonce = bytes.fromhex(str(nonce))
            client_nonce = secrets.token_bytes(_NONCE_BYTES)
            secret = token.encode()
            channel.send({
                "nonce": client_nonce.hex(),
                "proof": _proof(secret, b"client", server_nonce, client_nonce).hex(),
                "host": options.host,
                "jobs": options.jobs,
            })
            channel.flush()
            # The welcome names the job file: a long path, JSON-escaped,
            # may be far longer than a greeting.
            channel.expect_line_of(_MAX_WELCOME)
            welcome = _receive_one(channel, deadline)
        except _ConnectionGone:
            raise
        except _PeerError as exc:
            raise RunmakerError(f"{name}: not a runmaker server: it {exc}") from None
        if "denied" in welcome:
            raise RunmakerError(
                f"{name}: the server refused the token; give the one it printed (or its token file)"
            )
        proof = welcome.get("proof")
        if not _is_hex(proof, hashlib.sha256().digest_size) or not hmac.compare_digest(
            bytes.fromhex(str(proof)), _proof(secret, b"server", server_nonce, client_nonce)
        ):
            raise RunmakerError(
                f"{name}: the server could not prove it knows the token; running nothing from it"
            )
        if not isinstance(welcome.get("file"), str):
            raise RunmakerError(f"{name}: not a runmaker server: it sent a malformed welcome")
        channel.secure(_session_key(secret, server_nonce, client_nonce), server=False)
        sock.setblocking(False)
        authenticated = True
        return channel, welcome
    finally:
        if not authenticated:
            sock.close()


def _receive_one(channel: _Channel, deadline: float) -> dict[str, object]:
    while True:
        message = channel.next_message()
        if message is not None:
            return message
        left = deadline - time.monotonic()
        if left <= 0:
            raise _ConnectionGone(f"no greeting within {_AUTH_DEADLINE:g} s")
        channel.sock.settimeout(left)
        channel.receive()


class _TcpClient:
    """Runs the jobs of a server, connecting again when the connection is lost."""

    def __init__(self, host: str, port: int, token: str, options: WorkerOptions, records: _Records,
                 console: BinaryIO, notify: Callable[[str], None]) -> None:
        self.host, self.port, self.token = host, port, token
        self.name = _peer_name((host, port))
        self.options = options
        self.records = records
        self.console = console
        self.notify = notify

    def run(self) -> int:
        status = 0
        delay = _BACKOFF_FIRST
        unreachable_since: float | None = None
        first = True
        while True:
            try:
                channel, welcome = _connect_to_server(
                    self.host, self.port, self.token, self.options
                )
            except socket.gaierror as exc:
                if first:
                    raise RunmakerError(f"{self.name}: {_reason(exc)}") from None
                why = _reason(exc)
            except (OSError, _ConnectionGone) as exc:
                why = _reason(exc) if isinstance(exc, OSError) else str(exc)
            else:
                first = False
                unreachable_since = None
                connected = time.monotonic()
                remote = _RemoteSource(channel)
                code = self._run_jobs(remote, welcome)
                if code == _EXIT_SIGNALLED:
                    return code
                status = max(status, code)
                if remote.gone is None or remote.ended:
                    return status
                if self.options.one_only and remote.succeeded:
                    return status
                if time.monotonic() - connected > _CLIENT_SILENCE:
                    delay = _BACKOFF_FIRST  # it had worked for a while: not a loop
                why = remote.gone
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
            elif now - unreachable_since >= _GIVE_UP:
                raise _ServerGone(
                    f"{self.name}: no runmaker server to be reached for {_GIVE_UP:g} s "
                    f"({why}); giving up"
                )
            self.notify(f"runmaker: {self.name}: {why}; trying again in {delay:g} s")
            time.sleep(delay)
            delay = min(2 * delay, _BACKOFF_MAX)

    def _run_jobs(self, remote: _RemoteSource, welcome: dict[str, object]) -> int:
        self.options.job_file = str(welcome["file"])
        self.notify(f"runmaker: connected to {self.name}, serving {self.options.job_file}")
        try:
            worker = Worker(remote, self.options, self.records, console=self.console,
                            notify=self.notify, link=remote)
            code = worker.run()
        finally:
            remote.close()
        if remote.unrecorded:
            lines = ", ".join(map(str, remote.unrecorded))
            self.notify(
                f"runmaker: {self.name}: the connection was lost before the server recorded "
                f"line {lines} as done; there it ends 'e'"
            )
            code = max(code, 1)
        return code


def _stop_signals_raise() -> dict[int, object]:
    return {
        sig: signal.signal(sig, _raise_interrupted)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }


@dataclass
class _TcpCommand:
    """The TCP options of ``main``, checked against the rest."""

    serve: bool
    connect: str | None
    bind: str | None
    port: int
    token: str | None

    @classmethod
    def pop_from(cls, opts: dict[str, object]) -> _TcpCommand:
        tcp = cls(
            serve=bool(opts.pop("serve")),
            connect=opts.pop("connect"),  # type: ignore[arg-type]
            bind=opts.pop("bind"),  # type: ignore[arg-type]
            port=opts.pop("port"),  # type: ignore[arg-type]
            token=opts.pop("token"),  # type: ignore[arg-type]
        )
        given = _given_options()
        if tcp.serve and tcp.connect:
            raise click.UsageError("--serve and --connect exclude each other")
        if (tcp.serve or tcp.connect) and "fence" in given:
            raise click.UsageError("--fence: an option of a worker on a shared job file, "
                                   "not of --serve or --connect")
        if tcp.serve:
            wrong = given & {"jobs", "logfile", "loglines", "one_only", "logdir", "joblog",
                             "timeout", "retries", "quiet"}
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
        return tcp

    def run(self, file: str | None, options: WorkerOptions, *, retry: bool,
            console: BinaryIO, notify: Callable[[str], None]) -> int:
        if self.connect:
            if file:
                raise click.UsageError("--connect takes no FILE: the server has it")
            return run_tcp_client(self.connect, options, token=_client_token(self.token),
                                  port=self.port, console=console, notify=notify)
        server = ServerOptions(bind=self.bind, port=self.port, token=self.token,
                               retry=retry, follow=options.follow)
        return serve_job_file(str(file), server, console=console, notify=notify)


def _given_options() -> set[str]:
    """The names of the options given on the command line (not left at their default)."""
    ctx = click.get_current_context()
    return {
        name for name in ctx.params
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    }


def _flags(names: set[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in sorted(names))


def serve_job_file(
    path: str, options: ServerOptions, *, console: BinaryIO, notify: Callable[[str], None]
) -> int:
    """Serve the jobs of the job file at ``path`` to TCP clients; return the exit status.

    Claims jobs for clients (``run_tcp_client``) with the same scheduler and
    locks as a worker, so runset and runwait work on this host unchanged.
    Writes ``Token for clients: TOKEN (...)`` to ``console``, and a line
    through ``notify`` for each connection, authentication failure and
    dropped peer.  Ends, telling its clients to end, when nothing is left
    to run (not with ``options.follow``); a first signal drains, a second
    stops the clients' jobs.  Exit status as a worker's.

    Raises RunmakerError for a bad job file, token or address, before the
    job file is touched.
    """
    jobfile = JobFile(path, warn=notify)
    try:
        check_file_locking(path, fd=jobfile.fd)
        if _writable_by_others(jobfile.fd):
            notify(f"Warning: {path}: other users can write this file, and its lines run on clients")
        if options.token is not None:
            token, origin = _read_token(options.token)
        else:
            token, origin = _make_token_file()
        listener = _listen(options.bind, options.port)
        try:
            scheduler = Scheduler(jobfile, retry=options.retry)
            try:
                server = _Server(scheduler, listener, token, options, notify)
                console.write(f"Token for clients: {token} ({origin})\n".encode())
                console.flush()
                port = listener.getsockname()[1]
                notify(
                    f"runmaker: serving {os.path.abspath(path)} on port {port} "
                    f"of {options.bind or 'every interface'}"
                )
                return server.run()
            except OSError as exc:  # the server has told its clients to stop their jobs
                scheduler.abandon()
                raise job_file_failed(path, exc) from None
            finally:
                scheduler.close()
        finally:
            listener.close()
    finally:
        jobfile.close()


def run_tcp_client(
    address: str,
    options: WorkerOptions,
    *,
    token: str,
    port: int = _TCP_PORT,
    console: BinaryIO,
    notify: Callable[[str], None],
) -> int:
    """Run jobs of the ``runmaker --serve`` at ``address`` (HOST[:PORT]); return the exit status.

    The jobs run as a worker's would (same console, records and signals),
    with RUNMAKER_FILE the path on the server.  A lost connection stops the
    running jobs (they end 'e'), then the client connects again, backing
    off, and gives up after a minute without a server.

    Raises RunmakerError for a bad address, a wrong token or a peer that is
    no runmaker server; a click.ClickException of exit status 1 on giving up.
    """
    host, port = _split_address(address, port)
    records = _Records(options, None)
    previous = _stop_signals_raise()
    try:
        return _TcpClient(host, port, token, options, records, console, notify).run()
    except _Interrupted as exc:
        notify(f"runmaker: {_signal_name(exc.signum)}: stopped while connecting")
        return _EXIT_SIGNALLED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        records.close()


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


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
    jobfile = JobFile(path, warn=notify)
    try:
        check_file_locking(path, fd=jobfile.fd)
        options.job_file = os.path.abspath(path)
        if options.fence is None:
            options.fence = default_fence(jobfile.fd)
        records = _Records(options, jobfile.identity)
        for fd, name, what in (
            (jobfile.fd, path, "its lines run as you"),
            (records.log_fd, options.logfile, "it records what your jobs did"),
            (records.joblog_fd, options.joblog, "it records what your jobs did"),
        ):
            if fd is not None and _writable_by_others(fd):
                notify(f"Warning: {name}: other users can write this file, and {what}")
        try:
            scheduler = Scheduler(jobfile, retry=retry)
            try:
                return Worker(scheduler, options, records, console=console, notify=notify).run()
            except OSError as exc:  # the Worker has killed its jobs
                scheduler.abandon()
                raise job_file_failed(path, exc) from None
            finally:
                scheduler.close()
        finally:
            records.close()
    finally:
        jobfile.close()


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

CLICK_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def echo_to_stderr(message: str) -> None:
    """The commands' way of showing a warning or notice: one line on stderr."""
    click.echo(message, err=True)


class OneLineErrorCommand(click.Command):
    """A click command whose every error is one ``Error:`` line on stderr.

    click prints a usage error with the usage and a hint line before it;
    SPEC promises scripts exactly one line starting ``Error:``, so bad
    options read like every other input error (exit status 2).
    """

    def main(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)  # type: ignore[arg-type]
        except click.ClickException as exc:
            program = kwargs.get("prog_name") or os.path.basename(sys.argv[0]) or self.name
            hint = f" (see '{program} --help')" if isinstance(exc, click.UsageError) else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.command(cls=OneLineErrorCommand, context_settings=CLICK_CONTEXT)
@click.argument("file", required=False)
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Jobs run at once by this worker; 0 = the CPUs this process may use.")
@click.option("-r", "--retry", is_flag=True, help="Also run failed (!) and error (e) jobs, once each.")
@click.option("-l", "--logfile", metavar="FILE",
              help="Append each finished job's block (last -n lines) to this shared log.")
@click.option("-n", "--loglines", type=click.IntRange(min=0), default=3, show_default=True,
              help="Lines of a job kept in its log block, its status line included; 0 = all.")
@click.option("-1", "--one-only", is_flag=True, help="Claim nothing more once one job succeeded.")
@click.option("--logdir", metavar="DIR", help="Write every job's output to DIR/LINE.out and DIR/LINE.err.")
@click.option("--joblog", metavar="FILE", help="Append a GNU parallel job log row per finished job.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop a job after SECONDS (SIGTERM, SIGKILL 5 s later); it ends '!'.")
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run a failing job up to N more times before marking it '!'.")
@click.option("--follow", is_flag=True, help="Do not exit when idle: wait for appended jobs.")
@click.option("--fence", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Kill the running jobs when the job file has not answered for SECONDS, before an "
                   "NFS server drops this host's locks; 0 = never  [default: 30 on NFSv4 mounts, at "
                   "most half the lease time; off elsewhere]")
@click.option("-q", "--quiet", is_flag=True, help="Print no executing/status lines, only job output.")
@click.option("--serve", is_flag=True,
              help="Serve FILE's jobs to TCP clients (runmaker --connect) instead of running them.")
@click.option("--connect", metavar="HOST[:PORT]", help="Run the jobs of the runmaker --serve at HOST.")
@click.option("--bind", metavar="ADDR", help="With --serve: listen on ADDR only (default: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=_TCP_PORT, show_default=True,
              help="TCP port of --serve and --connect (--serve --port 0: any free port).")
@click.option("--token", metavar="TOKEN|FILE",
              help="The shared secret, or a file holding it [--serve: a new one in ~/.runmaker.token; "
                   "--connect: that file].")
@click.version_option(__version__, "--version", prog_name="runmaker")
def main(**opts: object) -> None:
    """Run the pending jobs of FILE, up to -j at a time, with any number of
    other workers on this or other hosts sharing FILE.

    \b
    Example:
        runmaker -j8 runs.txt
        runmaker --serve runs.txt                        (on the host with the file)
        runmaker --connect lab-ws --token TOKEN -j8      (on each other host)
    """
    file = opts.pop("file")
    retry = bool(opts.pop("retry"))
    tcp = _TcpCommand.pop_from(opts)
    if not file and not tcp.connect:
        raise click.UsageError("missing the job FILE")
    jobs = int(opts.pop("jobs")) or len(os.sched_getaffinity(0))  # type: ignore[call-overload]
    options = WorkerOptions(jobs=jobs, **opts)  # type: ignore[arg-type]
    if tcp.serve or tcp.connect:
        sys.exit(tcp.run(file, options, retry=retry, console=sys.stdout.buffer, notify=echo_to_stderr))  # type: ignore[arg-type]
    code = run_worker(str(file), options, retry=retry, console=sys.stdout.buffer, notify=echo_to_stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
