"""Real NFS between separate Linux kernels, for the tests and the benchmarks.

One NFS server and N clients, each its own Linux kernel: User-mode Linux
(UML) processes on this host, on a private Ethernet among themselves (a
``uml_switch`` over a unix socket; no packet reaches the host's network
stack).  The server runs the kernel's nfsd (NFSv3 with NLM, NFSv4.2; an
export on tmpfs, ``fsid=0``) with a short lease and grace (``LEASE``); the
clients mount it at ``/n4`` (NFSv4.2) and ``/n3`` (NFSv3).

How a guest is made (nothing is installed on the host):

- The Debian packages the host lacks (the UML kernel, ``uml_switch``, the NFS
  tools, rpcbind, kmod) are fetched with ``apt-get download`` and unpacked
  with ``dpkg-deb -x`` into a cache outside the checkout (``CACHE``), once.
- A guest's root file system is an overlay: a tmpfs (its own writes) over the
  cache's guest layer over the host's ``/`` (read-only, UML's hostfs).  So a
  guest runs this host's Python, this checkout's ``runmaker.py`` and bash at
  the same paths as the host does.
- PID 1 is a small agent that runs the shell scripts the host drops into the
  guest's queue directory (``RUN/NAME/q``, a read-write hostfs mount at
  ``/lab`` in every guest) and writes their output and exit status beside
  them.  Control never goes over the guests' network, so a guest cut off the
  network (``Guest.cut``) is still driven, and its jobs can still leave
  evidence under ``/lab``.
- A host crash is SIGKILL to the guest's whole process group.  (A UML guest
  cannot be frozen: SIGSTOP panics it; a partition is its eth0 going down.)

A UML kernel reads the host's clock, so times taken in guests and on the
host compare directly.
"""

from __future__ import annotations

import os
import platform
import py_compile
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
CACHE = Path(os.environ.get("RUNMAKER_NFS_CACHE", "/var/tmp/runmaker-nfs-cache"))
LEASE = 10  # seconds; the kernel's minimum, for both the NFSv4 lease and the grace periods
NET = "10.214.0"

__all__ = ["CACHE", "LEASE", "Guest", "GuestError", "Lab", "Result", "prepare", "unavailable"]

# Packages unpacked into the cache.  Host side: the UML kernel and the switch.
# Guest layer: what an NFS server and client need beyond the host's own /.
_HOST_PACKAGES = ["user-mode-linux", "uml-utilities"]
_GUEST_PACKAGES = ["nfs-common", "nfs-kernel-server", "rpcbind", "keyutils", "libnfsidmap1", "libwrap0",
                   "kmod"]
# Dependencies apt would add that no guest or host tool here needs
# (uml-utilities' other tools want them; only uml_switch is used).
_UNNEEDED = {"adduser", "lsb-base", "libfuse2", "libreadline8", "readline-common"}
_STAMP = ".built-1"
# The guardian: a process of its own that waits for EOF on its stdin, a pipe
# from the Lab's process, and then kills every process group listed in the
# Lab's record.  So the guests and the switch end when the test run does,
# even one killed before its teardown (SIGKILL): a UML kernel's helper
# processes outlive the kernel process itself.
_GUARDIAN = """import os, signal, sys
sys.stdin.buffer.read()
try:
    lines = open(sys.argv[1]).read().split("\\n")
except OSError:
    lines = []
for line in lines:
    if line.split():
        try:
            os.killpg(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass
try:
    os.unlink(sys.argv[1])
except OSError:
    pass
"""
_MEMORY = "384M"

# PID 1 of every guest.  Stage 1 runs on the host's / (read-only hostfs),
# builds the overlay root and pivots into it; stage 2 sets the guest up and
# becomes the agent.  RMK_* come from the kernel command line (the kernel
# hands unknown NAME=VALUE parameters to init as its environment).
_INIT = r"""#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "init: $*" > /dev/console; }
if [ "${1:-}" != stage2 ]; then
    mount -t proc proc /proc
    mount -t tmpfs -o mode=755 tmp /run
    mkdir -p /run/layer /run/up /run/work /run/root
    # A hostfs mount of its own: overlayfs refuses a lower layer inside another one.
    mount -t hostfs -o "$RMK_CACHE/guest" layer /run/layer || { say "hostfs failed"; exit 1; }
    (exec -a modprobe /run/layer/usr/bin/kmod -d /run/layer/usr overlay) || { say "no overlay"; exit 1; }
    mount -t overlay overlay -o lowerdir=/run/layer:/,upperdir=/run/up,workdir=/run/work /run/root \
        || { say "overlay failed"; exit 1; }
    mkdir -p /run/root/.host
    cd /run/root && pivot_root . .host && exec chroot . /bin/bash "$0" stage2
    say "pivot_root failed"; exit 1
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /lab
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs -o mode=755 run /run
umount -l /.host
mount -t hostfs -o "$RMK_RUN" lab /lab || { say "hostfs /lab failed"; exit 1; }
. "/lab/$RMK_NAME/env"
hostname "$RMK_NAME"
printf '%b' "$HOSTS" > /etc/hosts
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n' > /etc/nsswitch.conf
: > /etc/resolv.conf
grep -q '^_rpc:' /etc/passwd || echo '_rpc:x:107:65534::/run/rpcbind:/usr/sbin/nologin' >> /etc/passwd
grep -q '^statd:' /etc/passwd || echo 'statd:x:108:65534::/var/lib/nfs:/usr/sbin/nologin' >> /etc/passwd
printf '[General]\nDomain = runmaker-nfs\n' > /etc/idmapd.conf
ip link set lo up
ip addr add "$IP/24" dev eth0 && ip link set eth0 up
mkdir -p /run/rpcbind /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/v4recovery
modprobe lockd
rpcbind -w || say "rpcbind failed"
rpc.statd || say "rpc.statd failed"
if [ "$ROLE" = server ]; then
    modprobe nfsd
    mount -t nfsd nfsd /proc/fs/nfsd
    echo "$LEASE" > /proc/fs/nfsd/nfsv4leasetime
    echo "$LEASE" > /proc/fs/nfsd/nfsv4gracetime
    echo "$LEASE" > /proc/sys/fs/nfs/nlm_grace_period
    mkdir -p /export
    mount -t tmpfs -o size=256m,mode=1777 export /export
    : > /var/lib/nfs/etab; : > /var/lib/nfs/rmtab; : > /etc/exports
    # fsid=0: /export is the NFSv4 root as well (an overlayfs / could not be one).
    exportfs -o rw,sync,no_root_squash,no_subtree_check,fsid=0 '*:/export' > /dev/console 2>&1 \
        || say "exportfs failed"
    rpc.mountd || say "rpc.mountd failed"
    rpc.nfsd 8 || say "rpc.nfsd failed"
fi
say "$RMK_NAME up after $(cut -d' ' -f1 /proc/uptime) s"
exec "$PYTHON" /lab/agent.py "/lab/$RMK_NAME"
"""

# The agent: PID 1 after the init script.  Runs DIR/q/ID.sh as
# `bash ID.sh > ID.out`, in a session of its own, and renames the exit status
# into ID.rc last, so a host that sees ID.rc sees all of the output.  It
# never waits for a script: as PID 1 it reaps every child, orphans included.
_AGENT = r'''import os, sys, time
qdir = os.path.join(sys.argv[1], "q")
wrap = 'bash "$0.run" > "$0.out" 2>&1 < /dev/null; echo $? > "$0.rct"; mv "$0.rct" "$0.rc"'
open(os.path.join(sys.argv[1], "ready"), "w").close()
while True:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    try:  # a listing, not exists(): hostfs keeps negative dentries
        names = sorted(n for n in os.listdir(qdir) if n.endswith(".sh"))
    except OSError:
        names = []
    for name in names:
        base = os.path.join(qdir, name[:-3])
        try:
            os.rename(base + ".sh", base + ".run")
            os.posix_spawn("/bin/bash", ["bash", "-c", wrap, base], dict(os.environ), setsid=True)
        except OSError as exc:
            print("agent:", name, exc, file=sys.stderr)
    time.sleep(0.02)
'''


class GuestError(Exception):
    """A guest died, failed to boot, or a command in it did not finish in time."""


def _run_quiet(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def unavailable() -> str | None:
    """Why guests cannot boot on this machine (one sentence), or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return "UML guests need Linux on x86_64"
    if os.geteuid() != 0:
        return "booting UML guests as NFS server and clients needs root"
    if not os.path.ismount("/dev/shm"):
        return "UML guests need /dev/shm (a tmpfs) for their memory"
    if not (CACHE / _STAMP).exists():
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if shutil.which(tool) is None:
                return f"no {tool}: the Debian packages the guests need cannot be fetched"
    if shutil.which("ip") is None:
        return "no ip (iproute2): the guests use the host's"
    return None


def prepare() -> str | None:
    """Fetch and unpack the packages into CACHE (once); return why not, or None.

    ``CACHE/host``: the UML kernel and ``uml_switch``.  ``CACHE/guest``: the
    layer laid over the host's / in every guest; its ``/bin``, ``/sbin`` and
    ``/lib`` move under ``usr/`` because on the host those are symlinks into
    ``/usr`` and a real directory of that name in a higher layer would hide
    them.  A stamp file marks a finished cache.
    """
    why = unavailable()
    if why or (CACHE / _STAMP).exists():
        return why
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = _HOST_PACKAGES + _GUEST_PACKAGES
    if _run_quiet(["apt-cache", "show", *wanted]).returncode != 0:
        _run_quiet(["apt-get", "update", "-qq"], timeout=300)
    # The shared libraries this machine lacks: what apt would install (a
    # simulation changes nothing).
    sim = _run_quiet(["apt-get", "install", "-s", "--no-install-recommends", *wanted])
    if sim.returncode != 0:
        return f"the Debian packages the guests need are not available: {sim.stderr.strip()[:200]}"
    extra = [line.split()[1] for line in sim.stdout.splitlines() if line.startswith("Inst ")]
    packages = sorted(set(wanted) | (set(extra) - _UNNEEDED))

    def deb(name: str) -> Path | None:
        return next(iter(sorted(debs.glob(f"{name}_*.deb"))), None)

    missing = [p for p in packages if deb(p) is None]
    if missing:
        got = _run_quiet(["apt-get", "download", "-o", "APT::Sandbox::User=root", *missing],
                         cwd=debs, timeout=600)
        if any(deb(p) is None for p in missing):
            return (f"Debian packages not reachable (apt-get download {' '.join(missing)}: "
                    f"{got.stderr.strip()[-200:]})")
    for part in ("host", "guest"):
        shutil.rmtree(CACHE / part, ignore_errors=True)
        (CACHE / part).mkdir()
    for name in packages:
        part = "guest" if name in _GUEST_PACKAGES else "host"
        subprocess.run(["dpkg-deb", "-x", str(deb(name)), str(CACHE / part)], check=True)
    guest = CACHE / "guest"
    for d in ("bin", "sbin", "lib", "lib64"):
        if (guest / d).is_dir() and not (guest / d).is_symlink():
            shutil.copytree(guest / d, guest / "usr" / d, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(guest / d)
    # The UML kernel's modules (nfs, nfsd, lockd, overlay), with their modules.dep.
    shutil.copytree(CACHE / "host/usr/lib/uml/modules", guest / "usr/lib/modules", symlinks=True,
                    dirs_exist_ok=True)
    (CACHE / _STAMP).touch()
    return None


class Result:
    """What a command printed (stdout and stderr together) and its exit status."""

    def __init__(self, rc: int, out: str) -> None:
        self.rc, self.out = rc, out

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, out={self.out[-2000:]!r})"


# The guests' commands import the checkout's modules (compiled by the host
# first, as a guest cannot write beside them): running ``runmaker.py`` as a
# script would compile all of it at every start, seconds in a guest.
_COMMANDS = ("runmaker", "runset", "runwait")
_PRELUDE = """set -u
export PATH=/lab/bin:/usr/sbin:/usr/bin:/sbin:/bin
export H=$(hostname)
now() { date +%s.%N; }
cd /
"""


class Command:
    """A script running in a guest."""

    def __init__(self, guest: Guest, script: str, name: str) -> None:
        self.guest = guest
        self.base = guest.dir / "q" / name
        tmp = self.base.with_suffix(".tmp")
        tmp.write_text(_PRELUDE + script + "\n")
        tmp.rename(self.base.with_suffix(".sh"))

    def done(self) -> bool:
        return self.base.with_suffix(".rc").exists()

    def output(self) -> str:
        try:
            return self.base.with_suffix(".out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float = 120) -> Result:
        deadline = time.monotonic() + timeout
        while not self.done():
            if not self.guest.alive():
                raise GuestError(f"{self.guest.name} died while running {self.base.name}; "
                                 f"see {self.guest.console}")
            if time.monotonic() > deadline:
                raise GuestError(f"{self.guest.name}: {self.base.name} still running after {timeout} s:\n"
                                 + self.output()[-2000:])
            time.sleep(0.02)
        text = self.base.with_suffix(".rc").read_text().strip()
        return Result(int(text) if text.lstrip("-").isdigit() else -1, self.output())


class Guest:
    """One UML kernel: the NFS server or a client."""

    _seq = 0

    def __init__(self, lab: Lab, name: str, ip: str, role: str, mac: str) -> None:
        self.lab, self.name, self.ip, self.role, self.mac = lab, name, ip, role, mac
        self.dir = lab.run / name
        self.console = lab.run / f"{name}.console"
        self.proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def boot(self) -> None:
        (self.dir / "q").mkdir(parents=True, exist_ok=True)
        for f in (self.dir / "q").iterdir():
            f.unlink()
        (self.dir / "ready").unlink(missing_ok=True)
        env = {"ROLE": self.role, "IP": self.ip, "HOSTS": self.lab.hosts, "LEASE": str(LEASE),
               "PYTHON": PYTHON}
        (self.dir / "env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        argv = [str(CACHE / "host/usr/bin/linux.uml"), f"mem={_MEMORY}", "root=/dev/root",
                "rootfstype=hostfs", "rootflags=/", "ro", f"init={self.lab.run / 'init.sh'}",
                f"eth0=daemon,{self.mac},unix,{self.lab.run / 'switch.ctl'}",
                "con=null", "con0=null,fd:1", "ssl=null", "panic=-1",
                f"uml_dir={self.lab.run / 'uml'}", f"umid={self.name}",
                f"RMK_CACHE={CACHE}", f"RMK_RUN={self.lab.run}", f"RMK_NAME={self.name}"]
        with open(self.console, "ab") as console:
            console.write(f"\n==== boot at {time.strftime('%T')} ====\n".encode())
            console.flush()
            # TMPDIR: UML maps its memory from a file there, which must be a tmpfs.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR="/dev/shm"),
                                         start_new_session=True)
        self.lab.remember(self.proc.pid)
        self.booted = time.monotonic()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self.dir / "ready").exists():
            if not self.alive():
                raise GuestError(f"{self.name} ended while booting:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name} not up after {timeout} s:\n{self.console_tail()}")
            time.sleep(0.05)

    def console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self, script: str) -> Command:
        """Start ``script`` (bash) in this guest; ``runmaker``, ``runset``,
        ``runwait`` run the checkout's commands, ``$H`` is the host name."""
        Guest._seq += 1
        return Command(self, script, f"{Guest._seq:05d}")

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> Result:
        """Run ``script`` to its end; with ``check`` a non-zero exit raises."""
        res = self.start(script).wait(timeout)
        if check and res.rc != 0:
            raise GuestError(f"{self.name}: exit {res.rc}: {script[:200]}\n{res.out[-2000:]}")
        return res

    def kill(self) -> None:
        """A power cut: SIGKILL to every process of the guest at once."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def cut(self) -> float:
        """Take this guest off the network (its eth0 down); return the time."""
        return float(self.sh("ip link set eth0 down; now").out.split()[-1])

    def heal(self) -> float:
        return float(self.sh("ip link set eth0 up; now").out.split()[-1])

    def mount(self) -> Command:
        """Mount the export at /n4 (NFSv4.2) and /n3 (NFSv3); wait() for it."""
        return self.start("set -e; mkdir -p /n4 /n3\n"
                          "mountpoint -q /n4 || mount -t nfs -o vers=4.2 srv:/ /n4\n"
                          "mountpoint -q /n3 || mount -t nfs -o vers=3 srv:/export /n3\n")


class Lab:
    """The server ``srv`` and clients ``vm1..vmN`` under the run directory ``run``.

    ``start()`` boots them all, mounts the export on the clients and waits
    out the server's grace period; ``stop()`` kills everything it started.
    """

    def __init__(self, run: Path, clients: int = 3) -> None:
        self.run = Path(run)
        self.srv = Guest(self, "srv", f"{NET}.1", "server", "52:54:00:d6:00:01")
        self.clients = [Guest(self, f"vm{i}", f"{NET}.{10 + i}", "client", f"52:54:00:d6:00:{0x10 + i:02x}")
                        for i in range(1, clients + 1)]
        self.guests = [self.srv, *self.clients]
        self.hosts = "127.0.0.1 localhost\\n" + "".join(f"{g.ip} {g.name}\\n" for g in self.guests)
        self.files = self.run / "files"  # /lab/files in every guest
        self.switch: subprocess.Popen[bytes] | None = None
        self.guardian: subprocess.Popen[bytes] | None = None
        self._pids = CACHE / "running" / str(os.getpid())

    def remember(self, pid: int) -> None:
        """Note a process group we started, so a later run can end it if this one was killed."""
        self._pids.parent.mkdir(exist_ok=True)
        with open(self._pids, "a") as f:
            f.write(f"{pid} {self.run}\n")

    def _end_leftovers(self) -> None:
        """End the guests and switch of earlier runs whose process died before its teardown."""
        for record in (CACHE / "running").glob("*"):
            if Path(f"/proc/{record.name}").exists():
                continue  # its owner lives (a benchmark beside the tests, say)
            for entry in record.read_text().split("\n"):
                pid, _, run = entry.partition(" ")
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except (OSError, ValueError):
                    continue
                if run and run.encode() in cmdline:
                    try:
                        os.killpg(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            record.unlink(missing_ok=True)

    def start(self) -> None:
        why = prepare()
        if why:
            raise GuestError(why)
        self._end_leftovers()
        self.run.mkdir(parents=True, exist_ok=True)
        self._pids.parent.mkdir(exist_ok=True)
        self._pids.write_text("")
        self.guardian = subprocess.Popen([PYTHON, "-c", _GUARDIAN, str(self._pids)], stdin=subprocess.PIPE,
                                         start_new_session=True)
        self.files.mkdir(exist_ok=True)
        (self.run / "init.sh").write_text(_INIT)
        (self.run / "init.sh").chmod(0o755)
        (self.run / "agent.py").write_text(_AGENT)
        (self.run / "bin").mkdir(exist_ok=True)
        for name in _COMMANDS:
            py_compile.compile(str(ROOT / f"{name}.py"), doraise=True)
            script = self.run / "bin" / name
            script.write_text(f"#!{PYTHON}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                              f"from {name} import main\nmain()\n")
            script.chmod(0o755)
        ctl = self.run / "switch.ctl"
        self.switch = subprocess.Popen([str(CACHE / "host/usr/bin/uml_switch"), "-unix", str(ctl)],
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        self.remember(self.switch.pid)
        deadline = time.monotonic() + 10
        while not ctl.exists():
            if time.monotonic() > deadline:
                raise GuestError("uml_switch did not start")
            time.sleep(0.02)
        for g in self.guests:
            g.boot()
        for g in self.guests:
            g.wait_ready()
        for mounting in [g.mount() for g in self.clients]:
            if mounting.wait().rc != 0:
                raise GuestError(f"{mounting.guest.name}: mount failed:\n{mounting.output()}")
        self.wait_for_grace(self.clients[0])

    def wait_for_grace(self, client: Guest) -> None:
        """Block until the server grants locks (its grace period after a start)."""
        client.sh(f"""{shlex.quote(PYTHON)} - <<'EOF'
import fcntl, os
for d in ("/n4", "/n3"):
    fd = os.open(d + "/.grace", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.close(fd)
EOF""", timeout=120)

    def ensure_up(self, guest: Guest) -> None:
        """Boot ``guest`` again (and mount) if it was killed."""
        if guest.alive():
            return
        guest.boot()
        guest.wait_ready()
        if guest.mount().wait().rc != 0:
            raise GuestError(f"{guest.name}: mount failed after a reboot")

    def stop(self) -> None:
        """Kill every guest and the switch; leave nothing running."""
        for g in self.guests:
            g.kill()
        if self.switch is not None and self.switch.poll() is None:
            self.switch.kill()
            self.switch.wait()
        if self.switch is not None and self.switch.stdin:
            self.switch.stdin.close()
        shutil.rmtree(self.run / "uml", ignore_errors=True)
        if self.guardian is not None and self.guardian.stdin is not None:
            self._pids.write_text("")  # all ended already
            self.guardian.stdin.close()
            self.guardian.wait()
        self._pids.unlink(missing_ok=True)

    def put(self, name: str, data: str | bytes) -> str:
        """A file the guests read as ``/lab/files/NAME``; returns that path."""
        path = self.files / name
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
        return f"/lab/files/{name}"

    def get(self, guest: Guest, path: str) -> bytes:
        """The bytes of ``path`` as ``guest`` reads it (on NFS, say)."""
        Guest._seq += 1
        name = f"get{Guest._seq}"
        guest.sh(f"cp {shlex.quote(path)} /lab/files/{name}")
        data = (self.files / name).read_bytes()
        (self.files / name).unlink()
        return data
