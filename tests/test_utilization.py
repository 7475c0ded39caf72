"""Utilization analytics: hand-made event histories with known answers, invariants on random ones,
and the routes (JSON and CSV)."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.query_api import utilization as u
from labtel.query_api.app import create_app
from labtel.query_api.events import EventFilter
from labtel.query_api.params import ParamError
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

S = 1_000_000_000
H = 3600 * S
T0 = 1_780_000_000 * S // H * H  # 2026-05-28T20:00:00Z, on an hour
FAR = T0 + 1000 * H  # "now", long after every history


def event(t_s: float, node: str, event_type: str, severity: int = 9, **attributes: Any) -> Any:
    attributes = {"lab.node.id": node, "lab.event.type": event_type, **attributes}
    return log_record(f"{event_type} on {node}", attributes, time_ns=T0 + int(t_s * S), severity=severity)


def store(storage: Storage, records: list[Any], workcell: str = "wc-1", lab: str = "lab-A", user: str = "") -> None:
    resource = {"service.name": f"svc-{workcell}", "lab.workcell.id": workcell, "lab.name": lab}
    if user:
        resource["lab.user.id"] = user
    storage.insert_otlp("logs", logs_request(records, resource=resource).SerializeToString(), uuid.uuid4().hex)


def scope(start_s: float = 0, end_s: float = 3600, **kwargs: Any) -> u.Scope:
    return u.Scope(start_ns=T0 + int(start_s * S), end_ns=T0 + int(end_s * S), now_ns=FAR, **kwargs)


def by_node(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in report["nodes"]}


@pytest.fixture
def db(storage: Storage) -> Storage:
    """A migrated database of this test's own."""
    return storage


def test_overlapping_actions_count_once_as_busy(db: Storage) -> None:
    store(
        db,
        [
            event(100, "ot2", "action_start", action_id="a1", **{"lab.user.id": "alice"}),
            event(300, "ot2", "action_start", action_id="a2", **{"lab.user.id": "bob"}),
            event(400, "ot2", "action_complete", action_id="a1"),
            event(700, "ot2", "action_status_change", action_id="a2", status="failed", severity=17),
            event(2000, "ot2", "action_start", action_id="a3"),
            event(2050, "ot2", "action_cancelled", action_id="a3"),
            event(10, "reader", "node_status_update"),  # a node with no actions is idle all the range
        ],
    )
    report = u.nodes_report(db, scope())
    ot2, reader = by_node(report)["ot2"], by_node(report)["reader"]
    assert ot2["busy_s"] == 600 + 50  # [100, 700] once, and [2000, 2050]
    assert ot2["available_s"] == 3600
    assert ot2["idle_s"] == 3600 - 650
    assert ot2["utilization_percent"] == round(100 * 650 / 3600, 3)
    assert (ot2["actions"], ot2["completed"], ot2["failed"], ot2["cancelled"]) == (3, 1, 1, 1)
    assert ot2["mean_action_s"] == round((300 + 400 + 50) / 3, 3)
    assert ot2["p95_action_s"] == 400
    assert (reader["busy_s"], reader["available_s"], reader["actions"]) == (0, 3600, 0)
    assert report["workcells"] == [
        {"workcell": "wc-1", "nodes": 2, **u._time_figures(7200 * S, 650 * S)}
        | {"actions": 3, "completed": 1, "failed": 1, "cancelled": 1, "running": 0}
    ]
    assert report["lab"]["busy_s"] == 650


def test_events_out_of_order_and_without_ids(db: Storage) -> None:
    # MADSci's workcell reports `action_status`, nodes `status`; no ids: one action at a time.
    history = [
        event(100, "pf400", "action_start"),
        event(101, "pf400", "action_status_change", action_status="running"),
        event(160, "pf400", "action_status_change", status="succeeded"),
        event(161, "pf400", "action_complete"),
        event(200, "pf400", "action_start"),
        event(260, "pf400", "action_failed", severity=17),
    ]
    for record in reversed(history):  # stored last first, each on its own
        store(db, [record])
    node = by_node(u.nodes_report(db, scope()))["pf400"]
    assert node["busy_s"] == 120
    assert (node["actions"], node["completed"], node["failed"]) == (2, 1, 1)


def test_actions_without_ids_back_to_back_and_without_length(db: Storage) -> None:
    # At an instant with an end and a start, the end closes the action that was open (back to back,
    # as with timestamps in whole seconds); with none open, the start opens an action of no length.
    history = [
        event(0, "arm", "action_start"),
        event(100, "arm", "action_complete"),
        event(100, "arm", "action_start"),
        event(200, "arm", "action_failed", severity=17),
        event(200, "arm", "action_start"),
        event(300, "arm", "action_complete"),
        event(500, "quick", "action_start"),
        event(500, "quick", "action_complete"),  # took no time at all
        event(600, "quick", "action_start"),
        event(700, "quick", "action_complete"),
    ]
    for record in reversed(history):  # stored last first: the order of arrival does not matter
        store(db, [record])
    nodes = by_node(u.nodes_report(db, scope()))
    arm, quick = nodes["arm"], nodes["quick"]
    assert arm["busy_s"] == 300
    assert (arm["actions"], arm["completed"], arm["failed"], arm["running"]) == (3, 2, 1, 0)
    assert (arm["mean_action_s"], arm["p95_action_s"]) == (100, 100)
    assert quick["busy_s"] == 100
    assert (quick["actions"], quick["completed"], quick["running"]) == (2, 2, 0)


def test_an_end_stamped_before_its_start_counts_as_no_time(db: Storage) -> None:
    # Two clocks: the node's end event is stamped before the workcell's start event.
    store(
        db,
        [
            event(200, "hplc", "action_start", action_id="skewed"),
            event(100, "hplc", "action_complete", action_id="skewed"),
            event(1000, "hplc", "action_start", action_id="plain"),
            event(1300, "hplc", "action_complete", action_id="plain"),
        ],
    )
    node = by_node(u.nodes_report(db, scope()))["hplc"]
    assert (node["busy_s"], node["actions"]) == (300, 2)
    assert (node["mean_action_s"], node["p95_action_s"]) == (150, 300)  # not (-100 + 300) / 2


def test_actions_crossing_the_range_and_without_an_end(db: Storage) -> None:
    store(
        db,
        [
            event(-600, "hplc", "action_start", action_id="before"),  # started 10 min before the range
            event(300, "hplc", "action_complete", action_id="before"),
            event(1000, "hplc", "action_complete", action_id="no-start", duration_ms=200_000),  # began at 800
            event(3000, "hplc", "action_start", action_id="open"),  # no end: runs an hour at most
            event(3500, "sealer", "action_start", action_id="late"),
            event(3700, "sealer", "action_complete", action_id="late"),  # ends after the range
        ],
    )
    nodes = by_node(u.nodes_report(db, scope()))
    assert nodes["hplc"]["busy_s"] == 300 + 200 + 600  # clipped to the range at both ends
    assert (nodes["hplc"]["actions"], nodes["hplc"]["completed"]) == (2, 2)  # the open one ends later
    assert nodes["sealer"]["busy_s"] == 100
    assert nodes["sealer"]["actions"] == 0  # it ends after the range: counted where it ends
    later = by_node(u.nodes_report(db, scope(3600, 7200)))
    assert later["hplc"]["busy_s"] == 3000  # the open action: [3000, 6600], from 3600 on
    assert later["hplc"]["running"] == 1
    assert (later["sealer"]["busy_s"], later["sealer"]["actions"]) == (100, 1)


def test_an_action_running_now_counts_as_running_in_a_range_up_to_now(db: Storage) -> None:
    # The routes' default range ends now: an action started 10 minutes ago, with no end yet.
    store(db, [event(3000, "hplc", "action_start", action_id="now"), event(100, "hplc", "node_status_update")])
    up_to_now = u.Scope(start_ns=T0, end_ns=T0 + H, now_ns=T0 + H)
    node = by_node(u.nodes_report(db, up_to_now))["hplc"]
    assert (node["busy_s"], node["actions"], node["running"]) == (600, 1, 1)
    periods = u.periods_report(db, up_to_now, u.period_bucket("15m"))["periods"]
    assert [p["actions"] for p in periods] == [0, 0, 0, 1]
    (session,) = u.sessions_report(db, up_to_now, "node")["sessions"]
    assert (session["busy_s"], session["running"]) == (600, 1)
    earlier = by_node(u.nodes_report(db, u.Scope(start_ns=T0, end_ns=T0 + 3300 * S, now_ns=T0 + H)))["hplc"]
    assert (earlier["busy_s"], earlier["actions"]) == (300, 0)  # it runs on past that range's end


def test_down_time_is_not_available(db: Storage) -> None:
    store(
        db,
        [
            event(1000, "centrifuge", "node_stop"),
            event(1600, "centrifuge", "node_start"),
            event(1500, "centrifuge", "action_start", action_id="x"),  # runs while said to be down
            event(1700, "centrifuge", "action_complete", action_id="x"),
            event(600, "incubator", "node_start"),  # first state is a start: down before it
        ],
    )
    nodes = by_node(u.nodes_report(db, scope()))
    assert nodes["centrifuge"]["available_s"] == 3600 - 600 + 100
    assert nodes["centrifuge"]["busy_s"] == 200
    assert nodes["incubator"]["available_s"] == 3000


def test_a_restart_logged_at_one_instant_is_no_down_time(db: Storage) -> None:
    store(
        db,
        [
            event(600, "reader", "node_stop"),  # a restart: stop and start at one instant
            event(600, "reader", "node_start"),
            event(-3600, "sealer", "node_start"),
            event(600, "sealer", "node_start"),  # stored first, stamped alike
            event(600, "sealer", "node_stop"),
            event(600, "arm", "node_stop"),
            event(1200, "arm", "node_start"),  # down from 600: up and down again at 1200
            event(1200, "arm", "node_stop"),
            event(1800, "arm", "node_start"),
        ],
    )
    nodes = by_node(u.nodes_report(db, scope()))
    assert nodes["reader"]["available_s"] == 3600
    assert nodes["sealer"]["available_s"] == 3600
    assert nodes["arm"]["available_s"] == 3600 - 1200
    periods = u.periods_report(db, scope(), u.period_bucket("15m"))["periods"]
    assert [p["by_node"]["sealer"]["available_s"] for p in periods] == [900] * 4
    assert [p["by_node"]["arm"]["available_s"] for p in periods] == [600, 0, 900, 900]


def test_nodes_seen_in_whole_hours_partial_hours_and_by_expiring_events(db: Storage) -> None:
    # The range is 00:30 to 03:15: whole hours 01:00-03:00 come from the hourly nodes projection,
    # the partial hours at both ends and events with an expiry of their own from the rows.
    store(
        db,
        [
            event(1000, "before", "node_status_update"),  # 00:16, in the first hour, before the range
            event(1900, "early", "node_status_update"),  # 00:31, the partial first hour
            event(2 * 3600, "middle", "node_status_update"),  # 02:00, a whole hour
            event(3 * 3600 + 100, "late", "node_status_update"),  # 03:01, the partial last hour
            event(3 * 3600 + 1000, "after", "node_status_update"),  # 03:16, after the range
            event(5000, "kept", "node_status_update", **{"lab.expires_at": "2099-01-01T00:00:00Z"}),
            event(5000, "expired", "node_status_update", **{"lab.expires_at": "2020-01-01T00:00:00Z"}),
        ],
    )
    seen = sorted(by_node(u.nodes_report(db, scope(1800, 3 * 3600 + 900))))
    assert seen == ["early", "kept", "late", "middle"]
    # Within one hour there are no whole hours: all from the rows.
    assert sorted(by_node(u.nodes_report(db, scope(1800, 3000)))) == ["early"]
    plan = db.raw(f"EXPLAIN {u.report_sql(db, 'nodes')}", None, parameters=scope(1800, 3 * 3600).parameters())
    assert b"p_nodes_hourly" in plan


def test_sessions_join_short_gaps_and_say_who(db: Storage) -> None:
    store(
        db,
        [
            event(0, "ot2", "action_start", action_id="1", **{"lab.user.id": "alice", "lab.experiment.id": "e1"}),
            event(600, "ot2", "action_complete", action_id="1"),
            event(900, "ot2", "action_start", action_id="2", **{"lab.user.id": "bob", "lab.workflow.id": "w9"}),
            event(1200, "ot2", "action_failed", action_id="2"),
            event(5000, "ot2", "action_start", action_id="3"),  # an hour later: a new session, no end
            event(700, "reader", "action_start", action_id="r"),
            event(800, "reader", "action_complete", action_id="r"),
        ],
    )
    report = u.sessions_report(db, scope(0, 7200, gap_ns=1800 * S, open_limit_ns=600 * S), "node")
    sessions = [(s["node"], s["start"], s["duration_s"], s["busy_s"], s["actions"]) for s in report["sessions"]]
    first = u.format_time_ns(T0)
    assert sessions == [
        ("ot2", first, 1200, 900, 2),
        ("reader", u.format_time_ns(T0 + 700 * S), 100, 100, 1),
        ("ot2", u.format_time_ns(T0 + 5000 * S), 600, 600, 1),
    ]
    ot2 = report["sessions"][0]
    assert (ot2["completed"], ot2["failed"], ot2["idle_s"]) == (1, 1, 300)
    assert ot2["users"] == ["alice", "bob"]
    assert (ot2["experiments"], ot2["workflows"]) == (["e1"], ["w9"])
    assert report["sessions"][2]["running"] == 1
    cell = u.sessions_report(db, scope(0, 7200, gap_ns=1800 * S, open_limit_ns=600 * S), "workcell")["sessions"]
    assert [(s["workcell"], s["busy_s"], s["actions"], s["nodes"]) for s in cell] == [
        ("wc-1", 1000, 3, ["ot2", "reader"]),  # the reader's action fills part of ot2's idle gap
        ("wc-1", 600, 1, ["ot2"]),
    ]


def test_daily_periods_across_midnight_and_a_dst_change(db: Storage) -> None:
    # Europe/Madrid: 2026-03-29 has 23 hours. An action runs from 23:30 on the 28th to 00:30.
    midnight_29 = 1_774_738_800 * S  # 2026-03-29T00:00:00+01:00
    start = midnight_29 - 86_400 * S
    end = midnight_29 + 23 * H + 86_400 * S  # to midnight of the 31st
    store(
        db,
        [
            log_record(
                "a",
                {"lab.node.id": "gc", "lab.event.type": "action_start", "action_id": "m"},
                time_ns=midnight_29 - 1800 * S,
            ),
            log_record(
                "b",
                {"lab.node.id": "gc", "lab.event.type": "action_complete", "action_id": "m"},
                time_ns=midnight_29 + 1800 * S,
            ),
        ],
    )
    span = u.Scope(start_ns=start, end_ns=end, now_ns=end + H, tz="Europe/Madrid")
    report = u.periods_report(db, span, u.period_bucket("day"))
    days = [(p["start"], p["available_s"], p["busy_s"], p["actions"]) for p in report["periods"]]
    assert days == [
        ("2026-03-27T23:00:00.000000000Z", 86_400, 1800, 0),
        ("2026-03-28T23:00:00.000000000Z", 23 * 3600, 1800, 1),
        ("2026-03-29T22:00:00.000000000Z", 86_400, 0, 0),
    ]
    assert report["total"]["busy_s"] == 3600
    nights = u.periods_report(
        db,
        u.Scope(start_ns=start, end_ns=end, now_ns=end + H, tz="Europe/Madrid", day_start_s=12 * 3600),
        u.period_bucket("day"),
    )
    assert [p["start"][:13] for p in nights["periods"]] == [
        "2026-03-27T11",
        "2026-03-28T11",
        "2026-03-29T10",
        "2026-03-30T10",
    ]
    assert [p["busy_s"] for p in nights["periods"]] == [0, 3600, 0, 0]  # the whole action in one night


def test_an_action_ending_on_a_bucket_bound_is_in_the_bucket_it_begins(db: Storage) -> None:
    # T0 is on an hour: hourly bounds at T0, T0 + 1 h, T0 + 2 h.
    store(
        db,
        [
            event(1800, "hplc", "action_start", action_id="on-bound"),
            event(3600, "hplc", "action_complete", action_id="on-bound"),
            event(3600, "hplc", "action_start", action_id="from-bound"),
            event(5400, "hplc", "action_failed", action_id="from-bound"),
        ],
    )
    report = u.periods_report(db, scope(0, 7200), u.period_bucket("hour"))
    hours = [(p["busy_s"], p["actions"], p["completed"], p["failed"]) for p in report["periods"]]
    assert hours == [(1800, 0, 0, 0), (1800, 2, 1, 1)]


def test_a_range_too_long_for_the_sweep_is_an_error_in_the_sql_too(db: Storage) -> None:
    """The dashboards run the SQL without the API's checks: packed instants must not wrap around."""
    store(db, [event(0, "ot2", "action_start", action_id="1"), event(60, "ot2", "action_complete", action_id="1")])
    too_long = u.Scope(start_ns=-(2**62), end_ns=T0 + H, now_ns=FAR)
    with pytest.raises(Exception, match="at most 36 years"):
        db.rows(u.report_sql(db, "nodes"), parameters=too_long.parameters())
    with pytest.raises(Exception, match="at most 36 years"):
        db.rows(u.report_sql(db, "periods"), parameters={**too_long.parameters(), "bounds": [-(2**62), T0 + H]})
    with pytest.raises(ParamError, match="at most 36 years"):
        u.nodes_report(db, too_long)


def test_users_experiments_and_workflows(db: Storage) -> None:
    store(
        db,
        [
            event(0, "ot2", "workflow_start", **{"lab.workflow.id": "w1", "lab.user.id": "alice"}),
            event(10, "ot2", "action_start", action_id="1", **{"lab.user.id": "alice", "lab.workflow.id": "w1"}),
            event(110, "ot2", "action_complete", action_id="1"),
            event(120, "ot2", "workflow_complete", **{"lab.workflow.id": "w1"}),
            event(200, "reader", "workflow_start", **{"lab.workflow.id": "w2", "lab.user.id": "bob"}),
            event(210, "reader", "action_start", action_id="2", **{"lab.user.id": "bob", "lab.workflow.id": "w2"}),
            event(260, "reader", "action_failed", action_id="2"),
            event(270, "reader", "workflow_failed", **{"lab.workflow.id": "w2"}),
            event(300, "reader", "workflow_start", **{"lab.workflow.id": "w3", "lab.user.id": "bob"}),
        ],
    )
    users = {row["user"]: row for row in u.users_report(db, scope(), "user")["users"]}
    assert users["alice"] | {"nodes": None} == {
        "user": "alice",
        "actions": 1,
        "actions_completed": 1,
        "actions_failed": 0,
        "action_s": 100,
        "nodes": None,
        "workflows_completed": 1,
        "workflows_failed": 0,
        "workflows_aborted": 0,
        "workflows_running": 0,
        "workflow_s": 120,
    }
    assert users["alice"]["nodes"] == ["ot2"]
    assert (users["bob"]["actions_failed"], users["bob"]["workflows_failed"], users["bob"]["workflows_running"]) == (
        1,
        1,
        1,
    )
    workflows = {row["workflow"]: row for row in u.users_report(db, scope(), "workflow")["workflows"]}
    assert set(workflows) == {"w1", "w2", "w3"}
    assert workflows["w2"]["workflow_s"] == 70
    # MADSci's workflow author counts where the event has no lab.user.id of its own, ahead of the
    # resource's user (here the service account "svc").
    store(
        db,
        [
            event(400, "ot2", "workflow_start", **{"lab.workflow.id": "w4", "author": "carol"}),
            event(500, "ot2", "workflow_complete", **{"lab.workflow.id": "w4", "author": "carol"}),
            event(600, "ot2", "workflow_start", **{"lab.workflow.id": "w5"}),
            event(650, "ot2", "workflow_complete", **{"lab.workflow.id": "w5"}),
        ],
        user="svc",
    )
    users = {row["user"]: row for row in u.users_report(db, scope(), "user")["users"]}
    assert (users["carol"]["workflows_completed"], users["carol"]["workflow_s"]) == (1, 100)
    assert (users["svc"]["workflows_completed"], users["svc"]["workflow_s"]) == (1, 50)
    # A workflow whose events name several users is the user's of its first event that names one.
    store(
        db,
        [
            event(700, "ot2", "workflow_complete", **{"lab.workflow.id": "w6", "lab.user.id": "erin"}),
            event(690, "ot2", "workflow_start", **{"lab.workflow.id": "w6", "lab.user.id": "dave"}),
        ],
    )
    users = {row["user"]: row for row in u.users_report(db, scope(), "user")["users"]}
    assert (users["dave"]["workflows_completed"], users["dave"]["workflow_s"]) == (1, 10)
    assert "erin" not in users


def test_timeseries_flags_a_burst_and_counts_errors(db: Storage) -> None:
    records = [event(h * 3600 + 60 * i, "ot2", "node_status_update") for h in range(30) for i in range(5)]
    records += [event(25 * 3600 + 30 + i, "ot2", "node_error", severity=17) for i in range(40)]  # a burst
    store(db, records)
    report = u.timeseries_report(db, scope(0, 30 * 3600), EventFilter(), u.period_bucket("1h"), "none", history=12)
    (serie,) = report["series"]
    points = serie["points"]
    assert len(points) == 30
    assert sum(p["count"] for p in points) == 30 * 5 + 40
    flagged = [i for i, p in enumerate(points) if p["flagged"]]
    assert flagged == [25]
    assert points[25]["errors"] == 40
    assert points[25]["error_rate"] == round(40 / 45, 4)
    assert points[0]["baseline"] is None  # no history yet


RANDOM_HISTORY = st.lists(
    st.tuples(
        st.sampled_from(["n1", "n2", "n3"]),
        st.integers(min_value=-1800, max_value=9000),  # start (s), some before the range
        st.integers(min_value=0, max_value=2400),  # duration (s)
        st.sampled_from(["action_complete", "action_failed", None]),  # None: no end event
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=RANDOM_HISTORY, bucket=st.sampled_from(["hour", "15m", "day"]))
def test_invariants_on_random_histories(chdb_path: Path, history: list[Any], bucket: str) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    try:
        records = []
        for index, (node, start, duration, end_type) in enumerate(history):
            records.append(event(start, node, "action_start", action_id=str(index)))
            if end_type:
                records.append(event(start + duration, node, end_type, action_id=str(index)))
        store(storage, records)
        window = scope(0, 7200)
        nodes = u.nodes_report(storage, window)
        for node in nodes["nodes"]:
            assert node["busy_s"] + node["idle_s"] == pytest.approx(node["available_s"])
            assert 0 <= node["utilization_percent"] <= 100
            assert node["busy_s"] <= node["available_s"]
        periods = u.periods_report(storage, window, u.period_bucket(bucket))
        for key in ("busy_s", "available_s", "actions", "completed", "failed"):
            assert sum(p[key] for p in periods["periods"]) == pytest.approx(nodes["lab"][key]), key
        for period in periods["periods"]:
            assert 0 <= period["utilization_percent"] <= 100
    finally:
        storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def test_routes_answer_json_and_csv(db: Storage) -> None:
    store(
        db,
        [
            event(100, "ot2", "action_start", action_id="1", **{"lab.user.id": "alice"}),
            event(400, "ot2", "action_complete", action_id="1"),
        ],
    )
    window = {"start": str(T0 / 1e9), "end": str((T0 + H) / 1e9)}
    with TestClient(create_app(db)) as client:
        nodes = client.get("/utilization/nodes", params=window)
        assert nodes.status_code == 200, nodes.text
        assert nodes.json()["nodes"][0]["busy_s"] == 300
        as_csv = client.get("/utilization/nodes", params=window | {"format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert list(rows[0]) == [
            "node", "workcell", "lab", "available_s", "busy_s", "idle_s", "utilization_percent",
            "actions", "completed", "failed", "cancelled", "running", "mean_action_s", "p95_action_s",
        ]  # fmt: skip
        assert (rows[0]["node"], float(rows[0]["busy_s"])) == ("ot2", 300.0)
        periods = client.get("/utilization/periods", params=window | {"bucket": "15m", "format": "csv"})
        table = list(csv.DictReader(io.StringIO(periods.text)))
        assert list(table[0])[:3] == ["period_start", "period_end", "node"]
        assert [r["node"] for r in table[:2]] == ["(all)", "ot2"]
        assert sum(float(r["busy_s"]) for r in table if r["node"] == "(all)") == 300
        sessions = client.get("/utilization/sessions", params=window | {"unit": "lab", "format": "csv"})
        assert next(csv.DictReader(io.StringIO(sessions.text)))["lab"] == "lab-A"
        users = client.get("/utilization/users", params=window).json()
        assert users["users"][0]["user"] == "alice"
        series = client.get("/utilization/timeseries", params=window | {"bucket": "15m", "format": "csv"})
        assert series.text.splitlines()[0] == "group,t,count,errors,error_rate,baseline,z,flagged"
        for bad in (
            {"tz": "Mars/Base"},
            {"day_start": "25:00"},
            {"bucket": "fortnight"},
            {"unit": "room"},
            {"by": "colour"},
            {"start": "2026-01-02", "end": "2026-01-01"},
            {"gap": "soon"},
        ):
            path = "/utilization/" + ("sessions" if "unit" in bad else "users" if "by" in bad else "periods")
            assert client.get(path, params=bad).status_code == 400, bad
        too_long = client.get("/utilization/nodes", params={"start": "1980-01-01T00:00:00Z"})
        assert too_long.status_code == 400
        assert "at most 36 years" in too_long.text
