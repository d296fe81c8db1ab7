"""Grafana's query interpolation, for the variables and macros CCT's dashboards use, so the
tests and benchmarks run each panel's query exactly as Grafana would send it.

Unknown `$names` are an error: a query that uses a variable its dashboard does not define
fails here instead of reaching the database as literal text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ALL = "$__all"
# `${var:regex}` (lodash escapeRegExp-like, one backslash) ...
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
# ... and the Prometheus datasource's own escaping inside a PromQL string literal, where the
# backslash itself must be doubled.
_PROM_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UndefinedVariableError(KeyError):
    """A query uses a variable the dashboard does not define."""


@dataclass(frozen=True)
class Context:
    """Selected values per variable (`[ALL]` for All), the time range and the interval."""

    values: Mapping[str, Sequence[str]]
    all_values: Mapping[str, str]  # variable -> its custom All value
    start: datetime
    end: datetime
    interval: str = "1m"
    rate_interval: str = "1m"


def duration_s(text: str) -> int:
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a Grafana duration: {text!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _prom_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return _PROM_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _format(name: str, fmt: str | None, ctx: Context, prometheus: bool) -> str:
    if name not in ctx.values:
        raise UndefinedVariableError(name)
    values = list(ctx.values[name])
    if values == [ALL]:
        # Grafana inserts a custom All value unformatted (except for text/queryparam).
        if fmt == "queryparam":
            return f"var-{name}={ALL}"
        return ctx.all_values[name]
    if fmt == "regex" or (fmt is None and prometheus):
        escape = _prom_escape if fmt is None else _regex_escape
        escaped = [escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt is None:
        # Grafana quotes plain multi-value variables in SQL; CCT's SQL always names a format.
        raise ValueError(f"${name} in SQL: use an explicit format such as ${{{name}:regex}}")
    if fmt == "csv":
        return ",".join(values)
    if fmt == "queryparam":
        return "&".join(f"var-{name}={v}" for v in values)
    raise ValueError(f"${{{name}:{fmt}}}: format not emulated")


def _builtin(name: str, ctx: Context) -> str | None:
    return {
        "__interval": ctx.interval,
        "__rate_interval": ctx.rate_interval,
        "__range": f"{int((ctx.end - ctx.start).total_seconds())}s",
    }.get(name)


def _replace_vars(text: str, ctx: Context, prometheus: bool) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        builtin = _builtin(name, ctx)
        if builtin is not None:
            return builtin
        return _format(name, m.group(2), ctx, prometheus)

    return _VAR.sub(sub, text)


def promql(expr: str, ctx: Context) -> str:
    return _replace_vars(expr, ctx, prometheus=True)


def _macro_args(text: str, start: int) -> tuple[list[str], int]:
    """Split the parenthesised arguments that start at text[start] == '('."""
    depth, args, current = 0, [], ""
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return [a for a in args if a], i + 1
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise ValueError(f"unbalanced macro arguments in {text[start : start + 40]!r}")


def _sql_macros(sql: str, ctx: Context) -> str:
    """$__timeFilter, $__timeFrom, $__timeTo and $__timeGroupAlias as Grafana's PostgreSQL
    datasource expands them."""
    out, i = "", 0
    pattern = re.compile(r"\$__(timeFilter|timeFrom|timeTo|timeGroupAlias|timeGroup)\(")
    while True:
        m = pattern.search(sql, i)
        if not m:
            return out + sql[i:]
        out += sql[i : m.start()]
        args, i = _macro_args(sql, m.end() - 1)
        macro = m.group(1)
        if macro == "timeFilter":
            (column,) = args
            out += f"{column} BETWEEN '{_iso(ctx.start)}' AND '{_iso(ctx.end)}'"
        elif macro == "timeFrom":
            out += f"'{_iso(ctx.start)}'"
        elif macro == "timeTo":
            out += f"'{_iso(ctx.end)}'"
        else:
            column, interval = args[0], args[1].strip("'")
            step = duration_s(_replace_vars(interval, ctx, prometheus=False))
            group = f"floor(extract(epoch from {column})/{step})*{step}"
            out += f'{group} AS "time"' if macro == "timeGroupAlias" else group


def sql(text: str, ctx: Context) -> str:
    return _replace_vars(_sql_macros(text, ctx), ctx, prometheus=False)
