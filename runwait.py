#!/usr/bin/env python3
"""runwait: wait until every job of a runmaker job file is finished.

Finished means no job pending (``.``, ``+``) and none running with its
worker alive; a lost job (``r`` that no worker holds) counts as an error.
Looks at the file every ``--interval`` seconds without holding any lock a
worker would wait for.  A thin command over ``runmaker.wait_for_jobs``.
"""

from __future__ import annotations

import os
import signal
import sys

try:
    import click
except ModuleNotFoundError as _missing:  # a checkout run by a Python that lacks click
    if _missing.name != "click":
        raise
    sys.exit("Error: runwait needs the Python package click: "
             "apt install python3-click, or pip install click in a venv, "
             "or run runmaker.pyz (README: Install)")

import runmaker

__all__ = ["main"]

_EXIT_TIMEOUT = 124  # as timeout(1)
_EXIT_INTERRUPTED = 130
_CELLS = 16  # of the bar, as runmaker4's
_DEFAULT_WIDTH = 80  # columns, when the terminal does not say


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status_line(counts: runmaker.JobCounts, width: int) -> str:
    """The live bar of a terminal, as much of it as fits in ``width`` columns.

    In full: cells, jobs processed, counts per state, elapsed time and ETA.
    Narrower, parts go whole, never cut mid-word: the elapsed time, the done
    and pending counts, the running count, half the cells, the failures, the
    cells, the ETA.  Failed, error, lost and unknown counts appear once there
    are any; a finished look shows the time it took instead of an ETA.
    """
    troubles = [f"{n} {name}" for n, name in ((counts.failed, "failed"), (counts.error, "error"),
                                              (counts.lost, "lost"), (counts.unknown, "unknown")) if n]
    if counts.finished:
        every = [f"{counts.done} done", *troubles]
        long_time = short_time = f"{_clock(counts.elapsed)} elapsed"
    else:
        every = [f"{counts.done} done", f"{counts.running} running", f"{counts.pending} pending", *troubles]
        short_time = "ETA " + ("--:--" if counts.eta is None else _clock(counts.eta))
        long_time = f"{_clock(counts.elapsed)} elapsed, {short_time}"
    busy = [f"{counts.running} running", *troubles] if counts.running else troubles
    fraction = f"{counts.processed}/{counts.total}"
    full_bar = f"[{runmaker.progress_cells(counts)}] {fraction}"
    half_bar = f"[{runmaker.progress_cells(counts, _CELLS // 2)}] {fraction}"
    for head, parts, time_taken in (
        (full_bar, every, long_time), (full_bar, every, short_time),
        (full_bar, busy, long_time), (full_bar, busy, short_time),
        (full_bar, troubles, short_time), (half_bar, troubles, short_time),
        (half_bar, [], short_time), (fraction, [], short_time), (fraction, [], ""),
    ):
        line = " | ".join(part for part in (head, ", ".join(parts), time_taken) if part)
        if len(line) <= width:
            return line
    return ""


class _Progress:
    """Shows every look on stderr: a bar redrawn in place on a terminal,
    elsewhere runmaker4's progress line each time it changes."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.drawn = False
        self.last = ""

    def __call__(self, counts: runmaker.JobCounts) -> None:
        if self.live:
            # The size is read again for every redraw, so the bar follows a
            # resized window.  One column stays free: a line that fills the
            # last column wraps on some terminals and \r could not redraw it.
            try:
                width = os.get_terminal_size(sys.stderr.fileno()).columns or _DEFAULT_WIDTH
            except OSError:
                width = _DEFAULT_WIDTH
            click.echo("\r" + _status_line(counts, width - 1) + "\x1b[K", err=True, nl=False)
            self.drawn = True
        elif (line := runmaker.progress_line(counts)) != self.last:
            click.echo(line, err=True)
            self.last = line

    def close(self) -> None:
        if self.drawn:
            click.echo("", err=True)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(cls=runmaker.OneLineErrorCommand, context_settings=runmaker.CLICK_CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--progress", is_flag=True,
              help="Show progress on stderr: a live bar on a terminal, else a line when counts change.")
@click.option("-e", "--use-exit-status", is_flag=True, help="Exit 1 unless every job ended d (or is -).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up after SECONDS: exit 124.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between looks at FILE.")
@click.version_option(runmaker.__version__, "--version", prog_name="runwait")
def main(file: str, progress: bool, use_exit_status: bool, timeout: float | None, interval: float) -> None:
    """Wait until no job of FILE is pending or running; name the failed and lost ones.

    Watches FILE without holding up its workers, on this host or others.

    \b
    FILE: one job per line, a state byte, a space, a shell command.
    States: . pending  + urgent  r running  d done  ! failed  e error
            - retired (left out of the counts).
    An r job whose worker died is lost: it counts as an error, and is not
    waited for.  At the end the failed, error and lost jobs are named by
    line on stdout, as ranges runset takes.

    \b
    Examples:
        runwait runs.txt                          wait, then name failures
        runwait -p runs.txt                       with progress on stderr
        runwait -e --progress runs.txt && mail -s 'runs done' me < /dev/null
        runwait --timeout 3600 runs.txt || echo 'not done within an hour'

    \b
    Exit status: 0 finished; 1 with -e when a job is not d or -; 124 after
    --timeout; 2 usage or input error; 130 interrupted (SIGINT, SIGTERM,
    SIGHUP).
    """
    show = _Progress() if progress else None
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)  # ends like Ctrl-C: exit 130
    try:
        counts = runmaker.wait_for_jobs(file, interval=interval, timeout=timeout, progress=show,
                                        warn=runmaker.echo_to_stderr)
    except KeyboardInterrupt:
        sys.exit(_EXIT_INTERRUPTED)
    finally:
        if show is not None:
            show.close()
    for kind, lines in counts.unsuccessful.items():
        click.echo(f"{file}: {kind}: {lines}")
    if counts.timed_out:
        click.echo(f"runwait: {file}: timed out with {counts.pending} jobs pending, "
                   f"{counts.running} running", err=True)
        sys.exit(_EXIT_TIMEOUT)
    sys.exit(1 if use_exit_status and counts.errors else 0)


if __name__ == "__main__":
    main()
