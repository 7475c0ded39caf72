"""Word index cost at ingest: the word index of migration 11 against migration 4's, in one run.

    python bench/search_index.py --rows 1000000 --non-ascii 12 --rounds 5 [--json]

Generates `--rows` events as the query benchmark does (bench/query.py), `--non-ascii` % of them
with non-ASCII text beside their words (20.5°C, an em dash, µL, names with accents, Greek, Japanese,
an emoji), into a staging table of an embedded store, then inserts them, in batches of `--batch`
rows (merges stopped), alternately into:
- two `otel_logs` tables: one migrated to version 10 (`idx_body_text` on `lower(Body)`), one to
  the newest version (`idx_body_words` on `schema.BODY_WORDS`);
- tables of only Timestamp, ServiceName and Body: without a text index, with migration 4's index,
  with the plain `replaceRegexpAll(lowerUTF8(Body), '[^\\p{L}\\p{N}]+', ' ')` on every row and with
  migration 11's; there the difference from the table without one is the index's own cost.
Figures are CPU seconds of the process per round (chDB runs in it: CPU time varies less than wall
time on a shared machine), the median of the rounds, and each one's ratio to migration 4's; then
the milliseconds each `otel_logs` takes to find bench/query.py's rare word (one event in a million)
with its own index, as stored by the last round.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import RARE_TOKEN, generate_sql

from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from labtel.collector.storage.topology import quote_string

FRAGMENTS = [
    "at 20.5°C",
    "done—ok",
    "added 50 µL",
    "operator Müller",
    "Ångström scale",
    "温度25℃で安定",
    "✅ passed",
    "pH 7·4",
    "“lid” closed",
    "ΣΟΦΊΑ checked",
    "→ next plate",
    "résumé saved",
    "±0.2 mg",
    "naïve run",
    "Δt=3 s",
]
COLUMNS = (
    "Timestamp, ObservedTimestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, "
    "Body, ResourceAttributes, ScopeName, LogAttributes"
)
NARROW = {
    "none": "",
    "migration 4": "lower(Body)",
    "regex on every row": r"replaceRegexpAll(lowerUTF8(Body), '[^\\p{L}\\p{N}]+', ' ')",
    "migration 11": schema.BODY_WORDS,
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def store_at(path: Path, database: str, version: int | None) -> Storage:
    """A database migrated to `version` (None: the newest), with the same part policy."""
    storage = Storage(parse_endpoint(f"chdb://{path}"), SchemaNames(database))
    if version is None:
        migrations.migrate(storage)
        return storage
    storage.command(f"CREATE DATABASE {database}")
    storage.command(schema.migrations_table(storage.names))
    for migration in migrations.MIGRATIONS[:version]:
        for statement in migration.statements(storage.names):
            storage.command(statement)
    migrations.reconcile_part_policy(storage)
    return storage


def stage(storage: Storage, rows: int, share: int) -> str:
    """The events to insert, in a Memory table; returns its name."""
    storage.command(generate_sql(storage.names.logs, rows, 0, rows, time.time_ns()))
    fragments = "[" + ", ".join(quote_string(f) for f in FRAGMENTS) + "]"
    staged = f"{storage.names.database}.staged"
    storage.command(
        f"CREATE TABLE {staged} ENGINE = Memory AS SELECT "
        + COLUMNS.replace(
            "Body,",
            f"if(cityHash64(Timestamp) % 100 < {share}, "
            f"concat(Body, ' ', {fragments}[cityHash64(Timestamp, 1) % {len(FRAGMENTS)} + 1]), Body) AS Body,",
        )
        + f" FROM {storage.names.logs}"
    )
    return staged


def insert_round(storage: Storage, table: str, source: str, columns: str, batch: int) -> float:
    """CPU seconds to insert every row of `source` into `table` (emptied first), `batch` rows a part."""
    storage.command(f"TRUNCATE TABLE {table}")
    storage.command(f"SYSTEM STOP MERGES {table}")
    started = cpu_seconds()
    storage.command(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {source}",
        settings={"max_insert_block_size": batch, "min_insert_block_size_rows": batch, "max_insert_threads": 1},
    )
    return cpu_seconds() - started


def query_ms(storage: Storage, condition: str, repeat: int = 7) -> float:
    """Median milliseconds to find the events with the benchmark's rare word (bench/query.py)."""
    sql = f"SELECT Body FROM {storage.names.logs} WHERE {condition} ORDER BY Timestamp DESC LIMIT 100"
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        found = storage.rows(sql, parameters={"word": RARE_TOKEN})
        took.append((time.perf_counter() - started) * 1000)
    assert found, "the rare word is in the generated events"
    return round(statistics.median(took), 1)


def measure(rows: int, share: int, rounds: int, batch: int) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix="labtel-search-index-"))
    staging = store_at(path, "staging", None)
    source = stage(staging, rows, share)
    non_ascii = staging.command(f"SELECT countIf(NOT isValidASCII(Body)) FROM {source}")
    old, new = store_at(path, "v10", 10), store_at(path, "v11", None)
    narrow = {}
    for number, (name, expression) in enumerate(NARROW.items()):
        table = f"staging.narrow_{number}"
        index = f", INDEX i {expression} TYPE text(tokenizer = 'splitByNonAlpha')" if expression else ""
        staging.command(
            f"CREATE TABLE {table} (Timestamp DateTime64(9), ServiceName LowCardinality(String), "
            f"Body String CODEC(ZSTD(1)){index}) ENGINE = MergeTree "
            f"ORDER BY ({schema.LOGS_TIME_BUCKET}, ServiceName, Timestamp)"
        )
        narrow[name] = table
    targets = {
        "otel_logs, migration 4": (old.names.logs, COLUMNS),
        "otel_logs, migration 11": (new.names.logs, COLUMNS),
        **{f"narrow, {name}": (table, "Timestamp, ServiceName, Body") for name, table in narrow.items()},
    }
    seconds: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(rounds):
        order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
        for name in order:
            table, columns = targets[name]
            seconds[name].append(insert_round(staging, table, source, columns, batch))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    bare = median["narrow, none"]
    figures: dict[str, Any] = {"rows": rows, "non_ascii_rows": int(non_ascii), "batch": batch, "rounds": rounds}
    for name, value in median.items():
        figures[name] = {"cpu_s": round(value, 3), "rounds": [round(v, 3) for v in seconds[name]]}
    figures["otel_logs_ratio"] = round(median["otel_logs, migration 11"] / median["otel_logs, migration 4"], 2)
    old_index = median["narrow, migration 4"] - bare
    for name in ("regex on every row", "migration 11"):
        figures[f"index_ratio, {name}"] = round((median[f"narrow, {name}"] - bare) / old_index, 2)
    figures["index_us_per_row"] = {
        name: round((median[f"narrow, {name}"] - bare) / rows * 1e6, 2) for name in NARROW if name != "none"
    }
    figures["otel_logs_us_per_row"] = {
        name: round(median[f"otel_logs, {name}"] / rows * 1e6, 2) for name in ("migration 4", "migration 11")
    }
    figures["rare_word_query_ms"] = {
        "migration 4": query_ms(old, "hasToken(lower(Body), {word:String})"),
        "migration 11": query_ms(new, schema.has_word("word")),
    }
    for store in (staging, old, new):
        store.close()
    shutil.rmtree(path, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--non-ascii", type=int, default=12, help="percent of events with non-ASCII text")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16_000, help="rows per insert (part), as the exporter's batches")
    parser.add_argument("--json", action="store_true", help="print one JSON line of figures")
    args = parser.parse_args()
    figures = measure(args.rows, args.non_ascii, args.rounds, args.batch)
    if args.json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
