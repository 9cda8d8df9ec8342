"""GNU parallel's readers of a job log, fed runmaker's --joblog (README: Coming from GNU parallel).

Run against the real ``parallel``; .ci/run installs it with apt-get when it
runs as root.  Without it these tests skip, saying so.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import run, states

# Every job names its line in ran.txt, so a test sees exactly which ran.
_JOBS = (
    "# moving databases\n"            # 1
    ". echo 2 >> ran.txt\n"           # 2
    "#runmaker barrier\n"             # 3
    ". echo 4 >> ran.txt; exit 3\n"   # 4
    "- echo 5 >> ran.txt\n"           # 5  retired: runmaker leaves it
    ". echo 6 >> ran.txt; kill -9 $$\n"  # 6
    "\n"                              # 7
    "- echo 8 >> ran.txt\n"           # 8
)
# runmaker --joblog rows for the lines of _JOBS that it runs.
_RUN_BY_RUNMAKER = [2, 4, 6]
# Input line N of parallel is job line N: non-job lines become empty commands.
_LINE_PER_LINE = r"""awk '{print (/^[^#\/ \t][ \t]/ ? substr($0, 3) : "")}' runs.txt"""


@pytest.fixture(scope="module")
def parallel() -> str:
    path = shutil.which("parallel")
    if path is None:
        pytest.skip("GNU parallel is not installed (.ci/run installs it: apt-get install parallel, as root)")
    version = subprocess.run([path, "--version"], capture_output=True, timeout=30).stdout
    if not version.startswith(b"GNU parallel"):
        pytest.skip(f"{path} is not GNU parallel (moreutils' parallel?)")
    return path


def _ran(tmp_path) -> list[int]:
    ran = tmp_path / "ran.txt"
    lines = [int(n) for n in ran.read_text().split()] if ran.exists() else []
    ran.unlink(missing_ok=True)
    return lines


def _runmaker_joblog(tmp_path, jobs: str) -> list[list[str]]:
    (tmp_path / "runs.txt").write_text(jobs)
    result = run("runmaker", "--joblog", "runs.tsv", "runs.txt", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    return [row.split("\t") for row in (tmp_path / "runs.tsv").read_text().splitlines()]


def _parallel(parallel: str, tmp_path, *args: str, input_command: str | None = None) -> None:
    shell = f"{parallel} --will-cite {' '.join(args)}"
    if input_command is not None:
        shell = f"{input_command} | {shell}"
    subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, timeout=60)


@pytest.mark.timeout(60)
def test_failed_rows_are_found_by_exit_status_or_signal(tmp_path):
    rows = _runmaker_joblog(tmp_path, _JOBS)
    assert [int(row[0]) for row in rows[1:]] == _RUN_BY_RUNMAKER
    assert [(row[6], row[7]) for row in rows[1:]] == [("0", "0"), ("3", "0"), ("0", "9")]
    # The README's reader: a job killed by a signal has Exitval 0, as in parallel.
    failed = subprocess.run(["awk", "-F\t", "NR > 1 && ($7 != 0 || $8 != 0) {print $1}", "runs.tsv"],
                            cwd=tmp_path, capture_output=True, timeout=30)
    assert failed.stdout == b"4\n6\n"


@pytest.mark.timeout(60)
def test_parallel_retry_failed_reruns_exactly_the_failed_jobs(tmp_path, parallel):
    _runmaker_joblog(tmp_path, _JOBS)
    assert _ran(tmp_path) == [2, 4, 6]
    _parallel(parallel, tmp_path, "--joblog", "runs.tsv", "--retry-failed")
    assert sorted(_ran(tmp_path)) == [4, 6]
    assert states(tmp_path / "runs.txt") == "d!-!-"  # parallel never writes the job file


@pytest.mark.timeout(60)
def test_parallel_resume_with_one_input_line_per_file_line_runs_what_the_log_lacks(tmp_path, parallel):
    _runmaker_joblog(tmp_path, _JOBS)
    _ran(tmp_path)
    shutil.copy(tmp_path / "runs.tsv", tmp_path / "runmaker.tsv")
    _parallel(parallel, tmp_path, "--joblog", "runs.tsv", "--resume", input_command=_LINE_PER_LINE)
    assert sorted(_ran(tmp_path)) == [5, 8]
    shutil.copy(tmp_path / "runmaker.tsv", tmp_path / "runs.tsv")
    _parallel(parallel, tmp_path, "--joblog", "runs.tsv", "--resume-failed", input_command=_LINE_PER_LINE)
    assert sorted(_ran(tmp_path)) == [4, 5, 6, 8]


@pytest.mark.timeout(60)
def test_parallel_resume_on_a_file_of_job_lines_only_takes_them_as_they_are(tmp_path, parallel):
    jobs = "".join(line + "\n" for line in _JOBS.splitlines() if line[:2] in (". ", "- "))
    _runmaker_joblog(tmp_path, jobs)
    assert _ran(tmp_path) == [2, 4, 6]
    _parallel(parallel, tmp_path, "--joblog", "runs.tsv", "--resume", input_command="cut -c3- runs.txt")
    assert sorted(_ran(tmp_path)) == [5, 8]


@pytest.mark.timeout(60)
def test_parallel_resume_fed_only_the_job_lines_of_a_commented_file_runs_the_wrong_jobs(tmp_path, parallel):
    # Why the README asks for one input line per file line: Seq is the line
    # number, and parallel takes it as the ordinal of its input line.
    _runmaker_joblog(tmp_path, _JOBS)
    _ran(tmp_path)
    _parallel(parallel, tmp_path, "--joblog", "runs.tsv", "--resume",
              input_command="grep '^[^#/ ] ' runs.txt | cut -c3-")
    assert sorted(_ran(tmp_path)) == [2, 5, 8]  # job 2, done already, ran again
