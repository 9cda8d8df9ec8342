"""TCP mode under stalls and strangers, as real processes on loopback: a client
whose console nobody reads, a client or server frozen with SIGSTOP, a network
that goes silent both ways, a flood of connections that never authenticate,
a server whose stderr is full.  No job ever runs twice at once, and no client
loop waits on anything but its own timers."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import Procs, kill_group, states, wait_exit, wait_for, write_jobs
from test_tcp import FAST, Tcp, free_port, group_alive
from test_worker import blocked_writing_stdout

from runmaker import append_to_shared_file

# A job that records its start and end (host, pid, time) in events.txt and
# notes in overlap.txt when it starts while any process of another copy of
# itself still lives: the first copy's processes hold an flock until the
# last of them is gone.
RECORDED = (
    'exec 9>>copy.$RUNMAKER_LINE.lock; '
    'flock -n 9 || echo "$RUNMAKER_LINE $RUNMAKER_HOST $$" >> overlap.txt; '
    'echo "start $RUNMAKER_LINE $RUNMAKER_HOST $$ $(date +%s.%N)" >> events.txt; '
    "trap 'echo \"end $RUNMAKER_LINE $RUNMAKER_HOST $$ $(date +%s.%N)\" >> events.txt' EXIT; "
    "trap 'exit 143' TERM; "
)


def events(tmp_path: Path) -> list[tuple[str, int, str, int, float]]:
    path = tmp_path / "events.txt"
    rows = path.read_text().splitlines() if path.exists() else []
    return [(kind, int(line), host, int(pid), float(t))
            for kind, line, host, pid, t in (row.split() for row in rows)]


def overlaps(tmp_path: Path) -> list[str]:
    path = tmp_path / "overlap.txt"
    return path.read_text().splitlines() if path.exists() else []


class Partition:
    """A TCP relay between clients and a server that the test can cut.

    Cut, it keeps every connection open but moves no byte either way: a
    network that fails silently, as a pulled cable or a dead router does.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.done = threading.Event()
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pairs: dict[socket.socket, socket.socket] = {}
        while not self.done.is_set():
            readable = [self.listener] + ([] if self.cut.is_set() else list(pairs))
            ready, _, _ = select.select(readable, [], [], 0.05)
            for sock in ready:
                if sock is self.listener:
                    inner, _ = self.listener.accept()
                    try:
                        outer = socket.create_connection(("127.0.0.1", self.target))
                    except OSError:  # the server is gone
                        inner.close()
                        continue
                    pairs[inner], pairs[outer] = outer, inner
                    self.socks += [inner, outer]
                    continue
                if self.cut.is_set() or sock not in pairs:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = pairs[sock]
                if data:
                    try:
                        other.sendall(data)
                    except OSError:
                        data = b""
                if data:
                    continue
                for end in (sock, other):
                    pairs.pop(end, None)
                    end.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def tcp_procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        for proc in p.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
        p.reap()


def start_piped(tcp: Tcp, name: str, port: int, *args: str) -> subprocess.Popen[bytes]:
    """A client whose stdout is a pipe the test does not read (yet)."""
    with open(tcp.dir / f"{name}.err", "wb") as err:
        proc = subprocess.Popen(
            tcp.argv + ["--connect", f"127.0.0.1:{port}", "--token", str(tcp.token), *args],
            cwd=tcp.dir, env=tcp.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        )
    tcp.procs.procs.append(proc)
    return proc


def drain(stream: IO[bytes] | None) -> threading.Thread:
    """Start reading a pipe to its end, in the background."""
    assert stream is not None
    thread = threading.Thread(target=lambda: stream.read(), daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------
# Stalled clients: no job runs twice at once
# --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_client_with_an_unread_console_is_not_dropped_and_a_cut_one_never_overlaps(
    tmp_path: Path, tcp_procs: Procs
) -> None:
    """Its console is a pipe nobody reads: the client stops reading its job's
    output (back-pressure) but keeps its heartbeats, so the server keeps it.
    Then the network goes silent: the server drops it and hands its job on
    (to a file-mode worker with -r on the server's host) only after the
    client has stopped it."""
    runs = write_jobs(tmp_path / "runs.txt", [
        RECORDED + "yes output-line-of-a-chatty-job | head -c 4000000; sleep 1",
    ])
    timings = dict(FAST)
    tcp = Tcp(tmp_path, tcp_procs, **timings)
    server, port = tcp.serve(runs, "--follow")
    relay = Partition(port)
    try:
        stalled = start_piped(tcp, "stalled", relay.port, "-j1")
        wait_for(lambda: events(tmp_path), timeout=20, what="the job started")
        wait_for(lambda: blocked_writing_stdout(stalled.pid), timeout=30, what="the console pipe full")
        # Three times the server's silence deadline with a console nobody reads.
        time.sleep(3 * 1.5)  # FAST: the server gives up a client silent for 1.5 s
        assert "dropped" not in tcp.err("server"), tcp.err("server")
        assert states(runs) == "r"
        relay.cut.set()
        other = tcp.start("other", "-r", "--follow", str(runs))  # a worker on the file itself
        wait_for(lambda: "dropped (silent for" in tcp.err("server"), what="the stalled client dropped")
        # With -r the job runs again, but only once the first copy is gone:
        # the flock in the job tells.
        wait_for(lambda: len([e for e in events(tmp_path) if e[0] == "start"]) == 2, timeout=30,
                 what="the job run again by the other client")
        wait_for(lambda: len([e for e in events(tmp_path) if e[0] == "end"]) == 2, timeout=30,
                 what="both copies ended")
        rows = events(tmp_path)
        first_end = next(t for kind, _, _, pid, t in rows if kind == "end" and pid == rows[0][3])
        second_start = next(t for kind, _, _, pid, t in rows if kind == "start" and pid != rows[0][3])
        print(f"figure: overlap {max(0.0, first_end - second_start):.3f} s; "
              f"gap {second_start - first_end:.3f} s")
        assert overlaps(tmp_path) == []
        assert second_start > first_end
        assert re.search(r"^runmaker: lost the connection to 127\.0\.0\.1:\d+ \(.*\); stopping 1 running jobs$",
                         tcp.err("stalled"), re.MULTILINE), tcp.err("stalled")
        wait_for(lambda: states(runs) == "d", timeout=30, what="the second copy done")
        reader = drain(stalled.stdout)
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        other.send_signal(signal.SIGTERM)
        assert wait_exit(other) == 130, tcp.err("other")
        stalled.send_signal(signal.SIGTERM)
        stalled.wait(timeout=20)  # its stdout is the reader's
        reader.join(timeout=10)
    finally:
        relay.close()
        for _, _, _, pid, _ in events(tmp_path):
            kill_group(pid)


@pytest.mark.timeout(60)
def test_a_client_stopped_for_less_than_the_deadline_keeps_its_job(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [RECORDED + "sleep 4"])
    timings = dict(FAST, client_silence=2.0, silence_margin=1.9)  # the server: 4 s
    tcp = Tcp(tmp_path, tcp_procs, **timings)
    server, port = tcp.serve(runs, "--retry")
    client = tcp.connect("client", port, "-j1")
    other = tcp.connect("other", port, "-j1")
    wait_for(lambda: events(tmp_path), timeout=20, what="the job started")
    pgid = events(tmp_path)[0][3]
    try:
        # Stopped for longer than its own silence deadline (it reads what the
        # server sent meanwhile before it judges) but less than the server's.
        client.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        client.send_signal(signal.SIGCONT)
        assert wait_exit(client) == 0, tcp.err("client")
        assert wait_exit(other) == 0, tcp.err("other")
        assert wait_exit(server) == 0, tcp.err("server")
        assert states(runs) == "d"
        assert [kind for kind, *_ in events(tmp_path)] == ["start", "end"]
        assert overlaps(tmp_path) == []
        assert "dropped" not in tcp.err("server")
        assert "lost the connection" not in tcp.err("client")
    finally:
        kill_group(pgid)


@pytest.mark.timeout(90)
def test_a_client_stopped_for_longer_has_its_job_handed_on_only_once_stopped(
    tmp_path: Path, tcp_procs: Procs
) -> None:
    """Stopped past the server's deadline: the server drops it but keeps its
    job locked; continued, the client finds the connection gone and stops
    the job; only then (its silence deadline and kill grace after the drop)
    does the server mark it 'e' and hand it on (to a worker with -r)."""
    runs = write_jobs(tmp_path / "runs.txt", [RECORDED + "sleep 60"])
    tcp = Tcp(tmp_path, tcp_procs, **FAST)
    server, port = tcp.serve(runs, "--follow")
    client = tcp.connect("client", port, "-j1")
    wait_for(lambda: events(tmp_path), timeout=20, what="the job started")
    pgid = events(tmp_path)[0][3]
    try:
        client.send_signal(signal.SIGSTOP)
        wait_for(lambda: "dropped (silent for" in tcp.err("server"), what="the stopped client dropped")
        assert states(runs) == "r"  # still held: the client may not know yet
        client.send_signal(signal.SIGCONT)
        wait_for(lambda: not group_alive(pgid), what="the client stopping its job")
        other = tcp.start("other", "-r", "--follow", str(runs))  # a worker on the file itself
        wait_for(lambda: len(events(tmp_path)) >= 3, timeout=30, what="the job run again")
        assert overlaps(tmp_path) == []
        assert re.search(r"its 1 running jobs \(line 1\) end 'e' in [\d.]+ s, once it has surely stopped them",
                         tcp.err("server")), tcp.err("server")
        assert states(runs) == "r"  # the worker's second run
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        other.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in tcp.err("other"), what="the worker draining")
        other.send_signal(signal.SIGTERM)  # the second: it stops its job
        assert wait_exit(other) == 130
    finally:
        kill_group(pgid)
        for _, _, _, pid, _ in events(tmp_path):
            kill_group(pid)


# --------------------------------------------------------------------------
# A stopped server: the client's loop keeps its timers
# --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_timeout_fires_on_time_while_the_server_is_stopped(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [RECORDED + "sleep 30"])
    tcp = Tcp(tmp_path, tcp_procs)  # real deadlines: the server is silent for 15 s before it counts
    server, port = tcp.serve(runs)
    # -j2 with one job: the client keeps asking the server for a second one.
    client = tcp.connect("client", port, "-j2", "--timeout", "2")
    wait_for(lambda: events(tmp_path), timeout=20, what="the job started")
    server.send_signal(signal.SIGSTOP)
    _, _, _, pgid, started = events(tmp_path)[0]
    try:
        wait_for(lambda: not group_alive(pgid), timeout=12, what="the job stopped by its --timeout")
        stopped = time.time()
        print(f"figure: --timeout 2 stopped the job after {stopped - started:.2f} s with the server stopped")
        assert stopped - started < 6
        wait_for(lambda: 'timeout "' in tcp.out("client"), what="the timeout status line")
        assert "lost the connection" not in tcp.err("client")
        server.send_signal(signal.SIGCONT)
        assert wait_exit(client, timeout=30) == 1, tcp.err("client")
        assert wait_exit(server, timeout=30) == 1
        assert states(runs) == "!"
    finally:
        server.send_signal(signal.SIGCONT)
        kill_group(pgid)


# --------------------------------------------------------------------------
# Strangers
# --------------------------------------------------------------------------


class Flood:
    """Connections from 127.0.0.2 that never authenticate, opened again as the server drops them."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.socks: list[socket.socket] = []
        self.opened = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self) -> socket.socket | None:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _run(self) -> None:
        while not self.done.is_set():
            while len(self.socks) < self.count and not self.done.is_set():
                sock = self._open()
                if sock is None:
                    break
                self.socks.append(sock)
            ready, _, _ = select.select(self.socks, [], [], 0.05)
            for sock in ready:
                try:
                    gone = not sock.recv(65536)  # read the greeting, never answer
                except OSError:
                    gone = True
                if gone:
                    self.socks.remove(sock)
                    sock.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("timings", ["real", "fast"])
def test_a_flood_of_strangers_neither_keeps_a_client_out_nor_fills_the_log(
    tmp_path: Path, tcp_procs: Procs, timings: str
) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [RECORDED + "true"] * 5)
    tcp = Tcp(tmp_path, tcp_procs, **(FAST if timings == "fast" else {}))
    server, port = tcp.serve(runs, "--follow")
    flood = Flood(port, 100)
    try:
        wait_for(lambda: flood.opened >= 100, what="100 connections")
        time.sleep(1.0)
        before = (tmp_path / "server.err").stat().st_size
        started = time.monotonic()
        client = tcp.connect("client", port, "-j2")
        wait_for(lambda: states(runs) == "ddddd", timeout=15, what="the honest client's jobs done")
        took = time.monotonic() - started
        time.sleep(2.0)  # the flood goes on
        written = (tmp_path / "server.err").stat().st_size - before
        print(f"figure ({timings}): honest client in and done in {took:.2f} s under a flood of "
              f"{flood.opened} connections; {written} bytes of server stderr meanwhile, "
              f"{(tmp_path / 'server.err').stat().st_size} in all")
        assert written < 4096, tcp.err("server")[-3000:]
        assert client.poll() is None  # --follow: it waits for more
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        assert wait_exit(client) == 0, tcp.err("client")
        assert overlaps(tmp_path) == []
    finally:
        flood.close()


@pytest.mark.timeout(60)
def test_refusals_are_summarised_per_address(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", ["true"])
    tcp = Tcp(tmp_path, tcp_procs, **dict(FAST, report_interval=1.0))
    server, port = tcp.serve(runs, "--follow")
    flood = Flood(port, 100)
    try:
        wait_for(lambda: re.search(r"^runmaker: 127\.0\.0\.2: \d+ more connections", tcp.err("server"), re.MULTILINE),
                 timeout=30, what="a summary line")
        line = re.search(r"^runmaker: 127\.0\.0\.2: (\d+) more connections.*$", tcp.err("server"), re.MULTILINE)
        assert line is not None and int(line.group(1)) > 0, tcp.err("server")
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
    finally:
        flood.close()


@pytest.mark.timeout(60)
def test_a_server_whose_stderr_is_full_goes_on(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [RECORDED + "true"] * 4)
    tcp = Tcp(tmp_path, tcp_procs, **FAST)
    port = free_port()
    with open("/dev/full", "wb") as full:
        server = subprocess.Popen(
            tcp.argv + ["--serve", "--port", str(port), "--token", str(tcp.token), str(runs)],
            cwd=tmp_path, env=tcp.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=full,
        )
    tcp_procs.procs.append(server)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(lambda: server.poll() is not None or listening(), what="the server listening")
    assert server.poll() is None
    bad = socket.create_connection(("127.0.0.1", port))  # a stranger, for a few more lines
    try:
        client = tcp.connect("client", port, "-j2")
        assert wait_exit(client) == 0, tcp.err("client")
        assert wait_exit(server) == 0
        assert states(runs) == "dddd"
    finally:
        bad.close()


# --------------------------------------------------------------------------
# runset --kill reaches a client's job; jobs given but never started go back
# --------------------------------------------------------------------------


def append_line(path: Path, line: str) -> None:
    """Append as runset does: whole, under the append lock."""
    fd = os.open(path, os.O_RDWR)
    try:
        append_to_shared_file(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_a_kill_line_stops_a_clients_job_and_an_older_one_does_not(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = tmp_path / "runs.txt"
    runs.write_text("#runmaker kill 2\n"  # older than any run of line 2: touches none
                    f". {RECORDED}sleep 60\n"
                    f". {RECORDED}sleep 0.2\n")
    tcp = Tcp(tmp_path, tcp_procs, **FAST)
    server, port = tcp.serve(runs)
    client = tcp.connect("client", port, "-j2", "--retries", "2")
    wait_for(lambda: len(events(tmp_path)) >= 3 and states(runs) == "rd", what="both jobs started, one done")
    pgid = next(pid for kind, line, _, pid, _ in events(tmp_path) if kind == "start" and line == 2)
    try:
        started = time.monotonic()
        append_line(runs, "#runmaker kill 2")
        wait_for(lambda: not group_alive(pgid), what="the job killed")
        print(f"figure: a kill line stopped the client's job in {time.monotonic() - started:.2f} s")
        assert wait_exit(client) == 1, tcp.err("client")
        assert wait_exit(server) == 1, tcp.err("server")
        assert states(runs) == "!d"  # killed: not run again by --retries
        ends = re.findall(r'^status \(\S+,\d+\): (exit \d+|killed|\w+) "', tcp.out("client"), re.MULTILINE)
        assert [end for end in ends if end != "forked"] == ["exit 0", "killed"]
        assert sorted(line for kind, line, *_ in events(tmp_path) if kind == "start") == [2, 3]
    finally:
        kill_group(pgid)


def received_bytes(port: int) -> int:
    """Bytes the server has not read yet on its connections (its Recv-Q)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(row.split()[0]) for row in out.splitlines())


@pytest.mark.timeout(60)
def test_jobs_given_after_a_drain_began_go_back_unrun(tmp_path: Path, tcp_procs: Procs) -> None:
    runs = write_jobs(tmp_path / "runs.txt", [
        "echo $$ > pid; while [ ! -e go ]; do sleep 0.05; done",
        "echo ran >> ran.txt",
    ])
    tcp = Tcp(tmp_path, tcp_procs)  # real deadlines: the client waits 15 s for a stopped server
    server, port = tcp.serve(runs)
    client = tcp.connect("client", port, "-j1")
    wait_for(lambda: (tmp_path / "pid").exists(), what="job 1 running")
    try:
        server.send_signal(signal.SIGSTOP)
        (tmp_path / "go").touch()
        # Job 1's state and the next claim wait, unread, in the stopped server's socket.
        wait_for(lambda: received_bytes(port) >= 180, what="the state and a claim sent")
        client.send_signal(signal.SIGINT)  # drain: no new job may start
        wait_for(lambda: "draining" in tcp.err("client"), what="the client draining")
        server.send_signal(signal.SIGCONT)  # it answers the claim with job 2
        assert wait_exit(client) == 130, tcp.err("client") + tcp.out("client") + tcp.err("server")
        assert states(runs) == "d."
        assert not (tmp_path / "ran.txt").exists()
        assert tcp.out("client").count("executing `") == 1
        assert "dropped" not in tcp.err("server")
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 130
        assert states(runs) == "d."
    finally:
        server.send_signal(signal.SIGCONT)
