"""Word search (`GET /events?q=`) beside non-ASCII text: words are runs of Unicode letters and digits
(each ideograph one of its own), in any case and with accents folded, whatever surrounds them; a
store migrated to the word index of migration 11 (and its folding, 13) answers as a fresh one."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from labtel.query_api.events import EventFilter, search_tokens
from tests.cluster_helpers import table_shapes
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request, store_at_version, wait_for

SERVICE = "words"
BODIES = [
    "pump done—ok at 20°C, Müller",  # an em dash, a degree sign, an accented name
    "MÜLLER ÉCOLE ΣΟΦΊΑ ДОБРЫЙ",  # capitals beyond ASCII
    "温度25℃で安定 sample温度 A12完成",  # Chinese and Japanese beside ASCII
    "✅passed 🔥hot ✔️done",  # emoji, one with a variation selector (U+FE0F, a mark)
    "valve_10 opened—node-12 “lid” closed",  # ASCII words with ASCII and curly punctuation
    "reading 1 of the pressure gauge",  # ASCII only
    "pH 7·4 ±0.2 mg in 5 µL",  # a middle dot, a plus-minus sign, the micro sign (a letter)
    "Café naïve İstanbul façade cafe\u0301s",  # accents, composed and (the last) decomposed
]
SEARCHES: list[tuple[str, set[int]]] = [
    # the words beside non-ASCII punctuation and symbols
    ("done", {0, 3}),
    ("ok", {0}),
    ("20", {0}),
    ("c", {0}),
    ("20°C", {0}),  # split as the body is: 20 and c
    ("done—ok", {0}),
    ("passed", {3}),
    ("HOT", {3}),
    ("done hot", {3}),  # every word must be there
    ("7", {6}),
    ("4 mg", {6}),
    ("µL", {6}),
    ("lid", {4}),
    # case beyond ASCII, both ways
    ("müller", {0, 1}),
    ("MÜLLER", {0, 1}),
    ("École", {1}),
    ("σοφία", {1}),
    ("Добрый", {1}),
    # ideographs are words of their own, so are the ASCII words beside them
    ("温度", {2}),
    ("安定", {2}),
    ("25", {2}),
    ("sample", {2}),
    ("a12", {2}),
    ("完成", {2}),
    # ASCII as before: whole words, `_` and `-` separate them
    ("valve_10", {4}),
    ("node-12", {4}),
    ("opened closed", {4}),
    ("PRESSURE gauge", {5}),
    # accents are folded, both ways, composed or decomposed
    ("muller", {0, 1}),
    ("ecole", {1}),
    ("σοφια", {1}),
    ("cafe", {7}),
    ("CAFÉ", {7}),
    ("cafe\u0301", {7}),
    ("cafés", {7}),
    ("naive", {7}),
    ("istanbul", {7}),
    ("İSTANBUL", {7}),
    ("facade", {7}),
    # not found: parts of words, other spellings, words not all there
    ("mull", set()),
    ("caf", set()),
    ("don", set()),
    ("pres", set()),
    ("pressure valve", set()),
    ("温度 hot", set()),
]


def insert_bodies(storage: Storage, bodies: list[str]) -> None:
    records = [log_record(body, time_ns=1_780_000_000_000_000_000 + i) for i, body in enumerate(bodies)]
    request = logs_request(records, resource={"service.name": SERVICE})
    storage.insert_otlp("logs", request.SerializeToString(), uuid.uuid4().hex)


def found(client: TestClient, q: str) -> set[int]:
    """The BODIES `GET /events?q=` finds."""
    response = client.get("/events", params={"service": SERVICE, "q": q, "limit": 100})
    assert response.status_code == 200, response.text
    return {BODIES.index(event["body"]) for event in response.json()["events"]}


@pytest.fixture(scope="module")
def fresh(chdb_path: Path) -> Iterator[tuple[TestClient, Storage]]:
    """A fresh store with BODIES, and 40,000 other events in a part of five granules."""
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    insert_bodies(storage, BODIES)
    storage.command(
        f"INSERT INTO {storage.names.logs} (Timestamp, ServiceName, Body) SELECT "
        "fromUnixTimestamp64Nano(toInt64(1_780_000_000_000_000_000 + number)), 'other', "
        "concat('pump ', toString(number), if(number % 7 = 0, ' primed—ready at 21°C', ' primed'))"
        " FROM numbers(40000)"
    )
    with TestClient(create_app(storage)) as client:
        yield client, storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.mark.parametrize(("q", "expected"), SEARCHES, ids=[q for q, _ in SEARCHES])
def test_words_are_found_whatever_surrounds_them(fresh: tuple[TestClient, Storage], q: str, expected: set[int]) -> None:
    client, _ = fresh
    assert found(client, q) == expected


def test_a_search_is_split_as_the_index_splits_bodies(fresh: tuple[TestClient, Storage]) -> None:
    _, storage = fresh
    assert search_tokens("node-12 valve_10") == ["node", "12", "valve", "10"]  # as before migration 11
    assert search_tokens("Pump DONE—ok pump") == ["pump", "done", "ok"]
    assert search_tokens("温度25℃ MÜLLER") == ["温", "度", "25", "muller"]  # accents folded
    assert search_tokens("İstanbul") == ["istanbul"]  # lower-cased, then folded: İ is i and a combining dot
    assert search_tokens("🔥 — °") == []
    texts = [*BODIES, *(q for q, _ in SEARCHES), "İSTANBUL cafe\u0301 Ⅻ ²½ ＡＢＣ１ ΟΔΟΣ ǅ 한국어 ไทย\u200d"]
    rows = storage.rows(
        f"SELECT text, tokens({schema.BODY_WORDS.replace('Body', 'text')}, 'splitByNonAlpha') AS words "
        "FROM (SELECT arrayJoin({texts:Array(String)}) AS text)",
        parameters={"texts": texts},
    )
    assert {row["text"]: list(dict.fromkeys(row["words"])) for row in rows} == {t: search_tokens(t) for t in texts}


def test_the_index_answers_and_skips_granules(fresh: tuple[TestClient, Storage]) -> None:
    _, storage = fresh
    where, params = EventFilter(tokens=search_tokens("Müller ok")).where(unexpired=None)
    plan = storage.raw(f"EXPLAIN indexes = 1 SELECT Body FROM {storage.names.logs} WHERE {where}", None, params)
    skip = plan.decode().split(f"Name: {schema.BODY_WORDS_INDEX}", 1)[1]
    granules = re.search(r"Granules: (\d+)/(\d+)", skip)
    assert granules, plan.decode()
    assert int(granules.group(1)) < int(granules.group(2)), plan.decode()  # the other part's five are skipped
    # read row by row instead, the same expression finds what the index finds
    for q, expected in SEARCHES:
        where, params = EventFilter(service=SERVICE, tokens=search_tokens(q)).where()
        rows = storage.rows(
            f"SELECT Body FROM {storage.names.logs} WHERE {where}",
            parameters=params,
            settings={"use_skip_indexes": 0, "query_plan_direct_read_from_text_index": 0},
        )
        assert {BODIES.index(row["Body"]) for row in rows} == expected, q


def _create_table(storage: Storage) -> str:
    sql = str(storage.command(f"SHOW CREATE TABLE {storage.names.logs}"))
    return sql.replace(storage.names.database, "<db>")


def test_a_store_migrated_to_the_word_index_answers_as_a_fresh_one(
    chdb_path: Path, fresh: tuple[TestClient, Storage]
) -> None:
    _, fresh_storage = fresh
    store = make_storage(chdb_path)
    store_at_version(store, 10)  # a store of the version before the word index
    insert_bodies(store, BODIES)
    try:
        assert [m.version for m in migrations.migrate(store).applied] == list(
            range(11, migrations.latest_version() + 1)
        )
        with TestClient(create_app(store)) as client:
            # parts stored before are searched before their index is built, and after
            assert {q: found(client, q) for q, _ in SEARCHES} == dict(SEARCHES)
            wait_for(
                lambda: (
                    not store.command(
                        "SELECT count() FROM system.mutations WHERE database = {db:String} AND NOT is_done",
                        parameters={"db": store.names.database},
                    )
                ),
                timeout=60,
                what="MATERIALIZE INDEX",
            )
            assert {q: found(client, q) for q, _ in SEARCHES} == dict(SEARCHES)
        indexes: Any = table_shapes(store, store.names.database)["otel_logs"]["indexes"]
        assert [name for name, kind, _ in indexes if kind.startswith("text(")] == [schema.BODY_WORDS_INDEX]
        assert table_shapes(store, store.names.database) == table_shapes(fresh_storage, fresh_storage.names.database)
        assert _create_table(store) == _create_table(fresh_storage)
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


WORDLESS = ["---", " ", "🔥 — °", "_", "\u0301"]
"""Searches without a letter or digit: no word to look for (a combining accent alone is a mark)."""


@pytest.mark.parametrize("path", ["/events", "/export", "/events/stream", "/stats", "/utilization/timeseries"])
def test_a_search_without_a_word_is_refused_on_every_route_that_searches(
    fresh: tuple[TestClient, Storage], path: str
) -> None:
    client, _ = fresh
    for q in WORDLESS:
        assert search_tokens(q) == []
        response = client.get(path, params={"service": SERVICE, "q": q})
        assert response.status_code == 400, (path, q, response.text[:200])
        detail = response.json()["detail"]
        assert detail == f"q: {q!r} has no word to search for: a search needs letters or digits", detail
    # An empty q is no search, as an empty value of the other filters is no filter.
    assert found(client, "") == set(range(len(BODIES)))
