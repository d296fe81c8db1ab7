"""`cct backtest FILE...` and `cct sample-data`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from lambdas.backtest.report import format_time
from lambdas.backtest.run import Incident
from lambdas.common.settings import SettingsError
from lambdas.detector.config import LEVEL_LABELS, DetectionConfig, SeriesKey


class _Progress:
    """Progress on stderr, at most about twice a second, so long inputs show they move."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def note(self, text: str) -> None:
        if self.enabled:
            click.echo(f"backtest: {text}", err=True)

    def tick(self, done: int, total: int, incidents: int) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.5 or done == total):
            self.last = now
            click.echo(
                f"backtest: {done / total:6.1%} ({done}/{total} intervals, {incidents} incidents)",
                err=True,
            )


@click.command("sample-data")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sample"),
    show_default=True,
    help="Directory for focus.<format> and labels.json.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--weeks", type=click.IntRange(2, 52), default=8, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True
)
def sample_data(out_dir: Path, seed: int, weeks: int, fmt: str) -> None:
    """Generate a labeled multi-cloud FOCUS dataset with injected anomalies."""
    from lambdas.backtest.sample import SampleSpec, write

    data, labels, rows = write(SampleSpec(seed=seed, weeks=weeks), out_dir, fmt)
    click.echo(f"wrote {rows:,} FOCUS rows to {data}")
    click.echo(f"wrote the injected anomalies to {labels}")


@click.command("backtest")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML report here."
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the incidents as JSON here.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Score against a labels.json from `cct sample-data`.",
)
@click.option(
    "--level",
    "levels",
    multiple=True,
    type=click.Choice(list(LEVEL_LABELS)),
    help="Aggregation levels to detect at (repeatable; default all).",
)
@click.option(
    "--sensitivity", type=float, help="Override CCT_DETECTOR_SENSITIVITY (robust sigmas)."
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def backtest_cmd(
    *,
    files: tuple[Path, ...],
    report: Path | None,
    json_out: Path | None,
    labels: Path | None,
    levels: tuple[str, ...],
    sensitivity: float | None,
    quiet: bool,
) -> None:
    """Run the live detector's rules over FOCUS exports (CSV or Parquet) and print every
    anomaly with its time, size and ranked contributors."""
    from dataclasses import replace

    from lambdas.backtest import focus
    from lambdas.backtest.run import DEFAULT_LEVELS, backtest

    progress = _Progress(not quiet)
    try:
        cfg = DetectionConfig.from_env()
        if sensitivity is not None:
            cfg = replace(cfg, sensitivity=sensitivity)
        matrix = focus.load(list(files), progress=progress.note)
    except (focus.FocusError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    progress.note(
        f"{matrix.rows_used:,} rows, {len(matrix.resources):,} resources, "
        f"{matrix.rates.shape[1]:,} intervals of {matrix.interval_s // 60} min"
    )
    for reason, count in matrix.rejected.most_common():
        examples = "; ".join(matrix.examples.get(reason, []))
        click.echo(
            f"backtest: rejected {count:,} rows: {reason}"
            + (f" (e.g. {examples})" if examples else ""),
            err=True,
        )
    started = time.monotonic()
    incidents, series = backtest(matrix, cfg, levels or DEFAULT_LEVELS, progress.tick)
    elapsed = time.monotonic() - started
    progress.note(
        f"detection took {elapsed:.1f} s ({matrix.rows_used / max(elapsed, 1e-9):,.0f} rows/s)"
    )

    for inc in incidents:
        _print_incident(inc)
    click.echo(f"{len(incidents)} incidents in {len(series.keys):,} series")

    scores = None
    label_list = []
    if labels:
        from lambdas.backtest.evaluate import Detection, score
        from lambdas.backtest.sample import read_labels

        label_list = read_labels(labels)
        res = {r["resource_id"]: SeriesKey.of("resource", r) for r in matrix.resources}
        scores = score([Detection(i.key, i.started_at) for i in incidents], label_list, res)
        overall = scores["all"]
        click.echo(
            f"against {labels}: detected {overall.detected}/{overall.labels} labeled anomalies, "
            f"{overall.false_alerts} false alerts, precision {overall.precision:.2f}, "
            f"recall {overall.recall:.2f}, F1 {overall.f1:.2f}, "
            f"median delay {overall.median_delay_h:.1f} h"
        )
    if json_out:
        json_out.write_text(json.dumps([i.as_json() for i in incidents], indent=1) + "\n")
        click.echo(f"incidents written to {json_out}")
    if report:
        from lambdas.backtest.report import render

        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            render(
                matrix,
                series,
                incidents,
                sources=[str(f) for f in files],
                labels=label_list,
                scores=scores,
            )
        )
        click.echo(f"report written to {report.resolve()}")


def _print_incident(inc: Incident) -> None:
    click.echo(
        f"{format_time(inc.started_at)}  {inc.severity:<8} {inc.rule:<10} {inc.key.describe()}  "
        f"expected {inc.expected:,.2f} observed {inc.observed:,.2f} (+{inc.delta:,.2f} $/h)"
    )
    for c in inc.contributors[:5]:
        name = SeriesKey.of(c.level, c.labels).describe()
        click.echo(f"    {c.share:6.1%}  +{c.delta:,.2f} $/h  {c.level} {name}")
    if inc.ancestors:
        click.echo(f"    explains: {'; '.join(a.describe() for a in inc.ancestors)}")
