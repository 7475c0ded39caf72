"""`POST /sql`: read-only SQL for analysts, and `GET /sql/tables`: what there is to query."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from labtel.query_api.formats import SQL_FORMATS, choose_format
from labtel.query_api.sandbox import Sandbox, SandboxBusy, SandboxRefusal, SandboxTooLarge

router = APIRouter(tags=["sql"])

MAX_SQL_BYTES = 256 * 1024
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a `{name:Type}` placeholder's name may be."""


class SqlQuery(BaseModel):
    """A query for the sandbox."""

    sql: str = Field(
        description="One SELECT (or DESCRIBE) over labtel's tables; `{name:Type}` placeholders take `parameters`",
        examples=["SELECT EventType, count() FROM otel_logs WHERE Timestamp > now() - INTERVAL 1 DAY GROUP BY 1"],
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="Values of `{name:Type}` placeholders")
    format: str | None = Field(None, description="json, csv, tsv, ndjson, parquet, arrow or arrow-stream")

    @field_validator("parameters")
    @classmethod
    def _names(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        for name in parameters:
            if not _PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a placeholder name (letters, digits and _, as in {{node:String}})")
        return parameters


def get_sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


SQL_DESCRIPTION = """Runs one SELECT (or DESCRIBE) over labtel's tables (`otel_logs`, `otel_traces`,
`otel_metrics_*`; unqualified names are labtel's) with ClickHouse's `readonly` mode and limits on
time, rows read, result rows and bytes, and memory. Refused with 403: other statements, tables of
other databases and system tables other than `system.one`, `system.numbers`, `system.functions`, …,
table functions other than `numbers`, `zeros`, `values`, `generateSeries`, dictionary and file
functions, and the query's own `SETTINGS`, `FORMAT` and `INTO OUTFILE`.

Body: JSON `{"sql": "...", "parameters": {...}, "format": "csv"}`, or the SQL itself as `text/plain`
or `application/sql`. The result format comes from `format` (body or query), else the Accept header:
JSON (ClickHouse's `meta` / `data` / `rows` / `statistics`, the default), CSV and TSV with a header
row, NDJSON, Parquet, Arrow (file) or Arrow stream. Syntax and type errors are 400 with ClickHouse's
message; limits 413; timeouts 408; more queries at once than `max_concurrent_queries` 429."""


@router.post(
    "/sql",
    summary="Read-only SQL over labtel's tables",
    description=SQL_DESCRIPTION,
    responses={
        200: {"content": {media: {} for _, media in SQL_FORMATS.values()}},
        400: {"description": "the SQL does not parse or run"},
        403: {"description": "the SQL does something the sandbox does not allow"},
        406: {"description": "no result format matches Accept"},
        408: {"description": "the query took longer than the time limit"},
        413: {"description": "the query read, returned or used more than a limit"},
        429: {"description": "max_concurrent_queries queries are running; try again (Retry-After)"},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": SqlQuery.model_json_schema()},
                "text/plain": {"schema": {"type": "string"}},
                "application/sql": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def sql(
    request: Request,
    format: Annotated[str | None, Query(description="json, csv, tsv, ndjson, parquet, arrow, arrow-stream")] = None,
) -> Response:
    query = await _read_query(request)
    if not query.sql.strip().strip(";").strip():
        raise HTTPException(400, "sql: the query is empty")
    fmt_name = query.format or format
    try:
        name, (clickhouse_format, media_type) = choose_format(SQL_FORMATS, fmt_name, request.headers.get("accept"))
    except LookupError as error:
        raise HTTPException(406 if fmt_name is None else 400, str(error)) from None
    sandbox = get_sandbox(request)
    try:
        body = await run_in_threadpool(sandbox.run, query.sql, clickhouse_format, query.parameters)
    except SandboxRefusal as error:
        raise HTTPException(403, f"not allowed: {error}") from None
    except SandboxBusy as error:
        raise HTTPException(429, str(error), headers={"Retry-After": "1"}) from None
    except SandboxTooLarge as error:
        raise HTTPException(413, str(error)) from None
    return Response(body, media_type=media_type, headers={"X-Labtel-Format": name})


async def _read_query(request: Request) -> SqlQuery:
    body = await request.body()
    if len(body) > MAX_SQL_BYTES:
        raise HTTPException(413, f"the query is larger than {MAX_SQL_BYTES} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("text/plain", "application/sql", "text/sql"):
        try:
            return SqlQuery(sql=body.decode())
        except UnicodeDecodeError:
            raise HTTPException(400, "the SQL is not valid UTF-8") from None
    try:
        return SqlQuery.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as error:
        raise HTTPException(400, f'the body is not JSON ({error}); send {{"sql": "..."}} or text/plain SQL') from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise HTTPException(400, problems) from None


@router.get("/sql/tables", summary="labtel's tables and their columns, for writing SQL")
def tables(request: Request) -> dict[str, Any]:
    sandbox = get_sandbox(request)
    return {"database": sandbox.storage.names.database, "tables": sandbox.tables()}
