"""runwait, run as real processes: when it returns, what it names, exit codes,
runmaker4's progress line, the live bar on a pseudo-terminal, and the core
counting behind them."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from conftest import ROOT, run, shebang_env, states, wait_for, write_jobs
from runmaker import JobCounts, JobFile, progress_cells, progress_line


def runwait(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run("runwait", *args, cwd=tmp_path)


def set_state(tmp_path: Path, state: str, *jobs: str) -> None:
    result = run("runset", "--set", state, "runs.txt", *jobs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def lines_in(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------
# When it returns and what it says
# --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_finished_file_returns_at_once_and_names_unsuccessful_jobs(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("d true\n! false\n# note\ne exit 3\n! false\n- skipped\nr lost\nx odd\n")
    result = runwait(tmp_path, "runs.txt")
    assert result.returncode == 0  # without -e failures do not change the exit status
    assert result.stdout.decode() == (
        "runs.txt: failed (!): 2 5\n"
        "runs.txt: error (e): 4\n"
        "runs.txt: lost (r): 7\n"
        "runs.txt: unknown state: 8\n"
    )
    assert result.stderr == b""
    assert runwait(tmp_path, "-e", "runs.txt").returncode == 1
    assert runwait(tmp_path, "--use-exit-status", "runs.txt").returncode == 1


@pytest.mark.timeout(30)
def test_neighbouring_failed_jobs_are_named_as_ranges(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("! a\n! b\n# c\n! d\nd e\n! f\n")
    result = runwait(tmp_path, "runs.txt")
    assert result.stdout == b"runs.txt: failed (!): 1-4 6\n"
    assert states(path) == "!!!d!"


@pytest.mark.timeout(30)
def test_use_exit_status_is_0_when_every_job_is_done_or_retired(tmp_path):
    write_jobs(tmp_path / "runs.txt", ["true", "true"], state="d")
    with open(tmp_path / "runs.txt", "a") as f:
        f.write("- retired\n")
    result = runwait(tmp_path, "-e", "runs.txt")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.timeout(30)
def test_waits_for_pending_jobs_until_a_worker_runs_them(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", ["true", "false", "true"])
    waiter = procs.start("runwait", "-e", "--interval", "0.05", "runs.txt", cwd=tmp_path)
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert worker.wait(timeout=20) == 1
    stdout, stderr = waiter.communicate(timeout=20)
    assert (waiter.returncode, stdout, stderr) == (1, b"runs.txt: failed (!): 2\n", b"")
    assert states(path) == "d!d"


@pytest.mark.timeout(30)
def test_waits_while_a_job_runs_live(tmp_path, procs):
    path = tmp_path / "runs.txt"
    path.write_text(". touch started; while [ ! -e marker ]; do sleep 0.05; done\n")
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the job to start")
    early = runwait(tmp_path, "--timeout", "0.3", "--interval", "0.05", "runs.txt")
    assert early.returncode == 124
    assert early.stderr == b"runwait: runs.txt: timed out with 0 jobs pending, 1 running\n"
    waiter = procs.start("runwait", "-e", "--interval", "0.05", "runs.txt", cwd=tmp_path)
    (tmp_path / "marker").touch()
    assert waiter.wait(timeout=20) == 0
    assert worker.wait(timeout=20) == 0
    assert states(path) == "d"


@pytest.mark.timeout(30)
def test_timeout_exits_124_and_still_names_failures(tmp_path):
    (tmp_path / "runs.txt").write_text(". true\n! false\n+ true\n")
    result = runwait(tmp_path, "--timeout", "0.2", "--interval", "0.05", "runs.txt")
    assert result.returncode == 124
    assert result.stdout == b"runs.txt: failed (!): 2\n"
    assert result.stderr == b"runwait: runs.txt: timed out with 2 jobs pending, 0 running\n"


@pytest.mark.timeout(30)
def test_jobs_appended_and_states_reset_while_waiting_are_waited_for(tmp_path, procs):
    path = write_jobs(tmp_path / "runs.txt", ["a", "z"])
    log = tmp_path / "progress.txt"
    steps = [
        lambda: run("runset", "--add", "b", "runs.txt", cwd=tmp_path),  # line 3
        lambda: set_state(tmp_path, "d", "1"),
        lambda: set_state(tmp_path, "!", "2"),
        lambda: set_state(tmp_path, ".", "2"),  # rerun it: runwait waits on
        lambda: set_state(tmp_path, "-", "3"),
        lambda: set_state(tmp_path, "-", "2"),
    ]
    with open(log, "wb") as stderr:
        waiter = procs.start("runwait", "-p", "--interval", "0.05", "runs.txt", cwd=tmp_path, stderr=stderr)
    for seen, step in enumerate(steps, 1):
        wait_for(lambda: len(lines_in(log)) == seen, what=f"progress line {seen}")
        step()
    assert waiter.wait(timeout=20) == 0
    assert lines_in(log) == [
        "progress:   0 of   2 jobs processed, 0 errors [                ]",
        "progress:   0 of   3 jobs processed, 0 errors [                ]",
        "progress:   1 of   3 jobs processed, 0 errors [=====           ]",
        "progress:   2 of   3 jobs processed, 1 errors [=====!!!!!      ]",
        "progress:   1 of   3 jobs processed, 0 errors [=====           ]",
        "progress:   1 of   2 jobs processed, 0 errors [========        ]",
        "progress:   1 of   1 jobs processed, 0 errors [================]",
    ]
    assert states(path) == "d--"


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, cells",
    [
        (JobCounts(done=2, running=1, pending=1), "========>>>>    "),  # runmaker4's example
        (JobCounts(), "                "),
        (JobCounts(pending=5), "                "),
        (JobCounts(done=1, pending=2), "=====           "),  # 16 * 1 // 3 = 5
        (JobCounts(done=1, error=1, failed=1, running=1, pending=12), "=e!>            "),
        (JobCounts(done=1, pending=99), "                "),  # too small for a cell
        (JobCounts(done=3, lost=1, unknown=1, failed=1, retired=7), "========eeeee!!!"),
        (JobCounts(done=99, failed=1), "===============!"),
    ],
)
def test_progress_cells_are_proportional_and_add_up(counts, cells):
    assert progress_cells(counts) == cells
    assert len(progress_cells(counts, 40)) == 40


def test_progress_line_is_runmaker4s():
    assert progress_line(JobCounts(done=2, running=1, pending=1)) == (
        "progress:   2 of   4 jobs processed, 0 errors [========>>>>    ]"
    )
    assert progress_line(JobCounts(done=1000, failed=2, lost=1)) == (
        "progress: 1003 of 1003 jobs processed, 3 errors [===============!]"
    )


@pytest.mark.timeout(30)
def test_progress_line_counts_a_live_running_job(tmp_path, procs):
    (tmp_path / "runs.txt").write_text(
        "d true\n. touch started; while [ ! -e marker ]; do sleep 0.05; done\n. true\n! false\n"
    )
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the job to start")
    result = runwait(tmp_path, "-p", "--timeout", "0.2", "--interval", "0.05", "runs.txt")
    assert result.returncode == 124
    assert result.stderr.decode().splitlines()[0] == (
        "progress:   2 of   4 jobs processed, 1 errors [====!!!!>>>>    ]"
    )
    (tmp_path / "marker").touch()
    assert worker.wait(timeout=20) == 0  # the failed job is not its own


class Terminal:
    """A pseudo-terminal whose master side the test reads as the user sees it."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.seen = b""

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError as exc:  # EIO: every slave side is closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            self.seen += chunk
        return self.seen

    def close(self) -> None:
        os.close(self.master)


@pytest.mark.timeout(30)
def test_live_bar_on_a_terminal_redraws_one_line_with_counts_and_eta(tmp_path, procs):
    write_jobs(tmp_path / "runs.txt", ["a", "b", "c"])
    term = Terminal()
    try:
        waiter = procs.start("runwait", "--progress", "--interval", "0.05", "runs.txt",
                             cwd=tmp_path, stderr=term.slave)
        os.close(term.slave)
        wait_for(lambda: b"0/3" in term.read(), what="the first bar")
        assert b"ETA --:--" in term.read()  # nothing finished yet: no rate to go by
        set_state(tmp_path, "d", "1")
        wait_for(lambda: b"1/3" in term.read(), what="one job done")
        set_state(tmp_path, "!", "2")
        set_state(tmp_path, "d", "3")
        assert waiter.wait(timeout=20) == 0
        seen = term.read().decode()
    finally:
        term.close()
    assert seen.endswith("\x1b[K\r\n")  # the final newline; the pty makes it \r\n
    frames = seen[:-2].split("\r")
    assert frames[0] == ""
    assert "\n" not in seen[:-2]  # redrawn in place, on one line
    assert frames[1] == "[                ] 0/3 | 0 done, 0 running, 3 pending | 0:00 elapsed, ETA --:--\x1b[K"
    done_one = next(f for f in frames if "1/3" in f)
    assert done_one.startswith("[=====           ] 1/3 | 1 done, 0 running, 2 pending | 0:0")
    assert "ETA --" not in done_one  # a job finished while watched: the rate gives an ETA
    # The last frame says what happened and how long it took, not an ETA.
    assert re.fullmatch(r"\[==========!!!!!!\] 3/3 \| 2 done, 1 failed \| 0:\d\d elapsed\x1b\[K", frames[-1])


def _resize(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


# What the bar of 10 done, 1 failed and 5 pending jobs is at each width, and
# once the pending ones are done.
# (While runset sets them, a look may see some done, and an ETA.)
_AT_40 = r"\[[=! ]{8}\] 1\d/16 \| 1 failed \| ETA (--:--|0:\d\d)"
_AT_80 = r"\[[=! ]{16}\] 1\d/16 \| 1\d done, 0 running, \d pending, 1 failed \| ETA (--:--|0:\d\d)"
_FINAL_AT_40 = r"\[=======!\] 16/16 \| 0:\d\d elapsed"
_FINAL_AT_80 = r"\[===============!\] 16/16 \| 15 done, 1 failed \| 0:\d\d elapsed"


@pytest.mark.timeout(30)
def test_live_bar_fits_40_and_80_columns_follows_a_resize_and_ends_on_one_clean_line(tmp_path, procs):
    (tmp_path / "runs.txt").write_text("d done\n" * 10 + "! failed\n" + ". pending\n" * 5)
    term = Terminal()
    try:
        _resize(term.master, 40)
        waiter = procs.start("runwait", "--progress", "--interval", "0.05", "runs.txt",
                             cwd=tmp_path, stderr=term.slave)
        os.close(term.slave)
        wait_for(lambda: b"11/16" in term.read(), what="the first bar")
        _resize(term.master, 80)
        wait_for(lambda: b"10 done" in term.read(), what="the bar at 80 columns")
        _resize(term.master, 40)
        mark = len(term.read())
        wait_for(lambda: b"11/16 | 1 failed" in term.read()[mark:], what="the bar at 40 columns again")
        set_state(tmp_path, "d", "12-16")
        assert waiter.wait(timeout=20) == 0
        seen = term.read().decode()
    finally:
        term.close()
    assert seen.endswith("\x1b[K\r\n")  # one final newline (the pty makes it \r\n)
    assert "\n" not in seen[:-2]  # every frame drawn over the last one, on one line
    frames = [frame.removesuffix("\x1b[K") for frame in seen[:-2].split("\r")[1:]]
    assert frames[0] == "[=====   ] 11/16 | 1 failed | ETA --:--"
    assert "[==========!     ] 11/16 | 10 done, 0 running, 5 pending, 1 failed | ETA --:--" in frames
    kinds = []
    for frame in frames:  # each frame whole: one of the forms, never a cut one
        kind = next(k for k, form in (("40", _AT_40), ("80", _AT_80), ("end40", _FINAL_AT_40),
                                      ("end80", _FINAL_AT_80)) if re.fullmatch(form, frame))
        assert len(frame) <= (39 if "40" in kind else 79)
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    assert kinds[:3] == ["40", "80", "40"]
    assert kinds[-1] == "end40"  # the clean final line, at the width of the moment


@pytest.mark.parametrize("finished", [False, True])
def test_the_bar_drops_whole_parts_to_fit_any_width(finished):
    import runwait

    counts = JobCounts(done=1234, running=0 if finished else 56, pending=0 if finished else 789,
                       failed=3, error=2, lost=1, elapsed=3725.0, eta=None if finished else 61.0)
    full = runwait._status_line(counts, 1000)
    words = set(re.split(r"[ ,|]+", full))
    assert full == (
        "[===============!] 1240/1240 | 1234 done, 3 failed, 2 error, 1 lost | 1:02:05 elapsed"
        if finished else
        "[=========       ] 1240/2085 | 1234 done, 56 running, 789 pending, 3 failed, 2 error, 1 lost | "
        "1:02:05 elapsed, ETA 1:01"
    )
    words |= set(re.split(r"[ ,|]+", f"[{progress_cells(counts, 8)}]"))  # the half bar
    for width in range(len(full) + 1):
        line = runwait._status_line(counts, width)
        assert len(line) <= width
        assert set(re.split(r"[ ,|]+", line)) <= words | {""}, line  # whole words only
        if width >= 27:
            assert ("1:02:05 elapsed" if finished else "ETA 1:01") in line  # the time goes last


# --------------------------------------------------------------------------
# Errors and the core behind the polling
# --------------------------------------------------------------------------


HINT = " (see 'runwait.py --help')"  # usage errors point at the help


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.txt"], "Error: missing.txt: no such file"),
        (["."], "Error: Invalid value for 'FILE': File '.' is a directory." + HINT),
        (["--interval", "0", "runs.txt"],
         "Error: Invalid value for '--interval': 0.0 is not in the range x>0." + HINT),
        (["--timeout", "-1", "runs.txt"],
         "Error: Invalid value for '--timeout': -1.0 is not in the range x>0." + HINT),
    ],
)
def test_input_errors_exit_2_with_one_error_line(tmp_path, args, message):
    write_jobs(tmp_path / "runs.txt", ["true"])
    result = runwait(tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [message]  # one line, nothing else


@pytest.mark.timeout(30)
def test_whole_reads_index_appended_lines_once(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". a\n. b\n. unfinished")
    jobfile = JobFile(str(path), writable=False)
    try:
        data, _, _ = jobfile.read(whole=True)
        assert jobfile.states_of(data) == b"..."
        with open(path, "ab") as f:
            f.write(b" line\nd c\n")
        data, _, first_new = jobfile.read(whole=True)
        assert first_new == 2  # the unfinished last line, indexed again
        assert list(jobfile.lines) == [1, 2, 3, 4]
        assert jobfile.states_of(data) == b"...d"
        assert jobfile.command(2) == b"unfinished line"
        data, _, _ = jobfile.read(whole=True)
        assert list(jobfile.lines) == [1, 2, 3, 4]
    finally:
        jobfile.close()


@pytest.mark.timeout(30)
def test_runs_from_a_checkout_with_help_and_example(tmp_path):
    result = subprocess.run([str(ROOT / "runwait.py"), "--help"], capture_output=True, timeout=30,
                            env=shebang_env())
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "runwait -e --progress runs.txt && mail" in text
    for option in ("--progress", "--use-exit-status", "--timeout", "--interval"):
        assert option in text
