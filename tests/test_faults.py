"""Real faults (issue 11): torn appends, a hostile shared --logdir, a worker
killed alone, full disks, file limits, a read-only remount, a log directory
removed and a job file rewritten under a running worker.

Every fault is real: a size-limited tmpfs, RLIMIT_FSIZE and RLIMIT_NOFILE set
in the child, /dev/full, SIGKILL, an ext4 image remounted read-only by an
error, and a second user created for the test.  Tests that need root (mounts,
useradd) skip with the reason when not run as root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
from conftest import (
    PYTHON,
    Procs,
    alive,
    command,
    hold_shared_lock,
    holds_for,
    read_int,
    run,
    states,
    wait_for,
    write_jobs,
)

pytestmark = pytest.mark.timeout(120)

APPEND_BYTE = 2**40 - 1


# --------------------------------------------------------------------------
# Helpers: mounts, a second user, negative waits
# --------------------------------------------------------------------------


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to {what}")


@contextmanager
def tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the duration."""
    need_root("mount a size-limited tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                             check=False, capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(fs: Path, leave: int) -> None:
    """Fill the file system at ``fs`` to the last byte, then free ``leave`` bytes."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory other users can reach (pytest's own is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="runmaker-shared-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def other_user() -> Iterator[tuple[int, int]]:
    """An unprivileged user created for this test (uid, gid), removed after it."""
    need_root("create a second user for the test")
    name = f"rmk{secrets.token_hex(4)}"
    for _ in range(20):  # useradd fails while another one holds /etc/passwd's lock
        made = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=False, capture_output=True)
        if made.returncode == 0:
            break
        time.sleep(0.2)
    else:
        pytest.skip(f"cannot create a user: {made.stderr.decode().strip()}")
    try:
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        for _ in range(20):
            if subprocess.run(["userdel", name], check=False, capture_output=True).returncode in (0, 6):
                break
            time.sleep(0.2)


def as_user(user: tuple[int, int], *argv: str, cwd: Path | None = None,
            **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as ``user`` to its end; fail the test if it fails."""
    done = subprocess.run(list(argv), cwd=cwd, user=user[0], group=user[1], extra_groups=[],
                          check=False, capture_output=True, timeout=30, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    return done


def user_python(user: tuple[int, int]) -> str:
    """A Python interpreter ``user`` may run (ours may sit in root's home)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            done = subprocess.run([candidate, "-c", "pass"], user=user[0], group=user[1], extra_groups=[],
                                  check=False, capture_output=True, timeout=30)
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter the second user may run")


def stays(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Assert ``predicate`` stays false for ``seconds`` (a chance for a wrong move)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not predicate(), what
        time.sleep(0.02)


def stderr_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    return text.splitlines()


def one_error(data: bytes, pattern: str) -> None:
    """Exactly one ``Error:`` line, matching ``pattern``; no traceback."""
    errors = [line for line in stderr_lines(data) if line.startswith("Error:")]
    assert len(errors) == 1, data
    assert re.fullmatch(pattern, errors[0]), errors[0]


def read_line(stream: object, timeout: float) -> bytes:
    """One line from a child's pipe, or fail after ``timeout`` seconds."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no line within {timeout}s"
    return stream.readline()  # type: ignore[attr-defined,no-any-return]


def pids_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def kill_all(pids: list[int | None]) -> None:
    for pid in pids:
        if pid:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


# --------------------------------------------------------------------------
# 1. An append is whole or absent
# --------------------------------------------------------------------------


def dangerous_commands(data: Path, count: int, width: int = 0) -> list[bytes]:
    """Commands whose every cut is a different, dangerous command (the issue's
    ``rm -rf data/old_tmp_files`` cut to ``rm -rf data/``)."""
    pad = " #" + "x" * width if width else ""
    return [f"true {n}; rm -rf {data}/old_tmp_files{pad}".encode() for n in range(count)]


def make_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "old_tmp_files").mkdir(parents=True)
    (data / "keep.txt").write_text("keep\n")
    return data


def test_add_on_a_full_disk_appends_nothing(tmp_path: Path) -> None:
    """runset --add on a full 1 MB tmpfs: exit 1, one Error: line, the job file
    byte-identical, and a worker then runs only the job that was there."""
    data = make_data(tmp_path)
    with tmpfs(tmp_path / "fs") as fs:
        path = fs / "runs.txt"
        path.write_bytes(b". echo first\n")
        fill(fs, leave=8192)
        before = path.read_bytes()
        added = run("runset", "--add", "-", str(path), input=b"\n".join(dangerous_commands(data, 3000)))
        assert added.returncode == 1, added.stderr
        one_error(added.stderr, r"Error: \S*runs\.txt: cannot append: No space left on device; nothing was added")
        assert added.stdout == b""  # no line numbers: no job was added
        assert path.read_bytes() == before
        worker = run("runmaker", "-q", str(path))
        assert worker.returncode == 0, worker.stderr
        assert path.read_bytes() == b"d echo first\n"
    assert (data / "keep.txt").exists() and (data / "old_tmp_files").is_dir()


def _limit_file_size(size: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_add_beyond_the_file_size_limit_appends_nothing(tmp_path: Path) -> None:
    """RLIMIT_FSIZE lets 5,000 bytes of a 200 KB record through: runset cuts its
    partial record off again, says so in one line and exits 1."""
    data = make_data(tmp_path)
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo first\n")
    before = path.read_bytes()
    added = subprocess.run(
        command("runset") + ["--add", "-", str(path)], input=b"\n".join(dangerous_commands(data, 3000)),
        check=False, capture_output=True, timeout=60, preexec_fn=_limit_file_size(len(before) + 5000),
    )
    assert added.returncode == 1, added.stderr
    one_error(added.stderr, r"Error: \S*runs\.txt: cannot append: File too large; nothing was added")
    assert path.read_bytes() == before
    worker = run("runmaker", "-q", str(path))
    assert worker.returncode == 0
    assert path.read_bytes() == b"d echo first\n"
    assert (data / "keep.txt").exists() and (data / "old_tmp_files").is_dir()


def test_a_directive_cut_by_the_file_size_limit_never_takes_effect(tmp_path: Path) -> None:
    """`--max-running 30` cut after `#runmaker max-running 3` would cap the file
    at 3: the cut is taken back, the file is unchanged."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo first\n")
    before = path.read_bytes()
    cut = len(before) + len(b"#runmaker max-running 3")
    added = subprocess.run(command("runset") + ["--max-running", "30", str(path)], check=False, capture_output=True,
                           timeout=60, preexec_fn=_limit_file_size(cut))
    assert added.returncode == 1, added.stderr
    one_error(added.stderr, r"Error: \S*runs\.txt: cannot append: File too large; nothing was added")
    assert path.read_bytes() == before


def _listed_pending(path: Path) -> list[bytes]:
    listed = run("runset", "--state", ".+", str(path))
    assert listed.returncode == 0, listed.stderr
    return [line.split(b" - ", 1)[1] for line in listed.stdout.splitlines()]


def test_add_killed_mid_write_never_offers_a_cut_command(tmp_path: Path) -> None:
    """`runset --add -` SIGKILLed while it writes a 20 MB record: whatever is
    left, no pending job (as runset lists it, and so as a worker takes it) is a
    piece of a command.  Repeated until a kill lands inside the write."""
    data = tmp_path / "data"
    commands = dangerous_commands(data, 2000, width=10_000)
    stdin = tmp_path / "commands.txt"
    stdin.write_bytes(b"\n".join(commands) + b"\n")
    whole = set(commands) | {b"echo first"}
    path = tmp_path / "runs.txt"
    landed = 0
    for attempt in range(30):
        path.write_bytes(b". echo first\n")
        before = path.stat().st_size
        with open(stdin, "rb") as feed:
            adder = subprocess.Popen(command("runset") + ["--add", "-", str(path)], stdin=feed,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while path.stat().st_size == before and adder.poll() is None:
                assert time.monotonic() < deadline, "runset never began to write"
            adder.kill()
        finally:
            adder.wait(timeout=30)
        size = path.stat().st_size
        if before < size < before + stdin.stat().st_size:
            landed += 1
        for pending in _listed_pending(path):
            assert pending in whole, f"a cut command is pending: {pending[:80]!r}...{pending[-40:]!r}"
        if landed >= 3:
            break
    assert landed, "no SIGKILL landed inside the write in 30 tries"


def test_a_line_appended_in_pieces_runs_whole_once_its_newline_arrives(tmp_path: Path, procs: Procs) -> None:
    """A plain `>>` writer that flushes mid-line (perl's 8 KiB buffer): the
    half line is not run; the whole line runs once its newline arrives."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo s0 >> ran.txt\n")
    ran = tmp_path / "ran.txt"
    worker = procs.start("runmaker", "-q", "--follow", "runs.txt", cwd=tmp_path)
    wait_for(lambda: ran.exists() and ran.read_text() == "s0\n", what="the first job")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b". echo s1 >> ran.txt\n. echo A >> ran.txt")  # flushed mid-line
        wait_for(lambda: ran.read_text().startswith("s0\ns1\n"), what="the job before the half line")
        stays(lambda: states(path)[2:] != ".", 1.0, "the half line was claimed")
        os.write(fd, b"; echo B >> ran.txt\n. echo s2 >> ran.txt\n")
    finally:
        os.close(fd)
    wait_for(lambda: ran.read_text().endswith("s2\n"), what="the job after the whole line")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 130
    assert ran.read_text() == "s0\ns1\nA\nB\ns2\n"
    assert states(path) == "dddd"


def test_a_last_line_without_newline_present_at_start_runs(tmp_path: Path) -> None:
    """The other half of the rule: a last line without newline that was there
    when the worker first read the file is a job as usual."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo one\n. echo two > two.txt")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert path.read_bytes() == b"d echo one\nd echo two > two.txt"
    assert (tmp_path / "two.txt").read_text() == "two\n"


# --------------------------------------------------------------------------
# 2. Records opened safely in a shared --logdir
# --------------------------------------------------------------------------

LOGDIR_WARNING = r"Warning: logs: other users can write this log directory: they can delete your jobs' output files"


def shared_logdir(shared: Path) -> Path:
    logs = shared / "logs"
    logs.mkdir()
    os.chmod(logs, 0o777)  # world-writable, without the sticky bit
    return logs


def test_a_symlink_in_a_shared_logdir_never_redirects_output(
        shared: Path, other_user: tuple[int, int]) -> None:
    """Another user's `1.out -> ~victim/precious.txt`: precious.txt stays as it
    was; the job runs and its output goes to a new file of our own."""
    logs = shared_logdir(shared)
    victim = shared / "victim"
    victim.mkdir(mode=0o700)
    precious = victim / "precious.txt"
    precious.write_bytes(b"precious\n")
    as_user(other_user, "ln", "-s", str(precious), str(logs / "1.out"))
    as_user(other_user, "ln", "-s", str(precious), str(logs / "1.err"))
    path = write_jobs(shared / "runs.txt", ["echo secret-output"])
    result = run("runmaker", "-q", "--logdir", "logs", "runs.txt", cwd=shared)
    assert precious.read_bytes() == b"precious\n"
    assert result.returncode == 0, result.stderr
    assert states(path) == "d"
    lines = stderr_lines(result.stderr)
    assert re.fullmatch(LOGDIR_WARNING, lines[0]), lines
    assert lines[1:] == [
        f"runmaker: line 1: logs/1.{kind} was a symbolic link; replaced it with a new file"
        for kind in ("out", "err")
    ]
    for kind, text in (("out", b"secret-output\n"), ("err", b"")):
        st = os.lstat(logs / f"1.{kind}")
        assert st.st_uid == os.geteuid() and not os.path.islink(logs / f"1.{kind}")
        assert (logs / f"1.{kind}").read_bytes() == text


def test_a_fifo_in_a_shared_logdir_never_blocks_the_worker(
        shared: Path, other_user: tuple[int, int]) -> None:
    """A FIFO `2.out` (nobody reading it) hung the worker in open(): now it is
    replaced, and every job runs."""
    logs = shared_logdir(shared)
    as_user(other_user, "mkfifo", str(logs / "2.out"))
    path = write_jobs(shared / "runs.txt", ["echo one", "echo two"])
    result = run("runmaker", "-q", "--logdir", "logs", "runs.txt", cwd=shared, timeout=30)
    assert result.returncode == 0, result.stderr
    assert states(path) == "dd"
    assert stderr_lines(result.stderr)[1:] == [
        "runmaker: line 2: logs/2.out was a FIFO; replaced it with a new file"
    ]
    assert (logs / "2.out").read_bytes() == b"two\n"
    assert os.lstat(logs / "2.out").st_uid == os.geteuid()


READER = """\
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)   # opened before the job runs, kept open
print("ready", flush=True)
sys.stdin.readline()
early = os.read(fd, 4096)
try:
    later = open(sys.argv[1], "rb").read()
except PermissionError:
    later = b"denied"
print(repr(early), repr(later), flush=True)
"""


def test_a_precreated_file_in_a_shared_logdir_leaks_nothing(
        shared: Path, other_user: tuple[int, int]) -> None:
    """Another user's 0666 `1.out`, held open for reading: the job's secret goes
    to a new file of ours (mode from our umask, 077 here), never into theirs."""
    logs = shared_logdir(shared)
    as_user(other_user, "sh", "-c", f"umask 0; : > {logs}/1.out")
    (shared / "reader.py").write_text(READER)
    reader = subprocess.Popen([user_python(other_user), str(shared / "reader.py"), str(logs / "1.out")], user=other_user[0],
                              group=other_user[1], extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert read_line(reader.stdout, 20) == b"ready\n"
        path = write_jobs(shared / "runs.txt", ["echo TOP-SECRET"])
        result = subprocess.run(command("runmaker") + ["-q", "--logdir", "logs", "runs.txt"], cwd=shared,
                                check=False, capture_output=True, timeout=60, preexec_fn=lambda: os.umask(0o077))
        assert result.returncode == 0, result.stderr
        assert states(path) == "d"
        assert stderr_lines(result.stderr)[1:] == [
            f"runmaker: line 1: logs/1.out belonged to another user (uid {other_user[0]}); replaced it with a new file"
        ]
        out, _ = reader.communicate(b"go\n", timeout=20)
        assert out == b"b'' b'denied'\n"
        st = os.lstat(logs / "1.out")
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
        assert (logs / "1.out").read_bytes() == b"TOP-SECRET\n"
    finally:
        reader.kill()
        reader.communicate()


SWAPPER = """\
import os, sys
logs, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = 0
while not os.path.exists(os.path.join(logs, "stop")):
    n += 1
    for line in range(1, count + 1):
        for kind in ("out", "err"):
            name = os.path.join(logs, f"{line}.{kind}")
            tmp = os.path.join(logs, f".swap{line}{kind}")
            try:
                if n % 2:
                    os.symlink(target, tmp)
                else:
                    open(tmp, "w").close()
                os.rename(tmp, name)
            except OSError:
                pass
"""


def test_a_swap_race_in_a_shared_logdir_never_touches_the_job_file(
        shared: Path, other_user: tuple[int, int]) -> None:
    """Another user swaps every LINE.out between a symlink to the job file and
    a plain file as fast as it can: the job file is never truncated or written
    but for its state bytes, every job runs, the worker never fails."""
    logs = shared_logdir(shared)
    count = 40
    path = write_jobs(shared / "runs.txt", [f"echo job {n}" for n in range(1, count + 1)])
    before = path.read_bytes()
    (shared / "swapper.py").write_text(SWAPPER)
    swapper = subprocess.Popen([user_python(other_user), str(shared / "swapper.py"), str(logs), str(path), str(count)],
                               user=other_user[0], group=other_user[1], extra_groups=[])
    try:
        result = run("runmaker", "-q", "-j2", "--logdir", "logs", "runs.txt", cwd=shared, timeout=90)
    finally:
        (logs / "stop").touch()
        swapper.wait(timeout=20)
    assert path.read_bytes() == before.replace(b". echo", b"d echo")
    assert result.returncode == 0, result.stderr
    for line in stderr_lines(result.stderr)[1:]:
        assert re.fullmatch(r"runmaker: line \d+: logs/\d+\.(out|err) (was a symbolic link|belonged to another "
                            r"user \(uid \d+\)|was replaced while it was opened)(; replaced it with a new file"
                            r"|; its output is not recorded)", line), line


def test_foreign_owned_log_files_are_input_errors(shared: Path, other_user: tuple[int, int]) -> None:
    """-l and --joblog never write a file another user owns: exit 2, one line,
    nothing changed."""
    path = write_jobs(shared / "runs.txt", ["echo a"])
    os.chmod(shared, 0o777)
    for option, name, what in (("-l", "their.log", "log file"), ("--joblog", "their.tsv", "job log")):
        as_user(other_user, "sh", "-c", f"umask 0; echo theirs > {shared}/{name}")
        result = run("runmaker", option, name, "runs.txt", cwd=shared)
        assert result.returncode == 2
        one_error(result.stderr, rf"Error: {re.escape(name)}: belongs to another user \(uid {other_user[0]}\), "
                                 rf"cannot be the {what}")
        assert (shared / name).read_bytes() == b"theirs\n"
        assert path.read_bytes() == b". echo a\n"


def test_a_logdir_removed_mid_run_is_made_again(tmp_path: Path, procs: Procs) -> None:
    """`rm -rf` of --logdir while a job runs: the directory is made again, every
    later job runs and has its files; no job ends `e` for it."""
    count = 30
    path = write_jobs(tmp_path / "runs.txt", ["touch started; while [ ! -e go ]; do sleep 0.01; done"]
                      + [f"echo out-{n}" for n in range(2, count + 1)])
    logs = tmp_path / "logs"
    worker = procs.start("runmaker", "-q", "--logdir", "logs", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists() and (logs / "1.out").exists(), what="the first job")
    shutil.rmtree(logs)
    (tmp_path / "go").touch()
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert states(path) == "d" * count
    assert stderr_lines(err) == ["runmaker: logs: the log directory was removed; made it again"]
    for n in range(2, count + 1):
        assert (logs / f"{n}.out").read_text() == f"out-{n}\n"


# --------------------------------------------------------------------------
# 3. Jobs never outlive their worker
# --------------------------------------------------------------------------

# A job that records its shell's pid and a background grandchild's, then waits.
STAY = 'sleep 60 & echo $! > gc.$RUNMAKER_LINE; echo $$ > pid.$RUNMAKER_LINE; wait'


def _job_pids(tmp_path: Path, lines: list[int]) -> list[int]:
    pids: list[int] = []
    for line in lines:
        for name in (f"pid.{line}", f"gc.{line}"):
            pid = wait_for(lambda name=name: read_int(tmp_path / name), what=name)
            assert isinstance(pid, int)
            pids.append(pid)
    return pids


@pytest.mark.parametrize("how", ["worker-alone", "worker-process-group"])
def test_jobs_die_within_a_second_of_their_worker(tmp_path: Path, procs: Procs, how: str) -> None:
    """SIGKILL of the worker process only (the OOM killer), or of its process
    group (Slurm's proctrack/pgid on scancel): every job's whole process group
    is killed at once by the worker's guardian, and the jobs are lost (`r`,
    unlocked)."""
    path = write_jobs(tmp_path / "runs.txt", [STAY, STAY])
    worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, start_new_session=True)
    pids = _job_pids(tmp_path, [1, 2])
    try:
        if how == "worker-alone":
            os.kill(worker.pid, signal.SIGKILL)
        else:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        # The guardian kills them as soon as its pipe closes (milliseconds);
        # the deadline allows for a loaded machine, not for a slow design.
        wait_for(lambda: pids_gone(pids), timeout=10.0, what="the jobs to go with their worker")
    finally:
        kill_all(list(pids))
    assert states(path) == "rr"
    listed = run("runset", "runs.txt", cwd=tmp_path)
    assert listed.stdout.decode().count("[lost]") == 2


# A job whose child leaves its process group (and session) for one of its own.
ESCAPE = 'setsid sleep 60 & echo $! > escaped; echo $$ > pid.1; wait'


def test_a_killed_workers_unannounced_job_is_found_by_its_token(tmp_path: Path, procs: Procs) -> None:
    """What the guardian never heard of (a job spawned just before the worker
    died, or, as here, a process a job moved into a session of its own) is
    found by the worker's RUNMAKER_WORKER_TOKEN in its environment and killed
    once the worker is SIGKILLed."""
    path = write_jobs(tmp_path / "runs.txt", [ESCAPE])
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    job = wait_for(lambda: read_int(tmp_path / "pid.1"), what="the job")
    escaped = wait_for(lambda: read_int(tmp_path / "escaped"), what="the escaped process")
    assert isinstance(job, int) and isinstance(escaped, int)
    try:
        wait_for(lambda: os.getsid(escaped) == escaped, what="the process to have its own session")
        assert os.getsid(job) == job != escaped
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: pids_gone([job, escaped]), timeout=10.0, what="the job and what it moved away to go")
    finally:
        kill_all([job, escaped])
    assert states(path) == "r"


def _guardian_of(worker: int) -> int:
    """The pid of the worker's guardian (its child running the guardian's code)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    code = f.read()
            except OSError:
                continue
            if parent == worker and b"RUNMAKER_WORKER_TOKEN" in code:
                return int(entry)
    raise AssertionError(f"worker {worker} has no guardian")


@pytest.mark.parametrize("guardian", ["as-started", "killed-and-restarted"])
def test_a_worker_that_ends_normally_leaves_what_its_jobs_left(tmp_path: Path, procs: Procs, guardian: str) -> None:
    """The token is looked for only when the worker died: a worker that ends
    normally (here drained by SIGTERM, its job done) kills nothing a job left
    running on purpose, also when its first guardian was killed and another
    started in its place."""
    path = write_jobs(tmp_path / "runs.txt", ["setsid sleep 60 & echo $! > escaped"])
    worker = procs.start("runmaker", "-q", "--follow", "runs.txt", cwd=tmp_path)
    escaped = None
    try:
        wait_for(lambda: states(path) == "d", what="the job to be done")
        escaped = read_int(tmp_path / "escaped")
        assert isinstance(escaped, int)
        if guardian == "killed-and-restarted":
            os.kill(_guardian_of(worker.pid), signal.SIGKILL)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == 130, err
        holds_for(lambda: alive(escaped), 0.5, what="the process the job left")
    finally:
        kill_all([escaped])


# A job that finds an earlier copy of itself still running (not a zombie
# that init has yet to reap) records the overlap.
OVERLAP = ('for p in $(cat pids.$RUNMAKER_LINE 2>/dev/null); do '
           's=$(sed "s/.*) //" /proc/$p/stat 2>/dev/null | cut -c1); '
           'if [ -n "$s" ] && [ "$s" != Z ]; then echo $RUNMAKER_LINE >> overlaps; fi; done; '
           'echo $$ >> pids.$RUNMAKER_LINE; sleep 2')


def test_a_rerun_after_a_killed_worker_never_overlaps(tmp_path: Path, procs: Procs) -> None:
    """A worker SIGKILLed alone while two jobs run; `-r` at once runs each job
    once more and no job finds an earlier copy of itself still running."""
    path = write_jobs(tmp_path / "runs.txt", [OVERLAP] * 4)
    first = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
    orphans = []
    for line in (1, 2):
        orphans.append(wait_for(lambda line=line: read_int(tmp_path / f"pids.{line}"), what=f"job {line}"))
    try:
        first.kill()
        first.wait(timeout=10)
        rerun = run("runmaker", "-q", "-r", "-j4", "runs.txt", cwd=tmp_path)
    finally:
        kill_all(orphans)  # type: ignore[arg-type]
    assert rerun.returncode == 0, rerun.stderr
    assert not (tmp_path / "overlaps").exists(), (tmp_path / "overlaps").read_text()
    assert states(path) == "dddd"
    assert [len((tmp_path / f"pids.{n}").read_text().split()) for n in (1, 2, 3, 4)] == [2, 2, 1, 1]


# --------------------------------------------------------------------------
# 4. No write to the console, stderr or a record stops the worker
# --------------------------------------------------------------------------

CONSOLE_NOTICE = r"runmaker: cannot write to the console, its output is lost: No space left on device; the jobs go on"


def _console_cannot_be_written(tmp_path: Path, jobs: list[str], console: BinaryIO) -> None:
    """Run ``jobs`` at -j2 with stdout on ``console``, which cannot take it:
    every job is done, and stderr holds the one notice."""
    path = write_jobs(tmp_path / "runs.txt", jobs)
    result = subprocess.run(command("runmaker") + ["-j2", "runs.txt"], cwd=tmp_path, stdout=console,
                            stderr=subprocess.PIPE, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert states(path) == "ddd"
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and re.fullmatch(CONSOLE_NOTICE, lines[0]), lines


def test_stdout_on_dev_full_the_jobs_go_on(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        _console_cannot_be_written(tmp_path, ["echo one", "echo two; sleep 0.2", "echo three"], full)


def test_stdout_on_a_full_tmpfs_the_jobs_go_on(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs, open(fs / "console.txt", "wb") as console:
        _console_cannot_be_written(tmp_path, ["seq 200000", "echo two", "sleep 0.3; echo three"], console)


def test_stderr_on_dev_full_the_jobs_go_on(tmp_path: Path) -> None:
    """Warnings and notices that cannot be written are dropped; the jobs run."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b".mistaken\n. echo one\n. echo two\n")
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command("runmaker") + ["-q", "runs.txt"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=full, timeout=60, check=False)
    assert result.returncode == 0
    assert states(path) == "dd"
    assert [line.split(b": ", 1)[1] for line in result.stdout.splitlines()] == [b"one", b"two"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_tcp_server_with_stderr_on_dev_full_serves_on(tmp_path: Path, procs: Procs) -> None:
    """A server whose stderr is full (it prints its port and client notices
    there) serves every job all the same and ends when they are done."""
    path = write_jobs(tmp_path / "runs.txt", [f"echo {n}" for n in range(10)])
    token = tmp_path / "token"
    token.write_text(f"test-{secrets.token_hex(16)}\n")
    env = dict(os.environ, HOME=str(tmp_path))
    port = _free_port()
    with open("/dev/full", "wb") as full:
        server = subprocess.Popen(command("runmaker") + ["--serve", "--bind", "127.0.0.1", "--port", str(port),
                                                         "--token", str(token), "runs.txt"],
                                  cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=full)
    procs.procs.append(server)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(lambda: server.poll() is not None or listening(), what="the server to listen")
    assert server.poll() is None, "the server died"
    client = procs.start("runmaker", "-q", "--connect", f"127.0.0.1:{port}", "--token", str(token), "-j2",
                         cwd=tmp_path, env=env)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert server.wait(timeout=30) == 0
    assert states(path) == "d" * 10


def test_records_on_a_full_disk_the_jobs_go_on(tmp_path: Path) -> None:
    """-l, --joblog and --logdir on a full tmpfs: one notice for each, every job
    ends `d`, and the log and job log hold whole blocks and rows only."""
    count = 40
    path = write_jobs(tmp_path / "runs.txt", [f"head -c 3000 /dev/zero | tr '\\0' x; echo; echo done-{n}"
                                              for n in range(count)])
    with tmpfs(tmp_path / "fs") as fs:
        (fs / "out.log").write_bytes(b"")
        (fs / "jobs.tsv").write_bytes(b"")
        fill(fs, leave=20000)
        result = run("runmaker", "-q", "-l", f"{fs}/out.log", "--joblog", f"{fs}/jobs.tsv",
                     "--logdir", f"{fs}/logs", "runs.txt", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert states(path) == "d" * count
        lines = stderr_lines(result.stderr)
        assert 1 <= len(lines) <= 3, lines
        for line in lines:
            assert re.fullmatch(r"runmaker: \S+: cannot write the (log file|job log|--logdir files) "
                                r"\(No space left on device\); .*", line), line
        log = (fs / "out.log").read_bytes()
        blocks = [b for b in log.split(b".-> ") if b]
        for block in blocks:
            assert block.endswith(b'"\n') and b"\n+ status (" in block, block[-200:]
        for row in (fs / "jobs.tsv").read_bytes().splitlines(keepends=True):
            assert row.endswith(b"\n") and row.count(b"\t") == 8, row


# --------------------------------------------------------------------------
# 5. Limits checked up front
# --------------------------------------------------------------------------


def _limit_open_files(count: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return limit


def test_jobs_beyond_the_open_file_limit_are_a_usage_error(tmp_path: Path) -> None:
    """`-j 600` under `ulimit -n 1024` left every job `r`; now it is refused up
    front, naming the limit, and a -j that fits runs every job."""
    path = write_jobs(tmp_path / "runs.txt", ["true"] * 20)
    before = path.read_bytes()
    refused = subprocess.run(command("runmaker") + ["-j", "600", "runs.txt"], cwd=tmp_path, check=False, capture_output=True,
                             timeout=60, preexec_fn=_limit_open_files(1024))
    assert refused.returncode == 2
    one_error(refused.stderr, r"Error: -j 600: .*open-file limit \(ulimit -n\) is 1024.*")
    assert path.read_bytes() == before
    fits = subprocess.run(command("runmaker") + ["-q", "-j", "20", "runs.txt"], cwd=tmp_path, check=False, capture_output=True,
                          timeout=60, preexec_fn=_limit_open_files(128))
    assert fits.returncode == 0, fits.stderr
    assert states(path) == "d" * 20


def _starve_of_descriptors(tmp_path: Path, procs: Procs) -> tuple[subprocess.Popen[bytes], Path, int]:
    """A worker (-j2) running a job that waits for ``go``, whose open-file
    limit is then lowered under it (prlimit) to its lowest free descriptor
    number, so that it can open no new descriptor (those it has stay; a
    job's start needs more than the first job frees when it ends), and a job
    appended to it: the second job is claimed and waits.  Returns the worker,
    the job file and the old limit."""
    path = write_jobs(tmp_path / "runs.txt", ["touch started; while [ ! -e go ]; do sleep 0.01; done"])
    # Descriptors inherited from the parent take the low numbers, so the
    # worker's own lie above them and the limit set below stays above the
    # number it polls (poll() refuses more descriptors than the limit).
    inherited = [os.open(os.devnull, os.O_RDONLY) for _ in range(32)]
    try:
        worker = procs.start("runmaker", "-q", "-j3", "runs.txt", cwd=tmp_path, pass_fds=inherited)
    finally:
        for fd in inherited:
            os.close(fd)
    # Running, not just claimed: its start holds descriptors only meanwhile.
    wait_for(lambda: (tmp_path / "started").exists(), what="the first job to run")
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{worker.pid}/fd")}
    lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)
    old, hard = resource.prlimit(worker.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(worker.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    added = run("runset", "runs.txt", "--add", "echo ran >> second", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    wait_for(lambda: states(path) == "rr", what="the second job to be claimed")
    # A job waiting for descriptors: the worker claims no more, though a slot is free.
    added = run("runset", "runs.txt", "--add", "echo ran >> third", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    holds_for(lambda: states(path) == "rr." and not (tmp_path / "second").exists() and worker.poll() is None,
              1.0, what="the second job waiting, the third unclaimed, the worker alive")
    return worker, path, old


def test_out_of_descriptors_at_run_time_a_job_starts_later(tmp_path: Path, procs: Procs) -> None:
    """Out of descriptors (EMFILE), a claimed job is not marked failed: it
    waits, with one notice, and starts once the limit is raised again."""
    worker, path, old = _starve_of_descriptors(tmp_path, procs)
    resource.prlimit(worker.pid, resource.RLIMIT_NOFILE, (old, resource.prlimit(worker.pid, resource.RLIMIT_NOFILE)[1]))
    wait_for(lambda: (tmp_path / "second").exists(), what="the second job to start")
    (tmp_path / "go").touch()
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert states(path) == "ddd"
    assert (tmp_path / "second").read_text() == (tmp_path / "third").read_text() == "ran\n"
    [said] = stderr_lines(err)
    assert re.fullmatch(r"runmaker: out of file descriptors \(Too many open files; ulimit -n is \d+\): "
                        r"claimed jobs wait to start until some are free", said), said


def test_a_job_waiting_for_descriptors_goes_back_when_the_worker_stops(tmp_path: Path, procs: Procs) -> None:
    """A claimed job still waiting for descriptors when the worker is told to
    stop, with nothing else running, never starts: it goes back to ``.``."""
    worker, path, _ = _starve_of_descriptors(tmp_path, procs)
    (tmp_path / "go").touch()
    wait_for(lambda: states(path) == "dr.", what="the first job to end")
    holds_for(lambda: states(path) == "dr." and worker.poll() is None, 1.0,
              what="the second job waiting with nothing running")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 130, err  # stopped by a signal (SPEC 6)
    assert states(path) == "d.."
    assert not (tmp_path / "second").exists()


# --------------------------------------------------------------------------
# 6. A file shrunk under a worker is never written again
# --------------------------------------------------------------------------


def test_a_file_truncated_and_rewritten_is_never_written(tmp_path: Path, procs: Procs) -> None:
    """The worker says the file shrank; the file is then rewritten in place,
    longer than before: the running job's end writes nothing into it."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo first\n. while [ ! -e go ]; do sleep 0.01; done\n")
    worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
    wait_for(lambda: path.read_bytes()[:1] == b"d" and path.read_bytes()[13:14] == b"r",
             what="the first job done and the second running")
    os.truncate(path, 0)
    assert worker.stderr is not None
    said = read_line(worker.stderr, 20).decode()
    assert "replaced or shrunk" in said, said
    new = b". echo NEW1\n. echo NEW2\n. echo NEW3\n"
    with open(path, "r+b") as f:
        f.write(new)
    (tmp_path / "go").touch()
    _, err = worker.communicate(timeout=20)
    assert worker.returncode == 1
    assert stderr_lines(err) == []
    assert path.read_bytes() == new


# --------------------------------------------------------------------------
# 7. The file system failing under a worker
# --------------------------------------------------------------------------


@contextmanager
def ext4_image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 file system in a file, mounted with errors=remount-ro; yields
    the mount point and the file that makes it fail (trigger_fs_error)."""
    need_root("mount an ext4 image")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=False, capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.decode().strip()}")
    mounted = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], check=False, capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount an ext4 image: {mounted.stderr.decode().strip()}")
    try:
        source = subprocess.run(["findmnt", "-no", "SOURCE", str(mnt)], check=False, capture_output=True, text=True).stdout
        trigger = Path("/sys/fs/ext4") / os.path.basename(source.strip()) / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"{trigger} is missing: cannot make the file system fail")
        yield mnt, trigger
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32): every later I/O on the file system fails with EIO
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def shut_down(mnt: Path) -> None:
    """Make every later read and write on the ext4 file system at ``mnt`` fail
    with EIO, as a dying disk does (the ioctl behind xfstests' godown)."""
    fd = os.open(mnt, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    except OSError as exc:
        pytest.skip(f"cannot shut the ext4 file system down: {exc.strerror}")
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["read-only", "EIO"])
def test_a_failing_file_system_ends_the_worker_with_its_jobs_stopped(
    tmp_path: Path, procs: Procs, how: str
) -> None:
    """The job file's file system turns read-only (EROFS) or fails every I/O
    (EIO) under a worker: it stops its other running job, prints one Error:
    line and exits 1."""
    with ext4_image(tmp_path) as (mnt, trigger):
        path = write_jobs(mnt / "runs.txt", [
            f"touch {tmp_path}/started; while [ ! -e {tmp_path}/go ]; do sleep 0.01; done",
            f"echo $$ > {tmp_path}/pid2; exec sleep 60",
            "echo never",
        ])
        worker = procs.start("runmaker", "-q", "-j2", str(path), cwd=tmp_path)
        second = wait_for(lambda: read_int(tmp_path / "pid2"), what="the second job")
        assert isinstance(second, int)
        try:
            wait_for(lambda: (tmp_path / "started").exists(), what="the first job")
            if how == "EIO":
                shut_down(mnt)
            else:
                trigger.write_text("runmaker test\n")
            (tmp_path / "go").touch()
            out, err = worker.communicate(timeout=30)
            assert worker.returncode == 1
            said = "Read-only file system" if how == "read-only" else r"input/output error \(EIO\)"
            one_error(err, rf"Error: \S*runs\.txt: .*{said}.*")
            wait_for(lambda: not alive(second), timeout=5, what="the second job to be stopped")
            assert b"never" not in out
        finally:
            kill_all([second])


def test_a_job_file_on_a_full_disk_ends_the_worker_with_its_jobs_stopped(tmp_path: Path, procs: Procs) -> None:
    """The job file's disk has no room left under it (an ext4 image whose
    backing tmpfs is full, so its writes come back ENOSPC): the worker stops
    its running jobs, prints one Error: line and exits 1; no later job runs."""
    need_root("mount a tmpfs and an ext4 image")
    jobs = [f"echo $$ > {tmp_path}/pid{n}; sleep 1" for n in (1, 2, 3, 4)] + ["echo never"]
    with tmpfs(tmp_path / "store", "24m") as store, ext4_image(store) as (mnt, _):
        fill(store, 0)  # the image is sparse: every block the job file gets now has no room behind it
        path = write_jobs(mnt / "runs.txt", jobs)
        worker = procs.start("runmaker", "-q", "-j2", str(path), cwd=tmp_path)
        out, err = worker.communicate(timeout=60)
        pids = [read_int(tmp_path / f"pid{n}") for n in (1, 2, 3, 4)]
        try:
            assert worker.returncode == 1, err
            one_error(err, r"Error: \S*runs\.txt: the file system failed under this worker "
                           r"\(No space left on device\); its running jobs were stopped")
            for pid in pids:
                if pid:
                    wait_for(lambda: not alive(pid), timeout=5, what=f"job process {pid} to be stopped")
            assert b"never" not in out
        finally:
            kill_all(pids)


# --------------------------------------------------------------------------
# 9. What cannot be prevented: a reader holding locks; runset says what it waits for
# --------------------------------------------------------------------------

def test_runset_add_says_what_it_waits_for(tmp_path: Path, procs: Procs) -> None:
    """A process that may only read the job file holds a shared lock on its
    append byte: runset --add says it waits for that lock, and appends once
    it is released."""
    path = write_jobs(tmp_path / "runs.txt", ["echo a"])
    holder = hold_shared_lock(procs, path, APPEND_BYTE)
    try:
        assert holder.stdin is not None
        adder = procs.start("runset", "--add", "echo b", "runs.txt", cwd=tmp_path)
        assert adder.stderr is not None
        said = read_line(adder.stderr, 20).decode()
        assert re.fullmatch(r"runset: runs\.txt: waiting for the append lock, which another process holds"
                            r" \(gives up after \d+ s\)\n", said), said
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        _, err = adder.communicate(timeout=20)
        assert adder.returncode == 0, err
        assert path.read_bytes() == b". echo a\n. echo b\n"
    finally:
        holder.kill()
        holder.communicate()


@pytest.mark.parametrize("timeout", ["1e300", "inf"])
def test_a_huge_timeout_is_never_a_crash(tmp_path: Path, procs: Procs, timeout: str) -> None:
    """--timeout far beyond any clock (the poll timeout would overflow while
    the worker drains): the job runs to its end."""
    path = write_jobs(tmp_path / "runs.txt", ["touch started; while [ ! -e go ]; do sleep 0.01; done"])
    worker = procs.start("runmaker", "-q", "--timeout", timeout, "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the job")
    worker.send_signal(signal.SIGTERM)  # drain: no more claims, so no poll interval bounds the wait
    assert worker.stderr is not None
    assert b"draining" in read_line(worker.stderr, 20)
    (tmp_path / "go").touch()
    _, err = worker.communicate(timeout=20)
    assert stderr_lines(err) == []
    assert worker.returncode == 130
    assert states(path) == "d"


def test_runwait_with_a_huge_interval_waits(tmp_path: Path, procs: Procs) -> None:
    """`runwait --interval 1e300` (a sleep beyond any clock) waits, and a
    signal ends it as usual: no traceback."""
    write_jobs(tmp_path / "runs.txt", ["true"])
    waiter = procs.start("runwait", "--progress", "--interval", "1e300", "runs.txt", cwd=tmp_path)
    assert waiter.stderr is not None
    assert read_line(waiter.stderr, 20).startswith(b"progress:")  # its first look is done
    stays(lambda: waiter.poll() is not None, 1.0, "runwait ended while a job was pending")
    waiter.send_signal(signal.SIGINT)
    _, err = waiter.communicate(timeout=20)
    assert stderr_lines(err) == []
    assert waiter.returncode == 130
