"""A self-contained HTML report of a backtest: inline SVG charts and tables, no scripts, no
external resources, so it can be mailed or attached to a ticket as one file."""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from lambdas.backtest.evaluate import KindScore
from lambdas.backtest.focus import CostMatrix
from lambdas.backtest.run import Incident, Series
from lambdas.backtest.sample import Label
from lambdas.detector.config import SeriesKey

SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
EXPECTED_COLOUR = "#2e7d32"
LABEL_FILL = "#9e9e9e"
CHART_INCIDENTS = 15
W, H = 1000, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 16, 34
DAY_S = 86400

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;
max-width:1100px}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1.8em 0 .4em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.t{white-space:nowrap}
.sev{color:#fff;padding:0 .4em;border-radius:3px}
svg{background:#fff;border:1px solid #e0e0e0;width:100%;height:auto;display:block}
svg text{font-family:system-ui,sans-serif;font-size:13px;fill:#333}
.small{color:#666;font-size:.85em}
.legend{font-size:.85em;color:#444;margin:.3em 0 1em}
.legend span{display:inline-block;margin-right:1.2em}
.sw{display:inline-block;width:1.4em;height:.8em;margin-right:.3em;vertical-align:middle}
"""


def format_time(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _e(text: object) -> str:
    return html.escape(str(text))


def _nice_step(vmax: float, ticks: int = 4) -> float:
    raw = max(vmax, 1e-9) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _line_chart(
    times: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    marks: Sequence[tuple[float, float | None, str]],
    *,
    expected: npt.NDArray[np.floating] | None = None,
    labels: Sequence[tuple[float, float]] = (),
) -> str:
    """Run-rate over time with a $/h axis and dated ticks. `marks` are incidents (start, end
    or None while open, colour): a band with a marker at the start; `labels` are true anomaly
    spans (grey, hatched, behind); `expected` is the detector's expectation (dashed)."""
    if times.size == 0:
        return ""
    t0, t1 = float(times[0]), float(times[-1])
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    if expected is not None and np.isfinite(expected).any():
        top = max(top, float(np.nanmax(expected)))
    step_v = _nice_step(float(top) * 1.05)
    vmax = step_v * math.ceil(float(top) * 1.05 / step_v)
    span = max(t1 - t0, 1.0)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (min(max(t, t0), t1) - t0) / span * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / vmax * plot_h

    def polyline(vals: npt.NDArray[np.floating], style: str) -> str:
        # Gaps (NaN) split the line instead of being drawn as zero.
        runs, run = [], []
        for t, v in zip(times.tolist(), vals.tolist(), strict=True):
            if math.isfinite(v):
                run.append(f"{x(t):.1f},{y(v):.1f}")
            elif run:
                runs.append(run)
                run = []
        runs.append(run)
        return "".join(f'<polyline fill="none" {style} points="{" ".join(r)}"/>' for r in runs if r)

    parts = [f'<svg viewBox="0 0 {W} {H}" role="img">']
    parts.append(
        f'<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="3" height="6" fill="{LABEL_FILL}" '
        'opacity="0.35"/></pattern></defs>'
    )
    # Value axis: gridlines at round $/h.
    v = 0.0
    while v <= vmax + step_v / 2:
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="{"#999" if v == 0 else "#eee"}"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.{_decimals(step_v)}f}'
            "</text>"
        )
        v += step_v
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})">$/h</text>'
    )
    # Time axis: a tick per day, or per week (Mondays) over long spans.
    days = span / DAY_S
    every = DAY_S if days <= 16 else 7 * DAY_S
    first = math.ceil(t0 / DAY_S) * DAY_S
    if every > DAY_S:
        first += ((7 - datetime.fromtimestamp(first, tz=UTC).weekday()) % 7) * DAY_S
    tick = first
    fmt = "%a %m-%d" if every == DAY_S else "%Y-%m-%d"
    while x(tick) <= W - RIGHT - 30 and tick <= t1:  # a label at the edge would be cut off
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            'stroke="#f3f3f3"/>'
            f'<text x="{x(tick):.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">'
            f"{datetime.fromtimestamp(tick, tz=UTC).strftime(fmt)}</text>"
        )
        tick += every
    for a, b in labels:
        parts.append(
            f'<rect x="{x(a):.1f}" y="{TOP}" width="{max(x(b) - x(a), 2):.1f}" '
            f'height="{plot_h}" fill="url(#hatch)"/>'
        )
    for a, until, colour in marks:
        end = t1 if until is None else until
        parts.append(
            f'<rect x="{x(a):.1f}" y="{TOP}" width="{max(x(end) - x(a), 2):.1f}" '
            f'height="{plot_h}" fill="{colour}" opacity="0.18"/>'
            f'<line x1="{x(a):.1f}" x2="{x(a):.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            f'stroke="{colour}" stroke-width="1.5"/>'
            f'<path d="M{x(a) - 6:.1f},{TOP} L{x(a) + 6:.1f},{TOP} L{x(a):.1f},{TOP + 9} Z" '
            f'fill="{colour}"/>'
        )
    if expected is not None:
        parts.append(
            polyline(
                expected, f'stroke="{EXPECTED_COLOUR}" stroke-width="1.5" stroke-dasharray="5 3"'
            )
        )
    parts.append(polyline(values, 'stroke="#212121" stroke-width="1.3"'))
    parts.append("</svg>")
    return "".join(parts)


def _decimals(step: float) -> int:
    return 0 if step >= 1 else min(4, math.ceil(-math.log10(step)))


def _legend(*, expected: bool, labels: bool, severities: Sequence[str]) -> str:
    def item(style: str, text: str) -> str:
        return f"<span><span class=sw style='{style}'></span>{_e(text)}</span>"

    items = [item("border-top:2px solid #212121;height:0", "observed cost")]
    if expected:
        items.append(item(f"border-top:2px dashed {EXPECTED_COLOUR};height:0", "expected"))
    items += [
        item(f"background:{SEVERITY_COLOURS[s]};opacity:.5", f"{s} incident")
        for s in SEVERITY_COLOURS
        if s in severities
    ]
    if labels:
        items.append(item(f"background:{LABEL_FILL};opacity:.5", "labeled anomaly"))
    return "<div class=legend>" + "".join(items) + "</div>"


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


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counter.most_common())


def _explains(inc: Incident) -> str:
    """The aggregate incidents folded into this one (context, not further incidents)."""
    return "; ".join(a.describe() for a in inc.ancestors)


def _contributors(inc: Incident) -> str:
    """Bars of each contributor's share of the increase, one block per child level (the
    shares of a level add up to 100 %, so levels are not mixed)."""
    if not inc.contributors:
        return "" if inc.key.level == "resource" else '<p class="small">No child series grew.</p>'
    out = []
    for level in dict.fromkeys(c.level for c in inc.contributors):
        rows = [c for c in inc.contributors if c.level == level][:10]
        bar_h, label_w, text_w = 24, 470, 150
        height = bar_h * len(rows) + 8
        parts = [f'<svg viewBox="0 0 {W} {height}" role="img">']
        for n, c in enumerate(rows):
            y = 4 + n * bar_h
            width = max(c.share * (W - label_w - text_w), 1.0)
            name = SeriesKey.of(c.level, c.labels).describe()
            parts.append(
                f'<text x="8" y="{y + 16}">{_e(name if len(name) <= 58 else name[:57] + "…")}'
                f"</text>"
                f'<rect x="{label_w}" y="{y + 4}" width="{width:.1f}" height="{bar_h - 8}" '
                'fill="#5c6bc0"/>'
                f'<text x="{label_w + width + 6:.1f}" y="{y + 16}">'
                f"{c.share:.0%}  +{c.delta:,.2f} $/h</text>"
            )
        parts.append("</svg>")
        out.append(f"<p class=small>Share of the increase, by {_e(level)}:</p>" + "".join(parts))
    return "".join(out)


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
    marks = [(i.started_at, i.resolved_at, SEVERITY_COLOURS[i.severity]) for i in incidents]
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
            f"{len(incidents)}: {_counts(by_sev)}; by rule {_counts(by_rule)}; "
            f"by level {_counts(by_level)}",
        ),
        "</table>",
        "<h2>Total cost over time</h2>",
        "<p class='small'>Run-rate of all accounts, with every incident: one per cause, "
        "reported at the deepest series that explains it.</p>",
        _line_chart(times, total, marks, labels=label_spans),
        _legend(expected=False, labels=bool(labels), severities=[i.severity for i in incidents]),
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
        "<h2>Incidents</h2><table>",
        _head(
            "started",
            "resolved",
            "severity",
            "rule",
            "series",
            "expected $/h",
            "observed $/h",
            "delta $/h",
            "top contributor",
            "explains",
        ),
    ]
    for inc in incidents:
        top = inc.contributors[0] if inc.contributors else None
        top_txt = (
            f"{SeriesKey.of(top.level, top.labels).describe(short=True)} ({top.share:.0%})"
            if top
            else ""
        )
        out.append(
            f"<tr><td class=t>{format_time(inc.started_at)}</td>"
            f"<td class=t>{format_time(inc.resolved_at) if inc.resolved_at else 'open'}</td>"
            f"<td><span class=sev style='background:{SEVERITY_COLOURS[inc.severity]}'>"
            f"{inc.severity}</span></td><td>{inc.rule}</td>"
            f"<td>{_e(inc.key.describe())}</td>"
            f"<td class=num>{inc.expected:,.2f}</td>"
            f"<td class=num>{inc.observed:,.2f}</td><td class=num>+{inc.delta:,.2f}</td>"
            f"<td>{_e(top_txt)}</td><td>{_e(_explains(inc))}</td></tr>"
        )
    out.append("</table>")
    row_of = {k: n for n, k in enumerate(series.keys)}
    biggest = sorted(incidents, key=lambda i: -i.delta)[:CHART_INCIDENTS]
    if biggest:
        out.append(f"<h2>The {len(biggest)} largest incidents</h2>")
        out.append(_legend(expected=True, labels=False, severities=list(SEVERITY_COLOURS)))
    for inc in biggest:
        row = row_of[inc.key]
        lo = max(0, int((inc.started_at - matrix.start_s) // matrix.interval_s) - 72)
        end = inc.resolved_at or float(times[-1])
        hi = min(times.size, int((end - matrix.start_s) // matrix.interval_s) + 48)
        until = f"until {format_time(inc.resolved_at)}" if inc.resolved_at else "still open"
        out.append(
            f"<h3>{_e(inc.key.describe())}: +{inc.delta:,.2f} $/h "
            f"({inc.severity}, {inc.rule}) from {format_time(inc.started_at)}, {until}</h3>"
        )
        out.append(
            _line_chart(
                times[lo:hi],
                series.values[row, lo:hi],
                [(inc.started_at, inc.resolved_at, SEVERITY_COLOURS[inc.severity])],
                # What the engine expected is kept for aggregates only (resources are many).
                expected=series.expected[row, lo:hi] if row < series.aggregates else None,
            )
        )
        if inc.ancestors:
            out.append(f"<p class=small>Explains: {_e(_explains(inc))}.</p>")
        out.append(_contributors(inc))
    out.append("</body></html>")
    return "\n".join(out)
