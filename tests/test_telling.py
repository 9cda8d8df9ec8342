"""runmaker says what happened: nothing to run, lost jobs marked 'e', a file
of bare commands; and names its host in full."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import PYTHON, ROOT, run


@pytest.mark.timeout(30)
@pytest.mark.parametrize("jobs, args, message", [
    ("d a\n" * 12 + "! b\n! c\n", [], "nothing to run in runs.txt (12 done, 2 failed; -r reruns them)"),
    ("d a\ne b\n- c\n", [], "nothing to run in runs.txt (1 done, 1 error, 1 retired; -r reruns them)"),
    ("d a\n- c\nx odd\n", [], "nothing to run in runs.txt (1 done, 1 retired, 1 in another state)"),
    ("# only a comment\n\n", [], "nothing to run in runs.txt (no jobs)"),
    ("", ["-r"], "nothing to run in runs.txt (no jobs)"),
])
def test_nothing_to_run_says_so_on_stderr(tmp_path, jobs, args, message):
    (tmp_path / "runs.txt").write_text(jobs)
    result = run("runmaker", *args, "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [f"runmaker: {message}"]


@pytest.mark.timeout(30)
def test_a_worker_that_ran_jobs_does_not_say_nothing_to_run(tmp_path):
    (tmp_path / "runs.txt").write_text(". true\n")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.timeout(30)
def test_lost_jobs_marked_e_are_named_in_one_line(tmp_path):
    (tmp_path / "runs.txt").write_text("r a\nr b\n. true\nr c\nd d\nr e\n")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs.txt").read_text() == "e a\ne b\nd true\ne c\nd d\ne e\n"
    assert result.stderr.decode().splitlines() == [
        "runmaker: runs.txt: lost jobs (r, but no worker holds them) marked 'e': line 1-2 4 6; -r reruns them"
    ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("head", ["", "# my jobs\n\n"])
def test_a_file_of_bare_commands_is_one_error_line_and_exit_2(tmp_path, head):
    """Also under a comment and a blank line (a worker counts those without indexing them)."""
    text = head + "".join(f"echo {n}; sleep 1\n" for n in range(30))
    (tmp_path / "runs.txt").write_text(text)
    result = run("runmaker", "-l", "runs.log", "runs.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == b""
    first = head.count("\n") + 1
    assert result.stderr.decode().splitlines() == [
        f"Error: runs.txt: no job line, but 30 lines that look like commands (line {first}: 'echo 0; sleep 1'); "
        "a job line is a state byte, a space, then the command: '. echo 0; sleep 1'"
    ]
    assert (tmp_path / "runs.txt").read_text() == text
    assert not (tmp_path / "runs.log").exists()


@pytest.mark.timeout(30)
def test_a_mistaken_line_beside_job_lines_is_still_only_a_warning(tmp_path):
    (tmp_path / "runs.txt").write_text(".true\n. true\n")
    result = run("runmaker", "-q", "runs.txt", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [
        "Warning: runs.txt:1: not a job line (a state byte, a space or tab, then the command); ignored"
    ]


@pytest.mark.timeout(60)
def test_the_host_is_named_in_full(tmp_path):
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--uts", "hostname", "node7.cluster.example"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare --uts (root) to give a host a dotted name")
    (tmp_path / "runs.txt").write_text(". echo $RUNMAKER_HOST\n")
    script = (f"hostname node7.cluster.example && exec {PYTHON} {ROOT / 'runmaker.py'} "
              "--joblog runs.tsv -l runs.log runs.txt")
    result = subprocess.run([unshare, "--uts", "sh", "-c", script], cwd=tmp_path, capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    status = r'^status \(node7\.cluster\.example,\d+\): exit 0 "echo \$RUNMAKER_HOST"$'
    assert re.search(status, out, re.MULTILINE), out
    assert ": stdout (node7.cluster.example," in (tmp_path / "runs.log").read_text()
    assert "): node7.cluster.example\n" in (tmp_path / "runs.log").read_text()  # RUNMAKER_HOST
    assert (tmp_path / "runs.tsv").read_text().splitlines()[1].split("\t")[1] == "node7.cluster.example"
