"""A file in use by runmaker4 is refused (README: Coming from runmaker4).

runmaker4 is no dependency: the tests build what it leaves in a file by
hand (a ``?`` claim byte, ``r`` jobs without a job lock) and hold its
whole-file read lock from a helper process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Procs, hold_shared_lock, run
from runmaker import JobFile, _running_without_lock

_WHY = ("runmaker4's running jobs hold no lock, so runmaker would take them for lost and run them "
        "a second time; stop runmaker4 first (never run both on one file)")


def _hold_whole_file_lock(procs: Procs, path: Path) -> subprocess.Popen[bytes]:
    """A process holding ``path``'s whole-file read lock as runmaker4's
    read_jobs does: every byte, to the end and beyond."""
    return hold_shared_lock(procs, path, 0, 0)


def _refused(tmp_path, jobs: bytes, *args: str) -> str:
    path = tmp_path / "runs.txt"
    path.write_bytes(jobs)
    result = run("runmaker", "-l", "runs.log", "--joblog", "runs.tsv", *args, "runs.txt", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == b""
    assert path.read_bytes() == jobs  # untouched: nothing claimed, nothing marked 'e'
    assert not (tmp_path / "runs.log").exists() and not (tmp_path / "runs.tsv").exists()
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [[], ["-r"]])
def test_a_question_mark_claim_byte_is_refused(tmp_path, args):
    message = _refused(tmp_path, b"# runmaker4's file\nd echo a\n? echo b\n. echo c\n", *args)
    assert message == (
        f"Error: runs.txt:3: '?' is runmaker4's claim in progress, so runmaker4 uses this file; {_WHY}"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [[], ["-r"]])
def test_unlocked_running_jobs_under_a_whole_file_lock_are_refused(tmp_path, args):
    jobs = b"d echo a\nr echo b\n. echo c\nr echo d\n"
    (tmp_path / "runs.txt").write_bytes(jobs)
    procs = Procs()
    try:
        _hold_whole_file_lock(procs, tmp_path / "runs.txt")
        message = _refused(tmp_path, jobs, *args)
    finally:
        procs.reap()
    assert message == (
        "Error: runs.txt: jobs at line 2 4 are 'r' with no job lock while another process locks the whole "
        f"file, as runmaker4 does, so runmaker4 uses this file; {_WHY}"
    )


@pytest.mark.timeout(30)
def test_a_whole_file_lock_alone_is_not_runmaker4(tmp_path):
    # No 'r' without a lock: nothing runmaker4 could be running; the
    # pending jobs run once the other process lets go of the file.
    (tmp_path / "runs.txt").write_bytes(b". echo a\n")
    procs = Procs()
    try:
        holder = _hold_whole_file_lock(procs, tmp_path / "runs.txt")
        worker = procs.start("runmaker", "runs.txt", cwd=tmp_path)
        holder.kill()
        out, err = worker.communicate(timeout=20)
    finally:
        procs.reap()
    assert worker.returncode == 0, err
    assert (tmp_path / "runs.txt").read_bytes() == b"d echo a\n"


@pytest.mark.timeout(30)
def test_lost_jobs_without_a_whole_file_lock_are_marked_e_as_before(tmp_path):
    (tmp_path / "runs.txt").write_bytes(b"r echo lost\n. echo a\n")
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs.txt").read_bytes() == b"e echo lost\nd echo a\n"


@pytest.mark.timeout(60)
def test_a_lock_on_one_byte_where_runmaker_probes_is_no_whole_file_lock(tmp_path, procs):
    """Workers starting together probe for runmaker4's whole-file lock at
    the same moments: another worker's probe (one byte, held an instant) is
    no whole-file lock, so a lost job is marked 'e' as usual, not refused."""
    (tmp_path / "runs.txt").write_bytes(b"r echo lost\n. echo a\n")
    hold_shared_lock(procs, tmp_path / "runs.txt", 2**40 - 2)  # a byte the probes may pick
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs.txt").read_bytes() == b"e echo lost\nd echo a\n"


@pytest.mark.timeout(60)
def test_a_running_job_that_ended_since_the_first_read_is_no_trace_of_runmaker4(tmp_path, procs):
    """Under a whole-file lock, a job read as 'r' that another worker has
    finished meanwhile (its byte 'd', its lock gone) is not taken for one
    of runmaker4's: the byte is reread under the probe."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b"d echo a\nr echo ended\nr echo lost\n")
    _hold_whole_file_lock(procs, path)
    jobfile = JobFile(str(path), writable=False)
    try:
        jobfile.read_new_states()
        with open(path, "r+b") as f:  # the other worker's last write, its lock released
            f.seek(path.read_bytes().index(b"r echo ended"))
            f.write(b"d")
        assert _running_without_lock(jobfile, [1, 2]) == [2]
    finally:
        jobfile.close()
