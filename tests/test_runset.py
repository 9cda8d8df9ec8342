"""runset, run as real processes on real files: every selection and action,
exact list, JSON and summary lines, live jobs refused, lost jobs, appends
from several processes while a worker runs, and input errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, read_int, run, shebang_env, states, wait_for, write_jobs

JOBS = (
    "# jobs of the test\n"
    ". echo a\n"
    "\n"
    "d echo b\n"
    "! false\n"
    ".bad\n"
    "e exit 3\n"
    "+ echo urgent\n"
    "- echo retired\n"
    "x echo unknown\n"
    ". echo last"  # no final newline: still a job
)
WARNING = "Warning: {}:6: not a job line (a state byte, a space or tab, then the command); ignored\n"


def runset(tmp_path: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return run("runset", *args, cwd=tmp_path, input=input)


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def make_jobs(tmp_path: Path) -> Path:
    path = tmp_path / "runs.txt"
    path.write_text(JOBS)
    return path


# --------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_list_is_the_default_and_names_every_job(tmp_path):
    make_jobs(tmp_path)
    expected = (
        "2: . - echo a\n"
        "4: d - echo b\n"
        "5: ! - false\n"
        "7: e - exit 3\n"
        "8: + - echo urgent\n"
        "9: - - echo retired\n"
        "10: x - echo unknown\n"
        "11: . - echo last\n"
    )
    for args in ((), ("-l",), ("--list",)):
        result = runset(tmp_path, *args, "runs.txt")
        assert out(result) == expected
        assert result.stderr.decode() == WARNING.format("runs.txt")  # once, with FILE:LINE


@pytest.mark.timeout(30)
def test_selections_combine_with_and(tmp_path):
    make_jobs(tmp_path)
    assert out(runset(tmp_path, "runs.txt", "4", "2")) == "2: . - echo a\n4: d - echo b\n"
    # A range takes the jobs among its lines; comments and blanks are skipped.
    assert out(runset(tmp_path, "runs.txt", "1-5")) == "2: . - echo a\n4: d - echo b\n5: ! - false\n"
    assert out(runset(tmp_path, "runs.txt", "3-3")) == ""
    assert out(runset(tmp_path, "--state", "!e", "runs.txt")) == "5: ! - false\n7: e - exit 3\n"
    assert out(runset(tmp_path, "--state", "x", "runs.txt")) == "10: x - echo unknown\n"
    assert out(runset(tmp_path, "--grep", "^echo [ab]$", "runs.txt")) == "2: . - echo a\n4: d - echo b\n"
    assert out(runset(tmp_path, "--grep", "echo", "--state", ".", "runs.txt", "1-10")) == "2: . - echo a\n"
    assert out(runset(tmp_path, "-a", "--state", "+", "runs.txt")) == "8: + - echo urgent\n"
    assert out(runset(tmp_path, "--all", "runs.txt")).count("\n") == 8


@pytest.mark.timeout(30)
def test_json_lines(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b'. echo "caf\xc3\xa9"\t \nd printf \xff\n')
    result = runset(tmp_path, "--json", "runs.txt")
    assert out(result) == (
        '{"line": 1, "state": ".", "command": "echo \\"caf\\u00e9\\"", "lost": false, '
        '"parent": null, "blocked_by": null}\n'
        '{"line": 2, "state": "d", "command": "printf \\ufffd", "lost": false, '
        '"parent": null, "blocked_by": null}\n'
    )
    assert [json.loads(line)["command"] for line in result.stdout.decode().splitlines()] == [
        'echo "café"', "printf \ufffd"
    ]
    # The plain list shows undecodable bytes replaced too.
    assert out(runset(tmp_path, "runs.txt", "2")) == "2: d - printf \ufffd\n"


@pytest.mark.timeout(30)
def test_summary_counts_per_state(tmp_path):
    make_jobs(tmp_path)
    assert out(runset(tmp_path, "--summary", "runs.txt")) == (
        "+ 1 pending, high priority\n"
        ". 2 pending\n"
        "d 1 done\n"
        "! 1 failed\n"
        "e 1 error\n"
        "- 1 retired\n"
        "x 1 unknown\n"
        "  8 jobs\n"
    )
    assert out(runset(tmp_path, "--summary", "--state", "!e.", "runs.txt")) == (
        ". 2 pending\n! 1 failed\ne 1 error\n  4 jobs\n"
    )
    assert json.loads(out(runset(tmp_path, "--summary", "--json", "runs.txt"))) == {
        "+": 1, ".": 2, "d": 1, "!": 1, "e": 1, "-": 1, "x": 1, "lost": 0, "total": 8
    }


# --------------------------------------------------------------------------
# Setting states
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_set_changes_only_state_bytes(tmp_path):
    path = make_jobs(tmp_path)
    before = path.read_bytes()
    result = runset(tmp_path, "--state", "!e", "--set", ".", "runs.txt")
    assert (result.returncode, result.stdout) == (0, b"")
    assert states(path) == ".d..+-x."
    after = path.read_bytes()
    # Besides the two bytes, only an appended notice naming the jobs changed
    # (workers do not reread finished stretches: issue 13), after the
    # newline the last line lacked, as every append mends it.
    assert after[len(before):] == b"\n#runmaker set 5-7\n"
    assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == [
        before.index(b"! false"), before.index(b"e exit 3")
    ]
    assert out(runset(tmp_path, "-s", "-", "runs.txt", "8-10", "2")) == ""
    assert states(path) == "-d..---."


@pytest.mark.timeout(30)
def test_runmaker4_example_all_set_pending(tmp_path):
    path = make_jobs(tmp_path)
    assert out(runset(tmp_path, "--all", "--set=.", "runs.txt")) == ""
    assert states(path) == "........"


@pytest.mark.timeout(30)
def test_set_refuses_a_live_job_and_changes_the_others(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text(
        "! false\n"
        ". touch started; while [ ! -e marker ]; do sleep 0.05; done\n"
        "e exit 3\n"
    )
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the job to start")
    result = runset(tmp_path, "--all", "--set", "d", "runs.txt")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == "runset: runs.txt:2: running (a worker holds its lock); not changed\n"
    assert states(path) == "drd"
    (tmp_path / "marker").touch()
    assert worker.wait(timeout=20) == 0
    assert states(path) == "ddd"


@pytest.mark.timeout(30)
def test_a_killed_workers_job_is_lost_listed_counted_and_settable(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text("d true\n. echo $$ > jobpid; exec sleep 60\n")
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    job = wait_for(lambda: read_int(tmp_path / "jobpid"), what="the job's pid")
    try:
        assert out(runset(tmp_path, "runs.txt", "2")) == "2: r - echo $$ > jobpid; exec sleep 60\n"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        try:
            os.killpg(job, signal.SIGKILL)  # if the worker's guardian has not killed it yet
        except ProcessLookupError:
            pass
    assert out(runset(tmp_path, "runs.txt")) == (
        "1: d - true\n2: r - echo $$ > jobpid; exec sleep 60 [lost]\n"
    )
    assert json.loads(out(runset(tmp_path, "--json", "runs.txt", "2")))["lost"] is True
    assert out(runset(tmp_path, "--summary", "runs.txt")) == "r 1 running (1 lost)\nd 1 done\n  2 jobs\n"
    waited = run("runwait", "-e", "runs.txt", cwd=tmp_path)  # lost: an error, not waited for
    assert (waited.returncode, waited.stdout) == (1, b"runs.txt: lost (r): 2\n")
    assert out(runset(tmp_path, "--state", "r", "--set", ".", "runs.txt")) == ""
    assert states(path) == "d."


# --------------------------------------------------------------------------
# Appending jobs and directives
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_add_appends_jobs_and_mends_a_missing_newline(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b"d echo a")
    assert out(runset(tmp_path, "--add", "echo b", "--add", "echo c  ", "runs.txt")) == "2\n3\n"
    assert path.read_bytes() == b"d echo a\n. echo b\n. echo c\n"
    assert out(runset(tmp_path, "--high", "--add", "echo d", "runs.txt")) == "4\n"
    stdin = b"echo e\n\n   \necho \xff f\r\necho g"
    assert out(runset(tmp_path, "--add", "-", "runs.txt", input=stdin)) == "5\n6\n7\n"
    assert path.read_bytes() == (
        b"d echo a\n. echo b\n. echo c\n+ echo d\n. echo e\n. echo \xff f\n. echo g\n"
    )
    assert states(path) == "d..+..."


@pytest.mark.timeout(30)
def test_max_running_and_barrier_append_directives(tmp_path):
    path = write_jobs(tmp_path / "runs.txt", ["true"])
    assert out(runset(tmp_path, "--max-running", "2", "runs.txt")) == ""
    assert out(runset(tmp_path, "--max-running", "none", "runs.txt")) == ""
    assert out(runset(tmp_path, "--barrier", "--max-running", "0", "--add", "echo z", "runs.txt")) == "6\n"
    assert path.read_text() == (
        ". true\n"
        "#runmaker max-running 2\n"
        "#runmaker max-running none\n"
        "#runmaker max-running 0\n"
        "#runmaker barrier\n"
        ". echo z\n"
    )
    assert out(runset(tmp_path, "runs.txt")) == "1: . - true\n6: . - echo z\n"  # no warnings
    assert runset(tmp_path, "runs.txt").stderr == b""


@pytest.mark.timeout(60)
def test_four_processes_add_at_once_while_a_worker_runs(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", ["echo first"])
    procs.start("runmaker", "-q", "-j2", "--follow", "runs.txt", cwd=tmp_path, stdout=subprocess.DEVNULL)
    wait_for(lambda: states(path) == "d", what="the first job")
    per_process = 25
    adders = []
    for p in range(4):
        more = tmp_path / f"more{p}.txt"
        more.write_bytes(b"".join(b"echo %d-%d\n" % (p, k) for k in range(per_process)))
        with open(more, "rb") as stdin:  # ready before start: the four append at once
            adders.append(procs.start("runset", "--add", "-", "runs.txt", cwd=tmp_path, stdin=stdin))
    for adder in adders:
        assert adder.wait(timeout=20) == 0
    total = 1 + 4 * per_process
    wait_for(lambda: states(path) == "d" * total, timeout=30, what="every job done")
    lines = path.read_text().splitlines()
    assert lines[0] == "d echo first"
    assert sorted(lines[1:]) == sorted(f"d echo {p}-{k}" for p in range(4) for k in range(per_process))
    for p in range(4):  # each process's jobs stand together: one record
        mine = [i for i, line in enumerate(lines) if line.startswith(f"d echo {p}-")]
        assert mine == list(range(mine[0], mine[0] + per_process))


# --------------------------------------------------------------------------
# Input errors and usage
# --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, message",
    [
        (["runs.txt", "1"], "Error: runs.txt:1: no job at this line"),
        (["runs.txt", "3"], "Error: runs.txt:3: no job at this line"),
        (["runs.txt", "12"], "Error: runs.txt:12: no job at this line (the file has 11 lines)"),
        (["runs.txt", "0"], "Error: runs.txt:0: no job at this line"),
        (["runs.txt", "2-12"], "Error: runs.txt:2-12: the range runs past the end of the file (11 lines)"),
        (["runs.txt", "5-4"], "Error: runs.txt: '5-4': a range A-B needs 1 <= A <= B"),
        (["runs.txt", "two"], "Error: runs.txt: 'two' is not a line number or a range A-B"),
        (["--state", "#", "runs.txt"], "Error: runs.txt: --state '#': '#' can never be a state byte "
         "(states: . + r d ! e - or another printable character)"),
        (["--state", "", "runs.txt"], "Error: runs.txt: --state '': give one or more states "
         "(states: . + r d ! e - or another printable character)"),
        (["--grep", "(", "runs.txt"], "Error: runs.txt: --grep '(': missing ), unterminated subpattern at position 0"),
        (["--set", "r", "-a", "runs.txt"], "Error: --set r is refused: a job is running only while a "
         "worker holds its lock, so a hand-made 'r' would look lost"),
        (["--set", "D", "-a", "runs.txt"], "Error: --set 'D': not a state to set; use one of . + d ! e -"),
        (["--set", "..", "-a", "runs.txt"], "Error: --set '..': not a state to set; use one of . + d ! e -"),
        (["--set", ".", "runs.txt"], "Error: runs.txt: --set needs a selection: JOB numbers or ranges, "
         "--all, --state or --grep"),
        (["--add", "", "runs.txt"], "Error: runs.txt: cannot add an empty command"),
        (["--add", "echo a\necho b", "runs.txt"], "Error: runs.txt: a command must fit on one line: 'echo a\\necho b'"),
        (["missing.txt"], "Error: missing.txt: no such file"),
        (["--add", "true", "missing.txt"], "Error: missing.txt: no such file"),
    ],
)
def test_input_errors_are_one_line_exit_2_and_touch_nothing(tmp_path, args, message):
    path = make_jobs(tmp_path)
    result = runset(tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == b""
    errors = [line for line in result.stderr.decode().splitlines() if not line.startswith("Warning:")]
    assert errors == [message]
    assert path.read_text() == JOBS


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--add", "true", "runs.txt", "2"], "--add, --max-running and --barrier only append"),
        (["--add", "true", "--set", ".", "runs.txt"], "--add, --max-running and --barrier only append"),
        (["--barrier", "--state", ".", "runs.txt"], "--add, --max-running and --barrier only append"),
        (["--max-running", "1", "--list", "runs.txt"], "--add, --max-running and --barrier only append"),
        (["--high", "runs.txt"], "--high goes with --add"),
        (["--set", ".", "--json", "-a", "runs.txt"], "--set does not list (drop --json)"),
        (["--list", "--summary", "runs.txt"], "choose one of --list and --summary"),
        (["--max-running", "-1", "runs.txt"], "'-1' is neither a whole number nor 'none'"),
        (["--max-running", "x", "runs.txt"], "'x' is neither a whole number nor 'none'"),
        ([], "Missing argument 'FILE'"),
    ],
)
def test_mixed_actions_are_usage_errors(tmp_path, args, fragment):
    path = make_jobs(tmp_path)
    result = runset(tmp_path, *args)
    assert result.returncode == 2
    assert fragment in result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert path.read_text() == JOBS


@pytest.mark.timeout(30)
def test_runs_from_a_checkout_with_help_and_example(tmp_path):
    result = subprocess.run([str(ROOT / "runset.py"), "--help"], capture_output=True, timeout=30,
                            env=shebang_env())
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "runset --state '!e' --set . runs.txt" in text
    for option in ("--all", "--state", "--grep", "--list", "--set", "--add", "--high",
                   "--max-running", "--barrier", "--summary", "--json"):
        assert option in text
