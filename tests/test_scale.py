"""What keeps a worker's and runwait's reading proportional to what changes
(issue 13): `#runmaker set` notices, rescans below the finished prefix only,
the streamed index and runset's index-free summary.  Real files, real
processes; the speed figures themselves are benchmarks/scale.py's."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import holds_for, run, states, wait_for
from runmaker import JobFile, Scheduler


def finished_file(path: Path, count: int, *, middle: str, tail: list[str] = ()) -> int:
    """``count`` finished lines, the middle one ``middle``; returns its line number."""
    lines = [f"d true {i}" for i in range(count)]
    at = count // 2
    lines[at] = middle
    path.write_text("\n".join(lines + list(tail)) + "\n")
    return at + 1


@pytest.mark.timeout(60)
def test_set_inside_the_finished_prefix_reaches_an_idle_worker_by_its_notice(tmp_path, procs):
    """The worker never rereads the finished prefix: only runset's appended
    notice can tell it that a line there was set back to pending."""
    path = tmp_path / "runs.txt"
    line = finished_file(path, 2000, middle="d touch again")
    worker = procs.start("runmaker", "-q", "--follow", "runs.txt", cwd=tmp_path)
    (tmp_path / "first").write_text("")
    result = run("runset", "--add", "touch first.ran", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: (tmp_path / "first.ran").exists(), what="the appended job")
    result = run("runset", "--set", ".", "runs.txt", str(line), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert path.read_bytes().endswith(b"#runmaker set %d\n" % line)
    wait_for(lambda: (tmp_path / "again").exists(), timeout=5, what="the job set back to '.'")
    wait_for(lambda: states(path)[line - 1] == "d", what="its d")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 130  # drained: SPEC's exit status after a stop signal
    assert states(path) == "d" * 2001


@pytest.mark.timeout(30)
def test_jobfile_reads_set_notices_and_the_scheduler_follows_them(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("d a\nd b\n# c\nd c\n#runmaker set 1\n")
    jobfile = JobFile(str(path))
    scheduler = Scheduler(jobfile)
    try:
        # Notices already in the file when it is first read change nothing.
        assert jobfile.take_set_notices() == []
        assert scheduler.claim_jobs(1, idle=True) == []
        # Changed in place without a notice, inside the finished prefix: not seen.
        data = bytearray(path.read_bytes())
        data[data.index(b"d b")] = ord(".")
        data[data.index(b"d c")] = ord("+")
        path.write_bytes(bytes(data))
        holds_for(lambda: scheduler.claim_jobs(1, idle=True) == [], 1.2,
                  "nothing to claim past rescans")  # more than one rescan's gap
        with open(path, "ab") as f:
            f.write(b"#runmaker set 2-4 9\n")
        claims: list = []
        wait_for(lambda: claims.extend(scheduler.claim_jobs(2 - len(claims), idle=True))
                 or len(claims) == 2, timeout=5, what="the jobs the notice names")
        assert [claim.line for claim in claims] == [4, 2]  # the '+' first
        for claim in claims:
            scheduler.finish_job(claim, "d")
        scheduler.commit()
    finally:
        scheduler.close()
        jobfile.close()
    assert states(path) == "ddd"


@pytest.mark.timeout(30)
def test_a_set_notice_without_lines_or_with_bad_ones_rereads_everything(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("d a\nd b\n")
    warnings: list[str] = []
    jobfile = JobFile(str(path), warn=warnings.append)
    try:
        jobfile.read_new_states()
        with open(path, "ab") as f:
            f.write(b"#runmaker set\n#runmaker set 1 x\n#runmaker set 2-1 4\n")
        jobfile.read_new_states()
        assert jobfile.take_set_notices() == [(1, 0), (1, 0), (2, 1), (4, 4)]
        assert warnings == [f"Warning: {path}:4: set takes line numbers and ranges A-B; ignored"]
    finally:
        jobfile.close()


@pytest.mark.timeout(60)
def test_runwait_sees_a_finished_job_set_back_to_pending(tmp_path, procs):
    """runwait rereads only unfinished stretches: a `d` set back to `.` must
    reach it through runset's notice, and keep it waiting."""
    path = tmp_path / "runs.txt"
    line = finished_file(path, 2000, middle="d true again", tail=[". true last"])
    waiter = procs.start("runwait", "runs.txt", "--interval", "0.1", cwd=tmp_path)
    result = run("runset", "--set", ".", "runs.txt", str(line), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run("runset", "--set", "d", "runs.txt", "2001", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with pytest.raises(Exception, match="timed out"):
        waiter.wait(timeout=1.5)  # the job set back to '.' is pending
    result = run("runset", "--set", "d", "runs.txt", str(line), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert waiter.wait(timeout=10) == 0


@pytest.mark.timeout(60)
def test_summary_counts_like_the_index_on_odd_and_large_files(tmp_path):
    """runset --summary of a whole file counts without an index; pieces with
    directives or odd lines go through the index: the same counts, the same
    warnings, across piece boundaries (256 KiB)."""
    lines = []
    for i in range(60_000):
        lines.append(f"{'.d!e-+x'[i % 7]} true {i}")
        if i % 9_999 == 0:
            lines += ["# comment", "", "  ", "#runmaker set 3", ".odd", "d \t"]
    (tmp_path / "runs.txt").write_text("\n".join(lines))  # the last line without newline
    whole = run("runset", "--summary", "runs.txt", cwd=tmp_path)
    listed = run("runset", "--summary", "--grep", "", "runs.txt", cwd=tmp_path)  # the index's way
    assert whole.returncode == listed.returncode == 0
    assert whole.stdout == listed.stdout
    assert whole.stdout.decode().splitlines()[-1].split() == ["60000", "jobs"]
    assert whole.stderr == listed.stderr
    assert b":4: not a job line" not in whole.stderr
    assert whole.stderr.count(b"not a job line") == 14  # ".odd" and "d \t", 7 times
