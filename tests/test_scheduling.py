"""Scheduling, run as real worker processes on real files: priorities, the
max-running cap over several workers (raised, lowered, paused, a dead worker's
slot), barriers, when a worker waits and when it exits, --follow, and the
dumps example.

Concurrency is measured by the jobs themselves: each appends a start and an
end event with a timestamp (``date +%s%N``) to one file.  The event is
written after the job started and before it ended, so the measured
intervals lie inside the real ones: an overlap seen is an overlap that was.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import ROOT, gated_job, holds_for, read_int, run, states, timed_job, wait_exit, wait_for, write_file
from runmaker import append_to_shared_file

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def events(tmp_path: Path) -> list[tuple[float, str, int]]:
    """(time in s, "s" or "e", line) of every whole event, in time order."""
    try:
        text = (tmp_path / "events").read_text()
    except FileNotFoundError:
        return []
    out = []
    for entry in text.splitlines():
        kind, line, ns = entry.split()
        out.append((int(ns) / 1e9, kind, int(line)))
    # At one instant an end counts before a start: the intervals are inner ones.
    return sorted(out, key=lambda e: (e[0], e[1] == "s"))


def running_at_starts(tmp_path: Path) -> list[tuple[float, int]]:
    """For every start: its time and how many jobs ran then, itself included."""
    count, out = 0, []
    for t, kind, _ in events(tmp_path):
        count += 1 if kind == "s" else -1
        if kind == "s":
            out.append((t, count))
    return out


def max_running(tmp_path: Path) -> int:
    return max((n for _, n in running_at_starts(tmp_path)), default=0)


def running_now(tmp_path: Path) -> int:
    ev = events(tmp_path)
    return sum(1 for e in ev if e[1] == "s") - sum(1 for e in ev if e[1] == "e")


def spans(tmp_path: Path) -> dict[int, tuple[float, float]]:
    """line -> (start, end) of every job that logged both."""
    starts: dict[int, float] = {}
    out = {}
    for t, kind, line in events(tmp_path):
        if kind == "s":
            starts[line] = t
        else:
            out[line] = (starts[line], t)
    return out


def append_directive(path: Path, text: str) -> float:
    """Append a line with the append recipe, as runset does; return the wall time."""
    fd = os.open(path, os.O_RDWR)
    try:
        append_to_shared_file(fd, text.encode() + b"\n")
    finally:
        os.close(fd)
    return time.time()


# --------------------------------------------------------------------------
# Priorities
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_high_priority_jobs_run_first_in_file_order_then_the_others(tmp_path):
    record = "echo $RUNMAKER_LINE >> order"
    path = write_file(tmp_path / "runs.txt", [
        f". {record}", f"+ {record}", "# a comment", f". {record}", f"d {record}",
        f"+ {record}", f"! {record}", f"e {record}", f"- {record}", f". {record}",
        f"+ {record}",
    ])
    result = run("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "order").read_text().split() == ["2", "6", "11", "1", "4", "10"]
    assert states(path) == "ddddd!e-dd"

    # With -r, failed and error jobs join the '.' jobs, still in file order.
    (tmp_path / "order").unlink()
    path = write_file(tmp_path / "retry.txt", [
        f"! {record}", f". {record}", f"+ {record}", f"e {record}", f"d {record}",
    ])
    result = run("runmaker", "-q", "-j1", "-r", "retry.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "order").read_text().split() == ["3", "1", "2", "4"]
    assert states(path) == "ddddd"


@pytest.mark.timeout(30)
def test_an_appended_high_priority_job_jumps_the_queue(tmp_path, procs):
    record = "echo $RUNMAKER_LINE >> order"
    path = write_file(tmp_path / "runs.txt",
                      [". " + gated_job("first")] + [f". {record}"] * 5)
    worker = procs.start("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "first.started").exists(), what="job 1")
    append_directive(path, f"+ {record}")  # as runset --add --high appends it
    # A worker looks for appended lines at most every 0.1 s: give it that.
    holds_for(lambda: states(path) == "r.....+", 0.3, "job 1 running, the rest pending")
    (tmp_path / "first.go").touch()
    assert wait_exit(worker) == 0
    assert (tmp_path / "order").read_text().split() == ["7", "2", "3", "4", "5", "6"]
    assert states(path) == "d" * 7


# --------------------------------------------------------------------------
# max-running
# --------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_the_cap_holds_over_several_workers(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt",
                      ["#runmaker max-running 3"] + [f". {timed_job(0.3)}"] * 15)
    workers = [procs.start("runmaker", "-q", "-j4", "runs.txt", cwd=tmp_path) for _ in range(3)]
    for worker in workers:
        assert wait_exit(worker, 30) == 0
    assert states(path) == "d" * 15
    assert len(spans(tmp_path)) == 15
    assert max_running(tmp_path) == 3  # reached, never exceeded


@pytest.mark.timeout(30)
def test_a_slot_passes_straight_to_the_next_job(tmp_path):
    # Not one poll interval (0.5 s) per job: the worker hands its slot on.
    path = write_file(tmp_path / "runs.txt", ["#runmaker max-running 1"] + [". true"] * 20)
    started = time.monotonic()
    result = run("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert states(path) == "d" * 20
    assert time.monotonic() - started < 4


@pytest.mark.timeout(40)
def test_the_cap_raised_and_lowered_while_jobs_run(tmp_path, procs):
    long_jobs, short_jobs = 4, 6
    path = write_file(
        tmp_path / "runs.txt",
        ["#runmaker max-running 1"]
        + [f". {timed_job(2)}"] * long_jobs
        + [f". {timed_job(0.2)}"] * short_jobs,
    )
    workers = [procs.start("runmaker", "-q", "-j4", "runs.txt", cwd=tmp_path) for _ in range(2)]
    wait_for(lambda: running_now(tmp_path) == 1, what="the first job")
    holds_for(lambda: running_now(tmp_path) == 1, 0.3, "one job at a time under max-running 1")

    raised = append_directive(path, "#runmaker max-running 4")
    wait_for(lambda: running_now(tmp_path) == 4, what="four jobs after the raise")
    fourth = running_at_starts(tmp_path)[3][0]
    assert fourth - raised < 1.5  # waiting workers start within about a second

    lowered = append_directive(path, "#runmaker max-running 2")
    for worker in workers:
        assert wait_exit(worker, 30) == 0
    # Lowering stopped nothing: the long jobs ran their full time, and ended d.
    assert states(path) == "d" * (long_jobs + short_jobs)
    done = spans(tmp_path)
    assert len(done) == long_jobs + short_jobs
    assert all(end - start >= 1.9 for start, end in (done[n] for n in range(2, 2 + long_jobs)))
    # No start, once the lowering was seen, while two or more jobs still ran.
    later = [(t, n) for t, n in running_at_starts(tmp_path) if t > lowered + 0.5]
    assert len(later) == short_jobs
    assert max(n for _, n in later) == 2
    assert max_running(tmp_path) == 4


@pytest.mark.timeout(40)
def test_max_running_0_pauses_and_none_resumes(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt",
                      ["#runmaker max-running 2"] + [f". {timed_job(0.4)}"] * 10)
    worker = procs.start("runmaker", "-q", "-j3", "runs.txt", cwd=tmp_path)
    wait_for(lambda: running_now(tmp_path) == 2, what="two jobs")

    paused = append_directive(path, "#runmaker max-running 0")
    # The running jobs go on to their end; then nothing starts, and the worker waits.
    wait_for(lambda: running_now(tmp_path) == 0 and "r" not in states(path),
             what="the running jobs to end")
    before = len(running_at_starts(tmp_path))
    holds_for(lambda: worker.poll() is None and len(running_at_starts(tmp_path)) == before,
              1.2, "a paused worker that starts nothing and does not exit")
    assert all(t < paused + 0.5 for t, _ in running_at_starts(tmp_path))
    assert states(path).count(".") == 10 - before
    assert 0 < 10 - before

    resumed = append_directive(path, "#runmaker max-running none")
    wait_for(lambda: len(running_at_starts(tmp_path)) > before, what="a start after the resume")
    assert running_at_starts(tmp_path)[before][0] - resumed < 1.5
    assert wait_exit(worker) == 0
    assert states(path) == "d" * 10
    if 10 - before >= 3:  # no cap: -j3 is the limit again
        assert max(n for t, n in running_at_starts(tmp_path) if t > resumed) == 3


@pytest.mark.timeout(40)
def test_a_killed_workers_slot_frees_itself_and_a_waiting_worker_proceeds(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        "#runmaker max-running 1",
        ". echo $$ > jobpid; exec sleep 60",
        ". echo $RUNMAKER_LINE >> ran",
        ". echo $RUNMAKER_LINE >> ran",
    ])
    holder = procs.start("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    pgid = wait_for(lambda: read_int(tmp_path / "jobpid"), what="the job's pid")
    try:
        waiter = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
        # Held back only by the cap: the second worker waits, it does not exit.
        holds_for(lambda: waiter.poll() is None and states(path) == "r..", 1.2,
                  "a worker waiting for the only slot")
        holder.kill()
        assert wait_exit(holder) == -signal.SIGKILL
        assert wait_exit(waiter) == 0
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)  # if the worker's guardian has not killed it yet
        except ProcessLookupError:
            pass
    assert (tmp_path / "ran").read_text().split() == ["3", "4"]
    assert states(path) == "edd"  # the dead worker's job is lost: e


# --------------------------------------------------------------------------
# Barriers
# --------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_jobs_below_barriers_start_after_every_job_above_ended(tmp_path, procs):
    sections = [
        [". " + timed_job(0.2), ". " + timed_job(0.5), ". " + timed_job(0.3)],
        [". " + timed_job(0.3), "+ " + timed_job(0.1)],  # '+' does not jump a barrier
        [". " + timed_job(0.1)],
    ]
    lines = sections[0] + ["#runmaker barrier"] + sections[1] + ["#runmaker barrier"] + sections[2]
    path = write_file(tmp_path / "runs.txt", lines)
    workers = [procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        assert wait_exit(worker) == 0
    assert states(path) == "dddddd"
    done = spans(tmp_path)
    assert sorted(done) == [1, 2, 3, 5, 6, 8]
    section_lines = [[1, 2, 3], [5, 6], [8]]
    for k in (1, 2):
        above_ended = max(done[n][1] for s in section_lines[:k] for n in s)
        assert all(done[n][0] > above_ended for n in section_lines[k])


@pytest.mark.timeout(30)
def test_a_worker_waits_for_a_barrier_whose_job_runs_on_another_worker(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [
        ". " + gated_job("first"),
        "#runmaker barrier",
        ". echo $RUNMAKER_LINE >> ran",
        ". echo $RUNMAKER_LINE >> ran",
    ])
    first = procs.start("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "first.started").exists(), what="job 1")
    second = procs.start("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path)
    holds_for(lambda: second.poll() is None and states(path) == "r..", 1.2,
              "a worker waiting behind a barrier")
    (tmp_path / "first.go").touch()
    assert wait_exit(first) == 0
    assert wait_exit(second) == 0
    assert states(path) == "ddd"
    assert sorted((tmp_path / "ran").read_text().split()) == ["3", "4"]


def set_state(path: Path, line: int, state: bytes) -> None:
    """Write one state byte, as runset --set does (no worker runs meanwhile)."""
    offset = sum(len(x) for x in path.read_bytes().splitlines(keepends=True)[: line - 1])
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, state, offset)
    finally:
        os.close(fd)


BLOCKED = [
    ". true",
    ". test -e fixed",
    "#runmaker barrier",
    ". echo $RUNMAKER_LINE >> ran",
    "#runmaker barrier",
    ". echo $RUNMAKER_LINE >> ran",
]


@pytest.mark.timeout(30)
def test_a_failure_above_a_barrier_blocks_the_jobs_below_until_retried(tmp_path):
    path = write_file(tmp_path / "runs.txt", BLOCKED)
    blocked_line = "runmaker: runs.txt: jobs below the barrier at line 3 wait for failed jobs above it"

    result = run("runmaker", "-q", "-j2", "runs.txt", cwd=tmp_path, timeout=15)
    assert result.returncode == 1  # it ran the failed job
    assert result.stderr.decode().splitlines() == [blocked_line]
    assert states(path) == "d!.."
    assert not (tmp_path / "ran").exists()

    # Retried and failing again: still blocked, and the worker still ends.
    result = run("runmaker", "-q", "-r", "runs.txt", cwd=tmp_path, timeout=15)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [blocked_line]
    assert states(path) == "d!.."

    # Nothing it could run: a plain worker exits at once, 0, and says why.
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=15)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [blocked_line]

    (tmp_path / "fixed").touch()
    result = run("runmaker", "-q", "-r", "runs.txt", cwd=tmp_path, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert states(path) == "dddd"
    assert (tmp_path / "ran").read_text().split() == ["4", "6"]


@pytest.mark.timeout(30)
def test_a_retired_failure_unblocks_the_jobs_below(tmp_path):
    path = write_file(tmp_path / "runs.txt", BLOCKED)
    assert run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=15).returncode == 1
    assert states(path) == "d!.."
    set_state(path, 2, b"-")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path, timeout=15)
    assert result.returncode == 0, result.stderr
    assert states(path) == "d-dd"
    assert (tmp_path / "ran").read_text().split() == ["4", "6"]


# --------------------------------------------------------------------------
# --follow
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_follow_picks_up_appended_jobs_and_drains_on_sigterm(tmp_path, procs):
    path = write_file(tmp_path / "runs.txt", [". echo $RUNMAKER_LINE >> ran"])
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "-j2", "--follow", "runs.txt", cwd=tmp_path,
                             stderr=err_file)
    wait_for(lambda: states(path) == "d", what="job 1")
    holds_for(lambda: worker.poll() is None, 0.7, "a following worker with nothing to do")

    append_directive(path, ". echo $RUNMAKER_LINE >> ran")
    append_directive(path, ". " + gated_job("long"))
    wait_for(lambda: states(path) == "ddr" and (tmp_path / "long.started").exists(),
             what="the appended jobs")

    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: b"draining" in err.read_bytes(), what="the drain message")
    append_directive(path, ". echo $RUNMAKER_LINE >> ran")  # after the drain: not claimed
    holds_for(lambda: states(path) == "ddr.", 0.7, "a draining worker claiming nothing")
    (tmp_path / "long.go").touch()
    assert wait_exit(worker) == 130
    assert states(path) == "ddd."
    assert (tmp_path / "ran").read_text().split() == ["1", "2"]
    assert err.read_text() == (
        "runmaker: SIGTERM: draining, claiming no more jobs; "
        "1 still running (a second SIGINT, SIGTERM or SIGHUP kills them)\n"
    )


# --------------------------------------------------------------------------
# The dumps example
# --------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_the_dumps_example_runs_every_step_and_the_report_last(tmp_path):
    example = tmp_path / "dumps"
    shutil.copytree(ROOT / "examples" / "dumps", example)
    result = run("runmaker", "-j4", "--joblog", "joblog.tsv", "runs.txt", cwd=example, timeout=30)
    assert result.returncode == 0, result.stderr
    assert states(example / "runs.txt") == "d" * 21

    rows = [r.split("\t") for r in (example / "joblog.tsv").read_text().splitlines()[1:]]
    jobs = {r[8]: (float(r[2]), float(r[2]) + float(r[3])) for r in rows}
    assert len(jobs) == 21
    report = jobs.pop("sh report.sh customers invoices products orders events")
    assert all(report[0] >= end for _, end in jobs.values())  # the report ran last
    # The urgent '+' dump jumped the queue: it was claimed (and so printed
    # `executing`) first.  The joblog's millisecond start times can tie.
    claimed = [line for line in result.stdout.decode().splitlines() if line.startswith("executing `")]
    assert claimed[0] == "executing `sh dump.sh orders 4000'"
    assert len(claimed) == 21
    # max-running 3 (the joblog's times come from two clocks: allow 10 ms)
    for start, _ in jobs.values():
        assert sum(1 for s, e in jobs.values() if s <= start + 0.01 and start < e - 0.01) <= 3
    assert (example / "work" / "report.txt").read_text().splitlines() == [
        f"{db}: restored and uploaded, {count} rows"
        for db, count in (("customers", 1000), ("invoices", 12000), ("products", 2000),
                         ("orders", 4000), ("events", 6000))
    ]


@pytest.mark.timeout(30)
def test_a_cap_set_later_counts_jobs_started_without_one(tmp_path, procs):
    """Running jobs adopt free slots once their (busy) worker reads the cap."""
    path = write_file(tmp_path / "runs.txt", [f". {gated_job(f'j{i}')}" for i in range(3)])
    worker = procs.start("runmaker", "-q", "-j3", "runs.txt", cwd=tmp_path)
    wait_for(lambda: all((tmp_path / f"j{i}.started").exists() for i in range(3)),
             what="three uncapped jobs running")
    append_directive(path, "#runmaker max-running 2")
    fd = os.open(path, os.O_RDONLY)
    try:
        from runmaker import SLOT_BASE, _is_locked_elsewhere

        wait_for(lambda: _is_locked_elsewhere(fd, SLOT_BASE) and _is_locked_elsewhere(fd, SLOT_BASE + 1),
                 timeout=5, what="the worker's running jobs to take both slots")
        assert not _is_locked_elsewhere(fd, SLOT_BASE + 2)
    finally:
        os.close(fd)
    for i in range(3):
        (tmp_path / f"j{i}.go").touch()
    assert wait_exit(worker) == 0
    assert states(path) == "ddd"
