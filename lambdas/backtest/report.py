"""A self-contained HTML report of a backtest: inline SVG charts and tables, no scripts, no
external resources, so it can be mailed or attached to a ticket as one file."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from lambdas.backtest.evaluate import KindScore
from lambdas.backtest.focus import CostMatrix
from lambdas.backtest.run import Incident, Series
from lambdas.backtest.sample import Label

SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
CHART_INCIDENTS = 15
W, H, PAD = 900, 220, 40

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1000px}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{color:#fff;padding:0 .4em;border-radius:3px}
svg{background:#fafafa;border:1px solid #eee}
.small{color:#666;font-size:.85em}
"""


def format_time(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _e(text: object) -> str:
    return html.escape(str(text))


def _line_chart(
    times: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    marks: Sequence[tuple[float, float | None, str]],
    title: str,
    labels: Sequence[tuple[float, float]] = (),
) -> str:
    """Values over time; `marks` are (start, end, colour) spans; `labels` are true anomaly
    spans, drawn as grey bands behind."""
    if times.size == 0:
        return ""
    t0, t1 = float(times[0]), float(times[-1])
    vmax = float(np.nanmax(values)) if np.isfinite(np.nanmax(values)) else 1.0
    vmax = vmax * 1.05 or 1.0
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return PAD + (t - t0) / span * (W - 2 * PAD)

    def y(v: float) -> float:
        return H - PAD + -(v / vmax) * (H - 2 * PAD)

    step = max(1, times.size // 1500)
    pts = " ".join(
        f"{x(float(t)):.1f},{y(float(v)):.1f}"
        for t, v in zip(times[::step], values[::step], strict=True)
    )
    parts = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">']
    parts.append(f"<title>{_e(title)}</title>")
    for a, b in labels:
        parts.append(
            f'<rect x="{x(a):.1f}" y="{PAD}" width="{max(x(b) - x(a), 2):.1f}" '
            f'height="{H - 2 * PAD}" fill="#ddd" opacity="0.6"/>'
        )
    for a, until, colour in marks:
        end = t1 if until is None else until
        parts.append(
            f'<rect x="{x(a):.1f}" y="{PAD}" width="{max(x(end) - x(a), 2):.1f}" '
            f'height="{H - 2 * PAD}" fill="{colour}" opacity="0.25"/>'
        )
        parts.append(
            f'<line x1="{x(a):.1f}" x2="{x(a):.1f}" y1="{PAD}" y2="{H - PAD}" stroke="{colour}"/>'
        )
    parts.append(f'<polyline fill="none" stroke="#333" stroke-width="1" points="{pts}"/>')
    parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{H - PAD}" y2="{H - PAD}" stroke="#999"/>')
    parts.append(f'<text x="{PAD}" y="{PAD - 8}" font-size="12">{_e(title)}</text>')
    parts.append(f'<text x="4" y="{PAD + 4}" font-size="10">{vmax:,.1f} $/h</text>')
    parts.append(f'<text x="4" y="{H - PAD}" font-size="10">0</text>')
    parts.append(f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{format_time(t0)}</text>')
    parts.append(
        f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">'
        f"{format_time(t1)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _kv(name: str, value: object) -> str:
    return f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>"


def _head(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"


def _row(*cells: object) -> str:
    return (
        "<tr>"
        + "".join(
            f"<td class=num>{_e(c)}</td>" if isinstance(c, int | float) else f"<td>{_e(c)}</td>"
            for c in cells
        )
        + "</tr>"
    )


def _bar_chart(inc: Incident) -> str:
    rows = inc.contributors[:10]
    if not rows:
        return '<p class="small">no contributor grew</p>'
    bar_h, label_w = 18, 420
    height = bar_h * len(rows) + 10
    parts = [f'<svg width="{W}" height="{height}" viewBox="0 0 {W} {height}" role="img">']
    for n, c in enumerate(rows):
        name = c.labels.get("resource_id") or ",".join(
            v for k, v in sorted(c.labels.items()) if k != "provider"
        )
        y = 5 + n * bar_h
        width = c.share * (W - label_w - 120)
        parts.append(
            f'<text x="4" y="{y + 13}" font-size="11">{_e(c.level)}: {_e(name[:60])}</text>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{bar_h - 5}" '
            'fill="#5c6bc0"/>'
        )
        parts.append(
            f'<text x="{label_w + width + 6:.1f}" y="{y + 13}" font-size="11">'
            f"{c.share:.0%} (+{c.delta:,.2f} $/h)</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render(
    matrix: CostMatrix,
    series: Series,
    incidents: Sequence[Incident],
    *,
    sources: Sequence[str],
    labels: Sequence[Label] = (),
    scores: dict[str, KindScore] | None = None,
) -> str:
    times = matrix.times
    total = matrix.rates.sum(axis=0)
    label_spans = [
        (
            datetime.fromisoformat(lb.start.replace("Z", "+00:00")).timestamp(),
            datetime.fromisoformat(lb.end.replace("Z", "+00:00")).timestamp(),
        )
        for lb in labels
    ]
    coarse = [i for i in incidents if i.key.level == "account"] or list(incidents)
    marks = [(i.started_at, i.resolved_at, SEVERITY_COLOURS[i.severity]) for i in coarse]
    by_sev = Counter(i.severity for i in incidents)
    by_rule = Counter(i.rule for i in incidents)
    by_level = Counter(i.key.level for i in incidents)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>CCT backtest report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>CCT backtest report</h1>",
        f"<p class='small'>Generated {_e(datetime.now(tz=UTC).strftime('%Y-%m-%d %H:%M UTC'))} "
        f"from {_e(', '.join(sources))}.</p>",
        "<table>",
        _kv(
            "period",
            f"{format_time(float(times[0]))} to {format_time(float(times[-1]))} "
            f"({times.size} intervals of {matrix.interval_s // 60} min)",
        ),
        _kv("rows", f"{matrix.rows_used:,} used of {matrix.rows_read:,} read"),
        _kv("rejected rows", dict(matrix.rejected) if matrix.rejected else "none"),
        _kv("series", f"{len(series.keys):,} ({len(matrix.resources):,} resources)"),
        _kv(
            "incidents",
            f"{len(incidents)}: by severity {dict(by_sev)}; "
            f"by rule {dict(by_rule)}; by level {dict(by_level)}",
        ),
        "</table>",
        "<h2>Total cost over time</h2>",
        "<p class='small'>Coloured bands: account-level incidents (red critical, orange warning, "
        "blue info)" + ("; grey bands: labeled anomalies" if labels else "") + ".</p>",
        _line_chart(times, total, marks, "all accounts, $/h", label_spans),
    ]
    if scores:
        out.append("<h2>Against the labels</h2><table>")
        out.append(
            _head(
                "kind",
                "labeled",
                "detected",
                "recall",
                "alerts matched",
                "false alerts",
                "median delay (h)",
            )
        )
        for sc in scores.values():
            out.append(
                _row(
                    sc.kind,
                    sc.labels,
                    sc.detected,
                    f"{sc.recall:.2f}",
                    sc.matched_alerts,
                    sc.false_alerts,
                    f"{sc.median_delay_h:.1f}",
                )
            )
        out.append("</table>")
    out += [
        "<h2>Incidents</h2><table><tr><th>started</th><th>resolved</th><th>severity</th>"
        "<th>rule</th><th>level</th><th>series</th><th>expected $/h</th><th>observed $/h</th>"
        "<th>delta $/h</th><th>top contributor</th></tr>"
    ]
    for inc in incidents:
        top = inc.contributors[0] if inc.contributors else None
        top_txt = f"{top.labels.get('resource_id') or top.level} ({top.share:.0%})" if top else ""
        out.append(
            f"<tr><td>{format_time(inc.started_at)}</td>"
            f"<td>{format_time(inc.resolved_at) if inc.resolved_at else 'open'}</td>"
            f"<td><span class=sev style='background:{SEVERITY_COLOURS[inc.severity]}'>"
            f"{inc.severity}</span></td><td>{inc.rule}</td><td>{inc.key.level}</td>"
            f"<td>{_e(inc.key.describe())}</td><td class=num>{inc.expected:,.2f}</td>"
            f"<td class=num>{inc.observed:,.2f}</td><td class=num>{inc.delta:,.2f}</td>"
            f"<td>{_e(top_txt)}</td></tr>"
        )
    out.append("</table>")
    row_of = {k: n for n, k in enumerate(series.keys)}
    biggest = sorted((i for i in incidents if i.key.level != "resource"), key=lambda i: -i.delta)[
        :CHART_INCIDENTS
    ]
    if biggest:
        out.append(f"<h2>The {len(biggest)} largest aggregate incidents</h2>")
    for inc in biggest:
        row = row_of[inc.key]
        lo = max(0, int((inc.started_at - matrix.start_s) // matrix.interval_s) - 72)
        end = inc.resolved_at or float(times[-1])
        hi = min(times.size, int((end - matrix.start_s) // matrix.interval_s) + 48)
        out.append(
            f"<h3>{_e(inc.key.describe())}: {inc.rule}, +{inc.delta:,.2f} $/h at "
            f"{format_time(inc.started_at)}</h3>"
        )
        out.append(
            _line_chart(
                times[lo:hi],
                series.values[row, lo:hi],
                [(inc.started_at, inc.resolved_at, SEVERITY_COLOURS[inc.severity])],
                f"{inc.key.describe()}, $/h",
            )
        )
        out.append(_bar_chart(inc))
    out.append("</body></html>")
    return "\n".join(out)
