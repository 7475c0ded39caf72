"""MADSci Event Manager compatibility: MADSci `Event`s as labtel log records and back.

An event posted by MADSci's `EventClient` becomes an ordinary labtel event:

- `event_id` (a ULID) → `lab.event.id`; a second event with the same id is not stored again.
- `event_timestamp` → the record's time; a naive timestamp (MADSci's client stamps its local
  time without a zone) is read in `compat.madsci.timezone`, by default the server's zone. The
  text as sent is kept in `madsci.event_timestamp` and answered back unchanged; times labtel
  stamped are answered naive in that zone too (`to_madsci`). A time storage
  cannot hold (before 1970, after 2106-02-07T06:28:15Z) stores the event at its arrival; a number
  that is not a time (NaN, 1e300, milliseconds) is a 422.
- `event_type` → `lab.event.type`; when it is generic (`unknown`, `log`, `log_*`) and
  `event_data.event_type` names one (MADSci's client puts `event_type=` keywords there), that
  one. The type as sent is kept in `madsci.event_type` when it differs.
- `log_level` (stdlib levels) → OTel severity (DEBUG 5, INFO 9, WARNING 13, ERROR 17,
  CRITICAL 21) and `madsci.log_level`; `alert` → `madsci.alert`, and `lab.alert` when true (so
  labtel's alert rules fire for it whatever its level, as MADSci's server alerts).
- `source` (OwnershipInfo) → `lab.<x>.id` (`lab.node.id`, `lab.workflow.id`, `lab.user.id`, …)
  so the lab columns fill; kept whole in `madsci.source`.
- `event_data` → kept whole as JSON in `madsci.event_data`; an object's keys are also attributes
  of the same name (nested objects joined with dots, lists as JSON; as many as the storage's
  `limits` leave room for, the rest counted in `lab.attributes_left_out`), and the ids among them
  (`node_id`, `workflow_id`, …) fill the `lab.*.id` attributes `source` left empty. The body is
  `event_data.message`, or the text, or the JSON. JSON longer than an attribute value may be is
  the body instead (`madsci.event_data_in_body`), read back from there.
- `trace_id` / `span_id` → the record's trace context when they are OTel ids, else kept as sent
  (`madsci.trace_id`, `madsci.span_id`).

Read back, any labtel event is a MADSci event: ids other than ULIDs are left out of `source`,
types outside MADSci's catalog are `unknown` (the labtel type is in `event_data.event_type`).
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from labtel.collector.alerts.rules import LAB_ALERT
from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits, fits
from labtel.collector.otlp.records import Record
from labtel.query_api.compat import jsontext
from labtel.query_api.compat.ingest import add_flattened, compact_json, storable
from labtel.query_api.models import Event, Scope
from labtel.query_api.params import ParamError, format_time_ns, number_time_ns, parse_time_ns
from labtel.query_api.selector import stdlib_level_to_severity
from labtel.sdk import semconv
from labtel.sdk.event_types import MADSCI_EVENT_TYPES, event_type_value
from labtel.sdk.textform import digits

SERVICE = "madsci"
SCOPE = "labtel.compat.madsci"
ATTR_TYPE = "madsci.event_type"
ATTR_LEVEL = "madsci.log_level"
ATTR_ALERT = "madsci.alert"
ATTR_TIMESTAMP = "madsci.event_timestamp"
ATTR_DATA = "madsci.event_data"
ATTR_DATA_IN_BODY = "madsci.event_data_in_body"
ATTR_SOURCE = "madsci.source"
ATTR_TRACE = "madsci.trace_id"
ATTR_SPAN = "madsci.span_id"
"""A posted `trace_id` / `span_id` that is not an OpenTelemetry id, kept as sent (MADSci's are text)."""

LEVELS = {"NOTSET": 0, "DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
OWNERSHIP = (
    "user_id",
    "experiment_id",
    "campaign_id",
    "project_id",
    "node_id",
    "workcell_id",
    "lab_id",
    "step_id",
    "workflow_id",
    "manager_id",
)
GENERIC_TYPES = {"unknown", "log", "log_debug", "log_info", "log_warning", "log_error", "log_critical"}
CATALOG = {t.value for t in MADSCI_EVENT_TYPES}
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-f]+$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_SELECTOR_TEXT = 64 * 1024
LOCALTIME, TIMEZONE_FILE = "/etc/localtime", "/etc/timezone"


class MadsciError(ValueError):
    """The request is not a usable MADSci event or query; the message says why."""


def new_ulid() -> str:
    """A new ULID (48-bit milliseconds, 80 random bits), as MADSci's ids are."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ownership_attribute(field: str) -> str:
    """The attribute an OwnershipInfo field (`node_id`, `lab_id`, …) is stored as."""
    return semconv.FIELD_ALIASES.get(field, f"lab.{field.removesuffix('_id')}.id")


def naive_zone(name: str) -> tzinfo:
    """The zone naive MADSci timestamps are in: the configured one, else the server's local zone."""
    return ZoneInfo(name) if name else local_zone()


def _iana(name: str) -> ZoneInfo | None:
    """The IANA zone a name or a zoneinfo file path (`/usr/share/zoneinfo/Europe/Madrid`) names."""
    name = name.strip().removeprefix(":")
    if "zoneinfo/" in name:
        name = name.rsplit("zoneinfo/", 1)[1]
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_zone() -> tzinfo:
    """The server's local zone with its daylight saving rules: the IANA zone `$TZ` names, else
    the one `/etc/localtime` links to (or holds), else `/etc/timezone`'s; only when none is an
    IANA zone, today's fixed offset."""
    tz = os.environ.get("TZ")
    if tz is not None:
        zone = _iana(tz)
    else:
        zone = _iana(os.path.realpath(LOCALTIME)) or _iana(_read(TIMEZONE_FILE))
        if zone is None and os.path.isfile(LOCALTIME):
            try:
                with open(LOCALTIME, "rb") as file:
                    zone = ZoneInfo.from_file(file, key=_read(TIMEZONE_FILE) or "localtime")
            except (OSError, ValueError):
                zone = None
    if zone is not None:
        return zone
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def zone_name(zone: tzinfo) -> str:
    """A zone's IANA name (`America/Chicago`), else how it prints (a fixed offset's `UTC-05:00`)."""
    return str(getattr(zone, "key", None) or zone)


def parse_madsci_time(value: str, zone: tzinfo, name: str) -> int:
    """An ISO time as Unix nanoseconds; naive means `zone` (MADSci's senders stamp local time)."""
    text = value.strip()
    iso = text.replace(" ", "T")
    aware = iso.endswith(("Z", "z")) or bool(re.search(r"[+-]\d{2}:?\d{2}$", iso[10:]))
    if aware or not re.match(r"^\d{4}-\d{2}-\d{2}", iso):
        return parse_time_ns(text, name)
    match = re.match(r"^(.*T\d{2}:\d{2}(?::\d{2})?)\.(\d+)$", iso)
    fraction_ns = 0
    if match:
        iso, fraction_ns = match.group(1), int((match.group(2) + "000000000")[:9])
    try:
        moment = datetime.fromisoformat(iso).replace(tzinfo=zone)
    except ValueError:
        raise ParamError(f"{name}: {value!r} is not a time; use ISO 8601 (2026-11-24T08:00:00)") from None
    return int(moment.timestamp()) * 1_000_000_000 + fraction_ns


def parse_level(value: Any) -> int:
    """A MADSci log level (a stdlib level number or name)."""
    if isinstance(value, bool):
        raise MadsciError("log_level: expected a log level such as 20 or 'INFO'")
    if isinstance(value, int | float) and float(value).is_integer() and int(value) in LEVELS.values():
        return int(value)
    if isinstance(value, str):
        text = value.strip().upper().removeprefix("EVENTLOGLEVEL.")
        if text in LEVELS:
            return LEVELS[text]
        if digits(text) and int(text) in LEVELS.values():
            return int(text)
    raise MadsciError(f"log_level: {value!r} is not one of 0, 10, 20, 30, 40, 50 or their names")


def severity_of(level: int) -> int:
    """OTel severity number of a stdlib level (NOTSET → 0, unspecified)."""
    return 0 if level <= 0 else round(stdlib_level_to_severity(level))


def level_of(severity: int) -> int:
    """The stdlib level of an OTel severity number (TRACE reads as DEBUG)."""
    if severity <= 0:
        return 0
    return {1: 10, 2: 10, 3: 20, 4: 30, 5: 40, 6: 50}[min(6, (severity - 1) // 4 + 1)]


def _event_type(value: Any) -> str:
    text = str(value or "unknown").strip()
    return event_type_value(text.removeprefix("EventType.").removeprefix("eventtype.")) or "unknown"


def _trace(value: Any, length: int) -> bytes:
    text = str(value or "").strip().lower()
    if len(text) == length * 2 and _HEX.match(text) and text.strip("0"):
        return bytes.fromhex(text)
    return b""


def to_record(event: Mapping[str, Any], zone: tzinfo, limits: RecordLimits = DEFAULT_LIMITS) -> tuple[str, Record]:
    """A posted MADSci event (its JSON) as a labtel record within `limits`; returns (event_id, record)."""
    event_id = str(event.get("_id") or event.get("event_id") or "").strip() or new_ulid()
    if len(event_id) > 256:
        raise MadsciError("event_id: longer than 256 characters")
    sent_type = _event_type(event.get("event_type"))
    data = event.get("event_data", {})
    effective = sent_type
    if sent_type in GENERIC_TYPES and isinstance(data, Mapping) and data.get("event_type"):
        effective = _event_type(data["event_type"])
    level = parse_level(event.get("log_level", 20))
    stamp = event.get("event_timestamp")
    try:
        if stamp is None or stamp == "":
            time_ns = time.time_ns()
        elif isinstance(stamp, int | float) and not isinstance(stamp, bool):
            time_ns = number_time_ns(stamp, "event_timestamp")
        elif isinstance(stamp, str):
            time_ns = parse_madsci_time(stamp, zone, "event_timestamp")
        else:
            raise MadsciError("event_timestamp: expected an ISO 8601 time")
    except ParamError as error:
        raise MadsciError(str(error)) from None
    if not storable(time_ns):  # kept as sent in ATTR_TIMESTAMP, and read back so
        time_ns = time.time_ns()
    source = event.get("source") or {}
    if not isinstance(source, Mapping):
        raise MadsciError("source: expected an object of ownership ids (node_id, workflow_id, ...)")
    source = {str(k): v for k, v in source.items() if v not in (None, "")}

    attributes: dict[str, Any] = {
        semconv.LAB_EVENT_ID: event_id,
        semconv.LAB_EVENT_TYPE: effective,
        ATTR_LEVEL: level,
        ATTR_ALERT: bool(event.get("alert", False)),
    }
    if attributes[ATTR_ALERT]:
        attributes[LAB_ALERT] = True
    data_json = compact_json(data)
    in_body = not fits(data_json, limits.max_attribute_value_length)
    if in_body:  # the body may hold more than an attribute
        attributes[ATTR_DATA_IN_BODY] = True
    else:
        attributes[ATTR_DATA] = data_json
    if effective != sent_type:
        attributes[ATTR_TYPE] = sent_type
    if isinstance(stamp, str) and stamp:
        attributes[ATTR_TIMESTAMP] = stamp
    if source:
        attributes[ATTR_SOURCE] = compact_json(source)
    for key, value in source.items():
        attributes[ownership_attribute(key)] = str(value)
    if isinstance(data, Mapping):
        for key in OWNERSHIP:
            if data.get(key) not in (None, "") and not isinstance(data[key], Mapping | list):
                attributes.setdefault(ownership_attribute(key), str(data[key]))
        add_flattened(attributes, data, limits)
    if in_body:
        body = data_json
    elif isinstance(data, Mapping) and isinstance(data.get("message"), str):
        body = data["message"]
    elif isinstance(data, str):
        body = data
    else:
        body = compact_json(data)
    trace_id, span_id = _trace(event.get("trace_id"), 16), _trace(event.get("span_id"), 8)
    if not trace_id:
        span_id = b""
    for name, attribute, kept in (("trace_id", ATTR_TRACE, trace_id), ("span_id", ATTR_SPAN, span_id)):
        if event.get(name) not in (None, "") and not kept:
            attributes[attribute] = str(event[name])
    return event_id, Record(
        body=body,
        time_ns=time_ns,
        severity_number=severity_of(level),
        attributes=attributes,
        resource={semconv.SERVICE_NAME: SERVICE},
        event_name=effective,
        trace_id=trace_id,
        span_id=span_id,
    )


def _loads(text: str) -> Any:
    try:
        return jsontext.loads(text)
    except orjson.JSONDecodeError:
        return text


def _local_iso(ns: int, zone: tzinfo) -> str:
    """Unix nanoseconds as MADSci writes times: ISO 8601 without a zone (its `datetime.now()`),
    local to `zone`, to the microsecond."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, zone).replace(tzinfo=None, microsecond=fraction // 1000)
    return moment.isoformat(timespec="microseconds")


def to_madsci(event: Event, archived_at_ns: int = 0, zone: tzinfo = UTC) -> dict[str, Any]:
    """A stored labtel event as a MADSci Event document (what MADSci's server answers). Times
    labtel stamped (an event from elsewhere, one posted without a time, `archived_at`) are
    written as MADSci's clients write theirs, without a zone, in `zone` (compat.madsci.timezone,
    the zone naive times are read in): every document's times compare with each other."""
    attributes = event.attributes
    if semconv.LAB_EVENT_ID in attributes and (ATTR_DATA in attributes or ATTR_DATA_IN_BODY in attributes):
        data = _loads(attributes.get(ATTR_DATA, event.body))
        source = _loads(attributes.get(ATTR_SOURCE, "{}")) or {}
        event_type = attributes.get(ATTR_TYPE) or event.event_type
        level = int(attributes.get(ATTR_LEVEL, level_of(event.severity_number)) or 0)
        stamp = attributes.get(ATTR_TIMESTAMP) or _local_iso(event.time_unix_nano, zone)
    else:  # any other labtel event
        data = {"message": event.body, "event_type": event.event_type, "service": event.service_name, **attributes}
        source = {}
        for key in OWNERSHIP:
            value = attributes.get(ownership_attribute(key)) or event.resource.get(ownership_attribute(key))
            if value and _ULID.match(value):
                source[key] = value
        event_type = event.event_type
        level = level_of(event.severity_number)
        stamp = _local_iso(event.time_unix_nano, zone)
    if event_type not in CATALOG:
        event_type = "unknown"
    return {
        "_id": attributes.get(semconv.LAB_EVENT_ID) or event.event_id,
        "event_type": event_type,
        "log_level": level if level in LEVELS.values() else level_of(event.severity_number),
        "alert": attributes.get(ATTR_ALERT) == "true",
        "event_timestamp": stamp,
        "source": source if isinstance(source, dict) else {},
        "event_data": data,
        "trace_id": event.trace_id or attributes.get(ATTR_TRACE) or None,
        "span_id": event.span_id or attributes.get(ATTR_SPAN) or None,
        "archived": archived_at_ns > 0,
        "archived_at": _local_iso(archived_at_ns, zone) if archived_at_ns > 0 else None,
    }


def posted_document(event_id: str, record: Record, zone: tzinfo = UTC) -> dict[str, Any]:
    """The document a posted event reads back as (`to_madsci` of its record, its attributes as
    storage keeps them: text), answered before storage may show it."""
    attributes = {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in record.attributes.items()
    }
    stamp = format_time_ns(record.time_ns)
    event = Event(
        event_id=event_id,
        timestamp=stamp,
        time_unix_nano=record.time_ns,
        observed_timestamp=stamp,
        observed_time_unix_nano=record.time_ns,
        severity_text="",
        severity_number=record.severity_number,
        body=record.body,
        service_name=SERVICE,
        event_type=attributes.get(semconv.LAB_EVENT_TYPE, "unknown"),
        event_name=record.event_name,
        node_id="",
        run_id="",
        workflow_id="",
        experiment_id="",
        trace_id=record.trace_id.hex(),
        span_id=record.span_id.hex(),
        trace_flags=0,
        attributes=attributes,
        resource={},
        resource_schema_url="",
        scope=Scope(name=SCOPE),
    )
    return to_madsci(event, zone=zone)


# --- selectors ---------------------------------------------------------------------------------


def selector_from_text(text: str) -> Any:
    """A selector sent as a query parameter: JSON, or the Python text MADSci's client sends
    (`str(dict)`: httpx renders a dict parameter with repr). Only literals are read, nothing runs."""
    if len(text) > MAX_SELECTOR_TEXT:
        raise MadsciError("selector: longer than 64 KiB")
    try:
        return jsontext.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise MadsciError("selector: neither JSON nor a Python literal of a selector") from None


def madsci_selector(selector: Any, zone: tzinfo, depth: int = 0, prefix: str = "") -> dict[str, Any]:
    """A MongoDB selector over MADSci's documents as a labtel selector: sub-documents become
    dotted fields (`{"source": {"node_id": x}}` → `source.node_id`), and each field is matched
    where `to_madsci` reads it from (`madsci_field`). `archived` stays for `MadsciStore.query`."""
    if not isinstance(selector, Mapping):
        raise MadsciError("selector: expected a JSON object")
    if depth > 12:
        raise MadsciError("selector: nests too deep")
    out: dict[str, Any] = {}
    for key, value in selector.items():
        key = str(key)
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            out[key] = [madsci_selector(v, zone, depth + 1) for v in value]
        elif key.startswith("$"):
            out[key] = value
        elif isinstance(value, Mapping) and value and not any(str(k).startswith("$") for k in value):
            for sub_key, sub_value in madsci_selector(value, zone, depth + 1, f"{prefix}{key}.").items():
                if sub_key == "$and":
                    out.setdefault("$and", []).extend(sub_value)
                else:
                    out[sub_key] = sub_value
        else:
            madsci_field(prefix + key, value, zone, out)
    return out


READ_FROM_COLUMNS = {
    "event_data.message": "body",
    "event_data.event_type": "event_type",
    "event_data.service": "service",
}
"""`event_data` keys that other labtel events read back with, from their columns (`to_madsci`)."""
NOT_MADSCI = {
    "$nor": [
        {
            f"attributes.{semconv.LAB_EVENT_ID}": {"$exists": True},
            "$or": [
                {f"attributes.{ATTR_DATA}": {"$exists": True}},
                {f"attributes.{ATTR_DATA_IN_BODY}": {"$exists": True}},
            ],
        }
    ]
}
"""Events that did not come as MADSci events (`to_madsci` makes their documents up)."""


def madsci_field(name: str, value: Any, zone: tzinfo, out: dict[str, Any]) -> None:
    """Add the labtel selector of one MADSci document field to `out`: `_id` / `event_id` match
    the MADSci id (`lab.event.id`) or labtel's id; naive `event_timestamp` values are in `zone`;
    `alert` is `madsci.alert`; a whole `event_data` that is not an object is its JSON text
    (`madsci.event_data`); `event_data.message` / `.event_type` / `.service` of other labtel
    events are their body, type and service."""
    if name in ("_id", "event_id"):
        out.setdefault("$and", []).append(
            {"$or": [{f"attributes.{semconv.LAB_EVENT_ID}": value}, {"event_id": _uuid_or_none(value)}]}
        )
    elif name == "event_timestamp":
        out[name] = _times(value, zone)
    elif name == "alert":
        out[f"attributes.{ATTR_ALERT}"] = {"$ne": True} if value is False else value
    elif name == "event_data":
        out[f"attributes.{ATTR_DATA}"] = _json_operand(value)
    elif name in READ_FROM_COLUMNS:
        out.setdefault("$and", []).append(
            {
                "$or": [
                    {f"attributes.{name.removeprefix('event_data.')}": value},
                    {**NOT_MADSCI, READ_FROM_COLUMNS[name]: value},
                ]
            }
        )
    else:
        out[name] = value


def _json_operand(value: Any) -> Any:
    """A selector value on `event_data` as one on its stored JSON text."""
    if not isinstance(value, Mapping):
        return compact_json(value)
    converted: dict[str, Any] = {}
    for op, operand in value.items():
        if op in ("$eq", "$ne"):
            converted[op] = compact_json(operand)
        elif op in ("$in", "$nin") and isinstance(operand, list):
            converted[op] = [compact_json(v) for v in operand]
        else:
            converted[op] = operand
    return converted


def _uuid_or_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {op: _uuid_or_none(v) for op, v in value.items()}
    if isinstance(value, list):
        return [_uuid_or_none(v) for v in value]
    text = str(value)
    return text if re.match(r"^[0-9a-fA-F-]{36}$", text) else "00000000-0000-0000-0000-000000000000"


def _times(value: Any, zone: tzinfo) -> Any:
    if isinstance(value, Mapping):
        return {op: _times(v, zone) for op, v in value.items()}
    if isinstance(value, list):
        return [_times(v, zone) for v in value]
    if isinstance(value, str):
        try:
            return format_time_ns(parse_madsci_time(value, zone, "event_timestamp"))
        except ParamError as error:
            raise MadsciError(str(error)) from None
    return value
