"""Hostile input: each bad input gives the outcome SPEC promises, never a traceback.

One table, three commands.  Every row states the exit status, the one
``Error:`` line an input error prints on stderr (exit 2), or what the
command does instead, and that the files it was handed stay byte-identical
where SPEC says they are untouched.  Rows that need a live process beside
the command (a file replaced under a worker, a running job) follow the
table.
"""

from __future__ import annotations

import os
import random
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import Procs, run, states, wait_for

pytestmark = pytest.mark.timeout(60)

JOBS = b". echo a\n. echo b\n# a comment\n. echo d\n"


def _binary_bytes() -> bytes:
    """4 KiB of random bytes, NULs included, with no line that is a runnable job."""
    data = bytearray(random.Random(7).randbytes(4096))
    for i in range(len(data)):
        if data[i] in b".+" and (i == 0 or data[i - 1] == 0x0A):
            data[i] = 0x80  # a byte that is no state: the line could never run
    return bytes(data)


BINARY = _binary_bytes()
# A usage error (click's) may point to --help on the same line.
USAGE_TAIL = r"( \(see '\S+ --help'\))?"
# A job that runs until the test creates the file "go" (a gate, not a sleep).
GATED = b"while [ ! -e go ]; do sleep 0.01; done"
HUGE_COMMAND = b"x" * (300 * 1024)  # beyond MAX_ARG_STRLEN (128 KiB): execve says E2BIG
MALFORMED = (
    b".cmd\n"  # 1: no space after the state
    b". \n"  # 2: shorter than 3 bytes
    b".  \n"  # 3: an empty command
    b"x echo unknown\n"  # 4: an unknown state: listed, never run
    b"\t. echo indented\n"  # 5: starts with white space
    b"#runmaker max-running lots\n"  # 6: a directive with a bad value
    b"#runmaker frobnicate\n"  # 7: an unknown directive
    b". echo fine\n"  # 8: the one job to run
)


@dataclass
class Row:
    """One bad input: the command and what SPEC says comes out of it."""

    id: str
    command: str  # runmaker, runset or runwait
    args: list[str]
    code: int
    error: str | None = None  # the one Error: line, as a regular expression
    files: dict[str, bytes] = field(default_factory=lambda: {"runs.txt": JOBS})
    dirs: tuple[str, ...] = ()
    fifos: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)  # symbolic link -> its target
    after: bytes | None = None  # runs.txt after the command (None: every file untouched)
    stdout: bytes | None = b""  # exactly these bytes (None: see stdout_re)
    stdout_re: bytes | None = None  # a regular expression the whole stdout matches
    stderr: str | None = None  # every stderr line matches this (rows without an error)
    stderr_lines: int | None = None  # exactly this many stderr lines, when given
    input: bytes | None = None
    check: Callable[[Path, bytes], object] | None = None  # more to check: (directory, stdout)


ROWS = [
    # ---- runmaker: the job file --------------------------------------------
    Row("runmaker-missing-file", "runmaker", ["missing.txt"], 2, r"Error: missing\.txt: no such file", files={}),
    Row("runmaker-directory", "runmaker", ["jobs.d"], 2, r"Error: jobs\.d: is a directory, not a job file",
        files={}, dirs=("jobs.d",)),
    Row("runmaker-fifo", "runmaker", ["fifo"], 2, r"Error: fifo: not a regular file", files={}, fifos=("fifo",)),
    Row("runmaker-empty-file", "runmaker", ["runs.txt"], 0, files={"runs.txt": b""},
        stderr=r"runmaker: nothing to run in runs\.txt \(no jobs\)"),
    Row("runmaker-binary-file", "runmaker", ["runs.txt"], 0, files={"runs.txt": BINARY},
        stderr=r"Warning: runs\.txt(:\d+: .*; ignored|: more lines are ignored; not naming them all)"
               r"|runmaker: nothing to run in runs\.txt \(no jobs\)"),
    Row("runmaker-malformed-lines", "runmaker", ["-q", "runs.txt"], 0, files={"runs.txt": MALFORMED},
        after=MALFORMED.replace(b". echo fine", b"d echo fine"), stdout=None, stdout_re=rb"stdout \(\S+\): fine\n",
        stderr=r"Warning: runs\.txt:[123567]: .*; ignored"),
    Row("runmaker-non-utf8-command", "runmaker", ["runs.txt"], 0,
        files={"runs.txt": b". echo caf\xe9 > out.txt\n"}, after=b"d echo caf\xe9 > out.txt\n",
        check=lambda d, out: (d / "out.txt").read_bytes() == b"caf\xe9\n",
        stdout=None, stdout_re=rb"executing `echo caf\xef\xbf\xbd > out\.txt'\n"
               rb"status \(\S+\): forked \"echo caf\xef\xbf\xbd > out\.txt\"\n"
               rb"status \(\S+\): exit 0 \"echo caf\xef\xbf\xbd > out\.txt\"\n"),
    Row("runmaker-nul-in-command", "runmaker", ["runs.txt"], 1,
        files={"runs.txt": b". echo a\x00b\n"}, after=b"e echo a\x00b\n",
        stdout=None, stdout_re=b"executing `echo a\x00b'\nstatus \\(\\S+,-\\): error .*\"echo a\x00b\"\n"),
    Row("runmaker-huge-command", "runmaker", ["runs.txt"], 1,
        files={"runs.txt": b". " + HUGE_COMMAND + b"\n. echo after\n"},
        after=b"e " + HUGE_COMMAND + b"\nd echo after\n",
        stdout=None, stdout_re=rb"executing `x{307200}'\n"
                               rb"status \(\S+,-\): error Argument list too long \"x{307200}\"\n"
                               rb"executing `echo after'\n(?s:.*)stdout \(\S+\): after\n(?s:.*)"),
    Row("runmaker-huge-line", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b"# " + b"y" * (8 << 20) + b"\n. echo ok\n"},
        after=b"# " + b"y" * (8 << 20) + b"\nd echo ok\n",
        stdout=None, stdout_re=rb"stdout \(\S+\): ok\n"),
    Row("runmaker-huge-output-line", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b". head -c 3000000 /dev/zero | tr '\\0' z\n"},
        after=b"d head -c 3000000 /dev/zero | tr '\\0' z\n", check=lambda d, out: out.count(b"z") == 3000000,
        stdout=None, stdout_re=rb"(stdout \(\S+\): z+\n)+"),
    # ---- runmaker: options and paths -----------------------------------------
    Row("runmaker-no-file-argument", "runmaker", [], 2, r"Error: missing the job FILE" + USAGE_TAIL),
    Row("runmaker-two-files", "runmaker", ["runs.txt", "runs.txt"], 2,
        r"Error: Got unexpected extra argument \(runs\.txt\)" + USAGE_TAIL),
    Row("runmaker-unknown-option", "runmaker", ["--bogus", "runs.txt"], 2, r"Error: No such option '--bogus'.*"),
    Row("runmaker-negative-jobs", "runmaker", ["-j", "-1", "runs.txt"], 2,
        r"Error: Invalid value for '-j' / '--jobs': -1 is not in the range x>=0\." + USAGE_TAIL),
    Row("runmaker-jobs-not-a-number", "runmaker", ["-j", "many", "runs.txt"], 2,
        r"Error: Invalid value for '-j' / '--jobs': 'many' is not a valid integer range\." + USAGE_TAIL),
    Row("runmaker-zero-timeout", "runmaker", ["--timeout", "0", "runs.txt"], 2,
        r"Error: Invalid value for '--timeout': 0\.0 is not in the range x>0\." + USAGE_TAIL),
    Row("runmaker-negative-loglines", "runmaker", ["-n", "-1", "runs.txt"], 2,
        r"Error: Invalid value for '-n' / '--loglines': -1 is not in the range x>=0\." + USAGE_TAIL),
    Row("runmaker-negative-retries", "runmaker", ["--retries", "-2", "runs.txt"], 2,
        r"Error: Invalid value for '--retries': -2 is not in the range x>=0\." + USAGE_TAIL),
    Row("runmaker-log-in-missing-directory", "runmaker", ["-l", "nodir/log.txt", "runs.txt"], 2,
        r"Error: nodir/log\.txt: cannot open the log file: No such file or directory"),
    Row("runmaker-log-is-a-directory", "runmaker", ["-l", "logs", "runs.txt"], 2,
        r"Error: logs: is a directory, not a log file", dirs=("logs",)),
    Row("runmaker-joblog-is-the-job-file", "runmaker", ["--joblog", "runs.txt", "runs.txt"], 2,
        r"Error: runs\.txt: is the job file itself, cannot be the job log"),
    Row("runmaker-logdir-is-a-file", "runmaker", ["--logdir", "plain", "runs.txt"], 2,
        r"Error: plain: not a directory, cannot be the log directory",
        files={"runs.txt": JOBS, "plain": b"not a directory\n"}),
    # Input errors create nothing: every path is checked before any is created.
    Row("runmaker-bad-logdir-creates-no-log", "runmaker",
        ["-l", "new.log", "--joblog", "new.tsv", "--logdir", "afile", "runs.txt"], 2,
        r"Error: afile: not a directory, cannot be the log directory",
        files={"runs.txt": JOBS, "afile": b"a file\n"}),
    Row("runmaker-bad-joblog-creates-no-log", "runmaker",
        ["-l", "new.log", "--logdir", "newdir", "--joblog", "nodir/jobs.tsv", "runs.txt"], 2,
        r"Error: nodir/jobs\.tsv: cannot open the job log: No such file or directory"),
    Row("runmaker-bad-log-creates-no-logdir", "runmaker",
        ["--logdir", "newdir/sub", "--joblog", "new.tsv", "-l", "nodir/log.txt", "runs.txt"], 2,
        r"Error: nodir/log\.txt: cannot open the log file: No such file or directory"),
    # Records are never opened through a symbolic link, and never a FIFO.
    Row("runmaker-log-is-a-symlink", "runmaker", ["-l", "log.txt", "runs.txt"], 2,
        r"Error: log\.txt: is a symbolic link; runmaker does not follow one to write the log file",
        files={"runs.txt": JOBS, "precious.txt": b"precious\n"}, links={"log.txt": "precious.txt"}),
    Row("runmaker-joblog-is-a-dangling-symlink", "runmaker", ["--joblog", "jobs.tsv", "runs.txt"], 2,
        r"Error: jobs\.tsv: is a symbolic link; runmaker does not follow one to write the job log",
        links={"jobs.tsv": "elsewhere.tsv"}),
    Row("runmaker-joblog-links-to-the-job-file", "runmaker", ["--joblog", "jobs.tsv", "runs.txt"], 2,
        r"Error: jobs\.tsv: is a symbolic link; runmaker does not follow one to write the job log",
        links={"jobs.tsv": "runs.txt"}),
    Row("runmaker-log-is-a-fifo", "runmaker", ["-l", "log.fifo", "runs.txt"], 2,
        r"Error: log\.fifo: not a regular file, cannot be the log file", fifos=("log.fifo",)),
    Row("runmaker-log-is-a-device", "runmaker", ["-l", "/dev/null", "runs.txt"], 2,
        r"Error: /dev/null: not a regular file, cannot be the log file"),
    # Numbers: limits checked up front, only ASCII digits are digits.
    Row("runmaker-jobs-a-billion", "runmaker", ["-j", "1000000000", "runs.txt"], 2,
        r"Error: -j 1000000000: .*open-file limit.*"),
    Row("runmaker-loglines-huge", "runmaker", ["-q", "-l", "out.log", "-n", "9" * 30, "runs.txt"], 0,
        after=JOBS.replace(b". ", b"d "), stdout=None, stdout_re=rb"", stderr=r"(?!)",
        check=lambda d, out: (d / "out.log").read_bytes().count(b".-> ") == 3),
    Row("runmaker-max-running-4301-digits", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running " + b"1" * 4301 + b"\n. echo a\n"},
        after=b"#runmaker max-running " + b"1" * 4301 + b"\nd echo a\n",
        stdout=None, stdout_re=rb"stdout \(\S+\): a\n",
        stderr=r"Warning: runs\.txt:1: max-running above 2147483647; ignored", stderr_lines=1),
    Row("runmaker-max-running-above-2-to-the-64", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running 18446744073709551616\n. echo a\n"},
        after=b"#runmaker max-running 18446744073709551616\nd echo a\n",
        stdout=None, stdout_re=rb"stdout \(\S+\): a\n",
        stderr=r"Warning: runs\.txt:1: max-running above 2147483647; ignored", stderr_lines=1),
    Row("runmaker-max-running-2-to-the-31", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running 2147483648\n. echo a\n"},
        after=b"#runmaker max-running 2147483648\nd echo a\n",
        stdout=None, stdout_re=rb"stdout \(\S+\): a\n",
        stderr=r"Warning: runs\.txt:1: max-running above 2147483647; ignored", stderr_lines=1),
    Row("runmaker-max-running-largest", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running 2147483647\n. echo a\n"},
        after=b"#runmaker max-running 2147483647\nd echo a\n",
        stdout=None, stdout_re=rb"stdout \(\S+\): a\n", stderr=r"(?!)"),
    Row("runmaker-max-running-non-ascii-digit", "runmaker", ["-q", "runs.txt"], 0,
        files={"runs.txt": "#runmaker max-running \u0661\n. echo a\n".encode()},
        after="#runmaker max-running \u0661\nd echo a\n".encode(),
        stdout=None, stdout_re=rb"stdout \(\S+\): a\n",
        stderr=r"Warning: runs\.txt:1: max-running takes a whole number or 'none'; ignored", stderr_lines=1),
    # ---- runset ----------------------------------------------------------------
    Row("runset-max-running-4301-digits-in-file", "runset", ["runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running " + b"1" * 4301 + b"\n. echo a\n"},
        stdout=b"2: . - echo a\n", stderr=r"Warning: runs\.txt:1: max-running above 2147483647; ignored", stderr_lines=1),
    Row("runset-line-5000-digits", "runset", ["runs.txt", "1" * 5000], 2,
        r"Error: runs\.txt:1{10}\.\.\. \(5000 digits\): no job at this line \(the file has 4 lines\)"),
    Row("runset-line-with-many-leading-zeros", "runset", ["runs.txt", "0" * 5000 + "1"], 0,
        stdout=b"1: . - echo a\n", stderr=r"(?!)"),
    Row("runset-range-to-5000-digits", "runset", ["runs.txt", "1-" + "9" * 5000, "--set", "d"], 2,
        r"Error: runs\.txt:1-9{10}\.\.\. \(5000 digits\): the range runs past the end of the file \(4 lines\)"),
    Row("runset-line-non-ascii-digit", "runset", ["runs.txt", "\u0661"], 2,
        r"Error: runs\.txt: '\u0661' is not a line number or a range A-B"),
    Row("runset-max-running-superscript-two", "runset", ["runs.txt", "--max-running", "\u00b2"], 2,
        r"Error: Invalid value for '--max-running': '\u00b2' is neither a whole number nor 'none'" + USAGE_TAIL),
    Row("runset-max-running-5000-digits", "runset", ["runs.txt", "--max-running", "1" * 5000], 2,
        r"Error: Invalid value for '--max-running': 1{10}\.\.\. \(5000 digits\) is above the largest cap, "
        r"2147483647" + USAGE_TAIL),
    Row("runset-max-running-2-to-the-31", "runset", ["runs.txt", "--max-running", "2147483648"], 2,
        r"Error: Invalid value for '--max-running': 2147483648 is above the largest cap, 2147483647" + USAGE_TAIL),
    Row("runset-max-running-largest", "runset", ["runs.txt", "--max-running", "2147483647"], 0,
        after=JOBS + b"#runmaker max-running 2147483647\n", stderr=r"(?!)"),
    Row("runset-missing-file", "runset", ["missing.txt"], 2, r"Error: missing\.txt: no such file", files={}),
    Row("runset-directory", "runset", ["jobs.d"], 2, r"Error: .*'jobs\.d' is a directory\." + USAGE_TAIL,
        files={}, dirs=("jobs.d",)),
    Row("runset-fifo", "runset", ["fifo"], 2, r"Error: fifo: not a regular file", files={}, fifos=("fifo",)),
    Row("runset-empty-file", "runset", ["runs.txt"], 0, files={"runs.txt": b""}, stderr=r"(?!)"),
    Row("runset-binary-file", "runset", ["runs.txt"], 0, files={"runs.txt": BINARY},
        stderr=r"Warning: runs\.txt(:\d+: .*; ignored|: more lines are ignored; not naming them all)"),
    Row("runset-non-utf8-json", "runset", ["--json", "runs.txt"], 0,
        files={"runs.txt": b". echo caf\xe9\n"},
        stdout=b'{"line": 1, "state": ".", "command": "echo caf\\ufffd", "lost": false, '
               b'"parent": null, "blocked_by": null}\n'),
    Row("runset-line-zero", "runset", ["runs.txt", "0"], 2, r"Error: runs\.txt:0: no job at this line"),
    Row("runset-line-not-a-number", "runset", ["runs.txt", "abc"], 2,
        r"Error: runs\.txt: 'abc' is not a line number or a range A-B"),
    Row("runset-negative-line", "runset", ["runs.txt", "--", "-1"], 2,
        r"Error: runs\.txt: '-1' is not a line number or a range A-B"),
    Row("runset-line-past-the-end", "runset", ["runs.txt", "99"], 2,
        r"Error: runs\.txt:99: no job at this line \(the file has 4 lines\)"),
    Row("runset-comment-line", "runset", ["runs.txt", "3"], 2, r"Error: runs\.txt:3: no job at this line"),
    Row("runset-backwards-range", "runset", ["runs.txt", "4-2", "--set", "d"], 2,
        r"Error: runs\.txt: '4-2': a range A-B needs 1 <= A <= B"),
    Row("runset-range-past-the-end", "runset", ["runs.txt", "1-99", "--set", "d"], 2,
        r"Error: runs\.txt:1-99: .*"),
    Row("runset-set-without-selection", "runset", ["runs.txt", "--set", "."], 2,
        r"Error: runs\.txt: --set needs a selection: .*"),
    Row("runset-set-r-by-hand", "runset", ["runs.txt", "1", "--set", "r"], 2, r"Error: --set r is refused: .*"),
    Row("runset-set-two-states", "runset", ["runs.txt", "1", "--set", "d!"], 2,
        r"Error: --set 'd!': not a state to set; .*"),
    Row("runset-set-empty-state", "runset", ["runs.txt", "--all", "--set", ""], 2, r"Error: --set '': .*"),
    Row("runset-empty-state-selection", "runset", ["runs.txt", "--state", ""], 2,
        r"Error: runs\.txt: --state '': .*"),
    Row("runset-bad-regex", "runset", ["runs.txt", "--grep", "("], 2,
        r"Error: runs\.txt: --grep '\(': missing \), unterminated subpattern at position 0"),
    Row("runset-negative-max-running", "runset", ["runs.txt", "--max-running", "-1"], 2,
        r"Error: Invalid value for '--max-running': .*"),
    Row("runset-max-running-not-a-number", "runset", ["runs.txt", "--max-running", "lots"], 2,
        r"Error: Invalid value for '--max-running': .*"),
    Row("runset-add-empty-command", "runset", ["runs.txt", "--add", ""], 2,
        r"Error: runs\.txt: cannot add an empty command"),
    Row("runset-add-two-lines", "runset", ["runs.txt", "--add", "echo a\necho b"], 2,
        r"Error: runs\.txt: a command must fit on one line: .*"),
    Row("runset-add-blank-from-stdin", "runset", ["runs.txt", "--add", "-"], 0, input=b"\n  \n",
        stderr=r"(?!)"),
    Row("runset-high-without-add", "runset", ["runs.txt", "--high"], 2, r"Error: --high goes with --add.*"),
    Row("runset-add-with-selection", "runset", ["runs.txt", "1", "--add", "echo x"], 2, r"Error: --add, .*"),
    # ---- runwait ---------------------------------------------------------------
    Row("runwait-max-running-4301-digits-in-file", "runwait", ["-e", "runs.txt"], 0,
        files={"runs.txt": b"#runmaker max-running " + b"1" * 4301 + b"\nd echo a\n"},
        stderr=r"Warning: runs\.txt:1: max-running above 2147483647; ignored", stderr_lines=1),
    Row("runwait-missing-file", "runwait", ["missing.txt"], 2, r"Error: missing\.txt: no such file", files={}),
    Row("runwait-directory", "runwait", ["jobs.d"], 2, r"Error: .*'jobs\.d' is a directory\." + USAGE_TAIL,
        files={}, dirs=("jobs.d",)),
    Row("runwait-fifo", "runwait", ["fifo"], 2, r"Error: fifo: not a regular file", files={}, fifos=("fifo",)),
    Row("runwait-empty-file", "runwait", ["-e", "runs.txt"], 0, files={"runs.txt": b""}, stderr=r"(?!)"),
    Row("runwait-binary-file", "runwait", ["-e", "runs.txt"], 0, files={"runs.txt": BINARY},
        stderr=r"Warning: runs\.txt(:\d+: .*; ignored|: more lines are ignored; not naming them all)"),
    Row("runwait-negative-timeout", "runwait", ["--timeout", "-1", "runs.txt"], 2,
        r"Error: Invalid value for '--timeout': -1\.0 is not in the range x>0\." + USAGE_TAIL),
    Row("runwait-timeout-not-a-number", "runwait", ["--timeout", "soon", "runs.txt"], 2,
        r"Error: Invalid value for '--timeout': 'soon' is not a valid float range\." + USAGE_TAIL),
    Row("runwait-zero-interval", "runwait", ["--interval", "0", "runs.txt"], 2,
        r"Error: Invalid value for '--interval': 0\.0 is not in the range x>0\." + USAGE_TAIL),
    Row("runwait-lost-and-failed-jobs", "runwait", ["-e", "runs.txt"], 1,
        files={"runs.txt": b"r lost job\n! failed job\nd fine\n- retired\n"},
        stdout=b"runs.txt: failed (!): 2\nruns.txt: lost (r): 1\n", stderr=r"(?!)"),
    Row("runwait-unknown-state", "runwait", ["-e", "runs.txt"], 1, files={"runs.txt": b"d fine\n? what\n"},
        stdout=b"runs.txt: unknown state: 2\n", stderr=r"(?!)"),
    Row("runwait-times-out", "runwait", ["--timeout", "0.3", "--interval", "0.1", "runs.txt"], 124,
        stderr=r"runwait: runs\.txt: timed out with 3 jobs pending, 0 running"),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gives_the_promised_outcome(tmp_path: Path, row: Row) -> None:
    for name, data in row.files.items():
        (tmp_path / name).write_bytes(data)
    for name in row.dirs:
        (tmp_path / name).mkdir()
    for name in row.fifos:
        os.mkfifo(tmp_path / name)
    for name, target in row.links.items():
        os.symlink(target, tmp_path / name)

    result = run(row.command, *row.args, cwd=tmp_path, input=row.input, timeout=50)

    out, err = result.stdout, result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and b"Traceback" not in out, err
    assert result.returncode == row.code, (result.returncode, err, out[-500:])
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    if row.error is not None:
        assert len(errors) == 1, err
        assert re.fullmatch(row.error, errors[0]), errors[0]
    else:
        assert errors == [], err
        for line in err.splitlines():
            assert row.stderr is not None and re.fullmatch(row.stderr, line), line
        if row.stderr_lines is not None:
            assert len(err.splitlines()) == row.stderr_lines, err
    if row.stdout_re is not None:
        assert re.fullmatch(row.stdout_re, out), out[-500:]
    else:
        assert out == row.stdout
    if row.after is not None:
        assert (tmp_path / "runs.txt").read_bytes() == row.after
    else:
        for name, data in row.files.items():
            assert (tmp_path / name).read_bytes() == data, f"{name} changed"
    if row.check is not None:
        assert row.check(tmp_path, out)
    if row.code == 2:
        # An input error creates nothing: no log file, no log directory.
        created = {p.name for p in tmp_path.iterdir()} - set(row.files) - set(row.dirs) - set(row.fifos)
        created -= set(row.links)
        assert created == set(), created


def test_warnings_name_each_bad_line_once(tmp_path: Path) -> None:
    """Mistaken lines are named FILE:LINE, once each, by runmaker and runset alike."""
    path = tmp_path / "runs.txt"
    path.write_bytes(MALFORMED)
    for name in ("runmaker", "runset"):
        result = run(name, "-q" if name == "runmaker" else "--list", "runs.txt", cwd=tmp_path)
        named = re.finditer(r"^Warning: runs\.txt:(\d+): ", result.stderr.decode(), re.M)
        lines = [int(m.group(1)) for m in named]
        assert lines == [1, 2, 3, 5, 6, 7], (name, result.stderr)
    assert path.read_bytes() == MALFORMED.replace(b". echo fine", b"d echo fine")


def test_binary_file_warnings_are_bounded(tmp_path: Path) -> None:
    """A binary file is named line by line up to a bound, then in one summary line."""
    assert b"\0" in BINARY
    (tmp_path / "runs.txt").write_bytes(BINARY * 4)
    result = run("runmaker", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines[-2] == "Warning: runs.txt: more lines are ignored; not naming them all"
    assert lines[-1] == "runmaker: nothing to run in runs.txt (no jobs)"  # binary data: not read as commands
    assert len(lines) == 22
    assert (tmp_path / "runs.txt").read_bytes() == BINARY * 4


# --------------------------------------------------------------------------
# Rows with a process beside the command
# --------------------------------------------------------------------------


def test_runmaker_file_replaced_under_a_worker(tmp_path: Path, procs: Procs) -> None:
    """An editor saves a new copy while a job runs: the worker lets the job end,
    says so in one line, claims nothing more, exits 1, and never writes into
    the new file."""
    path = tmp_path / "runs.txt"
    # Still a sleep, not a gate: the worker looks for a replaced file at most
    # every 0.1 s, so a job that ended at once after the rename could let it
    # claim one more job from the old file (which it would write, not the new
    # one).  Nothing outside the worker shows that it has looked.
    path.write_bytes(b". sleep 1\n. echo second\n")
    worker = procs.start("runmaker", "runs.txt", cwd=tmp_path)
    wait_for(lambda: path.read_bytes()[:1] == b"r", what="the first job to run")
    os.link(path, tmp_path / "old.txt")
    new = b". echo new1\n. echo new2\n"
    (tmp_path / "new.txt").write_bytes(new)
    os.rename(tmp_path / "new.txt", path)
    out, err = worker.communicate(timeout=20)
    assert worker.returncode == 1
    assert b"Traceback" not in out + err
    assert err.decode().splitlines() == [
        f"runmaker: {path}: the file was replaced or shrunk under this worker; "
        "claiming no more jobs, 0 still running"
    ]
    assert path.read_bytes() == new
    assert (tmp_path / "old.txt").read_bytes() == b"d sleep 1\n. echo second\n"
    assert b"second" not in out


@pytest.mark.parametrize("cut", [12, 13], ids=["keeps-the-running-line", "cuts-the-running-line"])
def test_runmaker_file_truncated_under_a_worker(tmp_path: Path, procs: Procs, cut: int) -> None:
    """A file truncated in place while a job runs (SPEC: never done) is like a
    replaced one: no more claims, one line, exit 1, and once the worker knows
    the file shrank it writes nothing into it (not even the running job's
    final state, whose byte may now belong to other text)."""
    path = tmp_path / "runs.txt"
    # Still a sleep, not a gate: a job that ended at once after the
    # truncation could let the worker claim the cut line before it rereads
    # the file (it looks at most every 0.1 s), and run what is left of it.
    if cut == 12:
        path.write_bytes(b". sleep 1\n. echo second\n. echo third\n")
        running = 0
    else:
        path.write_bytes(b". echo first\n. sleep 1\n. echo third\n")
        running = 13
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: path.read_bytes()[running : running + 1] == b"r", what="the sleeping job to run")
    os.truncate(path, cut)
    kept = path.read_bytes()
    out, err = worker.communicate(timeout=20)
    assert worker.returncode == 1
    assert b"Traceback" not in out + err
    assert len(err.decode().splitlines()) == 1 and "replaced or shrunk" in err.decode(), err
    after = path.read_bytes()
    assert after == kept
    assert b"second" not in out and b"third" not in out


def test_runset_refuses_a_live_running_job(tmp_path: Path, procs: Procs) -> None:
    """--set names a job a worker holds and leaves it alone (exit 1); the
    other selected jobs still change."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". " + GATED + b"\nd echo two\n! echo three\n")
    worker = procs.start("runmaker", "-q", "runs.txt", cwd=tmp_path)
    wait_for(lambda: path.read_bytes()[:1] == b"r", what="the first job to run")
    result = run("runset", "runs.txt", "1-3", "--set", "-", cwd=tmp_path)
    (tmp_path / "go").touch()
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "runset: runs.txt:1: running (a worker holds its lock); not changed"
    ]
    assert states(path) == "r--"
    worker.communicate(timeout=20)
    assert worker.returncode == 0
    # runset named the jobs it changed in place in an appended notice (issue 13).
    assert path.read_bytes() == b"d " + GATED + b"\n- echo two\n- echo three\n#runmaker set 2-3\n"


def test_runwait_file_replaced_while_it_waits(tmp_path: Path, procs: Procs) -> None:
    """runwait stops waiting on a file that was replaced: workers stop using
    it, so it would wait forever.  One Error: line, exit 2."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". pending\n")
    waiter = procs.start("runwait", "--progress", "--interval", "0.1", "runs.txt", cwd=tmp_path)
    assert waiter.stderr is not None
    first = waiter.stderr.readline()  # its first look is done
    assert first.startswith(b"progress:"), first
    (tmp_path / "new.txt").write_bytes(b"d pending\n")
    os.rename(tmp_path / "new.txt", path)
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 2
    assert b"Traceback" not in out + err
    errors = [line for line in err.decode().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: runs.txt: the file was replaced"), err
    assert path.read_bytes() == b"d pending\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_do_not_leave_a_traceback(tmp_path: Path, procs: Procs, signum: int) -> None:
    """runwait interrupted (SIGINT, SIGTERM, SIGHUP) exits 130 without a traceback."""
    path = tmp_path / "runs.txt"
    path.write_bytes(b". pending\n")
    waiter = procs.start("runwait", "--progress", "--interval", "0.1", "runs.txt", cwd=tmp_path)
    assert waiter.stderr is not None
    waiter.stderr.readline()
    waiter.send_signal(signum)
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 130
    assert b"Traceback" not in out + err
    assert path.read_bytes() == b". pending\n"
