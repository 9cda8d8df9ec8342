"""TCP mode against file mode (issue 6).

One figure, a ratio of medians measured in this run: 2,000 trivial jobs
(``true N``) through one ``runmaker --serve`` on 127.0.0.1 and two
``runmaker --connect -j1`` clients, against one file-mode worker of ``-j2``
on the same file (target at most 2x).  Both sides run two jobs at once; the
TCP side pays a round trip to the server per job, and two more processes.
Each run is timed from the start of the first process to the exit of the
last one, consoles to /dev/null (``-q``).

Run from the repository root:  python benchmarks/tcp.py [--quick]
It prints a table and exits 0 whatever the figures.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from _benchlib import (
    BenchmarkFailed,
    Row,
    failed_row,
    interleaved_medians,
    machine_note,
    parse_args,
    print_table,
    ratio_row,
    run_process,
    runmaker_argv,
    scratch_dir,
    states_of,
    write_job_file,
)

__all__ = ["measure_tcp", "main"]

_TOKEN = "benchmark-token-0123456789abcdef"


def _fresh_jobs(path: Path, jobs: int) -> None:
    write_job_file(path, [f"true {i}" for i in range(jobs)])


def _check_done(path: Path, what: str) -> None:
    states = states_of(path)
    if set(states) != {"d"}:
        raise BenchmarkFailed(f"{what} left states {sorted(set(states))}")


def _time_file_mode(work: Path, jobs: int) -> float:
    runs = work / "file.txt"
    _fresh_jobs(runs, jobs)
    measured = run_process(runmaker_argv("-q", "-j2", runs)).check("file-mode worker -j2")
    _check_done(runs, "file mode")
    return measured.seconds


def _time_tcp_mode(work: Path, jobs: int) -> float:
    runs = work / "tcp.txt"
    _fresh_jobs(runs, jobs)
    token = work / "token"
    token.write_text(_TOKEN + "\n")
    server_err = work / "server.err"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        with open(server_err, "wb") as err:
            procs.append(subprocess.Popen(
                runmaker_argv("--serve", "--bind", "127.0.0.1", "--port", "0", "--token", token, runs),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            ))
        port = _wait_for_port(server_err, procs[0])
        for _ in range(2):
            procs.append(subprocess.Popen(
                runmaker_argv("--connect", f"127.0.0.1:{port}", "--token", token, "-j1", "-q"),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ))
        for proc in procs:
            _, stderr = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise BenchmarkFailed(f"{proc.args[2:4]} exited {proc.returncode}: "
                                      f"{(stderr or b'').decode(errors='replace')[-300:]}")
        seconds = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _check_done(runs, "TCP mode")
    return seconds


def _wait_for_port(server_err: Path, server: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(rb"on port (\d+)", server_err.read_bytes())
        if found:
            return int(found.group(1))
        if server.poll() is not None:
            raise BenchmarkFailed(f"the server exited {server.returncode}: {server_err.read_text()[-300:]}")
        time.sleep(0.01)
    raise BenchmarkFailed("the server announced no port within 30 s")


def measure_tcp(jobs: int, reps: int) -> Row:
    measure = f"{jobs} jobs: --serve + 2 x --connect -j1"
    try:
        with scratch_dir("tcp") as tmp:
            work = Path(tmp)
            times = interleaved_medians(reps, {
                "file": lambda: _time_file_mode(work, jobs),
                "tcp": lambda: _time_tcp_mode(work, jobs),
            })
    except BenchmarkFailed as exc:
        return failed_row(measure, "<= 2x", exc)
    return ratio_row(measure, times["tcp"], times["file"], "file mode -j2", 2.0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.split("\n\n")[0], reps=(1, 5), argv=argv)
    jobs = 200 if args.quick else 2000
    row = measure_tcp(jobs, args.reps)
    print_table("TCP mode against file mode (medians of %d runs)" % args.reps, [row],
                notes=[machine_note()])


if __name__ == "__main__":
    main()
