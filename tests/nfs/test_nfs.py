"""runmaker on real NFS between separate Linux kernels (User-mode Linux guests).

One NFS server (kernel nfsd, lease and grace 10 s) and three clients, each
its own kernel, booted once per session (conftest.py, umlnfs.py).  The
workers run in the clients on a job file on the server's export; the checks
read the file, and marker files the jobs leave, from a client.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from .umlnfs import LEASE, Guest, Lab

pytestmark = [pytest.mark.nfs, pytest.mark.timeout(300)]


def _summary_samples(out: str) -> list[tuple[float, dict[str, int]]]:
    """The ``P TIME JSON`` lines of a polling script, as (time, counts)."""
    samples = []
    for line in out.splitlines():
        if line.startswith("P "):
            _, t, counts = line.split(" ", 2)
            samples.append((float(t), json.loads(counts)))
    return samples


def _poll_summary(guest: Guest, path: str, until: str, limit: float) -> str:
    """A script for ``guest``: print the job counts of ``path`` with the time
    every 0.2 s, until the JSON holds ``until`` or ``limit`` seconds passed."""
    return f"""end=$(( $(date +%s) + {int(limit)} ))
while [ $(date +%s) -lt $end ]; do
  s=$(runset --summary --json {path}); echo "P $(now) $s"
  case $s in *'{until}'*) break;; esac
  sleep 0.2
done"""


def _wait_summary(guest: Guest, path: str, until: str, limit: float = 60) -> None:
    out = guest.sh(_poll_summary(guest, path, until, limit), timeout=limit + 30).out
    samples = _summary_samples(out)
    assert samples and until in json.dumps(samples[-1][1]), \
        f"{guest.name}: {path} never showed {until}: {samples[-3:]}"


def _markers(lab: Lab, guest: Guest, directory: str) -> dict[int, list[str]]:
    """Marker files ``N.HOST.PID`` in ``directory`` -> {N: [HOST, ...]}, one entry per run."""
    runs: dict[int, list[str]] = {}
    for name in guest.sh(f"ls {directory}").out.split():
        number, host, _ = name.split(".", 2)
        runs.setdefault(int(number), []).append(host)
    return runs


def _states(data: bytes) -> str:
    return "".join(chr(line[0]) for line in data.split(b"\n") if line)


# --------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["nolock", "local_lock=posix", "local_lock=all"])
def test_a_mount_whose_locks_stay_local_is_refused_naming_the_option(lab: Lab, option: str) -> None:
    """NFSv3 mounted with an option that keeps fcntl locks on the client:
    exit 2, one Error: line naming the option, the job not run, the file as it was."""
    c = lab.clients[0]
    lab.ensure_up(c)
    d = "/nl/refuse"
    text = f". touch {d}/ran\n"
    run = c.sh(f"""mkdir -p /nl; mount -t nfs -o vers=3,{option} srv:/export /nl || exit 9
rm -rf {d}; mkdir -p {d}; cp {lab.put('refuse.txt', text)} {d}/runs.txt
runmaker {d}/runs.txt 2> /lab/files/refuse.err > /lab/files/refuse.out; echo "rc=$?"
cp {d}/runs.txt /lab/files/refuse.after; ls {d}; umount /nl""")
    err = (lab.files / "refuse.err").read_text().splitlines()
    assert run.out.split() == ["rc=2", "runs.txt"]
    assert len(err) == 1 and err[0].startswith("Error:") and f"'{option}'" in err[0], err
    assert (lab.files / "refuse.out").read_text() == ""
    assert (lab.files / "refuse.after").read_text() == text


def test_local_lock_flock_keeps_posix_locks_shared_and_is_accepted(lab: Lab) -> None:
    c = lab.clients[0]
    lab.ensure_up(c)
    d = "/nl/flock"
    run = c.sh(f"""mkdir -p /nl; mount -t nfs -o vers=3,local_lock=flock srv:/export /nl || exit 9
rm -rf {d}; mkdir -p {d}; printf '. touch {d}/ran\\n' > {d}/runs.txt
runmaker -q {d}/runs.txt; echo "rc=$?"
cat {d}/runs.txt; ls {d}; umount /nl""")
    assert run.out.splitlines() == ["rc=0", f"d touch {d}/ran", "ran", "runs.txt"]


@pytest.mark.parametrize("mount", ["/n4", "/n3"], ids=["nfs4.2", "nfs3"])
def test_three_hosts_run_each_job_exactly_once(lab: Lab, mount: str) -> None:
    """3 hosts x -j4 over a few hundred trivial jobs: 0 doubles, 0 missing,
    the file byte-identical but for its state bytes, every worker exit 0."""
    n = 150
    d = f"{mount}/once"
    text = "".join(f". touch {d}/m/{i}.$RUNMAKER_HOST.$$\n" for i in range(1, n + 1))
    for c in lab.clients:
        lab.ensure_up(c)
    c0 = lab.clients[0]
    c0.sh(f"rm -rf {d}; mkdir -p {d}/m; cp {lab.put('once.txt', text)} {d}/runs.txt")
    workers = [c.start(f"runmaker -q -j4 {d}/runs.txt") for c in lab.clients]
    results = [w.wait(240) for w in workers]
    final = lab.get(c0, f"{d}/runs.txt")
    runs = _markers(lab, c0, f"{d}/m")
    doubles = {k: v for k, v in runs.items() if len(v) > 1}
    missing = [i for i in range(1, n + 1) if i not in runs]
    assert [r.rc for r in results] == [0, 0, 0], results
    assert doubles == {} and missing == []
    assert final == b"".join(b"d" + line[1:] + b"\n" for line in text.encode().split(b"\n")[:-1])
    per_host = Counter(h for hosts in runs.values() for h in hosts)
    assert set(per_host) <= {c.name for c in lab.clients}


def test_a_host_cut_off_past_the_lease_never_runs_a_job_twice_at_once(lab: Lab) -> None:
    """vm2's network goes down for longer than the NFSv4 lease while it runs
    two jobs.  The server drops vm2's locks; vm1 sees the jobs lost, marks
    them ``e`` and ``runmaker -r`` runs them again.  vm2's copies must be
    dead by then (the fence), and vm2's worker, back on the network, ends
    with one ``Error:`` line (exit 1), writing nothing more.

    Each job writes a heartbeat every 0.2 s to the host (``/lab``, not NFS,
    so it is heard during the cut); the runs of one job on two hosts must
    not overlap.
    """
    cut_for = LEASE + 6  # vm2's jobs run as long: still running when vm1 reruns them
    d = "/n4/cut"
    v, obs = lab.clients[1], lab.clients[0]
    for c in (v, obs):
        lab.ensure_up(c)
    hb = "/lab/files/cut-hb"
    # The reruns (started once the file says "quick") take 2 s, not the cut's length.
    job = (f"[ -e {d}/quick ] && n=2 || n={cut_for}; end=$(($(date +%s) + n)); "
           f"while [ $(date +%s) -lt $end ]; do date +%s.%N >> {hb}.$RUNMAKER_LINE.$RUNMAKER_HOST; "
           f"sleep 0.2; done; touch {d}/m/$RUNMAKER_LINE.$RUNMAKER_HOST.$$")
    text = f". {job}\n. {job}\n"
    for f in lab.files.glob("cut-hb.*"):
        f.unlink()
    obs.sh(f"rm -rf {d}; mkdir -p {d}/m; cp {lab.put('cut.txt', text)} {d}/runs.txt")
    worker = v.start(f"runmaker -j2 {d}/runs.txt > /lab/files/cut.out 2> /lab/files/cut.err; echo rc=$?")
    _wait_summary(obs, f"{d}/runs.txt", '"r": 2')
    t_cut = v.cut()
    rerun = None
    try:
        poll = obs.sh(_poll_summary(obs, f"{d}/runs.txt", '"lost": 2', 4 * LEASE), timeout=4 * LEASE + 30)
        lost = [t - t_cut for t, counts in _summary_samples(poll.out) if counts.get("lost") == 2]
        if lost:  # what an operator does next: mark them e, run them again
            rerun = obs.start(f"runmaker -q {d}/runs.txt; touch {d}/quick; "
                              f"runmaker -r -j2 {d}/runs.txt > /lab/files/cut-rerun.out 2>&1; echo rc=$?")
        while time.time() < t_cut + cut_for:
            time.sleep(0.1)
    finally:
        v.heal()
    cut_worker = worker.wait(120).out
    rerun_out = rerun.wait(120).out if rerun else ""
    final = lab.get(obs, f"{d}/runs.txt")
    runs = _markers(lab, obs, f"{d}/m")
    spans: dict[int, dict[str, tuple[float, float]]] = {}
    for f in lab.files.glob("cut-hb.*"):
        _, line, host = f.name.split(".")
        times = [float(x) for x in f.read_text().split()]
        spans.setdefault(int(line), {})[host] = (min(times), max(times))
    overlaps = {line: hosts for line, hosts in spans.items()
                if len(hosts) > 1 and max(s for s, _ in hosts.values()) <= min(e for _, e in hosts.values())}
    err = (lab.files / "cut.err").read_text()
    assert lost, f"vm1 never saw vm2's jobs lost: {poll.out[-500:]}"
    assert overlaps == {}, f"a job ran on two hosts at once: {spans}"
    assert {line: len(hosts) for line, hosts in runs.items()} == {1: 1, 2: 1}, runs
    assert _states(final) == "dd" and "rc=0" in rerun_out
    assert "Traceback" not in err
    assert "rc=1" in cut_worker
    assert [x for x in err.splitlines() if x.startswith("Error:")] == [err.splitlines()[-1]], err


def test_a_killed_hosts_jobs_become_lost_after_the_lease_and_rerun_once(lab: Lab) -> None:
    """vm3 dies (SIGKILL to the whole guest) with 4 jobs running: the server
    keeps its locks (jobs live ``r``) until the NFSv4 lease runs out, then a
    worker on vm1 sees them lost, marks them ``e``, and ``-r`` runs each once."""
    d = "/n4/kill"
    victim, obs = lab.clients[2], lab.clients[0]
    for c in (victim, obs):
        lab.ensure_up(c)
    text = "".join(f". [ -e {d}/fast ] || sleep 300; touch {d}/m/{i}.$RUNMAKER_HOST.$$\n"
                   for i in range(1, 5))
    obs.sh(f"rm -rf {d}; mkdir -p {d}/m; cp {lab.put('kill.txt', text)} {d}/runs.txt")
    victim.start(f"runmaker -j4 {d}/runs.txt")
    _wait_summary(obs, f"{d}/runs.txt", '"r": 4')
    poll = obs.start(_poll_summary(obs, f"{d}/runs.txt", '"lost": 4', 6 * LEASE))
    time.sleep(0.5)
    t_kill = time.time()
    victim.kill()
    samples = _summary_samples(poll.wait(6 * LEASE + 30).out)
    after = [(t - t_kill, counts) for t, counts in samples if t > t_kill]
    lost = [t for t, counts in after if counts.get("lost") == 4]
    assert lost, f"never lost: {after[-3:]}"
    assert lost[0] > LEASE - 1, f"lost {lost[0]:.1f} s after the kill, before the lease ran out"
    assert all((counts.get("r"), counts.get("lost")) == (4, 0) for t, counts in after if t < LEASE - 1), after
    out = obs.sh(f"runmaker -q {d}/runs.txt; cp {d}/runs.txt /lab/files/kill.marked; touch {d}/fast\n"
                 f"runmaker -q -r -j4 {d}/runs.txt; echo rerun=$?; cp {d}/runs.txt /lab/files/kill.final").out
    assert _states((lab.files / "kill.marked").read_bytes()) == "eeee", out
    assert "rerun=0" in out and _states((lab.files / "kill.final").read_bytes()) == "dddd", out
    assert _markers(lab, obs, f"{d}/m") == {i: [obs.name] for i in range(1, 5)}
