"""examples/slurm.sh under a real Slurm: job arrays, time limits, SIGUSR1, throttling, cancels.

A session fixture stands up a one-node Slurm (munged, slurmctld, slurmd)
in a network namespace of its own whose only interface is loopback, runs
the batch jobs as root, and stops everything it started whatever happens.
The node has 2 CPUs shared by up to 16 one-CPU tasks, so the checks run
side by side; the two that need a minute of Slurm's time (a time limit)
are submitted before every other test of this module and checked last.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, states, wait_for

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "examples" / "slurm.sh"
NODE = "rmtest"
# Every process started for these tests carries this variable (daemons, job
# scripts, jobs), so teardown can find whatever Slurm left behind.
MARK = "RUNMAKER_SLURM_TEST"
_TOOLS = ("unshare", "nsenter", "ip", "munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
# Every job of these tests writes `LINE TASK` to `marks` when it has run to its end.
_MARKED_JOB = 'echo $RUNMAKER_LINE $SLURM_ARRAY_TASK_ID >> marks'


def _why_no_slurm() -> str | None:
    """The one reason this machine cannot run the Slurm tests, or None."""
    if os.geteuid() != 0:
        return "the Slurm tests need root (slurmd runs the jobs, munged and the namespace need root)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return ("the Slurm tests need slurm-wlm, munge, iproute2 and util-linux "
                f"(missing: {' '.join(missing)}); .ci/run installs slurm-wlm and munge when run as root")
    return None


def _process_environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def processes_with(name: str, value: str) -> list[int]:
    """Pids of the processes (not this one) started with NAME=VALUE in their environment."""
    want = f"{name}={value}".encode()
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and int(p) != os.getpid() and want in _process_environ(int(p))]


@dataclass
class Task:
    """One finished array task, as Slurm's job completion log has it."""

    state: str  # COMPLETED, FAILED, TIMEOUT, CANCELLED
    exit_code: str  # "0:0": status and signal of the batch script
    start: float
    end: float


class Cluster:
    """A running single-node Slurm, driven through its commands inside the namespace."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.netns_pid = 0
        self.holder: subprocess.Popen[bytes] | None = None
        self.daemons_started = False
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for name in ("runmaker", "runset"):  # this checkout's commands, for the batch scripts
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / (name + ".py")}" "$@"\n')
            shim.chmod(0o755)
        self.env = dict(os.environ, SLURM_CONF=str(work / "etc" / "slurm.conf"),
                        PATH=f"{bin_dir}:{os.environ['PATH']}", **{MARK: str(work)})
        for name in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SBATCH_ARRAY_INX"):
            self.env.pop(name, None)

    # -- commands in the namespace ----------------------------------------

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        """Run one command inside the namespace; return its stdout."""
        result = subprocess.run(
            ["nsenter", f"--net=/proc/{self.netns_pid}/ns/net", *args], cwd=cwd, env=self.env,
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode(errors="replace")

    def submit(self, cwd: Path, *args: str) -> str:
        """sbatch ARGS from CWD; return the job id."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd)
        return out.strip().split(";")[0]

    def tasks(self, job: str) -> dict[int, Task]:
        """The finished tasks of array JOB by task id, from the job completion log."""
        found = {}
        try:
            text = (self.work / "log" / "jobcomp.txt").read_text()
        except FileNotFoundError:
            return {}
        for line in text.splitlines():
            record = dict(re.findall(r"(\w+)=(\S*)", line))
            if record.get("ArrayJobId") != job:
                continue
            found[int(record["ArrayTaskId"])] = Task(
                record["JobState"], record["ExitCode"],
                _epoch(record["StartTime"]), _epoch(record["EndTime"]))
        return found

    def queued(self, job: str) -> list[str]:
        """squeue lines `TASK STATE` of JOB's tasks still known to be pending or running."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%K %T", check=False)
        return out.split("\n")[:-1]

    def wait_tasks(self, job: str, count: int, timeout: float) -> dict[int, Task]:
        """Wait until COUNT tasks of JOB are finished and none is left in the queue."""
        wait_for(lambda: len(self.tasks(job)) >= count and not self.queued(job),
                 timeout=timeout, what=f"{count} tasks of job {job} to end")
        return self.tasks(job)

    # -- start and stop ---------------------------------------------------

    def start(self) -> None:
        work = self.work
        for sub in ("etc", "run", "log", "state/ctld", "state/d", "munge"):
            (work / sub).mkdir(parents=True)
        # A namespace with loopback only, held open by a sleeping process.
        with open(work / "log" / "unshare.log", "wb") as errors:
            self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "86400"], env=self.env,
                                           stdin=subprocess.DEVNULL, stderr=errors)
        holder = self.holder
        netns = f"/proc/{holder.pid}/ns/net"
        wait_for(lambda: holder.poll() is not None or os.readlink(netns) != os.readlink("/proc/self/ns/net"),
                 timeout=10, what="the network namespace")
        if holder.poll() is not None:
            reason = (work / "log" / "unshare.log").read_text(errors="replace").strip()
            pytest.skip(f"the Slurm tests need a network namespace: unshare --net failed: {reason}")
        self.netns_pid = holder.pid
        self.run("ip", "link", "set", "lo", "up")
        # Slurm binds with getaddrinfo(AI_PASSIVE | AI_ADDRCONFIG), which finds
        # no address at all while 127.0.0.1 is the only IPv4 one.
        self.run("ip", "addr", "add", "127.0.0.2/8", "dev", "lo")

        key = work / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        (work / "munge").chmod(0o700)
        self.daemons_started = True
        self.run("munged", "--force", f"--socket={work}/run/munge.socket", f"--key-file={key}",
                 f"--log-file={work}/log/munged.log", f"--pid-file={work}/run/munged.pid",
                 f"--seed-file={work}/munge/seed")
        self._write_config()
        for daemon, args in (("slurmctld", ["-i"]), ("slurmd", ["-N", NODE])):
            try:
                self.run(daemon, *args)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.log_tail(daemon)}") from None
        try:
            wait_for(lambda: self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).strip() == "idle",
                     timeout=60, what=f"node {NODE} to be idle")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail('slurmctld')}\n{self.log_tail('slurmd')}") from None

    def _write_config(self) -> None:
        work = self.work
        host = socket.gethostname().split(".")[0]
        # cgroup v1 with a freezer hierarchy (this machine; no systemd needed):
        # proctrack/cgroup finds every process of a task.  Elsewhere: /proc.
        freezer = Path("/sys/fs/cgroup/freezer/cgroup.procs").exists()
        proctrack = "proctrack/cgroup" if freezer else "proctrack/linuxproc"
        (work / "etc" / "slurm.conf").write_text(f"""\
ClusterName=rmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=16917
SlurmdPort=16918
AuthType=auth/munge
AuthInfo=socket={work}/run/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={work}/state/ctld
SlurmdSpoolDir={work}/state/d
SlurmctldPidFile={work}/run/slurmctld.pid
SlurmdPidFile={work}/run/slurmd.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.log
ProctrackType={proctrack}
TaskPlugin=task/affinity
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={work}/log/jobcomp.txt
KillWait=5
MinJobAge=3600
InactiveLimit=0
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
        (work / "etc" / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nCgroupAutomount=no\n")

    def log_tail(self, daemon: str) -> str:
        try:
            lines = (self.work / "log" / f"{daemon}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({daemon}: no log)"
        return "\n".join(f"{daemon}: {line}" for line in lines[-8:])

    def stop(self) -> list[str]:
        """Stop everything started for the tests; return what had to be killed late."""
        if self.daemons_started and (self.work / "run" / "slurmctld.pid").exists():
            self.run("scancel", "-u", "root", check=False)
            try:
                wait_for(lambda: not self.run("squeue", "-h", check=False).strip(), timeout=30,
                         what="the queue to empty")
            except AssertionError:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            _stop_by_pid_file(self.work / "run" / f"{name}.pid", name)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
        leftovers = []
        for pid in processes_with(MARK, str(self.work)):
            leftovers.append(_command_line(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Empty cgroups that slurmd made for this node (cgroup v1).
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/slurm_{NODE}"):
            for path in sorted(cgroup.rglob("*"), key=lambda p: -len(p.parts)) + [cgroup]:
                if path.is_dir():
                    try:
                        path.rmdir()
                    except OSError:
                        pass
        return leftovers


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp[:1].isdigit() else 0.0


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid} " + f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"


def _stop_by_pid_file(pid_file: Path, name: str) -> None:
    """SIGTERM the daemon named by PID_FILE (if it is still that program), SIGKILL after 10 s."""
    try:
        pid = int(pid_file.read_text().split()[0])
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except (OSError, ValueError, IndexError):
        return
    if comm != name:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    slurm = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        leftovers = slurm.stop()
    assert not leftovers, f"processes left running after the Slurm tests: {leftovers}"


def job_file(directory: Path, commands: list[str]) -> Path:
    directory.mkdir()
    path = directory / "runs.txt"
    path.write_text("".join(f". {c}\n" for c in commands))
    return path


def marks(directory: Path) -> list[tuple[int, int]]:
    """(LINE, TASK) for every job that ran to its end, in the order they ended."""
    try:
        text = (directory / "marks").read_text()
    except FileNotFoundError:
        return []
    return [(int(a), int(b)) for a, b in (row.split() for row in text.splitlines())]


def processes_of(jobs: Path) -> list[str]:
    """Job processes of JOBS still running anywhere on this machine."""
    return [_command_line(pid) for pid in processes_with("RUNMAKER_FILE", str(jobs))]


@dataclass
class LongRuns:
    """The submissions that need a minute of Slurm time, running while other tests do."""

    limit_dir: Path
    limit_job: str
    usr1_dir: Path
    usr1_job: str


@pytest.fixture(scope="module", autouse=True)
def long_runs(cluster: Cluster) -> LongRuns:
    base = cluster.work / "long"
    base.mkdir()
    # Time limit: three tasks each run one job that would take 5 minutes; jobs
    # 4-6 wait.  An early warning (USR1) 30 s before the limit drains them.
    limit_dir = base / "limit"
    limit_jobs = job_file(limit_dir, [f"sleep $(cat dur); {_MARKED_JOB}"] * 6)
    (limit_dir / "dur").write_text("300\n")
    limit_job = cluster.submit(limit_dir, "--array=1-3", "--cpus-per-task=1", "--time=1",
                               "--signal=B:USR1@30", str(SCRIPT), str(limit_jobs))
    # SIGUSR1 50 s before a 1-minute limit: more 4-s jobs than fit in the
    # time; the running one finishes, the task ends COMPLETED before its limit.
    usr1_dir = base / "usr1"
    usr1_jobs = job_file(usr1_dir, [f"sleep 4; {_MARKED_JOB}"] * 20)
    usr1_job = cluster.submit(usr1_dir, "--array=1", "--cpus-per-task=1", "--time=1",
                              "--signal=B:USR1@50", str(SCRIPT), str(usr1_jobs))
    return LongRuns(limit_dir, limit_job, usr1_dir, usr1_job)


# ------------------------------------------------------------------------
# Quick checks, while the long runs run
# ------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_an_array_runs_every_job_exactly_once(cluster: Cluster) -> None:
    work = cluster.work / "once"
    jobs = job_file(work, [f"sleep 0.2; {_MARKED_JOB}"] * 60)
    # Options after the job file reach runmaker: here a job log.
    job = cluster.submit(work, "--array=1-4", "--cpus-per-task=1", "--time=5",
                         str(SCRIPT), str(jobs), "--joblog", "runs.joblog")
    tasks = cluster.wait_tasks(job, 4, timeout=180)
    assert {t: (task.state, task.exit_code) for t, task in tasks.items()} == dict.fromkeys(
        (1, 2, 3, 4), ("COMPLETED", "0:0"))
    assert states(jobs) == "d" * 60
    ran = marks(work)
    assert sorted(line for line, _ in ran) == list(range(1, 61))
    assert {task for _, task in ran} <= {1, 2, 3, 4}
    joblog = (work / "runs.joblog").read_text().splitlines()
    assert joblog[0].startswith("Seq\tHost\t")
    assert sorted(int(row.split("\t")[0]) for row in joblog[1:]) == list(range(1, 61))
    assert (work / "runs.log").read_text().count(".-> sleep 0.2; ") == 60
    for t in (1, 2, 3, 4):  # one output file per array task
        assert (work / f"runmaker-{job}_{t}.out").exists()
    assert processes_of(jobs) == []


@pytest.mark.timeout(240)
def test_a_throttled_array_runs_at_most_that_many_tasks_at_once(cluster: Cluster) -> None:
    work = cluster.work / "throttle"
    jobs = job_file(work, [f"sleep 1; {_MARKED_JOB}"] * 12)
    job = cluster.submit(work, "--array=1-6%2", "--cpus-per-task=1", "--time=5", str(SCRIPT), str(jobs))
    peak = 0
    deadline = time.monotonic() + 180
    while len(cluster.tasks(job)) < 6 or cluster.queued(job):
        assert time.monotonic() < deadline, f"job {job}: tasks still queued: {cluster.queued(job)}"
        running = [row for row in cluster.queued(job) if row.endswith(" RUNNING")]
        peak = max(peak, len(running))
        time.sleep(0.2)
    tasks = cluster.tasks(job)
    assert {task.state for task in tasks.values()} == {"COMPLETED"}
    assert 1 <= peak <= 2
    assert states(jobs) == "d" * 12
    assert sorted(line for line, _ in marks(work)) == list(range(1, 13))


@pytest.mark.timeout(240)
def test_a_cancelled_tasks_job_goes_back_and_runs_once(cluster: Cluster) -> None:
    work = cluster.work / "cancel"
    job_line = f"echo $RUNMAKER_LINE $SLURM_ARRAY_TASK_ID >> started; sleep 3; {_MARKED_JOB}"
    jobs = job_file(work, [job_line] * 12)
    job = cluster.submit(work, "--array=1-3", "--cpus-per-task=1", "--time=5", str(SCRIPT), str(jobs))
    wait_for(lambda: states(jobs).count("r") == 3, timeout=120, what="three running jobs")
    cluster.run("scancel", f"{job}_2")
    tasks = cluster.wait_tasks(job, 3, timeout=180)
    assert tasks[2].state == "CANCELLED"
    assert (tasks[1].state, tasks[3].state) == ("COMPLETED", "COMPLETED")
    assert states(jobs) == "d" * 12
    ran = marks(work)
    assert sorted(line for line, _ in ran) == list(range(1, 13))  # each ran to its end once
    started = [tuple(map(int, row.split())) for row in (work / "started").read_text().splitlines()]
    cut = [line for line, task in started if task == 2 and (line, 2) not in ran]
    assert len(cut) == 1, started  # task 2's job was interrupted ...
    again = [task for line, task in ran if line == cut[0]]
    assert again and again[0] in (1, 3)  # ... put back, and run once by another task
    log = (work / "runs.log").read_text()
    assert len(re.findall(r"^\+ status \([^)]*\): requeued \"", log, re.MULTILINE)) == 1
    assert processes_of(jobs) == []


@pytest.mark.timeout(120)
def test_a_missing_job_file_fails_each_task_with_the_usage_line(cluster: Cluster) -> None:
    work = cluster.work / "missing"
    work.mkdir()
    job = cluster.submit(work, "--array=1-2", "--cpus-per-task=1", "--time=5", str(SCRIPT),
                         "no-such-runs.txt")
    tasks = cluster.wait_tasks(job, 2, timeout=60)
    assert {(task.state, task.exit_code) for task in tasks.values()} == {("FAILED", "2:0")}
    out = (work / f"runmaker-{job}_1.out").read_text()
    assert "slurm.sh: no-such-runs.txt: no such job file\nusage: sbatch --array=1-N " in out


# ------------------------------------------------------------------------
# The long runs
# ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_sigusr1_before_the_time_limit_drains_and_the_task_completes(
        cluster: Cluster, long_runs: LongRuns) -> None:
    work, job = long_runs.usr1_dir, long_runs.usr1_job
    jobs = work / "runs.txt"
    tasks = cluster.wait_tasks(job, 1, timeout=240)
    assert (tasks[1].state, tasks[1].exit_code) == ("COMPLETED", "0:0")
    assert tasks[1].end - tasks[1].start < 60  # ended before its time limit
    final = states(jobs)
    assert re.fullmatch(r"d+\.+", final), final  # drained: the rest wait, nothing lost
    assert sorted(line for line, _ in marks(work)) == list(range(1, final.count("d") + 1))
    out = (work / f"runmaker-{job}_1.out").read_text()
    assert "runmaker: SIGUSR1: " in out
    assert processes_of(jobs) == []


@pytest.mark.timeout(360)
def test_the_time_limit_puts_running_jobs_back_and_a_second_array_finishes_them(
        cluster: Cluster, long_runs: LongRuns) -> None:
    work, job = long_runs.limit_dir, long_runs.limit_job
    jobs = work / "runs.txt"
    tasks = cluster.wait_tasks(job, 3, timeout=240)
    assert {t: task.state for t, task in tasks.items()} == {1: "TIMEOUT", 2: "TIMEOUT", 3: "TIMEOUT"}
    assert states(jobs) == "......"  # the three interrupted jobs went back; 4-6 never started
    assert marks(work) == []
    assert processes_of(jobs) == []
    log = (work / "runs.log").read_text()
    assert len(re.findall(r"^\+ status \([^)]*\): requeued \"sleep ", log, re.MULTILINE)) == 3
    for t in (1, 2, 3):
        out = (work / f"runmaker-{job}_{t}.out").read_text()
        assert "runmaker: SIGUSR1: " in out and "runmaker: SIGTERM: " in out, out

    (work / "dur").write_text("0.5\n")
    again = cluster.submit(work, "--array=1-2", "--cpus-per-task=1", "--time=5", str(SCRIPT), str(jobs))
    tasks = cluster.wait_tasks(again, 2, timeout=120)
    assert {task.state for task in tasks.values()} == {"COMPLETED"}
    assert states(jobs) == "dddddd"
    assert sorted(line for line, _ in marks(work)) == [1, 2, 3, 4, 5, 6]
