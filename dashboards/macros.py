"""Grafana's query expansion for the ClickHouse datasource, so dashboard SQL can run without Grafana.

The expansions follow grafana/clickhouse-datasource v4.20 (`pkg/macros/macros.go` for the time
macros, the frontend's `$__conditionalAll` and Grafana's template-variable formats):

| in the SQL | becomes |
| --- | --- |
| `$__timeFilter(c)` | `c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)` |
| `$__timeFilter_ms(c)` | `c >= fromUnixTimestamp64Milli(<from ms>) AND c <= fromUnixTimestamp64Milli(<to ms>)` |
| `$__dateFilter(c)` | `c >= toDate('<from date>') AND c <= toDate('<to date>')` |
| `$__fromTime`, `$__toTime` | `toDateTime(<s>)` |
| `$__fromTime_ms`, `$__toTime_ms` | `fromUnixTimestamp64Milli(<ms>)` |
| `$__timeInterval(c)` | `toStartOfInterval(toDateTime(c), INTERVAL <interval s, at least 1> second)` |
| `$__timeInterval_ms(c)` | `toStartOfInterval(toDateTime64(c, 3), INTERVAL <interval ms> millisecond)` |
| `$__interval_s` | the interval in whole seconds, at least 1 |
| `$__conditionalAll(cond, $v)` | `cond`, or `1=1` when variable v has All selected or is empty |
| `${v:singlequote}` | the values quoted (`'` as `\\'`, nothing else escaped) and joined: `'a','b'` |
| `${v:percentencode}` | the value percent-encoded (all but `A-Za-z0-9-_.~`): no quote or backslash is left |
| `${v}`, `$v` | the value; several values quoted and joined, unescaped: `'a','b'` (the datasource's format) |

A free-text value therefore goes into SQL as `decodeURLComponent('${v:percentencode}')`: Grafana has
no format that escapes both `'` and `\\` for ClickHouse (`singlequote` and `sqlstring` leave `\\`);
so does a list of values (hex, `{a,b}` once decoded). `$__conditionalAll` puts its condition back
with JavaScript's `String.replace`, whose replacement patterns (`$$` is `$`) apply to the
condition; so they do here.

`provisioning_value` is Grafana's substitution in provisioning files (`pkg/setting/expanders.go` and
`os.ExpandEnv`): `$VAR`, `${VAR}` and `$__env{VAR}` only. `${VAR:-default}` is not understood: the
whole `VAR:-default` is taken as a variable's name, so it becomes empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

ALL = "$__all"
"""A variable's value when All is selected."""

Variables = dict[str, str | list[str]]


def _arguments(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose `(` is at `start`, and where it ends."""
    depth, current, parts, i = 0, "", [], start
    while i < len(text):
        char = text[i]
        if char == "(":
            depth += 1
            if depth > 1:
                current += char
        elif char == ")":
            depth -= 1
            if depth == 0:
                parts.append(current.strip())
                return parts, i + 1
            current += char
        elif char == "," and depth == 1:
            parts.append(current.strip())
            current = ""
        elif char == "'":
            end = text.index("'", i + 1)
            current += text[i : end + 1]
            i = end
        else:
            current += char
        i += 1
    raise ValueError(f"unbalanced parentheses after {text[start - 20 : start]!r}")


def _calls(sql: str, name: str, render: object) -> str:
    """Replace each `name(args)` in `sql` by render(args)."""
    pattern = re.compile(re.escape(name) + r"\s*\(")
    while True:
        match = pattern.search(sql)
        if match is None:
            return sql
        arguments, end = _arguments(sql, match.end() - 1)
        sql = sql[: match.start()] + render(arguments) + sql[end:]  # type: ignore[operator]


def _is_all(value: str | list[str] | None) -> bool:
    return value is None or value == ALL or (isinstance(value, list) and ALL in value)


def _conditional_all_skips(value: str | list[str] | None) -> bool:
    """Whether `$__conditionalAll` drops its condition: the frontend compares the variable's current
    value, as a string (a list joined by `,`), with `$__all` and with the empty string."""
    text = ",".join(value) if isinstance(value, list) else value
    return text is None or text in (ALL, "")


def _js_replacement(text: str) -> str:
    r"""`text` as JavaScript's String.replace inserts a replacement string: `$$` is one `$`. The
    patterns that insert parts of the match (`$&`, `$\``, `$'`, `$1`, `$<name>`) are refused: a
    dashboard condition holding one would be corrupted by the real frontend."""
    special = re.search(r"\$[&`'<\d]", text.replace("$$", ""))
    if special:
        raise ValueError(f"{special.group(0)!r} in a $__conditionalAll condition is a replacement pattern")
    return text.replace("$$", "$")


def _values(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def expand(sql: str, from_ms: int, to_ms: int, interval_ms: int, variables: Variables) -> str:
    """The SQL Grafana would send for a panel over [from, to] with these variable values."""

    def conditional_all(arguments: list[str]) -> str:
        condition, variable = arguments
        skips = _conditional_all_skips(variables.get(variable.lstrip("$").strip("{}")))
        return "1=1" if skips else _js_replacement(condition)

    sql = _calls(sql, "$__conditionalAll", conditional_all)

    def formatted(match: re.Match[str]) -> str:
        name, form = match.group(1) or match.group(3), match.group(2)
        if name.startswith("__") or name not in variables:
            return match.group(0)  # a macro, or a link variable such as ${__value.raw}
        value = variables[name]
        values = [] if _is_all(value) else _values(value)
        if form == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        if form == "percentencode":
            return quote("{" + ",".join(values) + "}" if isinstance(value, list) else value, safe="")
        if form is None and isinstance(value, list):
            return "'" + "','".join(values) + "'"
        if form is not None:
            raise ValueError(f"the format {form!r} of ${{{name}}} is not simulated here")
        return ",".join(values)

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", formatted, sql)
    from_s, to_s = from_ms // 1000, to_ms // 1000
    interval_s = max(interval_ms // 1000, 1)

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")

    sql = _calls(
        sql,
        "$__timeFilter_ms",
        lambda a: f"{a[0]} >= fromUnixTimestamp64Milli({from_ms}) AND {a[0]} <= fromUnixTimestamp64Milli({to_ms})",
    )
    sql = _calls(sql, "$__timeFilter", lambda a: f"{a[0]} >= toDateTime({from_s}) AND {a[0]} <= toDateTime({to_s})")
    sql = _calls(
        sql, "$__dateFilter", lambda a: f"{a[0]} >= toDate('{day(from_ms)}') AND {a[0]} <= toDate('{day(to_ms)}')"
    )
    sql = _calls(
        sql,
        "$__timeInterval_ms",
        lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {max(interval_ms, 1)} millisecond)",
    )
    sql = _calls(
        sql, "$__timeInterval", lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {interval_s} second)"
    )
    for macro, value in (
        ("$__fromTime_ms", f"fromUnixTimestamp64Milli({from_ms})"),
        ("$__toTime_ms", f"fromUnixTimestamp64Milli({to_ms})"),
        ("$__fromTime", f"toDateTime({from_s})"),
        ("$__toTime", f"toDateTime({to_s})"),
        ("$__interval_s", str(interval_s)),
    ):
        sql = sql.replace(macro, value)
    return sql


_PROVISIONING = re.compile(r"\$(|__\w+)\{([^}]+)\}")
_SPECIAL = "*#$@!?-0123456789"


def _go_expand_env(text: str, env: Mapping[str, str]) -> str:
    """Go's `os.ExpandEnv`: `${X}` and `$X` (a name of `[A-Za-z0-9_]`, or one special character),
    an unset variable as nothing; a `$` before anything else stays."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
            continue
        rest = text[i + 1 :]
        if rest[0] == "{":
            end = rest.find("}")
            if end == -1:
                i += 2  # bad syntax: "${" is eaten
                continue
            name, width = rest[1:end], end + 1
        elif rest[0] in _SPECIAL:
            name, width = rest[0], 1
        else:
            match = re.match(r"[A-Za-z0-9_]*", rest)
            name = match.group(0) if match else ""
            width = len(name)
        out.append(env.get(name, "") if name else ("" if width else "$"))
        i += 1 + width
    return "".join(out)


def provisioning_value(text: str, environ: Mapping[str, str] | None = None) -> str:
    """A provisioning file's value as Grafana reads it (`interpolateValue`): split at `$$` (a literal
    `$`), each part's `${X}` and `$__env{X}` replaced by the expanders, then `os.ExpandEnv`."""
    env = os.environ if environ is None else environ

    def expanders(part: str) -> str:
        def one(match: re.Match[str]) -> str:
            kind, body = match.group(1), match.group(2)
            return env.get(body, "") if kind in ("", "__env") else match.group(0)

        return _PROVISIONING.sub(one, part)

    return "$".join(_go_expand_env(expanders(part), env) for part in text.split("$$"))
