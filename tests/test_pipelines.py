"""Pipelines, run as real processes on real files: the outline (a job runs once
the nearest job above it with less indent is done), failures that hold a
subtree back and end workers and runwait honestly, subtrees appended later,
dependencies across workers and over TCP, killing one job from anywhere, the
line numbers runset --add prints, runwait FILE JOB, and the dumps example.

Order and overlap are measured by the jobs themselves: each appends a start
and an end event with a timestamp (``date +%s%N``) to one file.  The start
is written after the job started and the end before it ended, so the
measured intervals lie inside the real ones: a child whose measured start
is after its parent's measured end really started after the parent ended,
and an overlap seen is an overlap that was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT, Procs, alive, gated_job, holds_for, kill_group, read_int, run, states, timed_job, wait_exit,
    wait_for, write_file,
)

pytestmark = pytest.mark.timeout(60)

KILLED = re.compile(r'^status \([^,]+,\d+\): killed "(.*)"$', re.MULTILINE)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def long_job(name: str) -> str:
    """A job that notes its pid (its process group) and a background child's, then sleeps."""
    return f"sleep 60 & echo $! > {name}.bg; echo $$ > {name}.pid; wait"


def spans(tmp_path: Path) -> dict[int, tuple[float, float]]:
    """line -> (start, end) in seconds, of every job that logged both events."""
    starts: dict[int, float] = {}
    out: dict[int, tuple[float, float]] = {}
    for entry in (tmp_path / "events").read_text().splitlines():
        kind, line, ns = entry.split()
        if kind == "s":
            starts[int(line)] = int(ns) / 1e9
        else:
            out[int(line)] = (starts[int(line)], int(ns) / 1e9)
    return out


def ran(tmp_path: Path) -> list[str]:
    path = tmp_path / "ran"
    return path.read_text().split() if path.exists() else []


def parents(path: Path) -> list[int | None]:
    result = run("runset", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["parent"] for line in result.stdout.decode().splitlines()]


def joblog_rows(path: Path) -> list[list[str]]:
    return [row.split("\t") for row in path.read_text().splitlines()[1:]]


class TcpPair:
    """A runmaker --serve and its clients on loopback, output in files."""

    def __init__(self, tmp_path: Path, procs: Procs) -> None:
        self.dir = tmp_path
        self.procs = procs
        self.token = tmp_path / "token"
        self.token.write_text("pipelines-test-token\n")
        self.env = dict(os.environ, HOME=str(tmp_path))  # never the user's own token file

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.out", "wb") as out, open(self.dir / f"{name}.err", "wb") as err:
            return self.procs.start("runmaker", *args, cwd=self.dir, env=self.env, stdout=out, stderr=err)

    def serve(self, jobfile: Path) -> tuple[subprocess.Popen[bytes], int]:
        server = self.start("server", "--serve", "--port", "0", "--token", str(self.token), str(jobfile))
        found = wait_for(lambda: server.poll() is not None or re.search(r"on port (\d+)", self.err("server")),
                         what="the server's port")
        assert server.poll() is None, self.err("server")
        assert isinstance(found, re.Match)
        return server, int(found.group(1))

    def err(self, name: str) -> str:
        return (self.dir / f"{name}.err").read_text(errors="replace")

    def out(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text(errors="replace")


# --------------------------------------------------------------------------
# The outline: order and parallelism
# --------------------------------------------------------------------------


def test_a_tree_runs_children_after_their_parents_and_siblings_at_once(tmp_path):
    path = write_file(tmp_path / "runs.txt", [
        ". " + timed_job(0.3),              # 1  a
        ".   " + timed_job(0.4),            # 2    a1
        ".       " + timed_job(0.1),        # 3      a1x (any deeper indent is a child)
        "# comments, blank lines and directives do not count",
        "",
        ".   " + timed_job(0.4),            # 6    a2
        ". " + timed_job(0.3),              # 7  b
        ".  " + timed_job(0.2),             # 8    b1
    ])
    result = run("runmaker", "-q", "-j8", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert states(path) == "d" * 6
    assert parents(path) == [None, 1, 2, 1, None, 7]
    done = spans(tmp_path)
    assert sorted(done) == [1, 2, 3, 6, 7, 8]
    for child, parent in ((2, 1), (3, 2), (6, 1), (8, 7)):
        assert done[child][0] >= done[parent][1], (child, parent, done)
    # Siblings run at once: the roots, and a's two children.
    for one, other in ((1, 7), (2, 6)):
        assert done[one][0] < done[other][1] and done[other][0] < done[one][1], (one, other, done)


def test_a_deep_chain_runs_one_step_after_another(tmp_path):
    # Each step indented one more than the step above: a chain of 200.
    steps = [". " + " " * k + "echo $RUNMAKER_LINE >> ran" for k in range(200)]
    path = write_file(tmp_path / "runs.txt", steps)
    result = run("runmaker", "-q", "-j4", "runs.txt", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert states(path) == "d" * 200
    assert ran(tmp_path) == [str(n) for n in range(1, 201)]
    assert parents(path) == [None] + list(range(1, 200))


def test_an_urgent_child_waits_for_its_parent_then_goes_first(tmp_path):
    record = "echo $RUNMAKER_LINE >> ran"
    path = write_file(tmp_path / "runs.txt", [f". {record}", f"+   {record}", f". {record}", f". {record}"])
    result = run("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ran(tmp_path) == ["1", "2", "3", "4"]  # without the outline '+' would run first
    assert states(path) == "dddd"


# --------------------------------------------------------------------------
# Failures hold their subtree; -r and retiring release it
# --------------------------------------------------------------------------

FAILING_TREE = [
    ". test -e fixed",                    # 1
    ".   echo $RUNMAKER_LINE >> ran",     # 2
    ".     echo $RUNMAKER_LINE >> ran",   # 3
    ".   echo $RUNMAKER_LINE >> ran",     # 4
    ". echo $RUNMAKER_LINE >> ran",       # 5
]


def test_a_failed_parent_holds_its_subtree_until_it_is_retried(tmp_path):
    path = write_file(tmp_path / "runs.txt", FAILING_TREE)
    blocked = "runmaker: runs.txt: blocked by 1 ('!'): 2-4"

    result = run("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 1  # it ran the failed job
    assert result.stderr.decode().splitlines() == [blocked]
    assert states(path) == "!...d"
    assert ran(tmp_path) == ["5"]

    # Nothing it could run: a plain worker exits at once, 0, and says why.
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [blocked]

    # Retried and failing again: still held, and the worker still ends.
    result = run("runmaker", "-q", "-r", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [blocked]
    assert states(path) == "!...d"

    (tmp_path / "fixed").touch()
    result = run("runmaker", "-q", "-r", "-j1", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert states(path) == "ddddd"
    assert ran(tmp_path) == ["5", "2", "3", "4"]


def test_a_retired_parent_lets_its_children_run(tmp_path):
    path = write_file(tmp_path / "runs.txt", [
        "- echo retired by the user",         # 1
        ".   echo $RUNMAKER_LINE >> ran",     # 2
        "! false",                            # 3
        ".   echo $RUNMAKER_LINE >> ran",     # 4
        ".     echo $RUNMAKER_LINE >> ran",   # 5
    ])
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == ["runmaker: runs.txt: blocked by 3 ('!'): 4-5"]
    assert states(path) == "-d!.."
    assert ran(tmp_path) == ["2"]

    assert run("runset", "--set", "-", "runs.txt", "3", cwd=tmp_path).returncode == 0
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert states(path) == "-d-dd"
    assert ran(tmp_path) == ["2", "4", "5"]


def test_a_failure_below_a_barrier_and_a_failed_parent_are_both_named(tmp_path):
    path = write_file(tmp_path / "runs.txt", [
        ". false",                            # 1
        ".   echo $RUNMAKER_LINE >> ran",     # 2
        ". echo $RUNMAKER_LINE >> ran",       # 3
        "#runmaker barrier",
        ". echo $RUNMAKER_LINE >> ran",       # 5
    ])
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=20)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "runmaker: runs.txt: jobs below the barrier at line 4 wait for failed jobs above it",
        "runmaker: runs.txt: blocked by 1 ('!'): 2",
    ]
    assert states(path) == "!.d."
    assert ran(tmp_path) == ["3"]


# --------------------------------------------------------------------------
# Listing: [blocked by N], JSON parent and blocked_by, tabs in an indent
# --------------------------------------------------------------------------

LISTED = [
    "! false",              # 1
    ".   echo child",       # 2  blocked by 1
    ".     echo grandchild",  # 3  blocked by 1 (through 2)
    "d true",               # 4
    ".   echo ready",       # 5  its parent is done
    "e exit 3",             # 6
    "+   echo urgent",      # 7  blocked by 6
    "#runmaker barrier",    # 8
    ". echo below",         # 9  below a barrier that failures above hold: blocked by 1
    "-   echo retired",     # 10 not pending: never blocked
]


def test_runset_lists_what_blocks_each_pending_job(tmp_path):
    write_file(tmp_path / "runs.txt", LISTED)
    result = run("runset", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout.decode() == (
        "1: ! - false\n"
        "2: . -   echo child [blocked by 1]\n"
        "3: . -     echo grandchild [blocked by 1]\n"
        "4: d - true\n"
        "5: . -   echo ready\n"
        "6: e - exit 3\n"
        "7: + -   echo urgent [blocked by 6]\n"
        "9: . - echo below [blocked by 1]\n"
        "10: - -   echo retired\n"
    )


def test_runset_json_gives_each_jobs_parent_and_blocker(tmp_path):
    write_file(tmp_path / "runs.txt", LISTED)
    result = run("runset", "--json", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(r["line"], r["parent"], r["blocked_by"]) for r in rows] == [
        (1, None, None), (2, 1, 1), (3, 2, 1), (4, None, None), (5, 4, None),
        (6, None, None), (7, 6, 6), (9, None, 1), (10, 9, None),
    ]
    assert result.stdout.decode().splitlines()[1] == (
        '{"line": 2, "state": ".", "command": "  echo child", "lost": false, "parent": 1, "blocked_by": 1}'
    )


def test_tabs_in_an_indent_count_as_spaces_with_one_warning_per_line(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(
        b". echo root\n"            # 1  indent 0
        b".  \t\techo three\n"      # 2  indent 3 (a space, two tabs): one warning, child of 1
        b".     echo four\n"        # 3  indent 4: child of 2
        b".\t\techo one\n"          # 4  a tab separates, then indent 1 (a tab): child of 1
        b". \t  echo three again\n"  # 5  indent 3 (a tab, two spaces): child of 4
    )
    result = run("runset", "--json", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert [json.loads(line)["parent"] for line in result.stdout.decode().splitlines()] == [None, 1, 2, 1, 4]
    assert result.stderr.decode().splitlines() == [
        "Warning: runs.txt:2: tabs in the indent count as one space each",
        "Warning: runs.txt:4: tabs in the indent count as one space each",
        "Warning: runs.txt:5: tabs in the indent count as one space each",
    ]
    # The worker warns the same way, once per line, and runs in that order.
    path.write_bytes(path.read_bytes().replace(b"echo ", b"echo $RUNMAKER_LINE >> ran; echo "))
    result = run("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [
        f"Warning: runs.txt:{n}: tabs in the indent count as one space each" for n in (2, 4, 5)
    ]
    assert ran(tmp_path) == ["1", "2", "3", "4", "5"]


# --------------------------------------------------------------------------
# Appended subtrees and runset --add's line numbers
# --------------------------------------------------------------------------


def test_appended_jobs_join_the_outline_and_run_in_its_order(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [". " + gated_job("root")])
    worker = procs.start("runmaker", "-q", "-j4", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "root.started").exists(), what="the first root")

    # Leading spaces: a child of the nearest less-indented job above, the running root.
    added = run("runset", "--add", "  " + timed_job(0.1), "runs.txt", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert added.stdout == b"2\n"
    # A whole indented block from stdin: a second tree, independent of the first.
    block = "\n".join([timed_job(0.3), "  " + timed_job(0.3), "    " + timed_job(0.1),
                       "  " + timed_job(0.3)]) + "\n"
    added = run("runset", "--add", "-", "runs.txt", cwd=tmp_path, input=block.encode())
    assert added.returncode == 0, added.stderr
    assert added.stdout == b"3\n4\n5\n6\n"
    wait_for(lambda: states(path) == "r.dddd", what="the appended tree while the first root runs")
    # A child appended under a parent that is already done (6) runs at once.
    added = run("runset", "--add", "   " + timed_job(0.1), "runs.txt", cwd=tmp_path)
    assert added.stdout == b"7\n"
    wait_for(lambda: states(path) == "r.ddddd", what="the late child of a done parent")
    holds_for(lambda: states(path) == "r.ddddd", 0.3, "the child of the running root waiting")

    (tmp_path / "root.go").touch()
    assert wait_exit(worker) == 0
    assert states(path) == "d" * 7
    assert parents(path) == [None, 1, None, 3, 4, 3, 6]
    done = spans(tmp_path)
    for child, parent in ((4, 3), (5, 4), (6, 3), (7, 6)):
        assert done[child][0] >= done[parent][1], (child, parent, done)
    assert done[4][0] < done[6][1] and done[6][0] < done[4][1]  # siblings at once


def test_runset_add_prints_the_line_of_each_job_it_appended(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b"d echo a\n# a comment\n. echo b")  # the last line has no newline
    result = run("runset", "--add", "echo c", "--add", "  echo d", "runs.txt", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"4\n5\n", b"")
    result = run("runset", "--barrier", "--max-running", "2", "--high", "--add", "echo e", "runs.txt",
                 cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"8\n")  # after the two directive lines
    result = run("runset", "--add", "-", "runs.txt", cwd=tmp_path, input=b"echo f\n\n  echo g\n")
    assert (result.returncode, result.stdout) == (0, b"9\n10\n")
    result = run("runset", "--max-running", "none", "runs.txt", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"")  # no job appended: no line
    assert path.read_text().splitlines()[3:] == [
        ". echo c", ".   echo d", "#runmaker max-running 2", "#runmaker barrier", "+ echo e",
        ". echo f", ".   echo g", "#runmaker max-running none",
    ]


def test_concurrent_appenders_each_print_their_own_lines(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text("d echo start\n")
    adders = []
    for k in range(4):
        stdin = "".join(f"echo adder-{k}-{i}\n" for i in range(50)).encode()
        adder = procs.start("runset", "--add", "-", "runs.txt", cwd=tmp_path, stdin=subprocess.PIPE)
        adders.append((k, adder, stdin))
    printed = {}
    for k, adder, stdin in adders:
        out, err = adder.communicate(stdin, timeout=30)
        assert adder.returncode == 0, err
        printed[k] = [int(n) for n in out.split()]
    text = path.read_text().splitlines()
    assert len(text) == 201
    for k, numbers in printed.items():
        assert [text[n - 1] for n in numbers] == [f". echo adder-{k}-{i}" for i in range(50)]


# --------------------------------------------------------------------------
# Two workers on one file
# --------------------------------------------------------------------------


def test_a_child_runs_on_another_worker_once_its_parent_is_done_there(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". " + gated_job("parent"),
        ".   echo $PPID > child.worker; echo $RUNMAKER_LINE >> ran",
    ])
    # -1: the first worker claims nothing more once its job succeeded, so the
    # child can only run on the second one.
    first = procs.start("runmaker", "-q", "-1", "-j2", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "parent.started").exists(), what="the parent on the first worker")
    second = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
    # Held back by a parent that runs elsewhere: the second worker waits, it does not exit.
    holds_for(lambda: second.poll() is None and states(path) == "r.", 1.2,
              "a worker waiting for a parent running on another worker")
    (tmp_path / "parent.go").touch()
    assert wait_exit(first) == 0
    assert wait_exit(second) == 0
    assert states(path) == "dd"
    assert read_int(tmp_path / "child.worker") == second.pid
    assert ran(tmp_path) == ["2"]


# --------------------------------------------------------------------------
# Killing one job from anywhere
# --------------------------------------------------------------------------


def test_runset_kill_stops_a_job_running_on_another_worker(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [". " + long_job("one"),
                                              ". echo $$ > two.pid; " + gated_job("two")])
    worker = procs.start("runmaker", "-j2", "--retries", "2", "-l", "log", "--joblog", "joblog",
                         "runs.txt", cwd=tmp_path)
    one = two = None
    try:
        one = wait_for(lambda: read_int(tmp_path / "one.pid"), what="job 1")
        two = wait_for(lambda: read_int(tmp_path / "two.pid"), what="job 2")
        wait_for(lambda: (tmp_path / "two.started").exists(), what="job 2")
        background = wait_for(lambda: read_int(tmp_path / "one.bg"), what="job 1's background child")

        result = run("runset", "--kill", "runs.txt", "1", cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"1: killed\n", b"")
        assert states(path) == "!r"
        assert path.read_text().splitlines()[2] == "#runmaker kill 1"
        wait_for(lambda: not alive(one) and not alive(background), timeout=5,
                 what="job 1's whole process group to end")
        assert alive(two)  # the other job runs on
        holds_for(lambda: states(path) == "!r", 0.5, "the killed job not retried by --retries")
        (tmp_path / "two.go").touch()
        assert wait_exit(worker) == 1
    finally:
        kill_group(two)
        kill_group(one)
    assert states(path) == "!d"
    rows = joblog_rows(tmp_path / "joblog")
    killed_rows = [r for r in rows if r[0] == "1"]
    assert len(killed_rows) == 1  # one attempt: a kill is never retried
    assert (killed_rows[0][6], killed_rows[0][7]) == ("-1", str(int(signal.SIGTERM)))
    log = (tmp_path / "log").read_text()
    assert re.search(r'^\+ status \([^,]+,\d+\): killed "sleep 60 & echo \$! > one\.bg; ', log, re.MULTILINE)


def test_a_killed_job_shows_killed_on_the_console(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [". " + long_job("one")])
    worker = procs.start("runmaker", "runs.txt", cwd=tmp_path)
    one = None
    try:
        one = wait_for(lambda: read_int(tmp_path / "one.pid"), what="the job")
        result = run("runset", "--kill", "runs.txt", "1", cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout) == (0, b"1: killed\n")
        out, _ = worker.communicate(timeout=20)
    finally:
        kill_group(one)
    assert worker.returncode == 1
    assert states(path) == "!"
    assert KILLED.findall(out.decode()) == [long_job("one")]


def test_a_job_that_ignores_sigterm_is_killed_5_seconds_later(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". trap '' TERM; echo $$ > one.pid; while :; do sleep 0.1; done",
    ])
    worker = procs.start("runmaker", "-q", "--joblog", "joblog", "runs.txt", cwd=tmp_path)
    one = None
    try:
        one = wait_for(lambda: read_int(tmp_path / "one.pid"), what="the job")
        started = time.monotonic()
        result = run("runset", "--kill", "runs.txt", "1", cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout) == (0, b"1: killed\n")
        assert time.monotonic() - started >= 4.5  # SIGTERM was ignored; SIGKILL came after 5 s
    finally:
        kill_group(one)
    assert wait_exit(worker) == 1
    assert states(path) == "!"
    (row,) = joblog_rows(tmp_path / "joblog")
    assert (row[6], row[7]) == ("-1", str(int(signal.SIGKILL)))


def test_runset_kill_refuses_jobs_that_are_not_running(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [". " + long_job("one"), ". true", "d true"])
    before = path.read_bytes()
    result = run("runset", "--kill", "runs.txt", "2", "3", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode().splitlines() == [
        "runset: runs.txt:2: not running; not killed",
        "runset: runs.txt:3: not running; not killed",
    ]
    assert path.read_bytes() == before  # nothing appended

    result = run("runset", "--kill", "runs.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "Error: runs.txt: --kill needs a selection: JOB numbers or ranges, --all, --state or --grep"
    ]
    assert path.read_bytes() == before

    # One running and one not: the running one is killed, the other named; exit 1.
    worker = procs.start("runmaker", "-q", "-1", "runs.txt", cwd=tmp_path)
    one = None
    try:
        one = wait_for(lambda: read_int(tmp_path / "one.pid"), what="job 1")
        result = run("runset", "--kill", "runs.txt", "1-2", cwd=tmp_path, timeout=30)
    finally:
        kill_group(one)
    assert (result.returncode, result.stdout) == (1, b"1: killed\n")
    assert result.stderr.decode().splitlines() == ["runset: runs.txt:2: not running; not killed"]
    assert path.read_text().splitlines()[3:] == ["#runmaker kill 1"]
    wait_exit(worker)


def test_a_kill_line_never_kills_a_later_run_of_the_same_job(tmp_path, procs):
    job = "echo $$ > one.pid; " + gated_job("one")
    path = write_file(tmp_path / "runs.txt", [". " + job])
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    pid = None
    try:
        pid = wait_for(lambda: read_int(tmp_path / "one.pid"), what="the first run")
        result = run("runset", "--kill", "runs.txt", "1", cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout) == (0, b"1: killed\n")
    finally:
        kill_group(pid)
    assert wait_exit(worker) == 1
    assert states(path) == "!"
    (tmp_path / "one.pid").unlink()
    (tmp_path / "one.started").unlink()

    def runs_to_its_end(what: str, *args: str) -> None:
        """A new run of the job, not killed by the kill line above it."""
        worker = procs.start("runmaker", "-q", *args, "runs.txt", cwd=tmp_path)
        pid = None
        try:
            pid = wait_for(lambda: read_int(tmp_path / "one.pid"), what=what)
            holds_for(lambda: states(path) == "r" and alive(pid), 1.5, f"{what}, not killed")
            (tmp_path / "one.go").touch()
            assert wait_exit(worker) == 0
        finally:
            kill_group(pid)
        assert states(path) == "d"

    # Run again with -r: the kill line above is older than this run.
    runs_to_its_end("the second run", "-r")

    # A kill line written while the job did not run does nothing to a run after it.
    (tmp_path / "one.go").unlink()
    (tmp_path / "one.pid").unlink()
    assert run("runset", "--set", ".", "runs.txt", "1", cwd=tmp_path).returncode == 0
    with open(path, "a") as f:
        f.write("#runmaker kill 1\n")
    runs_to_its_end("the third run")


def test_a_kill_reaches_a_job_run_by_a_tcp_client(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". " + long_job("one"),                 # 1
        ".   echo $RUNMAKER_LINE >> ran",       # 2  its child: held back once 1 is killed
        ". echo $RUNMAKER_LINE >> ran",         # 3
    ])
    tcp = TcpPair(tmp_path, procs)
    server, port = tcp.serve(path)
    client = tcp.start("client", "--connect", f"127.0.0.1:{port}", "--token", str(tcp.token), "-j2")
    one = None
    try:
        one = wait_for(lambda: read_int(tmp_path / "one.pid"), what="job 1 on the client")
        wait_for(lambda: ran(tmp_path) == ["3"], what="job 3 on the client")
        result = run("runset", "--kill", "runs.txt", "1", cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"1: killed\n", b"")
        wait_for(lambda: not alive(one), timeout=5, what="job 1 to end on the client")
    finally:
        kill_group(one)
    assert client.wait(timeout=30) == 1
    assert server.wait(timeout=30) == 1
    assert states(path) == "!.d"
    assert KILLED.findall(tcp.out("client")) == [long_job("one")]
    # The server ends honestly, and tells its client why.
    assert f"runmaker: {path}: blocked by 1 ('!'): 2" in tcp.err("server").splitlines()
    assert f"runmaker: {path}: blocked by 1 ('!'): 2" in tcp.err("client").splitlines()
    assert ran(tmp_path) == ["3"]


# --------------------------------------------------------------------------
# runwait: ending on a blocked file, waiting for some jobs
# --------------------------------------------------------------------------


def test_runwait_ends_when_only_failures_hold_the_pending_jobs(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". " + gated_job("parent", "; exit 1"),   # 1
        ".   echo child",                           # 2
        ".     echo grandchild",                    # 3
        ". echo other",                             # 4
    ])
    worker = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "parent.started").exists(), what="the parent")
    waiter = procs.start("runwait", "-e", "--interval", "0.1", "runs.txt", cwd=tmp_path)
    holds_for(lambda: waiter.poll() is None, 1.0, "runwait while the parent runs")
    (tmp_path / "parent.go").touch()
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 1
    assert out.decode() == "runs.txt: failed (!): 1\nruns.txt: blocked by 1: 2-3\n"
    assert err == b""
    assert wait_exit(worker) == 1
    assert states(path) == "!..d"

    # Without -e it ends the same way, exit 0; a failure above a barrier too.
    result = run("runwait", "runs.txt", cwd=tmp_path, timeout=20)
    named = b"runs.txt: failed (!): 1\nruns.txt: blocked by 1: 2-3\n"
    assert (result.returncode, result.stdout) == (0, named)
    write_file(path, ["e false", "#runmaker barrier", ". echo below", ".   echo child"])
    result = run("runwait", "-e", "runs.txt", cwd=tmp_path, timeout=20)
    assert (result.returncode, result.stdout) == (1, b"runs.txt: error (e): 1\nruns.txt: blocked by 1: 3-4\n")


def test_runwait_waits_for_the_jobs_it_is_given_only(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". " + gated_job("a"),                # 1
        ". " + gated_job("b"),                # 2
        "# a comment",                        # 3
        ". " + gated_job("c", "; exit 4"),    # 4
        ".   echo child",                     # 5
    ])
    worker = procs.start("runmaker", "-q", "-j3", "runs.txt", cwd=tmp_path)
    wait_for(lambda: all((tmp_path / f"{n}.started").exists() for n in "abc"), what="three jobs")
    waiter = procs.start("runwait", "-e", "--interval", "0.1", "runs.txt", "2", cwd=tmp_path)
    holds_for(lambda: waiter.poll() is None, 0.5, "runwait for job 2")
    (tmp_path / "b.go").touch()
    out, _ = waiter.communicate(timeout=20)
    assert (waiter.returncode, out) == (0, b"")
    assert states(path)[0] == "r"  # job 1 still runs: runwait did not wait for it

    # A job and its failure: 5 is held back by 4, which fails.
    waiter = procs.start("runwait", "-e", "--interval", "0.1", "runs.txt", "5", cwd=tmp_path)
    holds_for(lambda: waiter.poll() is None, 0.5, "runwait for job 5 while its parent runs")
    (tmp_path / "c.go").touch()
    out, _ = waiter.communicate(timeout=20)
    assert (waiter.returncode, out) == (1, b"runs.txt: blocked by 4: 5\n")

    # Ranges, as runset takes them.
    (tmp_path / "a.go").touch()
    result = run("runwait", "runs.txt", "1-2", cwd=tmp_path, timeout=20)
    assert (result.returncode, result.stdout) == (0, b"")
    assert wait_exit(worker) == 1
    assert states(path) == "dd!."


def test_runwait_refuses_a_line_that_is_no_job(tmp_path):
    write_file(tmp_path / "runs.txt", [". true", "# a comment"])
    result = run("runwait", "runs.txt", "2", cwd=tmp_path, timeout=20)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().splitlines() == ["Error: runs.txt:2: no job at this line"]
    result = run("runwait", "runs.txt", "7", cwd=tmp_path, timeout=20)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "Error: runs.txt:7: no job at this line (the file has 2 lines)"
    ]


# --------------------------------------------------------------------------
# The dumps example
# --------------------------------------------------------------------------


def test_the_dumps_example_compresses_a_small_database_before_a_big_one_is_dumped(tmp_path):
    example = tmp_path / "dumps"
    shutil.copytree(ROOT / "examples" / "dumps", example)
    result = run("runmaker", "-q", "-j4", "--joblog", "joblog.tsv", "runs.txt", cwd=example, timeout=50)
    assert result.returncode == 0, result.stderr
    assert states(example / "runs.txt") == "d" * 21
    jobs = {r[8]: (float(r[2]), float(r[2]) + float(r[3])) for r in joblog_rows(example / "joblog.tsv")}
    assert len(jobs) == 21
    # No barrier between the steps any more: customers (1,000 rows) goes on
    # to its compress while invoices (12,000 rows) is still being dumped.
    assert jobs["  sh compress.sh customers"][0] < jobs["sh dump.sh invoices 12000"][1]
    # Each database's steps in its own order (two clocks in the joblog: 10 ms).
    for db in ("customers", "invoices", "products", "orders", "events"):
        dump = next(span for command, span in jobs.items() if command.startswith(f"sh dump.sh {db} "))
        for step in ("compress", "restore"):
            assert jobs[f"  sh {step}.sh {db}"][0] >= dump[1] - 0.01
        assert jobs[f"    sh upload.sh {db}"][0] >= jobs[f"  sh compress.sh {db}"][1] - 0.01
