"""Result formats of `POST /sql` and `GET /export`: names, ClickHouse formats and media types,
chosen by a `format` parameter or by the Accept header."""

from __future__ import annotations

Format = tuple[str, str]
"""(ClickHouse output format, media type)."""

SQL_FORMATS: dict[str, Format] = {
    "json": ("JSON", "application/json"),
    "csv": ("CSVWithNames", "text/csv; charset=utf-8"),
    "tsv": ("TSVWithNames", "text/tab-separated-values; charset=utf-8"),
    "ndjson": ("JSONEachRow", "application/x-ndjson"),
    "parquet": ("Parquet", "application/vnd.apache.parquet"),
    "arrow": ("Arrow", "application/vnd.apache.arrow.file"),
    "arrow-stream": ("ArrowStream", "application/vnd.apache.arrow.stream"),
}
"""The formats of `POST /sql`; the first is the default."""

EXPORT_FORMATS: dict[str, Format] = {
    "csv": ("CSV", "text/csv; charset=utf-8"),
    "ndjson": ("JSONEachRow", "application/x-ndjson"),
    "parquet": ("ArrowStream", "application/vnd.apache.parquet"),
}
"""The formats of `GET /export`; Parquet is written by labtel from ClickHouse's Arrow stream."""

_ALIASES = {
    "application/jsonl": "ndjson",
    "application/ndjson": "ndjson",
    "application/json-lines": "ndjson",
    "application/x-parquet": "parquet",
    "jsonl": "ndjson",
    "jsoneachrow": "ndjson",
}


def _media_name(formats: dict[str, Format], media: str) -> str | None:
    if media in _ALIASES:
        return _ALIASES[media]
    for name, (_, media_type) in formats.items():
        if media_type.split(";")[0] == media:
            return name
    return None


def choose_format(formats: dict[str, Format], name: str | None, accept: str | None) -> tuple[str, Format]:
    """The format a request asks for: by `name` first, else the best Accept match, else the default.

    Raises LookupError naming the choices when neither matches."""
    choices = ", ".join(formats)
    if name is not None:
        key = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in formats:
            raise LookupError(f"format: {name!r} is not one of {choices}")
        return key, formats[key]
    default = next(iter(formats))
    if not accept:
        return default, formats[default]
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranked):
        if media in ("*/*", "application/*", ""):
            return default, formats[default]
        found = _media_name(formats, media)
        if found is not None:
            return found, formats[found]
    raise LookupError(f"no format matches Accept: {accept!r}; formats: {choices} (or use format=)")
