"""--help teaches each command (what it does, the file format, examples, exit
statuses); --version answers everywhere; FILE parameters complete file names."""

from __future__ import annotations

import os
import re

import pytest
from conftest import run

from runmaker import __version__

# What each command's --help names: its examples and its exit statuses.
_EXAMPLES = {
    "runmaker": ["runmaker -j8 runs.txt", "runmaker -r runs.txt", "runmaker --serve runs.txt"],
    "runset": ["runset --state '!e' --set . runs.txt", "runset --all --set=. runs.txt",
               "runset --add - runs.txt < more.txt"],
    "runwait": ["runwait -e --progress runs.txt", "runwait --timeout 3600 runs.txt"],
}
_EXIT_STATUSES = {
    "runmaker": ["0", "1", "2", "130"],
    "runset": ["0", "1", "2"],
    "runwait": ["0", "1", "2", "124", "130"],
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["runmaker", "runset", "runwait"])
def test_help_says_the_format_the_common_forms_and_the_exit_statuses(tmp_path, name):
    result = run(name, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == b""
    text = result.stdout.decode()
    assert re.search(r"^ +States: \. pending +\+ urgent +r running +d done +! failed +e error\n +- retired",
                     text, re.MULTILINE), text
    assert re.search(r"^ +FILE: one job per line, a state byte, a space, a shell command\.$", text,
                     re.MULTILINE)
    assert "\n  Examples:\n" in text
    for example in _EXAMPLES[name]:
        assert re.search(rf"^ +{re.escape(example)}", text, re.MULTILINE), example
    statuses = text[text.index("Exit status:"):text.index("Options:")]
    found = re.findall(r"(?:^|[;:] )(\d+) ", " ".join(statuses.split()))
    assert sorted(found, key=int) == _EXIT_STATUSES[name], statuses


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["runmaker", "runset", "runwait"])
def test_version_everywhere(tmp_path, name):
    result = run(name, "--version", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode() == f"{name}, version {__version__}\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name, args, expected", [
    ("runmaker", ["ru"], "runs.txt"),
    ("runmaker", ["-l", "ru"], "runs.txt"),
    ("runmaker", ["--joblog", "ru"], "runs.txt"),
    ("runmaker", ["--logdir", "ou"], "out"),
    ("runmaker", ["--token", "ru"], "runs.txt"),
    ("runset", ["ru"], "runs.txt"),
    ("runwait", ["ru"], "runs.txt"),
])
def test_completion_offers_file_names(tmp_path, name, args, expected):
    (tmp_path / "runs.txt").write_text(". true\n")
    (tmp_path / "out").mkdir()
    env = dict(os.environ, COMP_WORDS=" ".join([name, *args]), COMP_CWORD=str(len(args)),
               **{f"_{name.upper()}_PY_COMPLETE": "bash_complete"})  # prog name runset.py
    result = run(name, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    # "file": click's completion script then completes file and directory names.
    assert result.stdout.decode().splitlines() == [f"file,{args[-1]}"], result.stdout
