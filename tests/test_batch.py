"""What a batch system relies on, without one: SIGUSR1, --requeue and -j 0.

Slurm, PBS and LSF warn a job with a signal before its time limit (SIGUSR1
here), stop it with SIGTERM and then SIGKILL, and give it CPUs through its
affinity, a cgroup CPU quota or SLURM_CPUS_PER_TASK.  These tests send the
same signals and build a real cgroup; tests/test_slurm.py runs a real Slurm.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    Procs,
    command,
    group_running,
    read_int,
    states,
    wait_for,
    write_jobs,
)

pytestmark = pytest.mark.timeout(40)

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
WAIT_FOR_GO = "touch started.$RUNMAKER_LINE; while [ ! -e go ]; do sleep 0.01; done"
FOREVER = "echo $$ > pid.$RUNMAKER_LINE; while :; do sleep 0.05; done"


def kill_groups(pgids: list[int]) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def no_batch_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "PBS_JOBID", "LSB_JOBID"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------
# SIGUSR1: a planned drain
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("last", "code"), [("exit 0", 0), ("exit 3", 1)])
def test_sigusr1_drains_and_exits_as_if_the_work_had_run_out(tmp_path, procs, last, code):
    path = write_jobs(tmp_path / "runs.txt", [f"{WAIT_FOR_GO}; {last}", "echo second > second"])
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path, stderr=err_file, env=no_batch_env())
    wait_for(lambda: (tmp_path / "started.1").exists(), what="job 1")
    worker.send_signal(signal.SIGUSR1)
    wait_for(lambda: b"draining" in err.read_bytes(), what="the drain message")
    (tmp_path / "go").touch()
    assert worker.wait(timeout=20) == code
    assert err.read_text() == (
        "runmaker: SIGUSR1: draining, claiming no more jobs; letting 1 running job finish\n")
    assert states(path) == ("d" if code == 0 else "!") + "."
    assert not (tmp_path / "second").exists()


def test_sigusr1_with_nothing_running_ends_the_worker_at_once(tmp_path, procs):
    # A worker waiting under a cap of 0 runs nothing: USR1 ends it, exit 0.
    path = tmp_path / "runs.txt"
    path.write_text("#runmaker max-running 0\n. true\n")
    worker = procs.start("runmaker", "runs.txt", cwd=tmp_path, env=no_batch_env())
    wait_for(lambda: worker.poll() is not None or _waiting(worker.pid), what="the worker to wait")
    worker.send_signal(signal.SIGUSR1)
    assert worker.wait(timeout=10) == 0
    assert states(path) == "."


def _waiting(pid: int) -> bool:
    """True once the worker sleeps in its loop (it has installed its handlers)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    caught = int(fields["SigCgt"], 16)
    return bool(caught & (1 << (signal.SIGUSR1 - 1)))


def test_a_stop_signal_after_sigusr1_still_drains_first(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", [WAIT_FOR_GO, "true"])
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path, stderr=err_file, env=no_batch_env())
    wait_for(lambda: (tmp_path / "started.1").exists(), what="job 1")
    worker.send_signal(signal.SIGUSR1)
    wait_for(lambda: b"SIGUSR1" in err.read_bytes(), what="the USR1 message")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: b"SIGTERM" in err.read_bytes(), what="the TERM message")
    (tmp_path / "go").touch()
    assert worker.wait(timeout=20) == 130
    assert err.read_text().splitlines()[1] == (
        "runmaker: SIGTERM: draining, claiming no more jobs; 1 still running "
        "(a second SIGINT, SIGTERM or SIGHUP kills them)")
    assert states(path) == "d."


# --------------------------------------------------------------------------
# The drain message says what comes next
# --------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID"])
def test_under_a_batch_system_the_drain_message_warns_of_its_sigkill(tmp_path, procs, batch):
    write_jobs(tmp_path / "runs.txt", [WAIT_FOR_GO])
    err = tmp_path / "err"
    env = dict(no_batch_env(), **{batch: "42"})
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path, stderr=err_file, env=env)
    wait_for(lambda: (tmp_path / "started.1").exists(), what="job 1")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: b"draining" in err.read_bytes(), what="the drain message")
    (tmp_path / "go").touch()
    assert worker.wait(timeout=20) == 130
    assert err.read_text() == (
        "runmaker: SIGTERM: draining, claiming no more jobs; 1 still running "
        "(a second SIGINT, SIGTERM or SIGHUP kills them; if the batch system kills this worker "
        "first, they are lost: --requeue puts them back instead)\n")


# --------------------------------------------------------------------------
# --requeue
# --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_requeue_stops_running_jobs_and_puts_each_back_as_it_was(tmp_path, procs, signum):
    path = tmp_path / "runs.txt"
    path.write_text(f"+ {FOREVER}\n. {FOREVER}\n! {FOREVER}\n. echo never > never\nd true\n")
    err = tmp_path / "err"
    with open(err, "wb") as err_file:
        worker = procs.start("runmaker", "--requeue", "-r", "-j3", "-l", "runs.log", "--joblog", "jobs.tsv",
                             "runs.txt", cwd=tmp_path, stderr=err_file, env=no_batch_env())
    pgids = [wait_for(lambda n=n: read_int(tmp_path / f"pid.{n}"), what=f"job {n}") for n in (1, 2, 3)]
    try:
        worker.send_signal(signum)
        assert worker.wait(timeout=10) == 130
        assert not any(group_running(pgid) for pgid in pgids)
    finally:
        kill_groups(pgids)
    assert states(path) == "+.!.d"  # each as it was before it was claimed
    assert not (tmp_path / "never").exists()
    assert err.read_text() == (
        f"runmaker: {signum.name}: stopping 3 running jobs and putting them back (--requeue)\n")
    out = worker.stdout.read().decode()
    assert len(re.findall(r'^status \([^,]+,\d+\): requeued "echo \$\$ > ', out, re.MULTILINE)) == 3
    log = (tmp_path / "runs.log").read_text()
    assert len(re.findall(r'^\+ status \([^,]+,\d+\): requeued "echo \$\$ > ', log, re.MULTILINE)) == 3
    rows = [row.split("\t") for row in (tmp_path / "jobs.tsv").read_text().splitlines()[1:]]
    assert sorted((row[0], row[6], row[7]) for row in rows) == [
        ("1", "-1", "15"), ("2", "-1", "15"), ("3", "-1", "15")]


def test_requeue_kills_a_job_that_ignores_sigterm_after_five_seconds(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", [f"trap '' TERM; {FOREVER}"])
    worker = procs.start("runmaker", "--requeue", "--joblog", "jobs.tsv", "runs.txt", cwd=tmp_path,
                         env=no_batch_env())
    pgid = wait_for(lambda: read_int(tmp_path / "pid.1"), what="the job")
    try:
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: states(path) == "r" and group_running(pgid), timeout=3, what="the job to go on")
        assert worker.wait(timeout=15) == 130
        assert not group_running(pgid)
    finally:
        kill_groups([pgid])
    assert states(path) == "."
    assert worker.stderr.read() == (
        b"runmaker: SIGTERM: stopping 1 running job and putting it back (--requeue)\n")
    row = (tmp_path / "jobs.tsv").read_text().splitlines()[1].split("\t")
    assert (row[6], row[7]) == ("-1", "9")
    assert float(row[3]) >= 4.5  # the 5 s grace after SIGTERM


# --------------------------------------------------------------------------
# -j 0: the CPUs this process may use
# --------------------------------------------------------------------------


def start_worker_in(tmp_path: Path, procs: Procs, args: list[str], *, env: dict[str, str],
                    cgroup: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a worker, first moved into CGROUP (before it looks at its CPUs)."""
    enter = f'echo $$ > "{cgroup / "cgroup.procs"}" && ' if cgroup else ""
    worker = subprocess.Popen(
        ["/bin/sh", "-c", f'{enter}exec "$@"', "sh", *command("runmaker"), *args],
        cwd=tmp_path, env=procs.env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    procs.procs.append(worker)
    return worker


def jobs_at_once(tmp_path: Path, procs: Procs, expected: int, *, env: dict[str, str] | None = None,
                 cgroup: Path | None = None) -> set[int]:
    """Run 6 waiting jobs with -j0; return the RUNMAKER_SLOT values they saw.

    With all 6 pending, a worker with -j N starts N of them at once, so the
    slots seen are exactly 0..N-1 (``expected`` is N, to know when to go on).
    """
    job = ("echo $RUNMAKER_SLOT > slot.$RUNMAKER_LINE; touch started.$RUNMAKER_LINE; "
           "while [ ! -e go ]; do sleep 0.01; done")
    path = write_jobs(tmp_path / "runs.txt", [job] * 6)
    worker = start_worker_in(tmp_path, procs, ["-q", "-j0", "runs.txt"], env=env or no_batch_env(),
                             cgroup=cgroup)
    wait_for(lambda: len(list(tmp_path.glob("started.*"))) >= expected, what=f"{expected} jobs at once")
    (tmp_path / "go").touch()
    assert worker.wait(timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    assert states(path) == "d" * 6
    return {int(p.read_text()) for p in tmp_path.glob("slot.*")}


def need_cpus(count: int) -> int:
    cpus = len(os.sched_getaffinity(0))
    if cpus < count:
        pytest.skip(f"needs {count} CPUs in this process's affinity to tell the limits apart (has {cpus})")
    return cpus


def test_jobs_0_is_at_most_slurm_cpus_per_task(tmp_path, procs):
    need_cpus(2)
    assert jobs_at_once(tmp_path, procs, 1, env=dict(no_batch_env(), SLURM_CPUS_PER_TASK="1")) == {0}


def test_jobs_0_ignores_a_slurm_cpus_per_task_above_the_affinity(tmp_path, procs):
    cpus = need_cpus(1)
    env = dict(no_batch_env(), SLURM_CPUS_PER_TASK=str(cpus + 8))
    assert jobs_at_once(tmp_path, procs, min(cpus, 6), env=env) == set(range(min(cpus, 6)))


def _cgroup_mount(fstype: str, controller: str) -> Path | None:
    """Where the hierarchy holding CONTROLLER is mounted (cgroup v1, or cgroup2), if anywhere."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields, more = left.split(), right.split()
            if more[0] != fstype or fields[3] != "/":
                continue
            mount = Path(fields[4])
            if fstype == "cgroup" and controller in more[2].split(","):
                return mount
            if fstype == "cgroup2" and controller in (mount / "cgroup.controllers").read_text().split():
                return mount
    return None


@pytest.fixture
def cgroup_v1_cpu() -> Iterator[Path]:
    """A fresh cgroup (v1 cpu controller) with a child the worker goes into; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    mount = _cgroup_mount("cgroup", "cpu")
    if mount is None or not (mount / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu controller mounted here")
    parent = mount / f"runmaker-test-{os.getpid()}"
    parent.mkdir()
    (parent / "inner").mkdir()
    try:
        yield parent
    finally:
        _remove_cgroup(parent)


def _remove_cgroup(parent: Path) -> None:
    # The worker and its jobs have ended; a cgroup goes once it is empty.
    for path in (parent / "inner", parent):
        wait_for(lambda path=path: _rmdir(path), timeout=10, what=f"{path} to be removable")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("quota", "expected"), [(50_000, 1), (150_000, 2)])
def test_jobs_0_is_at_most_a_cgroup_v1_cpu_quota_rounded_up(tmp_path, procs, cgroup_v1_cpu, quota, expected):
    need_cpus(2)
    # The quota is the parent's: a limit anywhere above the worker's cgroup counts.
    (cgroup_v1_cpu / "cpu.cfs_period_us").write_text("100000")
    (cgroup_v1_cpu / "cpu.cfs_quota_us").write_text(str(quota))
    assert jobs_at_once(tmp_path, procs, expected, cgroup=cgroup_v1_cpu / "inner") == set(range(expected))


@pytest.fixture
def cgroup_v2_cpu() -> Iterator[Path]:
    """A fresh cgroup v2 with the cpu controller and a child the worker goes into."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    mount = _cgroup_mount("cgroup2", "cpu")
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy with the cpu controller here (it is cgroup v1's, or absent)")
    parent = mount / f"runmaker-test-{os.getpid()}"
    parent.mkdir()
    try:
        (parent / "cgroup.subtree_control").write_text("+cpu")
        (parent / "inner").mkdir()
        yield parent
    finally:
        _remove_cgroup(parent)


def test_jobs_0_is_at_most_a_cgroup_v2_cpu_max_rounded_up(tmp_path, procs, cgroup_v2_cpu):
    need_cpus(2)
    (cgroup_v2_cpu / "cpu.max").write_text("50000 100000")
    assert jobs_at_once(tmp_path, procs, 1, cgroup=cgroup_v2_cpu / "inner") == {0}
