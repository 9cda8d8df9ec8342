"""Stress: exactly once under contention, host crashes, and a soak of all three commands.

CI runs these in a short form (well under a minute together);
``RUNMAKER_STRESS=long python -m pytest -m stress`` runs them ten times longer.
The tests check at their end that the jobs themselves saw nothing wrong
(they record every run), and that the job file differs from what was
written only in its state bytes (and in whole appended lines).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import PYTHON, ROOT, command, run, states, stress_scale, wait_for

import runmaker

SCALE = stress_scale()

pytestmark = pytest.mark.stress


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


class _JobFileBuilder:
    """Writes a job file line by line and remembers where every state byte is."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.state_offsets: list[int] = []
        self.line = 0

    def job(self, state: str, command: bytes, *, sep: bytes = b" ", tail: bytes = b"") -> int:
        self.line += 1
        self.state_offsets.append(len(self.data))
        self.data += state.encode() + sep + command + tail + b"\n"
        return self.line

    def other(self, raw: bytes) -> None:
        self.line += 1
        self.data += raw + b"\n"

    def next_line(self) -> int:
        return self.line + 1


def _assert_only_states_changed(before: bytes, after: bytes, state_offsets: list[int], final: str) -> None:
    """``after`` equals ``before`` except that every state byte is now ``final``."""
    assert len(after) == len(before), "the job file changed its length"
    for offset in state_offsets:
        state = after[offset : offset + 1]
        assert state == final.encode(), f"state byte at {offset} is {state!r}"
    masked_before, masked_after = bytearray(before), bytearray(after)
    for offset in state_offsets:
        masked_before[offset] = masked_after[offset] = 0
    if masked_before != masked_after:
        first = next(i for i, (a, b) in enumerate(zip(masked_before, masked_after)) if a != b)
        around = slice(max(first - 20, 0), first + 20)
        raise AssertionError(f"byte {first} of the job file changed: {before[around]!r} -> {after[around]!r}")


class _Started:
    """A process of a test, with its output in files (no pipe can fill and block it)."""

    def __init__(self, argv: list[str], cwd: Path, name: str) -> None:
        self.name = name
        self.out_path = cwd / f"{name}.stdout"
        self.err_path = cwd / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stderr(self) -> bytes:
        return self.err_path.read_bytes()

    def stdout(self) -> bytes:
        return self.out_path.read_bytes()


@pytest.fixture
def started() -> Iterator[list[_Started]]:
    """Every process a test starts; killed and reaped whatever happens."""
    processes: list[_Started] = []
    try:
        yield processes
    finally:
        for p in processes:
            if p.proc.poll() is None:
                p.proc.kill()
        for p in processes:
            try:
                p.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _wait_all(processes: list[_Started], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in processes:
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{p.name} still runs after {timeout}s; stderr: {p.stderr()[-2000:]!r}") from None


def _assert_clean_exit(p: _Started, code: int = 0) -> None:
    err = p.stderr()
    assert b"Traceback" not in err + p.stdout(), f"{p.name}: {err[-3000:]!r}"
    assert p.proc.returncode == code, f"{p.name} exited {p.proc.returncode}; stderr: {err[-2000:]!r}"


# --------------------------------------------------------------------------
# Exactly once: many workers with mixed -j race for the same lines
# --------------------------------------------------------------------------


def _exactly_once_file(count: int, *, capped: bool) -> tuple[_JobFileBuilder, list[int]]:
    """A job file of ``count`` jobs that each append their line number to out/LINE.

    The file is as mixed as users write them: comments (one not UTF-8), blank
    lines, tab separators, trailing blanks and CR, urgent jobs, a command
    with bytes that are not UTF-8, and a last line without its newline.
    Line 2 is an urgent job that lasts until the test has appended its jobs,
    so one worker is still there to pick them up.
    """
    rng = random.Random(count)
    b = _JobFileBuilder()
    b.other(b"# exactly once: every job appends its own line number to out/LINE")
    b.job("+", b"while [ ! -e appended ]; do sleep 0.02; done")
    if capped:
        b.other(b"#runmaker max-running 5")
    lines = []
    for i in range(count):
        if capped and i == count // 2:
            b.other(b"#runmaker barrier")
        roll = rng.random()
        if roll < 0.02:
            b.other(b"# a comment \xff\xfe that is not UTF-8")
        elif roll < 0.04:
            b.other(b"")
        line = b.next_line()
        cmd = b'echo "$RUNMAKER_LINE" >> out/%d' % line
        if rng.random() < 0.05:
            cmd += b" # \xe9t\xe9 in Latin-1"
        state = "+" if rng.random() < 0.08 else "."
        sep = b"\t" if rng.random() < 0.1 else b" "
        tail = rng.choice([b"", b"", b"", b"  ", b"\r", b" \t"])
        lines.append(b.job(state, cmd, sep=sep, tail=tail))
    # The last line has no newline (an editor may leave it so): still a job.
    b.data = b.data[:-1]
    return b, lines


@pytest.mark.timeout(90 * SCALE)
@pytest.mark.parametrize("capped", [False, True], ids=["free", "max-running-and-barrier"])
def test_every_job_runs_exactly_once_under_many_workers(
    tmp_path: Path, started: list[_Started], capped: bool
) -> None:
    """8 (long: 16) workers with -j 1..4 share 2,000 (long: 20,000) jobs, and
    jobs are appended while they run: each job runs once, with its own
    RUNMAKER_LINE, and only state bytes (and the appends) change the file."""
    count = 2000 * SCALE
    builder, lines = _exactly_once_file(count, capped=capped)
    path = tmp_path / "runs.txt"
    path.write_bytes(bytes(builder.data))
    (tmp_path / "out").mkdir()
    before = bytes(builder.data)

    jobs_per_worker = [1, 2, 3, 4] * (2 if SCALE == 1 else 4)
    for n, j in enumerate(jobs_per_worker):
        argv = command("runmaker") + ["-q", f"-j{j}", "runs.txt"]
        started.append(_Started(argv, tmp_path, f"worker{n}"))

    # Append jobs in batches while the workers run, as runset --add does.
    appended = _JobFileBuilder()
    appended.line = before.count(b"\n") + 1  # the last line lacks its newline
    fd = os.open(path, os.O_RDWR)
    try:
        wait_for(lambda: b"r" in path.read_bytes()[: 400], what="a worker to start")
        for _ in range(10):
            record = _JobFileBuilder()
            record.line = appended.line
            for _ in range(5):
                line = record.next_line()
                lines.append(record.job(".", b'echo "$RUNMAKER_LINE" >> out/%d' % line))
            # The first append also mends the missing newline of the last line.
            at = len(before) + 1 + len(appended.data)
            runmaker.append_to_shared_file(fd, bytes(record.data))
            appended.state_offsets += [at + o for o in record.state_offsets]
            appended.data += record.data
            appended.line = record.line
            time.sleep(0.02)
    finally:
        os.close(fd)
    (tmp_path / "appended").touch()

    _wait_all(started, timeout=80 * SCALE)
    # A worker that started after the others took every job says so, once.
    idle = re.compile(rb"runmaker: nothing to run in runs\.txt \((\d+) done(?:, (\d+) running)?\)\n")
    for p in started:
        _assert_clean_exit(p)
        said = idle.fullmatch(p.stderr())
        total = len(states(path))
        assert p.stderr() == b"" or (said and sum(int(n or 0) for n in said.groups()) == total), p.name

    after = path.read_bytes()
    expected = before + b"\n" + bytes(appended.data)
    offsets = builder.state_offsets + appended.state_offsets
    _assert_only_states_changed(expected, after, offsets, "d")
    out = tmp_path / "out"
    assert sorted(int(name) for name in os.listdir(out)) == sorted(lines)
    for line in lines:
        assert (out / str(line)).read_bytes() == b"%d\n" % line, f"job at line {line} ran more than once"


# --------------------------------------------------------------------------
# Host crashes: a worker and all its jobs vanish at once, others go on
# --------------------------------------------------------------------------

# One attempt of job $1, lasting $2 seconds.  How a double run is detected:
# every attempt first registers itself as running/LINE/PID.START (its pid and
# start time as the host sees them: /proc is the host's, so the pid is
# unique across the namespaces and PID.START survives pid reuse).  Then it
# looks at every other registration of its line: if that process still
# exists, is no zombie and has no SIGKILL pending, two attempts run at once.
# Registrations are never removed: an attempt killed in a crash leaves its
# file behind, and the liveness test tells a dead attempt from a live one.
#
# Why this is exact: call the attempt's body everything after its check.
# If the bodies of A and B overlap and B checks after A, then A registered
# before A checked, so before B checked, and A's body (hence A) was still
# going on when B checked: B sees A alive.  Conversely an attempt that B
# sees alive is really running B's line beside it.  A SIGKILL pending means
# the kernel is tearing the attempt down with its namespace; it runs no
# more instructions, so it is not a second run.  The unshare'd worker is
# not the namespace's init: when the namespace dies its init's exit sends
# SIGKILL to the worker and the jobs in one sweep, before the worker's locks
# can go, as they would go together when a real host dies.
_CRASH_JOB = r"""L=$1 work=$2
[ "$RUNMAKER_LINE" = "$L" ] || echo "BADLINE $L $RUNMAKER_LINE" >> bad.txt
read -r s < /proc/self/stat
set -- ${s##*) }; shift 19; me=${s%% *}.$1
: > running/$L/$me
for f in running/$L/*; do
    o=${f##*/}
    [ "$o" = "$me" ] && continue
    { read -r s < /proc/${o%%.*}/stat; } 2>/dev/null || continue
    set -- ${s##*) }; shift 19
    [ "$1" = "${o#*.}" ] || continue
    live=no
    while read -r key value; do
        case $key in
        State:) case $value in Z*|X*|x*) live=dead; break;; esac; live=yes;;
        SigPnd:|ShdPnd:) [ $(( 0x${value#${value%????}} & 256 )) -ne 0 ] && { live=dying; break; };;
        esac
    done 2>/dev/null < /proc/${o%%.*}/status
    [ $live = yes ] && echo "DOUBLE $L $me $o" >> double.txt
done
sleep "$work"
echo "$me" >> done/$L
"""


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--pid", "--uts", "--fork", "--kill-child", "true"],
            capture_output=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _host_worker(tmp_path: Path, host: str, incarnation: int, jobs: int, retry: bool) -> _Started:
    """A worker alone in its own PID and UTS namespace: a host of its own.

    The namespace's init is a shell, the worker its child; killing the
    unshare process kills the init (--kill-child), and with it everything in
    the namespace.
    """
    worker = " ".join(
        [PYTHON, str(ROOT / "runmaker.py"), "-q", f"-j{jobs}"] + (["-r"] if retry else []) + ["runs.txt"]
    )
    script = f"hostname {host} && {worker}; exit $?"
    argv = ["unshare", "--pid", "--uts", "--fork", "--kill-child", "sh", "-c", script]
    return _Started(argv, tmp_path, f"{host}.{incarnation}")


def _hosts_running_jobs(tmp_path: Path, hosts: dict[str, _Started]) -> list[str]:
    """The live hosts that run a job attempt now: one that registered as
    running/LINE/PID.START, is still that process (no zombie) and has not
    written done/LINE yet.  An attempt belongs to the host whose PID
    namespace holds it (the namespace an unshare process gives its children).
    """
    namespaces = {}
    for name, p in hosts.items():
        if p.proc.poll() is None:
            try:
                namespaces[os.readlink(f"/proc/{p.proc.pid}/ns/pid_for_children")] = name
            except OSError:
                continue  # just died
    busy = set()
    running = tmp_path / "running"
    for line in os.listdir(running):
        for attempt in os.listdir(running / line):
            pid, _, start = attempt.partition(".")
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                host = namespaces.get(os.readlink(f"/proc/{pid}/ns/pid"))
            except OSError:
                continue  # ended
            if host is None or host in busy or fields[0] == b"Z" or fields[19] != start.encode():
                continue
            try:
                finished = (tmp_path / "done" / line).read_text().split()
            except FileNotFoundError:
                finished = []
            if attempt not in finished:
                busy.add(host)
    return sorted(busy)


@pytest.mark.timeout(120 * SCALE)
def test_host_crashes_never_run_a_job_twice_at_once(tmp_path: Path, started: list[_Started]) -> None:
    """Hosts (workers in their own PID and UTS namespaces) die with SIGKILL at
    random while their jobs run and come back with -r: no job ever runs twice
    at the same time, every job ends done, and only state bytes change."""
    if not _can_unshare():
        pytest.skip("needs root and a working unshare --pid --uts")
    rng = random.Random(7)
    count = 160 * SCALE
    b = _JobFileBuilder()
    b.other(b"# host crashes: each job registers in running/LINE and looks for a live twin")
    lines = []
    for _ in range(count):
        line = b.next_line()
        work = rng.choice(["0.1", "0.2", "0.3", "0.5"])
        lines.append(b.job("+" if rng.random() < 0.1 else ".", b"sh ./job.sh %d %s" % (line, work.encode())))
    path = tmp_path / "runs.txt"
    path.write_bytes(bytes(b.data))
    before = bytes(b.data)
    (tmp_path / "job.sh").write_text(_CRASH_JOB)
    for line in lines:
        (tmp_path / "running" / str(line)).mkdir(parents=True)
    (tmp_path / "done").mkdir()

    hosts = {f"host{k}": _host_worker(tmp_path, f"host{k}", 0, 3, retry=False) for k in range(4)}
    started.extend(hosts.values())
    incarnation = 0
    kills = 0
    while kills < 8 * SCALE and set(states(path)) != {"d"}:
        time.sleep(rng.uniform(0.15, 0.5))
        # Crash only a host that runs a job right now (its attempt has
        # registered and not finished): a worker still starting (seconds on
        # a loaded machine) has nothing to lose, and the crashes must hit
        # running jobs for the test to prove anything.
        victims = wait_for(
            lambda: _hosts_running_jobs(tmp_path, hosts) or set(states(path)) == {"d"},
            timeout=60 * SCALE, what="a host running a job",
        )
        if victims is True:
            break  # every job is done
        assert isinstance(victims, list)
        host = rng.choice(victims)
        hosts[host].proc.send_signal(signal.SIGKILL)
        hosts[host].proc.wait(timeout=10)
        kills += 1
        incarnation += 1
        hosts[host] = _host_worker(tmp_path, host, incarnation, rng.randint(1, 4), retry=True)
        started.append(hosts[host])

    # The crashes are over: let the living finish, then start fresh hosts
    # with -r until every job (some lost in the last crashes) is done.
    _wait_all(list(hosts.values()), timeout=60 * SCALE)
    for _ in range(5):
        if set(states(path)) == {"d"}:
            break
        incarnation += 1
        last = _host_worker(tmp_path, "host0", incarnation, 4, retry=True)
        started.append(last)
        _wait_all([last], timeout=60 * SCALE)

    assert not (tmp_path / "double.txt").exists(), (tmp_path / "double.txt").read_text()
    assert not (tmp_path / "bad.txt").exists(), (tmp_path / "bad.txt").read_text()
    assert kills >= 1
    for p in started:
        assert b"Traceback" not in p.stderr() + p.stdout(), f"{p.name}: {p.stderr()[-3000:]!r}"
        if p.proc.returncode != -signal.SIGKILL:
            assert p.proc.returncode == 0, f"{p.name} exited {p.proc.returncode}: {p.stderr()[-2000:]!r}"
    _assert_only_states_changed(before, path.read_bytes(), b.state_offsets, "d")
    interrupted = 0
    for line in lines:
        finished = (tmp_path / "done" / str(line)).read_text().split()
        assert finished, f"job at line {line} never finished"
        attempts = os.listdir(tmp_path / "running" / str(line))
        assert set(finished) <= set(attempts)
        interrupted += len(set(attempts) - set(finished))
    # The crashes did hit running jobs (else this test proved nothing).
    assert interrupted >= 1


# --------------------------------------------------------------------------
# runset --set racing a worker: the selection holds under the job's lock
# --------------------------------------------------------------------------


@pytest.mark.timeout(60 * SCALE)
def test_runset_state_selection_holds_under_the_lock(tmp_path: Path, started: list[_Started]) -> None:
    """`runset --state '!x' --set -` reads the file, then works through 200,000
    jobs; meanwhile `runmaker -r` reruns the last one, a failed job, to done.
    When runset reaches it, it is no longer '!': it must stay done, not be
    retired after it ran (or, for `--set .`, run again)."""
    path = tmp_path / "runs.txt"
    (tmp_path / "out").mkdir()
    for n in range(SCALE):
        path.write_bytes(b"x t\n" * 200_000 + b"! echo ran >> out/%d\n" % n)
        argv = command("runset") + ["runs.txt", "--state", "!x", "--set", "-"]
        setter = _Started(argv, tmp_path, f"runset{n}")
        started.append(setter)
        # The first byte changes once runset has read the file and begun.
        wait_for(lambda: path.read_bytes()[:1] == b"-", timeout=30, what="runset to begin")
        worker = _Started(command("runmaker") + ["-q", "-r", "runs.txt"], tmp_path, f"worker{n}")
        started.append(worker)
        _wait_all([worker], timeout=30)
        assert setter.proc.poll() is None, "runset ended before the worker: the race was not run"
        _wait_all([setter], timeout=50)
        _assert_clean_exit(worker)
        _assert_clean_exit(setter)
        assert (tmp_path / "out" / str(n)).read_text() == "ran\n"
        # The rerun job stays done; runset named the 200,000 it retired in
        # its appended notice (issue 13), after the file's last line.
        notice = b"#runmaker set 1-200000\n"
        assert path.read_bytes()[-20 - len(notice) :] == b"d echo ran >> out/%d\n" % n + notice


# --------------------------------------------------------------------------
# Soak: workers, runset --add, runset --set and runwait, all at once
# --------------------------------------------------------------------------

_SOAK_SECONDS = 60 if SCALE > 1 else 10
# runset --add's one notice when the append lock stays held for a second.
_WAITING = re.compile(
    rb"runset: runs\.txt: waiting for the append lock, which another process holds \(gives up after 60 s\)\n"
)
_SET_NOTICE = re.compile(rb"#runmaker set( [0-9]+(-[0-9]+)?)*")
_SOAK_JOB = re.compile(rb'([.+rd!e\-]) (echo "\$RUNMAKER_LINE" >> out/(\w+); sleep 0\.0\d)')
_PROGRESS = re.compile(r"progress: +\d+ of +\d+ jobs processed, \d+ errors \[[=e!> ]{16}\]")


def _soak_command(rng: random.Random, name: str) -> bytes:
    return b'echo "$RUNMAKER_LINE" >> out/%s; sleep 0.0%d' % (name.encode(), rng.randint(1, 9))


class _Soak:
    """The three kinds of users of the file, each a loop in a thread until ``deadline``."""

    def __init__(self, tmp_path: Path, deadline: float) -> None:
        self.dir = tmp_path
        self.deadline = deadline
        self.adds: list[list[bytes]] = []  # the commands of each runset --add, in order
        self.rerun: list[str] = []  # patterns of the jobs set back to '.' after they were done
        self.problems: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def guarded(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except Exception as exc:  # reported by the test, not lost in a thread
            self.problems.append(f"{loop.__name__}: {exc!r}")

    def _run(self, name: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        result = run(name, *args, cwd=self.dir, input=input, timeout=60)
        self.counts[f"{name} {result.returncode}"] += 1
        if b"Traceback" in result.stdout + result.stderr:
            self.problems.append(f"{name} {args}: {result.stderr[-2000:]!r}")
        return result

    def add_jobs(self) -> None:
        rng = random.Random(1)
        while time.monotonic() < self.deadline:
            commands = [_soak_command(rng, f"a{len(self.adds)}n{k}") for k in range(rng.randint(1, 4))]
            high = ["--high"] if rng.random() < 0.2 else []
            if rng.random() < 0.5:
                result = self._run("runset", "runs.txt", *high, "--add", "-", input=b"\n".join(commands) + b"\n")
            else:
                args = [a for c in commands for a in ("--add", c.decode())]
                result = self._run("runset", "runs.txt", *high, *args)
            # It prints the line of each job it appended, one per line.  On a
            # slow disk another appender's fsyncs may hold the append lock for
            # a second: then, and only then, it says what it waits for.
            printed = result.stdout.split()
            said = _WAITING.sub(b"", result.stderr)
            if result.returncode != 0 or said or len(printed) != len(commands) or not all(
                n.isdigit() for n in printed
            ):
                self.problems.append(f"runset --add: {result.returncode} {result.stdout!r} {result.stderr!r}")
            self.adds.append(commands)
            time.sleep(rng.uniform(0, 0.1))

    def set_states(self) -> None:
        """Retire, revive and rerun jobs by pattern; list them as JSON and count them."""
        rng = random.Random(2)
        while time.monotonic() < self.deadline:
            op = rng.choice(["retire", "retire", "revive", "revive", "rerun", "json", "summary"])
            if op == "retire":  # a tenth of the pending jobs, some about to be claimed
                args = ["--state", ".+", "--grep", r"out/\w*%d;" % rng.randrange(10), "--set", "-"]
            elif op == "revive":
                args = ["--state", "-", "--grep", r"out/\w*%d;" % rng.randrange(10), "--set", "."]
            elif op == "rerun":  # a hundredth of the done jobs
                pattern = r"out/\w*%02d;" % rng.randrange(100)
                self.rerun.append(pattern)  # before: a job may run again at once
                args = ["--state", "d", "--grep", pattern, "--set", "."]
            else:
                args = [f"--{op}"]
            result = self._run("runset", "runs.txt", *args)
            if "--set" in args:
                # A job a worker holds is refused by name: exit 1, nothing else.
                refused = re.fullmatch(
                    rb"(runset: runs\.txt:\d+: running \(a worker holds its lock\); not changed\n)*", result.stderr
                )
                if result.returncode != (1 if result.stderr else 0) or not refused or result.stdout:
                    self.problems.append(f"runset --set: {result.returncode} {result.stderr!r}")
            elif result.returncode != 0 or result.stderr:
                self.problems.append(f"runset --{op}: {result.returncode} {result.stderr!r}")
            elif op == "json":
                for line in result.stdout.splitlines():
                    job = json.loads(line)
                    if job["state"] not in ".+rd-" or job["lost"] or not _SOAK_JOB.fullmatch(
                        job["state"].encode() + b" " + job["command"].encode()
                    ):
                        self.problems.append(f"runset --json: {line!r}")

    def wait_briefly(self) -> None:
        while time.monotonic() < self.deadline:
            result = self._run("runwait", "-p", "--timeout", "0.3", "--interval", "0.05", "runs.txt")
            lines = result.stderr.decode().splitlines()
            if result.returncode == 124:
                ok = lines[-1].startswith("runwait: runs.txt: timed out with ") and all(
                    _PROGRESS.fullmatch(line) for line in lines[:-1]
                )
            else:
                ok = result.returncode == 0 and all(_PROGRESS.fullmatch(line) for line in lines)
            if not ok or result.stdout:
                self.problems.append(f"runwait: {result.returncode} {result.stdout!r} {result.stderr!r}")


@pytest.mark.timeout(60 + 3 * _SOAK_SECONDS)
def test_soak_workers_runset_and_runwait_together(tmp_path: Path, started: list[_Started]) -> None:
    """Workers (-j2 --follow), runset --add, runset --set and runwait all work
    on one file for 10 s (long: a minute): no line is torn or lost, every
    added job is there once, states agree with what ran, and runwait exits 0
    once all is done."""
    rng = random.Random(3)
    b = _JobFileBuilder()
    b.other(b"# soak")
    names = [f"i{k}" for k in range(100 * _SOAK_SECONDS)]  # work for about the whole soak
    for name in names:
        b.job(".", _soak_command(rng, name))
    path = tmp_path / "runs.txt"
    path.write_bytes(bytes(b.data))
    before = bytes(b.data)
    (tmp_path / "out").mkdir()
    for n in range(3):
        argv = command("runmaker") + ["-q", "-j2", "--follow", "runs.txt"]
        started.append(_Started(argv, tmp_path, f"worker{n}"))

    soak = _Soak(tmp_path, time.monotonic() + _SOAK_SECONDS)
    threads = [threading.Thread(target=soak.guarded, args=(loop,)) for loop in (
        soak.add_jobs, soak.set_states, soak.wait_briefly
    )]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert soak.problems == [], soak.counts

    final = run("runwait", "-e", "--interval", "0.1", "runs.txt", cwd=tmp_path, timeout=120)
    assert (final.returncode, final.stdout, final.stderr) == (0, b"", b"")
    for p in started:
        p.proc.send_signal(signal.SIGTERM)
    _wait_all(started, timeout=30)
    for p in started:
        _assert_clean_exit(p, 130)
        [notice] = p.stderr().decode().splitlines()
        assert notice.startswith("runmaker: SIGTERM: draining") and "0 still running" in notice, notice

    after = path.read_bytes()
    masked = bytearray(after[: len(before)])
    for offset in b.state_offsets:
        assert masked[offset : offset + 1] in (b"d", b"-")
        masked[offset] = ord(".")
    assert bytes(masked) == before
    # Every appended line is whole, each runset --add's lines stand together
    # in the order given, and no line is lost or added twice.
    appended = after[len(before) :].split(b"\n")
    assert appended.pop() == b""
    commands = []
    for raw in appended:
        if _SET_NOTICE.fullmatch(raw):
            continue  # runset --set named the jobs it changed (issue 13)
        m = _SOAK_JOB.fullmatch(raw)
        assert m, f"torn or foreign line {raw!r}"
        commands.append(m.group(2))
    assert commands, "no job was added"
    assert sorted(commands) == sorted(c for add in soak.adds for c in add)
    for add in soak.adds:
        i = commands.index(add[0])
        assert commands[i : i + len(add)] == add
    # States agree with what ran: a retired job never ran, a done one ran once
    # (more often only if runset set it back to '.'), always with its own line.
    for number, raw in enumerate(after.split(b"\n")[:-1], start=1):
        m = _SOAK_JOB.fullmatch(raw)
        if m is None:
            continue
        state, name = m.group(1), m.group(3).decode()
        out = tmp_path / "out" / name
        runs = out.read_text().split() if out.exists() else []
        assert state in (b"d", b"-"), raw
        assert all(r == str(number) for r in runs), (name, number, runs)
        if not any(re.search(pattern, f"out/{name};") for pattern in soak.rerun):
            assert len(runs) == (1 if state == b"d" else 0), (raw, runs)
        elif state == b"d":
            assert runs, raw
