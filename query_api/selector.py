"""MongoDB-style selectors (as MADSci's `POST /events/query` takes them) → parameterized SQL.

    {"log_level": {"$gte": 40}, "source.node_id": "ot2_1", "$or": [{"event_type": "action_failed"},
     {"attributes.status": {"$in": ["failed", "cancelled"]}}]}

Field names are labtel's columns and MADSci's event fields (`event_type`, `log_level`,
`event_timestamp`, `source.<x>_id`, `event_data.<key>`), `attributes.<key>` / `resource.<key>` for
the attribute maps (keys may contain dots), and any other name is a log attribute. Operators:
$eq $ne $gt $gte $lt $lte $in $nin $regex ($options i, m, s) $exists $not, and $and $or $nor. Values
and keys only ever travel as server-side parameters (the values of $in / $nin as arrays, so
thousands of them fit); an unsupported operator is an error that names it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from labtel.query_api.errors import INVALID_TEXT
from labtel.query_api.params import ParamError, clamp_time_ns, epoch_seconds_ns, parse_time_ns
from labtel.sdk import semconv

MAX_BYTES = 64 * 1024
"""The largest selector, as compact JSON (the limit `max_selector_bytes`)."""
MAX_DEPTH = 12
"""The deepest nesting of $and/$or/$nor (the limit `max_selector_depth`)."""
MAX_CONDITIONS = 300
"""The most field conditions in one selector (the limit `max_selector_conditions`)."""

COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = {*COMPARISONS, "$in", "$nin", "$regex", "$options", "$exists", "$not"}
LOGICAL = {"$and", "$or", "$nor"}


class SelectorError(ValueError):
    """The selector cannot be translated; the message names the operator or field at fault."""


@dataclass(frozen=True)
class Column:
    """A real column: how to compare values of it."""

    sql: str
    kind: str  # "string", "hex" (stored lower-case), "number", "time", "severity", "uuid", "event_type"


COLUMNS: dict[str, Column] = {
    "timestamp": Column("Timestamp", "time"),
    "event_timestamp": Column("Timestamp", "time"),
    "time_unix_nano": Column("Timestamp", "time"),
    "observed_timestamp": Column("ObservedTimestamp", "time"),
    "severity": Column("SeverityNumber", "number"),
    "severity_number": Column("SeverityNumber", "number"),
    "severity_text": Column("SeverityText", "string"),
    "log_level": Column("SeverityNumber", "severity"),
    "body": Column("Body", "string"),
    "message": Column("Body", "string"),
    "service": Column("ServiceName", "string"),
    "service_name": Column("ServiceName", "string"),
    "event_type": Column("EventType", "event_type"),
    "event_name": Column("EventName", "string"),
    "event_id": Column("EventId", "uuid"),
    "_id": Column("EventId", "uuid"),
    "trace_id": Column("TraceId", "hex"),
    "span_id": Column("SpanId", "hex"),
    "node_id": Column("NodeId", "string"),
    "run_id": Column("RunId", "string"),
    "workflow_id": Column("WorkflowId", "string"),
    "experiment_id": Column("ExperimentId", "string"),
    "scope": Column("ScopeName", "string"),
    "scope_name": Column("ScopeName", "string"),
}
for _name, _column in list(COLUMNS.items()):
    if _name.endswith("_id") and _column.sql in ("NodeId", "RunId", "WorkflowId", "ExperimentId"):
        COLUMNS[f"source.{_name}"] = _column


def stdlib_level_to_severity(level: float) -> float:
    """A stdlib/MADSci log level (DEBUG 10 … CRITICAL 50) on OTel's severity scale (5 … 21)."""
    return max(1.0, (level - 10) / 10 * 4 + 5)


@dataclass
class Translation:
    """A selector being turned into SQL: the parameters collected so far."""

    prefix: str = "s"
    parameters: dict[str, Any] = field(default_factory=dict)
    conditions: int = 0

    def param(self, value: Any, kind: str) -> str:
        name = f"{self.prefix}{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:{kind}}}"

    def count(self) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise SelectorError(f"the selector has more than {MAX_CONDITIONS} conditions (max_selector_conditions)")


def translate(selector: Any, prefix: str = "s") -> tuple[str, dict[str, Any]]:
    """SQL for a selector (a WHERE clause without the keyword) and its parameters."""
    if not isinstance(selector, Mapping):
        raise SelectorError("a selector must be a JSON object")
    try:
        text = json.dumps(selector, separators=(",", ":"), default=str, ensure_ascii=False)
    except (ValueError, RecursionError):
        raise SelectorError(f"the selector nests deeper than {MAX_DEPTH} levels (max_selector_depth)") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a JSON \ud800 escape: no text to compare with
        raise SelectorError(f"the selector {INVALID_TEXT}") from None
    if size > MAX_BYTES:
        raise SelectorError(f"the selector is {size} bytes as JSON, more than {MAX_BYTES} (max_selector_bytes)")
    state = Translation(prefix=f"{prefix}_")
    try:
        return _document(selector, state, 0), state.parameters
    except OverflowError:  # an integer of hundreds of digits, as Python's JSON reads it
        raise SelectorError("a number is too large (beyond ±1.8e308)") from None


def _document(selector: Mapping[str, Any], state: Translation, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise SelectorError(f"the selector nests deeper than {MAX_DEPTH} levels (max_selector_depth)")
    parts = []
    for key, value in selector.items():
        if not isinstance(key, str):
            raise SelectorError("selector keys must be strings")
        if key.startswith("$"):
            parts.append(_logical(key, value, state, depth))
        else:
            parts.append(_field(key, value, state, depth))
    if not parts:
        return "1"
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _logical(operator: str, value: Any, state: Translation, depth: int) -> str:
    if operator not in LOGICAL:
        raise SelectorError(f"unsupported operator {operator}")
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise SelectorError(f"{operator} takes a non-empty list of selectors")
    parts = [_document(v, state, depth + 1) for v in value]
    if operator == "$and":
        return "(" + " AND ".join(parts) + ")"
    joined = "(" + " OR ".join(parts) + ")"
    return joined if operator == "$or" else f"NOT {joined}"


def _target(name: str) -> tuple[str, Column | None, str | None]:
    """(SQL expression, column or None, attribute key or None) for a field name."""
    column = COLUMNS.get(name)
    if column is not None:
        return column.sql, column, None
    for prefix, source in (
        ("attributes.", "LogAttributes"),
        ("attr.", "LogAttributes"),
        ("event_data.", "LogAttributes"),
        ("resource.", "ResourceAttributes"),
    ):
        if name.startswith(prefix) and len(name) > len(prefix):
            return source, None, name[len(prefix) :]
    if name.startswith("source."):  # MADSci ownership info: source.user_id → lab.user.id
        short = name[len("source.") :]
        return "LogAttributes", None, semconv.FIELD_ALIASES.get(short, f"lab.{short.removesuffix('_id')}.id")
    return "LogAttributes", None, semconv.FIELD_ALIASES.get(name, name)


def _field(name: str, value: Any, state: Translation, depth: int) -> str:
    source, column, key = _target(name)
    if isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value):
        unknown = [k for k in value if k not in FIELD_OPERATORS]
        if unknown:
            raise SelectorError(f"unsupported operator {unknown[0]}")
        _options_need_regex(value)
        parts = []
        for operator, operand in value.items():
            if operator == "$options":
                continue
            parts.append(_operator(operator, operand, value, source, column, key, state, depth))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
    return _operator("$eq", value, {}, source, column, key, state, depth)


def _any_of(values: list[Any], source: str, column: Column | None, key: str | None, state: Translation) -> str:
    """SQL: the field equals one of `values`, as the OR of `$eq` each would be. Text values (and
    numbers of number columns and of attributes) go as array parameters, so thousands of them keep
    the query small; the others are a comparison each."""
    kind = column.kind if column is not None else "attribute"
    texts: list[str] = []
    numbers: list[float] = []
    integers: list[int] = []  # of an attribute: compared as _numeric compares one
    floats: list[float] = []  # of an attribute: the other numbers
    rest: list[Any] = []
    for value in values:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and not math.isfinite(float(value)):
            raise SelectorError("numbers must be finite")
        if isinstance(value, str) and kind in ("attribute", "string", "hex", "uuid", "event_type"):
            texts.append(value)
        elif is_number and kind in ("number", "severity"):
            numbers.append(stdlib_level_to_severity(float(value)) if kind == "severity" else float(value))
        elif is_number and kind == "attribute":
            texts.append(_scalar(value))  # the text test of $eq: "120" equals 120
            if isinstance(value, int) and abs(value) < INT128:
                integers.append(value)
            else:
                floats.append(float(value))
        else:
            rest.append(value)
    parts = [_compare("=", v, source, column, key, state) for v in rest]
    if key is not None and (integers or floats):
        target = _attribute(source, key, state)
        if integers:
            exact = f"toInt128OrNull({target}) IN {state.param(integers, 'Array(Int128)')}"
            near = f"toFloat64OrNull({target}) IN {state.param([float(v) for v in integers], 'Array(Float64)')}"
            parts.append(f"ifNull(coalesce({exact}, {near}), 0)")
        if floats:
            parts.append(f"ifNull(toFloat64OrNull({target}) IN {state.param(floats, 'Array(Float64)')}, 0)")
    if texts:
        if kind in ("hex", "uuid"):
            texts = [v.lower() for v in texts]
        elif kind == "event_type":
            from labtel.sdk.event_types import event_type_value

            texts = [event_type_value(v) for v in texts]
        parts.append(f"{_text(source, column, key, state)} IN {state.param(texts, 'Array(String)')}")
    if numbers:
        assert column is not None
        parts.append(f"{column.sql} IN {state.param(numbers, 'Array(Float64)')}")
    return "(" + " OR ".join(parts) + ")"


def _options_need_regex(expression: Mapping[str, Any]) -> None:
    if "$options" in expression and "$regex" not in expression:
        raise SelectorError('$options needs $regex beside it, e.g. {"$regex": "^ot2", "$options": "i"}')


def _operator(
    operator: str,
    operand: Any,
    siblings: Mapping[str, Any],
    source: str,
    column: Column | None,
    key: str | None,
    state: Translation,
    depth: int,
) -> str:
    state.count()
    if operator == "$not":
        if not isinstance(operand, Mapping) or not operand:
            raise SelectorError('$not takes an operator expression, e.g. {"$not": {"$regex": "x"}}')
        _options_need_regex(operand)
        inner = [
            _operator(op, v, operand, source, column, key, state, depth + 1)
            for op, v in operand.items()
            if op != "$options"
        ]
        return "NOT (" + " AND ".join(inner) + ")"
    if operator == "$exists":
        present = _present(source, column, key, state)
        return present if bool(operand) else f"NOT {present}"
    if operator == "$regex":
        if not isinstance(operand, str):
            raise SelectorError("$regex takes a string")
        pattern = _flags(siblings.get("$options", "")) + operand
        return f"match({_text(source, column, key, state)}, {state.param(pattern, 'String')})"
    if operator in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise SelectorError(f"{operator} takes a list")
        if not operand:
            return "0" if operator == "$in" else "1"
        joined = _any_of(operand, source, column, key, state)
        return joined if operator == "$in" else f"NOT {joined}"
    if operator not in COMPARISONS:
        raise SelectorError(f"unsupported operator {operator}")
    return _compare(COMPARISONS[operator], operand, source, column, key, state)


REGEX_OPTIONS = "ims"
"""The $options letters, RE2 flags of the same names: i any case, m ^ and $ at line breaks, s . matches a line break
(as it always does in ClickHouse's `match`)."""


def _flags(options: Any) -> str:
    """The RE2 flags group for a $options string ('' for none); letters RE2 lacks (x) are an error."""
    if not isinstance(options, str):
        raise SelectorError('$options takes a string of letters, e.g. "i"')
    unknown = sorted({letter for letter in options if letter not in REGEX_OPTIONS})
    if unknown:
        raise SelectorError(f"$options: {', '.join(unknown)} not supported; use i, m and s")
    flags = "".join(dict.fromkeys(options))
    return f"(?{flags})" if flags else ""


def _attribute(source: str, key: str, state: Translation) -> str:
    return f"{source}[{state.param(key, 'String')}]"


def _present(source: str, column: Column | None, key: str | None, state: Translation) -> str:
    if key is not None:
        return f"mapContains({source}, {state.param(key, 'String')})"
    assert column is not None
    if column.kind in ("string", "hex", "event_type"):
        return f"{column.sql} != ''"
    return "1"


def _text(source: str, column: Column | None, key: str | None, state: Translation) -> str:
    if key is not None:
        return _attribute(source, key, state)
    assert column is not None
    return column.sql if column.kind in ("string", "hex", "event_type") else f"toString({column.sql})"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


INT128 = 2**127
"""Integers within ±2^127 compare exactly with attributes that are integers (toInt128OrNull)."""


def _numeric(target: str, op: str, value: float, state: Translation) -> str:
    """SQL: the text attribute `target` compared as a number with `value`, NULL where it is none.
    An integer compares exactly with an integer attribute (Float64 would make ids beyond 2^53
    equal to their neighbours), and as Float64 with any other number ("120.5", "1e3")."""
    if not math.isfinite(float(value)):
        raise SelectorError("numbers must be finite")
    as_float = f"toFloat64OrNull({target}) {op} {state.param(float(value), 'Float64')}"
    if isinstance(value, int) and abs(value) < INT128:
        return f"coalesce(toInt128OrNull({target}) {op} {state.param(value, 'Int128')}, {as_float})"
    return as_float


def _compare(op: str, value: Any, source: str, column: Column | None, key: str | None, state: Translation) -> str:
    if isinstance(value, (Mapping, list)):
        raise SelectorError("compare with a string, number, boolean or null, not an object or list")
    if key is not None:
        target = _attribute(source, key, state)
        if value is None:
            return (
                f"({'NOT ' if op == '=' else ''}mapContains({source}, {state.param(key, 'String')}))"
                if op in ("=", "!=")
                else "0"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numeric = _numeric(target, op, value, state)
            if op in ("=", "!="):
                text_test = f"{target} {op} {state.param(_scalar(value), 'String')}"
                return (
                    f"({text_test} OR ifNull({numeric}, 0))" if op == "=" else f"({text_test} AND ifNull({numeric}, 1))"
                )
            return f"ifNull({numeric}, 0)"
        return f"{target} {op} {state.param(_scalar(value), 'String')}"
    assert column is not None
    kind = column.kind
    if value is None:
        return (
            f"{column.sql} {'=' if op == '=' else '!='} ''"
            if kind in ("string", "hex")
            else ("0" if op == "=" else "1")
        )
    if kind == "time":
        return f"{column.sql} {op} fromUnixTimestamp64Nano({state.param(_time_ns(value), 'Int64')})"
    if kind in ("number", "severity"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SelectorError(f"{column.sql} compares with numbers")
        level = stdlib_level_to_severity(float(value)) if kind == "severity" else float(value)
        return f"{column.sql} {op} {state.param(level, 'Float64')}"
    if kind in ("uuid", "hex"):  # ids as GET /events takes them (parse_hex_id): any case
        return f"{_text(source, column, None, state)} {op} {state.param(_scalar(value).lower(), 'String')}"
    if kind == "event_type":
        from labtel.sdk.event_types import event_type_value

        return f"{column.sql} {op} {state.param(event_type_value(value), 'String')}"
    return f"{column.sql} {op} {state.param(_scalar(value), 'String')}"


NANOSECONDS_FROM = 10**17
"""Numbers from here on (1973 as nanoseconds) compare with times as Unix nanoseconds; smaller ones
are epoch seconds (params.epoch_seconds_ns: milliseconds and microseconds are refused)."""


def _time_ns(value: Any) -> int:
    """A time of a selector as Unix nanoseconds, clamped to what storage holds (params.clamp_time_ns)."""
    if isinstance(value, bool):
        raise SelectorError("times are RFC 3339 strings or epoch seconds")
    try:
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise SelectorError("numbers must be finite")
            if abs(value) >= NANOSECONDS_FROM:
                return clamp_time_ns(int(value))
            return epoch_seconds_ns(Decimal(str(value)), "time")
        if isinstance(value, datetime):
            return clamp_time_ns(int(value.timestamp() * 1e9))
        return parse_time_ns(str(value), "time")
    except ParamError as error:
        raise SelectorError(str(error)) from None
