"""The NFS tests' lab: one set of booted guests (umlnfs.Lab) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import umlnfs


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[umlnfs.Lab]:
    """An NFS server and three clients, each its own Linux kernel, booted once.

    Skips (one reason) where guests cannot boot; a lab that should boot and
    does not is an error.  Everything it started is killed at the end.
    """
    why = umlnfs.prepare()
    if why:
        pytest.skip(why)
    booted = umlnfs.Lab(tmp_path_factory.mktemp("rmk-nfs"))
    try:
        booted.start()
        yield booted
    finally:
        booted.stop()
