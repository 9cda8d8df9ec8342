"""Fencing (SPEC 3): a worker whose job file stops answering kills its jobs.

On one host a real stalled operation is a lock the worker waits for: the
test holds the append byte exclusively (as an appender stuck on a hung disk
would), so the worker's next read of the file blocks in F_SETLKW.  The real
partition, on real NFS, is tests/nfs (test_a_host_cut_off_past_the_lease_...).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from conftest import Procs, alive, read_int, run, states, wait_for, write_jobs

from runmaker import APPEND_BYTE, default_fence


def _hold_append_byte(path: Path) -> int:
    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, APPEND_BYTE)
    return fd


def test_a_stalled_job_file_kills_the_running_jobs_and_claims_nothing_until_it_answers(
    tmp_path: Path, procs: Procs
) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [
        f"echo $$ > {tmp_path}/pid1; exec sleep 60",
        f"echo $$ > {tmp_path}/pid2; exec sleep 60",
        f"touch {tmp_path}/ran3",
    ])
    worker = procs.start("runmaker", "-q", "-j2", "--fence", "1", str(runs))
    pids = wait_for(lambda: [read_int(tmp_path / f"pid{i}") for i in (1, 2)]
                    if all(read_int(tmp_path / f"pid{i}") for i in (1, 2)) else None, what="2 jobs started")
    held = _hold_append_byte(runs)
    try:
        wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="the fence to kill both jobs")  # type: ignore[union-attr]
        assert worker.poll() is None
        assert not (tmp_path / "ran3").exists()  # nothing claimed while the file does not answer
        assert states(runs) == "rr."
    finally:
        os.close(held)
    out, err = worker.communicate(timeout=30)
    lines = err.decode().splitlines()
    assert worker.returncode == 1 and out == b""
    assert states(runs) == "eed"
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"runmaker: {runs}: no answer from the job file for ")
    assert lines[0].endswith("(--fence 1); killed 2 running jobs, whose locks the server may drop; "
                             "claiming nothing until it answers")
    assert lines[1] == f"runmaker: {runs}: the job file answers again; claiming jobs again"


def test_fence_0_lets_jobs_run_through_a_stall(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [f"echo $$ > {tmp_path}/pid; sleep 2.5; touch {tmp_path}/ran"])
    worker = procs.start("runmaker", "-q", "--fence", "0", str(runs))
    wait_for(lambda: read_int(tmp_path / "pid"), what="the job to start")
    held = _hold_append_byte(runs)
    try:
        wait_for(lambda: (tmp_path / "ran").exists(), timeout=10, what="the job to end by itself")
    finally:
        os.close(held)
    out, err = worker.communicate(timeout=30)
    assert (worker.returncode, out, err, states(runs)) == (0, b"", b"", "d")


_MOUNTINFO = (
    "22 1 0:21 / / rw,relatime - ext4 /dev/root rw\n"
    "40 22 0:{dev} / /n4 rw,relatime shared:1 - nfs4 srv:/ rw,vers=4.2,hard,proto=tcp,local_lock=none\n"
    "41 22 0:51 / /n3 rw,relatime - nfs srv:/export rw,vers=3,hard,local_lock=none\n"
)
_MOUNTSTATS = (
    "device srv:/ mounted on /n4 with fstype nfs4 statvers=1.1\n"
    "\topts:\trw,vers=4.2\n"
    "\tnfsv4:\tbm0=0xfdffbfff,bm1=0x40fdbe3e,bm2=0x60803,acl=0x3,sessions,pnfs=not configured,"
    "lease_time={lease},lease_expired=0\n"
)


def test_the_default_fence_is_off_on_local_files_and_bounded_by_the_nfs4_lease(tmp_path: Path) -> None:
    """The mount texts as a Linux 6.1 NFS client shows them (tests/nfs boots one)."""
    path = tmp_path / "runs.txt"
    path.write_text(". true\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        assert default_fence(fd) == 0  # tmp_path: not NFS
        nfs4 = _MOUNTINFO.replace("0:{dev}", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        assert default_fence(fd, nfs4, _MOUNTSTATS.format(lease=90)) == 30
        assert default_fence(fd, nfs4, _MOUNTSTATS.format(lease=30)) == 15
        assert default_fence(fd, nfs4, _MOUNTSTATS.format(lease=10)) == 5
        assert default_fence(fd, nfs4, "") == 30  # no lease shown: the plain default
        nfs3 = _MOUNTINFO.replace("0:51", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        assert default_fence(fd, nfs3, _MOUNTSTATS.format(lease=10)) == 0
    finally:
        os.close(fd)


def test_fence_is_refused_where_no_worker_holds_the_job_file(tmp_path: Path) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["true"])
    for args in (["--serve", "--port", "0", "--fence", "5", str(runs)],
                 ["--connect", "localhost", "--fence", "5"]):
        done = run("runmaker", *args, cwd=tmp_path)
        err = done.stderr.decode().splitlines()
        assert done.returncode == 2 and len(err) == 1 and err[0].startswith("Error: --fence: "), err
    assert runs.read_text() == ". true\n"
