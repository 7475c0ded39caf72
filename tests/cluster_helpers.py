"""Cluster-mode schemas for tests: topologies, and the statements as one server runs them.

The embedded store has no Keeper and no distributed DDL, so tests run a cluster schema's
statements with the cluster parts stripped (no ON CLUSTER, plain MergeTree families) and check
that the tables come out exactly as the single-server schema's."""

from __future__ import annotations

import re
from typing import Any

from labtel.collector.storage.client import Storage
from labtel.collector.storage.topology import STATE_REPLICA_PARAMS, Topology

CLUSTER_NAME = "lab-cluster"
REPLICA_PARAMS = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
REPLICATED = Topology(CLUSTER_NAME, "ReplicatedMergeTree", REPLICA_PARAMS)
"""Replicas of every table, ON CLUSTER, no Distributed tables."""
SHARDED = Topology(CLUSTER_NAME, "ReplicatedMergeTree", REPLICA_PARAMS, distributed=True, sharding_key="TraceId")
"""Shards of replicas: Distributed tables over `_local` ones."""

_ON_CLUSTER = re.compile(r" ON CLUSTER `(?:[^`\\]|\\.)*`")
_ALL_REPLICAS = re.compile(r"clusterAllReplicas\('(?:[^'\\]|\\.)*', (system\.\w+)\)")
_REPLICATED = re.compile(r"\b(?:Replicated|Shared)(\w*MergeTree)(?:\((.*?)\))?(?=\s|$)", re.MULTILINE)
DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|DELETE|RENAME|TRUNCATE|OPTIMIZE)\b", re.IGNORECASE)


def strip_cluster(sql: str, topology: Topology) -> str:
    """The statement as one server runs it: without ON CLUSTER, with the plain MergeTree family
    (a Replicated engine's first arguments removed), a system table of every replica read on this
    server, and no replica to wait for."""
    if sql.startswith("SYSTEM SYNC REPLICA"):
        return "SELECT 1"
    text = _ALL_REPLICAS.sub(r"\1", _ON_CLUSTER.sub("", sql))
    prefixes = [topology.engine_params, STATE_REPLICA_PARAMS]

    def plain(match: re.Match[str]) -> str:
        family, arguments = match.group(1), match.group(2) or ""
        for prefix in prefixes:
            if prefix and arguments.startswith(prefix):
                arguments = arguments[len(prefix) :].removeprefix(",").strip()
                break
        return f"{family}({arguments})" if arguments else family

    return _REPLICATED.sub(plain, text)


class StrippedStorage(Storage):
    """A Storage with a cluster topology whose statements run with the cluster parts stripped;
    it keeps every statement as labtel wrote it (`statements`) for checks of the SQL text."""

    statements: list[str]

    def command(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Any:
        if not hasattr(self, "statements"):
            self.statements = []
        self.statements.append(sql)
        return super().command(strip_cluster(sql, self.names.topology), parameters, settings)


def table_shapes(storage: Storage, database: str) -> dict[str, dict[str, Any]]:
    """Every table of a database: columns (name, type, default kind and expression, codec),
    engine family, keys, skip indexes and projections, as the server reports them."""
    shapes: dict[str, dict[str, Any]] = {}
    for row in storage.rows(
        "SELECT name, engine, sorting_key, partition_key FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ):
        shapes[row["name"]] = {
            "engine": row["engine"],
            "sorting_key": row["sorting_key"],
            "partition_key": row["partition_key"],
        }
    for row in storage.rows(
        "SELECT table, name, type, default_kind, default_expression, compression_codec FROM system.columns "
        "WHERE database = {db:String} ORDER BY table, position",
        parameters={"db": database},
    ):
        shapes[row["table"]].setdefault("columns", []).append(
            (row["name"], row["type"], row["default_kind"], row["default_expression"], row["compression_codec"])
        )
    for row in storage.rows(
        "SELECT table, name, type_full, expr FROM system.data_skipping_indices WHERE database = {db:String} "
        "ORDER BY table, name",
        parameters={"db": database},
    ):
        shapes[row["table"]].setdefault("indexes", []).append((row["name"], row["type_full"], row["expr"]))
    for row in storage.rows(
        "SELECT table, name, query FROM system.projections WHERE database = {db:String} ORDER BY table, name",
        parameters={"db": database},
    ):
        shapes[row["table"]].setdefault("projections", []).append((row["name"], row["query"]))
    return shapes
