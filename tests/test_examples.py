"""Every example in examples/ runs once, as the README shows it."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, run, states


@pytest.mark.timeout(60)
def test_the_readme_example_runs_every_letter_job(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copy(tmp_path / "examples" / "runs.txt", tmp_path / "runs.txt")
    env = dict(os.environ, LETTER_SLEEP="0.1")
    result = run("runmaker", "-j2", "runs.txt", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert states(tmp_path / "runs.txt") == "dddd"
    out = result.stdout.decode()
    for letter in "abcd":
        assert re.search(rf"^stdout \([^,]+,\d+\): {letter}$", out, re.M)
        assert re.search(rf"^stdout \([^,]+,\d+\): {letter.upper()}$", out, re.M)
        assert f"executing `sh examples/letter.sh {letter}'" in out
    assert out.count('): exit 0 "sh examples/letter.sh ') == 4


@pytest.mark.timeout(60)
def test_the_slurm_script_starts_one_worker_with_a_log(tmp_path):
    # Outside Slurm the script is a plain shell script: run it with a
    # `runmaker` on PATH that is this checkout's.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "runmaker"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "runmaker.py"}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    jobs = tmp_path / "runs.txt"
    jobs.write_text(". echo one\n. echo two\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "slurm.sh"), str(jobs)],
        cwd=tmp_path, env=env, capture_output=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert states(jobs) == "dd"
    log = (tmp_path / "runs.log").read_text()
    assert log.count(".-> echo ") == 2
    assert ': stdout (' in log and "): one\n" in log and "): two\n" in log


@pytest.mark.timeout(30)
def test_the_slurm_script_needs_a_job_file(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "slurm.sh")], cwd=tmp_path, capture_output=True, timeout=30,
    )
    assert result.returncode != 0
    assert b"usage: sbatch --array=1-N slurm.sh" in result.stderr
