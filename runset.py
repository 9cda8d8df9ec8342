#!/usr/bin/env python3
"""runset: list, select and change the jobs of a runmaker job file.

Safe while workers run on it, on this host or others: state bytes change
under their job locks, new jobs and directives are appended whole, and the
file is never rewritten (as a text editor would).  A thin command over
``runmaker.list_jobs``, ``runmaker.set_job_states`` and
``runmaker.append_jobs``.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

try:
    import click
except ModuleNotFoundError as _missing:  # a checkout run by a Python that lacks click
    if _missing.name != "click":
        raise
    sys.exit("Error: runset needs the Python package click: "
             "apt install python3-click, or pip install click in a venv, "
             "or run runmaker.pyz (README: Install)")

import runmaker

__all__ = ["main"]


def _max_running(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> int | Literal["none"] | None:
    """--max-running: a whole number of jobs, or ``none`` to lift the cap."""
    if value is None:
        return None
    if value == "none":
        return "none"
    if value.isascii() and value.isdigit():
        cap = runmaker.parse_cap(value.encode())
        if cap is None:
            raise click.BadParameter(
                f"{runmaker.shorten_number(value)} is above the largest cap, {runmaker.MAX_CAP}", ctx, param
            )
        return cap
    raise click.BadParameter(f"{value!r} is neither a whole number nor 'none'", ctx, param)


def _commands(adds: tuple[str, ...]) -> list[bytes]:
    """The commands of the --add options; ``-`` reads stdin, one per line.

    Bytes from stdin stay bytes (commands are never decoded to run them);
    blank lines are skipped.
    """
    commands: list[bytes] = []
    for add in adds:
        if add == "-":
            commands.extend(line for line in sys.stdin.buffer.read().split(b"\n") if line.strip())
        else:
            commands.append(os.fsencode(add))
    return commands


def _check_combination(
    selection: runmaker.JobSelection,
    *,
    appending: bool,
    setting: bool,
    showing: list[str],
    high: bool,
    adding: bool,
    killing: bool,
) -> None:
    """Refuse mixed kinds of work with a usage error (exit 2).

    Appending (--add, --max-running, --barrier) takes no selection and no
    other action; --set and --kill list nothing; --high needs --add.
    """
    if high and not adding:
        raise click.UsageError("--high goes with --add (it makes the new jobs '+')")
    if killing and (setting or showing or appending):
        raise click.UsageError("--kill takes a selection of jobs and no other action")
    if appending and (setting or showing or not selection.is_empty()):
        raise click.UsageError(
            "--add, --max-running and --barrier only append: they take no JOB, "
            "--all, --state, --grep, --set or listing option"
        )
    if setting and showing:
        raise click.UsageError(f"--set does not list (drop {showing[0]}); run runset again to see the result")
    if "--list" in showing and "--summary" in showing:
        raise click.UsageError("choose one of --list and --summary")


def _show_kills(file: str, report: runmaker.KillReport) -> int:
    """Print what --kill did (``LINE: killed`` on stdout, the rest on stderr); the exit status."""
    for line in report.not_running:
        click.echo(f"runset: {file}:{line}: not running; not killed", err=True)
    click.echo("".join(f"{line}: killed\n" for line in report.killed), nl=False)
    for line, why in report.other:
        click.echo(f"runset: {file}:{line}: {why}", err=True)
    return 1 if report.not_running or report.other else 0


@click.command(cls=runmaker.OneLineErrorCommand, context_settings=runmaker.CLICK_CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("-a", "--all", "all_jobs", is_flag=True, help="Select every job.")
@click.option("--state", metavar="CHARS", help="Select jobs in any of these states, e.g. '!e'.")
@click.option("--grep", metavar="REGEX", help="Select jobs whose command matches REGEX (Python re.search).")
@click.option("-l", "--list", "list_jobs", is_flag=True,
              help="List the selected jobs: LINE: S - COMMAND (the default).")
@click.option("--json", "as_json", is_flag=True, help="List as JSON lines (with --summary: one JSON object).")
@click.option("--summary", is_flag=True, help="Count the selected jobs per state instead of listing them.")
@click.option("-s", "--set", "set_state", metavar="STATE",
              help="Set the selected jobs to STATE (one of . + d ! e -); running jobs are refused.")
@click.option("--add", multiple=True, metavar="COMMAND",
              help="Append a job running COMMAND (repeatable); '-' reads commands from stdin, one a line.")
@click.option("--high", is_flag=True, help="With --add: the new jobs are '+', run before every '.' job.")
@click.option("--max-running", metavar="N|none", callback=_max_running,
              help="Append '#runmaker max-running N': at most N jobs at once (0 pauses, 'none' lifts it).")
@click.option("--barrier", is_flag=True,
              help="Append '#runmaker barrier': jobs below start once all above are d or -.")
@click.option("--kill", is_flag=True,
              help="Stop the selected running jobs wherever they run (they end '!'); wait for them.")
@click.version_option(runmaker.__version__, "--version", prog_name="runset")
def main(
    file: str, jobs: tuple[str, ...], all_jobs: bool, state: str | None, grep: str | None,
    list_jobs: bool, as_json: bool, summary: bool, set_state: str | None,
    add: tuple[str, ...], high: bool, max_running: int | Literal["none"] | None, barrier: bool,
    kill: bool,
) -> None:
    """List, select and change the jobs of the job FILE while workers run.

    Safe beside workers on any host, where a text editor would replace the
    file: states change under each job's lock, new lines are appended whole.

    \b
    FILE: one job per line, a state byte, a space, a shell command.
    States: . pending  + urgent  r running  d done  ! failed  e error
            - retired;  lines starting # or / are comments.
    JOB: a line number (as an editor shows it) or a range A-B.
    Selections (JOB..., --all, --state, --grep) combine with AND; with none
    at all every job is listed, and --set refuses.  A command added with
    leading spaces is a child of the nearest less-indented job above it: it
    runs once that job is done.  --add prints the line of each job it appends.

    \b
    Examples:
        runset runs.txt                          list every job
        runset runs.txt 12 30-40                 list some
        runset --summary runs.txt                count jobs per state
        runset --state '!e' --set . runs.txt     rerun failed jobs
        runset --all --set=. runs.txt            rerun everything
        runset --grep 'seed=7' --set - runs.txt  retire some jobs
        runset --add 'make report' runs.txt      append a job, print its line
        runset --add - runs.txt < more.txt       append jobs from a file
        line=$(runset --add 'make report' runs.txt)
        runset --add '  make upload' runs.txt    a child of the job above
        runset --kill runs.txt 12                stop job 12 wherever it runs
        runset --max-running 0 runs.txt          pause (none: go on)

    \b
    Exit status: 0 done; 1 --set left a running job unchanged, or --kill
    found a job not running (named on stderr); 2 usage or input error (one
    Error: line, the file untouched).
    """
    selection = runmaker.JobSelection(jobs=jobs, all_jobs=all_jobs, states=state, grep=grep)
    appending = bool(add) or max_running is not None or barrier
    flags = (("--list", list_jobs), ("--json", as_json), ("--summary", summary))
    showing = [name for name, on in flags if on]
    _check_combination(selection, appending=appending, setting=set_state is not None,
                       showing=showing, high=high, adding=bool(add), killing=kill)
    if appending:
        added = runmaker.append_jobs(file, _commands(add), high=high, max_running=max_running,
                                     barrier=barrier, warn=runmaker.echo_to_stderr)
        click.echo("".join(f"{line}\n" for line in added), nl=False)
    elif kill:
        sys.exit(_show_kills(file, runmaker.kill_jobs(file, selection, warn=runmaker.echo_to_stderr)))
    elif set_state is not None:
        refused = runmaker.set_job_states(file, selection, set_state, warn=runmaker.echo_to_stderr)
        for line in refused:
            click.echo(f"runset: {file}:{line}: running (a worker holds its lock); not changed", err=True)
        sys.exit(1 if refused else 0)
    else:
        listing = runmaker.list_jobs(file, selection, as_json=as_json, summary=summary,
                                     warn=runmaker.echo_to_stderr)
        for text in listing:
            # color=True: as listed, or click would cut ANSI escapes out of
            # the commands whenever stdout is no terminal (grep must find them).
            click.echo(text, nl=False, color=True)


if __name__ == "__main__":
    main()
