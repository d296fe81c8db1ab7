"""Detection quality on the labeled sample, against the seed's rule and a rolling z-score.

    .venv/bin/python -m benchmarks.detector_quality [--seeds 5] [--kind-seeds 3] [--weeks 8]

Two experiments, each over several seeds of `cct sample-data`:
- mixed: every anomaly kind in one dataset (2 of each): overall precision, recall, F1,
  median detection delay and false alerts per series-week;
- per kind: datasets holding only one kind (3 anomalies each), so each kind's precision
  counts the false alerts that kind's dataset produced.

The three detectors see the same series (account, service, team and resource levels) and
the same materiality floor (min_impact_usd_per_hour), and each opens one incident per run of
alerting intervals:
- cct: the live detector's core and report book via the backtest: one incident per cause,
  at the deepest series that explains it (the others can alert at every level a change
  reaches: `alerts/anomaly` counts the alerts that matched each anomaly found);
- seed rule: value > 1.5 x a fixed baseline (each series' mean over its first week);
- rolling z: (value - mean) / std over the previous 24 hours > 3.

The sample is synthetic and was designed together with the detector: treat the figures as a
regression check and a comparison, not as a promise about every real bill.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lambdas.backtest import focus
from lambdas.backtest.evaluate import Detection, KindScore, score
from lambdas.backtest.run import Series, backtest, build_series
from lambdas.backtest.sample import KINDS, SampleSpec, read_labels, write
from lambdas.detector.config import DetectionConfig, SeriesKey

Matrix = npt.NDArray[np.float64]


@dataclass
class Tally:
    labels: int = 0
    detected: int = 0
    matched: int = 0
    false: int = 0
    series_weeks: float = 0.0
    delays: list[float] | None = None

    def add(self, s: KindScore, series_weeks: float) -> None:
        self.labels += s.labels
        self.detected += s.detected
        self.matched += s.matched_alerts
        self.false += s.false_alerts
        self.series_weeks += series_weeks
        self.delays = (self.delays or []) + list(s.delays_h)

    def row(self) -> tuple[float, float, float, float, float]:
        p = self.matched / (self.matched + self.false) if self.matched + self.false else 0.0
        r = self.detected / self.labels if self.labels else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        delay = statistics.median(self.delays) if self.delays else float("nan")
        return p, r, f1, delay, self.false / self.series_weeks


def runs(alerting: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(series row, interval) where a run of alerting intervals starts."""
    start = alerting & ~np.concatenate(
        [np.zeros((alerting.shape[0], 1), bool), alerting[:, :-1]], axis=1
    )
    rows, cols = np.nonzero(start)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def seed_rule(values: Matrix, floor: float) -> npt.NDArray[np.bool_]:
    baseline = values[:, : 7 * 24].mean(axis=1, keepdims=True)
    return (values > 1.5 * baseline) & (values - baseline >= floor)


def rolling_z(values: Matrix, floor: float, window: int = 24) -> npt.NDArray[np.bool_]:
    csum = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    csq = np.cumsum(np.pad(values**2, ((0, 0), (1, 0))), axis=1)
    n = values.shape[1]
    out = np.zeros_like(values, dtype=bool)
    t = np.arange(window, n)
    mean = (csum[:, t] - csum[:, t - window]) / window
    var = np.maximum((csq[:, t] - csq[:, t - window]) / window - mean**2, 0.0)
    std = np.sqrt(var)
    x = values[:, t]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, (x - mean) / std, np.where(x > mean, np.inf, 0.0))
    out[:, t] = (z > 3.0) & (x - mean >= floor)
    return out


def baseline_detections(
    rule: Callable[[Matrix, float], npt.NDArray[np.bool_]],
    series: Series,
    start_s: int,
    interval_s: int,
    floor: float,
) -> list[Detection]:
    return [
        Detection(series.keys[r], float(start_s + c * interval_s))
        for r, c in runs(rule(series.values, floor))
    ]


def evaluate_dataset(
    path: Path, labels_path: Path, cfg: DetectionConfig
) -> dict[str, tuple[dict[str, KindScore], float]]:
    matrix = focus.load([path])
    labels = read_labels(labels_path)
    res = {r["resource_id"]: SeriesKey.of("resource", r) for r in matrix.resources}
    series = build_series(matrix)
    weeks = matrix.rates.shape[1] * matrix.interval_s / (7 * 24 * 3600)
    series_weeks = len(series.keys) * weeks
    out = {}
    incidents, _ = backtest(matrix, cfg)
    out["cct"] = (
        score([Detection(i.key, i.started_at) for i in incidents], labels, res),
        series_weeks,
    )
    floor = cfg.min_impact_usd_per_hour
    for name, rule in (("seed rule 1.5x", seed_rule), ("rolling z>3", rolling_z)):
        dets = baseline_detections(rule, series, matrix.start_s, matrix.interval_s, floor)
        out[name] = (score(dets, labels, res), series_weeks)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--kind-seeds", type=int, default=3)
    ap.add_argument("--weeks", type=int, default=8)
    args = ap.parse_args(argv)
    cfg = DetectionConfig()
    detectors = ("cct", "seed rule 1.5x", "rolling z>3")
    started = time.monotonic()
    mixed = {d: Tally() for d in detectors}
    per_kind = {(d, k): Tally() for d in detectors for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            d, lb, _ = write(SampleSpec(seed=seed, weeks=args.weeks), Path(tmp) / f"m{seed}")
            for name, (scores, sw) in evaluate_dataset(d, lb, cfg).items():
                mixed[name].add(scores["all"], sw)
            print(f"  mixed seed {seed} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        for kind in KINDS:
            for seed in range(100, 100 + args.kind_seeds):
                spec = SampleSpec(seed=seed, weeks=args.weeks, kinds=(kind,), anomalies_per_kind=3)
                d, lb, _ = write(spec, Path(tmp) / f"{kind}{seed}")
                for name, (scores, sw) in evaluate_dataset(d, lb, cfg).items():
                    per_kind[(name, kind)].add(scores["all"], sw)
            print(f"  kind {kind} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    print(f"\nMixed datasets: {args.seeds} seeds x {args.weeks} weeks, 12 labeled anomalies each")
    print(
        f"{'detector':<16}{'precision':>10}{'recall':>8}{'F1':>7}{'median delay h':>16}"
        f"{'false/series-week':>19}{'false alerts':>14}{'alerts/anomaly':>16}"
    )
    for name in detectors:
        p, r, f1, delay, fpsw = mixed[name].row()
        t = mixed[name]
        per = t.matched / t.detected if t.detected else float("nan")
        print(
            f"{name:<16}{p:>10.3f}{r:>8.3f}{f1:>7.3f}{delay:>16.1f}{fpsw:>19.4f}{t.false:>14}"
            f"{per:>16.2f}"
        )

    print(f"\nOne kind per dataset: {args.kind_seeds} seeds x 3 anomalies per kind")
    print(
        f"{'kind':<24}{'detector':<16}{'precision':>10}{'recall':>8}{'F1':>7}{'median delay h':>16}"
    )
    for kind in KINDS:
        for name in detectors:
            p, r, f1, delay, _ = per_kind[(name, kind)].row()
            print(f"{kind:<24}{name:<16}{p:>10.3f}{r:>8.3f}{f1:>7.3f}{delay:>16.1f}")
    print(
        f"\n(total {time.monotonic() - started:.0f} s; "
        "delay 0.0 h = found in the interval of the change)"
    )


if __name__ == "__main__":
    main()
