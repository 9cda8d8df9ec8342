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

import click

import runmaker

__all__ = ["main"]

_EXIT_TIMEOUT = 124  # as timeout(1)
_EXIT_INTERRUPTED = 130


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status_line(counts: runmaker.JobCounts) -> str:
    """The live bar of a terminal: cells, counts per state, elapsed time, ETA.

    Failed, error, lost and unknown counts appear once there are any, so the
    line fits 80 columns for all but huge files.
    """
    parts = [f"{counts.done} done", f"{counts.running} running", f"{counts.pending} pending"]
    parts += [f"{n} {name}" for n, name in ((counts.failed, "failed"), (counts.error, "error"),
                                            (counts.lost, "lost"), (counts.unknown, "unknown")) if n]
    eta = "--:--" if counts.eta is None else _clock(counts.eta)
    return (f"[{runmaker.progress_cells(counts)}] {counts.processed}/{counts.total} | "
            f"{', '.join(parts)} | {_clock(counts.elapsed)} elapsed, ETA {eta}")


class _Progress:
    """Shows every look on stderr: a bar redrawn in place on a terminal,
    elsewhere runmaker4's progress line each time it changes."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.drawn = False
        self.last = ""

    def __call__(self, counts: runmaker.JobCounts) -> None:
        if self.live:
            try:
                width = os.get_terminal_size(sys.stderr.fileno()).columns or 80
            except OSError:
                width = 80
            # Cut to the width: a wrapped line could not be redrawn with \r.
            click.echo("\r" + _status_line(counts)[: width - 1] + "\x1b[K", err=True, nl=False)
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
def main(file: str, progress: bool, use_exit_status: bool, timeout: float | None, interval: float) -> None:
    """Wait until no job of FILE is pending or running; name the failed and lost ones.

    Exit status: 0 finished; 1 with -e when a job is not d or -; 124 after
    --timeout; 2 usage or input error; 130 interrupted (SIGINT, SIGTERM,
    SIGHUP).

    \b
    Example:
        runwait -e --progress runs.txt && mail -s 'runs done' me < /dev/null
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
