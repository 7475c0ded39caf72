"""`labtel events`, `labtel sql`, `labtel export` and `labtel utilization`: the query API from the terminal."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import requests
import typer
from rich.console import Console
from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages: each on one line however wide the terminal (or none: a log, CI), as a terminal folds it."""


def out() -> Console:
    """The terminal, as it is now (its width may change between commands)."""
    return Console(highlight=False, soft_wrap=True)


ApiOption = Annotated[
    str,
    typer.Option("--api", envvar="LABTEL_API_URL", help="The query API (default: $LABTEL_API_URL or localhost:8000)"),
]
DEFAULT_API = "http://localhost:8000"
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LABTEL_API_KEY",
        help="API key sent as 'Authorization: Bearer' (default: $LABTEL_API_KEY); needed when the API has auth",
        show_default=False,
    ),
]
session = requests.Session()
"""The connection every command uses; `use_token` adds the API key to its headers. A private CA
for HTTPS is taken from $REQUESTS_CA_BUNDLE, as requests does."""


def use_token(token: str | None) -> None:
    """Send `token` as `Authorization: Bearer <token>` with every request of this command."""
    if token:
        session.headers["Authorization"] = f"Bearer {token.strip()}"
    else:
        session.headers.pop("Authorization", None)


# The filters of `/events`, `/events/stream` and `/export`, as options of every command that takes them.
SinceOption = Annotated[str | None, typer.Option(help="Relative start: 15m, 24h, 7d")]
StartOption = Annotated[str | None, typer.Option(help="Start time (RFC 3339 or epoch seconds)")]
EndOption = Annotated[str | None, typer.Option(help="End time")]
ServiceOption = Annotated[str | None, typer.Option(help="service.name")]
NodeOption = Annotated[str | None, typer.Option(help="lab.node.id")]
TypeOption = Annotated[str | None, typer.Option("--type", help="lab.event.type")]
RunOption = Annotated[str | None, typer.Option(help="lab.run.id")]
WorkflowOption = Annotated[str | None, typer.Option(help="lab.workflow.id")]
ExperimentOption = Annotated[str | None, typer.Option(help="lab.experiment.id")]
SeverityOption = Annotated[str | None, typer.Option(help="Minimum severity: INFO, WARN, ERROR, ...")]
SearchOption = Annotated[str | None, typer.Option("--search", "-q", help="Words in the body")]
AttributeOption = Annotated[
    list[str] | None,
    typer.Option("--attr", "-a", help="Attribute filter (repeatable): key=value, key=>5, key=<5, key=!=x, key=in:a,b"),
]
ResourceOption = Annotated[
    list[str] | None,
    typer.Option("--resource", "-r", help="Resource attribute filter (repeatable), as --attr: host.name=bench-3"),
]

_SEVERITY_STYLES = {
    "TRACE": "dim",
    "DEBUG": "dim",
    "INFO": "green",
    "WARN": "yellow",
    "ERROR": "red",
    "FATAL": "bold red",
}


MAX_LIMIT = 1000
"""The most events `labtel events` shows at once (a page of GET /events)."""


class ApiError(Exception):
    """The query API could not be reached or refused the request."""


class Unavailable(ApiError):
    """The query API, or a proxy before it, answered 502, 503 or 504 (restarting, storage away)."""


def _base(api: str) -> str:
    return (api if "://" in api else f"http://{api}").rstrip("/")


def _where(url: str) -> str:
    return url.split("/", 3)[:3][-1]


UNAVAILABLE = (502, 503, 504)
"""Statuses of a server (or a proxy before it) that is away for now: a follower waits them out."""


def _check(response: requests.Response) -> requests.Response:
    """The response, if it is the query API's answer to the request; else an ApiError saying what it is."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip()
    if response.status_code in UNAVAILABLE and kind != "application/json":  # a proxy's page
        raise Unavailable(f"{_where(response.url)} answered {response.status_code}: the query API is unavailable")
    if response.headers.get("Content-Type", "").startswith("text/html"):  # whatever its status (a 404 page)
        raise ApiError(f"{_where(response.url)} answered with an HTML page, not the query API: check --api")
    if response.status_code >= 400:
        if kind not in ("application/json", "text/plain", ""):  # the OTLP/HTTP port's protobuf Status, say
            raise ApiError(
                f"{_where(response.url)} answered {response.status_code} with {kind}, not the query API: check --api"
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        detail = answer.get("detail", response.text) if isinstance(answer, dict) else response.text
        if response.status_code == 401:
            detail = f"{detail} (give an API key: --token or $LABTEL_API_KEY)"
        raise (Unavailable if response.status_code in UNAVAILABLE else ApiError)(f"{response.status_code}: {detail}")
    return response


def _broken(error: requests.RequestException, url: str) -> ApiError:
    """What a failed request (no answer, or an answer cut short) means, in one line."""
    if isinstance(error, requests.exceptions.SSLError):  # a ConnectionError too: say which
        return ApiError(
            f"TLS with the query API at {_where(url)} failed ({_tls_reason(error)}): for a private CA set"
            " REQUESTS_CA_BUNDLE to its PEM file; a plain-HTTP API takes --api http://..."
        )
    if isinstance(error, requests.exceptions.InvalidURL):
        return ApiError(f"{url} is not a URL: check --api")
    if isinstance(error, requests.ConnectionError):
        return ApiError(f"cannot reach the query API at {_where(url)}: is `labtel serve` running?")
    if isinstance(error, requests.Timeout):
        return ApiError(f"the query API at {_where(url)} did not answer in time")
    return ApiError(f"the connection to the query API at {_where(url)} broke off: {type(error).__name__}")


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    """OpenSSL's words for a failed TLS handshake ("certificate verify failed: self-signed certificate")."""
    found = re.search(r"\]\s*([^()'\"\]]+?)\s*\(_ssl", str(error))
    return found.group(1) if found else "the handshake failed"


def _request(method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        return _check(session.request(method, url, timeout=kwargs.pop("timeout", 60), **kwargs))
    except requests.RequestException as error:
        raise _broken(error, url) from None


def _json(response: requests.Response) -> Any:
    """The JSON of an answer, or an ApiError when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise ApiError(f"{_where(response.url)} answered with something other than JSON: check --api") from None


def _fail(error: ApiError) -> typer.Exit:
    err.print(Text.assemble(("labtel:", "red"), f" {error}"))
    return typer.Exit(1)


def _note(message: str, style: str = "dim") -> None:
    """Print a line of `message` to stderr as it is: what it holds (a path, a server's answer) is never markup."""
    err.print(Text(message, style=style))


def filter_params(
    *,
    since: str | None = None,
    start: str | None = None,
    end: str | None = None,
    service: str | None = None,
    node: str | None = None,
    event_type: str | None = None,
    run: str | None = None,
    workflow: str | None = None,
    experiment: str | None = None,
    severity: str | None = None,
    query: str | None = None,
    attribute: list[str] | None = None,
    resource: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Query parameters of `/events`, `/events/stream` and `/export` from command-line filters."""
    params = [
        (key, value)
        for key, value in (
            ("since", since),
            ("start", start),
            ("end", end),
            ("service", service),
            ("node", node),
            ("event_type", event_type),
            ("run", run),
            ("workflow", workflow),
            ("experiment", experiment),
            ("severity_min", severity),
            ("q", query),
        )
        if value
    ]
    for prefix, option, items in (("attr", "--attr", attribute), ("resource", "--resource", resource)):
        for item in items or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise typer.BadParameter(f"{option} {item!r}: use key=value (operators: key=>5, key=!=x, key=in:a,b)")
            params.append((f"{prefix}.{key}", value))
    return params


FILTERS = tuple(inspect.signature(filter_params).parameters)
"""The filter options of `labtel events` and `labtel export`, named as filter_params names them."""


def given_filters(arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """filter_params of a command's arguments (its `locals()`), so the filters are listed once."""
    return filter_params(**{name: arguments[name] for name in FILTERS})


def _time(event: dict[str, Any]) -> str:
    return str(event["timestamp"]).replace("T", " ")[:23]


def _severity(event: dict[str, Any]) -> Text:
    text = str(event["severity_text"]) or "-"
    return Text(text, style=_SEVERITY_STYLES.get(text.rstrip("0123456789"), ""))


def event_line(event: dict[str, Any]) -> Text:
    """One event as a line of the tail."""
    line = Text(_time(event) + " ", style="dim")
    line.append_text(_severity(event))
    line.append(f" {event['service_name']}", style="cyan")
    if event["event_type"]:
        line.append(f" {event['event_type']}", style="magenta")
    if event["node_id"]:
        line.append(f" [{event['node_id']}]", style="blue")
    line.append(f" {event['body']}")
    return line


def events_table(events: list[dict[str, Any]]) -> Table:
    """Events as a rich table, oldest at the top. The time and severity stay on one line; in a
    narrow terminal the other columns fold. Events of one day show the date once, in the header."""
    times = [_time(event) for event in events]
    days = {shown[:10] for shown in times}
    one_day = len(days) == 1
    table = Table(show_lines=False, header_style="bold")
    table.add_column(f"{days.pop()} (UTC)" if one_day else "time (UTC)", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    for column in ("service", "event type", "node", "body"):
        table.add_column(column, overflow="fold")
    for event, shown in zip(events, times, strict=True):
        table.add_row(
            shown[11:] if one_day else shown,
            _severity(event),
            *(Text(str(event[key])) for key in ("service_name", "event_type", "node_id", "body")),
        )
    return table


def _sse(url: str, params: list[tuple[str, str]], last_id: str | None) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(id, event) of each SSE message of the stream that names an id or holds an event: an id
    alone (None for the event) is where the stream stands, to resume from; ("", None) first,
    once the stream is open."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
    with session.get(url, params=params, headers=headers, stream=True, timeout=(10, 60)) as response:
        _check(response)
        yield "", None
        frame: dict[str, str] = {}
        for raw in response.iter_lines(decode_unicode=True):
            if raw:
                key, _, value = raw.partition(":")
                frame[key] = value.removeprefix(" ")
                continue
            if "data" in frame:
                yield frame.get("id", ""), json.loads(frame["data"])
            elif frame.get("id"):
                yield frame["id"], None
            frame = {}


def follow(base: str, params: list[tuple[str, str]], shown: set[str], as_json: bool) -> None:
    """Print events as they arrive, reconnecting (and resuming where the stream stood) when the
    connection drops or the server ends the stream (a restart); events in `shown` were printed
    already. A lost connection is said once, and its return once."""
    last_id: str | None = None
    lost = False
    console = out()
    while True:
        try:
            for sse_id, event in _sse(f"{base}/events/stream", params, last_id):
                if lost:
                    _note("labtel: reconnected")
                    lost = False
                last_id = sse_id or last_id  # a reconnection resumes after it
                if event is None or event["event_id"] in shown:
                    continue
                if as_json:
                    sys.stdout.write(json.dumps(event) + "\n")
                    sys.stdout.flush()
                else:
                    console.print(event_line(event))
        except requests.exceptions.SSLError as error:  # reconnecting would fail the same way
            raise _broken(error, base) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, Unavailable):
            pass
        if not lost:
            _note("labtel: connection lost; reconnecting...")
            lost = True
        time.sleep(1)


def events(
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    since: SinceOption = None,
    start: StartOption = None,
    end: EndOption = None,
    service: ServiceOption = None,
    node: NodeOption = None,
    event_type: TypeOption = None,
    run: RunOption = None,
    workflow: WorkflowOption = None,
    experiment: ExperimentOption = None,
    severity: SeverityOption = None,
    query: SearchOption = None,
    attribute: AttributeOption = None,
    resource: ResourceOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=MAX_LIMIT, help="How many of the latest")] = 30,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing events as they arrive")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Show the latest events (a table, oldest at the top); --follow tails them live."""
    use_token(token)
    base = _base(api)
    params = given_filters(locals())
    try:
        page = _json(_request("GET", f"{base}/events", params=[*params, ("limit", str(limit))]))
        latest = list(reversed(page["events"]))
        if as_json:
            for event in latest:
                sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        elif follow_:
            for event in latest:
                out().print(event_line(event))
        elif not latest:
            _note("no events match" if params else "no events stored yet")
        else:
            out().print(events_table(latest))
            if page["next_cursor"]:
                more = "--limit or --since" if limit < MAX_LIMIT else "--since, --start and --end, or `labtel export`,"
                _note(f"the latest {len(latest)}; {more} for more")
        if follow_:
            tail = [p for p in params if p[0] not in ("since", "start", "end")]
            if latest:  # go on from the last event shown (events of the same instant are skipped once)
                last = latest[-1]["time_unix_nano"]
                tail.append(("start", f"{last // 1_000_000_000}.{last % 1_000_000_000:09d}"))
            follow(base, tail, {e["event_id"] for e in latest}, as_json)
    except ApiError as error:
        raise _fail(error) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


_SQL_FILE_FORMATS = ("json", "csv", "tsv", "ndjson", "parquet", "arrow", "arrow-stream")
"""The formats `labtel sql -o` writes."""


def sql(
    query: Annotated[
        str, typer.Argument(help="One SELECT over labtel's tables (otel_logs, otel_traces, ...); - reads stdin")
    ],
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-F",
            help="table, json, csv, tsv, ndjson, parquet, arrow, arrow-stream (default: table; with -o as the"
            " file's suffix says, else csv)",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the result to this file (as its suffix says, else CSV, unless -F says); - for stdout",
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A {name:Type} placeholder's value: name=value")
    ] = None,
) -> None:
    """Run read-only SQL through the query API's sandbox (POST /sql)."""
    use_token(token)
    if fmt == "table" and output is not None:
        raise typer.BadParameter("a table is for the terminal: with --output choose csv, parquet, ...", param_hint="-F")
    fmt = fmt or (format_of(output, _SQL_FILE_FORMATS, "csv") if output is not None else "table")
    if output is not None and str(output) == "-":  # stdout, as `labtel export -o -`
        output = None
    text = sys.stdin.read() if query == "-" else query
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: use name=value")
        parameters[key] = value
    base = _base(api)
    wanted = "json" if fmt == "table" else fmt
    try:
        response = _request(
            "POST", f"{base}/sql", json={"sql": text, "parameters": parameters, "format": wanted}, timeout=600
        )
        if fmt != "table":
            _write(response.content, output)
            return
        result = _json(response)
    except ApiError as error:
        raise _fail(error) from None
    table = Table(header_style="bold")
    for column in result["meta"]:
        table.add_column(Text.assemble(column["name"], "\n", (column["type"], "dim")), overflow="fold")
    for row in result["data"]:
        table.add_row(*(_cell(value) for value in row.values()))
    out().print(table)
    elapsed = result.get("statistics", {}).get("elapsed", 0.0)
    _note(f"{result['rows']} row(s) in {elapsed * 1000:.1f} ms")


def _cell(value: Any) -> Text:
    """A value of a result as a table cell, shown as it is (text in brackets is data, not markup)."""
    return Text(value if isinstance(value, str) else json.dumps(value))


_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow-stream",
}
"""The format a file's name asks for, by its suffix."""


def format_of(output: Path | None, formats: tuple[str, ...], default: str) -> str:
    """The format of `formats` that `output`'s suffix names (`week.csv`: csv), else `default`:
    `-o week.csv` writes CSV, not Parquet (or CSV) under a name that says otherwise."""
    named = _SUFFIX_FORMATS.get(output.suffix.lower()) if output is not None else None
    return named if named in formats else default


def _write(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as error:
        raise ApiError(f"cannot write {output}: {error.strerror or error}") from None
    _note(f"{len(data):,} bytes written to {output}")


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write (- for stdout)")],
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-F",
            help="parquet, csv or ndjson (default: as the file's suffix says, .csv, .ndjson or .jsonl; else parquet)",
            show_default=False,
        ),
    ] = None,
    since: SinceOption = None,
    start: StartOption = None,
    end: EndOption = None,
    service: ServiceOption = None,
    node: NodeOption = None,
    event_type: TypeOption = None,
    run: RunOption = None,
    workflow: WorkflowOption = None,
    experiment: ExperimentOption = None,
    severity: SeverityOption = None,
    query: SearchOption = None,
    attribute: AttributeOption = None,
    resource: ResourceOption = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many events (the oldest)")] = None,
) -> None:
    """Download events (GET /export) to a file, streamed: Parquet by default."""
    use_token(token)
    params = given_filters(locals())
    params.append(("format", fmt or format_of(output, ("csv", "ndjson", "parquet"), "parquet")))
    if limit:
        params.append(("limit", str(limit)))
    base = _base(api)
    try:
        with session.get(f"{base}/export", params=params, stream=True, timeout=(10, 600)) as response:
            _check(response)
            if str(output) == "-":
                _copy(response, sys.stdout.buffer, None)
                return
            partial = output.with_name(f".{output.name}.part")  # renamed to `output` once complete
            with (
                _written(partial, output) as file,
                Progress(
                    SpinnerColumn(),
                    TextColumn(f"exporting to {output}"),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=err,
                    transient=not err.is_terminal,
                    disable=not err.is_terminal,
                ) as progress,
            ):
                task = progress.add_task("export", total=None)
                written = _copy(response, file, lambda n: progress.advance(task, n))
        err.print(Text.assemble((f"{written:,} bytes", "green"), f" written to {output}"))
    except requests.RequestException as error:
        raise _fail(_broken(error, base)) from None
    except BrokenPipeError:
        if str(output) != "-":
            raise _fail(ApiError(f"cannot write {output}: broken pipe")) from None
        raise  # a reader that stopped (`| head`): the command line ends quietly
    except OSError as error:
        raise _fail(ApiError(f"cannot write {output}: {error.strerror or error}")) from None
    except ApiError as error:
        raise _fail(error) from None


@contextlib.contextmanager
def _written(partial: Path, output: Path) -> Iterator[BinaryIO]:
    """A file to write at `partial`, renamed to `output` when the block ends well and removed when
    it fails: an export cut short leaves no file that looks whole."""
    try:
        with partial.open("wb") as file:
            yield file
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _copy(response: requests.Response, file: BinaryIO, advance: Any) -> int:
    written = 0
    for chunk in response.iter_content(chunk_size=1 << 20):
        file.write(chunk)
        written += len(chunk)
        if advance is not None:
            advance(len(chunk))
    file.flush()
    return written


def register(app: typer.Typer) -> None:
    """Add the query commands to the `labtel` command."""
    app.command("events")(events)
    app.command("sql")(sql)
    app.command("export")(export)
    app.command("utilization")(utilization)


def _percent_cell(value: float) -> Text:
    style = "red" if value >= 90 else "yellow" if value >= 70 else "green" if value > 0 else "dim"
    return Text(f"{value:.1f} %", style=style)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def utilization(
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    range_: Annotated[str, typer.Option("--range", help="How far back from now: 24h, 7d, 30d")] = "7d",
    start: Annotated[str | None, typer.Option(help="Start (instead of --range)")] = None,
    end: Annotated[str | None, typer.Option(help="End (default: now)")] = None,
    bucket: Annotated[
        str | None, typer.Option(help="hour, day, week or month: utilization per period (else per node)")
    ] = None,
    report: Annotated[str, typer.Option(help="nodes, periods, sessions or users")] = "",
    by: Annotated[str, typer.Option(help="users report: user, experiment or workflow")] = "user",
    unit: Annotated[str, typer.Option(help="sessions report: node, workcell or lab")] = "node",
    tz: Annotated[str, typer.Option(help="Time zone of periods")] = "UTC",
    day_start: Annotated[str | None, typer.Option(help="Where days begin, e.g. 12:00")] = None,
    node: Annotated[list[str] | None, typer.Option(help="Only these nodes (repeatable)")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON answer")] = False,
) -> None:
    """How busy the instruments were (GET /utilization/...): per node, per period, sessions or users."""
    use_token(token)
    chosen = report or ("periods" if bucket else "nodes")
    if chosen not in ("nodes", "periods", "sessions", "users"):
        raise typer.BadParameter(f"{chosen!r}: nodes, periods, sessions or users", param_hint="--report")
    params: list[tuple[str, str]] = [("tz", tz)]
    params += [("start", start)] if start else [("since", range_)]
    params += [("end", end)] if end else []
    params += [("day_start", day_start)] if day_start else []
    params += [("node", n) for n in node or []]
    params += {"periods": [("bucket", bucket or "day")], "sessions": [("unit", unit)], "users": [("by", by)]}.get(
        chosen, []
    )
    if as_csv:
        params.append(("format", "csv"))
    try:
        response = _request("GET", f"{_base(api)}/utilization/{chosen}", params=params, timeout=600)
        if as_csv:
            sys.stdout.write(response.text)
            return
        result = _json(response)
    except ApiError as error:
        raise _fail(error) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console = out()
    console.print(_utilization_table(chosen, result, by, unit, console.width))


def _utilization_table(report: str, result: dict[str, Any], by: str, unit: str, width: int) -> Table:
    title = f"{report}, {result['start'][:19]} to {result['until'][:19]} UTC"
    if report == "nodes":
        lab = result["lab"]
        rows = [
            [n["node"], n["workcell"], _hours(n["busy_s"]), _hours(n["idle_s"]), _percent_cell(n["utilization_percent"]),
             str(n["actions"]), str(n["failed"]), f"{n['mean_action_s']:.1f}", f"{n['p95_action_s']:.1f}"]
            for n in result["nodes"]
        ] + [
            [Text("all", style="bold"), "", _hours(lab["busy_s"]), _hours(lab["idle_s"]), _percent_cell(lab["utilization_percent"]),
             str(lab["actions"]), str(lab["failed"]), "", ""]
        ]  # fmt: skip
        columns = [("node", NAME), ("workcell", NAME)]
        columns += _figures("busy h", "idle h", "utilization", "actions", "failed", "mean s", "p95 s")
        workcells = list(dict.fromkeys(n["workcell"] for n in result["nodes"]))
        if len(workcells) == 1:  # named in the title, not in a column of its own
            if workcell := workcells.pop():
                title = f"nodes of {workcell}, {title.removeprefix('nodes, ')}"
            del columns[1]
            rows = [[row[0], *row[2:]] for row in rows]
        elif not fits_whole(columns, rows, width):  # a section per workcell, headed by its name
            *nodes, total = rows
            rows = []
            for workcell in workcells:
                rows += [SECTION, [Text(workcell or "(no workcell)", style="bold"), *[""] * (len(columns) - 2)]]
                rows += [[row[0], *row[2:]] for row in nodes if str(row[1]) == workcell]
            rows += [SECTION, [total[0], *total[2:]]]
            del columns[1]
        return report_table(title, columns, rows, width)
    if report == "periods":
        rows = [
            [p["start"][:16].replace("T", " "), str(p["nodes"]), _hours(p["busy_s"]), _hours(p["available_s"]),
             _percent_cell(p["utilization_percent"]), str(p["actions"]), str(p["failed"])]
            for p in result["periods"]
        ]  # fmt: skip
        figures = _figures("nodes", "busy h", "available h", "utilization", "actions", "failed")
        return report_table(title, [("period (UTC)", TIME), *figures], rows, width)
    if report == "sessions":
        rows = [
            [s[unit], s["start"][:19].replace("T", " "), _hours(s["duration_s"]), _hours(s["busy_s"]),
             _percent_cell(s["utilization_percent"]), str(s["actions"]), ", ".join(s["users"])]
            for s in result["sessions"]
        ]  # fmt: skip
        figures = _figures("hours", "busy h", "utilization", "actions")
        return report_table(title, [(unit, NAME), ("start (UTC)", TIME), *figures, ("users", NAME)], rows, width)
    rows = [
        [r[by], str(r["actions"]), str(r["actions_failed"]), _hours(r["action_s"]), str(r["workflows_completed"]),
         str(r["workflows_failed"]), ", ".join(r["nodes"])]
        for r in result[f"{by}s"]
    ]  # fmt: skip
    figures = _figures("actions", "failed", "action h", "workflows done", "failed wf")
    return report_table(title, [(by, NAME), *figures, ("nodes", NAME)], rows, width)


NAME, TIME, FIGURE = "name", "time", "figure"
"""Kinds of report columns: names fold in a narrow terminal (down to NAME_MIN_WIDTH characters),
times stay on one line, and figures are right-aligned and whole, headers included."""
NAME_MIN_WIDTH = 6


def _figures(*headers: str) -> list[tuple[str, str]]:
    return [(header, FIGURE) for header in headers]


SECTION: list[str | Text] = []
"""A row of a report that is a rule between sections, not a row."""


def _layout(
    columns: list[tuple[str, str]], rows: list[list[str | Text]], width: int, compact: bool
) -> tuple[list[int], int, int]:
    """What a report's columns need (characters), the room they have in `width` (compact: without
    the outer border and padding), and the part of it that the figures and times take."""
    cells = [[Text(cell) if isinstance(cell, str) else cell for cell in row] for row in rows if row is not SECTION]
    needed = [max([len(name)] + [row[index].cell_len for row in cells]) for index, (name, _) in enumerate(columns)]
    room = width - (3 * len(columns) - 3 if compact else 3 * len(columns) + 1)  # less the borders and padding
    fixed = sum(need for need, (_, kind) in zip(needed, columns, strict=True) if kind != NAME)
    return needed, room, fixed


def fits_whole(columns: list[tuple[str, str]], rows: list[list[str | Text]], width: int, compact: bool = True) -> bool:
    """Whether a report's figures and times fit `width` whole, beside its names folded to NAME_MIN_WIDTH."""
    _, room, fixed = _layout(columns, rows, width, compact)
    return fixed + sum(kind == NAME for _, kind in columns) * NAME_MIN_WIDTH <= room


def report_table(title: str, columns: list[tuple[str, str]], rows: list[list[str | Text]], width: int) -> Table:
    """A report as a rich table of `columns` (header, kind) that fits a terminal `width` wide:
    without its outer border when the figures need that room, and when even then they cannot all
    fit whole, they fold too; a SECTION row draws a rule. Text cells are shown as they are, never
    as markup."""
    compact = not fits_whole(columns, rows, width, compact=False)
    needed, room, fixed = _layout(columns, rows, width, compact)
    names = sum(kind == NAME for _, kind in columns)
    whole = fixed + names * NAME_MIN_WIDTH <= room  # fits_whole, from the layout at hand
    table = Table(title=Text(title), header_style="bold", show_edge=not compact, pad_edge=not compact)
    for need, (name, kind) in zip(needed, columns, strict=True):
        if kind == TIME:
            table.add_column(name, no_wrap=whole, overflow="fold")
        elif kind == NAME:  # an equal share of what the figures leave
            table.add_column(name, overflow="fold", max_width=(room - fixed) // names if whole else None)
        else:
            table.add_column(name, justify="right", overflow="fold", min_width=need if whole else None)
    for row in rows:
        if row is SECTION:
            if table.row_count:
                table.add_section()
        else:
            table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
    return table
