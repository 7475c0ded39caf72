"""Writing events from the compatibility routes: never lose what was accepted.

Inside `labtel serve` the records go through the logs pipeline (group commit, write-ahead log),
exactly as an OTLP Export call does, so a success means they are durable. When the API runs
alone (`labtel api`) they are inserted directly with `Storage.insert_otlp`, which returns only
once ClickHouse has stored them. A storage failure is an `HTTPException` 503 with Retry-After;
records the storage refuses as invalid are a 400. When the pipeline stores some records of a
write and refuses others, `write` returns what was refused, so a route can answer a success
that says so (a 4xx would make a client send the stored ones again).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from labtel.collector.component import Consumer, ExportRejected, ExportUnavailable, PartialSuccess, Payload
from labtel.collector.otlp.records import Record, Scalar, logs_request
from labtel.collector.otlp.signals import LOGS
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.schema import EXACT_PATH_ERROR
from labtel.sdk import __version__

MAX_ATTRIBUTES = 256
"""Flattened keys per event beyond which the rest stays in the whole JSON copy only."""
MAX_DEPTH = 6


def compact_json(value: Any) -> str:
    """JSON text of any decoded JSON value, compact, keys in their order (non-JSON values as text)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def scalar(value: Any) -> Scalar:
    """A JSON value as an attribute value: scalars as they are, anything else as compact JSON."""
    if isinstance(value, bool | str | int):
        return value if not isinstance(value, int) or -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None:
        return ""
    return compact_json(value)


def flatten(value: Any, prefix: str = "", out: dict[str, Scalar] | None = None, depth: int = 0) -> dict[str, Scalar]:
    """A JSON object as attributes: nested objects joined with dots (`a.b`), lists and deeper
    objects as compact JSON; at most MAX_ATTRIBUTES keys."""
    out = {} if out is None else out
    if not isinstance(value, Mapping):
        if prefix:
            out[prefix] = scalar(value)
        return out
    for key, item in value.items():
        if len(out) >= MAX_ATTRIBUTES:
            break
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item and depth < MAX_DEPTH:
            flatten(item, name, out, depth + 1)
        else:
            out[name] = scalar(item)
    return out


def encode(records: list[Record], scope: str) -> bytes:
    """The records as one serialized ExportLogsServiceRequest; invalid text is a 400."""
    try:
        return logs_request(records, scope, __version__)
    except ValueError as error:  # a lone surrogate from a JSON \\ud800 escape
        raise HTTPException(400, f"the event holds text that is not valid Unicode: {error}") from None


class EventWriter:
    """Stores records for the compatibility routes: through the logs pipeline when there is one
    (inside `labtel serve`), else straight into storage."""

    def __init__(self, storage: Storage, pipeline: Consumer | None = None) -> None:
        self.storage = storage
        self.pipeline = pipeline

    async def write(self, records: list[Record], scope: str) -> PartialSuccess | None:
        """Store `records`; returns once they are durable, with what the pipeline refused of them
        when it stored the others. Raises HTTPException 503 (retry), or 400 when none was stored."""
        if not records:
            return None
        data = encode(records, scope)
        if self.pipeline is not None:
            try:
                partial = await self.pipeline.consume(Payload(LOGS, data, len(records)))
            except ExportRejected as error:
                raise HTTPException(400, f"the events were refused: {error.message}") from None
            except ExportUnavailable as error:
                raise unavailable(error.message, error.retry_after_s) from None
            if partial is not None and partial.rejected >= len(records):
                raise HTTPException(400, f"the events were refused: {partial.message}")
            return partial
        try:
            await run_in_threadpool(self.storage.insert_otlp, "logs", data, f"compat-{uuid.uuid4()}")
        except ClickHouseError as error:
            if EXACT_PATH_ERROR in str(error):
                raise HTTPException(400, "the events hold values the storage refuses") from None
            raise unavailable(f"storage refused the insert: {str(error).splitlines()[0]}") from None
        except (StorageError, OSError) as error:
            raise unavailable(str(error)) from None
        return None


def unavailable(message: str, retry_after_s: float = 2.0) -> HTTPException:
    """A 503 that tells the client to try again later."""
    return HTTPException(
        503,
        f"storage is unavailable, try again: {message}",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )
