"""runmaker's TCP mode: a server for hosts without a shared file system.

``runmaker --serve FILE`` claims the jobs of FILE for its clients with the
same JobFile, Scheduler and locks as a file-mode worker; ``runmaker
--connect HOST`` runs them with the same Worker.  runmaker.py imports this
module only for ``--serve`` and ``--connect``: file mode needs nothing of it.
The contract is SPEC.md section 7.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import click

from runmaker import (
    _EXIT_SIGNALLED,
    _KILL_GRACE,
    _POLL,
    _READ_CHUNK,
    _REFRESH_GAP,
    _TCP_PORT,
    Claim,
    IdleReason,
    JobFile,
    RunmakerError,
    RunmakerFailure,
    Scheduler,
    Worker,
    WorkerOptions,
    _check_open_file_limit,
    _drain_wakeup,
    _OutputBuffer,
    _Records,
    _signal_name,
    _writable_by_others,
    _write_all,
    check_file_locking,
    check_job_file,
    host_name,
    job_file_failed,
    stop_signals_waking,
    work_is_over,
)

__all__ = ["ServerOptions", "TcpTimings", "run_tcp_client", "serve_job_file"]

#
# ``runmaker --serve FILE`` opens the job file with the same JobFile and
# Scheduler as a worker and claims jobs on behalf of its clients, so order,
# caps, barriers, --retry and lost jobs all hold, and runset and runwait on
# the server's host see the clients' jobs as the server's locked 'r' bytes.
# ``runmaker --connect HOST`` runs them with the same Worker as file mode:
# a _RemoteSource stands in for the Scheduler.
#
# The wire: one JSON object per line, a line at most _MAX_MESSAGE bytes
# (_MAX_GREETING before authentication).  The handshake proves the token
# both ways before any command or state crosses:
#
#   server: {"runmaker": 1, "nonce": NS}
#   client: {"nonce": NC, "proof": HMAC(token, "client" NS NC), "host": H, "jobs": J,
#            "silence": S, "grace": G}   (its silence deadline and kill grace)
#   server: {"proof": HMAC(token, "server" NS NC), "file": PATH, "host": H}
#           or {"denied": WHY}, and it hangs up
#
# Both nonces are fresh random bytes and each direction has its own label,
# so neither a recorded nor a reflected proof passes.  From then on every
# line is "MAC JSON", the MAC an HMAC under a session key drawn from the
# token and both nonces, over the direction, the line's sequence number and
# the JSON: a line injected, replayed, reordered or reflected by someone
# without the token is refused.  There is no encryption (see the README).
#
#   client: claim {n, done}   done {done}   ping   bye
#   server: jobs {jobs}       end {block}   stop   kill {lines}   ping   bye
#
# ``done`` lists [line, state] of jobs the client finished (state "." for
# one its --requeue stopped, or that it got but never started, having
# stopped claiming meanwhile: the server puts it back as it was); each
# ``claim`` is answered at once by one ``jobs`` with up to n [line, base64
# command] (the client reads the answer when it comes, never waiting for
# it); ``kill`` names jobs a kill line (runset --kill) stops: the client
# ends them '!' (killed);
# ``end`` says nothing is left (the same rule as a worker's), ``stop`` that
# the server was signalled twice.  Either side pings after ``heartbeat``
# seconds of sending nothing and gives up a peer silent for longer than its
# deadline; the server never waits on any one peer.
#
# Reconnecting: a client that loses its server stops its running jobs (they
# end 'e', as the server marks them) and connects again only once none is
# left, so no job of the old connection runs beside the new one's.  The
# server, in turn, keeps a lost connection's jobs locked before it marks
# them 'e' and hands them on: for the client's own silence deadline and
# kill grace (it says them when it connects) and a margin, counted from
# the moment the connection was lost, whether the client hung up, we hung
# up on it, or it went silent.  By then a client whose loop runs has
# stopped them: it learns it is lost at once (a hang-up) or at its
# silence deadline, and its loop never waits on its console, its disk or
# the server.  Only a client frozen for longer (SIGSTOP, a paused VM) can
# still run them then; see the README.
#
# Strangers (connections not yet authenticated) get _MAX_STRANGERS slots,
# at most _STRANGERS_PER_ORIGIN from one address (an IPv6 /64); a
# newcomer takes the slot of the oldest stranger of the origin that holds
# the most, and under pressure has auth_busy seconds to authenticate.
# What strangers do is shown a few lines per origin per report_interval,
# then counted: one line per origin sums up the rest.

_PROTOCOL = 1
_TOKEN_FILE = "~/.runmaker.token"
_TOKEN_BYTES = 16  # 128 random bits
_NONCE_BYTES = 32
_MAX_GREETING = 4096  # bytes of a line before authentication
_MAX_WELCOME = 64 << 10  # the server's welcome: its proof, host name and job file path
_MAX_MESSAGE = 1 << 20  # bytes of a line after it
_MAX_COMMAND = 128 << 10  # Linux's exec refuses a longer argument (MAX_ARG_STRLEN)
_MAX_ENCODED_JOB = (_MAX_COMMAND + 2) // 3 * 4 + 32  # one [line, base64] in a jobs line
_MAX_BACKLOG = 4 * _MAX_MESSAGE  # unsent bytes kept for a peer that does not read
_RECEIVE_BUDGET = 1 << 18  # bytes read from one peer per turn of the loop
_MAX_PEERS = 512
_MAX_STRANGERS = 64  # connections not yet authenticated
_STRANGERS_PER_ORIGIN = 8  # of those, from one IPv4 address or IPv6 /64
_SHOWN_PER_ORIGIN = 20  # lines about one origin's strangers per report interval; then counted
_SHOWN_STRANGER_LINES = 100  # and about all strangers
_MAX_ORIGINS_COUNTED = 256  # origins counted one by one per interval; the rest together
_MAX_SECONDS_SAID = 3600.0  # a client's deadline or grace, as it says them
_MAX_CLAIM = 1024  # jobs asked for at once
_NOTICES_BEHIND = 1 << 20  # bytes of stderr lines not yet written before more are dropped


@dataclass(frozen=True)
class TcpTimings:
    """The protocol's deadlines, in seconds; the derived ones are properties.

    The defaults are the product's.  Tests shorten them (runmaker's hidden
    ``--tcp-timings`` option) so a drop or a reconnect takes a second;
    ``kill_grace`` is what the server allows a client's Worker from SIGTERM
    until its jobs are gone (the Worker sends SIGKILL after _KILL_GRACE).
    """

    auth_deadline: float = 10.0  # a new connection has this long to authenticate
    heartbeat: float = 5.0  # a ping after this long without sending anything
    client_silence: float = 15.0  # a client gives up a server silent this long
    kill_grace: float = _KILL_GRACE
    silence_margin: float = 5.0  # on top of a silent client's deadline and kill
    release_margin: float = 2.0  # on top of a lost client's stopping its jobs
    auth_busy: float = 2.0  # the deadline to authenticate once strangers hold half the slots
    report_interval: float = 60.0  # strangers' events beyond a few per address: one line per this
    goodbye: float = 2.0  # spent delivering last words before hanging up
    give_up: float = 60.0  # a client stops trying to reach its server after this long
    backoff_first: float = 0.5
    backoff_max: float = 8.0

    @property
    def server_silence(self) -> float:
        """The server gives up a silent client only once it has surely
        stopped its jobs: after its own deadline and the grace of the kill."""
        return self.client_silence + self.kill_grace + self.silence_margin

    @property
    def lost_release(self) -> float:
        """How long the server keeps a lost client's jobs locked before it
        marks them 'e' (when the client did not say its own deadlines): a
        client learns it is lost at once (it hung up, or hears us hang up)
        or at its silence deadline at the latest, then stops its jobs
        within the grace of the kill."""
        return self.client_silence + self.kill_grace + self.release_margin

    @classmethod
    def from_text(cls, text: str) -> TcpTimings:
        """Timings from ``NAME=SECONDS,...`` (the hidden option); raises ValueError."""
        values: dict[str, float] = {}
        names = set(cls.__dataclass_fields__)
        for item in filter(None, text.split(",")):
            name, equals, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not equals or name not in names:
                raise ValueError(f"{item!r}: not NAME=SECONDS with NAME one of {', '.join(sorted(names))}")
            values[name] = float(value)
            if not values[name] >= 0:
                raise ValueError(f"{item!r}: seconds must be 0 or more")
        return cls(**values)



class _PeerError(Exception):
    """The peer broke the protocol; the message says how, after its address."""


class _ConnectionGone(_PeerError):
    """The connection itself ended: closed, reset or timed out."""


class _ServerGone(RunmakerFailure):
    """A client found no server for longer than it waits: one ``Error:`` line, exit status 1."""


class _Interrupted(Exception):
    """A stop signal (or SIGUSR1) arrived while a client was (re)connecting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _jobs(count: object) -> str:
    """``1 job``, ``8 jobs``: a count as a user reads it."""
    return "1 job" if count == 1 else f"{count} jobs"


def _peer_name(address: tuple[object, ...]) -> str:
    """``host:port`` as a user writes it; IPv4 peers of a dual-stack socket unmapped."""
    host, port = str(address[0]), address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_hex(value: object, size: int) -> bool:
    if not isinstance(value, str) or len(value) != 2 * size:
        return False
    return re.fullmatch(r"[0-9a-f]*", value) is not None


def _is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= _MAX_SECONDS_SAID


def _origin(address: tuple[object, ...]) -> str:
    """Where a connection comes from, for the strangers' limits: its IPv4 address or IPv6 /64."""
    try:
        ip = ipaddress.ip_address(str(address[0]).partition("%")[0])
    except ValueError:
        return str(address[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _proof(token: bytes, side: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What ``side`` sends to show it knows the token (nonces have a fixed size)."""
    message = b"runmaker " + side + b" proof\0" + server_nonce + client_nonce
    return hmac.new(token, message, hashlib.sha256).digest()


def _session_key(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    message = b"runmaker session\0" + server_nonce + client_nonce
    return hmac.new(token, message, hashlib.sha256).digest()


def _tune(sock: socket.socket) -> None:
    # Claims and answers are small and wait for each other: without
    # TCP_NODELAY, Nagle's algorithm and delayed ACKs add 40 ms to each.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class _Channel:
    """One connection's messages: bounded JSON lines, signed once authenticated."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.last_received = self.last_sent = time.monotonic()
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._limit = _MAX_GREETING
        self._key: bytes | None = None
        self._labels = (b"", b"")  # sending, receiving
        self._numbers = [0, 0]

    def expect_line_of(self, limit: int) -> None:
        """Accept a next line of up to ``limit`` bytes."""
        self._limit = limit

    def secure(self, key: bytes, *, server: bool) -> None:
        """Sign every later line sent and check every later line received."""
        self._key = key
        self._labels = (b"server\0", b"client\0") if server else (b"client\0", b"server\0")
        self._limit = _MAX_MESSAGE

    def _signature(self, direction: int, data: bytes) -> bytes:
        assert self._key is not None
        number = self._numbers[direction]
        self._numbers[direction] = number + 1
        signed = self._labels[direction] + number.to_bytes(8, "big") + data
        return hmac.new(self._key, signed, hashlib.sha256).hexdigest().encode()

    @property
    def sending(self) -> bool:
        return bool(self._out)

    def send(self, message: dict[str, object]) -> None:
        """Queue one message; ``flush`` hands it to the kernel."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if self._key is not None:
            data = self._signature(0, data) + b" " + data
        if len(self._out) + len(data) >= _MAX_BACKLOG:
            raise _PeerError("does not read what it is sent")
        self._out += data + b"\n"
        self.last_sent = time.monotonic()

    def flush(self) -> None:
        """Send what the kernel takes now; the rest waits for the next call."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError as exc:
                raise _ConnectionGone(_reason(exc)) from None
            del self._out[:sent]

    def receive(self) -> None:
        """Take what has arrived, up to a budget, so one peer cannot hold up others."""
        taken = 0
        while taken < _RECEIVE_BUDGET and not self._eof:
            try:
                chunk = self.sock.recv(_READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:  # reset, or the handshake's timeout
                raise _ConnectionGone(_reason(exc)) from None
            if not chunk:
                self._eof = True
                return
            self._in += chunk
            taken += len(chunk)
            self.last_received = time.monotonic()
            if self.sock.gettimeout() != 0.0:
                return  # a blocking socket (the client's handshake): one read

    def next_message(self) -> dict[str, object] | None:
        """The next whole message received, or None; raises _PeerError for a bad one."""
        end = self._in.find(b"\n", 0, self._limit + 1)
        if end < 0:
            if len(self._in) > self._limit:
                raise _PeerError(f"sent a line longer than {self._limit} bytes")
            return None
        line = bytes(self._in[:end])
        del self._in[: end + 1]
        if self._key is not None:
            signature, _, line = line.partition(b" ")
            if not hmac.compare_digest(signature, self._signature(1, line)):
                raise _PeerError("sent a line with a wrong signature")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise _PeerError("sent a malformed line") from None
        if not isinstance(message, dict):
            raise _PeerError("sent a malformed line")
        return message

    def raise_if_closed(self) -> None:
        """Once every whole message is taken: raise _ConnectionGone if the peer hung up."""
        if self._eof:
            raise _ConnectionGone("connection closed")

    def finish_sending(self) -> None:
        """Send the end of the stream once every message is sent.

        Hanging up on a peer whose data we have not read makes the kernel
        send a reset, which may destroy our last message before the peer
        reads it; so the server says it is done, and waits for the peer to
        hang up first (``discard_input``).
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def discard_input(self) -> bool:
        """Read and drop what has arrived (up to a budget); True once the peer has hung up."""
        for _ in range(_RECEIVE_BUDGET // _READ_CHUNK):
            try:
                if not self.sock.recv(_READ_CHUNK):
                    return True
            except BlockingIOError:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


class _Notices:
    """A server's or client's ``notify``, called by a thread of its own.

    Its loop never waits on stderr: a pipe nobody reads, a terminal on
    hold.  Far behind, lines are dropped and counted; a stderr that fails
    (a full disk, /dev/full) drops them all: it cannot say so anywhere.
    """

    def __init__(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        self._buffer = _OutputBuffer(self._write, _NOTICES_BEHIND)
        self._dropped = 0

    def __call__(self, message: str) -> None:
        if self._buffer.full:
            self._dropped += 1
            return
        if self._dropped:
            self._buffer.put(f"runmaker: {self._dropped} lines not shown: stderr fell behind\n"
                             .encode())
            self._dropped = 0
        self._buffer.put(message.encode("utf-8", "surrogatepass") + b"\n")

    def drain(self) -> None:
        """Wait until every line is shown (or stderr failed)."""
        self._buffer.drain()

    def _write(self, data: bytes) -> None:
        for line in data.decode("utf-8", "surrogatepass").splitlines():
            self._notify(line)


# -- tokens and addresses ---------------------------------------------------


def _read_token(value: str) -> tuple[str, str]:
    """The token of ``--token``: the value itself, or the contents of a file.

    Returns the token and where it came from, for the server's first line.
    A value with a slash in it is a path (tokens made here are hex).
    """
    if os.path.isfile(value) or os.sep in value:
        try:
            with open(value, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not a text file"
            raise RunmakerError(f"{value}: cannot read the token: {why}") from None
        if not token or "\n" in token:
            raise RunmakerError(f"{value}: a token file holds one token on one line")
        return token, f"read from {value}"
    if not value.strip():
        raise RunmakerError("--token: the token is empty")
    return value, "given with --token"


def _make_token_file() -> tuple[str, str]:
    """A new random token, written to ~/.runmaker.token (mode 0600)."""
    token = secrets.token_hex(_TOKEN_BYTES)
    path = os.path.expanduser(_TOKEN_FILE)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file may have been readable by others
            _write_all(fd, token.encode() + b"\n")
        finally:
            os.close(fd)
    except OSError as exc:
        raise RunmakerError(f"{path}: cannot write the token: {_reason(exc)}") from None
    return token, f"written to {path}"


def _client_token(value: str | None) -> str:
    """The client's token: ``--token``, or else the token file this user's server wrote."""
    if value is not None:
        return _read_token(value)[0]
    path = os.path.expanduser(_TOKEN_FILE)
    if not os.path.isfile(path):
        raise click.UsageError("--connect needs --token TOKEN|FILE (the server printed it)")
    return _read_token(path)[0]


def _split_address(address: str, port: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPV6]:PORT or a bare IPv6 address, and the port to use."""
    host, port_text = address, None
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise RunmakerError(f"{address}: not HOST[:PORT]")
        port_text = rest[1:] if rest else None
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RunmakerError(f"{address}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host or port == 0:
        raise RunmakerError(f"{address}: not HOST[:PORT] (with a port from 1 to 65535)")
    return host, port


def _listen(bind: str | None, port: int) -> socket.socket:
    """The server's listening socket: every interface (IPv6 and IPv4), or ``bind``."""
    try:
        if bind is None:
            if socket.has_dualstack_ipv6():
                try:
                    sock = socket.create_server(
                        ("::", port), family=socket.AF_INET6, dualstack_ipv6=True
                    )
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise
                    sock = socket.create_server(("0.0.0.0", port))  # IPv6 switched off
            else:
                sock = socket.create_server(("0.0.0.0", port))
        else:
            family, _, _, _, address = socket.getaddrinfo(
                bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(address, family=family)
    except OSError as exc:
        where = bind or "every interface"
        raise RunmakerError(f"cannot listen on {where}, port {port}: {_reason(exc)}") from None
    sock.setblocking(False)
    return sock


# -- the server ------------------------------------------------------------


@dataclass
class ServerOptions:
    """How ``runmaker --serve`` listens and hands out the jobs of its file."""

    bind: str | None = None  # None: every interface
    port: int = _TCP_PORT  # 0: any free port (it is announced)
    token: str | None = None  # a token or a file holding one; None: a new one in ~/.runmaker.token
    retry: bool = False
    follow: bool = False


@dataclass(eq=False)
class _Peer:
    """One connection to the server, and the jobs it runs."""

    channel: _Channel
    nonce: bytes
    deadline: float  # to authenticate by (or, closing, to be gone by)
    origin: str  # its address (an IPv6 /64) for the strangers' limits and reports
    allowed: float  # seconds it was given to authenticate
    release: float  # seconds to keep its jobs locked once it is lost
    host: str | None = None  # the client's host name, once authenticated
    claims: dict[int, Claim] = field(default_factory=dict)  # by line number
    kills_at: dict[int, int] = field(default_factory=dict)  # line -> kill lines known when claimed
    closing: bool = False  # its last message is queued: hang up once it is sent
    shut: bool = False  # the last message is sent: wait for the peer to hang up
    events: int = 0

    @property
    def label(self) -> str:
        return f"{self.channel.name} ({self.host})" if self.host else self.channel.name


class _StrangerReports:
    """The server's lines about strangers, bounded: a flood cannot fill its log.

    Per report interval, the first few lines about each origin (and about
    all of them) are shown; the rest are counted, and when the interval
    ends one line per origin says how many more there were.
    """

    def __init__(self, notify: Callable[[str], None], interval: float) -> None:
        self._notify = notify
        self._interval = interval
        self._ends = time.monotonic() + interval
        self._shown: dict[str, int] = {}
        self._shown_in_all = 0
        self._hidden: dict[str, int] = {}
        self._hidden_elsewhere = 0  # from origins beyond _MAX_ORIGINS_COUNTED

    def say(self, origin: str, line: str) -> None:
        shown = self._shown.get(origin, 0)
        if shown < _SHOWN_PER_ORIGIN and self._shown_in_all < _SHOWN_STRANGER_LINES:
            self._shown[origin] = shown + 1
            self._shown_in_all += 1
            self._notify(line)
        elif origin in self._hidden or len(self._hidden) < _MAX_ORIGINS_COUNTED:
            self._hidden[origin] = self._hidden.get(origin, 0) + 1
        else:
            self._hidden_elsewhere += 1

    def tick(self, now: float) -> float:
        """Sum up a finished interval; return when the current one ends."""
        if now >= self._ends:
            span = f"in the last {self._interval:g} s"
            for origin, count in self._hidden.items():
                self._notify(f"runmaker: {origin}: {count} more connections, drops or failed "
                             f"authentications of strangers {span}, not shown one by one")
            if self._hidden_elsewhere:
                self._notify(f"runmaker: {self._hidden_elsewhere} more events of strangers from "
                             f"other addresses {span}, not shown one by one")
            self._shown.clear()
            self._hidden.clear()
            self._shown_in_all = self._hidden_elsewhere = 0
            self._ends = now + self._interval
        return self._ends


class _Server:
    """The server's loop: one thread, one poll, never waiting on any one peer."""

    def __init__(
        self,
        scheduler: Scheduler,
        listener: socket.socket,
        token: str,
        options: ServerOptions,
        notify: Callable[[str], None],
        timings: TcpTimings,
    ) -> None:
        self.timings = timings
        self._scheduler = scheduler
        self._listener = listener
        self._token = token.encode()
        self._options = options
        self._notify = notify
        self._path = os.path.abspath(scheduler.jobfile.path)
        self._poller = select.poll()
        self._peers: dict[int, _Peer] = {}  # socket fd -> peer
        self._strangers: dict[str, list[_Peer]] = {}  # origin -> its unauthenticated peers, oldest first
        self._reports = _StrangerReports(notify, timings.report_interval)
        self._lost: list[tuple[float, list[Claim]]] = []  # release time, claims
        self._signals: list[int] = []
        self._signals_seen = 0
        self._stop_deadline: float | None = None
        self._accept_again: float | None = None
        self._failures = 0
        self._replaced = False
        self._nothing_left: IdleReason | None = None  # DONE or BLOCKED, once seen
        self._block = ""
        self._next_look = 0.0
        self._next_refresh = 0.0
        self._kills_known = len(scheduler.jobfile.kills)  # older ones stopped older runs
        self._given_back: set[int] = set()  # indexes of jobs put back as they were, maybe pending

    def run(self) -> int:
        with stop_signals_waking(self._on_signal) as wake_r:
            self._poller.register(wake_r, select.POLLIN)
            self._poller.register(self._listener.fileno(), select.POLLIN)
            try:
                self._loop(wake_r)
                self._say_goodbye(wake_r)
            except OSError:
                # The job file failed (EIO: the NFS server dropped our locks):
                # the clients' jobs are no longer ours to run.  Best effort, as
                # the caller ends at once: their connections close with it.
                for peer in self._clients():
                    try:
                        peer.channel.send({"t": "stop"})
                        peer.channel.flush()
                    except (OSError, _PeerError):
                        pass
                raise
            finally:
                for peer in self._peers.values():
                    peer.channel.close()
        if self._signals_seen:
            return _EXIT_SIGNALLED
        return 1 if self._failures or self._replaced else 0

    def _loop(self, wake_r: int) -> None:
        listener = self._listener.fileno()
        while True:
            self._handle_signals()
            now = time.monotonic()
            wake_at = self._keep_time(now)
            self._pass_kills(now)
            self._scheduler.commit()
            if self._is_over(now):
                return
            for peer in list(self._peers.values()):
                self._update(peer)
            timeout = max(0.0, min(wake_at, now + _POLL) - now)
            for fd, events in self._poller.poll(timeout * 1000):
                if fd == wake_r:
                    _drain_wakeup(wake_r)
                elif fd == listener:
                    self._accept()
                elif fd in self._peers:  # not dropped earlier in this round
                    self._serve(self._peers[fd], events)
            self._scheduler.commit()

    # -- signals -----------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            name = _signal_name(self._signals.pop(0))
            self._signals_seen += 1
            running = len(self._scheduler.held)
            if self._signals_seen == 1:
                self._notify(
                    f"runmaker: {name}: draining, handing out no more jobs; {running} still "
                    "running on clients (a second signal stops them)"
                )
            elif self._signals_seen == 2:
                self._notify(f"runmaker: {name}: stopping {running} running jobs")
                for peer in self._clients():
                    self._send(peer, {"t": "stop"})
                # A client that cannot hear us stops its jobs by its own deadlines.
                self._stop_deadline = time.monotonic() + max(
                    [peer.release for peer in self._peers.values()] + [self.timings.lost_release]
                )

    # -- time --------------------------------------------------------------

    def _keep_time(self, now: float) -> float:
        """Drop late and silent peers, ping quiet ones, release lost jobs; return when next."""
        wake_at = now + _POLL
        for peer in list(self._peers.values()):
            channel = peer.channel
            if peer.host is None or peer.closing:
                if now >= peer.deadline:
                    late = "did not hang up after its last message" if peer.closing else (
                        f"no authentication within {peer.allowed:g} s"
                    )
                    self._drop(peer, late)
                    continue
                wake_at = min(wake_at, peer.deadline)
            elif now - channel.last_received >= self.timings.server_silence:
                self._serve(peer, select.POLLIN)  # it may have spoken while we were stopped
                if peer.channel.sock.fileno() in self._peers and (
                    time.monotonic() - channel.last_received >= self.timings.server_silence
                ):
                    self._drop(peer, f"silent for {self.timings.server_silence:g} s")
                continue
            else:
                if now - channel.last_sent >= self.timings.heartbeat:
                    self._send(peer, {"t": "ping"})
                wake_at = min(
                    wake_at,
                    channel.last_sent + self.timings.heartbeat,
                    channel.last_received + self.timings.server_silence,
                )
        if self._lost:
            due = [claims for moment, claims in self._lost if moment <= now]
            self._lost = [(moment, claims) for moment, claims in self._lost if moment > now]
            for claims in due:
                self._mark_errors(claims)
            for moment, _ in self._lost:
                wake_at = min(wake_at, moment)
        wake_at = min(wake_at, self._reports.tick(now))
        if self._accept_again is not None:
            if now >= self._accept_again:
                self._accept_again = None
                self._poller.register(self._listener.fileno(), select.POLLIN)
            else:
                wake_at = min(wake_at, self._accept_again)
        return wake_at

    def _pass_kills(self, now: float) -> None:
        """runset --kill: tell the client running a job a new kill line names to stop it.

        A kill line acts on the runs that were going when it was appended:
        one read before a job was claimed does not touch that run.
        """
        if self._scheduler.held and now >= self._next_refresh:
            self._scheduler.refresh()  # reads appended lines, kill lines among them
            self._next_refresh = now + _REFRESH_GAP
        kills = self._scheduler.jobfile.kills
        for number in range(self._kills_known, len(kills)):
            for peer in self._clients():
                lines = [line for line in kills[number]
                         if line in peer.claims and peer.kills_at.get(line, 0) <= number]
                if lines:
                    self._send(peer, {"t": "kill", "lines": lines})
        self._kills_known = len(kills)

    def _mark_errors(self, claims: list[Claim]) -> None:
        for claim in claims:
            self._scheduler.finish_job(claim, "e")
        self._failures += len(claims)

    def _is_over(self, now: float) -> bool:
        """The end rule: nothing is held, and nothing is left, or a signal or a replaced file."""
        if self._scheduler.held:
            if self._stop_deadline is not None and now >= self._stop_deadline:
                self._notify("runmaker: clients did not stop their jobs in time; marking them e")
                for peer in self._peers.values():
                    self._mark_errors(list(peer.claims.values()))
                    peer.claims.clear()
                for _, claims in self._lost:
                    self._mark_errors(claims)
                self._lost.clear()
                self._scheduler.commit()
                return True
            return False
        if self._signals_seen or self._replaced or self._nothing_left:
            return True
        if self._options.follow or any(peer.host for peer in self._peers.values()):
            return False  # clients that ask find out whether anything is left
        if now < self._next_look:
            return False
        # Nobody asks: look for anything left to run, as seldom as a worker would.
        ended = self._scheduler.nothing_left()
        self._next_look = time.monotonic() + max(_POLL, 20 * (time.monotonic() - now))
        # A job given back is pending, though the scheduler may not count it
        # until its lock is released (the committer thread's, after fsync).
        states = self._scheduler.states
        self._given_back = {i for i in self._given_back if states[i] in b".+"}
        if self._given_back or not work_is_over(ended, running=False, follow=False):
            return False
        self._nothing_left = ended
        if ended is IdleReason.BLOCKED:
            self._block = self._scheduler.describe_block()
        return True

    # -- peers -------------------------------------------------------------

    def _clients(self) -> list[_Peer]:
        return [peer for peer in self._peers.values() if peer.host and not peer.closing]

    def _accept(self) -> None:
        for _ in range(64):  # then let the others have their turn
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of descriptors, say: the listener stays readable, so
                # stop listening for a moment rather than spin.
                self._notify(f"runmaker: cannot accept a connection: {_reason(exc)}")
                self._poller.unregister(self._listener.fileno())
                self._accept_again = time.monotonic() + 1.0
                return
            name, origin = _peer_name(address), _origin(address)
            if len(self._peers) >= _MAX_PEERS and not self._strangers:
                self._reports.say(origin, f"runmaker: {name}: refused: already {_MAX_PEERS} connections")
                sock.close()
                continue
            self._make_room_for_stranger(origin)
            now = time.monotonic()
            busy = sum(map(len, self._strangers.values())) >= _MAX_STRANGERS // 2
            wait = self.timings.auth_deadline
            if busy:  # under pressure, a shorter handshake deadline
                wait = min(wait, self.timings.auth_busy)
            sock.setblocking(False)
            _tune(sock)
            nonce = secrets.token_bytes(_NONCE_BYTES)
            peer = _Peer(_Channel(sock, name), nonce, now + wait, origin, wait, self.timings.lost_release)
            self._peers[sock.fileno()] = peer
            self._strangers.setdefault(origin, []).append(peer)
            self._poller.register(sock.fileno(), select.POLLIN)
            peer.events = select.POLLIN
            self._reports.say(origin, f"runmaker: connection from {name}")
            self._send(peer, {"runmaker": _PROTOCOL, "nonce": nonce.hex()})

    def _make_room_for_stranger(self, origin: str) -> None:
        """Strangers get a small share, and a newcomer always gets in.

        A flood of connections that never authenticate cannot keep a real
        client (one reconnecting after a network fault) out: one origin
        holds at most a few slots, and when every slot is taken, the oldest
        stranger of the origin holding the most gives its slot up.
        """
        mine = self._strangers.get(origin, [])
        if len(mine) >= _STRANGERS_PER_ORIGIN:
            victim = mine[0]
        elif sum(map(len, self._strangers.values())) >= _MAX_STRANGERS or len(self._peers) >= _MAX_PEERS:
            victim = max(self._strangers.values(), key=len)[0]
        else:
            return
        self._drop(victim, "made room for a newer connection")

    def _send(self, peer: _Peer, message: dict[str, object]) -> None:
        try:
            peer.channel.send(message)
        except _PeerError as exc:
            self._drop(peer, str(exc))

    def _update(self, peer: _Peer) -> None:
        """Send what the peer can take, then (closing) the end of the stream; watch for input."""
        if peer.channel.sock.fileno() not in self._peers:
            return  # dropped
        try:
            peer.channel.flush()
        except _PeerError as exc:
            if peer.closing:
                self._forget(peer)  # it left first: nothing was lost
            else:
                self._drop(peer, str(exc))
            return
        if peer.closing and not peer.channel.sending and not peer.shut:
            peer.channel.finish_sending()
            peer.shut = True
        events = select.POLLIN | (select.POLLOUT if peer.channel.sending else 0)
        if events != peer.events:
            self._poller.modify(peer.channel.sock.fileno(), events)
            peer.events = events

    def _serve(self, peer: _Peer, events: int) -> None:
        if peer.closing:
            # What it says now no longer counts; once it hangs up, so do we.
            if events & ~select.POLLOUT and peer.channel.discard_input():
                self._forget(peer)
            else:
                self._update(peer)
            return
        try:
            if events & ~select.POLLOUT:  # data, a hang-up or an error: recv tells which
                peer.channel.receive()
                while not peer.closing:
                    message = peer.channel.next_message()
                    if message is None:
                        peer.channel.raise_if_closed()
                        break
                    self._handle(peer, message)
        except _PeerError as exc:
            self._drop(peer, str(exc))
            return
        self._update(peer)

    def _forget(self, peer: _Peer) -> None:
        fd = peer.channel.sock.fileno()
        self._poller.unregister(fd)
        del self._peers[fd]
        self._no_stranger(peer)
        peer.channel.close()

    def _no_stranger(self, peer: _Peer) -> None:
        mine = self._strangers.get(peer.origin)
        if mine is not None and peer in mine:
            mine.remove(peer)
            if not mine:
                del self._strangers[peer.origin]

    def _drop(self, peer: _Peer, why: str) -> None:
        """Hang up on a peer; its jobs end 'e' once it has surely stopped them.

        Whether it hung up, we hang up on it, or it went silent: a client
        whose loop runs learns it is lost at once or at its own silence
        deadline at the latest, and stops its jobs within the grace of the
        kill; so its jobs stay locked for those (``peer.release``).
        """
        if peer.channel.sock.fileno() not in self._peers:
            return
        stranger = peer.host is None
        self._forget(peer)
        claims = list(peer.claims.values())
        peer.claims.clear()
        if not claims:
            line = f"runmaker: {peer.label}: dropped ({why})"
            if stranger:
                self._reports.say(peer.origin, line)
            else:
                self._notify(line)
            return
        delay = peer.release
        self._lost.append((time.monotonic() + delay, claims))
        lines = ", ".join(str(claim.line) for claim in claims[:10])
        lines += ", ..." if len(claims) > 10 else ""
        self._notify(
            f"runmaker: {peer.label}: dropped ({why}); its {len(claims)} running "
            f"jobs (line {lines}) end 'e' in {delay:g} s, once it has surely stopped them"
        )

    # -- messages ------------------------------------------------------------

    def _handle(self, peer: _Peer, message: dict[str, object]) -> None:
        if peer.host is None:
            self._authenticate(peer, message)
            return
        kind = message.get("t")
        if kind == "claim":
            count = message.get("n")
            if not isinstance(count, int) or not 0 < count <= _MAX_CLAIM:
                raise _PeerError("sent a malformed claim")
            self._take_states(peer, message.get("done"))
            self._hand_out(peer, count)
        elif kind == "done":
            self._take_states(peer, message.get("done"))
        elif kind == "bye":
            if peer.claims:
                raise _PeerError("said goodbye while it held jobs")
            self._notify(f"runmaker: {peer.label}: client left")
            peer.channel.send({"t": "bye"})
            peer.closing = True
            peer.deadline = time.monotonic() + self.timings.goodbye
        elif kind != "ping":
            raise _PeerError("sent an unknown message")

    def _authenticate(self, peer: _Peer, message: dict[str, object]) -> None:
        nonce, proof, host = message.get("nonce"), message.get("proof"), message.get("host")
        if not (
            _is_hex(nonce, _NONCE_BYTES)
            and _is_hex(proof, hashlib.sha256().digest_size)
            and isinstance(host, str)
            and 0 < len(host) <= 255
            and host.isprintable()
            and isinstance(message.get("jobs"), int)
        ):
            raise _PeerError("sent a malformed greeting")
        client_nonce = bytes.fromhex(str(nonce))
        expected = _proof(self._token, b"client", peer.nonce, client_nonce)
        if not hmac.compare_digest(bytes.fromhex(str(proof)), expected):
            self._reports.say(peer.origin, f"runmaker: {peer.label}: authentication failed (wrong token)")
            peer.channel.send({"denied": "wrong token"})
            peer.closing = True
            peer.deadline = time.monotonic() + self.timings.goodbye
            return
        peer.channel.send({
            "proof": _proof(self._token, b"server", peer.nonce, client_nonce).hex(),
            "file": self._path,
            "host": host_name(),
        })
        peer.channel.secure(_session_key(self._token, peer.nonce, client_nonce), server=True)
        peer.host = host
        self._no_stranger(peer)
        silence, grace = message.get("silence"), message.get("grace")
        if _is_seconds(silence) and _is_seconds(grace):
            peer.release = float(silence) + float(grace) + self.timings.release_margin  # type: ignore[arg-type]
        self._notify(f"runmaker: {peer.label}: authenticated, runs up to {_jobs(message['jobs'])}")

    def _take_states(self, peer: _Peer, done: object) -> None:
        """Write the final states a client reports, through the scheduler."""
        if done is None:
            return
        if not isinstance(done, list):
            raise _PeerError("sent malformed job states")
        for entry in done:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], int)
                and entry[1] in ("d", "!", "e", ".")
            ):
                raise _PeerError("sent malformed job states")
            claim = peer.claims.pop(entry[0], None)
            if claim is None:
                raise _PeerError(f"reported line {entry[0]}, which it does not run")
            if entry[1] == ".":
                # Stopped by the client's --requeue, or given but never
                # started: back to what it was here, to be run again.
                self._scheduler.finish_job(claim, claim.was)
                self._scheduler.attempted.discard(claim.index)
                self._given_back.add(claim.index)
                continue
            self._scheduler.finish_job(claim, entry[1])
            if entry[1] != "d":
                self._failures += 1

    def _hand_out(self, peer: _Peer, count: int) -> None:
        """Answer a claim: up to ``count`` jobs claimed for ``peer``, perhaps none."""
        jobs: list[list[object]] = []
        if not (self._signals_seen or self._replaced or self._nothing_left):
            if self._scheduler.replaced():
                self._replaced = True
                self._notify(
                    f"runmaker: {self._path}: the file was replaced or shrunk under this "
                    f"server; handing out no more jobs, {len(self._scheduler.held)} still running"
                )
            else:
                jobs = self._claim_for(peer, count)
        peer.channel.send({"t": "jobs", "jobs": jobs})

    def _claim_for(self, peer: _Peer, count: int) -> list[list[object]]:
        jobs: list[list[object]] = []
        room = _MAX_MESSAGE - _MAX_GREETING
        scheduler = self._scheduler
        while len(jobs) < count and room >= _MAX_ENCODED_JOB:
            want = min(count - len(jobs), room // _MAX_ENCODED_JOB)
            claims = scheduler.claim_jobs(want, idle=not scheduler.held)
            for claim in claims:
                if len(claim.command) > _MAX_COMMAND:
                    self._notify(
                        f"runmaker: {self._path}:{claim.line}: the command is longer than "
                        f"{_MAX_COMMAND} bytes, more than exec takes; it ends 'e'"
                    )
                    self._mark_errors([claim])
                    continue
                peer.claims[claim.line] = claim
                peer.kills_at[claim.line] = len(scheduler.jobfile.kills)
                encoded = base64.b64encode(claim.command).decode("ascii")
                jobs.append([claim.line, encoded])
                room -= len(encoded) + 32
            if len(claims) < want:
                reason = scheduler.idle_reason
                if work_is_over(reason, running=bool(scheduler.held), follow=self._options.follow):
                    self._nothing_left = reason
                    if reason is IdleReason.BLOCKED:
                        self._block = scheduler.describe_block()
                break
        return jobs

    def _say_goodbye(self, wake_r: int) -> None:
        """Tell every client to end, and give the words a moment to reach them."""
        if self._accept_again is None:
            self._poller.unregister(self._listener.fileno())
        for cause in self._block.splitlines():
            self._notify("runmaker: " + cause)
        clients = self._clients()
        why = "signalled" if self._signals_seen else (
            "the job file was replaced" if self._replaced else "nothing left to run"
        )
        whom = "1 client" if len(clients) == 1 else f"{len(clients)} clients"
        self._notify(f"runmaker: {why}; telling {whom} to end")
        for peer in list(self._peers.values()):
            if peer in clients:
                self._send(peer, {"t": "end", "block": self._block or None})
                peer.closing = True
                self._update(peer)
            elif not peer.closing:
                self._forget(peer)  # not authenticated: nothing to tell it
        deadline = time.monotonic() + self.timings.goodbye
        while self._peers and time.monotonic() < deadline:
            for fd, events in self._poller.poll(50):
                if fd == wake_r:
                    _drain_wakeup(wake_r)
                elif fd in self._peers:
                    self._serve(self._peers[fd], events)


# -- the client ------------------------------------------------------------


class _RemoteSource:
    """Stands in for the Scheduler in a TCP client's Worker: the server claims.

    As the Worker's JobSource it asks the server for jobs and reports their
    final states; as its Link it is watched by the Worker's loop, which calls
    ``commit`` whenever data arrives or a heartbeat is due, and stops every
    running job once ``broken`` says the server is gone or stops them.

    Nothing here waits on the server while the Worker runs: a claim is sent
    and its answer taken when it arrives (a later ``claim_jobs`` returns the
    jobs), so the Worker's timeouts, signals, output and heartbeats go on
    while the server is slow or stopped.
    """

    def __init__(self, channel: _Channel, timings: TcpTimings) -> None:
        self.channel = channel
        self.timings = timings
        self.idle_reason: IdleReason | None = None
        self.ended = False  # the server said nothing is left
        self.gone: str | None = None  # why the connection is lost
        self.succeeded = False
        self.unrecorded: list[int] = []  # lines done here the server may not know of
        # Stops a running job on the server's word (runset --kill); the
        # client sets it to its Worker's.  True if the job ran here.
        self.on_kill: Callable[[int], bool] | None = None
        self._stop = False
        self._block = ""
        self._done: list[list[object]] = []  # final states not sent yet
        self._unconfirmed: list[list[object]] = []  # sent, not yet answered
        self._confirmed_by_answer = 0  # of those, sent before the claim awaiting its answer
        self._held: set[int] = set()
        self._asked = 0  # jobs asked for by a claim not answered yet
        self._answered: list[Claim] = []  # jobs given for a claim, not yet taken by the Worker
        self._fresh_answer = False
        self._said_bye = False
        self._quiet_until = 0.0
        self._poller = select.poll()
        self._poller.register(channel.sock.fileno(), select.POLLIN)

    # -- the JobSource ---------------------------------------------------------

    def claim_jobs(self, count: int, *, idle: bool = False) -> list[Claim]:
        """The jobs the server gave for an earlier claim; ask for up to ``count`` more.

        Never waits: the answer to a claim is read when it arrives, and the
        next call returns its jobs.
        """
        self._serve()
        if self._answered:
            claims, self._answered = self._answered[:count], self._answered[count:]
            return claims
        if self.gone or self.ended or self._stop:
            self.idle_reason = self._why_idle()
            return []
        if self._asked or time.monotonic() < self._quiet_until:
            return []  # an answer is on its way, or it had nothing a moment ago
        asked = min(count, _MAX_CLAIM)
        try:
            self._send({"t": "claim", "n": asked, "done": self._take_done()})
        except _PeerError as exc:
            self._lose(str(exc))
            return []
        self._asked = asked
        self._confirmed_by_answer = len(self._unconfirmed)
        self.idle_reason = IdleReason.WAITING
        return []

    def refresh(self) -> None:
        """New lines and caps are the server's business: just serve the connection."""
        self._serve()

    def finish_job(self, claim: Claim, state: str) -> None:
        self._held.discard(claim.line)
        if state == "d":
            self.succeeded = True
        if self.gone is None:
            self._done.append([claim.line, state])
        elif state == "d":
            self.unrecorded.append(claim.line)

    def commit(self) -> None:
        """Send finished jobs' states, read what came, keep the connection alive."""
        self._serve()

    def replaced(self) -> bool:
        return False

    def describe_block(self) -> str:
        return self._block

    def _why_idle(self) -> IdleReason:
        if not self.ended:
            return IdleReason.WAITING
        return IdleReason.BLOCKED if self._block else IdleReason.DONE

    # -- the Link ----------------------------------------------------------

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def timeout(self, now: float) -> float | None:
        if self.gone or self._stop or self._done:
            return 0.0  # the worker is to act at once: on broken(), or to send
        if self._fresh_answer:
            # Jobs came while the Worker's turn went on: one turn more at
            # once to start them (it may not, once it stopped claiming).
            self._fresh_answer = False
            return 0.0
        if self.channel.sending:
            return 0.05
        channel = self.channel
        moment = min(
            channel.last_sent + self.timings.heartbeat,
            channel.last_received + self.timings.client_silence,
        )
        return max(0.0, moment - now)

    def broken(self) -> str | None:
        if self._stop:
            return f"{self.channel.name}: the server stops every job"
        return f"lost the connection to {self.channel.name} ({self.gone})" if self.gone else None

    # -- the connection ------------------------------------------------------

    def close(self) -> None:
        """Give back jobs never started, report the last states, say goodbye; hang up.

        Only here, once the Worker has ended, does the client wait on the
        server (at most its silence deadline): for the answer to a last
        claim, whose jobs it gives back, and for the goodbye.
        """
        try:
            if self.gone is None and not self.ended:
                if self._asked:
                    self._wait_until(lambda: not self._asked)
                for claim in self._answered:  # never started: back as they were
                    self.finish_job(claim, ".")
                self._answered.clear()
                if self.gone is None and not self.ended:
                    if self._done:
                        self._send({"t": "done", "done": self._take_done()})
                    self._send({"t": "bye"})
                    # Or "end": the server took every state either way.
                    self._wait_until(lambda: self._said_bye)
                    self._unconfirmed.clear()
        except _PeerError as exc:
            self._lose(str(exc))
        finally:
            self._lose_unconfirmed()
            self.channel.close()

    def _serve(self) -> None:
        if self.gone:
            return
        try:
            if self._done:
                self._send({"t": "done", "done": self._take_done()})
            if time.monotonic() - self.channel.last_sent >= self.timings.heartbeat:
                self._send({"t": "ping"})
            self.channel.flush()
            self.channel.receive()
            self._read()
            self.channel.raise_if_closed()
            if time.monotonic() - self.channel.last_received >= self.timings.client_silence:
                raise _ConnectionGone(f"the server was silent for {self.timings.client_silence:g} s")
        except _PeerError as exc:
            self._lose(str(exc))

    def _send(self, message: dict[str, object]) -> None:
        self.channel.send(message)
        self.channel.flush()

    def _take_done(self) -> list[list[object]]:
        done, self._done = self._done, []
        self._unconfirmed += done
        return done

    def _read(self) -> None:
        """Act on every message received."""
        while (message := self.channel.next_message()) is not None:
            kind = message.get("t")
            if kind == "jobs" and self._asked:
                self._take_answer(message)
            elif kind == "end":
                self.ended = True
                self._asked = 0  # it answers no more claims
                block = message.get("block")
                self._block = block if isinstance(block, str) else ""
            elif kind == "stop":
                self._stop = True
            elif kind == "kill":
                self._kill(message.get("lines"))
            elif kind == "bye":
                self._said_bye = True
            elif kind != "ping":
                raise _PeerError("sent an unexpected message")

    def _take_answer(self, answer: dict[str, object]) -> None:
        claims = self._claims_from(answer, self._asked)
        # The server took the states sent with or before the claim first.
        del self._unconfirmed[: self._confirmed_by_answer]
        self._confirmed_by_answer = 0
        self._answered += claims
        self._fresh_answer = bool(claims)
        if len(claims) < self._asked:
            self.idle_reason = self._why_idle()
            self._quiet_until = time.monotonic() + _REFRESH_GAP
        else:
            self.idle_reason = None
        self._asked = 0

    def _kill(self, lines: object) -> None:
        """runset --kill: stop these jobs (a job given but not started ends '!' at once)."""
        if not isinstance(lines, list) or not all(isinstance(line, int) for line in lines):
            raise _PeerError("sent a malformed kill")
        for line in lines:
            if line not in self._held:
                continue  # ended meanwhile: its state is on its way
            waiting = next((claim for claim in self._answered if claim.line == line), None)
            if waiting is not None:
                self._answered.remove(waiting)
                self.finish_job(waiting, "!")
            elif self.on_kill is not None:
                self.on_kill(line)

    def _wait_until(self, done: Callable[[], bool]) -> None:
        """Serve the connection until ``done()`` or the server ends; raises _PeerError."""
        while True:
            self.channel.flush()
            self.channel.receive()
            self._read()
            if done() or self.ended:
                return
            self.channel.raise_if_closed()
            now = time.monotonic()
            left = self.channel.last_received + self.timings.client_silence - now
            if left <= 0:
                raise _ConnectionGone(f"no answer from the server for {self.timings.client_silence:g} s")
            if now - self.channel.last_sent >= self.timings.heartbeat:
                self.channel.send({"t": "ping"})
            wait = min(left, self.timings.heartbeat, 0.05 if self.channel.sending else left)
            self._poller.poll(wait * 1000)

    def _claims_from(self, answer: dict[str, object], count: int) -> list[Claim]:
        jobs = answer.get("jobs")
        if not isinstance(jobs, list) or len(jobs) > count:
            raise _PeerError("sent a malformed answer")
        claims = []
        for entry in jobs:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], int)
                and isinstance(entry[1], str)
                and entry[0] not in self._held
            ):
                raise _PeerError("sent a malformed answer")
            try:
                command = base64.b64decode(entry[1], validate=True)
            except ValueError:
                raise _PeerError("sent a malformed answer") from None
            self._held.add(entry[0])
            claims.append(Claim(entry[0], entry[0], command))
        return claims

    def _lose(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            self._lose_unconfirmed()

    def _lose_unconfirmed(self) -> None:
        # States sent but not answered may not have reached the server: it
        # marks those jobs 'e' with the rest of the connection's.  A server
        # that ended had taken every state (it ends only when it holds none).
        if self.ended:
            self._unconfirmed.clear()
        for line, state in self._unconfirmed + self._done:
            if state == "d":
                self.unrecorded.append(int(line))  # type: ignore[call-overload]
        self._unconfirmed.clear()
        self._done.clear()


def _connect_to_server(
    host: str, port: int, token: str, options: WorkerOptions, timings: TcpTimings
) -> tuple[_Channel, dict[str, object]]:
    """Connect and authenticate both ways; return the channel and the server's welcome.

    Raises OSError or _ConnectionGone when worth trying again later, and
    RunmakerError when not: a wrong token, or no runmaker server there.
    """
    name = _peer_name((host, port))
    sock = socket.create_connection((host, port), timeout=timings.auth_deadline)
    authenticated = False
    try:
        _tune(sock)
        channel = _Channel(sock, name)
        deadline = time.monotonic() + timings.auth_deadline
        try:
            hello = _receive_one(channel, deadline, timings)
            nonce = hello.get("nonce")
            if hello.get("runmaker") != _PROTOCOL or not _is_hex(nonce, _NONCE_BYTES):
                raise _PeerError("sent a greeting of another protocol or version")
            server_nonce = bytes.fromhex(str(nonce))
            client_nonce = secrets.token_bytes(_NONCE_BYTES)
            secret = token.encode()
            channel.send({
                "nonce": client_nonce.hex(),
                "proof": _proof(secret, b"client", server_nonce, client_nonce).hex(),
                "host": options.host,
                "jobs": options.jobs,
                # How long the server must keep our jobs once it loses us.
                "silence": timings.client_silence,
                "grace": timings.kill_grace,
            })
            channel.flush()
            # The welcome names the job file: a long path, JSON-escaped,
            # may be far longer than a greeting.
            channel.expect_line_of(_MAX_WELCOME)
            welcome = _receive_one(channel, deadline, timings)
        except _ConnectionGone:
            raise
        except _PeerError as exc:
            raise RunmakerError(f"{name}: not a runmaker server: it {exc}") from None
        if "denied" in welcome:
            raise RunmakerError(
                f"{name}: the server refused the token; give the one it printed (or its token file)"
            )
        proof = welcome.get("proof")
        if not _is_hex(proof, hashlib.sha256().digest_size) or not hmac.compare_digest(
            bytes.fromhex(str(proof)), _proof(secret, b"server", server_nonce, client_nonce)
        ):
            raise RunmakerError(
                f"{name}: the server could not prove it knows the token; running nothing from it"
            )
        if not isinstance(welcome.get("file"), str):
            raise RunmakerError(f"{name}: not a runmaker server: it sent a malformed welcome")
        channel.secure(_session_key(secret, server_nonce, client_nonce), server=False)
        sock.setblocking(False)
        authenticated = True
        return channel, welcome
    finally:
        if not authenticated:
            sock.close()


def _receive_one(channel: _Channel, deadline: float, timings: TcpTimings) -> dict[str, object]:
    while True:
        message = channel.next_message()
        if message is not None:
            return message
        left = deadline - time.monotonic()
        if left <= 0:
            raise _ConnectionGone(f"no greeting within {timings.auth_deadline:g} s")
        channel.sock.settimeout(left)
        channel.receive()


class _TcpClient:
    """Runs the jobs of a server, connecting again when the connection is lost."""

    def __init__(self, host: str, port: int, token: str, options: WorkerOptions, records: _Records,
                 console: BinaryIO, notify: Callable[[str], None], timings: TcpTimings) -> None:
        self.host, self.port, self.token = host, port, token
        self.timings = timings
        self.name = _peer_name((host, port))
        self.options = options
        self.records = records
        self.console = console
        self.notify = notify

    def run(self) -> int:
        status = 0
        delay = self.timings.backoff_first
        unreachable_since: float | None = None
        first = True
        while True:
            try:
                channel, welcome = _connect_to_server(
                    self.host, self.port, self.token, self.options, self.timings
                )
            except socket.gaierror as exc:
                if first:
                    raise RunmakerError(f"{self.name}: {_reason(exc)}") from None
                why = _reason(exc)
            except (OSError, _ConnectionGone) as exc:
                why = _reason(exc) if isinstance(exc, OSError) else str(exc)
            else:
                first = False
                unreachable_since = None
                connected = time.monotonic()
                remote = _RemoteSource(channel, self.timings)
                code = self._run_jobs(remote, welcome)
                if code == _EXIT_SIGNALLED:
                    return code
                status = max(status, code)
                if remote.gone is None or remote.ended:
                    return status
                if self.options.one_only and remote.succeeded:
                    return status
                if time.monotonic() - connected > self.timings.client_silence:
                    delay = self.timings.backoff_first  # it had worked for a while: not a loop
                why = remote.gone
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
            elif now - unreachable_since >= self.timings.give_up:
                raise _ServerGone(
                    f"{self.name}: no runmaker server to be reached for {self.timings.give_up:g} s "
                    f"({why}); giving up"
                )
            self.notify(f"runmaker: {self.name}: {why}; trying again in {delay:g} s")
            time.sleep(delay)
            delay = min(2 * delay, self.timings.backoff_max)

    def _run_jobs(self, remote: _RemoteSource, welcome: dict[str, object]) -> int:
        options = dataclasses.replace(self.options, job_file=str(welcome["file"]))
        self.notify(f"runmaker: connected to {self.name}, serving {options.job_file}")
        try:
            worker = Worker(remote, options, self.records, console=self.console,
                            notify=self.notify, link=remote)
            remote.on_kill = worker.kill_job
            code = worker.run()
        finally:
            remote.close()
        if remote.unrecorded:
            lines = ", ".join(map(str, remote.unrecorded))
            self.notify(
                f"runmaker: {self.name}: the connection was lost before the server recorded "
                f"line {lines} as done; there it ends 'e'"
            )
            code = max(code, 1)
        return code


def _stop_signals_raise() -> dict[int, object]:
    return {
        sig: signal.signal(sig, _raise_interrupted)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
    }


def serve_job_file(
    path: str,
    options: ServerOptions,
    *,
    console: BinaryIO,
    notify: Callable[[str], None],
    timings: TcpTimings = TcpTimings(),
) -> int:
    """Serve the jobs of the job file at ``path`` to TCP clients; return the exit status.

    Claims jobs for clients (``run_tcp_client``) with the same scheduler and
    locks as a worker, so runset and runwait work on this host unchanged.
    Writes ``Token for clients: TOKEN (...)`` to ``console``, and a line
    through ``notify`` for each connection, authentication failure and
    dropped peer.  Ends, telling its clients to end, when nothing is left
    to run (not with ``options.follow``); a first signal drains, a second
    stops the clients' jobs.  Exit status as a worker's.

    Raises RunmakerError for a bad job file, token or address, before the
    job file is touched.  ``timings`` are the protocol's deadlines.
    """
    notices = _Notices(notify)
    try:
        return _serve(path, options, console, notices, timings)
    finally:
        notices.drain()


def _serve(
    path: str, options: ServerOptions, console: BinaryIO, notify: Callable[[str], None], timings: TcpTimings
) -> int:
    jobfile = JobFile(path, warn=notify)
    try:
        check_file_locking(path, fd=jobfile.fd)
        states = check_job_file(jobfile, notify)
        if _writable_by_others(jobfile.fd):
            notify(f"Warning: {path}: other users can write this file, and its lines run on clients")
        if options.token is not None:
            token, origin = _read_token(options.token)
        else:
            token, origin = _make_token_file()
        listener = _listen(options.bind, options.port)
        try:
            scheduler = Scheduler(jobfile, retry=options.retry, notify=notify, states=states)
            try:
                server = _Server(scheduler, listener, token, options, notify, timings)
                console.write(f"Token for clients: {token} ({origin})\n".encode())
                console.flush()
                port = listener.getsockname()[1]
                notify(
                    f"runmaker: serving {os.path.abspath(path)} on port {port} "
                    f"of {options.bind or 'every interface'}"
                )
                return server.run()
            except OSError as exc:  # the server has told its clients to stop their jobs
                scheduler.abandon()
                raise job_file_failed(path, exc) from None
            finally:
                scheduler.close()
        finally:
            listener.close()
    finally:
        jobfile.close()


def run_tcp_client(
    address: str,
    options: WorkerOptions,
    *,
    token: str | None,
    port: int = _TCP_PORT,
    console: BinaryIO,
    notify: Callable[[str], None],
    timings: TcpTimings = TcpTimings(),
) -> int:
    """Run jobs of the ``runmaker --serve`` at ``address`` (HOST[:PORT]); return the exit status.

    The jobs run as a worker's would (same console, records and signals),
    with RUNMAKER_FILE the path on the server.  A lost connection stops the
    running jobs (they end 'e'), then the client connects again, backing
    off, and gives up after a minute without a server.  ``token`` is
    ``--token`` (a token or a file holding one); None reads the token file
    this user's server wrote.  ``timings`` are the protocol's deadlines.

    Raises RunmakerError for a bad address, a wrong token or a peer that is
    no runmaker server; a click.ClickException of exit status 1 on giving up.
    """
    secret = _client_token(token)
    host, port = _split_address(address, port)
    _check_open_file_limit(options.jobs, options.logdir is not None)
    records = _Records(options, None, notify)
    notices = _Notices(notify)
    previous = _stop_signals_raise()
    try:
        return _TcpClient(host, port, secret, options, records, console, notices, timings).run()
    except _Interrupted as exc:
        notices(f"runmaker: {_signal_name(exc.signum)}: stopped while connecting")
        # SIGUSR1 is a planned stop: no job of this client was cut short by it.
        return 0 if exc.signum == signal.SIGUSR1 else _EXIT_SIGNALLED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        records.close()
        notices.drain()


