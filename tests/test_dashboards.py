"""Grafana dashboards: valid JSON, fresh from their generator, and every panel's and variable's SQL,
expanded as the ClickHouse datasource expands it, runs on a store holding a simulated lab day and
returns what its panel needs. The utilization panels give the API's numbers."""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram

from labtel.collector import telemetry
from labtel.collector.alerts.history import History, new_alert_id
from labtel.collector.alerts.model import Alert
from labtel.collector.component import Payload
from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.signals import SIGNALS
from labtel.collector.self_metrics import SelfMetrics, snapshot
from labtel.collector.storage.client import Storage
from labtel.demo.emitter import Emitter
from labtel.demo.runner import backfill_window, simulate
from labtel.demo.sim import Log
from labtel.query_api import utilization as u
from labtel.sdk.transport import Accepted
from tests.helpers import log_record, logs_request

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
sys.path.insert(0, str(DASHBOARDS))
import generate  # noqa: E402
from macros import ALL, expand, provisioning_value  # noqa: E402

START_NS = 1_774_872_000 * 10**9  # 2026-03-30T12:00:00Z
DAY_NS = 86_400 * 10**9
NUMBER = ("Int", "UInt", "Float", "Decimal")


class StorageTransport:
    """Delivers the SDK's OTLP requests straight to a ClickHouse exporter (no receivers in between)."""

    def __init__(self, storage: Storage) -> None:
        self.exporter = ClickHouseExporter("seed", ClickHouseExporterConfig(), storage)

    def send(self, data: bytes) -> Accepted:
        (verdict,) = self.exporter.store([Payload(SIGNALS["logs"], data, 0)], uuid.uuid4().hex)
        assert verdict is None, verdict
        return Accepted()

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def lab_day(chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    """A day of the simulated labs (chemistry, observatory, geochronology), a run still going, and
    the collector's own metrics."""
    from labtel.collector.storage import migrations
    from tests.conftest import make_storage

    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    items, _ = simulate(backfill_window(DAY_NS / 1e9, START_NS), seed=7)
    emitter = Emitter("", "grpc", tmp_path_factory.mktemp("spool"), transport=lambda: StorageTransport(storage))
    emitter.emit_all(item for item in items if isinstance(item, Log))
    assert emitter.close(60).pending == 0
    running = log_record(
        "run 99 started", {"lab.event.type": "run_start", "lab.run.id": "run-99"}, time_ns=START_NS + DAY_NS - 10**9
    )
    storage.insert_otlp(
        "logs", logs_request([running], resource={"service.name": "pychron.argon-line-1"}).SerializeToString(), "run"
    )
    alert = Alert(
        alert_id=new_alert_id(),
        exporter="alerts",
        kind="event",
        rule="default",
        rule_type="event",
        level="ERROR",
        group_key="ot2_1",
        fired_at=(START_NS + DAY_NS // 2) / 1e9,
        summary="ot2_1: action failed",
        notifiers=["lab-email"],
        event_count=1,
    )
    History(storage, "alerts").record([(alert, "delivered")])
    telemetry.RECEIVED_RECORDS.labels("logs", "grpc", "accepted").inc(100)
    telemetry.QUEUE_RECORDS.labels("logs").set(5)
    telemetry.WAL_BYTES.labels("clickhouse").set(0)
    telemetry.INSERT_LATENCY.labels("clickhouse", "logs").observe(0.05)
    SelfMetrics(storage).store_once()
    telemetry.RECEIVED_RECORDS.labels("logs", "grpc", "accepted").inc(50)
    telemetry.INSERT_LATENCY.labels("clickhouse", "logs").observe(0.07)
    SelfMetrics(storage).store_once()
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def boards() -> dict[str, dict[str, Any]]:
    return {name: make().to_json() for name, make in generate.DASHBOARDS.items()}


def variables_all(board: dict[str, Any], database: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "constant":
            values[variable["name"]] = database
        elif variable["type"] == "query":
            values[variable["name"]] = ALL
        else:
            values[variable["name"]] = variable["current"]["value"]
    return values


def board_range(name: str) -> tuple[int, int]:
    """The range a dashboard is looked at: the simulated day; the collector's health, around now
    (its metrics and the events' arrival times are real ones)."""
    if name == "collector-health":
        now = time.time_ns()
        return now - 3600 * 10**9, now + 600 * 10**9
    return START_NS, START_NS + DAY_NS


def run(
    storage: Storage, sql: str, variables: dict[str, Any], start_ns: int = START_NS, end_ns: int = START_NS + DAY_NS
) -> dict[str, Any]:
    expanded = expand(sql, start_ns // 10**6, end_ns // 10**6, 60_000, variables)
    result: dict[str, Any] = json.loads(
        storage.raw(expanded, "JSON", settings={"output_format_json_quote_64bit_integers": 0})
    )
    return result


def pick(
    storage: Storage,
    board: dict[str, Any],
    name: str,
    texts: list[str],
    span: tuple[int, int] = (START_NS, START_NS + DAY_NS),
) -> list[str]:
    """The values Grafana sends when `texts` are chosen in variable `name`'s list: its query's
    first column for each (the datasource's convention: value first, text second)."""
    [variable] = [v for v in board["templating"]["list"] if v["name"] == name]
    rows = run(storage, variable["query"], variables_all(board, storage.names.database), *span)["data"]
    listed = {row["text"]: row["value"] for row in rows}
    assert set(texts) <= set(listed), (name, set(texts) - set(listed))
    return [listed[text] for text in texts]


def test_the_committed_files_are_what_the_generator_makes() -> None:
    for relative, text in generate.rendered().items():
        assert (DASHBOARDS / relative).read_text() == text, f"{relative} is stale: run `make dashboards`"


def test_dashboards_are_valid_grafana_models() -> None:
    provisioned = yaml.safe_load((DASHBOARDS / "provisioning/datasources/labtel.yaml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "grafana-clickhouse-datasource"
    assert datasource["jsonData"]["logs"]["otelEnabled"] is True
    assert datasource["jsonData"]["traces"]["traceTimestampTableSuffix"] == "_trace_id_ts"
    provider = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/labtel.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    uids = set()
    for name, board in boards().items():
        assert board["schemaVersion"] >= 39, name
        assert board["uid"] not in uids
        uids.add(board["uid"])
        assert board["title"]
        panels = board["panels"]
        assert len({p["id"] for p in panels}) == len(panels), name
        names = [v["name"] for v in board["templating"]["list"]]
        assert len(set(names)) == len(names)
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"])  # noqa: PT018
            covered = set(
                itertools.product(range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"]))
            )
            assert not covered & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= covered
            assert panel["datasource"]["uid"] == datasource["uid"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"]
                assert target["rawSql"].strip()
                assert target["refId"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == datasource["uid"]


def _columns(result: dict[str, Any]) -> dict[str, str]:
    return {column["name"]: column["type"] for column in result["meta"]}


def _numeric(columns: dict[str, str]) -> list[str]:
    return [n for n, t in columns.items() if t.removeprefix("Nullable(").startswith(NUMBER)]


def _drawn(panel: dict[str, Any], columns: dict[str, str]) -> list[str]:
    """The numeric columns a panel draws: Grafana's charts draw every numeric field, less those an
    override hides from the visualization and, in a bar gauge, those `reduceOptions.fields` leaves out."""
    hidden = {
        override["matcher"]["options"]
        for override in panel["fieldConfig"]["overrides"]
        if override["matcher"]["id"] == "byName"
        and any(p["id"] == "custom.hideFrom" and p["value"].get("viz") for p in override["properties"])
    }
    drawn = [n for n in _numeric(columns) if n not in hidden]
    fields = panel["options"].get("reduceOptions", {}).get("fields", "")
    if fields:
        drawn = [n for n in drawn if re.search(fields.strip("/"), n)]
    return drawn


def _check_shape(panel: dict[str, Any], title: str, result: dict[str, Any]) -> None:
    kind = panel["type"]
    columns = _columns(result)
    numeric = _numeric(columns)
    rows = result["data"]
    assert rows, f"{title}: no rows"
    if kind not in ("table", "logs"):
        # one quantity on one axis: a second number would be drawn in the panel's unit beside it
        assert len(_drawn(panel, columns)) == 1, f"{title} draws {_drawn(panel, columns)}"
    if kind == "timeseries":
        assert columns["time"].startswith("DateTime"), title
        assert numeric, title
    elif kind in ("stat", "histogram"):
        assert numeric, title
    elif kind in ("bargauge", "barchart"):
        assert numeric, title
        assert any("String" in t for t in columns.values()), title
    elif kind == "logs":
        assert columns["timestamp"].startswith("DateTime64"), title
        assert {"body", "level"} <= set(columns), title
        # the datasource links a TraceId column to the trace and its logs; a panel link would replace them
        assert "TraceId" in columns, title
        assert not panel["fieldConfig"]["overrides"], title


@pytest.mark.parametrize("board_name", list(generate.DASHBOARDS))
def test_every_panel_and_variable_query_runs_and_fits_its_panel(lab_day: Storage, board_name: str) -> None:
    board = boards()[board_name]
    variables = variables_all(board, lab_day.names.database)
    span = board_range(board_name)
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            values = run(lab_day, variable["query"], variables, *span)
            assert values["data"], f"{board_name}: variable {variable['name']} has no values"
            assert all("String" in t for t in _columns(values).values())
    for panel in board["panels"]:
        for target in panel["targets"]:
            result = run(lab_day, target["rawSql"], variables, *span)
            _check_shape(panel, f"{board_name}: {panel['title']}", result)


def test_the_provisioned_datasource_reads_grafanas_environment() -> None:
    (datasource,) = yaml.safe_load((DASHBOARDS / "provisioning/datasources/labtel.yaml").read_text())["datasources"]
    env = {
        "LABTEL_CLICKHOUSE_HOST": "ch-s1-r1",
        "LABTEL_CLICKHOUSE_PORT": "8124",
        "LABTEL_CLICKHOUSE_USER": "lab",
        "LABTEL_CLICKHOUSE_PASSWORD": "s3cret!",
    }
    data = {k: provisioning_value(v, env) for k, v in datasource["jsonData"].items() if isinstance(v, str)}
    assert (data["host"], data["port"], data["username"]) == ("ch-s1-r1", "8124", "lab")
    assert provisioning_value(datasource["secureJsonData"]["password"], env) == "s3cret!"


def test_quotes_and_backslashes_in_variables_keep_the_sql_whole(lab_day: Storage) -> None:
    at = START_NS - 3600 * 10**9  # before the simulated day: these events only
    odd = {"lab.node.id": "node'1", "lab.event.type": "note"}
    records = [
        log_record("it's in C:\\temp\\", odd | {"lab.run.id": "run'\\t1"}, time_ns=at),
        log_record("elsewhere", odd, time_ns=at + 10**9),
    ]
    resource = {"service.name": "o'brien-lab"}
    lab_day.insert_otlp("logs", logs_request(records, resource=resource).SerializeToString(), "odd")
    board = boards()["event-explorer"]
    span = (at - 10**9, at + 10 * 10**9)
    chosen = variables_all(board, lab_day.names.database) | {
        "service": pick(lab_day, board, "service", ["o'brien-lab"], span),
        "node": pick(lab_day, board, "node", ["node'1"], span),
    }
    matching, logs = (next(p for p in board["panels"] if p["type"] == kind) for kind in ("timeseries", "logs"))
    for search, run_id, bodies in (
        ("", "", {"it's in C:\\temp\\", "elsewhere"}),
        ("IT'S", "", {"it's in C:\\temp\\"}),
        ("c:\\temp\\", "", {"it's in C:\\temp\\"}),
        ("", "run'\\t1", {"it's in C:\\temp\\"}),
        ("'; DROP TABLE x; --", "", set()),
    ):
        values = chosen | {"search": search, "run": run_id}
        rows = run(lab_day, logs["targets"][0]["rawSql"], values, at - 10**9, at + 10 * 10**9)["data"]
        assert {r["body"] for r in rows} == bodies, (search, run_id)
        counted = run(lab_day, matching["targets"][0]["rawSql"], values, at - 10**9, at + 10 * 10**9)["data"]
        assert sum(r["events"] for r in counted) == len(bodies), (search, run_id)


def test_backslashes_and_quotes_in_multi_value_variables_keep_the_sql_whole(lab_day: Storage) -> None:
    """Several values chosen, each holding what ends or bends a ClickHouse literal or the list
    (`\\` before a quote, `\\t`, `'`, `"`, a comma, braces, `$`): each matches its own events."""
    at = START_NS - 5 * 3600 * 10**9  # before the simulated day, and the other odd events
    names = ["C:\\lab\\", "it's", 'say "hi"', "tab\\t", "a,b", "{x}", "$$", "ünïcode"]
    records = [
        log_record(f"from {name}", {"lab.node.id": name, "lab.event.type": f"type {name}"}, time_ns=at + i)
        for i, name in enumerate(names)
    ]
    records.append(log_record("from ot", {"lab.node.id": "a", "lab.event.type": "b"}, time_ns=at + 100))
    request = logs_request(records, resource={"service.name": "back\\slash"})
    lab_day.insert_otlp("logs", request.SerializeToString(), "multi")
    board = boards()["event-explorer"]
    logs = next(p for p in board["panels"] if p["type"] == "logs")["targets"][0]["rawSql"]
    span = (at - 10**9, at + 10**9)
    base = variables_all(board, lab_day.names.database) | {"search": "", "run": ""}
    for chosen in (names, names[:2], names[3:6], ["$$"]):
        for variable, texts in (("node", chosen), ("event_type", [f"type {name}".lower() for name in chosen])):
            values = base | {variable: pick(lab_day, board, variable, texts, span)}
            rows = run(lab_day, logs, values, *span)["data"]
            assert sorted(r["body"] for r in rows) == sorted(f"from {name}" for name in chosen), (variable, chosen)
    service = base | {"service": pick(lab_day, board, "service", ["back\\slash"], span)}
    assert len(run(lab_day, logs, service, *span)["data"]) == len(names) + 1
    typed = base | {"node": ["x') OR 1=1 --", "\\'"]}  # typed into the box, not picked: no match, no error
    assert run(lab_day, logs, typed, *span)["data"] == []


def test_conditional_all_reinserts_its_condition_as_the_frontend_does() -> None:
    """The frontend's String.replace reads `$$` in the condition as `$`: the simulation does too,
    and refuses the patterns that would paste parts of the match."""
    sql = "SELECT 1 WHERE $__conditionalAll(x = $$a$$, $v)"
    assert expand(sql, 0, 1000, 1000, {"v": ["b"]}) == "SELECT 1 WHERE x = $a$"
    with pytest.raises(ValueError, match="replacement pattern"):
        expand("SELECT 1 WHERE $__conditionalAll(x = '$&', $v)", 0, 1000, 1000, {"v": ["b"]})


def test_collector_rates_count_every_interval_and_keep_series_apart(lab_day: Storage) -> None:
    """10 records/s over gRPC, snapshots every 15 s, beside an HTTP counter standing still: 10/s in
    every minute (not the 45 s a minute's first and last points span, nor gRPC minus HTTP)."""
    registry = CollectorRegistry()
    received = Counter("labtel_receiver_records", "records", ["signal", "transport", "outcome"], registry=registry)
    latency = Histogram("labtel_exporter_insert_duration_seconds", "inserts", ["exporter", "signal"], registry=registry)
    started = START_NS - 2 * 3600 * 10**9  # a window holding no other collector metrics
    received.labels("logs", "http", "accepted").inc(1000)
    for step in range(1, 25):
        received.labels("logs", "grpc", "accepted").inc(150)
        for _ in range(15):
            latency.labels("clickhouse", "logs").observe(0.5)
        lab_day.insert_otlp("metrics", snapshot(registry, started + step * 15 * 10**9, started), f"rates-{step}")
    board = boards()["collector-health"]
    panels = {p["title"]: p["targets"][0]["rawSql"] for p in board["panels"]}
    variables = variables_all(board, lab_day.names.database)
    span = (started + 60 * 10**9, started + 299 * 10**9)  # the minutes 1 to 4 after the start
    rates = run(lab_day, panels["Records received per second, by outcome"], variables, *span)["data"]
    assert [(r["outcome"], r["per_second"]) for r in rates] == [("accepted", pytest.approx(10.0))] * 4
    means = run(lab_day, panels["Insert latency (mean)"], variables, *span)["data"]
    assert [(r["signal"], r["mean_seconds"]) for r in means] == [("logs", pytest.approx(0.5))] * 4


def test_a_variable_narrows_the_panels(lab_day: Storage) -> None:
    board = boards()["event-explorer"]
    variables = variables_all(board, lab_day.names.database) | {"node": pick(lab_day, board, "node", ["ot2_1"])}
    variables["search"] = "started"
    logs_panel = next(p for p in board["panels"] if p["type"] == "logs")
    rows = run(lab_day, logs_panel["targets"][0]["rawSql"], variables)["data"]
    assert rows
    assert all(r["NodeId"] == "ot2_1" and "started" in r["body"].lower() for r in rows)


def test_utilization_panels_give_the_api_numbers(lab_day: Storage) -> None:
    board = boards()["instrument-utilization"]
    variables = variables_all(board, lab_day.names.database)
    scope = u.Scope(start_ns=START_NS, end_ns=START_NS + DAY_NS, now_ns=START_NS + 10 * DAY_NS)
    api_nodes = {n["node"]: n for n in u.nodes_report(lab_day, scope)["nodes"] if n["available_s"] > 0}
    per_node = next(p for p in board["panels"] if p["title"] == "Utilization per node")
    panel_nodes = {r["node"]: r for r in run(lab_day, per_node["targets"][0]["rawSql"], variables)["data"]}
    assert set(panel_nodes) == set(api_nodes)
    assert any(n["busy_s"] > 0 for n in api_nodes.values())
    for node, expected in api_nodes.items():
        assert panel_nodes[node]["utilization_percent"] == pytest.approx(expected["utilization_percent"], abs=0.006), (
            node
        )
        assert panel_nodes[node]["busy_hours"] == pytest.approx(expected["busy_s"] / 3600, abs=0.006), node
        assert panel_nodes[node]["actions"] == expected["actions"]
    daily = next(p for p in board["panels"] if p["title"] == "Daily utilization")
    for zone in ("UTC", "Europe/Madrid"):
        rows = run(lab_day, daily["targets"][0]["rawSql"], variables | {"tz": zone})["data"]
        api = u.periods_report(lab_day, u.Scope(**{**scope.__dict__, "tz": zone}), u.period_bucket("day"))["periods"]
        assert [r["utilization_percent"] for r in rows] == pytest.approx(
            [p["utilization_percent"] for p in api], abs=0.006
        )
        assert [r["actions"] for r in rows] == [p["actions"] for p in api]
