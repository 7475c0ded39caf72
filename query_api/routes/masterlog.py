"""`POST /api/v1/logs` and `/api/v1/logs/batch`: Master Log's ingest API, so `master-log-client`
works unchanged with `MASTER_LOG_ENDPOINT` set to labtel's query API. With a `labtel_auth`
authenticator on the query API, its keys (scope `ingest`) are the ones checked; otherwise the
keys are `compat.api_keys` and `$LABTEL_API_KEYS`, and with none any key is accepted (start-up
says so)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Request

from labtel.query_api.compat.ingest import EventWriter
from labtel.query_api.compat.masterlog import MAX_BATCH, SCOPE, MasterLogError, to_record

router = APIRouter(prefix="/api/v1", tags=["Master Log"])


def _authorize(request: Request, authorization: str | None) -> None:
    keys: frozenset[str] = request.app.state.api_keys
    if not keys or request.app.state.authenticator is not None:
        return
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in keys):
        raise HTTPException(
            401, "a valid API key is required: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"}
        )


async def _store(request: Request, events: list[Any], batch: bool) -> dict[str, Any]:
    """Store the events; answers `{accepted, events, errors?}`. A batch is never refused for some
    of its events: master-log-client would send all of it again at every flush, forever. Events
    that cannot be stored at all are listed in `errors` (`index`, `error`) and left out."""
    writer: EventWriter = request.app.state.compat_writer
    answers, records, errors = [], [], []
    for index, event in enumerate(events):
        try:
            answer, record = to_record(event, index if batch else -1, writer.limits)
        except MasterLogError as error:
            if not batch:
                raise HTTPException(422, str(error)) from None
            errors.append({"index": index, "error": str(error)})
            continue
        answers.append(answer)
        records.append(record)
    partial = await writer.write(records, SCOPE)
    accepted = len(records)
    if partial is not None:
        accepted -= partial.rejected
        errors.append({"index": None, "error": f"{partial.rejected} of the events were refused: {partial.message}"})
    result: dict[str, Any] = {"accepted": accepted, "events": answers}
    if errors:
        result["errors"] = errors
    return result


@router.post("/logs", summary="Store one Master Log event; answers {accepted, events: [{id, ...}]}")
async def post_log(
    request: Request,
    event: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    _authorize(request, authorization)
    return await _store(request, [event], batch=False)


@router.post("/logs/batch", summary='Store Master Log events ({"logs": [...]}); unusable ones are listed in errors')
async def post_batch(
    request: Request,
    batch: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    _authorize(request, authorization)
    logs = batch.get("logs")
    if not isinstance(logs, list):
        raise HTTPException(422, 'expected {"logs": [...]}')
    if len(logs) > MAX_BATCH:
        raise HTTPException(413, f"a batch holds at most {MAX_BATCH} events")
    return await _store(request, logs, batch=True)
