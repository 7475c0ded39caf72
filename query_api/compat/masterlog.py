"""Master Log compatibility: the JSON events `master-log-client` sends, as labtel log records.

Fields, as labtel's own `mlog` stores them: `severity` (trace, debug, info, warn, error, fatal)
→ OTel severity and a MADSci-style type (`log_info`, …); `body` → the body; `title` → `title`;
`tags` → `tags` (a JSON list, sorted, without duplicates); `metadata` → its keys as attributes
(nested objects joined with dots) and kept whole in `master_log.metadata`, except the client's
`python_client` block (`_python_client` when the user has a `python_client` key), which
describes the sender and becomes resource attributes (`host.name`, `host.fqdn`, `process.pid`,
`process.command`, `service.name`, …); `ttl_seconds` / `expires_at` → `lab.ttl_seconds` /
`lab.expires_at` (storage deletes the event then); `created_at` → the event's time. Each event
gets an id (`lab.event.id`), answered back.

A batch is converted CHUNK_EVENTS events at a time (`convert_chunk`): a chunk's records are
encoded and let go before the next chunk is converted, so a batch is held as posted and as
encoded, never all of it as Python records; the route stores the encoded chunks in one write.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits
from labtel.collector.otlp.records import Record
from labtel.query_api.compat import jsontext
from labtel.query_api.compat.ingest import STORABLE_TIMES, add_flattened, compact_json, encode_each, fit, storable
from labtel.query_api.errors import INVALID_TEXT
from labtel.query_api.params import ParamError, number_time_ns, parse_time_ns
from labtel.sdk import semconv

SCOPE = "labtel.compat.master_log"
SEVERITIES = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
TYPES = {"trace": "log_debug", "debug": "log_debug", "info": "log_info", "warn": "log_warning"}
TYPES |= {"error": "log_error", "fatal": "log_critical"}
CLIENT_RESOURCE = {
    "hostname": semconv.HOST_NAME,
    "fqdn": "host.fqdn",
    "pid": "process.pid",
    "process_name": "process.executable.name",
    "argv0": "process.command",
    "cwd": "process.working_directory",
    "python_version": "process.runtime.version",
    "library": "master_log.library",
    "library_version": "master_log.library_version",
}
CHUNK_EVENTS = 5_000
"""Events of a batch converted at a time (a few MB of Python records)."""


class MasterLogError(ValueError):
    """An event that cannot be stored at all (not a JSON object, or an unknown severity); the
    message says which field."""


def _time(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MasterLogError(f"{name}: expected an ISO 8601 time such as 2026-11-24T08:00:00Z")
    try:
        return parse_time_ns(value, name) if isinstance(value, str) else number_time_ns(value, name)
    except ParamError as error:
        raise MasterLogError(str(error)) from None


def _positive_seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _is_client_block(value: Any) -> bool:
    """Whether a metadata value is master-log-client's description of the sender."""
    return isinstance(value, Mapping) and {"hostname", "pid"} <= set(value)


def _client_block(metadata: dict[str, Any]) -> Mapping[str, Any] | None:
    """Take the client's block out of the metadata. master-log-client sends it as
    `python_client`, or as `_python_client` when the user's metadata has a `python_client` of its
    own; so the first of these that is a client block is taken, and the other stays, the user's."""
    for key in ("_python_client", "python_client") if "python_client" in metadata else ():
        if _is_client_block(metadata.get(key)):
            block: Mapping[str, Any] = metadata.pop(key)
            return block
    return None


def to_record(event: Any, index: int = 0, limits: RecordLimits = DEFAULT_LIMITS) -> tuple[dict[str, Any], Record]:
    """One posted Master Log event as (the event as answered, with its id; its labtel record
    within `limits`: metadata keys as many as there is room for, a whole copy longer than an
    attribute may be cut, see `labtel.query_api.compat.ingest.fit`).

    Only an event that is not an object or has an unknown severity is refused (MasterLogError).
    A field labtel cannot use is left out or defaulted instead, and the event stored: an
    unreadable `created_at` becomes the arrival time, a bad `ttl_seconds` / `expires_at` does not
    expire the event; the value as sent is kept in `master_log.<field>` and the problems are
    listed in `master_log.errors` and in the answer's `errors`."""
    where = f"logs[{index}]." if index >= 0 else ""
    if not isinstance(event, Mapping):
        raise MasterLogError(f"{where or 'the body'}: expected a JSON object")
    severity = str(event.get("severity", "info")).strip().lower()
    if severity not in SEVERITIES:
        raise MasterLogError(f"{where}severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    problems: list[str] = []
    kept: dict[str, Any] = {}
    body = event.get("body", "")
    body = body if isinstance(body, str) else compact_json(body)
    title = event.get("title") or (body.strip().splitlines()[0][:120] if body.strip() else "Python log event")
    tags = event.get("tags") or []
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list):
        problems.append(f"{where}tags: expected a list of strings; left out")
        kept["tags"], tags = tags, []
    tags = sorted({str(t).strip() for t in tags if str(t).strip()})
    metadata = event.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        problems.append(f"{where}metadata: expected a JSON object; kept whole in master_log.metadata only")
        kept["metadata"], metadata = metadata, {}
    user = dict(metadata)
    client = _client_block(user)
    event_id = str(uuid.uuid4())
    attributes: dict[str, Any] = {
        semconv.LAB_EVENT_ID: event_id,
        semconv.LAB_EVENT_TYPE: TYPES[severity],
        "title": str(title),
        "severity": severity,
        "tags": compact_json(tags),
    }
    if user or "metadata" in kept:
        attributes["master_log.metadata"] = compact_json(kept.get("metadata", user))
    ttl = event.get("ttl_seconds")
    if ttl is not None and _positive_seconds(ttl):
        attributes[semconv.LAB_TTL_SECONDS] = ttl
    elif ttl is not None:
        problems.append(f"{where}ttl_seconds: expected a positive number of seconds; left out")
        kept["ttl_seconds"] = ttl
    if event.get("expires_at") is not None:
        try:
            _time(event["expires_at"], f"{where}expires_at")
            attributes[semconv.LAB_EXPIRES_AT] = str(event["expires_at"])
        except MasterLogError as error:
            problems.append(f"{error}; left out")
            kept["expires_at"] = event["expires_at"]
    time_ns = time.time_ns()
    if event.get("created_at"):
        try:
            created_ns = _time(event["created_at"], f"{where}created_at")
            if not storable(created_ns):
                raise MasterLogError(f"{where}created_at: {event['created_at']!r} is outside {STORABLE_TIMES}")
            time_ns = created_ns
        except MasterLogError as error:
            problems.append(f"{error}; the event's time is its arrival")
            kept["created_at"] = event["created_at"]
    for key, value in kept.items():
        if key != "metadata":
            attributes[f"master_log.{key}"] = value if isinstance(value, str) else compact_json(value)
    if problems:
        attributes["master_log.errors"] = compact_json(problems)
    add_flattened(attributes, user, limits)
    resource: dict[str, Any] = {}
    if isinstance(client, Mapping):
        for key, name in CLIENT_RESOURCE.items():
            if client.get(key) not in (None, ""):
                resource[name] = client[key] if isinstance(client[key], int | str) else str(client[key])
        resource[semconv.SERVICE_NAME] = str(client.get("process_name") or "master-log")
    else:
        resource[semconv.SERVICE_NAME] = "master-log"
    answer: dict[str, Any] = {"id": event_id, "severity": severity, "title": str(title), "tags": tags}
    if problems:
        answer["errors"] = problems
    return answer, Record(
        body=body,
        time_ns=time_ns,
        severity_number=SEVERITIES[severity],
        attributes=attributes,
        resource=resource,
        event_name=TYPES[severity],
    )


@dataclass(frozen=True)
class Chunk:
    """Some events of a batch, converted: what to store of them and what to answer."""

    data: bytes
    """Serialized ExportLogsServiceRequests of the events to store (concatenated ones are one)."""
    records: int
    answers: list[bytes]
    """The stored events' answers (JSON), in batch order."""
    indexes: list[int]
    """The stored events' indexes in the batch, as `answers`."""
    errors: list[dict[str, Any]]
    """The events left out: `index` in the batch, `error`."""


def convert_chunk(
    events: Sequence[Any], offset: int, limits: RecordLimits = DEFAULT_LIMITS, skip: Container[int] = ()
) -> Chunk:
    """The events `offset`, `offset + 1`, ... of a batch, converted (`to_record`) and encoded
    within `limits`, but those whose index is in `skip` (stored already). An event that cannot
    be stored at all (not an object, an unknown severity, text that is not valid Unicode) is left
    out and listed in `errors`, never fails the chunk."""
    answers: list[dict[str, Any]] = []
    records: list[Record] = []
    indexes: list[int] = []
    errors: list[dict[str, Any]] = []
    for index, event in enumerate(events, offset):
        if index in skip:
            continue
        try:
            answer, record = to_record(event, index, limits)
        except MasterLogError as error:
            errors.append({"index": index, "error": str(error)})
            continue
        except orjson.JSONEncodeError:  # a lone surrogate in tags or metadata
            errors.append(_invalid_text(index))
            continue
        answers.append(answer)
        records.append(record)
        indexes.append(index)
    data, invalid = encode_each([fit(record, limits) for record in records], SCOPE)
    for position in reversed(invalid):  # in the body, title or attributes
        errors.append(_invalid_text(indexes[position]))
        del answers[position], indexes[position]
    errors.sort(key=lambda error: int(error["index"]))
    return Chunk(data, len(answers), [jsontext.dumps(answer) for answer in answers], indexes, errors)


def _invalid_text(index: int) -> dict[str, Any]:
    """The `errors` item of the batch's event `index`, left out for text that is not valid Unicode."""
    return {"index": index, "error": f"logs[{index}]: {INVALID_TEXT}; left out"}
