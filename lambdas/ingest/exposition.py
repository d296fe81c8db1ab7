"""Prometheus text lines for VictoriaMetrics' /api/v1/import/prometheus, built fast.

The collector and the billing loader write hundreds of thousands of samples whose label sets
repeat (one resource, one billing label set), so labels are rendered once per set and each
sample is one f-string. `lambdas.common.vm.format_prometheus` is the general form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_labels(labels: Mapping[str, str]) -> str:
    """Label text: sorted, escaped, without braces."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def line(metric: str, labels: str, basis: str | None, value: float, ts_ms: int) -> str:
    """One exposition line with an explicit millisecond timestamp; `basis` is appended as a
    label when given."""
    if not math.isfinite(value):
        raise ValueError(f"{metric}: refusing to write non-finite value {value}")
    extra = f',basis="{basis}"' if basis else ""
    return f"{metric}{{{labels}{extra}}} {value!r} {ts_ms}"


def body(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""
