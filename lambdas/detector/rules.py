"""Budget thresholds as a vmalert rules file.

Budgets are static ("team payments may spend at most 120 $/h"), so vmalert evaluates them
straight from the rollup series and posts `CostAnomaly` alerts with `rule="budget"` and
`source="vmalert"` in the same shape as the detector's. The Pulumi component mounts the
output of `render_vmalert_rules(settings)` as vmalert's rules file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lambdas import contract
from lambdas.common.settings import SettingsError, env_float
from lambdas.detector.config import LEVEL_LABELS, SEVERITIES

ROLLUP_METRIC = "cct_cost_rate_rollup_usd_per_hour"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BUDGET_LEVELS = tuple(lv for lv in LEVEL_LABELS if lv != "resource")  # rollups have no resource
DURATION_RE = re.compile(r"^\d+[smh]$")


@dataclass(frozen=True)
class Budget:
    """At most `usd_per_hour` for the group of `level` selected by `match`."""

    name: str
    level: str
    match: Mapping[str, str]
    usd_per_hour: float
    severity: str = "warning"
    for_: str = "0s"  # how long the budget must be exceeded before alerting

    def __post_init__(self) -> None:
        where = f"budget {self.name!r}"
        if not NAME_RE.match(self.name):
            raise SettingsError(f"{where}: name must match {NAME_RE.pattern}")
        if self.level not in BUDGET_LEVELS:
            raise SettingsError(f"{where}: level must be one of {', '.join(BUDGET_LEVELS)}")
        extra = set(self.match) - set(LEVEL_LABELS[self.level])
        if extra or not self.match:
            raise SettingsError(
                f"{where}: match needs labels of level {self.level} "
                f"({', '.join(LEVEL_LABELS[self.level])}); got {sorted(self.match)}"
            )
        if not self.usd_per_hour > 0:
            raise SettingsError(f"{where}: usd_per_hour must be > 0")
        if self.severity not in SEVERITIES:
            raise SettingsError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        if not DURATION_RE.match(self.for_):
            raise SettingsError(f"{where}: for must look like 0s, 5m or 1h")


@dataclass(frozen=True)
class RulesSettings:
    budgets: tuple[Budget, ...] = ()
    metric: str = ROLLUP_METRIC
    basis: str = "list"
    # vmalert evaluates budgets this often; 3 s matches the detector's interval.
    interval_s: float = 3.0

    @classmethod
    def from_env(cls) -> RulesSettings:
        """CCT_DETECTOR_BUDGETS_FILE: a YAML list of budgets (name, level, match,
        usd_per_hour, severity, for); CCT_DETECTOR_BASIS; CCT_DETECTOR_INTERVAL_S."""
        path = os.environ.get("CCT_DETECTOR_BUDGETS_FILE", "")
        budgets = load_budgets(Path(path)) if path else ()
        return cls(
            budgets=budgets,
            basis=os.environ.get("CCT_DETECTOR_BASIS", "list") or "list",
            interval_s=env_float("CCT_DETECTOR_INTERVAL_S", 3.0),
        )


def parse_budgets(doc: Any, where: str = "budgets") -> tuple[Budget, ...]:
    if not isinstance(doc, list):
        raise SettingsError(f"{where}: expected a list of budgets")
    out = []
    for n, item in enumerate(doc):
        if not isinstance(item, dict):
            raise SettingsError(f"{where}[{n}]: expected a mapping")
        known = {"name", "level", "match", "usd_per_hour", "severity", "for"}
        unknown = set(item) - known
        if unknown:
            raise SettingsError(f"{where}[{n}]: unknown key(s) {sorted(unknown)}")
        try:
            out.append(
                Budget(
                    name=str(item["name"]),
                    level=str(item["level"]),
                    match={str(k): str(v) for k, v in dict(item["match"]).items()},
                    usd_per_hour=float(item["usd_per_hour"]),
                    severity=str(item.get("severity", "warning")),
                    for_=str(item.get("for", "0s")),
                )
            )
        except KeyError as exc:
            raise SettingsError(f"{where}[{n}]: missing key {exc.args[0]!r}") from None
        except SettingsError:
            raise
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{where}[{n}]: {exc}") from None
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise SettingsError(f"{where}: budget names must be unique")
    return tuple(out)


def load_budgets(path: Path) -> tuple[Budget, ...]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"CCT_DETECTOR_BUDGETS_FILE={path}: {exc}") from None
    return parse_budgets(doc or [], where=str(path))


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(metric: str, matchers: Mapping[str, str], extra: str = "") -> str:
    """`metric{name="value",...}` with the values escaped; `extra` is raw PromQL matchers."""
    inner = [f'{k}="{_q(v)}"' for k, v in sorted(matchers.items())] + ([extra] if extra else [])
    return f"{metric}{{{','.join(inner)}}}"


def _num(x: float) -> str:
    return repr(float(x))


def budget_rule(b: Budget, settings: RulesSettings) -> dict[str, Any]:
    by = ", ".join(LEVEL_LABELS[b.level])
    total = f"sum by ({by}) ({selector(settings.metric, {**b.match, 'basis': settings.basis})})"
    limit = _num(b.usd_per_hour)
    labels = {
        "severity": b.severity,
        "level": b.level,
        "rule": contract.RULE_BUDGET,
        "source": contract.SOURCE_BUDGET,
        contract.BUDGET_LABEL: b.name,
    }

    # Backquoted PromQL inside Go templates needs no escaping of its double quotes.
    def q(expr: str) -> str:
        return "{{ with query `" + expr + '` }}{{ . | first | value | printf "%.4f" }}{{ end }}'

    return {
        "alert": contract.ALERTNAME,
        "expr": f"{total} > {limit}",
        "for": b.for_,
        "labels": labels,
        "annotations": {
            "expected_usd_per_hour": f"{b.usd_per_hour:.4f}",
            "observed_usd_per_hour": '{{ $value | printf "%.4f" }}',
            "delta_usd_per_hour": q(f"{total} - {limit}"),
            "deviation": q(f"({total} - {limit}) / {limit}"),
            "baseline": "budget",
            "contributors": "[]",
            "ancestors": "[]",
            "change_events": "[]",
            "summary": (
                f'{b.level} run-rate {{{{ $value | printf "%.2f" }}}} $/h is over the budget '
                f"{b.name} of {b.usd_per_hour:.2f} $/h"
            ),
        },
    }


def render_vmalert_rules(settings: RulesSettings) -> str:
    """vmalert rules YAML with one alerting rule per budget (an empty group when none)."""
    interval = f"{max(1, round(settings.interval_s))}s"
    group: dict[str, Any] = {
        "name": "cct-budgets",
        "interval": interval,
        "rules": [budget_rule(b, settings) for b in settings.budgets],
    }
    return yaml.safe_dump({"groups": [group]}, sort_keys=False, width=1000)
