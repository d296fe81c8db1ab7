"""The real-data benchmark's scoring: the F1 the bootstrap resamples is the table's F1, and a
margin is only as sure as the series behind it."""

from __future__ import annotations

import functools
import json
import math
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.detector_real import (
    NAB_SOURCES,
    SOURCES,
    Corpus,
    Label,
    Tally,
    bootstrap_margins,
    f1_of,
    labels_of,
    read_corpus,
    read_nab,
    run,
    score,
)
from lambdas.detector.config import DetectionConfig

# Reading the whole corpus takes about 20 s (1.7 million rows of the 1-minute KPIs): once.
corpus_once = functools.cache(read_corpus)

counts = st.tuples(*(st.integers(0, 50) for _ in range(4)))


@given(counts)
def test_f1_is_the_harmonic_mean_of_incident_precision_and_label_recall(
    c: tuple[int, int, int, int],
) -> None:
    labels, detected, matched, false = c
    detected = min(detected, labels)
    got = float(f1_of(np.array([[labels, detected, matched, false]]))[0])
    if not labels or not matched:
        assert got == 0.0
        return
    p, r = matched / (matched + false), detected / labels
    assert math.isclose(got, 2 * p * r / (p + r) if p + r else 0.0)
    t = Tally(labels=labels, detected=detected, matched=matched, false=false)
    assert t.row()[2] == got


def _series(cct: Tally, z: Tally) -> dict[str, Tally]:
    return {"cct": cct, "rolling z>3": z, "rolling z>10": z}


def test_margin_of_equal_detectors_is_zero_and_of_a_better_one_positive() -> None:
    same = Tally(labels=4, detected=2, matched=2, false=1)
    worse = Tally(labels=4, detected=1, matched=1, false=5)
    results = [("a", _series(same, same)) for _ in range(5)]
    results += [("b", _series(same, worse)) for _ in range(5)]
    by = {(m.source, m.baseline): m for m in bootstrap_margins(results, draws=200)}
    assert by[("a", "rolling z>3")].median == 0.0 and by[("a", "rolling z>3")].ahead == 0.0
    b = by[("b", "rolling z>3")]
    assert b.low > 0 and b.ahead == 1.0 and b.series == 5
    assert by[("all", "rolling z>3")].series == 10


def test_margin_made_by_one_series_is_uncertain() -> None:
    """Nine series where both detectors miss and one where cct alone scores: the median
    favours cct but the interval reaches zero, and the table must not call it a margin."""
    miss = Tally(labels=3, detected=0, matched=0, false=1)
    hit = Tally(labels=3, detected=3, matched=3, false=0)
    results = [("s", _series(miss, miss)) for _ in range(9)] + [("s", _series(hit, miss))]
    m = next(m for m in bootstrap_margins(results, draws=500) if m.baseline == "rolling z>3")
    assert m.low <= 0.0 < m.high
    assert 0.5 < m.ahead < 1.0


def test_detections_inside_one_label_count_once_in_recall() -> None:
    labels = [Label(0.0, 100.0, True), Label(1000.0, 1100.0, False)]
    t = score([10.0, 20.0, 1050.0, 5000.0], labels, grace_s=50.0, months=1.0)
    assert (t.labels, t.detected, t.matched, t.false) == (1, 1, 2, 1)


def test_corpus_reads_every_archive_and_joins_split_series() -> None:
    """Every archive in benchmarks/data is named in SOURCES and read; a KPI kept as train
    and test files is one series in time order; both parts of every source have series."""
    data = Path(__file__).parents[2] / "benchmarks" / "data"
    sources_text = (data / "SOURCES").read_text()
    archives = sorted(p.name for p in data.glob("*.tar.xz"))
    assert archives == sorted(SOURCES)
    assert all(a in sources_text for a in archives)
    corpus = corpus_once()
    names = [c.name for c in corpus]
    assert len(names) == len(set(names)) == 76
    for c in corpus:
        assert len(c.values) == len(c.labels) == c.times.size == len(c.stamps)
        # Time order; a few source files repeat a timestamp (kept: two billing rows of one
        # period, whose costs add up).
        assert np.all(np.diff(c.times) >= 0), c.name
    kpis = [c for c in corpus if c.source.startswith("aiops-2018 (")]
    assert len(kpis) == 7 and all(c.times[-1] - c.times[0] > 60 * 86400 for c in kpis)
    minute = [c for c in corpus if c.source.startswith("aiops-2018-min")]
    assert len(minute) == 6 and all(c.times[-1] - c.times[0] > 150 * 86400 for c in minute)
    assert all(np.median(np.diff(c.times)) == 60 for c in minute)
    for source in {c.source for c in corpus}:
        assert {c.part for c in corpus if c.source == source} == {"tune", "eval"}


def _labelled(values: list[float], flagged: range, step: int = 300) -> list[Label]:
    times = np.arange(len(values), dtype=np.int64) * step
    c = Corpus(
        name="x",
        source="s",
        times=times,
        stamps=[""] * len(values),
        values=[str(v) for v in values],
        labels=[int(n in flagged) for n in range(len(values))],
    )
    return labels_of(c, times, np.asarray(values, dtype=np.float64), step)


def test_label_direction_is_the_farthest_value_not_any_value_above() -> None:
    normal = [10.0, 11.0, 9.0] * 8
    # A long dip of noisy 5-minute data with one value just above the hour before.
    dip = [3.0, 2.0, 10.6, 4.0, 3.0, 2.5, 3.5, 2.0]
    (down,) = _labelled(normal + dip + normal, range(24, 32))
    assert not down.increase
    # A spike, even inside a labeled window that dips a little around it.
    spike = [9.0, 8.0, 40.0, 8.5, 9.0]
    (up,) = _labelled(normal + spike + normal, range(24, 29))
    assert up.increase


def test_the_independent_check_is_nab_read_apart_from_the_corpus() -> None:
    """NAB's 47 real series, each labeled inside its anomaly windows (every window labels at
    least one row), in a part of their own that neither tuning nor evaluation reads."""
    holdout = Path(__file__).parents[2] / "benchmarks" / "holdout"
    assert "ea702d75cc2258d9d7dd35ca8e5e2539d71f3140" in (holdout / "SOURCES").read_text()
    nab = read_nab()
    assert len(nab) == 47 and {c.part for c in nab} == {"nab"}
    assert set(NAB_SOURCES.values()) == {c.source for c in nab}
    assert not {c.name for c in nab} & {c.name for c in corpus_once()}
    with tarfile.open(holdout / "nab.tar.xz") as tar:
        fh = tar.extractfile("labels/combined_windows.json")
        assert fh is not None
        windows = json.load(fh)
    for c in nab:
        assert len(c.values) == len(c.labels) == c.times.size
        inside = np.zeros(c.times.size, dtype=bool)
        for span in windows[c.name.removeprefix("nab/")]:
            a, b = (datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() for s in span)
            window = (c.times >= a) & (c.times <= b)
            assert window.any(), (c.name, span)
            inside |= window
        assert c.labels == inside.astype(int).tolist(), c.name


def test_series_run_side_by_side_give_the_same_tallies() -> None:
    """`--jobs` only changes how long the benchmark takes: per-source tallies and the order of
    the per-series results (the bootstrap's input) are those of one process."""
    hours = np.arange(24 * 10)
    times = 1_700_000_000 + hours * 3600
    series = []
    for n, at in enumerate((24 * 5 + 4, 24 * 6 + 6, 24 * 7 + 8)):
        values = 50 + 20 * np.sin(hours / 24 * 2 * np.pi)
        values[at] *= 4
        series.append(
            Corpus(
                name=f"s{n}",
                source="src a" if n else "src b",
                times=times,
                stamps=[datetime.fromtimestamp(int(t), UTC).isoformat() for t in times],
                values=[f"{v:.3f}" for v in values],
                labels=[int(h == at) for h in hours],
            )
        )
    one: list[tuple[str, dict[str, Tally]]] = []
    two: list[tuple[str, dict[str, Tally]]] = []
    tallies = run(series, DetectionConfig(), results=one)
    assert tallies == run(series, DetectionConfig(), results=two, jobs=2)
    assert one == two and [s for s, _ in one] == ["src b", "src a", "src a"]
    assert tallies[("all", "cct")].detected > 0  # not a comparison of empty tallies
    # The restarted detector is a row of its own, and the others do not change with it.
    restarted = run(series, DetectionConfig(), restart_every_s=3 * 86400.0)
    assert restarted[("all", "cct restart")].detected > 0
    assert {k: t for k, t in restarted.items() if k[1] != "cct restart"} == tallies
