#!/usr/bin/env python3
"""Build runmaker.pyz: runmaker, runset, runwait and click in one file.

For hosts without pip (a cluster node): copy the one file there and run it
with any ``python3`` (3.10 or later)::

    python3 runmaker.pyz -j8 runs.txt          # runmaker
    python3 runmaker.pyz runset --summary runs.txt
    python3 runmaker.pyz runwait runs.txt
    ln -s runmaker.pyz runset && ./runset runs.txt   # or by the link's name

Usage: ``python3 tools/build_pyz.py [-o OUTPUT]`` (default ``runmaker.pyz``
in the current directory), run by a Python that has click (the
``.venv/bin/python`` of the README's set-up): its click, pure Python, goes
into the archive with its licence.  Standard library only (``zipapp``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import pathlib
import shutil
import sys
import tempfile
import zipapp

__all__ = ["build_pyz", "main"]

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_MODULES = ("runmaker.py", "runmaker_tcp.py", "runset.py", "runwait.py")  # runmaker_tcp.py if present

# The archive's entry point.  The command is the link's name when the archive
# is run through a symbolic link named runset or runwait, else a first
# argument "runset" or "runwait", else runmaker.
_MAIN = '''\
"""runmaker.pyz: runmaker; runset or runwait by first argument or by link name."""

import os
import sys

_name = os.path.basename(sys.argv[0]).removesuffix(".pyz")
if _name not in ("runset", "runwait"):
    _name = "runmaker"
    if sys.argv[1:2] in (["runset"], ["runwait"]):
        _name = sys.argv.pop(1)
if _name == "runset":
    import runset as _command
elif _name == "runwait":
    import runwait as _command
else:
    import runmaker as _command
_command.main(prog_name=_name)
'''


def _copy_click(staging: pathlib.Path) -> None:
    spec = importlib.util.find_spec("click")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"Error: {sys.executable} has no click to put in the archive; "
                         "run this script with the Python of a venv that has it (.venv/bin/python)")
    source = pathlib.Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(source, staging / "click", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # click's BSD licence asks that copies carry it.
    try:
        dist = importlib.metadata.distribution("click")
    except importlib.metadata.PackageNotFoundError:
        return
    for file in dist.files or ():
        if "LICENSE" in file.name.upper() or "LICENCE" in file.name.upper():
            shutil.copyfile(pathlib.Path(str(dist.locate_file(file))), staging / "click" / file.name)


def build_pyz(output: pathlib.Path) -> pathlib.Path:
    """Write the archive to ``output`` (made executable); return its path."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = pathlib.Path(tmp)
        for module in _MODULES:
            if (_ROOT / module).exists():
                shutil.copyfile(_ROOT / module, staging / module)
        _copy_click(staging)
        (staging / "__main__.py").write_text(_MAIN)
        zipapp.create_archive(staging, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description="Build runmaker.pyz (runmaker, runset, runwait, click).")
    parser.add_argument("-o", "--output", type=pathlib.Path, default=pathlib.Path("runmaker.pyz"),
                        help="where to write the archive (default: runmaker.pyz)")
    output = build_pyz(parser.parse_args().output)
    print(f"built {output}: python3 {output} -j8 runs.txt | runset ... | runwait ...")  # noqa: T201


if __name__ == "__main__":
    main()
