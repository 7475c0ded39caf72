"""`labtel events`, `labtel sql` and `labtel export` against a real labtel server."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from labtel.cli import app
from labtel.cli.query import _utilization_table, events_table
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config

runner = CliRunner()
BASE = 1_786_000_000_000_000_000


def send(server: LabtelServer, bodies: list[str], service: str = "cli", node: str = "ot2_1", start: int = BASE) -> None:
    records = [
        log_record(body, {"lab.node.id": node, "lab.event.type": "action_complete", "n": i}, time_ns=start + i * 10**9)
        for i, body in enumerate(bodies)
    ]
    httpx.post(
        f"{server.http}/v1/logs",
        content=logs_request(records, resource={"service.name": service}).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()


def test_events_sql_and_export(server: LabtelServer, tmp_path: Path) -> None:
    send(server, [f"transfer {i}" for i in range(12)])
    send(server, ["arm fault"], node="pf400", start=BASE + 100 * 10**9)

    table = runner.invoke(app, ["events", "--api", server.api, "--service", "cli", "-n", "5"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "arm fault" in table.stdout
    assert "transfer 11" in table.stdout
    assert "transfer 7" not in table.stdout  # only the latest five
    assert table.stdout.index("transfer 8") < table.stdout.index("arm fault")  # oldest at the top

    lines = runner.invoke(app, ["events", "--api", server.api, "--node", "ot2_1", "-a", "n=>9", "--json"])
    assert lines.exit_code == 0, lines.output
    assert [json.loads(line)["body"] for line in lines.stdout.splitlines()] == ["transfer 10", "transfer 11"]

    counted = runner.invoke(
        app, ["sql", "SELECT NodeId, count() AS n FROM otel_logs GROUP BY NodeId ORDER BY NodeId", "--api", server.api]
    )
    assert counted.exit_code == 0, counted.output
    assert "ot2_1" in counted.stdout
    assert "12" in counted.stdout
    as_csv = runner.invoke(
        app,
        ["sql", "SELECT count() AS n FROM otel_logs WHERE NodeId = {node:String}", "-F", "csv", "-p", "node=pf400"],
        env={"LABTEL_API_URL": server.api},
    )
    assert as_csv.stdout == '"n"\n1\n'
    refused = runner.invoke(app, ["sql", "DROP TABLE otel_logs", "--api", server.api])
    assert refused.exit_code == 1
    assert "not allowed" in refused.output

    target = tmp_path / "events.parquet"
    exported = runner.invoke(app, ["export", "--api", server.api, "--service", "cli", "-o", str(target)])
    assert exported.exit_code == 0, exported.output
    assert pq.read_table(target).column("body").to_pylist() == [*(f"transfer {i}" for i in range(12)), "arm fault"]


def test_events_table_keeps_time_and_severity_whole_in_a_narrow_terminal() -> None:
    body = "platereader_1 lost its plate while the lid was open and reports an error"
    event = {
        "timestamp": "2026-08-06T07:06:40.000000000Z",
        "severity_text": "WARN",
        "service_name": "madsci.node.platereader_1",
        "event_type": "node_status_update",
        "node_id": "platereader_1",
        "body": body,
    }

    def rendered(events: list[dict[str, object]]) -> list[str]:
        console = Console(width=80, record=True, color_system=None)
        console.print(events_table(events))
        lines = console.export_text().splitlines()
        assert max(len(line) for line in lines) <= 80
        return lines

    one_day = rendered([event, event | {"timestamp": "2026-08-06T23:59:59.999000000Z"}])
    assert "2026-08-06 (UTC)" in one_day[2]  # the day once, in the header
    assert any(line.startswith("│ 07:06:40.000 ") and "│ WARN " in line for line in one_day)  # neither folded
    # each body folds over lines, whole, in its own column (the last cell of each line)
    folded = "".join(line.split("│")[-2] for line in one_day if line.startswith("│"))
    assert folded.replace(" ", "").count(body.replace(" ", "")) == 2

    two_days = rendered([event, event | {"timestamp": "2026-08-07T00:00:00.000000000Z"}])
    assert "time (UTC)" in "".join(two_days[:3])
    assert any(line.startswith("│ 2026-08-07 00:00:00.000 │ WARN ") for line in two_days)


def test_utilization_tables_keep_figures_whole_in_a_narrow_terminal() -> None:
    def node(name: str, workcell: str, busy_s: float) -> dict[str, object]:
        return {
            "node": name, "workcell": workcell, "busy_s": busy_s, "idle_s": 65_123.0 - busy_s,
            "utilization_percent": 100 * busy_s / 65_123.0, "actions": 12_345, "failed": 678,
            "mean_action_s": 1370.5, "p95_action_s": 12_345.6,
        }  # fmt: skip

    def rendered(nodes: list[dict[str, object]], width: int) -> str:
        lab = {"busy_s": 1.0, "idle_s": 2.0, "utilization_percent": 33.3, "actions": 12_345, "failed": 678}
        result = {"start": "2026-08-06T00:00:00Z", "until": "2026-08-07T00:00:00Z", "nodes": nodes, "lab": lab}
        console = Console(width=width, record=True, color_system=None)
        console.print(_utilization_table("nodes", result, "user", "node", width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        return text

    figures = ("11.11", "18.09", "61.4 %", "12345", "678", "1370.5", "12345.6", "utilization", "p95 s")
    chem = [node("thermocycler_1", "wc_chem_1", 40_000.0), node("ot2_1", "wc_chem_1", 10.0)]
    one = rendered(chem, 80)
    assert one.lstrip().startswith("nodes of wc_chem_1, 2026-08-06T00:00:00 to")  # one workcell: in the title
    assert "workcell" not in one
    for figure in figures:
        assert figure in one, figure  # whole, not cut or folded
    assert "│ thermo" in one  # the names fold instead

    two = rendered([*chem, node("mount", "observatory", 10.0)], 100)
    assert "workcell" in two
    assert all(figure in two for figure in figures)

    # two workcells in 80 columns: a section per workcell, headed by its name, instead of a column
    mixed = [chem[0], node("mount", "observatory", 10.0), chem[1]]
    narrow = rendered(mixed, 80)
    assert "workcell" not in narrow
    assert all(figure in narrow for figure in figures)
    first_cells = "".join(line.split("│")[1].strip() for line in narrow.splitlines() if line.startswith("│"))
    assert first_cells == "wc_chem_1thermocycler_1ot2_1observatorymountall"
    assert narrow.count("├") == 2  # a rule before the second workcell and before the total

    # too narrow for the figures to stay whole: they fold too, and nothing is cut
    narrowest = rendered([*chem, node("mount", "observatory", 10.0)], 60)
    assert "┏" not in narrowest  # without the outer border, for the room it takes
    cells = "".join(line.split("│")[-1] for line in narrowest.splitlines() if "│" in line)
    assert cells.replace(" ", "").count("12345.6") == 3


def test_period_and_session_tables_drop_their_outer_border_to_keep_figures_whole_in_80_columns() -> None:
    span = {"start": "2026-08-06T00:00:00Z", "until": "2026-08-07T00:00:00Z"}
    period = {"start": "2026-08-06T00:00:00Z", "nodes": 12, "busy_s": 40_000.0, "available_s": 400_000.0,
              "utilization_percent": 10.0, "actions": 12_345, "failed": 678}  # fmt: skip
    session = {"node": "thermocycler_1", "start": "2026-08-06T01:02:03Z", "duration_s": 7200.0, "busy_s": 3600.0,
               "utilization_percent": 50.0, "actions": 123, "users": ["alice", "bob"]}  # fmt: skip
    for report, result, cells in (
        (
            "periods",
            {**span, "periods": [period]},
            ["2026-08-06 00:00", "available h", "111.11", "utilization", "12345"],
        ),
        ("sessions", {**span, "sessions": [session]}, ["start (UTC)", "2026-08-06 01:02:03", "utilization", "50.0 %"]),
    ):
        for width, edged in ((80, False), (120, True)):
            console = Console(width=width, record=True, color_system=None)
            console.print(_utilization_table(report, result, "user", "node", width))
            text = console.export_text()
            assert max(len(line) for line in text.splitlines()) <= width
            assert all(cell in text for cell in cells), (report, width, text)  # whole, not folded
            assert ("┏" in text) == edged, text


def test_unreachable_api_is_a_clear_error() -> None:
    result = runner.invoke(app, ["events", "--api", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach the query API" in result.output


def follow(api: str, *filters: str) -> subprocess.Popen[str]:
    """`labtel events --follow --json` against `api` with `filters`, its output unbuffered."""
    return subprocess.Popen(
        [sys.executable, "-m", "labtel.cli", "events", "--api", api, *filters, "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_follow_prints_events_as_they_arrive(server: LabtelServer) -> None:
    now = time.time_ns()
    send(server, ["already there"], service="tail", start=now - 10**9)
    process = follow(server.api, "--service", "tail")
    try:
        assert process.stdout is not None
        seen: list[str] = []
        sender = threading.Timer(
            2.0, lambda: send(server, ["new one", "and another"], service="tail", start=time.time_ns())
        )
        sender.start()
        deadline = time.monotonic() + 40
        while len(seen) < 3 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if line:
                seen.append(json.loads(line)["body"])
        sender.join()
        assert seen == ["already there", "new one", "and another"]
    finally:
        process.kill()
        process.wait(10)


def test_event_data_is_shown_as_it_is_never_as_markup(server: LabtelServer) -> None:
    bodies = ["vial [/b] closed", "[info] pump started", "[bold]x[/bold]"]
    send(server, bodies, service="svc[/x]")
    wide = {"COLUMNS": "200"}

    table = runner.invoke(app, ["events", "--api", server.api, "-n", "3"], env=wide)
    assert table.exit_code == 0, table.output
    for text in [*bodies, "svc[/x]"]:
        assert text in table.stdout, text

    result = runner.invoke(app, ["sql", "SELECT '[/x] bad' AS `[b]s`", "--api", server.api], env=wide)
    assert result.exit_code == 0, result.output
    assert "[/x] bad" in result.stdout
    assert "[b]s" in result.stdout

    refused = runner.invoke(app, ["sql", "SELECT * FROM `[/x]`", "--api", server.api], env=wide)
    assert refused.exit_code == 1
    assert "[/x]" in refused.output  # the server's message, whole
    assert "Traceback" not in refused.output


def test_utilization_names_are_shown_as_they_are() -> None:
    lab = {"busy_s": 1.0, "idle_s": 2.0, "utilization_percent": 33.3, "actions": 1, "failed": 0}
    nodes = [
        {"node": name, "workcell": "wc[/x]", "busy_s": 1.0, "idle_s": 2.0, "utilization_percent": 33.3,
         "actions": 1, "failed": 0, "mean_action_s": 1.0, "p95_action_s": 1.0}
        for name in ("arm[/b]", "[bold]reader")
    ]  # fmt: skip
    result = {"start": "2026-08-06T00:00:00Z", "until": "2026-08-07T00:00:00Z", "nodes": nodes, "lab": lab}
    console = Console(width=200, record=True, color_system=None)
    console.print(_utilization_table("nodes", result, "user", "node", 200))
    text = console.export_text()
    for name in ("arm[/b]", "[bold]reader", "nodes of wc[/x]", "all"):
        assert name in text, name


@contextmanager
def raw_api(answer: bytes) -> Iterator[str]:
    """A server that answers every request with the bytes `answer` and closes the connection
    (an answer cut short when it promises more); yields its address."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def http_answer(status: str, content_type: str, body: bytes, chunked_cut: bool = False) -> bytes:
    if chunked_cut:  # one chunk, then the connection drops
        return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + (
            f"{len(body):x}\r\n".encode() + body + b"\r\n"
        )
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_broken_or_foreign_answers_are_one_line_errors(tmp_path: Path) -> None:
    commands = {
        "events": ["events"],
        "sql": ["sql", "SELECT 1"],
        "sql csv": ["sql", "SELECT 1", "-F", "csv"],
        "export": ["export", "-o", str(tmp_path / "cut.parquet")],
        "utilization": ["utilization"],
    }
    answers = {
        "broke off": http_answer("200 OK", "application/json", b'{"events": [', chunked_cut=True),
        "HTML page": http_answer("200 OK", "text/html", b"<html><body>login page</body></html>"),
        "an HTML page": http_answer(
            "404 Not Found", "text/html; charset=utf-8", b"<html><body>Not Found</body></html>"
        ),
        "500: [1, 2]": http_answer("500 Internal Server Error", "application/json", b"[1, 2]"),
        # the OTLP/HTTP port (a wrong --api): a protobuf Status, once printed as bytes ('404: \x08\x05\x12Hno OTLP')
        "answered 404 with application/x-protobuf, not the query API: check --api": http_answer(
            "404 Not Found", "application/x-protobuf", b"\x08\x05\x12\x10no OTLP endpoint"
        ),
    }
    for said, answer in answers.items():
        with raw_api(answer) as api:
            for name, command in commands.items():
                result = runner.invoke(app, [*command, "--api", api])
                assert result.exit_code == 1, (said, name, result.output)
                assert said in result.stderr, (said, name, result.stderr)
                assert "Traceback" not in result.output
                assert "<html>" not in result.output
    assert list(tmp_path.iterdir()) == []  # an export cut short leaves no file


def test_an_unwritable_output_is_a_one_line_error(server: LabtelServer, tmp_path: Path) -> None:
    missing = tmp_path / "no such dir"
    for command in (
        ["export", "-o", str(missing / "e.parquet")],
        ["sql", "SELECT 1", "-F", "csv", "-o", str(missing / "s.csv")],
    ):
        result = runner.invoke(app, [*command, "--api", server.api])
        assert result.exit_code == 1, result.output
        assert "cannot write" in result.stderr
        assert "Traceback" not in result.output


def test_a_long_error_stays_on_one_line_without_a_terminal() -> None:
    detail = "the query API refused this request for a reason that takes many words to explain " * 3
    answer = http_answer("400 Bad Request", "application/json", json.dumps({"detail": detail.strip()}).encode())
    with raw_api(answer) as api:
        result = runner.invoke(app, ["events", "--api", api], env={"COLUMNS": "80"})
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"labtel: 400: {detail.strip()}"]


def test_output_files_are_written_in_the_format_their_suffix_names(server: LabtelServer, tmp_path: Path) -> None:
    target = tmp_path / "one.csv"
    written = runner.invoke(app, ["sql", "SELECT 1 AS n", "-o", str(target), "--api", server.api])
    assert written.exit_code == 0, written.output
    assert target.read_text() == '"n"\n1\n'
    assert written.stdout == ""
    unnamed = tmp_path / "one.out"  # a suffix that names no format: CSV
    assert runner.invoke(app, ["sql", "SELECT 1 AS n", "-o", str(unnamed), "--api", server.api]).exit_code == 0
    assert unnamed.read_text() == '"n"\n1\n'
    as_parquet = tmp_path / "one.parquet"
    assert runner.invoke(app, ["sql", "SELECT 1 AS n", "-o", str(as_parquet), "--api", server.api]).exit_code == 0
    assert pq.read_table(as_parquet).column("n").to_pylist() == [1]
    refused = runner.invoke(app, ["sql", "SELECT 1", "-F", "table", "-o", str(target), "--api", server.api])
    assert refused.exit_code == 2
    assert "a table is for the terminal" in refused.output

    send(server, ["first", "second"], service="suffix")
    exported = {}
    for name in ("week.csv", "week.ndjson", "week.jsonl", "week.parquet", "week.data"):
        path = tmp_path / name
        result = runner.invoke(app, ["export", "--api", server.api, "--service", "suffix", "-o", str(path)])
        assert result.exit_code == 0, result.output
        exported[name] = path.read_bytes()
    assert [row["body"] for row in csv.DictReader(io.StringIO(exported["week.csv"].decode()))] == ["first", "second"]
    for name in ("week.ndjson", "week.jsonl"):
        assert [json.loads(line)["body"] for line in exported[name].splitlines()] == ["first", "second"]
    for name in ("week.parquet", "week.data"):  # Parquet unless the name says otherwise
        assert pq.read_table(io.BytesIO(exported[name])).column("body").to_pylist() == ["first", "second"]
    forced = tmp_path / "forced.parquet"  # --format wins over the name
    result = runner.invoke(app, ["export", "--api", server.api, "--service", "suffix", "-F", "csv", "-o", str(forced)])
    assert result.exit_code == 0, result.output
    assert forced.read_text().startswith('"event_id",')


def test_no_events_is_said_not_shown_as_an_empty_table(server: LabtelServer) -> None:
    result = runner.invoke(app, ["events", "--api", server.api, "--node", "nobody"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == "no events match\n"


def test_hints_name_what_helps(tmp_path: Path) -> None:
    refused = http_answer("401 Unauthorized", "application/json", b'{"detail": "an API key is required"}')
    with raw_api(refused) as api:
        result = runner.invoke(app, ["events", "--api", api])
    assert result.exit_code == 1
    assert "--token or $LABTEL_API_KEY" in result.stderr

    event = {"timestamp": "2026-08-06T07:06:40Z", "severity_text": "INFO", "service_name": "s", "event_type": "",
             "node_id": "", "body": "b", "time_unix_nano": 1, "event_id": "e"}  # fmt: skip
    page = json.dumps({"events": [event], "next_cursor": "more"}).encode()
    with raw_api(http_answer("200 OK", "application/json", page)) as api:
        some = runner.invoke(app, ["events", "--api", api, "-n", "10"])
        most = runner.invoke(app, ["events", "--api", api, "-n", "1000"])
    assert "--limit or --since for more" in some.stderr
    assert "--limit" not in most.stderr  # -n 1000 is the most
    assert "`labtel export`" in most.stderr


def test_follow_across_a_restart_misses_nothing_stored_while_the_api_was_away(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """`labtel events -f` that has seen no event yet, while `labtel serve` stops (promptly: the
    live tail ends instead of holding the shutdown up), a collector stores events, and serve
    starts again on the same port: the follower prints those events, once, and says the lost
    connection and its return once each."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data")
    config.write_text(
        config.read_text().replace(
            'query_api: {endpoint: "127.0.0.1:0"}', f'query_api: {{endpoint: "127.0.0.1:{port}"}}'
        )
    )
    server = server_factory(config=config, workdir=tmp_path).start()
    process = follow(server.api, "--service", "away")
    try:
        time.sleep(2)  # connected, nothing to show
        began = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - began < 4, "the live tail held the shutdown up"
        assert "Traceback" not in server.output()
        collector = server_factory(config=config, workdir=tmp_path, command="collector").start()
        send(collector, ["stored while away 1", "stored while away 2"], service="away", start=time.time_ns())
        assert collector.stop() == 0
        server.start()
        send(server, ["after the restart"], service="away", start=time.time_ns())
        time.sleep(5)  # the follower reconnects within a second or two
    finally:
        process.send_signal(signal.SIGINT)
        printed, errors = process.communicate(timeout=10)
    assert [json.loads(line)["body"] for line in printed.splitlines()] == [
        "stored while away 1",
        "stored while away 2",
        "after the restart",
    ]
    assert process.returncode == 0
    assert errors.splitlines() == ["labtel: connection lost; reconnecting...", "labtel: reconnected"]


def test_a_url_that_is_not_one_is_named() -> None:
    result = runner.invoke(app, ["events", "--api", "not a url"])
    assert result.exit_code == 1
    assert result.stderr == "labtel: http://not a url/events is not a URL: check --api\n"


def test_export_to_a_pipe_its_reader_closed_ends_quietly() -> None:
    """`labtel export -o - | head -c 1`: no 'cannot write -: Broken pipe' error line."""
    with raw_api(http_answer("200 OK", "application/octet-stream", b"x" * (4 << 20))) as api:
        process = subprocess.Popen(
            [sys.executable, "-m", "labtel.cli", "export", "-o", "-", "--api", api],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(1) == b"x"
        process.stdout.close()
        errors = process.stderr.read().decode()
        process.wait(30)
    assert errors == ""


def test_sql_output_dash_is_stdout_as_for_export(
    server: LabtelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sql", "SELECT 1 AS n", "-o", "-", "--api", server.api])
    assert result.exit_code == 0, result.output
    assert result.stdout == '"n"\n1\n'
    assert not (tmp_path / "-").exists()


def test_follow_waits_out_a_proxy_s_502_while_the_api_restarts() -> None:
    """A reverse proxy answers 502 (its HTML page) while the query API behind it restarts: the
    follower keeps trying instead of ending with 'not the query API: check --api'."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    streams: list[str] = []
    event = {"event_id": "01a23f5b-0000-7000-8000-000000000001", "timestamp": "2026-08-06T10:00:00Z", "body": "back"}
    event |= {"severity_text": "INFO", "service_name": "proxied", "event_type": "", "node_id": ""}

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/events/stream"):
                streams.append(self.headers.get("Last-Event-ID", ""))
                if len(streams) <= 2:
                    self._answer("502 Bad Gateway", "text/html", b"<html>502 Bad Gateway</html>")
                    return
                body = b"retry: 2000\n\n"
                if streams[-1] != event["event_id"]:  # as the query API does, nothing twice
                    body += b"id: " + event["event_id"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
                self._answer("200 OK", "text/event-stream", body)
                return
            self._answer("200 OK", "application/json", b'{"events": [], "next_cursor": null}')

        def _answer(self, status: str, kind: str, body: bytes) -> None:
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{proxy.server_address[1]}"
    process = follow(api)
    try:
        wait_for(lambda: len(streams) >= 4, timeout=30, what="the follower to come back")
    finally:
        process.send_signal(signal.SIGINT)
        printed, errors = process.communicate(timeout=10)
        proxy.shutdown()
    assert process.returncode == 0, errors
    assert [json.loads(line)["body"] for line in printed.splitlines()] == ["back"]
    assert streams[3] == event["event_id"]  # resumed after it
    assert errors.splitlines()[:2] == ["labtel: connection lost; reconnecting...", "labtel: reconnected"]


def test_workflow_experiment_and_resource_filters_reach_the_api(server: LabtelServer, tmp_path: Path) -> None:
    def post(body: str, attributes: dict[str, str], host: str, offset_s: int) -> None:
        record = log_record(body, {"lab.node.id": "ot2_1", **attributes}, time_ns=BASE + offset_s * 10**9)
        request = logs_request([record], resource={"service.name": "filters", "host.name": host})
        response = httpx.post(
            f"{server.http}/v1/logs",
            content=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        response.raise_for_status()

    post("wf1 on bench-1", {"lab.workflow.id": "wf1", "lab.experiment.id": "exp1"}, "bench-1", 0)
    post("wf1 on bench-2", {"lab.workflow.id": "wf1", "lab.experiment.id": "exp2"}, "bench-2", 1)
    post("wf2 on bench-1", {"lab.workflow.id": "wf2", "lab.experiment.id": "exp1"}, "bench-1", 2)

    def bodies(*options: str) -> list[str]:
        result = runner.invoke(app, ["events", "--api", server.api, "--service", "filters", "--json", *options])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["body"] for line in result.stdout.splitlines()]

    assert bodies("--workflow", "wf1") == ["wf1 on bench-1", "wf1 on bench-2"]
    assert bodies("--experiment", "exp1") == ["wf1 on bench-1", "wf2 on bench-1"]
    assert bodies("-r", "host.name=bench-2") == ["wf1 on bench-2"]
    assert bodies("--resource", "host.name=!=bench-2", "--workflow", "wf2") == ["wf2 on bench-1"]
    bad = runner.invoke(app, ["events", "--api", server.api, "--resource", "host.name"])
    assert bad.exit_code == 2
    assert "--resource 'host.name': use key=value" in bad.output

    target = tmp_path / "wf1.csv"
    exported = runner.invoke(
        app, ["export", "--api", server.api, "--workflow", "wf1", "-r", "host.name=bench-1", "-o", str(target)]
    )
    assert exported.exit_code == 0, exported.output
    assert [row["body"] for row in csv.DictReader(io.StringIO(target.read_text()))] == ["wf1 on bench-1"]
