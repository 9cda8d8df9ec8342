"""The NFS tests' lab: one set of booted guests (umlnfs.Lab) per session."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from . import umlnfs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # pytest then runs the teardowns: the guests are killed


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[umlnfs.Lab]:
    """An NFS server and three clients, each its own Linux kernel, booted once.

    Skips (one reason) where guests cannot boot; a lab that should boot and
    does not is an error.  Everything it started is killed at the end, on
    SIGTERM too (and by the kernel when this process dies: setpriv --pdeathsig).
    """
    why = umlnfs.prepare()
    if why:
        pytest.skip(why)
    booted = umlnfs.Lab(tmp_path_factory.mktemp("rmk-nfs"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        booted.start()
        yield booted
    finally:
        booted.stop()
        signal.signal(signal.SIGTERM, previous)
