"""Records of finished jobs (-l/-n, --logdir, --joblog), --timeout and --retries,
run as real worker processes."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import alive, read_int, run, states, wait_for, write_jobs
from runmaker import host_name

PY = sys.executable

HOST = host_name()
_TAG = re.compile(r"\(" + re.escape(HOST) + r",(\d+)\)")

JOBLOG_HEADER = ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command"]


def unpid(text: str) -> tuple[str, set[str]]:
    """Text with every ``(HOST,PID)`` made ``(HOST,PID)``, and the pids seen."""
    pids = set(_TAG.findall(text))
    return _TAG.sub("(HOST,PID)", text), pids


def blocks_of(log: str) -> list[list[str]]:
    """The log's blocks, each a list of lines starting with its ``.-> `` header."""
    blocks: list[list[str]] = []
    for line in log.splitlines():
        if line.startswith(".-> "):
            blocks.append([line])
        else:
            assert blocks, f"a line before any header: {line!r}"
            blocks[-1].append(line)
    return blocks


def joblog_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == JOBLOG_HEADER
    rows = []
    for line in lines[1:]:
        fields = line.split("\t")
        assert len(fields) == 9, line
        assert fields != JOBLOG_HEADER, "the header was written twice"
        rows.append(dict(zip(JOBLOG_HEADER, fields)))
    return rows


def kill(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------
# -l / -n: the shared log
# --------------------------------------------------------------------------

JOBS = ["echo a; echo b", "echo x >&2; echo y >&2; exit 2", "seq 1 10", "true", "printf 'no newline'"]


def expected_blocks(cwd: str, loglines: int) -> str:
    outputs = [
        [": stdout (HOST,PID): a", ": stdout (HOST,PID): b"],
        ["! stderr (HOST,PID): x", "! stderr (HOST,PID): y"],
        [f": stdout (HOST,PID): {i}" for i in range(1, 11)],
        [],
        [": stdout (HOST,PID): no newline"],
    ]
    codes = [0, 2, 0, 0, 0]
    text = []
    for command, output, code in zip(JOBS, outputs, codes):
        lines = output + [f'+ status (HOST,PID): exit {code} "{command}"']
        if loglines:
            lines = lines[-loglines:]
        text.append(f".-> {command} (in {cwd})")
        text.extend(lines)
    return "\n".join(text) + "\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loglines", [3, 0, 1])
def test_log_blocks_are_runmaker4s(tmp_path, loglines):
    write_jobs(tmp_path / "runs.txt", JOBS)
    result = run("runmaker", "-l", "out.log", "-n", str(loglines), "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == b""
    log = (tmp_path / "out.log").read_text()  # created, since it was missing
    text, _ = unpid(log)
    assert text == expected_blocks(os.path.realpath(tmp_path), loglines)
    for block in blocks_of(log):
        assert len(unpid("\n".join(block[1:]))[1]) == 1  # one job's pid throughout
    # With -l the console has the executing and status lines only.
    console, _ = unpid(result.stdout.decode())
    expected = []
    for command, code in zip(JOBS, [0, 2, 0, 0, 0]):
        expected += [
            f"executing `{command}'",
            f'status (HOST,PID): forked "{command}"',
            f'status (HOST,PID): exit {code} "{command}"',
        ]
    assert console.splitlines() == expected


@pytest.mark.timeout(30)
def test_default_loglines_is_three_and_blocks_append_to_an_existing_log(tmp_path):
    (tmp_path / "out.log").write_text("earlier text without newline")
    write_jobs(tmp_path / "runs.txt", ["seq 1 5"])
    result = run("runmaker", "--logfile", "out.log", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    text, _ = unpid((tmp_path / "out.log").read_text())
    assert text == (
        "earlier text without newline\n"
        f".-> seq 1 5 (in {os.path.realpath(tmp_path)})\n"
        ": stdout (HOST,PID): 4\n"
        ": stdout (HOST,PID): 5\n"
        '+ status (HOST,PID): exit 0 "seq 1 5"\n'
    )


@pytest.mark.timeout(60)
def test_four_workers_append_whole_blocks_and_rows(tmp_path, procs):
    count = 80
    commands = []
    for n in range(1, count + 1):
        commands.append(f"echo out-{n}; echo err-{n} >&2; echo more-{n}")
    path = write_jobs(tmp_path / "runs.txt", commands)
    workers = [
        procs.start("runmaker", "-j2", "-n", "0", "-l", "out.log", "--joblog", "jobs.tsv", "runs.txt",
                    cwd=tmp_path)
        for _ in range(4)
    ]
    for worker in workers:
        assert worker.wait(timeout=40) == 0
    assert states(path) == "d" * count

    cwd = os.path.realpath(tmp_path)
    seen = []
    for block in blocks_of((tmp_path / "out.log").read_text()):
        m = re.fullmatch(r"\.-> echo out-(\d+); echo err-\1 >&2; echo more-\1 \(in (.*)\)", block[0])
        assert m, block[0]
        n, where = m.groups()
        assert where == cwd
        body, pids = unpid("\n".join(block[1:]))
        assert len(pids) == 1
        lines = body.splitlines()
        assert len(lines) == 4, block
        assert sorted(lines[:3]) == sorted([
            f": stdout (HOST,PID): out-{n}",
            f"! stderr (HOST,PID): err-{n}",
            f": stdout (HOST,PID): more-{n}",
        ])
        assert lines[0] == f": stdout (HOST,PID): out-{n}" or lines[0].startswith("! stderr")
        assert lines[3] == f'+ status (HOST,PID): exit 0 "{commands[int(n) - 1]}"'
        seen.append(int(n))
    assert sorted(seen) == list(range(1, count + 1))

    rows = joblog_rows(tmp_path / "jobs.tsv")
    assert sorted(int(r["Seq"]) for r in rows) == list(range(1, count + 1))
    for row in rows:
        assert row["Command"] == commands[int(row["Seq"]) - 1]
        assert (row["Host"], row["Exitval"], row["Signal"]) == (HOST, "0", "0")


# --------------------------------------------------------------------------
# --joblog
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_joblog_fields(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text(
        "# first line is no job\n"
        ". sleep 0.3\n"
        ". exit 3\n"
        "\n"
        ". kill -TERM $$\n"
        ". echo tab\there\n"
    )
    before = time.time()
    result = run("runmaker", "-q", "--joblog", "jobs.tsv", "runs.txt", cwd=tmp_path)
    after = time.time()
    assert result.returncode == 1
    raw = (tmp_path / "jobs.tsv").read_text()
    assert raw.startswith("\t".join(JOBLOG_HEADER) + "\n")
    rows = [line.split("\t", 8) for line in raw.splitlines()[1:]]
    assert [(r[0], r[6], r[7], r[8]) for r in rows] == [
        ("2", "0", "0", "sleep 0.3"),
        ("3", "3", "0", "exit 3"),
        ("5", "0", str(int(signal.SIGTERM)), "kill -TERM $$"),
        ("6", "0", "0", "echo tab\there"),
    ]
    for r in rows:
        assert r[1] == HOST
        assert re.fullmatch(r"\d+\.\d{3}", r[2]) and re.fullmatch(r"\d+\.\d{3}", r[3])
        assert before - 0.001 <= float(r[2]) <= after
        assert (r[4], r[5]) == ("0", "0")
    assert 0.3 <= float(rows[0][3]) < 5
    assert float(rows[1][2]) >= float(rows[0][2]) + 0.3  # started after the first ended

    # A second run appends rows and no second header.
    write_jobs(path, ["true"])
    assert run("runmaker", "-q", "--joblog", "jobs.tsv", "runs.txt", cwd=tmp_path).returncode == 0
    text = (tmp_path / "jobs.tsv").read_text()
    assert text.count("Seq\tHost") == 1
    assert text.splitlines()[-1].split("\t")[0] == "1"
    assert text.splitlines()[-1].split("\t")[8] == "true"


# --------------------------------------------------------------------------
# --logdir
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_logdir_files_are_streamed_while_the_job_runs(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", [
        "echo early; echo e1 >&2; while [ ! -e go ]; do sleep 0.01; done; echo late; printf e2 >&2",
        "echo second",
    ])
    worker = procs.start("runmaker", "-q", "--logdir", "logs/sub", "runs.txt", cwd=tmp_path)
    out, err = tmp_path / "logs/sub/1.out", tmp_path / "logs/sub/1.err"
    wait_for(lambda: out.exists() and out.read_bytes() == b"early\n", what="1.out while it runs")
    wait_for(lambda: err.exists() and err.read_bytes() == b"e1\n", what="1.err while it runs")
    assert worker.poll() is None
    (tmp_path / "go").touch()
    assert worker.wait(timeout=20) == 0
    assert out.read_bytes() == b"early\nlate\n"
    assert err.read_bytes() == b"e1\ne2"
    assert (tmp_path / "logs/sub/2.out").read_bytes() == b"second\n"
    assert (tmp_path / "logs/sub/2.err").read_bytes() == b""
    assert states(path) == "dd"


# --------------------------------------------------------------------------
# --timeout
# --------------------------------------------------------------------------


GRANDCHILD = """\
import os, signal, time
def on_term(signum, frame):
    open("got_term", "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
open("gc2", "w").write(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.timeout(30)
def test_timeout_stops_the_whole_group_and_leaves_nothing_behind(tmp_path):
    # Two background grandchildren: one notes the SIGTERM sent to the whole
    # group; one ignores SIGTERM, so only the SIGKILL sent to the group when
    # the job ends takes it away.
    (tmp_path / "grandchild.py").write_text(GRANDCHILD)
    job = (
        f"{PY} grandchild.py & "
        "(trap '' TERM; exec sh -c 'echo $$ > gc; exec sleep 60') & "
        "while [ ! -e gc2 ] || [ ! -e gc ]; do sleep 0.01; done; "
        "trap 'sleep 0.3; exit 1' TERM; wait"
    )
    path = write_jobs(tmp_path / "runs.txt", [job, "echo next"])
    result = run("runmaker", "--timeout", "1", "-l", "out.log", "--joblog", "jobs.tsv", "runs.txt",
                 cwd=tmp_path)
    grandchildren = [read_int(tmp_path / "gc"), read_int(tmp_path / "gc2")]
    try:
        assert None not in grandchildren
        for pid in grandchildren:
            wait_for(lambda: not alive(pid), timeout=5, what="the grandchildren to go")
    finally:
        for pid in grandchildren:
            kill(pid)
    assert (tmp_path / "got_term").exists()  # SIGTERM went to the whole group
    assert result.returncode == 1
    assert states(path) == "!d"
    console, _ = unpid(result.stdout.decode())
    assert console.splitlines()[:3] == [
        f"executing `{job}'",
        f'status (HOST,PID): forked "{job}"',
        f'status (HOST,PID): timeout "{job}"',
    ]
    text, _ = unpid((tmp_path / "out.log").read_text())
    assert text.splitlines()[:2] == [
        f".-> {job} (in {os.path.realpath(tmp_path)})",
        f'+ status (HOST,PID): timeout "{job}"',
    ]
    rows = joblog_rows(tmp_path / "jobs.tsv")
    assert (rows[0]["Seq"], rows[0]["Exitval"]) == ("1", "-1")
    # The job ended on its own after SIGTERM: no 5 s wait for SIGKILL.
    assert 1.0 <= float(rows[0]["JobRuntime"]) < 4.5
    assert (rows[1]["Seq"], rows[1]["Exitval"]) == ("2", "0")


@pytest.mark.timeout(30)
def test_timeout_sends_sigkill_five_seconds_after_sigterm(tmp_path):
    job = "trap '' TERM; echo $$ > jobpid; while :; do sleep 0.05; done"
    path = write_jobs(tmp_path / "runs.txt", [job])
    started = time.monotonic()
    result = run("runmaker", "--timeout", "0.2", "--joblog", "jobs.tsv", "runs.txt", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert states(path) == "!"
    assert elapsed >= 5.2
    console, _ = unpid(result.stdout.decode())
    assert console.splitlines()[-1] == f'status (HOST,PID): timeout "{job}"'
    row = joblog_rows(tmp_path / "jobs.tsv")[0]
    assert (row["Exitval"], row["Signal"]) == ("-1", str(int(signal.SIGKILL)))
    assert 5.2 <= float(row["JobRuntime"]) < 9
    assert not alive(read_int(tmp_path / "jobpid") or 0)


# --------------------------------------------------------------------------
# --retries
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_retries_until_success_logs_every_attempt(tmp_path):
    job = 'echo try >> tries; n=$(wc -l < tries); echo "attempt $n"; [ "$n" -ge 3 ]'
    path = write_jobs(tmp_path / "runs.txt", [job])
    result = run("runmaker", "--retries", "3", "-l", "out.log", "--joblog", "jobs.tsv",
                 "--logdir", "logs", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert states(path) == "d"
    assert (tmp_path / "tries").read_text() == "try\n" * 3
    console, _ = unpid(result.stdout.decode())
    assert [line for line in console.splitlines() if line.startswith("status")] == [
        f'status (HOST,PID): forked "{job}"',
        f'status (HOST,PID): exit 1 "{job}"',
        f'status (HOST,PID): forked "{job}"',
        f'status (HOST,PID): exit 1 "{job}"',
        f'status (HOST,PID): forked "{job}"',
        f'status (HOST,PID): exit 0 "{job}"',
    ]
    blocks = blocks_of((tmp_path / "out.log").read_text())
    assert [unpid("\n".join(b[1:]))[0] for b in blocks] == [
        f': stdout (HOST,PID): attempt {n}\n+ status (HOST,PID): exit {int(n < 3)} "{job}"'
        for n in (1, 2, 3)
    ]
    assert [(r["Seq"], r["Exitval"]) for r in joblog_rows(tmp_path / "jobs.tsv")] == [
        ("1", "1"), ("1", "1"), ("1", "0"),
    ]
    # The per-job file holds every attempt's output.
    assert (tmp_path / "logs/1.out").read_text() == "attempt 1\nattempt 2\nattempt 3\n"


@pytest.mark.timeout(30)
def test_retries_exhausted_end_failed(tmp_path):
    path = write_jobs(tmp_path / "runs.txt", ["echo x >> tries; exit 1", "echo y >> other"])
    result = run("runmaker", "-q", "--retries", "2", "--joblog", "jobs.tsv", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert states(path) == "!d"
    assert (tmp_path / "tries").read_text() == "x\n" * 3  # one run and two retries
    assert (tmp_path / "other").read_text() == "y\n"
    assert [(r["Seq"], r["Exitval"]) for r in joblog_rows(tmp_path / "jobs.tsv")] == [
        ("1", "1"), ("1", "1"), ("1", "1"), ("2", "0"),
    ]


@pytest.mark.timeout(30)
def test_no_retries_by_default(tmp_path):
    path = write_jobs(tmp_path / "runs.txt", ["echo x >> tries; exit 1"])
    assert run("runmaker", "-q", "runs.txt", cwd=tmp_path).returncode == 1
    assert states(path) == "!"
    assert (tmp_path / "tries").read_text() == "x\n"


# --------------------------------------------------------------------------
# Bad paths: checked before any job runs
# --------------------------------------------------------------------------

BAD_PATHS = [
    ("-l", "adir"),
    ("-l", "/proc/runmaker-none/out.log"),
    ("-l", "runs.txt"),
    ("-l", "link-to-runs.txt"),
    ("-l", "fifo"),
    ("--logfile", "nodir/out.log"),
    ("--joblog", "adir"),
    ("--joblog", "/proc/runmaker-none/jobs.tsv"),
    ("--joblog", "runs.txt"),
    ("--logdir", "runs.txt"),
    ("--logdir", "afile"),
    ("--logdir", "/proc/runmaker-none/logs"),
    ("--logdir", "afile/sub"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("option, value", BAD_PATHS)
def test_unusable_record_paths_are_input_errors(tmp_path, option, value):
    path = write_jobs(tmp_path / "runs.txt", ["echo ran >> ran"])
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "link-to-runs.txt").symlink_to("runs.txt")
    os.mkfifo(tmp_path / "fifo")
    before = path.read_bytes()
    result = run("runmaker", option, value, "runs.txt", cwd=tmp_path, timeout=20)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("Error: "), stderr
    assert value in stderr
    assert result.stdout == b""
    assert path.read_bytes() == before
    assert not (tmp_path / "ran").exists()
    assert (tmp_path / "afile").read_text() == "x\n"
