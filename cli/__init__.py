"""The `labtel` command line: run the collector and the query API, migrate the schema."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from labtel.cli import keys, query
from labtel.sdk import __version__

app = typer.Typer(
    name="labtel",
    help="labtel: an OpenTelemetry-native event pipeline for laboratories and observatories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
"""Messages, each on one line however wide the terminal (or none: a log, CI)."""

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="otel-config.yaml (default: $LABTEL_CONFIG, ./otel-config.yaml, the built-in one)",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory of the embedded store (overrides the exporter's chdb:// endpoint)"),
]
ReadyFileOption = Annotated[
    Path | None,
    typer.Option("--ready-file", help="Write the listening addresses here as JSON once ready"),
]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(config_path: Path | None, data_dir: Path | None):  # type: ignore[no-untyped-def]
    from labtel.collector.config import ConfigError, default_config_path, load_config
    from labtel.collector.service import embedded_endpoint

    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        console.print(f"[red]labtel: configuration error in {escape(str(path))}:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    if data_dir is not None:
        exporters = {
            name: exporter.model_copy(update={"endpoint": embedded_endpoint(data_dir, exporter.endpoint)})
            if hasattr(exporter, "endpoint")
            else exporter
            for name, exporter in config.exporters.items()
        }
        config = config.model_copy(update={"exporters": exporters})
    return path, config


async def _run_until_signalled(service, ready_file: Path | None, what: str) -> None:  # type: ignore[no-untyped-def]
    from labtel.collector.storage.interrupt import StartInterrupted

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(service.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # asked to stop while starting (migrating a big store, say)
        console.print("labtel: stopping during start-up...")
        await service.interrupt_start()
    try:
        await starting  # when it fails, what it started is stopped
    except StartInterrupted as interrupted:
        console.print(f"labtel: {interrupted}")
        return
    finally:
        stopping.cancel()
    if not stop.is_set():  # else it started after all, before the stop took effect
        _announce(service, ready_file, what)
        await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # a second Ctrl-C stops at once
    console.print("labtel: stopping; storing what was accepted...")
    await service.shutdown()
    console.print("labtel: stopped.")


def _announce(service, ready_file: Path | None, what: str) -> None:  # type: ignore[no-untyped-def]
    """Say that the service runs and where it listens; write `ready_file` (tests wait for it)."""
    console.print(
        f"[bold green]labtel {__version__}[/bold green] {what} is running (storage: {service.storage_description()})"
    )
    listening = {}
    for listener in service.listeners():
        console.print(f"  {listener.kind:<10} listening on {listener.describe()}")
        listening[listener.kind] = listener.address
    console.print("  Press Ctrl-C to stop.")
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": listening}))
        tmp.replace(ready_file)


def _serve(
    config_path: Path | None,
    data_dir: Path | None,
    ready_file: Path | None,
    log_level: str,
    extensions: bool,
    what: str,
) -> None:
    from labtel.collector.config import ConfigError
    from labtel.collector.service import Service
    from labtel.collector.storage.client import StorageError

    _setup_logging(log_level)
    _, config = _load(config_path, data_dir)
    try:
        service = Service(config, extensions=extensions)
        asyncio.run(_run_until_signalled(service, ready_file, what))
    except ConfigError as error:
        console.print(f"[red]labtel: configuration error:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    except (OSError, StorageError) as error:
        console.print(f"[red]labtel: cannot start:[/red] {escape(_explain(error))}")
        raise typer.Exit(1) from None


def _explain(error: Exception) -> str:
    """An error as one line, with a hint when it may be the embedded store's lock held by a process
    the storage layer could not name."""
    text = " ".join(str(error).split())
    if " is in use by " in text:
        return text  # names the holder
    if "chdb engine" in text or "EmbeddedServer" in text or "lock" in text.lower():
        return f"{text} (the embedded store's directory can be open in one process only: is labtel already running?)"
    return text


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    ready_file: ReadyFileOption = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the collector and the query API in one process, with embedded storage by default."""
    _serve(config, data_dir, ready_file, log_level, extensions=True, what="collector + query API")


@app.command()
def collector(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    ready_file: ReadyFileOption = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the collector only (receivers, processors, exporters); the query API runs elsewhere."""
    _serve(config, data_dir, ready_file, log_level, extensions=False, what="collector")


@app.command()
def api(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    endpoint: Annotated[
        str | None, typer.Option(help="host:port to listen on (default: the query_api extension's)")
    ] = None,
    ready_file: ReadyFileOption = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the query API only, against the storage of the config's ClickHouse exporter."""
    from labtel.collector.config import QueryApiConfig

    _setup_logging(log_level)
    _path, cfg = _load(config, data_dir)
    ext = next(iter(cfg.query_apis().values()), QueryApiConfig())
    if endpoint:
        ext = ext.model_copy(update={"endpoint": QueryApiConfig(endpoint=endpoint).endpoint})
    exporters = {name: e for name, e in cfg.exporters.items() if name == ext.storage} or cfg.exporters
    auth = {ext.auth.authenticator: cfg.extensions[ext.auth.authenticator]} if ext.auth else {}
    api_only = cfg.model_copy(
        update={
            "extensions": {"query_api": ext, **auth},
            "exporters": exporters,
            "service": cfg.service.model_copy(update={"extensions": ["query_api", *auth], "pipelines": {}}),
        }
    )
    from labtel.collector.config import ConfigError
    from labtel.collector.service import Service
    from labtel.collector.storage.client import StorageError

    try:
        service = Service(api_only, extensions=True)
        asyncio.run(_run_until_signalled(service, ready_file, "query API"))
    except ConfigError as error:
        console.print(f"[red]labtel: configuration error:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    except (OSError, StorageError) as error:
        console.print(f"[red]labtel: cannot start:[/red] {escape(_explain(error))}")
        raise typer.Exit(1) from None


@app.command()
def migrate(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    print_sql: Annotated[
        bool,
        typer.Option(
            "--print-sql",
            help="Print the statements that create this version's schema (for an operator who owns it, "
            "with create_schema: false) instead of running them",
        ),
    ] = False,
) -> None:
    """Create or upgrade the storage schema to this labtel's version, and apply the TTLs."""
    from labtel.collector.config import SIGNALS
    from labtel.collector.storage import migrations
    from labtel.collector.storage.client import Storage, StorageError

    _, cfg = _load(config, data_dir)
    exporter = cfg.storage_exporter()
    storage = Storage.from_config(exporter)
    if print_sql:
        for statement in migrations.schema_statements(storage.names):
            print(f"{statement};\n")
        return
    try:
        report = migrations.migrate(storage)
        changed = migrations.reconcile_ttl(storage, {s: exporter.signal_ttl(s) for s in SIGNALS})
    except (StorageError, Exception) as error:
        console.print(f"[red]labtel: migration failed:[/red] {escape(_explain(error))}")
        raise typer.Exit(1) from None
    finally:
        storage.close()
    for migration in report.applied:
        console.print(f"applied migration {migration.version}: {migration.name}")
    for table in changed:
        console.print(f"updated the TTL of {table}")
    console.print(
        f"{storage.target.describe()}, database {storage.names.database!r}: "
        f"schema version {report.current_version}" + (" (already current)" if not report.applied else "")
    )


def _period(value: str | None) -> str | None:
    """A --backfill or --duration: a duration longer than zero."""
    from labtel.collector.durations import parse_duration

    if value is not None:
        try:
            longer = parse_duration(value).total_seconds() > 0
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        if not longer:
            raise typer.BadParameter(f"{value!r}: a duration longer than zero, e.g. 10m, 24h or 7d")
    return value


def _instant(value: str | None) -> str | None:
    """A --start: RFC 3339 or epoch seconds."""
    from labtel.query_api.params import parse_time_ns

    if value is not None:
        try:
            parse_time_ns(value, "start")
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    return value


def _protocol(value: str) -> str:
    if value not in ("grpc", "http"):
        raise typer.BadParameter(f"{value!r}: grpc or http")
    return value


@app.command()
def demo(
    backfill: Annotated[
        str | None, typer.Option(help="Simulate this past period as fast as possible, e.g. 1d, 7d", callback=_period)
    ] = None,
    speed: Annotated[
        float,
        typer.Option(min=1.0, help="Accelerated replay: simulated seconds per wall second (60 = an hour a minute)"),
    ] = 1.0,
    duration: Annotated[
        str | None,
        typer.Option(help="Wall-clock length of an accelerated, real-time or --rate run, e.g. 10m", callback=_period),
    ] = None,
    live: Annotated[bool, typer.Option("--live", help="After a backfill, keep the labs running in real time")] = False,
    rate: Annotated[float, typer.Option(min=0.0, help="Load mode: events per second, timestamped now")] = 0.0,
    start: Annotated[
        str | None,
        typer.Option(help="Start of the simulated period (RFC 3339); default: now minus the period", callback=_instant),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same events")] = 42,
    worlds: Annotated[
        str, typer.Option(help="Comma-separated: chemistry, observatory, geochronology")
    ] = "chemistry,observatory,geochronology",
    nodes: Annotated[int, typer.Option(min=1, max=10, help="Nodes in the chemistry lab's workcell")] = 10,
    endpoint: Annotated[
        str, typer.Option(envvar="LABTEL_ENDPOINT", help="Collector OTLP endpoint")
    ] = "http://localhost:4317",
    protocol: Annotated[str, typer.Option(help="grpc or http", callback=_protocol)] = "grpc",
    truth: Annotated[Path | None, typer.Option(help="Write the simulation's ground truth (JSON) here")] = None,
    print_items: Annotated[
        bool, typer.Option("--print", help="Print the events as JSON lines instead of sending them")
    ] = False,
    serve: Annotated[bool, typer.Option(help="Start `labtel serve` when nothing listens at the endpoint")] = True,
) -> None:
    """Run simulated labs (a chemistry workcell, an observatory, a geochronology line) through labtel.sdk."""
    from labtel.demo import launcher

    raise typer.Exit(
        launcher.main(
            backfill=backfill,
            speed=speed,
            duration=duration,
            live=live,
            rate=rate,
            start=start,
            seed=seed,
            worlds=tuple(w.strip() for w in worlds.split(",") if w.strip()),
            nodes=nodes,
            endpoint=endpoint,
            protocol=protocol,
            truth_path=truth,
            print_items=print_items,
            serve=serve,
            console=console,
        )
    )


@app.command()
def version() -> None:
    """Print the labtel version."""
    typer.echo(__version__)


query.register(app)
keys.register(app)


def main() -> None:
    """Entry point of the `labtel` console script."""
    app()
