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
import bisect
import collections
import errno
import fcntl
import operator
import os
import re
import select
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import click

__version__ = "1.0.0"

__all__ = [
    "APPEND_BYTE",
    "SLOT_BASE",
    "STATE_NAMES",
    "Claim",
    "JobFile",
    "RunmakerError",
    "Scheduler",
    "Worker",
    "WorkerOptions",
    "append_to_shared_file",
    "check_file_locking",
    "main",
    "run_worker",
    "short_hostname",
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
_WAITING_ABOVE = re.compile(rb"[.+r]")
_WAITING_ABOVE_RETRY = re.compile(rb"[.+r!e]")
_NORMAL_QUEUE = re.compile(rb"\.")
_NORMAL_QUEUE_RETRY = re.compile(rb"[.!e]")

_MAX_WARNINGS = 20  # mistaken lines named one by one, then one summary line
_MAX_LINE = 1 << 20  # a longer output line is cut into pieces of this size
_READ_CHUNK = 1 << 16
_REFRESH_GAP = 0.1  # seconds between looks for appended lines while busy
_POLL = 0.5  # seconds between looks while waiting for a cap, barrier or work
_KILL_GRACE = 5.0  # seconds from SIGTERM to SIGKILL
_EXIT_SIGNALLED = 130

_JOBLOG_HEADER = b"Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class RunmakerError(click.ClickException):
    """A usage or input error: the user sees one ``Error:`` line, exit status 2.

    The message names the file (and line) the user has to look at.
    """

    exit_code = 2


# --------------------------------------------------------------------------
# Locks.  Every fcntl call of the project is in these helpers.
# --------------------------------------------------------------------------


def _lock_byte(fd: int, offset: int, *, exclusive: bool, wait: bool) -> bool:
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
            fcntl.lockf(fd, kind, 1, offset)
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


def _unlock_byte(fd: int, offset: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


def _is_locked_elsewhere(fd: int, offset: int) -> bool:
    """Probe a job's state byte: True while another process holds its lock.

    A real lock attempt, released at once if won, rather than F_GETLK: over
    NFS F_GETLK may answer from stale state, a lock attempt asks the lock
    manager.  The probe is shared, so a read-only descriptor is enough, and
    it still conflicts with the exclusive job lock of a running job.  Never
    probe a byte this process holds: POSIX locks do not conflict with their
    owner, and the unlock would drop the owner's lock.
    """
    if _lock_byte(fd, offset, exclusive=False, wait=False):
        _unlock_byte(fd, offset)
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


def check_file_locking(path: str, mountinfo: str | None = None) -> None:
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
    st = os.stat(path)
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
    command and its line number, in compact arrays, so a file of a million
    lines costs tens of megabytes, not hundreds.  Lines appended later are
    indexed incrementally; finding work never rereads the whole file unless
    asked to (``read(whole=True)``).

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
        os.close(self.fd)

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
        pieces = data.split(b"\n")
        last = pieces.pop()  # b"" when data ends with a newline
        offsets, ends, lines = self.offsets, self.ends, self.lines
        pos, line = base, self.line_count
        for raw in pieces:
            line += 1
            if len(raw) >= 3 and raw[1] in _SEPARATORS and raw[0] not in _NOT_STATE:
                end = len(raw.rstrip()) if raw[-1] in _TRAILING_SPACE else len(raw)
                if end > 2:
                    offsets.append(pos)
                    ends.append(pos + end)
                    lines.append(line)
                    pos += len(raw) + 1
                    continue
            self._index_other(raw, line)
            pos += len(raw) + 1
        self.line_count = line
        if last:
            self._tail = (pos, len(offsets), len(self.barriers), line, self.max_running)
            self.line_count += 1
            if len(last) >= 3 and last[1] in _SEPARATORS and last[0] not in _NOT_STATE:
                end = len(last.rstrip())
                if end > 2:
                    offsets.append(pos)
                    ends.append(pos + end)
                    lines.append(self.line_count)
                else:
                    self._index_other(last, self.line_count)
            else:
                self._index_other(last, self.line_count)
        self.size = pos + len(last)
        return first_new

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
        self._last_rescan = 0.0
        self._rescan_cost = 0.0
        self._blocked_by: str | None = None
        self.rescan()

    # -- public ------------------------------------------------------------

    def rescan(self) -> None:
        """Reread every state byte; mark lost jobs ``e``; rebuild the queues."""
        started = time.monotonic()
        data, _, _ = self.jobfile.read(whole=True)
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

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        """Claim up to ``count`` jobs: lock, reread, write ``r`` (no fsync yet).

        ``idle`` says the caller runs nothing, so a fresh rescan is worth its
        cost before saying there is nothing left.  Sets ``idle_reason``.
        """
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_GAP:
            self._refresh()
        claims = self._claim_from_queues(count)
        fresh = False
        if len(claims) < count and (idle or now - self._last_rescan >= self._rescan_gap()):
            self.rescan()
            fresh = True
            claims += self._claim_from_queues(count - len(claims))
        self.idle_reason = self._why_idle(fresh) if len(claims) < count else None
        return claims

    def finish_job(self, claim: Claim, state: str) -> None:
        """Write a held job's final state byte; ``commit`` then releases it."""
        offset = self.jobfile.offsets[claim.index]
        os.pwrite(self.jobfile.fd, state.encode(), offset)
        self._dirty = True
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
        """Wait until every state byte written is durable and released."""
        self._committer.close()

    def _releaser(self, claim: Claim) -> Callable[[], None]:
        def release() -> None:
            _unlock_byte(self.jobfile.fd, self.jobfile.offsets[claim.index])
            self._release_slot(claim.slot)
            self._releasing.discard(claim.index)

        return release

    def replaced(self) -> bool:
        """True once the job file was replaced under us (looked at every 0.1 s)."""
        now = time.monotonic()
        if now - self._last_identity_check < _REFRESH_GAP:
            return False
        self._last_identity_check = now
        return self.jobfile.replaced()

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
        self.states[index] = _RUNNING
        claim = Claim(index, self.jobfile.lines[index], self.jobfile.command(index), slot)
        self.held[index] = claim
        self.attempted.add(index)
        return claim

    def _take_slot(self) -> int | None:
        cap = self.jobfile.max_running or 0
        for slot in range(cap):
            # Our own slot locks would not conflict with us: skip them.
            if slot not in self.held_slots and _lock_byte(
                self.jobfile.fd, SLOT_BASE + slot, exclusive=True, wait=False
            ):
                self.held_slots.add(slot)
                return slot
        return None

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
        if self._blocked_by == "cap":
            return "waiting"
        if self._blocked_by == "barrier":
            pattern = _WAITING_ABOVE_RETRY if self.retry else _WAITING_ABOVE
            if pattern.search(self.states, 0, self._first_blocking_barrier()) or not fresh:
                return "waiting"
            return "blocked"
        return "done" if fresh else "stale"

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
        return os.open(base + ".out", flags, 0o666), os.open(base + ".err", flags, 0o666)

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
        if self.log_fd is not None:
            parts = [b".-> ", command, b" (in ", os.fsencode(self.cwd), b")\n"]
            lines = list(tail or ())
            lines.append(b"+ " + status_line)
            if self.loglines:
                lines = lines[-self.loglines :]
            parts.extend(part + b"\n" for part in lines)
            append_to_shared_file(self.log_fd, b"".join(parts))
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
            append_to_shared_file(self.joblog_fd, row.encode(), header=_JOBLOG_HEADER)

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
        source: Scheduler,
        options: WorkerOptions,
        records: _Records,
        *,
        console: BinaryIO,
        notify: Callable[[str], None],
    ) -> None:
        self.source = source
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
        self._failures = 0
        host = options.host
        self._host = host.encode()
        env = dict(os.environ)
        env["RUNMAKER_FILE"] = options.job_file
        env["RUNMAKER_HOST"] = host
        self._env = env

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Run jobs until nothing is left (or a signal drains); return the exit status."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(wake_r, select.POLLIN)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
        try:
            self._loop(wake_r)
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
            self._handle_signals()
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
            timeout = self._next_timeout(now, waiting=bool(self._free_slots) and self._may_claim())
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
        return max(0.0, min(times)) if times else None

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
                deadline = time.monotonic() + _KILL_GRACE
                for job in self._running.values():
                    job.interrupted = True
                    job.kill_at = deadline
                    _signal_group(job.pid, signal.SIGTERM)

    # -- starting and ending jobs -------------------------------------------

    def _start(self, claim: Claim, attempt: int, local_slot: int) -> None:
        command = claim.command
        quoted = command.decode("utf-8", "replace").encode()
        if not self.options.quiet:
            self._console_parts.append(b"executing `" + quoted + b"'\n")
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        env = dict(self._env)
        env["RUNMAKER_LINE"] = str(claim.line)
        env["RUNMAKER_SLOT"] = str(local_slot)
        files = None
        try:
            files = self.records.open_job_files(claim.line, attempt == 1)
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
            claim.command.decode("utf-8", "replace").encode(),
        )
        if not self.options.quiet:
            self._console_parts.append(status + b"\n")
        self.records.job_ended(
            claim.command, None, status, claim.line, self.options.host, time.time(), 0.0, outcome
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
        for fd in list(job.streams):
            self._read_output(job, fd, job.streams[fd], until_empty=True)
        if job.timed_out or job.interrupted:
            # Background grandchildren of a stopped job go with it.
            _signal_group(job.pid, signal.SIGKILL)
        if job.files:
            for fd in job.files:
                os.close(fd)
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
            command.decode("utf-8", "replace").encode(),
        )
        if not self.options.quiet:
            self._console_parts.append(status + b"\n")
        self.records.job_ended(
            command,
            job.tail,
            status,
            job.claim.line,
            self.options.host,
            job.started,
            time.monotonic() - job.started_mono,
            outcome,
        )
        if outcome.state == "!" and job.attempt <= self.options.retries and not self._draining:
            self._start(job.claim, job.attempt + 1, job.local_slot)
            return
        self._finish(job.claim, outcome.state, job.local_slot)

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
            _write_all(job.files[stream], data)
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
            self._console.write(data)
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
        check_file_locking(path)
        options.job_file = os.path.abspath(path)
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
            finally:
                scheduler.close()
        finally:
            records.close()
    finally:
        jobfile.close()


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.command(context_settings=_CONTEXT)
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
@click.option("-q", "--quiet", is_flag=True, help="Print no executing/status lines, only job output.")
@click.version_option(__version__, "--version", prog_name="runmaker")
def main(**opts: object) -> None:
    """Run the pending jobs of FILE, up to -j at a time, with any number of
    other workers on this or other hosts sharing FILE.

    \b
    Example:
        runmaker -j8 runs.txt
    """
    file = opts.pop("file")
    retry = bool(opts.pop("retry"))
    if not file:
        raise click.UsageError("missing the job FILE")
    jobs = int(opts.pop("jobs")) or len(os.sched_getaffinity(0))  # type: ignore[call-overload]
    options = WorkerOptions(jobs=jobs, **opts)  # type: ignore[arg-type]
    code = run_worker(str(file), options, retry=retry, console=sys.stdout.buffer, notify=_echo_err)
    sys.exit(code)


if __name__ == "__main__":
    main()
