"""The parameters of `GET /series`, checked: a ParamError names the parameter that is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from labtel.collector.durations import parse_duration
from labtel.collector.storage.schema import METRIC_TYPES
from labtel.query_api.params import ParamError, ordered_range, parse_time_ns

NUMBER_TYPES = ("gauge", "sum")
NUMBER_AGGREGATIONS = ("avg", "sum", "min", "max", "count", "last", "rate")
DISTRIBUTION_AGGREGATIONS = ("avg", "sum", "count")
MAX_BUCKETS = 11_000
"""Points per series a query may ask for ((end - start) / step)."""
DEFAULT_RANGE_NS = 3600 * 10**9
"""A query without `start` covers the hour before `end`."""
LABEL_PREFIX = "label."
_PARAMETERS = {"name", "start", "end", "step", "agg", "quantile", "service", "type"}


@dataclass
class SeriesQuery:
    """What `GET /series` asks for, checked."""

    name: str
    start_ns: int
    end_ns: int
    step_s: int = 60
    agg: str | None = None
    quantile: float | None = None
    service: str | None = None
    type: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def parse_series_query(params: Sequence[tuple[str, str]], now_ns: int) -> SeriesQuery:
    """Check the query parameters of `GET /series`; a ParamError names the bad one."""
    values: dict[str, str] = {}
    labels: dict[str, str] = {}
    for key, value in params:
        if key.startswith(LABEL_PREFIX) and len(key) > len(LABEL_PREFIX):
            if key[len(LABEL_PREFIX) :] in labels:
                raise ParamError(f"{key}: given more than once")
            labels[key[len(LABEL_PREFIX) :]] = value
        elif key not in _PARAMETERS:
            raise ParamError(f"{key}: unknown parameter; labels are filtered with label.<key>=<value>")
        elif key in values:
            raise ParamError(f"{key}: given more than once")
        else:
            values[key] = value
    name = values.get("name", "")
    if not name:
        raise ParamError("name: required, the metric's name (see GET /series/names)")
    end_ns = parse_time_ns(values["end"], "end") if values.get("end") else now_ns
    start_ns = parse_time_ns(values["start"], "start") if values.get("start") else end_ns - DEFAULT_RANGE_NS
    ordered_range(start_ns, end_ns)
    if start_ns == end_ns:
        raise ParamError("start: must be before end (a range of no time holds no points)")
    step_s = _parse_step(values.get("step", "1m"))
    buckets = (end_ns - start_ns) // (step_s * 10**9)
    if buckets > MAX_BUCKETS:
        raise ParamError(
            f"step: {values.get('step', '1m')} makes {buckets} points per series over this range "
            f"(at most {MAX_BUCKETS}); use a larger step or a shorter range"
        )
    agg = values.get("agg") or None
    if agg is not None and agg not in NUMBER_AGGREGATIONS:
        raise ParamError(f"agg: {agg!r} is not one of {', '.join(NUMBER_AGGREGATIONS)}")
    kind = values.get("type") or None
    if kind is not None and kind not in METRIC_TYPES:
        raise ParamError(f"type: {kind!r} is not one of {', '.join(METRIC_TYPES)}")
    return SeriesQuery(
        name=name,
        start_ns=start_ns,
        end_ns=end_ns,
        step_s=step_s,
        agg=agg,
        quantile=_parse_quantile(values["quantile"]) if values.get("quantile") else None,
        service=values.get("service") or None,
        type=kind,
        labels=labels,
    )


def _parse_step(text: str) -> int:
    try:
        step = parse_duration(text).total_seconds()
    except ValueError as error:
        raise ParamError(f"step: {error}") from None
    if step < 1 or step != int(step):
        raise ParamError(f"step: {text!r} must be a whole number of seconds, at least 1s (e.g. 30s, 1m, 1h)")
    return int(step)


def _parse_quantile(text: str) -> float:
    try:
        quantile = float(text)
    except ValueError:
        raise ParamError(f"quantile: {text!r} is not a number between 0 and 1") from None
    if not 0 <= quantile <= 1:
        raise ParamError(f"quantile: {text} is outside 0..1")
    return quantile


def check_aggregation(query: SeriesQuery, kind: str) -> str:
    """The aggregation a query resolves to for a metric of `kind` (avg unless asked)."""
    if query.quantile is not None:
        if kind != "histogram":
            raise ParamError(f"quantile: computed for histograms only; {query.name!r} is a {kind}")
        if query.agg is not None:
            raise ParamError("quantile: give either agg or quantile, not both")
        return "quantile"
    agg = query.agg or "avg"
    if kind in NUMBER_TYPES:
        if agg == "rate" and kind != "sum":
            raise ParamError(f"agg: rate applies to sums (counters); {query.name!r} is a gauge")
        return agg
    if agg not in DISTRIBUTION_AGGREGATIONS:
        raise ParamError(f"agg: a {kind} takes {', '.join(DISTRIBUTION_AGGREGATIONS)} (over its Count and Sum)")
    return agg
