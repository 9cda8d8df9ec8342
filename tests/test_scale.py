"""What keeps a worker's and runwait's reading proportional to what changes
(issue 13): `#runmaker set` notices, rescans below the finished prefix only,
the streamed index and runset's index-free summary.  Real files, real
processes; the speed figures themselves are benchmarks/scale.py's."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import command, gated_job, hold_shared_lock, holds_for, run, states, wait_for, write_file
from runmaker import APPEND_BYTE, JobFile, Scheduler, _plain_and_live, _read_whole, check_job_file


def finished_file(path: Path, count: int, *, middle: str, tail: list[str] = ()) -> int:
    """``count`` finished lines, the middle one ``middle``; returns its line number."""
    lines = [f"d true {i}" for i in range(count)]
    at = count // 2
    lines[at] = middle
    path.write_text("\n".join(lines + list(tail)) + "\n")
    return at + 1


@pytest.mark.timeout(60)
def test_set_inside_the_finished_prefix_reaches_an_idle_worker_by_its_notice(tmp_path, procs):
    """The worker never rereads the finished prefix: only runset's appended
    notice can tell it that a line there was set back to pending."""
    path = tmp_path / "runs.txt"
    line = finished_file(path, 2000, middle="d touch again")
    worker = procs.start("runmaker", "-q", "--follow", "runs.txt", cwd=tmp_path)
    (tmp_path / "first").write_text("")
    result = run("runset", "--add", "touch first.ran", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: (tmp_path / "first.ran").exists(), what="the appended job")
    result = run("runset", "--set", ".", "runs.txt", str(line), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert path.read_bytes().endswith(b"#runmaker set %d\n" % line)
    wait_for(lambda: (tmp_path / "again").exists(), timeout=5, what="the job set back to '.'")
    wait_for(lambda: states(path)[line - 1] == "d", what="its d")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 130  # drained: SPEC's exit status after a stop signal
    assert states(path) == "d" * 2001


@pytest.mark.timeout(30)
def test_jobfile_reads_set_notices_and_the_scheduler_follows_them(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("d a\nd b\n# c\nd c\n#runmaker set 1\n")
    jobfile = JobFile(str(path))
    scheduler = Scheduler(jobfile)
    try:
        # Notices already in the file when it is first read change nothing.
        assert jobfile.take_set_notices() == []
        assert scheduler.claim_jobs(1, idle=True) == []
        # Changed in place without a notice, inside the finished prefix: not seen.
        data = bytearray(path.read_bytes())
        data[data.index(b"d b")] = ord(".")
        data[data.index(b"d c")] = ord("+")
        path.write_bytes(bytes(data))
        holds_for(lambda: scheduler.claim_jobs(1, idle=True) == [], 1.2,
                  "nothing to claim past rescans")  # more than one rescan's gap
        with open(path, "ab") as f:
            f.write(b"#runmaker set 2-4 9\n")
        claims: list = []
        wait_for(lambda: claims.extend(scheduler.claim_jobs(2 - len(claims), idle=True))
                 or len(claims) == 2, timeout=5, what="the jobs the notice names")
        assert [claim.line for claim in claims] == [4, 2]  # the '+' first
        for claim in claims:
            scheduler.finish_job(claim, "d")
        scheduler.commit()
    finally:
        scheduler.close()
        jobfile.close()
    assert states(path) == "ddd"


@pytest.mark.timeout(30)
def test_a_set_notice_without_lines_or_with_bad_ones_rereads_everything(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("d a\nd b\n")
    warnings: list[str] = []
    jobfile = JobFile(str(path), warn=warnings.append)
    try:
        jobfile.read_new_states()
        with open(path, "ab") as f:
            f.write(b"#runmaker set\n#runmaker set 1 x\n#runmaker set 2-1 4\n")
        jobfile.read_new_states()
        assert jobfile.take_set_notices() == [(1, 0), (1, 0), (2, 1), (4, 4)]
        assert warnings == [f"Warning: {path}:4: set takes line numbers and ranges A-B; ignored"]
    finally:
        jobfile.close()


@pytest.mark.timeout(60)
def test_runwait_sees_a_finished_job_set_back_to_pending(tmp_path, procs):
    """runwait rereads only unfinished stretches: a `d` set back to `.` must
    reach it through runset's notice, and keep it waiting."""
    path = tmp_path / "runs.txt"
    line = finished_file(path, 2000, middle="d true again", tail=[". true last"])
    waiter = procs.start("runwait", "runs.txt", "--interval", "0.1", cwd=tmp_path)
    result = run("runset", "--set", ".", "runs.txt", str(line), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run("runset", "--set", "d", "runs.txt", "2001", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with pytest.raises(Exception, match="timed out"):
        waiter.wait(timeout=1.5)  # the job set back to '.' is pending
    result = run("runset", "--set", "d", "runs.txt", str(line), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert waiter.wait(timeout=10) == 0


@pytest.mark.timeout(60)
def test_summary_counts_like_the_index_on_odd_and_large_files(tmp_path):
    """runset --summary of a whole file counts without an index; pieces with
    directives or odd lines go through the index: the same counts, the same
    warnings, across piece boundaries (256 KiB)."""
    lines = []
    for i in range(60_000):
        lines.append(f"{'.d!e-+x'[i % 7]} true {i}")
        if i % 9_999 == 0:
            lines += ["# comment", "", "  ", "#runmaker set 3", ".odd", "d \t"]
    (tmp_path / "runs.txt").write_text("\n".join(lines))  # the last line without newline
    whole = run("runset", "--summary", "runs.txt", cwd=tmp_path)
    listed = run("runset", "--summary", "--grep", "", "runs.txt", cwd=tmp_path)  # the index's way
    assert whole.returncode == listed.returncode == 0
    assert whole.stdout == listed.stdout
    assert whole.stdout.decode().splitlines()[-1].split() == ["60000", "jobs"]
    assert whole.stderr == listed.stderr
    assert b":4: not a job line" not in whole.stderr
    assert whole.stderr.count(b"not a job line") == 14  # ".odd" and "d \t", 7 times


# A palette of lines for the folded head's comparisons: the first ones are
# foldable (finished, not indented, comments, blank lines), the rest end it.
_FOLDABLE_LINES = ["d true", "- true", "d\ttab", "# a comment", "", "  ", "\t\r", "#runmakerish"]
_OTHER_LINES = [". pending", "+ urgent", "! failed", "x odd", "d   indented", ".   indented",
                "d trailing  ", "d \t", ".odd", "/runmaker set 1", "#runmaker max-running 2",
                "#runmaker barrier", "#runmaker kill 3", "#runmaker set 2", "ls -l", "r running"]


def _index(path: Path, fold: bool) -> tuple[JobFile, bytes, list[str]]:
    warnings: list[str] = []
    jobfile = JobFile(str(path), writable=False, warn=warnings.append, fold=fold)
    _, states = jobfile.read_new_states()
    return jobfile, states, warnings


# Files whose folded head ends at a read piece's end (256 KiB: 32,768 lines
# of 8 bytes): after comments, after jobs, or with the file.
_PIECE_EDGES = {
    "comments-end-the-piece": ["d job-1"] * 32_000 + ["# note1"] * 768 + [".   child", ". next"],
    "jobs-end-the-piece": ["d job-1"] * 32_768 + ["# note1"] * 10 + [".   child"],
    "the-file-ends-the-head": ["d job-1"] * 32_768 + ["# note1"] * 40_000 + ["- job-2"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [*range(40), *_PIECE_EDGES])
def test_a_folded_head_indexes_the_rest_as_the_whole_index_does(tmp_path, seed):
    """A worker's JobFile only counts the finished head of the file: every
    job below it gets the same line, offsets, state, parent, and every
    directive and warning is the same, as when the whole file is indexed;
    the head's last job stays indexed, so no job's parent is folded;
    unfold() then gives the whole index itself.  Seed 0 has a head longer
    than a read piece (256 KiB); _PIECE_EDGES end the head at a piece's end."""
    rng = random.Random(seed)
    if seed in _PIECE_EDGES:
        lines, last = _PIECE_EDGES[seed], "\n"
    else:
        head = 40_000 if seed == 0 else rng.randrange(0, 30)
        lines = [rng.choice(_FOLDABLE_LINES) for _ in range(head)]
        lines += [rng.choice(_OTHER_LINES + _FOLDABLE_LINES) for _ in range(rng.randrange(0, 30))]
        last = rng.choice(["", "\n"])  # the last line with or without its newline
    path = tmp_path / "runs.txt"
    path.write_text("\n".join(lines) + last)
    whole, whole_states, whole_warnings = _index(path, fold=False)
    folded, states, warnings = _index(path, fold=True)
    try:
        shift = sum(folded.folded_jobs.values())
        assert all(line <= folded.folded_lines for line in whole.lines[:shift])
        assert set(whole_states[:shift]) <= set(b"d-")
        assert collections.Counter(whole_states[:shift]) == folded.folded_jobs
        assert (states, warnings) == (whole_states[shift:], whole_warnings)
        for name in ("lines", "offsets", "ends"):
            assert getattr(folded, name).tolist() == getattr(whole, name).tolist()[shift:]
        parents = [whole.parent_of(i) for i in range(shift, len(whole.offsets))]
        assert all(p < 0 or p >= shift for p in parents)  # no parent is folded
        assert parents == [q + shift if q >= 0 else -1 for q in map(folded.parent_of, range(len(folded.offsets)))]
        if seed in _PIECE_EDGES:
            assert len(folded.offsets) == len(whole.offsets) - shift > 0
            # The head's last job: the first one indexed.
            assert whole.lines[shift] == {"comments-end-the-piece": 32_000, "jobs-end-the-piece": 32_768,
                                          "the-file-ends-the-head": 72_769}[seed]
        assert [b - shift for b in whole.barriers] == folded.barriers
        for name in ("barrier_lines", "kills", "kill_offsets", "max_running", "line_count", "size",
                     "unfinished", "command_like_lines", "first_command_like"):
            expected = getattr(whole, name)
            if name == "unfinished" and expected is not None:
                expected -= shift
            assert getattr(folded, name) == expected, name
        assert folded.take_set_notices() == whole.take_set_notices()
        assert all(line > folded.folded_lines for line in folded.lines)
        head_lines = folded.folded_lines
        assert folded.unfold() == shift
        if not head_lines:
            assert folded.size == whole.size  # nothing was folded: the index stays
            return
        _, again = folded.read_new_states()
        assert again == whole_states
        for name in ("lines", "offsets", "ends", "barriers", "kills", "max_running", "line_count"):
            assert getattr(folded, name) == getattr(whole, name), name
        assert [folded.parent_of(i) for i in range(len(whole.offsets))] == [
            whole.parent_of(i) for i in range(len(whole.offsets))]
    finally:
        whole.close()
        folded.close()


@pytest.mark.timeout(60)
def test_a_line_set_back_in_the_folded_head_runs_while_a_job_below_runs_on(tmp_path, procs):
    """The worker indexes its folded head when a notice names a line there:
    the job it holds meanwhile keeps its lock and ends with its own line
    done, and the line set back runs once."""
    path = tmp_path / "runs.txt"
    head = ["# a sweep", *[f"d true {i}" for i in range(300)], "", "d touch again"]
    write_file(path, head + [". " + gated_job("held", "; echo held >> ran")])
    again, held = 301, 302  # job numbers: the comment and the blank line are none
    worker = procs.start("runmaker", "-q", "-j2", "--follow", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "held.started").exists(), what="the held job")
    result = run("runset", "--set", ".", "runs.txt", str(len(head)), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    wait_for(lambda: (tmp_path / "again").exists(), timeout=5, what="the job set back to '.'")
    wait_for(lambda: states(path)[again - 1] == "d", what="its d")
    assert states(path)[held - 1] == "r"
    (tmp_path / "held.go").write_text("")
    wait_for(lambda: states(path)[held - 1] == "d", what="the held job's d")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 130
    assert states(path) == "d" * 302
    assert (tmp_path / "ran").read_text() == "held\n"


@pytest.mark.timeout(60)
def test_a_child_of_a_folded_job_set_back_waits_for_its_parent_again(tmp_path, procs):
    """A job indented under the folded head's last job: once both are set
    back, the parent runs first and the child only after it ended."""
    path = tmp_path / "runs.txt"
    parent = "d " + gated_job("parent", "; echo parent >> order")
    child = "d   test -e parent.go && echo child >> order || echo early >> order"
    write_file(path, [f"d true {i}" for i in range(300)] + [parent, child, ". touch ready"])
    worker = procs.start("runmaker", "-q", "-j2", "--follow", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "ready").exists(), what="the worker's first job")  # it has read the file
    result = run("runset", "--set", ".", "runs.txt", "301-302", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    wait_for(lambda: (tmp_path / "parent.started").exists(), timeout=5, what="the parent")
    (tmp_path / "parent.go").write_text("")
    wait_for(lambda: states(path)[-3:] == "ddd", what="both done")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 130
    assert (tmp_path / "order").read_text() == "parent\nchild\n"


_PLAIN_COMMANDS = ["true", "echo 'a b'  ", "x\xe9y", "q\"uote\\d", "ctl\x01\x1f", "tab\tin", "trail\r",
                   "é ü", "{\"json\": 1}", "del\x7f"]
_JSON_AS_IS = ["true", "echo 'a b'  ", "sleep 1 # {x: [1]} ~"]  # nothing JSON escapes
_NOT_PLAIN = ["# comment", "", "d\ttab", ".   indented", "d \t", "#runmaker barrier", "! failed",
              "x odd", "ls -l"]


# One command JSON escapes, among commands it does not.
_ONE_ESCAPE = {"quote": 'say "hi"', "backslash": "a\\b", "non-ascii": "café", "control": "ctl\x1b[0m",
               "del": "del\x7f"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [*range(16), *_ONE_ESCAPE])
def test_a_listing_without_an_index_is_the_indexs_listing(tmp_path, seed):
    """runset -l/--json of a file of plain job lines formats it without an
    index: the same bytes as the index's listing (``--grep ''`` always
    goes that way), and files with any other line still go the index's way.
    Seed 0 is larger than a read piece (256 KiB); every fourth seed's
    commands need no JSON escapes, and each of _ONE_ESCAPE's but one."""
    rng = random.Random(str(seed))
    count = 30_000 if seed == 0 else rng.randrange(1, 40)
    commands = _JSON_AS_IS if seed in _ONE_ESCAPE or seed % 4 == 3 else _PLAIN_COMMANDS
    lines = [rng.choice(".+d-") + " " + rng.choice(commands) + str(i) * rng.randrange(2) for i in range(count)]
    plain = seed in _ONE_ESCAPE or seed % 3 != 2
    if seed in _ONE_ESCAPE:
        lines.insert(rng.randrange(len(lines) + 1), ". " + _ONE_ESCAPE[seed])
        count += 1
    elif not plain:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(_NOT_PLAIN))
    path = tmp_path / "runs.txt"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + (b"\xff\xfe" if seed == 1 else b"")
                     + rng.choice([b"", b"\n"]))
    jobfile = JobFile(str(path), writable=False)
    try:
        assert _plain_and_live(jobfile, _read_whole(jobfile)) is plain
    finally:
        jobfile.close()
    for option in ("-l", "--json"):
        fast = run("runset", option, "runs.txt", cwd=tmp_path)
        indexed = run("runset", option, "--grep", "", "runs.txt", cwd=tmp_path)
        assert fast.returncode == indexed.returncode == 0
        assert (fast.stdout, fast.stderr) == (indexed.stdout, indexed.stderr)
    if plain:
        assert fast.stdout.count(b"\n") == count


@pytest.mark.timeout(60)
def test_a_listing_without_an_index_probes_running_jobs(tmp_path, procs):
    """A live `r` job keeps the index-free listing; a lost one is listed by
    the index's way, with [lost]."""
    path = tmp_path / "runs.txt"
    write_file(path, ["d true", ". " + gated_job("held"), ". true"])
    worker = procs.start("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "held.started").exists(), what="the held job")
    jobfile = JobFile(str(path), writable=False)
    try:
        assert _plain_and_live(jobfile, _read_whole(jobfile))
    finally:
        jobfile.close()
    result = run("runset", "-l", "runs.txt", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode().splitlines()[1] == "2: r - " + gated_job("held")
    worker.kill()
    worker.wait(timeout=10)
    procs.kill_job_groups()
    jobfile = JobFile(str(path), writable=False)
    try:
        assert not _plain_and_live(jobfile, _read_whole(jobfile))
    finally:
        jobfile.close()
    result = run("runset", "-l", "runs.txt", cwd=tmp_path)
    assert result.stdout.decode().splitlines() == [
        "1: d - true", "2: r - " + gated_job("held") + " [lost]", "3: . - true"]


@pytest.mark.timeout(60)
def test_a_child_of_the_heads_last_job_rereads_it_before_it_starts(tmp_path, procs):
    """runset writes a state byte first and appends its notice after: a
    reader holding the reading lock (a long scan) delays the notice.  A
    child below the folded head must not start meanwhile once its parent,
    the head's last job, was set back: it rereads the parent's byte."""
    path = tmp_path / "runs.txt"
    children = [f".   echo c{i} >> order; sleep 0.2" for i in range(1, 9)]
    # The parent runs for a while once set back: the test sees it '.' or 'r'
    # (the worker may start it again before a look every 20 ms sees the '.').
    write_file(path, [f"d true {i}" for i in range(100)] + ["d echo parent >> order; sleep 0.5", *children])
    order = tmp_path / "order"

    def ran() -> list[str]:
        return order.read_text().split() if order.exists() else []

    worker = procs.start("runmaker", "-q", "-j1", "runs.txt", cwd=tmp_path)
    wait_for(lambda: ran(), what="the first child")
    reader = hold_shared_lock(procs, path, APPEND_BYTE)  # the reading lock, as a long scan holds it
    setter = procs.start("runset", "--set", ".", "runs.txt", "101", cwd=tmp_path)
    wait_for(lambda: states(path)[100] in ".r", what="the parent's byte set back")
    seen = len([name for name in ran() if name != "parent"])  # children that ran
    assert not path.read_bytes().endswith(b"#runmaker set 101\n")  # the notice waits
    holds_for(lambda: "parent" in ran() or len(ran()) <= seen + 1, 1.0, "no child started past the one running")
    reader.kill()
    assert setter.wait(timeout=20) == 0
    assert worker.wait(timeout=30) == 0
    assert ran().index("parent") <= seen + 1
    assert sorted(ran()) == sorted(["parent"] + [f"c{i}" for i in range(1, 9)])
    assert states(path) == "d" * 109


@pytest.mark.timeout(60)
@pytest.mark.parametrize("line", [1, 2])  # folded, and the head's last job
@pytest.mark.parametrize("append", [False, True])
def test_a_line_set_back_before_the_scheduler_starts_is_run(tmp_path, line, append):
    """Between a worker's first read (check_job_file) and its scheduler's
    first look, runset sets a finished line back (and perhaps adds a job):
    its notice is followed, whether the line is folded or not."""
    path = tmp_path / "runs.txt"
    path.write_text("d echo one\nd echo two\n. echo three\n")
    jobfile = JobFile(str(path), fold=True)
    scheduler = None
    try:
        states_read = check_job_file(jobfile, notify=pytest.fail)
        assert jobfile.folded_lines == 1
        result = run("runset", "--set", ".", "runs.txt", str(line), cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, b"")
        if append:
            assert run("runset", "--add", "echo four", "runs.txt", cwd=tmp_path).returncode == 0
        scheduler = Scheduler(jobfile, states=states_read)
        claims = scheduler.claim_jobs(4, idle=True)
        assert sorted(claim.line for claim in claims) == [line, 3] + [5] * append
        for claim in claims:
            scheduler.finish_job(claim, "d")
    finally:
        if scheduler is not None:
            scheduler.close()
        jobfile.close()
    assert states(path) == "d" * (3 + append)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lines", [[". printf '\x1b[31mred\x1b[0m'"], [". printf '\x1b[31mred\x1b[0m'", "# x"]])
def test_a_listing_keeps_escape_sequences_in_commands(tmp_path, lines):
    """runset -l into a pipe or a file writes each command as it is in the
    job file, escape sequences too, without and with the index."""
    write_file(tmp_path / "runs.txt", lines)
    result = run("runset", "-l", "runs.txt", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"1: . - printf '\x1b[31mred\x1b[0m'\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["-l", "--json", "--summary"])
def test_a_listing_to_an_ascii_or_closed_stdout_is_no_traceback(tmp_path, option):
    """An ASCII-only stdout gets UTF-8 as before; a closed one, nothing."""
    (tmp_path / "runs.txt").write_bytes(b"d caf\xc3\xa9\n\xc3 odd state\n")
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    ascii_out = run("runset", option, "runs.txt", cwd=tmp_path, env=env)
    assert (ascii_out.returncode, ascii_out.stderr) == (0, b"")
    assert ascii_out.stdout == run("runset", option, "runs.txt", cwd=tmp_path).stdout
    shown = {"-l": "1: d - café\n".encode(), "--json": b'"command": "caf\\u00e9"', "--summary": "\ufffd".encode()}
    assert shown[option] in ascii_out.stdout
    closed = subprocess.run([*command("runset"), option, "runs.txt"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, pass_fds=(), preexec_fn=lambda: os.close(1), timeout=30)
    assert (closed.returncode, closed.stderr) == (0, b"")


@pytest.mark.timeout(60)
def test_summary_warns_of_a_tab_in_an_indent_as_the_index_does(tmp_path):
    (tmp_path / "runs.txt").write_bytes(b". a\n. \tb\n")
    counted = run("runset", "--summary", "runs.txt", cwd=tmp_path)
    indexed = run("runset", "--summary", "--grep", "", "runs.txt", cwd=tmp_path)
    assert (counted.stdout, counted.stderr) == (indexed.stdout, indexed.stderr)
    assert counted.stderr == b"Warning: runs.txt:2: tabs in the indent count as one space each\n"
