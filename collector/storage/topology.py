"""How labtel's tables are laid out over ClickHouse: one server, or a ClickHouse cluster.

One small object renders every cluster-dependent bit of DDL, so the schema, the migrations and the
start-up reconciliation share one code path:
- `on_cluster`: ` ON CLUSTER `name`` after every CREATE / ALTER / DROP / DELETE (`cluster_name`);
- `engine(...)`: the table engine, with `table_engine` (`ReplicatedMergeTree` and its params)
  applied to each table's MergeTree family (`ReplacingMergeTree(Version)` becomes
  `ReplicatedReplacingMergeTree(<params>, Version)`);
- `distributed`: each signal's data table is `<name>_local` on every shard, under a Distributed
  table `<name>` that inserts and queries go through.

Small state tables (migrations, compatibility routes, alerts) are not sharded: when replicated,
every node of the cluster is a replica of one copy (`STATE_REPLICA_PARAMS`), so any node answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_ENGINE = "MergeTree"

STATE_REPLICA_PARAMS = "'/clickhouse/tables/labtel/{database}/{table}', '{shard}-{replica}'"
"""The replication path of the state tables: one path for the whole cluster (no `{shard}` in it),
so every node holds the same rows; the replica name combines the `{shard}` and `{replica}` macros."""

SHARDING_KEYS = ("rand", "TraceId", "ServiceName")
"""Ways rows are spread over shards (`sharding_key`): at random, by trace (a trace's spans and logs
on one shard; rows without a trace id at random), or by service."""

LOCAL_SUFFIX = "_local"
"""The suffix of a data table on each shard under its Distributed table of the same base name."""

_ENGINE_NAME = re.compile(r"^[A-Za-z]*MergeTree$")


def quote_identifier(name: str) -> str:
    """Quote a database, table, column or cluster name for ClickHouse, whatever characters it holds."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(text: str) -> str:
    """A ClickHouse string literal holding `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_engine_name(name: str) -> str:
    """Accept a MergeTree-family engine name (`MergeTree`, `ReplicatedMergeTree`, `SharedMergeTree`)."""
    if not _ENGINE_NAME.match(name):
        raise ValueError(
            f"table_engine.name {name!r} must be a MergeTree-family engine such as MergeTree or ReplicatedMergeTree"
        )
    return name


@dataclass(frozen=True)
class Topology:
    """Where the tables live: `cluster` (empty: one server), the engine, and sharding."""

    cluster: str = ""
    engine_name: str = DEFAULT_ENGINE
    engine_params: str = ""
    """The engine's first arguments, as written (for Replicated: the Keeper path and the replica name)."""
    distributed: bool = False
    sharding_key: str = "rand"

    def __post_init__(self) -> None:
        check_engine_name(self.engine_name)
        if self.distributed and not self.cluster:
            raise ValueError("distributed: true needs cluster_name (the Distributed tables span that cluster)")
        if self.sharding_key not in SHARDING_KEYS:
            raise ValueError(f"sharding_key {self.sharding_key!r} must be one of {', '.join(SHARDING_KEYS)}")

    @property
    def on_cluster(self) -> str:
        """The ` ON CLUSTER ...` clause of a DDL statement, or '' on one server."""
        return f" ON CLUSTER {quote_identifier(self.cluster)}" if self.cluster else ""

    @property
    def replicated(self) -> bool:
        return self.engine_name.startswith("Replicated")

    def engine(self, family: str = DEFAULT_ENGINE, args: str = "", *, state: bool = False) -> str:
        """A table's engine clause body: its MergeTree `family` (MergeTree, ReplacingMergeTree, ...)
        with the configured engine's prefix (Replicated, Shared), its params, then the family's `args`.
        `state`: a small unsharded table, replicated to every node of the cluster."""
        name = self.engine_name.removesuffix(DEFAULT_ENGINE) + family
        params = STATE_REPLICA_PARAMS if state and self.replicated and self.cluster else self.engine_params
        arguments = ", ".join(part for part in (params, args) if part)
        return f"{name}({arguments})" if arguments else name

    def local_name(self, table: str) -> str:
        """The name of a data table's storage on each shard (itself unless `distributed`)."""
        return table + LOCAL_SUFFIX if self.distributed else table

    def shard_expression(self, has_trace_id: bool) -> str:
        """The Distributed table's sharding key for a table (metrics have no TraceId: at random)."""
        if self.sharding_key == "ServiceName":
            return "cityHash64(ServiceName)"
        if self.sharding_key == "TraceId" and has_trace_id:
            return "if(TraceId = '', rand(), cityHash64(TraceId))"
        return "rand()"

    def distributed_engine(self, database: str, local_table: str, has_trace_id: bool) -> str:
        """The Distributed engine over `local_table` on every shard of the cluster."""
        return (
            f"Distributed({quote_string(self.cluster)}, {quote_string(database)}, {quote_string(local_table)}, "
            f"{self.shard_expression(has_trace_id)})"
        )

    @property
    def insert_settings(self) -> dict[str, int]:
        """Settings of inserts: through a Distributed table, an insert returns once every shard has
        its rows (an acknowledged Export call is stored, not queued on the inserting node)."""
        return {"distributed_foreground_insert": 1} if self.distributed else {}


LOCAL = Topology()
"""One ClickHouse server (or the embedded store): no cluster, MergeTree engines."""
