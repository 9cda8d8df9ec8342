"""The worker command, run as real processes: console lines, states, exit codes,
many workers on one file, lost jobs, signals, a replaced file, input errors."""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
from pathlib import Path

import pytest

from conftest import alive, group_running, kill_group, read_int, run, states, wait_exit, wait_for, write_jobs
from runmaker import JobFile, _is_locked_elsewhere, __version__, host_name

HOST = re.escape(host_name())
PY = sys.executable


def lines_of(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def console_pattern(*expected: str) -> list[re.Pattern[str]]:
    """Console lines with ``HOST,PID`` standing for this host and any pid."""
    return [re.compile(re.escape(line).replace(re.escape("HOST,PID"), HOST + r",(\d+)") + "$")
            for line in expected]


def match_console(out: bytes, *expected: str) -> list[str]:
    """Assert the console is exactly ``expected``; return the pid of every tagged line."""
    got = lines_of(out)
    patterns = console_pattern(*expected)
    assert len(got) == len(patterns), "\n".join(got)
    pids = []
    for line, pattern in zip(got, patterns):
        m = pattern.match(line)
        assert m, f"{line!r} does not match {pattern.pattern!r}"
        pids.extend(m.groups())
    return pids


def group_gone(pgid: int) -> bool:
    return not group_running(pgid)


# --------------------------------------------------------------------------
# Console format
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_console_lines_are_runmaker4s(tmp_path):
    write_jobs(tmp_path / "runs.txt", [
        "echo out; echo two",
        "echo err >&2",
        "printf partial",
        "exit 3",
        "kill -TERM $$",
    ])
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == b""
    pids = match_console(
        result.stdout,
        "executing `echo out; echo two'",
        'status (HOST,PID): forked "echo out; echo two"',
        "stdout (HOST,PID): out",
        "stdout (HOST,PID): two",
        'status (HOST,PID): exit 0 "echo out; echo two"',
        "executing `echo err >&2'",
        'status (HOST,PID): forked "echo err >&2"',
        "stderr (HOST,PID): err",
        'status (HOST,PID): exit 0 "echo err >&2"',
        "executing `printf partial'",
        'status (HOST,PID): forked "printf partial"',
        "stdout (HOST,PID): partial",
        'status (HOST,PID): exit 0 "printf partial"',
        "executing `exit 3'",
        'status (HOST,PID): forked "exit 3"',
        'status (HOST,PID): exit 3 "exit 3"',
        "executing `kill -TERM $$'",
        'status (HOST,PID): forked "kill -TERM $$"',
        'status (HOST,PID): signal SIGTERM "kill -TERM $$"',
    )
    per_job = [pids[0:4], pids[4:7], pids[7:10], pids[10:12], pids[12:14]]
    assert all(len(set(p)) == 1 for p in per_job)
    assert len({p[0] for p in per_job}) == 5
    assert states(tmp_path / "runs.txt") == "ddd!!"


@pytest.mark.timeout(30)
def test_undecodable_bytes_are_replaced_on_the_console_but_run_as_bytes(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". printf '\\377\\n' > out; echo \xff\n")
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    shown = "printf '\\377\\n' > out; echo \ufffd"
    match_console(
        result.stdout,
        f"executing `{shown}'",
        f'status (HOST,PID): forked "{shown}"',
        "stdout (HOST,PID): \ufffd",
        f'status (HOST,PID): exit 0 "{shown}"',
    )
    assert b"stdout (" in result.stdout and b": \xff\n" in result.stdout  # the job's bytes as they are
    assert (tmp_path / "out").read_bytes() == b"\xff\n"
    assert path.read_bytes() == b"d printf '\\377\\n' > out; echo \xff\n"


@pytest.mark.timeout(30)
def test_lines_of_concurrent_jobs_are_never_cut(tmp_path):
    # Two jobs print long lines at once, some longer than a pipe's buffer.
    script = tmp_path / "spew.py"
    script.write_text(
        "import sys\n"
        "tag, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
        "out = sys.stdout if tag in 'AB' else sys.stderr\n"
        "for i in range(n):\n"
        "    out.write(f'{tag}{i:05d}' + tag * size + '\\n')\n"
        "    out.flush()\n"
    )
    write_jobs(tmp_path / "runs.txt", [
        f"{PY} spew.py A 300 3000 & {PY} spew.py C 300 2000; wait",
        f"{PY} spew.py B 20 200000 & {PY} spew.py D 300 1000; wait",
    ])
    result = run("runmaker", "-j2", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen: dict[str, list[int]] = {"A": [], "B": [], "C": [], "D": []}
    size = {"A": 3000, "B": 200000, "C": 2000, "D": 1000}
    tagged = re.compile(rf"(stdout|stderr) \({HOST},(\d+)\): ([ABCD])(\d{{5}})([ABCD]*)$")
    for line in lines_of(result.stdout):
        if line.startswith(("executing `", "status (")):
            continue
        m = tagged.match(line)
        assert m, f"a cut line: {line[:80]!r}..."
        stream, _, tag, number, body = m.groups()
        assert body == tag * size[tag], f"line {tag}{number} is cut"
        assert stream == ("stdout" if tag in "AB" else "stderr")
        seen[tag].append(int(number))
    assert seen == {"A": list(range(300)), "B": list(range(20)), "C": list(range(300)), "D": list(range(300))}


def blocked_writing_stdout(pid: int) -> bool:
    """True while a thread of ``pid`` sleeps in a write to its fd 1 (its full console pipe)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/syscall") as f:
                args = f.read().split()
            with open(f"/proc/{pid}/task/{task}/wchan") as f:
                wchan = f.read()
        except OSError:
            continue
        if "pipe_write" in wchan or (len(args) > 1 and args[1] == "0x1" and "poll" not in wchan):
            return True
    return False


@pytest.mark.timeout(30)
def test_a_signal_during_a_blocked_console_write_loses_nothing(tmp_path, procs):
    # Unbuffered, sys.stdout.buffer is a raw FileIO: SIGCHLD arriving while
    # the worker blocks on a full console pipe makes its write a partial one.
    write_jobs(tmp_path / "runs.txt", [
        f"{PY} -c \"print('A' * 300000)\"",
        "echo $$ > pid2; while [ ! -e go ]; do sleep 0.01; done",
    ])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, env=env)
    pid2 = wait_for(lambda: read_int(tmp_path / "pid2"), what="job 2")
    wait_for(lambda: blocked_writing_stdout(worker.pid), what="the worker to block on its console")
    (tmp_path / "go").touch()
    wait_for(lambda: not alive(pid2), what="job 2 to end while the worker blocks")
    out, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    match_console(out, "stdout (HOST,PID): " + "A" * 300000)
    assert states(tmp_path / "runs.txt") == "dd"


# --------------------------------------------------------------------------
# States, order and exit codes
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_order_and_which_states_run(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text(
        ". echo 1 >> order\n"
        "+ echo 2 >> order\n"
        "# comment\n"
        ". echo 3 >> order\n"
        "+ echo 4 >> order\n"
        "- echo 5 >> order\n"
        "d echo 6 >> order\n"
        "x echo 7 >> order\n"
        "! echo 8 >> order\n"
        "e echo 9 >> order\n"
    )
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "order").read_text().split() == ["2", "4", "1", "3"]
    assert states(path) == "dddd-dx!e"


@pytest.mark.timeout(30)
def test_state_bytes_land_on_tab_crlf_and_unterminated_lines(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b"#c\r\n.\techo tab > t \r\n\r\n+ echo crlf > c\r\n. echo last > l")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == b"#c\r\nd\techo tab > t \r\n\r\nd echo crlf > c\r\nd echo last > l"
    assert [(tmp_path / n).read_bytes() for n in "tcl"] == [b"tab\n", b"crlf\n", b"last\n"]


@pytest.mark.timeout(30)
def test_exit_codes_all_done_some_failed_nothing_to_do(tmp_path):
    write_jobs(tmp_path / "ok.txt", ["true", "true"])
    assert run("runmaker", "-q", "ok.txt", cwd=tmp_path).returncode == 0
    assert states(tmp_path / "ok.txt") == "dd"

    write_jobs(tmp_path / "bad.txt", ["true", "false", "true"])
    result = run("runmaker", "-q", "bad.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert states(tmp_path / "bad.txt") == "d!d"

    for content, said in (
        ("", "no jobs"),
        ("# nothing\n\n", "no jobs"),
        ("d true\n! false\ne false\n- true\n", "1 done, 1 failed, 1 error, 1 retired; -r reruns them"),
    ):
        (tmp_path / "idle.txt").write_text(content)
        result = run("runmaker", "idle.txt", cwd=tmp_path)
        assert (result.returncode, result.stdout) == (0, b"")
        assert result.stderr.decode() == f"runmaker: nothing to run in idle.txt ({said})\n"  # one line, says why
        assert (tmp_path / "idle.txt").read_text() == content


@pytest.mark.timeout(30)
def test_job_environment_process_group_and_stdin(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "names = ['RUNMAKER_FILE', 'RUNMAKER_LINE', 'RUNMAKER_SLOT', 'RUNMAKER_HOST']\n"
        "print('|'.join(os.environ.get(n, '-') for n in names))\n"
        "print(os.getpgid(0), os.getsid(0), os.readlink('/proc/self/fd/0'), sys.stdin.read() == '')\n"
        "open('slot.' + os.environ['RUNMAKER_LINE'], 'w').close()\n"
        "import time\n"
        "while not all(os.path.exists(f'slot.{n}') for n in (2, 3)):\n"
        "    time.sleep(0.01)\n"
    )
    path = tmp_path / "runs.txt"
    path.write_text(f"# two jobs at once\n. {PY} probe.py\n. {PY} probe.py\n")
    result = run("runmaker", "-j2", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = lines_of(result.stdout)
    forked = {}
    for line in out:
        m = re.match(rf'status \({HOST},(\d+)\): forked ', line)
        if m:
            forked[m.group(1)] = True
    assert len(forked) == 2
    env_lines = {}
    for line in out:
        m = re.match(rf"stdout \({HOST},(\d+)\): (.*)$", line)
        if m:
            env_lines.setdefault(m.group(1), []).append(m.group(2))
    assert set(env_lines) == set(forked)
    slots, lines = set(), set()
    for pid, (env_line, proc_line) in env_lines.items():
        file, line, slot, host = env_line.split("|")
        assert file == str(tmp_path / "runs.txt")
        assert host == host_name()
        lines.add(line)
        slots.add(slot)
        pgid, sid, stdin, empty = proc_line.split()
        assert pgid == sid == pid  # the shell the worker started leads its own group
        assert stdin == "/dev/null" and empty == "True"
    assert lines == {"2", "3"}
    assert slots == {"0", "1"}


@pytest.mark.timeout(30)
def test_jobs_0_means_the_cpus_this_process_may_use(tmp_path, procs):
    cpus = len(os.sched_getaffinity(0))
    job = ("echo $RUNMAKER_SLOT > slot.$RUNMAKER_LINE; touch started.$RUNMAKER_LINE; "
           "while [ ! -e go ]; do sleep 0.01; done")
    write_jobs(tmp_path / "runs.txt", [job] * (2 * cpus))
    worker = procs.start("runmaker", "-q", "-j", "0", "runs.txt", cwd=tmp_path)
    wait_for(lambda: len(list(tmp_path.glob("started.*"))) >= cpus, what=f"{cpus} jobs at once")
    (tmp_path / "go").touch()
    assert wait_exit(worker) == 0
    slots = {int(p.read_text()) for p in tmp_path.glob("slot.*")}
    assert slots == set(range(cpus))
    assert states(tmp_path / "runs.txt") == "d" * (2 * cpus)


@pytest.mark.timeout(30)
def test_one_only_stops_after_the_first_success(tmp_path):
    write_jobs(tmp_path / "runs.txt", ["exit 1", "true", "true"])
    result = run("runmaker", "-1", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1  # one job it ran failed
    assert states(tmp_path / "runs.txt") == "!d."
    write_jobs(tmp_path / "more.txt", ["true", "true"])
    result = run("runmaker", "--one-only", "more.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert states(tmp_path / "more.txt") == "d."


@pytest.mark.timeout(30)
def test_quiet_prints_only_the_jobs_output(tmp_path):
    write_jobs(tmp_path / "runs.txt", ["echo hi", "echo oops >&2; exit 4"])
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    match_console(result.stdout, "stdout (HOST,PID): hi", "stderr (HOST,PID): oops")
    assert result.stderr == b""


@pytest.mark.timeout(30)
def test_version(tmp_path):
    result = run("runmaker", "--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"runmaker, version {__version__}"


@pytest.mark.timeout(30)
def test_retry_reruns_failed_and_error_jobs_once(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text(
        "! echo a >> ran; exit 1\n"
        "e echo b >> ran\n"
        ". echo c >> ran\n"
        "d echo d >> ran\n"
        "- echo f >> ran\n"
    )
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "ran").read_text() == "c\n"
    result = run("runmaker", "-q", "-r", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "ran").read_text() == "c\na\nb\n"  # each once, no second round
    assert states(path) == "!ddd-"
    result = run("runmaker", "-q", "--retry", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "ran").read_text() == "c\na\nb\na\n"


# --------------------------------------------------------------------------
# Many workers, appended jobs
# --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_four_workers_run_every_job_exactly_once(tmp_path, procs):
    path = tmp_path / "runs.txt"
    lines = []
    for i in range(200):
        if i % 50 == 0:
            lines.append(f"# block {i}")
        lines.append(". echo $RUNMAKER_LINE >> ran")
    path.write_text("\n".join(lines) + "\n")
    job_lines = [n for n, text in enumerate(lines, 1) if text.startswith(".")]
    workers = [procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path) for _ in range(4)]
    for worker in workers:
        assert wait_exit(worker, 40) == 0
    assert states(path) == "d" * 200
    ran = sorted(int(x) for x in (tmp_path / "ran").read_text().split())
    assert ran == job_lines


@pytest.mark.timeout(30)
def test_jobs_appended_while_a_worker_runs_are_picked_up(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text(". touch started; while [ ! -e go ]; do sleep 0.01; done")  # no newline
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="job 1")
    with open(path, "ab") as f:  # as runset --add does it: mend the newline first
        f.write(b"\n. echo appended > appended\n")
    (tmp_path / "go").touch()
    assert wait_exit(worker) == 0
    assert (tmp_path / "appended").read_text() == "appended\n"
    assert states(path) == "dd"


# --------------------------------------------------------------------------
# Lost jobs
# --------------------------------------------------------------------------


def job_state_and_lock(path: Path, line: int) -> tuple[str, bool]:
    """A job's state byte and whether its lock is held, through the core's own functions."""
    jobfile = JobFile(str(path), writable=False)
    try:
        data, _, _ = jobfile.read(whole=True)
        index = jobfile.index_of_line(line)
        assert index is not None
        state = chr(jobfile.states_of(data)[index])
        return state, _is_locked_elsewhere(jobfile.fd, jobfile.offsets[index])
    finally:
        jobfile.close()


@pytest.mark.timeout(30)
def test_a_killed_workers_job_is_lost_then_error_then_rerun(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text(
        "d true\n"
        ". if [ -e jobpid ]; then echo again > again; else echo $$ > jobpid; exec sleep 60; fi\n"
    )
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    pgid = wait_for(lambda: read_int(tmp_path / "jobpid"), what="the job's pid")
    try:
        assert job_state_and_lock(path, 2) == ("r", True)  # running: byte locked
        worker.kill()
        wait_exit(worker)
        assert job_state_and_lock(path, 2) == ("r", False)  # lost: r, unlocked
    finally:
        kill_group(pgid)  # if the worker's guardian has not killed it yet
    wait_for(lambda: group_gone(pgid), what="the job's group to go")

    other = run("runmaker", "runs.txt", cwd=tmp_path)
    assert other.returncode == 0  # it ran nothing: marking a lost job is no failure
    assert other.stdout == b""
    assert job_state_and_lock(path, 2) == ("e", False)
    assert states(path) == "de"

    rerun = run("runmaker", "-q", "-r", "runs.txt", cwd=tmp_path)
    assert rerun.returncode == 0
    assert states(path) == "dd"
    assert (tmp_path / "again").read_text() == "again\n"


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_first_signal_drains(tmp_path, procs, signum):
    path = write_jobs(tmp_path / "runs.txt", [
        "touch started; while [ ! -e go ]; do sleep 0.01; done; echo finished",
        "echo second > second",
    ])
    err = tmp_path / "err"
    with open(err, "wb") as err_file, open(tmp_path / "out", "wb") as out_file:
        worker = procs.start("runmaker", "runs.txt", cwd=tmp_path, stdout=out_file, stderr=err_file)
    wait_for(lambda: (tmp_path / "started").exists(), what="job 1")
    worker.send_signal(signum)
    wait_for(lambda: b"draining" in err.read_bytes(), what="the drain message")
    (tmp_path / "go").touch()
    assert wait_exit(worker) == 130
    stderr = err.read_text()
    assert re.fullmatch(
        rf"runmaker: {signum.name}: draining, claiming no more jobs; "
        r"1 still running \(a second SIGINT, SIGTERM or SIGHUP kills them\)\n",
        stderr,
    ), stderr
    assert states(path) == "d."
    assert not (tmp_path / "second").exists()
    out = (tmp_path / "out").read_bytes()
    match_console(
        out,
        "executing `touch started; while [ ! -e go ]; do sleep 0.01; done; echo finished'",
        'status (HOST,PID): forked "touch started; while [ ! -e go ]; do sleep 0.01; done; echo finished"',
        "stdout (HOST,PID): finished",
        'status (HOST,PID): exit 0 "touch started; while [ ! -e go ]; do sleep 0.01; done; echo finished"',
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_second_signal_kills_the_running_jobs(tmp_path, procs, signum):
    path = write_jobs(tmp_path / "runs.txt", [
        "echo $$ > jobpid; while :; do sleep 0.05; done",
        "echo $$ > jobpid2; while :; do sleep 0.05; done",
        "echo third > third",
    ])
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, stderr=err_file)
    pgids = [wait_for(lambda: read_int(tmp_path / name), what=name) for name in ("jobpid", "jobpid2")]
    try:
        worker.send_signal(signum)
        wait_for(lambda: b"draining" in err.read_bytes(), what="the drain message")
        worker.send_signal(signum)
        assert wait_exit(worker) == 130
        assert states(path) == "ee."
        assert all(group_gone(pgid) for pgid in pgids)
    finally:
        for pgid in pgids:
            kill_group(pgid)
    lines = err.read_text().splitlines()
    assert lines[0].startswith(f"runmaker: {signum.name}: draining")
    assert "2 still running" in lines[0]
    assert lines[1] == f"runmaker: {signum.name}: killing 2 running jobs"
    assert len(lines) == 2
    assert not (tmp_path / "third").exists()


# --------------------------------------------------------------------------
# A file replaced under a worker
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_replaced_file_stops_claiming_and_is_never_written(tmp_path, procs):
    path = tmp_path / "runs.txt"
    write_jobs(path, ["touch started; while [ ! -e go ]; do sleep 0.01; done"])
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, stderr=err_file)
    wait_for(lambda: (tmp_path / "started").exists(), what="job 1")
    old = os.open(path, os.O_RDONLY)
    try:
        # An editor saves a new copy, with one more job, over the path.
        new_content = path.read_bytes() + b". echo new > new\n"
        (tmp_path / "runs.txt.new").write_bytes(new_content)
        os.replace(tmp_path / "runs.txt.new", path)
        wait_for(lambda: b"replaced" in err.read_bytes(), what="the worker to notice")
        assert worker.poll() is None  # its job still runs
        (tmp_path / "go").touch()
        assert wait_exit(worker) != 0
        assert os.pread(old, 1, 0) == b"d"  # the job it ran ends in the old file
    finally:
        os.close(old)
    assert path.read_bytes() == new_content  # the new file is untouched
    assert not (tmp_path / "new").exists()
    lines = err.read_text().splitlines()
    assert len(lines) == 1, lines
    assert "runs.txt" in lines[0] and "1 still running" in lines[0]


# --------------------------------------------------------------------------
# Malformed lines and input errors
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_malformed_lines_are_warned_once_and_skipped(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text(". echo ok > ok\n.cmd\n#runmaker frobnicate\n. echo ok2 > ok2\n")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    warnings = result.stderr.decode().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("Warning: runs.txt:2: ")
    assert warnings[1].startswith("Warning: runs.txt:3: ")
    assert path.read_text() == "d echo ok > ok\n.cmd\n#runmaker frobnicate\nd echo ok2 > ok2\n"


def assert_input_error(result, path: Path | None, before: bytes | None, tmp_path: Path) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert result.stdout == b""
    if path is not None:
        assert path.read_bytes() == before
    assert not (tmp_path / "ran").exists()
    return errors[0]


@pytest.mark.timeout(30)
def test_missing_directory_and_fifo_job_files_are_input_errors(tmp_path):
    result = run("runmaker", "nothing.txt", cwd=tmp_path)
    line = assert_input_error(result, None, None, tmp_path)
    assert "nothing.txt" in line
    assert result.stderr.decode().splitlines() == [line]

    (tmp_path / "adir").mkdir()
    result = run("runmaker", "adir", cwd=tmp_path)
    line = assert_input_error(result, None, None, tmp_path)
    assert "adir" in line
    assert result.stderr.decode().splitlines() == [line]

    os.mkfifo(tmp_path / "fifo")
    result = run("runmaker", "fifo", cwd=tmp_path, timeout=10)
    line = assert_input_error(result, None, None, tmp_path)
    assert "fifo" in line
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    ["-j", "-1"], ["-j", "x"], ["--jobs=-3"], ["--timeout", "0"], ["--timeout", "-1"],
    ["--timeout", "soon"], ["-n", "-1"], ["--loglines", "x"], ["--retries", "-2"], ["--bogus"],
])
def test_bad_option_values_are_input_errors(tmp_path, args):
    path = write_jobs(tmp_path / "runs.txt", ["echo ran >> ran"])
    before = path.read_bytes()
    assert_input_error(run("runmaker", *args, "runs.txt", cwd=tmp_path), path, before, tmp_path)


@pytest.mark.timeout(30)
def test_no_job_file_is_a_usage_error(tmp_path):
    assert_input_error(run("runmaker", cwd=tmp_path), None, None, tmp_path)


@pytest.mark.timeout(30)
def test_a_job_that_cannot_start_ends_error(tmp_path):
    # A command longer than the kernel takes for one argument: exec fails.
    long_command = "echo " + "x" * 200_000
    path = write_jobs(tmp_path / "runs.txt", [long_command, "echo next > next"])
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert states(path) == "ed"
    lines = lines_of(result.stdout)
    assert lines[0] == f"executing `{long_command}'"
    assert re.fullmatch(rf'status \({HOST},-\): error .+ "{long_command}"', lines[1])
    assert (tmp_path / "next").read_text() == "next\n"


# --------------------------------------------------------------------------
# Found in review: signals jobs inherit, output after the end, a failing worker
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_jobs_get_default_sigpipe_so_pipelines_end(tmp_path):
    # Python ignores SIGPIPE; with that inherited, the loop would never end.
    path = write_jobs(tmp_path / "runs.txt", [
        "echo $$ > pid1; while :; do echo x; done | head -1",
        "echo $$ > pid2; yes | head -2",
    ])
    result = run("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert states(path) == "dd"
    # The tag names each job's shell ($$), so the lines expected are known
    # before looking at the output.
    host, pid1, pid2 = host_name(), read_int(tmp_path / "pid1"), read_int(tmp_path / "pid2")
    assert sorted(lines_of(result.stdout)) == sorted([
        f"stdout ({host},{pid1}): x",
        f"stdout ({host},{pid2}): y",
        f"stdout ({host},{pid2}): y",
    ])
    assert result.stdout.decode().count("): y\n") == 2


@pytest.mark.timeout(30)
def test_output_written_after_a_job_ended_goes_nowhere_else(tmp_path):
    """A background process writing after its job ended must not reach the
    next job's --logdir files (or anything else reusing the descriptors)."""
    # Gates, not sleeps: the background process writes only once job 2
    # runs (touch gate), and job 2 ends only once it has written (wrote).
    # Its writes get EPIPE (SIGPIPE): each runs in a subshell of its own.
    path = write_jobs(tmp_path / "runs.txt", [
        "(while [ ! -e gate ]; do sleep 0.01; done; (echo late); (echo late >&2); touch wrote) & echo early",
        "touch gate; while [ ! -e wrote ]; do sleep 0.01; done; echo second",
    ])
    result = run("runmaker", "-q", "-j1", "--logdir", "out", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert states(path) == "dd"
    assert (tmp_path / "out" / "1.out").read_text() == "early\n"
    assert (tmp_path / "out" / "1.err").read_text() == ""
    assert (tmp_path / "out" / "2.out").read_text() == "second\n"
    assert (tmp_path / "out" / "2.err").read_text() == ""
    assert "late" not in result.stdout.decode()


@pytest.mark.timeout(30)
def test_a_worker_that_fails_stops_its_jobs_before_its_locks_go(tmp_path):
    """An unexpected error (here: the file system refusing the final state)
    must not leave the worker's jobs running unowned."""
    import runmaker

    path = write_jobs(tmp_path / "runs.txt", [
        # Job 1 ends (and the failure strikes) once job 2 has written its pid.
        f"echo $$ > {tmp_path}/pid1; while [ ! -e {tmp_path}/pid2 ]; do sleep 0.01; done",
        f"echo $$ > {tmp_path}/pid2.new; mv {tmp_path}/pid2.new {tmp_path}/pid2; exec sleep 30",
    ])

    class FailingScheduler(runmaker.Scheduler):
        def finish_job(self, claim, state):
            raise OSError(5, "Input/output error")

    jobfile = JobFile(str(path))
    scheduler = FailingScheduler(jobfile)
    console = open(os.devnull, "wb")
    worker = runmaker.Worker(
        scheduler, runmaker.WorkerOptions(jobs=2, quiet=True, job_file=str(path)),
        runmaker._Records(runmaker.WorkerOptions(), jobfile.identity),
        console=console, notify=lambda message: None,
    )
    try:
        with pytest.raises(OSError, match="Input/output error"):
            worker.run()
        second = read_int(tmp_path / "pid2")
        assert second is not None
        assert not alive(second)  # killed and reaped, not left running unowned
        assert not worker._running
    finally:
        console.close()
        scheduler.close()
        jobfile.close()


@pytest.mark.timeout(30)
def test_files_other_users_can_write_draw_one_warning_each(tmp_path):
    path = write_jobs(tmp_path / "runs.txt", ["true"])
    log = tmp_path / "runs.log"
    log.write_text("")
    joblog = tmp_path / "runs.tsv"
    joblog.write_text("")
    for file in (path, log):
        file.chmod(file.stat().st_mode | stat.S_IWOTH)
    result = run("runmaker", "-q", "-l", "runs.log", "--joblog", "runs.tsv", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == [
        "Warning: runs.txt: other users can write this file, and its lines run as you",
        "Warning: runs.log: other users can write this file, and it records what your jobs did",
    ]
    assert states(path) == "d"
    # Our own files, private: no warning.
    for file in (path, log):
        file.chmod(0o644)
    write_jobs(path, ["true"])
    result = run("runmaker", "-q", "-l", "runs.log", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == b""
