"""Query parameters a route does not take are a 400 that names them, never silently ignored.

A filter typed wrong (`severity=WARN` for `severity_min`, `sort=` for `order`, `by=` for
`group_by`) would otherwise answer as if it were not there: every event, the default grouping.
The parameters a route takes are those its function and its dependencies declare, and those a
dependency reads itself, by name or prefix (`node_id`, `attr.<key>`), marked with `reads_parameters`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

F = TypeVar("F", bound=Callable[..., Any])

_PREFIXES: dict[Callable[..., Any], tuple[str, ...]] = {}
_ALIASES: dict[Callable[..., Any], tuple[str, ...]] = {}

LIKELY = {
    "sort": "order",
    "by": "group_by",
    "group": "group_by",
    "severity": "severity_min",
    "level": "severity_min",
    "min_severity": "severity_min",
    "max_severity": "severity_max",
    "from": "start",
    "to": "end",
    "until": "end",
    "search": "q",
    "query": "q",
    "text": "q",
    "page": "cursor",
    "offset": "cursor",
    "size": "limit",
    "n": "limit",
}
"""Names people try for a parameter, and the parameter they mean (suggested when the route takes it)."""


def reads_parameters(*names: str, prefixes: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Mark a dependency that reads query parameters from the request itself: by name (`names`,
    e.g. aliases) or by prefix (`attr.`), so that the check takes them as known."""

    def mark(function: F) -> F:
        _ALIASES[function] = names
        _PREFIXES[function] = prefixes
        return function

    return mark


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for child in dependant.dependencies:
        yield from _dependants(child)


_TAKEN: dict[int, tuple[APIRoute, frozenset[str], tuple[str, ...]]] = {}


def _taken(route: APIRoute) -> tuple[frozenset[str], tuple[str, ...]]:
    """The names and prefixes of the query parameters `route` takes (worked out once per route)."""
    known = _TAKEN.get(id(route))
    if known is not None and known[0] is route:
        return known[1], known[2]
    names: set[str] = set()
    prefixes: list[str] = []
    for dependant in _dependants(route.dependant):
        names.update(param.alias for param in dependant.query_params)
        if dependant.call is not None:
            names.update(_ALIASES.get(dependant.call, ()))
            prefixes += _PREFIXES.get(dependant.call, ())
    _TAKEN[id(route)] = (route, frozenset(names), tuple(prefixes))
    return frozenset(names), tuple(prefixes)


def _hint(name: str, names: frozenset[str], prefixes: tuple[str, ...]) -> str:
    likely = LIKELY.get(name.lower())
    if likely in names:
        return f" (did you mean {likely}?)"
    if likely is None:
        close = difflib.get_close_matches(name.lower(), sorted(names), n=1, cutoff=0.7)
        if close:
            return f" (did you mean {close[0]}?)"
    if "." in name and prefixes:
        return f" (attribute filters are {' or '.join(p + '<key>' for p in prefixes)})"
    return ""


def refuse_unknown_parameters(request: Request) -> None:
    """A dependency of labtel's own routes: a query parameter the route does not take is a 400
    naming it, with the parameter it most likely stands for, and what the route takes."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    names, prefixes = _taken(route)
    for name in dict.fromkeys(request.query_params.keys()):
        if name in names or (prefixes and name.startswith(prefixes)):
            continue
        taken = ", ".join([*sorted(names), *(p + "<key>" for p in prefixes)]) or "no query parameters"
        raise HTTPException(
            400, f"{name}: not a parameter of {route.path}{_hint(name, names, prefixes)}; it takes {taken}"
        )
