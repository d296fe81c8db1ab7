"""A small typed builder for the Grafana dashboard JSON model (schemaVersion 39).

Only what CCT's dashboards use is modelled; everything is a frozen dataclass so a dashboard
definition is plain data that tests can walk (every query, variable, datasource and link) as
well as render. `Dashboard.to_json()` is the only place that knows Grafana's field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

SCHEMA_VERSION = 39
GRID_WIDTH = 24


@dataclass(frozen=True)
class Datasource:
    type: str
    uid: str
    name: str

    def ref(self) -> dict[str, str]:
        return {"type": self.type, "uid": self.uid}


# Fixed uids: the provisioning files create datasources with exactly these, so the dashboards
# work on any Grafana the Pulumi component deploys.
VICTORIAMETRICS = Datasource("prometheus", "cct-victoriametrics", "CCT VictoriaMetrics")
POSTGRES = Datasource("grafana-postgresql-datasource", "cct-postgres", "CCT PostgreSQL")

# Units. Rates of spend read "$/h"; amounts read "$".
USD = "currencyUSD"
USD_PER_HOUR = "suffix: $/h"
PERCENT = "percentunit"
SECONDS = "s"
COUNT = "short"
PER_SECOND = "ops"


@dataclass(frozen=True)
class PromQuery:
    """PromQL/MetricsQL against VictoriaMetrics. `instant` for stats and tables."""

    expr: str
    legend: str = ""
    instant: bool = False
    # "table" for instant queries shown as rows with one column per label.
    format: Literal["time_series", "table"] = "time_series"

    datasource: ClassVar[Datasource] = VICTORIAMETRICS

    def to_json(self, ref_id: str) -> dict[str, Any]:
        return {
            "refId": ref_id,
            "datasource": self.datasource.ref(),
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "instant": self.instant,
            "range": not self.instant,
            "format": self.format,
            "editorMode": "code",
        }


@dataclass(frozen=True)
class SqlQuery:
    """SQL against the `reporting` views. `time_series` results need a `time` column."""

    sql: str
    format: Literal["table", "time_series"] = "table"

    datasource: ClassVar[Datasource] = POSTGRES

    def to_json(self, ref_id: str) -> dict[str, Any]:
        return {
            "refId": ref_id,
            "datasource": self.datasource.ref(),
            "rawSql": self.sql,
            "format": self.format,
            "rawQuery": True,
            "editorMode": "code",
        }


Query = PromQuery | SqlQuery


@dataclass(frozen=True)
class Link:
    """A drill-down link to another CCT dashboard. `params` are extra URL parameters (e.g.
    `var-billing_account=${__field.labels.billing_account_id}`); the current time range and
    the shared variables are always carried over."""

    title: str
    dashboard_uid: str
    params: tuple[str, ...] = ()

    def url(self, carried_vars: tuple[str, ...]) -> str:
        # A variable the link sets itself replaces the carried selection instead of adding
        # a second value to it.
        overridden = {p.split("=", 1)[0].removeprefix("var-") for p in self.params}
        carried = [f"${{{v}:queryparam}}" for v in carried_vars if v not in overridden]
        return f"/d/{self.dashboard_uid}?" + "&".join(
            ["${__url_time_range}", *carried, *self.params]
        )


@dataclass(frozen=True)
class Panel:
    title: str
    kind: Literal["timeseries", "stat", "table", "barchart", "bargauge", "piechart"]
    queries: tuple[Query, ...]
    unit: str = COUNT
    width: int = 12
    height: int = 8
    description: str = ""
    links: tuple[Link, ...] = ()
    # Units of individual table columns (column name, unit).
    column_units: tuple[tuple[str, str], ...] = ()
    stacked: bool = False
    bars: bool = False

    def to_json(
        self, panel_id: int, x: int, y: int, carried_vars: tuple[str, ...]
    ) -> dict[str, Any]:
        defaults: dict[str, Any] = {"unit": self.unit}
        if self.links:
            defaults["links"] = [
                {"title": link.title, "url": link.url(carried_vars)} for link in self.links
            ]
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "bars" if self.bars else "line",
                "lineWidth": 1,
                "fillOpacity": 20 if self.stacked else 0,
                "stacking": {"mode": "normal" if self.stacked else "none", "group": "A"},
                "spanNulls": True,
            }
        overrides = [
            {
                "matcher": {"id": "byName", "options": column},
                "properties": [{"id": "unit", "value": unit}],
            }
            for column, unit in self.column_units
        ]
        datasources = {q.datasource.uid: q.datasource for q in self.queries}
        if len(datasources) != 1:
            raise ValueError(f"panel {self.title!r}: all queries must use one datasource")
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "gridPos": {"x": x, "y": y, "w": self.width, "h": self.height},
            "datasource": next(iter(datasources.values())).ref(),
            "targets": [q.to_json(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": _options(self.kind),
        }


def _options(kind: str) -> dict[str, Any]:
    if kind == "timeseries":
        return {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    if kind == "bargauge":
        return {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
    if kind == "piechart":
        return {
            "pieType": "donut",
            "legend": {"displayMode": "table", "placement": "right", "values": ["value"]},
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        }
    return {"orientation": "auto", "xTickLabelRotation": 0, "showValue": "auto"}


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class QueryVariable:
    """A multi-select variable filled from VictoriaMetrics label values. All = `.*` so series
    and rows without the label (untagged resources) are included, not silently dropped."""

    name: str
    label: str
    query: str  # label_values(...)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "query",
            "name": self.name,
            "label": self.label,
            "datasource": VICTORIAMETRICS.ref(),
            "query": self.query,
            "definition": self.query,
            "refresh": 2,  # on time range change
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }


@dataclass(frozen=True)
class CustomVariable:
    """A single-select variable with fixed choices; the first is the default."""

    name: str
    label: str
    choices: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        default = self.choices[0]
        return {
            "type": "custom",
            "name": self.name,
            "label": self.label,
            "query": ",".join(self.choices),
            "includeAll": False,
            "multi": False,
            "current": {"selected": True, "text": default, "value": default},
            "options": [{"selected": c == default, "text": c, "value": c} for c in self.choices],
        }


Variable = QueryVariable | CustomVariable


@dataclass(frozen=True)
class Annotation:
    """Events drawn on every time-series panel, read from PostgreSQL (`time`, `timeend`,
    `text`, `tags` columns)."""

    name: str
    query: SqlQuery
    color: str = "red"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datasource": self.query.datasource.ref(),
            "enable": True,
            "iconColor": self.color,
            "target": self.query.to_json("Anno"),
        }


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    time_from: str = "now-24h"
    refresh: str = "1m"
    tags: tuple[str, ...] = ("cct",)
    # Variables carried into every drill-down link (the shared filter set).
    carried_vars: tuple[str, ...] = ()

    def panels(self) -> list[Panel]:
        return [p for row in self.rows for p in row.panels]

    def to_json(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        next_id, y = 1, 0
        for row in self.rows:
            panels.append(
                {
                    "id": next_id,
                    "type": "row",
                    "title": row.title,
                    "collapsed": False,
                    "gridPos": {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1},
                    "panels": [],
                }
            )
            next_id, y = next_id + 1, y + 1
            x, line_height = 0, 0
            for panel in row.panels:
                if x + panel.width > GRID_WIDTH:
                    x, y, line_height = 0, y + line_height, 0
                panels.append(panel.to_json(next_id, x, y, self.carried_vars))
                next_id += 1
                x += panel.width
                line_height = max(line_height, panel.height)
            y += line_height
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": "utc",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": False,
            "graphTooltip": 1,  # shared crosshair
            "refresh": self.refresh,
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": [v.to_json() for v in self.variables]},
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    },
                    *(a.to_json() for a in self.annotations),
                ]
            },
            "links": [
                {
                    "title": "CCT dashboards",
                    "type": "dashboards",
                    "tags": ["cct"],
                    "asDropdown": False,
                    "includeVars": True,
                    "keepTime": True,
                }
            ],
            "panels": panels,
        }
