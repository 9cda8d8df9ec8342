"""The Scheduler in process: claim order, and a lock held elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runmaker import IdleReason, JobFile, Scheduler


@pytest.mark.timeout(10)
def test_scheduler_claims_high_priority_first_then_file_order(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". a\n+ b\n- c\n. d\n+ e\nd f\n! g\n")
    jobfile = opened(path, writable=True)
    scheduler = Scheduler(jobfile)
    try:
        claims = scheduler.claim_jobs(10, idle=True)
        assert [c.command for c in claims] == [b"b", b"e", b"a", b"d"]
        assert [c.line for c in claims] == [2, 5, 1, 4]
        assert path.read_bytes() == b"r a\nr b\n- c\nr d\nr e\nd f\n! g\n"
        for claim, state in zip(claims, "d!de"):
            scheduler.finish_job(claim, state)
        scheduler.commit()
    finally:
        scheduler.close()
    assert path.read_bytes() == b"d a\nd b\n- c\ne d\n! e\nd f\n! g\n"


@pytest.mark.timeout(30)
def test_a_pending_job_locked_elsewhere_is_not_taken_for_nothing_left(tmp_path):
    """A lock held elsewhere (runset --set, another worker's claim) on a
    pending job must not let an idle worker conclude that nothing is left."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". true\n")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0); print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE,
    )
    jobfile = JobFile(str(path))
    scheduler = None
    try:
        assert holder.stdout.readline() == b"held\n"
        scheduler = Scheduler(jobfile)
        assert scheduler.claim_jobs(1, idle=True) == []
        assert scheduler.idle_reason == "stale"  # look again, do not exit
        assert scheduler.idle_reason is IdleReason.STALE
        holder.kill()
        holder.wait(timeout=10)
        scheduler.rescan()
        claims = scheduler.claim_jobs(1, idle=True)
        assert [claim.line for claim in claims] == [1]
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
        if scheduler is not None:
            scheduler.close()
        jobfile.close()
