"""TCP mode, run as real processes: a server and clients on loopback and across
two network namespaces, wrong tokens and impostors, bad peers, clients and
servers that die, and no job that ever runs twice."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Procs, command, group_running, kill_group, run, states, wait_exit, wait_for, write_jobs
from runmaker_tcp import _Channel, _PeerError, _proof

# Deadlines of the protocol (runmaker_tcp.TcpTimings), shortened so that the
# tests of drops, deaths and reconnects take a second rather than half a
# minute; given to the real command with its hidden --tcp-timings option.
# The jobs here end at SIGTERM, so a kill grace of 0.1 s holds.  Derived:
# server silence 1.0 + 0.1 + 0.4 = 1.5 s, lost release 1.0 + 0.1 + 0.2 = 1.3 s.
FAST = {
    "auth_deadline": 1.0,
    "heartbeat": 0.2,
    "client_silence": 1.0,
    "kill_grace": 0.1,
    "silence_margin": 0.4,
    "release_margin": 0.2,
    "give_up": 10.0,
    "backoff_first": 0.1,
    "backoff_max": 0.3,
    "goodbye": 1.0,
}


class Tcp:
    """Servers and clients as real processes, each one's output in files."""

    def __init__(self, tmp_path: Path, procs: Procs, **settings: float) -> None:
        self.dir = tmp_path
        self.procs = procs
        self.token = tmp_path / "token"
        self.token.write_text(f"test-{secrets.token_hex(16)}\n")
        # Never the user's own ~/.runmaker.token.
        self.env = procs.env(dict(os.environ, HOME=str(tmp_path)))
        self.argv = command("runmaker")
        if settings:
            timings = ",".join(f"{name}={value}" for name, value in settings.items())
            self.argv += ["--tcp-timings", timings]

    def start(self, name: str, *args: str, netns: str | None = None) -> subprocess.Popen[bytes]:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        with open(self.dir / f"{name}.out", "wb") as out, open(self.dir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(prefix + self.argv + list(args), cwd=self.dir, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.procs.procs.append(proc)
        return proc

    def serve(self, jobfile: Path, *args: str, name: str = "server", port: int = 0,
              netns: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
        proc = self.start(name, "--serve", "--port", str(port), "--token", str(self.token),
                          *args, str(jobfile), netns=netns)
        found = wait_for(lambda: proc.poll() is not None or re.search(r"on port (\d+)", self.err(name)),
                         what="the server's port")
        assert proc.poll() is None, self.err(name)
        assert isinstance(found, re.Match)
        return proc, int(found.group(1))

    def connect(self, name: str, port: int, *args: str, host: str = "127.0.0.1",
                netns: str | None = None) -> subprocess.Popen[bytes]:
        return self.start(name, "--connect", f"{host}:{port}", "--token", str(self.token), *args,
                          netns=netns)

    def out(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text(errors="replace")

    def err(self, name: str) -> str:
        return (self.dir / f"{name}.err").read_text(errors="replace")


def record_jobs(path: Path, count: int, extra: str = "") -> Path:
    """Jobs that append their line to ran.txt, and note a second run of the same line."""
    job = ('mkdir "ran.$RUNMAKER_LINE" 2>/dev/null || echo "$RUNMAKER_LINE" >> twice.txt; '
           'echo "$RUNMAKER_LINE $RUNMAKER_FILE" >> ran.txt' + extra)
    return write_jobs(path, [job] * count)


def ran_lines(tmp_path: Path) -> list[int]:
    ran = tmp_path / "ran.txt"
    return sorted(int(line.split()[0]) for line in ran.read_text().splitlines()) if ran.exists() else []


def assert_never_twice(tmp_path: Path) -> None:
    assert not (tmp_path / "twice.txt").exists(), (tmp_path / "twice.txt").read_text()
    lines = ran_lines(tmp_path)
    assert len(lines) == len(set(lines)), lines


def pid_in(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), what=str(path)))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# The protocol's bounds and signatures, in process
# --------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_signed_lines_refuse_replay_reflection_and_forgery() -> None:
    a, b = socket.socketpair()
    try:
        server, client = _Channel(a, "server"), _Channel(b, "client")
        key = secrets.token_bytes(32)
        server.secure(key, server=True)
        client.secure(key, server=False)
        server.send({"t": "ping"})
        server.flush()
        raw = b.recv(4096, socket.MSG_PEEK)
        client.receive()
        assert client.next_message() == {"t": "ping"}
        # The same line again: its sequence number is spent.
        b.setblocking(True)
        a.sendall(raw)
        client.receive()
        with pytest.raises(_PeerError, match="wrong signature"):
            client.next_message()
        # A client's own line sent back to it (reflection) fails too.
        client2 = _Channel(b, "client")
        client2.secure(key, server=False)
        client2.send({"t": "claim", "n": 1})
        line = bytes(client2._out)
        a.sendall(line)
        client2.receive()
        with pytest.raises(_PeerError, match="wrong signature"):
            client2.next_message()
        # A line signed with another key (another token) fails.
        forger = _Channel(a, "server")
        forger.secure(secrets.token_bytes(32), server=True)
        client3 = _Channel(b, "client")
        client3.secure(key, server=False)
        forger.send({"t": "jobs", "jobs": [[1, "dHJ1ZQ=="]]})
        forger.flush()
        client3.receive()
        with pytest.raises(_PeerError, match="wrong signature"):
            client3.next_message()
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(10)
def test_greeting_lines_are_bounded_and_must_be_json_objects() -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        channel = _Channel(b, "peer")
        a.sendall(b"x" * 5000)
        with pytest.raises(_PeerError, match="longer than 4096 bytes"):
            channel.receive()
            channel.next_message()
        for bad in (b"[1, 2]\n", b"not json\n", b"[" * 3000 + b"\n"):
            channel = _Channel(b, "peer")
            a.sendall(bad)
            wait_for(lambda: channel.receive() or channel._in.endswith(b"\n"), what="the line")
            with pytest.raises(_PeerError, match="malformed"):
                channel.next_message()
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(10)
def test_proofs_differ_by_direction() -> None:
    token, ns, nc = b"t", secrets.token_bytes(32), secrets.token_bytes(32)
    assert _proof(token, b"client", ns, nc) != _proof(token, b"server", ns, nc)
    assert _proof(token, b"client", ns, nc) != _proof(b"u", b"client", ns, nc)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, message", [
    (["--serve", "-j2", "runs.txt"], "--jobs: --serve runs no jobs itself"),
    (["--serve", "--requeue", "runs.txt"], "--requeue: --serve runs no jobs itself"),
    (["--connect", "h", "--token", "t", "runs.txt"], "--connect takes no FILE"),
    (["--connect", "h", "--token", "t", "--retry"], "--retry: an option of the server"),
    (["--port", "7", "runs.txt"], "--port: only with --serve or --connect"),
    (["--serve", "--connect", "h", "runs.txt"], "exclude each other"),
    (["--connect", "h:99999", "--token", "t"], "port must be a number from 1 to 65535"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_jobs(tmp_path / "runs.txt", ["true"])
    result = run("runmaker", *args, cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.decode()
    assert states(tmp_path / "runs.txt") == "."


# --------------------------------------------------------------------------
# Servers and clients
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_clients_on_loopback_run_every_job_once(tmp_path: Path, procs: Procs) -> None:
    runs = record_jobs(tmp_path / "runs.txt", 30, "; echo out $RUNMAKER_LINE; sleep 0.05")
    tcp = Tcp(tmp_path, procs)
    server, port = tcp.serve(runs)
    clients = [tcp.connect(f"c{i}", port, "-j2") for i in range(3)]
    assert [wait_exit(c) for c in clients] == [0, 0, 0], [tcp.err(f"c{i}") for i in range(3)]
    assert wait_exit(server) == 0, tcp.err("server")
    assert states(runs) == "d" * 30
    assert ran_lines(tmp_path) == list(range(1, 31))
    assert_never_twice(tmp_path)
    # RUNMAKER_FILE is the path on the server; every client printed its jobs.
    files = {line.split(" ", 1)[1] for line in (tmp_path / "ran.txt").read_text().splitlines()}
    assert files == {str(runs)}
    executed = [re.findall(r"^stdout \([^,]+,\d+\): out (\d+)$", tcp.out(f"c{i}"), re.M) for i in range(3)]
    assert sorted(int(n) for lines in executed for n in lines) == list(range(1, 31))
    assert all(tcp.out(f"c{i}").count("executing `") == len(executed[i]) for i in range(3))
    log = tcp.err("server")
    assert log.startswith("runmaker: serving ")
    assert len(re.findall(r"^runmaker: connection from 127\.0\.0\.1:\d+$", log, re.M)) == 3
    assert "nothing left to run; telling 3 clients to end" in log
    assert tcp.out("server") == f"Token for clients: {tcp.token.read_text().strip()} (read from {tcp.token})\n"


@pytest.mark.timeout(30)
def test_a_client_of_one_job_is_named_in_the_singular(tmp_path: Path, procs: Procs) -> None:
    runs = record_jobs(tmp_path / "runs.txt", 2, "")
    tcp = Tcp(tmp_path, procs)
    server, port = tcp.serve(runs)
    client = tcp.connect("c0", port)
    assert wait_exit(client) == 0, tcp.err("c0")
    assert wait_exit(server) == 0, tcp.err("server")
    assert re.search(r"^runmaker: 127\.0\.0\.1:\d+ \(.+\): authenticated, runs up to 1 job$", tcp.err("server"), re.M)


@pytest.mark.timeout(30)
def test_serve_refuses_a_file_in_use_by_runmaker4(tmp_path: Path) -> None:
    (tmp_path / "runs.txt").write_bytes(b"d a\n? b\n. c\n")
    result = run("runmaker", "--serve", "--port", "0", "--token", "t" * 32, "runs.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert (result.stdout, (tmp_path / "runs.txt").read_bytes()) == (b"", b"d a\n? b\n. c\n")
    assert result.stderr.decode().splitlines()[0].startswith("Error: runs.txt:2: '?' is runmaker4's claim")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.timeout(60)
def test_caps_barriers_and_priorities_hold_and_runset_sees_the_claims(tmp_path: Path, procs: Procs) -> None:
    # Every job waits for the file 'listed' after it has started: the first
    # two hold until runset has been seen listing them (a runset takes
    # seconds to start on a loaded machine; jobs of 0.3 s were often over
    # before it looked).
    job = ('echo s $RUNMAKER_LINE $(date +%s%N) >> times; '
           'while [ ! -e listed ]; do sleep 0.02; done; sleep 0.3; '
           'echo e $RUNMAKER_LINE $(date +%s%N) >> times')
    runs = tmp_path / "runs.txt"
    runs.write_text(f". {job}\n. {job}\n+ {job}\n. {job}\n#runmaker barrier\n. {job}\n. {job}\n"
                    "#runmaker max-running 2\n")
    tcp = Tcp(tmp_path, procs)
    server, port = tcp.serve(runs)
    clients = [tcp.connect(f"c{i}", port, "-j3") for i in range(2)]

    def listing() -> str:
        result = run("runset", str(runs))
        assert result.returncode == 0, result.stderr
        return result.stdout.decode()

    # Both jobs under the cap are claimed ('+' first, then in order) and held.
    times = tmp_path / "times"
    wait_for(lambda: times.exists() and len(times.read_text().splitlines()) >= 2, timeout=30,
             what="two jobs to start")
    listed = listing()
    assert re.findall(r"^(\d+): r - ", listed, re.M) == ["1", "3"], listed
    assert "[lost]" not in listed
    assert "[lost]" not in listing()
    (tmp_path / "listed").touch()
    assert [wait_exit(c) for c in clients] == [0, 0]
    assert wait_exit(server) == 0
    assert states(runs) == "d" * 6
    events = sorted((int(t), kind, int(line)) for kind, line, t in
                    (row.split() for row in (tmp_path / "times").read_text().splitlines()))
    running = peak = 0
    for _, kind, _ in events:
        running += 1 if kind == "s" else -1
        peak = max(peak, running)
    assert peak == 2  # the cap, over both clients
    starts = {line: t for t, kind, line in events if kind == "s"}
    ends = {line: t for t, kind, line in events if kind == "e"}
    first_end = min(ends.values())
    assert sorted(line for line in starts if starts[line] < first_end) == [1, 3]  # '+' first, then in order
    assert min(starts[6], starts[7]) >= max(ends[line] for line in (1, 2, 3, 4))  # the barrier


@pytest.mark.timeout(30)
def test_between_two_network_namespaces(tmp_path: Path, procs: Procs) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"rmk{os.getpid() % 10000}{secrets.token_hex(2)}"
    server_ns, client_ns = f"{tag}s", f"{tag}c"
    net = f"10.{random.randint(64, 250)}.{random.randint(0, 255)}"
    made: list[str] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    try:
        try:
            for ns in (server_ns, client_ns):
                ip("netns", "add", ns)
                made.append(ns)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"ip netns is not available here: {exc}")
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        ip("link", "set", f"{tag}a", "netns", server_ns)
        ip("link", "set", f"{tag}b", "netns", client_ns)
        for ns, dev, host in ((server_ns, f"{tag}a", 1), (client_ns, f"{tag}b", 2)):
            ip("-n", ns, "addr", "add", f"{net}.{host}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        runs = record_jobs(tmp_path / "runs.txt", 12, "; sleep 0.05")
        tcp = Tcp(tmp_path, procs)
        server, port = tcp.serve(runs, "--bind", f"{net}.1", netns=server_ns)
        clients = [tcp.connect(f"c{i}", port, "-j2", host=f"{net}.1", netns=client_ns) for i in range(2)]
        assert [wait_exit(c) for c in clients] == [0, 0], tcp.err("c0") + tcp.err("c1")
        assert wait_exit(server) == 0
        assert states(runs) == "d" * 12
        assert ran_lines(tmp_path) == list(range(1, 13))
        assert_never_twice(tmp_path)
        assert len(re.findall(rf"^runmaker: connection from {re.escape(net)}\.2:\d+$",
                              tcp.err("server"), re.M)) == 2
        assert f"on port {port} of {net}.1" in tcp.err("server")
    finally:
        procs.reap()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        # Gone with its namespace, unless it never got there.
        subprocess.run(["ip", "link", "del", f"{tag}a"], capture_output=True, timeout=10)


@pytest.mark.timeout(30)
def test_wrong_token_is_one_error_and_no_retry(tmp_path: Path, procs: Procs) -> None:
    runs = record_jobs(tmp_path / "runs.txt", 3)
    tcp = Tcp(tmp_path, procs)
    server, port = tcp.serve(runs)
    started = time.monotonic()
    result = run("runmaker", "--connect", f"127.0.0.1:{port}", "--token", "not-the-token", cwd=tmp_path)
    assert time.monotonic() - started < 5
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"Error: 127.0.0.1:{port}: the server refused the token; give the one it printed (or its token file)"
    ]
    assert re.search(r"^runmaker: 127\.0\.0\.1:\d+: authentication failed \(wrong token\)$",
                     tcp.err("server"), re.M)
    assert states(runs) == "..."
    server.send_signal(signal.SIGTERM)  # drains: nothing runs, so it ends at once
    assert wait_exit(server) == 130
    assert states(runs) == "..."


@pytest.mark.timeout(30)
@pytest.mark.parametrize("answer", ["reflected", "forged"])
def test_client_runs_nothing_from_an_impostor(tmp_path: Path, answer: str) -> None:
    """A server without the token: it echoes the client's own proof, or makes one up."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def impostor() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(json.dumps({"runmaker": 1, "nonce": secrets.token_hex(32)}).encode() + b"\n")
            greeting = json.loads(conn.makefile("rb").readline())
            proof = greeting["proof"] if answer == "reflected" else secrets.token_hex(32)
            conn.sendall(json.dumps({"proof": proof, "file": "/x", "host": "evil"}).encode() + b"\n")
            conn.sendall(b"0" * 64 + b' {"t":"jobs","jobs":[[1,"dG91Y2ggb3duZWQ="]]}\n')
            time.sleep(1)

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    try:
        result = run("runmaker", "--connect", f"127.0.0.1:{port}", "--token", "tok", cwd=tmp_path, timeout=20)
    finally:
        thread.join(timeout=5)
        listener.close()
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"Error: 127.0.0.1:{port}: the server could not prove it knows the token; running nothing from it"
    ]
    assert not (tmp_path / "owned").exists()
    assert result.stdout == b""


@pytest.mark.timeout(30)
def test_bad_peers_are_dropped_while_good_clients_work(tmp_path: Path, procs: Procs) -> None:
    runs = record_jobs(tmp_path / "runs.txt", 20, "; sleep 0.1")
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs, "--follow")
    bad = {name: socket.create_connection(("127.0.0.1", port)) for name in
           ("garbage", "oversized", "idle", "nested", "wrong")}
    try:
        clients = [tcp.connect(f"c{i}", port, "-j2") for i in range(2)]
        bad["garbage"].sendall(b"GET / HTTP/1.0\r\n\r\n")
        bad["nested"].sendall(b"[" * 3000 + b"\n")
        nonce = json.loads(bad["wrong"].makefile("rb").readline())["nonce"]
        bad["wrong"].sendall(json.dumps({"nonce": secrets.token_hex(32), "proof": secrets.token_hex(32),
                                         "host": "x", "jobs": 1}).encode() + b"\n")
        assert nonce
        try:
            bad["oversized"].sendall(b"x" * (2 << 20))
        except OSError:
            pass  # dropped before it got it all
        wait_for(lambda: states(runs) == "d" * 20, what="every job done")
        wait_for(lambda: "no authentication within 1 s" in tcp.err("server"), what="the idle peer dropped")
        log = tcp.err("server")
        for why in ("sent a malformed line", "sent a line longer than 4096 bytes",
                    "no authentication within 1 s"):
            assert re.search(rf"^runmaker: 127\.0\.0\.1:\d+: dropped \({why}\)$", log, re.M), (why, log)
        assert len(re.findall(r"dropped \(sent a malformed line\)", log)) == 2
        assert re.search(r"^runmaker: 127\.0\.0\.1:\d+: authentication failed \(wrong token\)$", log, re.M)
        assert all(client.poll() is None for client in clients)  # still served, still waiting
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        assert [wait_exit(c) for c in clients] == [0, 0]
        assert ran_lines(tmp_path) == list(range(1, 21))
        assert_never_twice(tmp_path)
    finally:
        for sock in bad.values():
            sock.close()


@pytest.mark.timeout(30)
def test_client_killed_mid_job_loses_its_job(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["echo $$ > pid1; sleep 30"])
    record_jobs(tmp_path / "more.txt", 4)
    with open(runs, "a") as f:
        f.write((tmp_path / "more.txt").read_text())
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs)
    victim = tcp.connect("victim", port, "-j1")
    pgid = pid_in(tmp_path / "pid1")
    try:
        other = tcp.connect("other", port, "-j1")
        victim.send_signal(signal.SIGKILL)
        assert wait_exit(other) == 0, tcp.err("other")
        assert wait_exit(server) == 1  # a job it handed out ended 'e'
        assert states(runs) == "edddd"
        assert ran_lines(tmp_path) == [2, 3, 4, 5]
        assert re.search(r"^runmaker: 127\.0\.0\.1:\d+ \(\S+\): dropped \(connection closed\); its 1 running "
                         r"jobs \(line 1\) end 'e' in 1\.3 s, once it has surely stopped them$",
                         tcp.err("server"), re.M), tcp.err("server")
    finally:
        kill_group(pgid)  # the orphan of the killed client


@pytest.mark.timeout(30)
def test_silent_client_is_dropped_and_stops_its_job_before_reconnecting(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["echo $$ > pid1; sleep 30"])
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs, "--follow")
    client = tcp.connect("client", port, "-j1")
    pgid = pid_in(tmp_path / "pid1")
    try:
        client.send_signal(signal.SIGSTOP)  # half-open: the connection stays, nothing comes
        wait_for(lambda: "dropped (silent for" in tcp.err("server"), what="the silent client dropped")
        assert re.search(r"dropped \(silent for 1\.5 s\); its 1 running jobs \(line 1\) end 'e' "
                         r"in 1\.3 s, once it has surely stopped them$", tcp.err("server"), re.M)
        # Not handed on yet: the client may still run it.
        assert states(runs) == "r"
        client.send_signal(signal.SIGCONT)
        # Back, it finds the connection gone: it stops its job, then connects again.
        wait_for(lambda: not group_alive(pgid), what="the job stopped")
        wait_for(lambda: states(runs) == "e", what="the silent client's job marked e")
        wait_for(lambda: tcp.err("server").count("authenticated") == 2, what="the client back")
        err = tcp.err("client")
        assert re.search(r"^runmaker: lost the connection to 127\.0\.0\.1:\d+ \(.*\); stopping 1 running jobs$",
                         err, re.M), err
        assert err.index("stopping 1 running jobs") < err.rindex("connected to")
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        assert wait_exit(client) == 1  # its job ended 'e'
        assert states(runs) == "e"
    finally:
        if client.poll() is None:
            client.send_signal(signal.SIGCONT)
        kill_group(pgid)


@pytest.mark.timeout(30)
def test_silent_server_makes_its_client_stop_its_job_before_reconnecting(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["echo $$ > pid1; sleep 30"])
    record_jobs(tmp_path / "more.txt", 2)
    with open(runs, "a") as f:
        f.write((tmp_path / "more.txt").read_text())
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs)
    client = tcp.connect("client", port, "-j1")
    pgid = pid_in(tmp_path / "pid1")
    try:
        server.send_signal(signal.SIGSTOP)  # half-open the other way: the client hears nothing
        wait_for(lambda: not group_alive(pgid), what="the client stopping its job")
        assert re.search(r"^runmaker: lost the connection to 127\.0\.0\.1:\d+ \(the server was silent "
                         r"for 1 s\); stopping 1 running jobs$", tcp.err("client"), re.M)
        assert states(runs) == "r.."  # the frozen server still holds it
        server.send_signal(signal.SIGCONT)
        assert wait_exit(client) == 1  # its first job ended 'e'
        assert wait_exit(server) == 1
        assert states(runs) == "edd"
        assert ran_lines(tmp_path) == [2, 3]
        assert tcp.err("client").count("connected to") == 2
    finally:
        server.send_signal(signal.SIGCONT)
        kill_group(pgid)


@pytest.mark.timeout(40)
def test_server_killed_and_restarted_while_clients_wait(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["echo $$ > pid1; sleep 30"])
    record_jobs(tmp_path / "more.txt", 4)
    with open(runs, "a") as f:
        f.write((tmp_path / "more.txt").read_text() + "#runmaker max-running 1\n")
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs)
    clients = [tcp.connect(f"c{i}", port, "-j2") for i in range(2)]
    pgid = pid_in(tmp_path / "pid1")
    try:
        wait_for(lambda: tcp.err("server").count("authenticated") == 2, what="both clients")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        # The client running line 1 stops it: a job never outlives its connection.
        wait_for(lambda: not group_alive(pgid), what="the running job stopped")
        wait_for(lambda: all("trying again" in tcp.err(f"c{i}") for i in range(2)), what="retries")
        assert states(runs) == "r...."  # lost now: nobody holds its lock
        restarted, _ = tcp.serve(runs, name="server2", port=port)
        codes = sorted(wait_exit(c) for c in clients)
        assert codes == [0, 1]  # the one whose job was stopped: 1
        assert wait_exit(restarted) == 0
        assert states(runs) == "edddd"
        assert ran_lines(tmp_path) == [2, 3, 4, 5]
        assert_never_twice(tmp_path)
    finally:
        kill_group(pgid)


@pytest.mark.timeout(30)
def test_client_gives_up_after_its_bound(tmp_path: Path, procs: Procs) -> None:
    tcp = Tcp(tmp_path, procs, **dict(FAST, give_up=1.0))
    port = free_port()
    client = tcp.connect("client", port)
    assert wait_exit(client) == 1
    lines = tcp.err("client").splitlines()
    assert any(line.startswith(f"runmaker: 127.0.0.1:{port}: Connection refused; trying again in ")
               for line in lines), lines
    assert lines[-1].startswith(f"Error: 127.0.0.1:{port}: no runmaker server to be reached for 1 s")
    assert lines[-1].endswith("giving up")


@pytest.mark.timeout(30)
def test_new_token_file_is_private_and_clients_find_it(tmp_path: Path, procs: Procs) -> None:
    runs = record_jobs(tmp_path / "runs.txt", 2)
    env = dict(os.environ, HOME=str(tmp_path))
    server = procs.start("runmaker", "--serve", "--port", "0", str(runs), cwd=tmp_path, env=env)
    token_file = tmp_path / ".runmaker.token"
    first = wait_for(lambda: server.stdout.readline(), what="the token line")  # type: ignore[union-attr]
    token = token_file.read_text().strip()
    assert first.decode() == f"Token for clients: {token} ({'written to ' + str(token_file)})\n"
    assert re.fullmatch(r"[0-9a-f]{32}", token)  # 128 random bits
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    port = int(re.search(rb"on port (\d+)", server.stderr.readline()).group(1))  # type: ignore[union-attr]
    client = run("runmaker", "--connect", f"localhost:{port}", "-q", cwd=tmp_path, env=env)
    assert client.returncode == 0, client.stderr
    assert server.wait(timeout=20) == 0
    assert states(runs) == "dd"


@pytest.mark.timeout(40)
def test_a_server_with_no_clients_ends_by_the_workers_rule(tmp_path: Path, procs: Procs) -> None:
    """Only jobs below a barrier held shut by a failure are left: like a
    file worker, the server says so and ends, without any client asking."""
    runs = tmp_path / "runs.txt"
    runs.write_text("! false\n#runmaker barrier\n. true\n")
    tcp = Tcp(tmp_path, procs)
    server = tcp.start("server", "--serve", "--port", "0", "--token", str(tcp.token), str(runs))
    assert wait_exit(server) == 0, tcp.err("server")
    assert "jobs below the barrier at line 2 wait for failed jobs above it" in tcp.err("server")
    assert states(runs) == "!."


@pytest.mark.timeout(40)
def test_a_long_job_file_path_fits_the_welcome(tmp_path: Path, procs: Procs) -> None:
    # Six directories of 120 'ü': 1.5 KB of path, over 4 KB JSON-escaped.
    deep = tmp_path.joinpath(*["ü" * 120] * 6)
    deep.mkdir(parents=True)
    runs = record_jobs(deep / "runs.txt", 2)
    tcp = Tcp(tmp_path, procs)
    server, port = tcp.serve(runs)
    client = tcp.connect("c", port, "-j2")
    assert wait_exit(client) == 0, tcp.err("c")
    assert wait_exit(server) == 0, tcp.err("server")
    assert states(runs) == "dd"


# --------------------------------------------------------------------------
# Batch systems: --requeue and SIGUSR1 on a client
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_requeue_client_stopped_by_a_signal_puts_its_jobs_back_through_the_server(
        tmp_path: Path, procs: Procs) -> None:
    runs = tmp_path / "runs.txt"
    job = "echo $$ > pid.$RUNMAKER_LINE; [ -e go ] || sleep 300; echo $RUNMAKER_LINE >> ran.txt"
    runs.write_text(f"+ {job}\n. {job}\n. {job}\n")
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs)
    first = tcp.connect("first", port, "-j2", "--requeue")
    pgids = [pid_in(tmp_path / f"pid.{n}") for n in (1, 2)]
    try:
        first.send_signal(signal.SIGTERM)
        assert wait_exit(first) == 130, tcp.err("first")
        assert not any(group_running(pgid) for pgid in pgids)
        assert states(runs) == "+.."  # each back as it was, written by the server
        assert ("runmaker: SIGTERM: stopping 2 running jobs and putting them back (--requeue)"
                in tcp.err("first"))
        assert len(re.findall(r'^status \([^,]+,\d+\): requeued "echo ', tcp.out("first"), re.MULTILINE)) == 2
        (tmp_path / "go").touch()
        second = tcp.connect("second", port, "-j2")
        assert wait_exit(second) == 0, tcp.err("second")
        assert wait_exit(server) == 0, tcp.err("server")  # requeued jobs are no failures
    finally:
        for pgid in pgids:
            kill_group(pgid)
    assert states(runs) == "ddd"
    assert ran_lines(tmp_path) == [1, 2, 3]


@pytest.mark.timeout(30)
def test_sigusr1_drains_a_client_which_exits_as_if_out_of_work(tmp_path: Path, procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [
        "touch started; while [ ! -e go ]; do sleep 0.01; done", "echo never > never"])
    tcp = Tcp(tmp_path, procs, **FAST)
    server, port = tcp.serve(runs)
    client = tcp.connect("client", port, "-j1")
    wait_for(lambda: (tmp_path / "started").exists(), what="the first job")
    client.send_signal(signal.SIGUSR1)
    wait_for(lambda: "draining" in tcp.err("client"), what="the drain message")
    (tmp_path / "go").touch()
    assert wait_exit(client) == 0, tcp.err("client")
    assert ("runmaker: SIGUSR1: draining, claiming no more jobs; letting 1 running job finish"
            in tcp.err("client"))
    assert wait_for(lambda: states(runs) == "d.", what="the server to record job 1")
    assert not (tmp_path / "never").exists()
    assert server.poll() is None  # job 2 is still to run: the server waits for clients
