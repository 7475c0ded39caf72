"""`POST /api/v1/logs` and `/api/v1/logs/batch`: Master Log's ingest API, so `master-log-client`
works unchanged with `MASTER_LOG_ENDPOINT` set to labtel's query API. With a `labtel_auth`
authenticator on the query API, its keys (scope `ingest`) are the ones checked; otherwise the
keys are `compat.api_keys` and `$LABTEL_API_KEYS`, and with none any key is accepted (start-up
says so).

A batch of any size within `max_request_body_size` and `compat.master_log.max_batch_events` is
stored, in one write: master-log-client keeps a batch that was not answered 2xx and sends all of
it again, so a batch is stored wholly or not at all, and not at all when the client stopped
waiting for the answer before it was stored (its `timeout_seconds`, 2 s by default: it sends
the batch again). When the client stopped waiting while the batch was being stored, its events
are remembered (labtel.query_api.compat.unanswered) and the retry's copies of them are answered
with the ids they were stored under, not stored again."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Header, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from labtel.collector.config import QueryApiConfig
from labtel.query_api.compat import jsontext
from labtel.query_api.compat.ingest import EventWriter
from labtel.query_api.compat.masterlog import (
    CHUNK_EVENTS,
    SCOPE,
    Chunk,
    MasterLogError,
    convert_chunk,
    to_record,
)
from labtel.query_api.compat.unanswered import Unanswered, fingerprint
from labtel.query_api.errors import INVALID_TEXT

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["Master Log"])
BATCH_LIMIT = "extensions.query_api.compat.master_log.max_batch_events"


def _authorize(request: Request, authorization: str | None) -> None:
    keys: frozenset[str] = request.app.state.api_keys
    if not keys or request.app.state.authenticator is not None:
        return
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in keys):
        raise HTTPException(
            401, "a valid API key is required: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"}
        )


async def _store_one(request: Request, event: dict[str, Any], client: str) -> dict[str, Any]:
    """Store one event; answers `{accepted, events}`, or 422 / 400 for an event that cannot be
    stored. One stored before for this client while it had gone is answered as it was."""
    writer: EventWriter = request.app.state.compat_writer
    ledger: Unanswered = request.app.state.masterlog_unanswered
    key = fingerprint(event, client)
    async with ledger.storing([key]) as earlier:
        if earlier:
            return {"accepted": 1, "events": [jsontext.loads(earlier[0])]}
        try:
            answer, record = to_record(event, -1, writer.limits)
        except MasterLogError as error:
            raise HTTPException(422, str(error)) from None
        except orjson.JSONEncodeError:  # a lone surrogate in tags or metadata
            raise HTTPException(400, f"the event {INVALID_TEXT}") from None
        await writer.write([record], SCOPE)  # a 400 when its one record is refused
        if await request.is_disconnected():
            ledger.remember([(key, jsontext.dumps(answer))])
    return {"accepted": 1, "events": [answer]}


async def _unless_gone(request: Request, events: int) -> None:
    """Raise (and log) if the client of a batch went away: it got no answer, so it sends the batch
    again, and storing this one too would store it twice."""
    if await request.is_disconnected():
        log.warning(
            "a Master Log batch of %d events was not stored: the client stopped waiting for the answer "
            "before it was, and sends the batch again (master-log-client: raise timeout_seconds / "
            "MASTER_LOG_TIMEOUT_SECONDS or lower batch_size / MASTER_LOG_BATCH_SIZE)",
            events,
        )
        raise HTTPException(499, "the client went away before the batch was stored; nothing was stored")


async def _store_batch(request: Request, logs: list[Any], client: str) -> Response:
    """Store a batch; answers `{accepted, events, errors?}`. A batch is never refused for some of
    its events (master-log-client would send all of it again at every flush, forever): events
    that cannot be stored at all are listed in `errors` (`index`, `error`) and left out.

    The events are converted CHUNK_EVENTS at a time in a worker thread (the server keeps
    answering meanwhile), each chunk's posted events let go once encoded; the encoded chunks are
    then stored in one write, so the batch is stored wholly or not at all. Events stored before
    for this client while it had gone (`Unanswered`) are answered as they were, not stored again."""
    writer: EventWriter = request.app.state.compat_writer
    ledger: Unanswered = request.app.state.masterlog_unanswered
    keys = await run_in_threadpool(lambda: [fingerprint(event, client) for event in logs])
    async with ledger.storing(keys) as earlier:
        chunks: list[Chunk] = []
        for start in range(0, len(logs), CHUNK_EVENTS):
            # Also lets the server read from the connection again (it stops while a body waits),
            # so that a client that goes away is seen before the store.
            await _unless_gone(request, len(logs))
            end = min(start + CHUNK_EVENTS, len(logs))
            chunks.append(await run_in_threadpool(convert_chunk, logs[start:end], start, writer.limits, earlier))
            logs[start:end] = [None] * (end - start)
        records = sum(chunk.records for chunk in chunks)
        errors = [error for chunk in chunks for error in chunk.errors]
        if records:
            await _unless_gone(request, len(logs))
        data = b"".join(chunk.data for chunk in chunks)
        stored = [(i, answer) for chunk in chunks for i, answer in zip(chunk.indexes, chunk.answers, strict=True)]
        chunks.clear()
        partial = await writer.store(data, records)
        del data
        if partial is None and stored and await request.is_disconnected():
            ledger.remember((keys[index], answer) for index, answer in stored)
            log.warning(
                "a Master Log batch of %d events was stored after its client stopped waiting for the answer; "
                "its retry is answered without storing them again (master-log-client: raise timeout_seconds / "
                "MASTER_LOG_TIMEOUT_SECONDS or lower batch_size / MASTER_LOG_BATCH_SIZE)",
                len(stored),
            )
    accepted = records + len(earlier)
    if partial is not None:
        accepted -= partial.rejected
        errors.append({"index": None, "error": f"{partial.rejected} of the events were refused: {partial.message}"})
    answers = b",".join(answer for _, answer in sorted([*stored, *earlier.items()]))
    body = b'{"accepted":%d,"events":[%b]' % (accepted, answers)
    if errors:
        body += b',"errors":' + jsontext.dumps(errors)
    return Response(body + b"}", media_type="application/json")


@router.post("/logs", summary="Store one Master Log event; answers {accepted, events: [{id, ...}]}")
async def post_log(
    request: Request,
    event: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    _authorize(request, authorization)
    return await _store_one(request, event, authorization or "")


@router.post(
    "/logs/batch",
    summary='Store Master Log events ({"logs": [...]}); answers {accepted, events: [{id, ...}], errors?}',
    response_model=None,
)
async def post_batch(
    request: Request,
    batch: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    _authorize(request, authorization)
    logs = batch.get("logs")
    if not isinstance(logs, list):
        raise HTTPException(422, 'expected {"logs": [...]}')
    config: QueryApiConfig = request.app.state.config
    most = config.compat.master_log.max_batch_events
    if most and len(logs) > most:
        raise HTTPException(
            413,
            f"a batch holds at most {most} events ({BATCH_LIMIT}) and this one has {len(logs)}: send them in "
            f"batches of at most {most} (master-log-client: batch_size= or MASTER_LOG_BATCH_SIZE)",
        )
    return await _store_batch(request, logs, authorization or "")
