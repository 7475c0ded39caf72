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


def _media_types(formats: dict[str, Format], name: str) -> set[str]:
    """The media types (without parameters) that ask for format `name`: its own and its aliases."""
    own = formats[name][1].split(";")[0]
    return {own, *(alias for alias, target in _ALIASES.items() if target == name and "/" in alias)}


def _accepted(accept: str) -> list[tuple[str, float, int]]:
    """The media ranges of an Accept header: (range, quality, position), lower case."""
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality, position))
    return ranges


def _specificity(media_range: str, media_type: str) -> int:
    """How closely `media_range` (`*/*`, `text/*`, `text/csv`) matches `media_type`: 2 exactly, 1 by
    type, 0 as `*/*`, -1 not at all."""
    if media_range == media_type:
        return 2
    kind, _, subtype = media_range.partition("/")
    if subtype == "*" and kind == "*":
        return 0
    if subtype == "*" and media_type.startswith(f"{kind}/"):
        return 1
    return -1


def choose_format(formats: dict[str, Format], name: str | None, accept: str | None) -> tuple[str, Format]:
    """The format a request asks for: by `name` first, else the best Accept match, else the default.

    As HTTP has it (RFC 9110, 12.5.1), a format's quality is that of the most specific range
    matching it (`text/csv;q=0, */*` refuses CSV and takes anything else); the format of the
    highest quality wins, then the one matched more specifically, then the one listed first in
    Accept, then the first of `formats`. Raises LookupError naming the choices when none is
    acceptable."""
    choices = ", ".join(formats)
    if name is not None:
        key = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in formats:
            raise LookupError(f"format: {name!r} is not one of {choices}")
        return key, formats[key]
    default = next(iter(formats))
    ranges = _accepted(accept or "")
    if not ranges:
        return default, formats[default]
    ranked: list[tuple[float, int, int, int, str]] = []
    for index, candidate in enumerate(formats):
        matches = [
            (specificity, quality, position)
            for media_type in _media_types(formats, candidate)
            for media_range, quality, position in ranges
            if (specificity := _specificity(media_range, media_type)) >= 0
        ]
        if not matches:
            continue
        specificity, quality, position = max(matches, key=lambda m: (m[0], m[1]))
        if quality > 0:
            ranked.append((-quality, -specificity, position, index, candidate))
    if not ranked:
        raise LookupError(f"no format matches Accept: {accept!r}; formats: {choices} (or use format=)")
    chosen = min(ranked)[-1]
    return chosen, formats[chosen]
