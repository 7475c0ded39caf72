"""The SQL sandbox of `POST /sql`: analysts' read-only SQL over labtel's tables, and nothing else.

A query passes three gates before it runs:

1. ClickHouse's own parser (`formatQuery`) turns it into one canonical statement; more than one
   statement, or text that does not parse, is refused. The canonical text is what runs, so
   comments and odd spacing cannot hide anything from the next gate.
2. Its syntax tree (`EXPLAIN AST`) must be a SELECT (or a DESCRIBE) that names only tables of
   labtel's database and a few harmless system tables, calls no table function that reaches
   outside (file, url, s3, remote, mysql, …), no dictionary or file function, has no `* APPLY(f)`
   (the tree does not show f), and carries no SETTINGS, FORMAT or INTO OUTFILE clause of its own.
3. It runs with `readonly = 1` and limits on time, rows read, result rows and bytes, and memory,
   given in a SETTINGS clause the sandbox appends, so a server and the embedded store enforce
   the same; and at most `max_concurrent_queries` run at once, so their memory together is bounded.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.binding import external_bind_re

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import PARTS_VIEW

ALLOWED_SYSTEM_TABLES = frozenset(
    {"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "functions", "time_zones", "data_type_families"}
)
"""System tables anyone may read: constants and reference lists, nothing about the server."""

ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generateSeries", "generate_series", "null"}
)
"""Table functions that generate rows in the query itself (bounded by the limits)."""

DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "joinGet",
        "joinGetOrNull",
        "catboostEvaluate",
        "naiveBayesClassifier",
        "getServerSetting",
        "getSetting",
        "getSettingOrDefault",
        "getMergeTreeSetting",
        "getMacro",
        "hasColumnInTable",
        "filesystemAvailable",
        "filesystemCapacity",
        "filesystemUnreserved",
        "currentProfiles",
        "enabledProfiles",
        "defaultProfiles",
        "currentRoles",
        "enabledRoles",
        "defaultRoles",
        "getClientHTTPHeader",
        # who and where the server is
        "currentUser",
        "user",
        "authenticatedUser",
        "hostName",
        "fqdn",
        "fullHostName",
        "displayName",
        "serverUUID",
        "tcpPort",
        "getServerPort",
        "showCertificate",
        "getOSKernelVersion",
        "shardNum",
        "shardCount",
        "zookeeperSessionUptime",
        # introspection (disabled by the settings too; refused here with a clear message)
        "addressToLine",
        "addressToLineWithInlines",
        "addressToSymbol",
        "demangle",
        "logTrace",
    }
)
"""Scalar functions that read files, dictionaries, other tables by name, server configuration, or
say who and where the server is."""

_SERVER_VIEWS = frozenset({PARTS_VIEW})
"""Views of labtel's database over system tables (for the dashboards): they would show what the
sandbox keeps from its users (host names, other tables), so they are refused like those."""
_ALLOWED_TABLE_FUNCTIONS = frozenset(name.lower() for name in ALLOWED_TABLE_FUNCTIONS)
_DENIED_FUNCTIONS = frozenset(name.lower() for name in DENIED_FUNCTIONS)
_IN_FUNCTIONS = frozenset(
    {"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn"}
)
"""The functions whose right operand may name a table (ClickHouse's `IN` and its variants, by the
names they resolve under: case-sensitive)."""
_STATEMENTS = {"SelectWithUnionQuery": "SELECT", "SelectIntersectExceptQuery": "SELECT", "DescribeQuery": "DESCRIBE"}
_NODE = re.compile(r"^(?P<indent> *)(?P<kind>\w+) ?(?P<rest>.*)$")
_CHILDREN = re.compile(r" ?\(children (\d+)\)$")
_PART = re.compile(r"`((?:[^`\\]|\\.)*)`|([^.`]+)")


class SandboxRefusal(ValueError):
    """The query is not allowed in the sandbox; the message says what is not allowed."""


class SandboxBusy(RuntimeError):
    """As many queries as the sandbox runs at once are running; try again shortly."""


class SandboxTooLarge(ValueError):
    """The formatted result is larger than `max_result_bytes` (ClickHouse's own check counts a
    constant column once per block, so a result of repeated text can pass it)."""


@dataclass(frozen=True)
class SandboxLimits:
    """The bounds every sandboxed query runs within."""

    max_execution_time_s: float = 30.0
    max_rows_to_read: int = 2_000_000_000
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 256 * 1024 * 1024
    max_memory_usage: int = 2 * 1024 * 1024 * 1024
    max_concurrent_queries: int = 4

    def settings_clause(self) -> str:
        """The SETTINGS clause the sandbox appends to every query it runs."""
        settings = {
            "readonly": 1,
            "max_execution_time": self.max_execution_time_s,
            "timeout_overflow_mode": "'throw'",
            "max_rows_to_read": self.max_rows_to_read,
            "read_overflow_mode": "'throw'",
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "'throw'",
            "max_memory_usage": self.max_memory_usage,
            "allow_introspection_functions": 0,
            "output_format_json_quote_64bit_integers": 0,
            "output_format_json_pretty_print": 0,
            "date_time_output_format": "'iso'",
            "session_timezone": "'UTC'",
        }
        return "SETTINGS " + ", ".join(f"{key} = {value}" for key, value in settings.items())


@dataclass(frozen=True)
class _Node:
    depth: int
    kind: str
    rest: str
    children: int


def _parse_tree(text: str) -> list[_Node]:
    nodes = []
    for line in text.splitlines():
        match = _NODE.match(line)
        if match is None:
            continue
        rest, children = match["rest"], 0
        counted = _CHILDREN.search(rest)
        if counted:
            rest, children = rest[: counted.start()], int(counted[1])
        nodes.append(_Node(len(match["indent"]), match["kind"], rest.strip(), children))
    return nodes


def _name_parts(identifier: str) -> list[str]:
    """`db.table`, `` `my-db`.`t` `` → its parts, unquoted."""
    name = identifier.split(" (alias ")[0].strip()
    return [quoted.replace("\\`", "`") if quoted else plain for quoted, plain in _PART.findall(name)]


def _children(nodes: list[_Node], index: int) -> list[int]:
    """The indices of the direct children of nodes[index]."""
    depth = nodes[index].depth
    found = []
    for position in range(index + 1, len(nodes)):
        if nodes[position].depth <= depth:
            break
        if nodes[position].depth == depth + 1:
            found.append(position)
    return found


def _bound(sql: str, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parameters to send with `sql`: none when it has no `{name:Type}` placeholder, where
    clickhouse-connect would otherwise paste them into the text itself (Python `%` formatting),
    after the sandbox checked it."""
    if not parameters or external_bind_re.search(sql) is None:
        return None
    return parameters


class Sandbox:
    """Checks and runs analysts' SQL over one labtel database."""

    def __init__(self, storage: Storage, limits: SandboxLimits | None = None) -> None:
        self.storage = storage.in_database()  # unqualified names are labtel's tables
        self.limits = limits or SandboxLimits()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent_queries)

    def canonical(self, sql: str) -> str:
        """The one statement `sql` holds, as ClickHouse formats it (errors on more than one)."""
        text = sql.strip().rstrip(";").strip()
        if not text:
            raise SandboxRefusal("the query is empty")
        formatted = self.storage.rows("SELECT formatQuery({q:String}) AS q", parameters={"q": text})
        return str(formatted[0]["q"])

    def check(self, canonical: str, parameters: dict[str, Any] | None = None) -> str:
        """Refuse anything but a read of labtel's tables; return the statement kind."""
        # No FORMAT appended: it would become part of the statement being explained.
        tree = self.storage.raw(f"EXPLAIN AST {canonical}", None, parameters=parameters or None)
        nodes = _parse_tree(tree.decode())
        if not nodes:
            raise SandboxRefusal("the query could not be analysed")
        root = nodes[0]
        statement = _STATEMENTS.get(root.kind)
        if statement is None:
            raise SandboxRefusal(f"{root.kind}: only SELECT and DESCRIBE statements run here")
        if root.children > 1:  # a DESCRIBE takes INTO OUTFILE as a SELECT does
            raise SandboxRefusal("FORMAT / INTO OUTFILE: choose the result format with `format` or Accept")
        for index, node in enumerate(nodes):
            self._check_node(nodes, index, node)
        return statement

    def _check_node(self, nodes: list[_Node], index: int, node: _Node) -> None:
        if node.kind in ("Set", "SetQuery", "SettingsProfileElements"):
            raise SandboxRefusal("SETTINGS: the sandbox sets its own")
        if node.kind == "ColumnsApplyTransformer":  # its function (or lambda) is not in the tree to check
            raise SandboxRefusal("APPLY: call the function on the columns by name")
        if node.kind == "TableIdentifier":
            self._check_table(node.rest)
        elif node.kind == "Function":
            name = node.rest.split(" ")[0]
            folded = name.lower()  # some ClickHouse functions are case-insensitive
            parent = next((nodes[i] for i in range(index - 1, -1, -1) if nodes[i].depth < node.depth), None)
            if parent is not None and parent.kind == "TableExpression":
                if folded not in _ALLOWED_TABLE_FUNCTIONS:
                    raise SandboxRefusal(
                        f"table function {name}(): only {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))} generate rows here"
                    )
            elif folded in _DENIED_FUNCTIONS or folded.startswith("dict"):
                raise SandboxRefusal(f"function {name}(): it reads outside labtel's tables")
            elif name in _IN_FUNCTIONS:
                arguments = _children(nodes, index)
                operands = _children(nodes, arguments[0]) if arguments else []
                if len(operands) == 2 and nodes[operands[1]].kind == "Identifier":
                    self._check_table(nodes[operands[1]].rest)  # `x IN db.table` reads a table

    def _check_table(self, identifier: str) -> None:
        parts = _name_parts(identifier)
        if parts[-1] in _SERVER_VIEWS and (len(parts) < 2 or parts[0] == self.storage.names.database):
            raise SandboxRefusal(f"table {parts[-1]}: it shows the servers themselves (their parts and names)")
        if len(parts) < 2:
            return  # the labtel database's own table, or a WITH name
        database, table = parts[0], parts[1]
        if database == self.storage.names.database:
            return
        if database.lower() == "system" and table.lower() in ALLOWED_SYSTEM_TABLES:
            return
        allowed = ", ".join(f"system.{name}" for name in sorted(ALLOWED_SYSTEM_TABLES))
        raise SandboxRefusal(
            f"table {database}.{table}: only the tables of database {self.storage.names.database!r} and {allowed}"
        )

    def prepare(self, sql: str, parameters: dict[str, Any] | None = None) -> str:
        """The SQL that runs for `sql`: checked, canonical, with the sandbox's settings."""
        canonical = self.canonical(sql)
        self.check(canonical, _bound(canonical, parameters))
        # DESCRIBE too: describing a subquery runs its scalar subqueries, which the limits bound.
        return f"{canonical}\n{self.limits.settings_clause()}"

    def run(self, sql: str, fmt: str, parameters: dict[str, Any] | None = None) -> bytes:
        """The result of `sql` in ClickHouse format `fmt`; SandboxBusy while `max_concurrent_queries` run,
        SandboxTooLarge when the formatted result is larger than `max_result_bytes`."""
        if not self._slots.acquire(blocking=False):
            raise SandboxBusy(
                f"{self.limits.max_concurrent_queries} SQL queries are running (max_concurrent_queries); try again"
            )
        try:
            prepared = self.prepare(sql, parameters)
            result = self.storage.raw(prepared, fmt, parameters=_bound(prepared, parameters))
        finally:
            self._slots.release()
        if len(result) > self.limits.max_result_bytes:
            raise SandboxTooLarge(
                f"the result is {len(result)} bytes, more than max_result_bytes ({self.limits.max_result_bytes}); "
                "select fewer rows or columns, or add LIMIT"
            )
        return result

    def tables(self) -> list[dict[str, Any]]:
        """labtel's tables and their columns, for analysts writing queries."""
        rows = self.storage.rows(
            "SELECT table, name, type, comment FROM system.columns WHERE database = {db:String} "
            "AND table NOT LIKE '%\\\\_ingest\\\\_%' AND table NOT LIKE '%\\\\_mv' "
            "AND table != 'labtel_schema_migrations' AND NOT has({server_views:Array(String)}, table) "
            "ORDER BY table, position",
            parameters={"db": self.storage.names.database, "server_views": sorted(_SERVER_VIEWS)},
        )
        tables: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            tables.setdefault(row["table"], []).append(
                {"name": row["name"], "type": row["type"], "comment": row["comment"]}
            )
        return [{"table": name, "columns": columns} for name, columns in tables.items()]
