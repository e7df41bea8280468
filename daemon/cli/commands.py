"""The `lifelong` command line; docs/reference.md describes every command. Exit codes: 0 ok,
1 runtime error, 2 usage or config error, 3 lock held or conflict, 4 no such version."""

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
    from daemon.service import logs

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
    from daemon.service.loop import Service

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
    from daemon.ingest.inbox import Inbox

    from daemon.ingest.names import display

    home = open_home(home_dir)
    inbox = Inbox(home)
    with _progress_reporter() as on_progress:
        outcomes, unsettled = inbox.drain(max_wait=max_wait, on_progress=on_progress)
    stuck = [{"file": display(name), "reason": entry.reason, "message": entry.message}
             for name, entry in sorted(inbox.stuck.items())]
    if as_json:
        emit({"files": [_outcome_doc(o) for o in outcomes], "unsettled": [display(name) for name in unsettled],
              "stuck": stuck})
    else:
        for outcome in outcomes:
            detail = f"{outcome.rows_train} train + {outcome.rows_eval} eval rows"
            if outcome.rows_rejected:
                detail += f", {outcome.rows_rejected} rejected"
            if outcome.outcome == "quarantined":
                detail = f"reason {outcome.reason}; see {display(outcome.dest.name)}.error.json"
            click.echo(f"{outcome.outcome:<11} {display(outcome.name)}: {detail}")
        for name in unsettled:
            why = inbox.waiting.get(name, "still being written")
            click.echo(f"waiting     {display(name)}: {why}; left in the inbox")
        for entry in stuck:
            click.echo(f"stuck       {entry['file']}: {entry['message']}; left in the inbox")
        if not outcomes and not unsettled and not stuck:
            click.echo(f"inbox {display(str(home.inbox))} is empty")
    if stuck:
        sys.exit(1)  # every other file was ingested; these need an operator


def _outcome_doc(outcome: Any) -> dict[str, Any]:
    from daemon.ingest.names import display

    return {"file": display(outcome.name), "outcome": outcome.outcome, "reason": outcome.reason,
            "rows": {"train": outcome.rows_train, "eval": outcome.rows_eval, "rejected": outcome.rows_rejected},
            "dest": display(str(outcome.dest))}


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
            from daemon.ingest.names import display

            self._tasks[name] = self._progress.add_task(display(name), total=total)
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
    from daemon.cli.status import collect, render

    document = collect(open_home(home_dir))
    if as_json:
        emit(document)
    else:
        click.echo(render(document))


@main.command()
@home_option
@json_option
@click.option("--now", is_flag=True, help="Run even if fewer than schedule.min_new_rows rows are pending.")
@click.option("--wait", is_flag=True, help="Block until the update is decided and print the decision.")
@errors_to_exit_codes
def update(home_dir: Path | None, as_json: bool, now: bool, wait: bool) -> None:
    """Ask for an update cycle: the running daemon takes it; with no daemon it runs here."""
    from daemon.update.request import request_update

    result = request_update(open_home(home_dir), now=now, wait=wait, as_json=as_json)
    if as_json:
        emit(result)


def open_registry(home: home_mod.Home, *, writable: bool = True):  # type: ignore[no-untyped-def]
    from daemon.service.hooks import champion_hook
    from daemon.update.launcher import spawn_materializer
    return home_mod.open_registry(home, on_switch=champion_hook(home.config.hooks.on_champion_change),
                                  recover=writable, materializer=spawn_materializer)


@main.command()
@home_option
@json_option
@errors_to_exit_codes
def versions(home_dir: Path | None, as_json: bool) -> None:
    """Every version: id, parent, created, strategy, decision, key metrics."""
    from daemon.cli.versions import render_versions, summary

    with open_registry(open_home(home_dir), writable=False) as registry:
        rows = [summary(registry, record) for record in registry.versions()]
    emit(rows) if as_json else click.echo(render_versions(rows, colour=_colour()))


@main.command()
@click.argument("version")
@home_option
@json_option
@errors_to_exit_codes
def show(version: str, home_dir: Path | None, as_json: bool) -> None:
    """One version: lineage, data, config, metrics, accuracy matrix, gate decision, audit."""
    from daemon.cli.versions import detail, render_detail

    with open_registry(open_home(home_dir), writable=False) as registry:
        doc = detail(registry, version)
    emit(doc) if as_json else click.echo(render_detail(doc, colour=_colour()))


def _colour() -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    import os

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@main.command()
@home_option
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Folder to write report.html into (default: HOME/report).")
@errors_to_exit_codes
def report(home_dir: Path | None, out: Path | None) -> None:
    """A self-contained HTML report: scores, accuracy matrix, forgetting, training, champion history."""
    from daemon.cli import report as report_mod

    home = open_home(home_dir)
    target = (out or report_mod.default_out(home.root)).absolute()
    report_mod.check_out(target)
    with open_registry(home, writable=False) as registry:
        doc = report_mod.collect(registry, home.root, home.config.gate.max_forgetting)
    click.echo(f"report: {report_mod.write(doc, target)}")


@main.command()
@click.argument("version")
@home_option
@click.option("--force", is_flag=True, help="Promote even if the version's gate did not pass.")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@errors_to_exit_codes
def promote(version: str, home_dir: Path | None, force: bool, reason: str) -> None:
    """Make VERSION the champion (its gate is re-checked unless --force)."""
    from daemon.update.gate import recheck
    from registry.errors import Conflict

    home = open_home(home_dir)
    with open_registry(home) as registry:
        record = registry.get(version)
        registry.require_weights(version)  # exit 4 before any gate check: its weights are gone
        if not force:
            decision = registry.decision_record(version)
            experience = str((record.info.get("data") or {}).get("experience"))
            gate = recheck(decision.metrics if decision else {}, experience, home.config.gate)
            if not gate.passed:
                raise Conflict(f"{version} does not pass the gate ({'; '.join(gate.reasons)}); "
                               "use --force to promote it anyway")
        entry = registry.promote(version, actor="cli", reason=reason or ("forced" if force else ""), manual=True)
    click.echo(f"champion {entry.from_ or 'none'} -> {entry.to}")


@main.command()
@home_option
@click.option("--to", "to", default=None, help="Roll back to this version instead of the previous champion.")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--pin", is_flag=True, help="Also pause automatic promotion (resume with `lifelong unpin`).")
@errors_to_exit_codes
def rollback(home_dir: Path | None, to: str | None, reason: str, pin: bool) -> None:
    """Champion back to the previous champion (or --to VERSION); the version left is never auto-promoted again."""
    with open_registry(open_home(home_dir)) as registry:
        if to is not None:
            registry.get(to)
        entry = registry.rollback(to=to, actor="cli", reason=reason, pin=pin)
    click.echo(f"champion {entry.from_} -> {entry.to} ({entry.from_} marked rolled_back)"
               + ("; automatic promotion paused" if pin else ""))


@main.command()
@home_option
@click.option("--reason", default="", help="Why; kept in the audit log.")
@errors_to_exit_codes
def unpin(home_dir: Path | None, reason: str) -> None:
    """Resume automatic promotion."""
    with open_registry(open_home(home_dir)) as registry:
        was = registry.pinned()
        registry.unpin(actor="cli", reason=reason)
    click.echo("automatic promotion resumed" if was else "automatic promotion was not paused")


@main.command("eval")
@home_option
@json_option
@click.option("--data", required=True, metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A labeled file in any inbox format (.jsonl, .ndjson, .csv, each also .gz, .parquet).")
@click.option("--version", "version", default=None, metavar="V", help="The version to score (default: the champion).")
@errors_to_exit_codes
def eval_(home_dir: Path | None, as_json: bool, data: Path, version: str | None) -> None:
    """Metrics of a version on a labeled file: accuracy, macro F1, per-label figures."""
    from daemon.update import inference

    home = open_home(home_dir)
    with open_registry(home, writable=False) as registry:
        target = inference.open_version(registry, version)
    doc = inference.evaluate(home, target, data)
    emit(doc) if as_json else click.echo(inference.task_of(home).render_eval(doc))


@main.command()
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@home_option
@json_option
@click.option("--file", "path", default=None, metavar="F",
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="Texts to label, one per line, or the \"text\" of each line of a .jsonl/.ndjson file; - is stdin.")
@click.option("--version", "version", default=None, metavar="V", help="The version to ask (default: the champion).")
@click.option("--max-new-tokens", "max_new_tokens", default=None, type=click.IntRange(1, 4096),
              help="causal_lm: the most tokens an answer may have (default 64).")
@errors_to_exit_codes
def predict(texts: tuple[str, ...], home_dir: Path | None, as_json: bool, path: Path | None,
            version: str | None, max_new_tokens: int | None) -> None:
    """Labels and scores of a version for TEXT... or the texts of --file (causal_lm: greedy answers)."""
    from daemon.update import inference
    from registry.errors import UsageError

    if bool(texts) == (path is not None):
        raise UsageError("give either TEXT arguments or --file, not both" if texts else "give TEXT arguments or --file")
    home = open_home(home_dir)
    chosen = list(texts) if texts else inference.read_texts(home, path)  # type: ignore[arg-type]
    with open_registry(home, writable=False) as registry:
        target = inference.open_version(registry, version)
    if max_new_tokens is not None and home.config.model.task != "causal_lm":
        raise UsageError(f"--max-new-tokens is for model.task = \"causal_lm\", not {home.config.model.task}")
    found = inference.predict(home, target, chosen, max_new_tokens)
    emit(found) if as_json else click.echo(inference.task_of(home).render_predict(found))


@main.command()
@click.argument("version")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@home_option
@errors_to_exit_codes
def export(version: str, dest: Path, home_dir: Path | None) -> None:
    """Write a self-contained Hugging Face model directory of VERSION to DEST."""
    with open_registry(open_home(home_dir)) as registry:
        path = registry.export(version, dest.absolute())
    click.echo(f"exported {version} to {path}")


@main.command("migrate-registry")
@home_option
@click.option("--metadata", "metadata_url", default="", help="Copy the metadata to this postgresql:// URL.")
@click.option("--artifacts", "artifacts_url", default="", help="Copy the version files to this s3:// URL.")
@errors_to_exit_codes
def migrate_registry(home_dir: Path | None, metadata_url: str, artifacts_url: str) -> None:
    """Copy the home's local registry to PostgreSQL and/or S3, verified; run it again to resume."""
    from registry.backends import open_backends
    from registry.errors import UsageError
    from registry.fsutil import remove_tree
    from registry.lock import PidLock
    from registry.migrate import migrate

    home = open_home(home_dir)
    if home.config.registry.metadata or home.config.registry.artifacts:
        raise UsageError("migrate-registry copies a local registry; this home's config already names remote ones")
    if not metadata_url and not artifacts_url:
        raise UsageError("name where to copy to: --metadata postgresql://... and/or --artifacts s3://...")
    if artifacts_url and not metadata_url:
        raise UsageError("--artifacts needs --metadata: the records that name the files go to PostgreSQL too")
    upload, check = home.state / "migrate-upload", home.state / "migrate-check"
    with PidLock(home.state / "daemon.lock", "lifelong run").acquire(timeout=0):  # the daemon is stopped
        for folder in (upload, check):
            remove_tree(folder)  # a run killed before left copies behind: start them afresh
        source = open_registry(home)
        meta, artifacts = open_backends(upload, metadata_url, artifacts_url, probe=True)
        checker = open_backends(check, "", artifacts_url)[1] if artifacts_url else None
        try:
            done = migrate(source, meta, artifacts,  # type: ignore[arg-type]
                           check=(check, checker) if checker is not None else None,
                           on_version=lambda version: click.echo(f"copied {version}"))
        finally:
            source.close()
            meta.close()  # type: ignore[union-attr]
            for folder in (upload, check):
                remove_tree(folder)
    click.echo(f"migrated: {len(done.versions)} versions ({len(done.files)} with files), {done.decisions} decisions,"
               f" {done.audit} audit entries, {len(done.pruned)} retention marks; {len(done.verified)} versions"
               " verified at the destination")
    click.echo("now set in lifelong.toml, [registry]:" + (f"\n  metadata = {metadata_url!r}" if metadata_url else "")
               + (f"\n  artifacts = {artifacts_url!r}" if artifacts_url else ""))


@main.command("sync-champion")
@home_option
@click.option("--every", default="", help="Keep following the champion, checking this often (e.g. 30s); "
              "without it, once.")
@errors_to_exit_codes
def sync_champion(home_dir: Path | None, every: str) -> None:
    """Point registry/champion at the registry's champion, fetched and verified (a serving host)."""
    import time

    from daemon.configbase import parse_duration
    from registry.errors import ArtifactStoreUnavailable, MetadataUnavailable, UsageError

    home = open_home(home_dir)
    try:
        interval = float(parse_duration(every)) if every else None
    except ValueError as exc:
        raise UsageError(f"--every: {exc}") from None
    if interval is not None and interval <= 0:
        raise UsageError("--every: must be more than 0s")
    last: object = ...
    while True:
        try:
            with open_registry(home, writable=False) as registry:
                champion = registry.sync_champion()
            if champion != last:
                click.echo(f"champion {champion} at {home.registry / 'champion'}" if champion else "no champion yet")
                last = champion
        except (MetadataUnavailable, ArtifactStoreUnavailable) as exc:
            if interval is None:
                raise
            click.echo(f"lifelong: {exc}; trying again in {interval:g}s", err=True)
        if interval is None:
            return
        time.sleep(interval)


@main.command()
@home_option
@json_option
@click.option("--dry-run", is_flag=True, help="Say what would be pruned; change nothing.")
@click.option("--wait", "wait_s", default=10.0, show_default=True, type=float,
              help="Seconds to wait for a registry change in progress before exiting 3.")
@errors_to_exit_codes
def gc(home_dir: Path | None, as_json: bool, dry_run: bool, wait_s: float) -> None:
    """Apply registry.keep_versions now: drop the weights of versions retention does not keep."""
    home = open_home(home_dir)
    keep = home.config.registry.keep_versions
    with open_registry(home, writable=False) as registry:  # gc takes the registry lock itself
        done = registry.gc(keep, dry_run=dry_run, lock_timeout=wait_s)
    freed = sum(done.bytes_freed.values())
    if as_json:
        emit({"dry_run": dry_run, "keep_versions": keep, "kept": done.kept, "bytes_freed": freed,
              "pruned": [{"version": v, "bytes": done.bytes_freed[v]} for v in done.pruned],
              "pruned_before": done.pruned_before})
        return
    verb = "would prune" if dry_run else "pruned"
    for version in done.pruned:
        click.echo(f"{verb:11} {version}  {done.bytes_freed[version] / 1e6:.1f} MB")
    click.echo(f"{'would free' if dry_run else 'freed'} {freed / 1e6:.1f} MB; {len(done.kept)} versions keep their "
               f"weights (registry.keep_versions = {keep}), {len(done.pruned_before)} pruned before")


if __name__ == "__main__":
    main()
