"""Installing and deploying: the README's set-up commands, runmaker.pyz, a Python without click."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, states

_SETUP = re.compile(r"\A# runmaker\n\n(?:[^\n]+\n)+\n```sh\n(?P<run>[^\n]+)\n(?P<test>[^\n]+)\n```\n")


def _readme_setup() -> dict[str, str]:
    match = _SETUP.match((ROOT / "README.md").read_text())
    assert match, "README.md must start with its title, an intro, then the two set-up commands"
    return match.groupdict()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}


def _checkout_copy(destination):
    """The checkout's tracked-looking files, as a fresh clone would have them."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs.txt", "runmaker.pyz"))
    shutil.copy(ROOT / "examples" / "runs.txt", destination / "examples" / "runs.txt")
    return destination


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def _build_pyz(tmp_path):
    pyz = tmp_path / "bin" / "runmaker.pyz"
    pyz.parent.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_pyz.py"), "-o", str(pyz)],
                            cwd=tmp_path, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return pyz


def test_the_readme_starts_with_the_two_setup_commands_and_ci_runs_the_second():
    setup = _readme_setup()
    assert setup["run"] == ("python3 -m venv .venv && .venv/bin/pip install . && "
                            "cp examples/runs.txt runs.txt && .venv/bin/runmaker -j2 runs.txt")
    assert setup["test"] == ("python3 -m venv .venv && .venv/bin/pip install '.[test]' && "
                             ".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup["test"] in ci


@pytest.mark.timeout(300)
def test_the_readmes_first_command_works_word_for_word_in_a_fresh_copy(tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable: pip cannot fetch the build back-end")
    if subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode:
        pytest.skip(f"{sys.executable} has no ensurepip (Debian: apt install python3-venv)")
    copy = _checkout_copy(tmp_path / "runmaker")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A base interpreter, never a venv's: the README's "python3".
    (bin_dir / "python3").symlink_to(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    env = dict(_clean_env(), PATH=f"{bin_dir}:/usr/bin:/bin", LETTER_SLEEP="0.1")
    result = subprocess.run(["bash", "-c", _readme_setup()["run"]], cwd=copy, env=env,
                            capture_output=True, timeout=280)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert states(copy / "runs.txt") == "dddd"
    assert result.stdout.decode().count('): exit 0 "sh examples/letter.sh ') == 4


@pytest.mark.timeout(120)
def test_runmaker_pyz_runs_a_job_file_and_reaches_runset_and_runwait(tmp_path):
    pyz = _build_pyz(tmp_path)
    jobs = tmp_path / "runs.txt"
    jobs.write_text(". echo one\n. echo two\n. exit 3\n")
    env = _clean_env()
    # -I: no site-packages, no script directory: click must come from the archive.
    python = [sys.executable, "-I", str(pyz)]
    worker = subprocess.run(python + ["-j2", "runs.txt"], cwd=tmp_path, env=env, capture_output=True,
                            timeout=60)
    assert worker.returncode == 1, worker.stderr
    assert states(jobs) == "dd!"
    assert re.search(rb'^status \([^,]+,\d+\): exit 3 "exit 3"$', worker.stdout, re.MULTILINE)

    listed = subprocess.run(python + ["runset", "runs.txt"], cwd=tmp_path, env=env, capture_output=True,
                            timeout=30)
    assert (listed.returncode, listed.stdout) == (0, b"1: d - echo one\n2: d - echo two\n3: ! - exit 3\n")
    reset = subprocess.run(python + ["runset", "--set", ".", "runs.txt", "3"], cwd=tmp_path, env=env,
                           capture_output=True, timeout=30)
    assert reset.returncode == 0, reset.stderr
    assert states(jobs) == "dd."
    waited = subprocess.run(python + ["runwait", "--timeout", "0.5", "--interval", "0.1", "runs.txt"],
                            cwd=tmp_path, env=env, capture_output=True, timeout=30)
    assert waited.returncode == 124, waited.stderr

    # By link name, run as a program (its #! line finds python3 on PATH).
    for name in ("runset", "runwait"):
        (pyz.parent / name).symlink_to(pyz.name)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '/usr/bin:/bin')}"
    subprocess.run(python + ["-j1", "runs.txt"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    summary = subprocess.run([str(pyz.parent / "runset"), "--summary", "runs.txt"], cwd=tmp_path, env=env,
                             capture_output=True, timeout=30)
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.decode().split("\n")[-2].split() == ["3", "jobs"]
    done = subprocess.run([str(pyz.parent / "runwait"), "-e", "runs.txt"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=30)
    assert (done.returncode, done.stdout) == (1, b"runs.txt: failed (!): 3\n")
    usage = subprocess.run([str(pyz.parent / "runwait"), "--bogus"], cwd=tmp_path, env=env,
                           capture_output=True, timeout=30)
    assert usage.returncode == 2
    assert usage.stderr.decode().splitlines() == ["Error: No such option '--bogus'. (see 'runwait --help')"]


@pytest.mark.parametrize("name", ["runmaker", "runset", "runwait"])
def test_a_python_without_click_gets_one_line_saying_what_to_install(tmp_path, name):
    jobs = tmp_path / "runs.txt"
    jobs.write_text(". echo one\n")
    # -S: no site-packages, so no click; the script's directory is still on the path.
    result = subprocess.run([sys.executable, "-S", str(ROOT / f"{name}.py"), "runs.txt"], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, timeout=30)
    assert subprocess.run([sys.executable, "-S", "-c", "import click"], env=_clean_env(),
                          capture_output=True).returncode != 0, "this Python finds click even with -S"
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        (f"Error: {name} needs the Python package click: apt install python3-click, "
         "or pip install click in a venv, or run runmaker.pyz (README: Install)")
    ]
    assert jobs.read_text() == ". echo one\n"
