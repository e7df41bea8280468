"""The `lifelong` command line (CONTRACT section 4). Exit codes: 0 ok, 1 runtime error,
2 usage or config error, 3 lock held or conflict, 4 no such version."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from daemon import __version__
from daemon import home as home_mod
from registry.errors import LifelongError

log = logging.getLogger("lifelong")
PROGRESS_MIN_BYTES = 4 << 20


def home_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--home", "home_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="The home directory (default: $LIFELONG_HOME, else ./lifelong-home).")(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(command)


def errors_to_exit_codes(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LifelongError as exc:
            click.echo(f"lifelong: error: {exc}", err=True)
            sys.exit(exc.exit_code)
    return wrapper


def open_home(home_dir: Path | None) -> home_mod.Home:
    return home_mod.open_home(home_mod.resolve(home_dir))


def emit(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lifelong")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """lifelong: a continual-learning model-update daemon."""
    from daemon import logs

    logs.setup(log_level)


@main.command()
@home_option
@click.option("--model", default="embedded:minilm", show_default=True,
              help="Base model: embedded:minilm, a local Hugging Face model directory, or a hub id.")
@errors_to_exit_codes
def init(home_dir: Path | None, model: str) -> None:
    """Create the home and a commented lifelong.toml."""
    root = home_mod.resolve(home_dir)
    home, created = home_mod.init(root, model)
    if created:
        click.echo(f"initialised {root}\n  config: {home.config_path}\n  drop labeled files into: {home.inbox}")
    else:
        click.echo(f"{root} is already initialised; {home.config_path} left as it is")


@main.command()
@home_option
@errors_to_exit_codes
def run(home_dir: Path | None) -> None:
    """Run the daemon in the foreground: watch, ingest, update, serve metrics. SIGTERM stops it."""
    from daemon.service import Service

    sys.exit(Service(open_home(home_dir)).run())


@main.command()
@home_option
@json_option
@click.option("--once", is_flag=True, help="Ingest what is in the inbox now, then exit (the default).")
@click.option("--max-wait", default=60.0, show_default=True, type=float,
              help="Seconds to wait for files still being written to settle.")
@errors_to_exit_codes
def ingest(home_dir: Path | None, as_json: bool, once: bool, max_wait: float) -> None:
    """Ingest what is in the inbox now, then exit."""
    from daemon.inbox import Inbox

    home = open_home(home_dir)
    inbox = Inbox(home)
    with _progress_reporter() as on_progress:
        outcomes, unsettled = inbox.drain(max_wait=max_wait, on_progress=on_progress)
    if as_json:
        emit({"files": [_outcome_doc(o) for o in outcomes], "unsettled": unsettled})
        return
    for outcome in outcomes:
        detail = f"{outcome.rows_train} train + {outcome.rows_eval} eval rows"
        if outcome.rows_rejected:
            detail += f", {outcome.rows_rejected} rejected"
        if outcome.outcome == "quarantined":
            detail = f"reason {outcome.reason}; see {outcome.dest}.error.json"
        click.echo(f"{outcome.outcome:<11} {outcome.name}: {detail}")
    for name in unsettled:
        click.echo(f"waiting     {name}: still being written; left in the inbox")
    if not outcomes and not unsettled:
        click.echo(f"inbox {home.inbox} is empty")


def _outcome_doc(outcome: Any) -> dict[str, Any]:
    return {"file": outcome.name, "outcome": outcome.outcome, "reason": outcome.reason,
            "rows": {"train": outcome.rows_train, "eval": outcome.rows_eval, "rejected": outcome.rows_rejected},
            "dest": str(outcome.dest)}


class _progress_reporter:
    """A progress bar for large files, only on a terminal."""

    def __enter__(self) -> Callable[[str, int, int], None] | None:
        self._progress = None
        if not sys.stderr.isatty():
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
        from rich.console import Console

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._progress.start()
        self._tasks: dict[str, Any] = {}
        return self._update

    def _update(self, name: str, done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=min(done, total))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


@main.command()
@home_option
@json_option
@errors_to_exit_codes
def status(home_dir: Path | None, as_json: bool) -> None:
    """Champion, pending rows, last and next update, pin state, daemon pid."""
    from daemon.status import collect, render

    document = collect(open_home(home_dir))
    if as_json:
        emit(document)
    else:
        click.echo(render(document))


if __name__ == "__main__":
    main()
