"""The live detector (`cct serve detector`): the thin I/O shell around `core.Engine`.

Every interval it reads the aggregate run-rates from VictoriaMetrics' rollup series (they
exist before a new resource does, so a step is visible about a second after the change),
evaluates them, attributes each new incident to its children and single resources (drill-down
on the per-resource series, plus the change events in PostgreSQL, which also know resources too
new to be queryable yet), posts alerts to Alertmanager and keeps one `anomalies` row per
incident. A failed cycle is logged and counted; the next cycle tries again.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lambdas.common import settings as env
from lambdas.common.httpshell import ThreadedShell
from lambdas.common.pg import DsnSource
from lambdas.common.vm import VictoriaMetrics, VMError
from lambdas.contract import A_ESCALATED_FROM, A_SUPERSEDED_BY
from lambdas.detector.alerts import (
    Alertmanager,
    AlertmanagerError,
    alert_labels,
    build_alert,
    fingerprint,
)
from lambdas.detector.attribution import (
    ChangeEvent,
    Child,
    Contributor,
    link_change_events,
    rank_contributors,
)
from lambdas.detector.config import (
    CHILD_LEVEL,
    LEVEL_LABELS,
    SEVERITIES,
    DetectionConfig,
    SeriesKey,
)
from lambdas.detector.core import HOUR_S, WEEK_H, Engine, OpenIncident, Transition
from lambdas.detector.outbox import (
    AlertQueue,
    Escalate,
    Resolve,
    RowOp,
    RowQueue,
    Spool,
    SpoolError,
    Upsert,
    apply_ops,
    still_open,
)
from lambdas.detector.reports import (
    DEPTH,
    FALLBACK,
    HELD,
    Attribution,
    Hooks,
    Report,
    ReportBook,
    Unread,
)
from lambdas.detector.rules import ROLLUP_METRIC, selector
from lambdas.store import anomalies as store
from lambdas.store.db import StoreError, connect, translate_errors

log = logging.getLogger("cct.detector")
RESOURCE_METRIC = "cct_cost_rate_usd_per_hour"


@dataclass(frozen=True)
class DetectorSettings:
    # VictoriaMetrics base URL of the queries (CCT_VM_READ_URL, else CCT_VM_URL): the detector
    # only reads.
    vm_url: str
    # One Alertmanager URL, or every replica's, comma-separated: each alert goes to all.
    alertmanager_url: str
    # CCT_PG_DSN_FILE (a DSN file Vault Agent keeps current, re-read on every connect) or
    # CCT_PG_DSN.
    pg_dsn: str | DsnSource
    # Evaluation interval in seconds; 3 s keeps detection inside the seconds-scale promise.
    interval_s: float = 3.0
    # Levels evaluated each cycle: the aggregates from the rollup series, `resource` from the
    # per-resource series (one per live priced resource). An increase is reported once, at
    # the deepest level that explains it (a resource, when one or a few do), with the
    # aggregates it explains as context (`ancestors`).
    levels: tuple[str, ...] = ("account", "service", "team", "resource")
    # Which run-rate to watch: `list` exists at once; `reconciled` after the first bill.
    basis: str = "list"
    # Extra PromQL label matchers for every query, e.g. `provider="aws"` to shard detectors.
    selector: str = ""
    # Open alerts are re-posted this often; Alertmanager resolves one not re-posted within
    # alert_ttl_s (a stopped detector's alerts resolve on their own).
    resend_s: float = 30.0
    alert_ttl_s: float = 120.0
    # Change events this long before an incident's start are considered its cause.
    event_lookback_s: float = 3600.0
    # Fast path for new resources: a resource whose change event raised its run-rate is
    # evaluated from the inventory until VictoriaMetrics serves its series (a new series is
    # queryable only after seconds), at most this long. 0 turns the fast path off.
    new_resource_window_s: float = 60.0
    # Load this much hourly history at start so the seasonal baseline is warm at once.
    bootstrap_hours: int = 3 * WEEK_H + 24
    # The shared HTTP shell's bind address (lambdas.common.httpshell); loopback unless the
    # deployment opens it (the bundle sets 0.0.0.0:8080 in the pod).
    host: str = "127.0.0.1"
    port: int = 18082
    # CCT_DETECTOR_HEADER_TIMEOUT_S: a scraper that has not sent its request headers by then
    # is disconnected, so slow clients cannot pile up on the shell's connections.
    header_timeout_s: float = 10.0
    # CCT_DETECTOR_SPOOL_FILE: the file that keeps the alerts and anomaly rows not delivered
    # yet between cycles (lambdas.detector.outbox.Spool), so a detector that dies during an
    # Alertmanager or PostgreSQL outage leaves them to the next one; empty: memory only. The
    # bundle puts it on the detector's own volume.
    spool_file: str = ""
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def __post_init__(self) -> None:
        unknown = [lv for lv in self.levels if lv not in LEVEL_LABELS]
        if unknown or not self.levels:
            raise env.SettingsError(
                f"CCT_DETECTOR_LEVELS: unknown level(s) {unknown}; known: {sorted(LEVEL_LABELS)}"
            )
        if self.new_resource_window_s < 0:
            raise env.SettingsError("CCT_DETECTOR_NEW_RESOURCE_WINDOW_S must be >= 0")
        if self.basis not in {"list", "reconciled"}:
            raise env.SettingsError("CCT_DETECTOR_BASIS must be list or reconciled")
        env.alertmanager_urls(self.alertmanager_url)
        for name in ("interval_s", "resend_s", "header_timeout_s"):
            if getattr(self, name) <= 0:
                raise env.SettingsError(f"CCT_DETECTOR_{name.upper()} must be > 0")
        if self.alert_ttl_s <= self.resend_s:
            raise env.SettingsError("CCT_DETECTOR_ALERT_TTL_S must be > CCT_DETECTOR_RESEND_S")
        for name in ("event_lookback_s", "bootstrap_hours"):
            if getattr(self, name) < 0:
                raise env.SettingsError(f"CCT_DETECTOR_{name.upper()} must be >= 0")

    @classmethod
    def from_env(cls) -> DetectorSettings:
        # CCT_DETECTOR_LEVELS: the aggregation levels evaluated, comma-separated (`resource`
        # reports the resource that explains an increase as an actionable anomaly).
        levels = os.environ.get("CCT_DETECTOR_LEVELS", "account,service,team,resource")
        return cls(
            vm_url=env.vm_read_url(),
            alertmanager_url=env.alertmanager_url(),
            pg_dsn=env.pg_dsn_source(),
            interval_s=env.env_float("CCT_DETECTOR_INTERVAL_S", 3.0),
            levels=tuple(x.strip() for x in levels.split(",") if x.strip()),
            basis=os.environ.get("CCT_DETECTOR_BASIS", "list") or "list",
            selector=os.environ.get("CCT_DETECTOR_SELECTOR", ""),
            resend_s=env.env_float("CCT_DETECTOR_RESEND_S", 30.0),
            alert_ttl_s=env.env_float("CCT_DETECTOR_ALERT_TTL_S", 120.0),
            event_lookback_s=env.env_float("CCT_DETECTOR_EVENT_LOOKBACK_S", 3600.0),
            new_resource_window_s=env.env_float("CCT_DETECTOR_NEW_RESOURCE_WINDOW_S", 60.0),
            bootstrap_hours=env.env_int("CCT_DETECTOR_BOOTSTRAP_HOURS", 3 * WEEK_H + 24),
            host=env.env_str("CCT_DETECTOR_HOST", "127.0.0.1"),
            port=env.env_int("CCT_DETECTOR_PORT", 18082),
            header_timeout_s=env.env_float("CCT_DETECTOR_HEADER_TIMEOUT_S", 10.0),
            spool_file=os.environ.get("CCT_DETECTOR_SPOOL_FILE", ""),
            detection=DetectionConfig.from_env(),
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycle = Histogram(
            "cct_detector_cycle_seconds",
            "Duration of one detection cycle.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
        )
        self.series = Gauge(
            "cct_detector_series", "Series evaluated in the last cycle.", registry=r
        )
        self.known = Gauge(
            "cct_detector_known_series",
            "Series in the detector's state (absent ones until evicted).",
            registry=r,
        )
        self.open = Gauge("cct_detector_open_incidents", "Incidents open now.", registry=r)
        self.event_to_alert = Histogram(
            "cct_detector_event_to_alert_seconds",
            "From the newest change event linked to an incident to the incident's alert: "
            "CCT's end-to-end promise, measured on every incident that has a cause.",
            registry=r,
            buckets=(0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300, 900, 3600),
        )
        self.transitions = Counter(
            "cct_detector_incidents", "Incidents opened or resolved.", ["kind"], registry=r
        )
        self.errors = Counter(
            "cct_detector_errors", "Failed calls, by dependency.", ["dependency"], registry=r
        )
        self.relabelled = Counter(
            "cct_detector_relabelled_resources",
            "Resources whose labels changed (a re-tag), followed as the same series.",
            registry=r,
        )
        self.rejected = Counter(
            "cct_detector_rejected_series",
            "Series skipped because a label value held the key separator.",
            registry=r,
        )
        self.out_of_range = Counter(
            "cct_detector_out_of_range_values",
            "Values skipped because their magnitude is beyond any cost rate (1e11 $/h).",
            registry=r,
        )
        self.posted = Counter(
            "cct_detector_alerts_posted", "Alerts posted to Alertmanager.", registry=r
        )
        self.dropped = Counter(
            "cct_detector_queue_dropped",
            "Alerts (what=alert) or anomaly rows (what=row) dropped because their queue held "
            "its cap of distinct incidents during an Alertmanager or PostgreSQL outage.",
            ["what"],
            registry=r,
        )
        self.replica_errors = Counter(
            "cct_detector_alertmanager_replica_errors",
            "Posts an Alertmanager replica failed or refused, by replica URL; the alerts count "
            "as posted once another replica took them, and the failed one gets them again.",
            ["replica"],
            registry=r,
        )
        self.reported = Counter(
            "cct_detector_reports",
            "Incidents reported (one alert each), by level and how: own (the series' own "
            "incident), root_cause (a resource that explains an aggregate), adopted (open at "
            "a restart).",
            ["level", "how"],
            registry=r,
        )
        self.folded = Counter(
            "cct_detector_folded_incidents",
            "Aggregate incidents reported as context (ancestors) of the resources or children "
            "that explain them instead of as incidents of their own.",
            registry=r,
        )
        self.unattributed = Counter(
            "cct_detector_unattributed_incidents",
            "Aggregate incidents whose report (or watch check) waited because their "
            "attribution could not be read (drill-down or change events failed), by outcome: "
            "held (when the wait began), attributed (a later try no longer had to wait), "
            "fallback (judged without it: after a few tries, or at once when retrying cannot "
            "help).",
            ["outcome"],
            registry=r,
        )
        self.fast_path = Counter(
            "cct_detector_fast_path_values",
            "Resource values taken from the inventory (recently changed resources) instead "
            "of VictoriaMetrics.",
            registry=r,
        )


# Contributors, their change events, and the resources only the events know.
_Linked = tuple[list[Contributor], list[ChangeEvent], list[Child]]


def _matcher_holds(op: str, value: str, got: str) -> bool:
    if op == "=":
        return got == value
    if op == "!=":
        return got != value
    hit = re.fullmatch(value, got) is not None
    return hit if op == "=~" else not hit


def selector_matches(
    selector: str, labels: Mapping[str, str], only: Collection[str] | None = None
) -> bool | None:
    """Whether a label set passes the extra PromQL matchers (`a="x",b!="y",c=~"re"`); None
    when the selector is more than such a list (the caller cannot decide it). With `only`,
    matchers of other labels are passed: an aggregate's series lacks the labels it was
    selected by (a team's rollup selected by account has only `team`)."""
    if not selector.strip():
        return True
    matcher = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
    pos = 0
    ok = True
    while pos < len(selector):
        m = matcher.match(selector, pos)
        if m is None:
            return None
        name, op, raw = m.groups()
        value = raw.encode().decode("unicode_escape")
        if only is None or name in only:
            ok &= _matcher_holds(op, value, labels.get(name, ""))
        pos = m.end()
        if pos < len(selector):
            if selector[pos] != ",":
                return None
            pos += 1
    return ok


# Every query returns one label per series, the level's labels joined by KEY_SEP, instead of
# all labels: at 100,000 resources the response is less than half the size and each row
# parses into one string instead of a dict of ten (benchmarks/detector_speed.py).
KEY_LABEL = "cct_key"
KEY_SEP = "\x1f"  # ASCII unit separator: in no provider's ids or names
# Raw KEY_LABEL value -> key (None: a group without any of the level's labels), per level.
KeyCache = dict[str, SeriesKey | None]


# How long the label set a resource had before a re-tag is left out of the detector's reads:
# VictoriaMetrics serves a series that is no longer written for up to its staleness window
# (5 minutes by default); three times that leaves room for a late sample.
RELABEL_HOLD_S = 900.0


def _resource_identity(key: SeriesKey) -> tuple[str, str]:
    """What names one resource whatever its tags: the collector's inventory key."""
    labels = key.as_dict()
    return labels.get("provider", ""), labels.get("resource_id", "")


def _regrouped(
    old: SeriesKey, new: SeriesKey, levels: Iterable[str]
) -> list[tuple[SeriesKey, SeriesKey, SeriesKey | None]]:
    """The aggregates a re-tagged resource left and joined (`Engine.reassign`) at each
    watched level whose labels the re-tag changed (the team); None for no group joined (the
    tag removed: not detected at that level)."""
    out: list[tuple[SeriesKey, SeriesKey, SeriesKey | None]] = []
    for level in levels:
        if level == "resource":
            continue
        left, joined = SeriesKey.of(level, old.as_dict()), SeriesKey.of(level, new.as_dict())
        if left != joined:
            out.append((new, left, None if joined.unassigned else joined))
    return out


def group_query(level: str, inner: str) -> str:
    """`inner` summed per series of `level`, labelled only by its KEY_LABEL."""
    names = ", ".join(f'"{n}"' for n in LEVEL_LABELS[level])
    return f'sum by ({KEY_LABEL}) (label_join({inner}, "{KEY_LABEL}", "\\x1f", {names}))'


def series_key(level: str, metric: Mapping[str, str], cache: KeyCache) -> SeriesKey | None:
    """The key of a `group_query` result row, None for a group without any of the level's
    labels (e.g. resources without a team tag: not a team). ValueError when a label value
    held KEY_SEP. Cached: the same series arrive every cycle."""
    raw = metric.get(KEY_LABEL, "")
    if raw in cache:  # None is a cached answer too (an unassigned group)
        return cache[raw]
    names = LEVEL_LABELS[level]
    values = raw.split(KEY_SEP)
    if len(values) != len(names):
        raise ValueError(f"{level} key {raw!r} does not split into {len(names)} label values")
    key = SeriesKey.of(level, dict(zip(names, values, strict=True)))
    cache[raw] = None if key.unassigned else key
    return cache[raw]


@dataclass
class Vector:
    """Keys and values of an instant query; `rejected` counts series whose key was bad."""

    keys: list[SeriesKey] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejected: int = 0

    def values_of(self, wanted: Iterable[SeriesKey]) -> dict[SeriesKey, float]:
        """The values of those of `wanted` this vector holds."""
        want = set(wanted)
        return {k: v for k, v in zip(self.keys, self.values, strict=True) if k in want}


def parse_vector(level: str, rows: Sequence[dict[str, Any]], cache: KeyCache, out: Vector) -> None:
    """Append the keys and values of a `group_query` instant-query result to `out`, leaving
    out groups without any of the level's labels."""
    keys, values = out.keys, out.values
    for row in rows:
        try:
            key = series_key(level, row["metric"], cache)
            value = float(row["value"][1]) if key is not None else 0.0
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            out.rejected += 1  # a row that is not [labels, [time, value]]
            continue
        if key is not None:
            keys.append(key)
            values.append(value)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large response is parsed: the parse makes
    no cycles, yet the hundreds of thousands of objects it creates would trigger collections
    that rescan the detector's long-lived state (about half of the read's CPU at 100,000
    series)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Detector:
    """One detector: call `cycle(now)` every interval (the `serve` loop does)."""

    def __init__(self, cfg: DetectorSettings, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg.detection)
        self.vm = VictoriaMetrics(cfg.vm_url, timeout=max(2.0, cfg.interval_s))
        self.am = Alertmanager(
            env.alertmanager_urls(cfg.alertmanager_url),
            timeout=max(2.0, cfg.interval_s),
            on_replica_error=lambda url, _: self.metrics.replica_errors.labels(url).inc(),
        )
        self.metrics = metrics or Metrics()
        self.book = ReportBook(
            cfg.detection,
            self._attribute,
            Hooks(
                reported=self._reported,
                folded=lambda _: self.metrics.folded.inc(),
                unattributed=self._unattributed,
            ),
        )
        self.adopted = False  # the previous run's open incidents were taken over
        self._first_adopt_done = False
        # Fast path: new resources' keys -> (list run-rate, since when), until VM serves them.
        self.new_resources: dict[SeriesKey, tuple[float, float]] = {}
        # Resource label sets replaced by a re-tag -> when (see _follow_relabelled).
        self.superseded: dict[SeriesKey, float] = {}
        # The labels the inventory gave resources that changed in the last RELABEL_HOLD_S
        # (the fast path's reads), by (provider, resource_id): what they are now, and since.
        self._inventory_keys: dict[tuple[str, str], tuple[SeriesKey, float]] = {}
        self._changes_since: datetime | None = None
        self.key_cache: dict[str, KeyCache] = {}
        self._evictions_seen = 0
        self._wild_logged_at = -math.inf
        # What Alertmanager and PostgreSQL have not taken yet (lambdas.detector.outbox).
        self.unsent = AlertQueue()
        self.pending_rows = RowQueue()
        self.last_resend = -math.inf
        self.conn: psycopg.Connection[Any] | None = None
        self._conn_generation = 0  # of the DSN self.conn was opened with
        self.spool = Spool(Path(cfg.spool_file)) if cfg.spool_file else None
        # Incidents taken over from the spool at start -> (fingerprint, start): checked
        # against PostgreSQL's open rows once it answers (`_adopt`).
        self._from_spool: dict[SeriesKey, tuple[str, datetime]] = {}
        self._recover()

    def _recover(self) -> None:
        """Queue what the last run left in the spool, ahead of anything of this run: its
        rows are written before the open incidents are adopted (`_adopt`), so an incident
        that opened during an outage is taken over, not detected again as a new one."""
        if self.spool is None:
            return
        try:
            left = self.spool.load()
        except SpoolError as exc:
            self.metrics.errors.labels("spool").inc()
            log.error("spool of the last run not read", extra={"error": str(exc)})
            return
        for op in left.rows:
            self._queue(op)
        dropped = self.unsent.add(left.resolves())
        if dropped:
            self.metrics.dropped.labels("alert").inc(dropped)
        # Its open incidents are taken over at once, not when PostgreSQL next answers: until
        # then the engine would open the same episode again, with a new start.
        now = time.time()
        for row in still_open(left.rows):
            key = self._mine(row, watched=None)
            if key is not None and key not in self.reports:
                self._take_over(key, row, now)
                self._from_spool[key] = (row.fingerprint, row.started_at)
        if left.rows or left.alerts:
            log.warning(
                "undelivered alerts and anomaly rows of the last run queued",
                extra={
                    "alerts": len(left.alerts),
                    "resolves_replayed": len(self.unsent),
                    "rows": len(left.rows),
                    "open_incidents": len(self.reports),
                },
            )

    def _save(self) -> None:
        if self.spool is None:
            return
        try:
            self.spool.save(self.pending_rows, self.unsent)
        except SpoolError as exc:
            # Delivery goes on from memory; only a crash before it ends would lose the queue.
            self.metrics.errors.labels("spool").inc()
            log.error("spool not written", extra={"error": str(exc)})

    @property
    def reports(self) -> dict[SeriesKey, Report]:
        """The open reports by key (one alert and `anomalies` row each)."""
        return self.book.reports

    def flush(self) -> None:
        """At shutdown, one last try to deliver what is queued. What still cannot be
        delivered stays in the spool for the next detector, or, without a spool, is lost with
        the process (the next detector adopts the open incidents PostgreSQL has, and detects
        again what it does not); either way it is said."""
        try:
            if len(self.unsent):
                self._post([])
            self._write()
        except Exception:
            # Stopping anyway: what is left is reported below.
            log.exception("last delivery at shutdown failed")
        self._save()
        if len(self.unsent) or len(self.pending_rows):
            log.error(
                "stopping with undelivered alerts or anomaly rows",
                extra={
                    "alerts": len(self.unsent),
                    "rows": len(self.pending_rows),
                    "spool": str(self.spool.path) if self.spool else None,
                },
            )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ---------------------------------------------------------------- reading
    def _selector(self, level: str, labels: Mapping[str, str] | None = None) -> str:
        metric = RESOURCE_METRIC if level == "resource" else ROLLUP_METRIC
        return selector(metric, {**(labels or {}), "basis": self.cfg.basis}, self.cfg.selector)

    def read(self, now: float) -> Vector:
        out = Vector()
        for level in self.cfg.levels:
            with gc_paused():
                rows = self.vm.query(group_query(level, self._selector(level)), now)
                parse_vector(level, rows, self.key_cache.setdefault(level, {}), out)
        if out.rejected:
            self.metrics.rejected.inc(out.rejected)
            log.warning("series with unusable labels skipped", extra={"series": out.rejected})
        self._add_new_resources(now, out)
        if "resource" in self.cfg.levels:
            self._follow_relabelled(now, out)
        return out

    def _follow_relabelled(self, now: float, out: Vector) -> None:
        """A resource whose labels changed (its team or env tag) is the same resource, not a
        new one stepping up from nothing: a re-tag paged `critical day0_step` and started a
        playbook on an unchanged instance. Its state moves to the new labels
        (`Engine.rename`), and the old label set, still served by VictoriaMetrics until it
        goes stale, is left out for `RELABEL_HOLD_S`. A resource with an open incident keeps
        it under the old labels (its alert carries them; it resolves once that series is no
        longer read) and its state is copied to the new labels (`Engine.fork`), so a cost still
        high is reported there measured from its level before the episode: it used to start
        afresh there, a step from nothing (`day0_step` from $0).

        A label set the inventory gives the resource again (a re-tag undone within the hold)
        is its current one again, not a stale series: it was left out for the hold, with
        its teams' shares where the first re-tag had moved them (a false step of the team
        it came back to)."""
        self.superseded = {
            k: since for k, since in self.superseded.items() if now - since < RELABEL_HOLD_S
        }
        back = {k for k in out.keys if k in self.superseded and self._current_key(k) == k}
        for k in back:
            del self.superseded[k]
        fresh = [
            k
            for k in out.keys
            if k.level == "resource"
            and (k not in self.engine or k in back)
            and k not in self.superseded
        ]
        if fresh:
            # The label set read last: an older one stays known until evicted.
            known: dict[tuple[str, str], SeriesKey] = {}
            for k in self.engine.keys:
                if k.level == "resource" and k in self.engine:
                    ident = _resource_identity(k)
                    held = known.get(ident)
                    # A tie (both registered in the same cycle) goes to the one not left
                    # behind by an earlier re-tag.
                    if held is None or (self.engine.seen_at(k), k not in self.superseded) > (
                        self.engine.seen_at(held),
                        held not in self.superseded,
                    ):
                        known[ident] = k
            served = set(out.keys)
            # Per resource, the label set it had before this read's re-tags: its teams' shares
            # move from there to where it ends (a second re-tag in the same read starts from
            # the first's labels, whose key is gone by the time the shares move).
            origin: dict[tuple[str, str], SeriesKey] = {}
            for key in fresh:
                ident = _resource_identity(key)
                now_key = self._current_key(key)
                if now_key is not None and now_key != key and now_key in served:
                    # A label set the inventory no longer gives it while the one it gives is
                    # read (re-tagged twice, launched untagged and tagged at once: the older
                    # series may become queryable seconds after the newer): stale, held out.
                    self.superseded[key] = now
                    continue
                old = known.get(ident)
                if old is None or old == key:
                    continue
                # Back to labels still followed for the open incident they kept: resumed.
                moved = key not in self.engine and self.engine.rename(old, key)
                if moved or key in self.engine or self.engine.fork(old, key):
                    origin.setdefault(ident, old)
                    known[ident] = key
                    self.superseded[old] = now
                    self.metrics.relabelled.inc()
                    log.info(
                        "resource relabelled",
                        extra={
                            "series": key.describe(),
                            "before": dict(old.labels),
                            "open_incident_kept_under_old_labels": not moved,
                        },
                    )
            # The collector moved its cost between the teams' totals in the same write.
            moves = [
                move
                for ident, start in origin.items()
                for move in _regrouped(start, known[ident], self.cfg.levels)
            ]
            self.engine.reassign(now, moves)
        if self.superseded:
            kept = [n for n, k in enumerate(out.keys) if k not in self.superseded]
            if len(kept) < len(out.keys):
                out.keys = [out.keys[n] for n in kept]
                out.values = [out.values[n] for n in kept]

    def _current_key(self, key: SeriesKey) -> SeriesKey | None:
        """The label set the inventory gave `key`'s resource at its latest change within
        RELABEL_HOLD_S (None: no change read, or the fast path is off)."""
        seen = self._inventory_keys.get(_resource_identity(key))
        return None if seen is None else seen[0]

    def _fast_path(self) -> bool:
        return (
            "resource" in self.cfg.levels
            and self.cfg.basis == "list"
            and self.cfg.new_resource_window_s > 0
        )

    def _add_new_resources(self, now: float, out: Vector) -> None:
        """Take the run-rate of recently changed resources from the inventory: for
        `new_resource_window_s` after a change event arrives, the inventory's current rate
        replaces (or, for a series VictoriaMetrics does not serve yet, adds) the resource's
        value. A new series becomes queryable seconds after it is written (a new resource,
        the commonest cost anomaly, would be the slowest to alert), and until then an
        existing one may show its previous value; the inventory row is committed with the
        event."""
        if not self._fast_path():
            return
        try:
            conn = self._db()
            # The first read after a start covers the day-0 window: resources changed while
            # the detector was down may not be queryable yet either.
            first = now - max(self.cfg.interval_s, self.cfg.detection.day0_window_s)
            since = self._changes_since or datetime.fromtimestamp(first, tz=UTC)
            # A little overlap: a batch that committed after our last read may carry a
            # receipt time just before it.
            changed, clock = store.changed_resources(
                conn, since - timedelta(seconds=5), self.cfg.event_lookback_s
            )
            with translate_errors("end read"):
                conn.commit()
            self._changes_since = clock
        except StoreError as exc:
            self._db_failed(exc)
            changed = []
        self._take_changes(now, changed)
        if not self.new_resources:
            return
        for key, (_, since_s) in list(self.new_resources.items()):
            if now - since_s > self.cfg.new_resource_window_s:
                del self.new_resources[key]
        where = {k: n for n, k in enumerate(out.keys) if k in self.new_resources}
        for key, (value, _) in self.new_resources.items():
            if key in where:
                out.values[where[key]] = value
            else:
                out.keys.append(key)
                out.values.append(value)
        self.metrics.fast_path.inc(len(self.new_resources))

    def _take_changes(self, now: float, changed: Iterable[store.InventoryResource]) -> None:
        """The fast path's run-rates of the resources the inventory changed, and their
        labels now (`_inventory_keys`, kept for RELABEL_HOLD_S)."""
        self._inventory_keys = {
            ident: seen
            for ident, seen in self._inventory_keys.items()
            if now - seen[1] < RELABEL_HOLD_S
        }
        # One label set per resource: after a re-tag its earlier one is no run-rate any more.
        held = {_resource_identity(k): k for k in self.new_resources}
        for res in changed:
            # Another detector's resources: neither its run-rates nor its labels are ours
            # (one re-tagged out of this one's selector is read at its old labels until
            # VictoriaMetrics stops serving them, as without this path).
            if selector_matches(self.cfg.selector, res.labels) is False:
                continue
            key = SeriesKey.of("resource", res.labels)
            ident = _resource_identity(key)
            self._inventory_keys[ident] = (key, now)
            earlier = held.get(ident)
            if earlier is not None and earlier != key:
                self.new_resources.pop(earlier, None)
            held[ident] = key
            if res.usd_per_hour is None:  # unpriced: no run-rate series either
                self.new_resources.pop(key, None)
            else:  # the window starts again with every change
                self.new_resources[key] = (res.usd_per_hour, now)

    def bootstrap(self, now: float) -> int:
        """Load hourly means of the last `bootstrap_hours` so baselines are warm at once."""
        if self.cfg.bootstrap_hours <= 0:
            return 0
        end_hour = int(now // HOUR_S) - 1
        first_hour = end_hour - self.cfg.bootstrap_hours + 1
        loaded = 0
        for level in self.cfg.levels:
            expr = group_query(level, f"avg_over_time({self._selector(level)}[1h])")
            # A range query's point at T averages (T-1h, T]: the hour that starts 1 h earlier.
            rows = self.vm.query_range(
                expr, (first_hour + 1) * HOUR_S, (end_hour + 1) * HOUR_S, "1h"
            )
            cache = self.key_cache.setdefault(level, {})
            keys: list[SeriesKey] = []
            kept = []
            for r in rows:
                try:
                    key = series_key(level, r["metric"], cache)
                except ValueError:
                    continue  # counted by every cycle's read
                if key is not None:
                    keys.append(key)
                    kept.append(r)
            rows = kept
            if not rows:
                continue
            hourly = np.full((len(rows), end_hour - first_hour + 1), np.nan)
            for n, r in enumerate(rows):
                for ts, val in r["values"]:
                    col = round(float(ts)) // HOUR_S - 1 - first_hour
                    if 0 <= col < hourly.shape[1]:
                        hourly[n, col] = float(val)
            self.engine.seed_history(self.engine.index_of(keys), first_hour, hourly)
            loaded += len(rows)
        return loaded

    def _seed_changes(self, now: float) -> None:
        """Before the first evaluation after a start: the resources whose change events
        arrived within the day-0 window are evaluated from their run-rate before the change
        (a new resource from nothing), as if the detector had been running; every other
        series is taken at its current value. When PostgreSQL cannot be read, the cycle
        evaluates without them (alerting does not wait for PostgreSQL): those changes are
        then taken as existing series, as before this seeding existed."""
        if "resource" not in self.cfg.levels:
            return
        try:
            conn = self._db()
            changes = store.changes_within(
                conn, self.cfg.detection.day0_window_s, self.cfg.event_lookback_s
            )
            with translate_errors("end read"):
                conn.commit()
        except StoreError as exc:
            self._db_failed(exc)
            log.warning("changes before the start not read: evaluating without them")
            return
        keys, before = [], []
        for res, rate in changes:
            if res.usd_per_hour is None or selector_matches(self.cfg.selector, res.labels) is False:
                continue
            # A list rate says nothing of a reconciled series' level; a new series is new.
            if rate is not None and self.cfg.basis != "list":
                continue
            keys.append(SeriesKey.of("resource", res.labels))
            before.append(0.0 if rate is None else rate)
        self.engine.seed_changes(now, self.engine.index_of(keys), before)
        log.info("changes before the start seeded", extra={"series": len(keys)})

    # ---------------------------------------------------------------- attribution
    def _drill_down(self, key: SeriesKey, now: float) -> tuple[list[Contributor], list[Child]]:
        """Children and resources of an aggregate, ranked by their growth: against what the
        engine expected of a resource it evaluates, else against the value one day-0 window
        ago. Recently changed resources count with their inventory run-rate (the fast
        path), so a resource too new to be queryable is found too. The largest growers of
        each level, and, for a service or a team, every resource."""
        if key.level == "resource":
            return [], []
        before = now - self.cfg.detection.day0_window_s
        out: list[Contributor] = []
        resources: list[Child] = []
        child_levels = [CHILD_LEVEL[key.level]]
        if child_levels[0] != "resource":
            child_levels.append("resource")
        for level in child_levels:
            expr = group_query(level, self._selector("resource", key.as_dict()))
            # Children are not evaluated series: keep them out of the long-lived cache.
            cache: KeyCache = {}
            now_rows, old_rows = Vector(), Vector()
            parse_vector(level, self.vm.query(expr, now), cache, now_rows)
            parse_vector(level, self.vm.query(expr, before), cache, old_rows)
            old = dict(zip(old_rows.keys, old_rows.values, strict=True))
            current = dict(zip(now_rows.keys, now_rows.values, strict=True))
            if level == "resource":
                for rkey, (value, _) in self.new_resources.items():
                    if key.contains(rkey):
                        current[rkey] = value
                for gone in self.superseded:  # a re-tagged resource's old labels, still served
                    current.pop(gone, None)
                old.update(self._expected(list(current)))
            children = [Child(level, k.as_dict(), old.get(k, 0.0), v) for k, v in current.items()]
            out += rank_contributors(children)
            # Only services and teams have siblings to measure shares in.
            if level == "resource" and DEPTH[key.level] == 1:
                resources = children
        return out, resources

    def _expected(self, keys: list[SeriesKey]) -> dict[SeriesKey, float]:
        """What the engine expected of those of `keys` it evaluates (and has a value for)."""
        known = [k for k in keys if k in self.engine]
        if not known:
            return {}
        values = self.engine.expected_now(self.engine.index_of(known))
        return {k: float(v) for k, v in zip(known, values, strict=True) if math.isfinite(v)}

    def _events(
        self,
        conn: psycopg.Connection[Any],
        key: SeriesKey,
        started: float,
        now: float,
        contributors: Sequence[Contributor],
    ) -> _Linked:
        """Linked change events; resources that only the events know (too new to be
        queryable) are added to the contributors, and returned."""
        ids = [c.labels["resource_id"] for c in contributors if "resource_id" in c.labels]
        since = datetime.fromtimestamp(started - self.cfg.event_lookback_s, tz=UTC)
        events = store.change_events(
            conn,
            key.as_dict(),
            since=since,
            until=datetime.fromtimestamp(now, tz=UTC),
            resource_ids=ids,
        )
        if key.level == "resource":  # its own events, biggest run-rate increase first
            events.sort(key=lambda e: (-e.rate_change, e.event_time, e.event_id))
            return [], events[:10], []
        known = set(ids)
        unknown = [e for e in events if e.resource_id not in known]
        inventory = store.inventory_labels(conn, [(e.provider, e.resource_id) for e in unknown])
        labels = {
            (e.provider, e.resource_id): inventory.get(
                (e.provider, e.resource_id),
                {"provider": e.provider, "resource_id": e.resource_id},
            )
            for e in unknown
        }
        # The events are read by the aggregate's dimensions only (a team spans accounts),
        # so they include resources outside the detector's selector: another shard's, which
        # this detector reported as root causes of its own rollups. The selector applies to
        # them as to every query: on their inventory labels (a resource the inventory does
        # not know has only its provider and id to match), kept when it is undecidable.
        outside = {
            k for k, found in labels.items() if selector_matches(self.cfg.selector, found) is False
        }
        events = [e for e in events if (e.provider, e.resource_id) not in outside]
        new = [e for e in unknown if (e.provider, e.resource_id) not in outside]
        new = [e for e in new if e.rate_change > 0]
        extra = [
            Child(
                "resource",
                labels[(e.provider, e.resource_id)],
                e.usd_per_hour_before or 0.0,
                e.usd_per_hour_after or 0.0,
            )
            for e in new
        ]
        if extra:
            resources = [
                Child(c.level, c.labels, c.expected, c.observed)
                for c in contributors
                if c.level == "resource"
            ]
            others = [c for c in contributors if c.level != "resource"]
            contributors = others + rank_contributors(resources + extra)
        return list(contributors), link_change_events(contributors, events), extra

    # ---------------------------------------------------------------- one cycle
    def _db(self) -> psycopg.Connection[Any]:
        # Called before a cycle's reads and before its writes: switching to a rotated login
        # here abandons at most a finished read; pending rows stay queued until committed.
        dsn = DsnSource.of(self.cfg.pg_dsn)
        if self.conn is not None and dsn.rotated(self._conn_generation):
            log.info("postgres credentials rotated; reconnecting")
            self.conn.close()
        if self.conn is None or self.conn.closed:
            self.conn = connect(dsn, application_name="cct-detector")
            self._conn_generation = dsn.generation
        return self.conn

    def _db_failed(self, exc: StoreError) -> None:
        self.metrics.errors.labels("postgres").inc()
        log.warning("postgres call failed", extra={"error": str(exc), "retryable": exc.retryable})
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _attribute(self, key: SeriesKey, started: float, now: float) -> Attribution:
        """What explains the increase of `key`: its drill-down (an aggregate's) and change
        events. A part that fails is named in `Attribution.unread`, not taken for "nothing
        explains it": the report book waits for it (`reports.MAX_UNREAD_TRIES`) and logs
        that once per series (`_unattributed`); every failed call is counted."""
        contributors: list[Contributor] = []
        resources: list[Child] = []
        unread: list[Unread] = []
        if key.level != "resource":  # a resource's report needs no drill-down
            try:
                contributors, resources = self._drill_down(key, now)
            except VMError as exc:
                self.metrics.errors.labels("victoriametrics").inc()
                log.debug("drill-down failed", extra={"error": str(exc), "series": key.describe()})
                unread.append(Unread("victoriametrics", str(exc), exc.retryable))
        try:
            contributors, events, extra = self._events(self._db(), key, started, now, contributors)
        except StoreError as exc:
            self._db_failed(exc)
            unread.append(Unread("postgres", str(exc), exc.retryable))
            events, extra = [], []
        if extra and DEPTH[key.level] == 1:
            served = {c.labels.get("resource_id") for c in resources}
            resources += [c for c in extra if c.labels.get("resource_id") not in served]
        return Attribution(contributors, events, resources, unread=tuple(unread))

    def _unattributed(self, key: SeriesKey, outcome: str, tries: int, why: Unread | None) -> None:
        """Counted by outcome, and logged once per run of failed tries, not every cycle."""
        self.metrics.unattributed.labels(outcome).inc()
        extra: dict[str, Any] = {"series": key.describe(), "tries": tries}
        if why is not None:
            extra.update(error=why.describe(), retryable=why.retryable)
        if outcome == HELD:
            log.warning("attribution failed; the incident waits for it", extra=extra)
        elif outcome == FALLBACK:
            log.warning("attribution failed; judged without it", extra=extra)
        else:
            log.info("attribution read after failing", extra=extra)

    def cycle(self, now: float) -> list[Transition]:
        """Evaluate once at `now`. Raises VMError when the series cannot be read (nothing
        changed then); every later failure is counted and retried on the next cycle."""
        started = time.perf_counter()
        try:
            vector = self.read(now)
        except VMError:
            self.metrics.errors.labels("victoriametrics").inc()
            raise
        if self.engine.hour is None:
            self._seed_changes(now)
        idx = self.engine.index_of(vector.keys)
        wild = self.engine.out_of_range_total
        transitions = self.engine.observe(now, idx, np.asarray(vector.values, dtype=np.float64))
        if self.engine.out_of_range_total > wild:
            skipped = self.engine.out_of_range_total - wild
            self.metrics.out_of_range.inc(skipped)
            # VictoriaMetrics serves a bad sample for minutes: one line a minute, not a cycle.
            if now - self._wild_logged_at >= 60.0:
                self._wild_logged_at = now
                log.warning("values beyond any cost rate skipped", extra={"values": skipped})
        if not self.adopted:
            self._adopt(now, set(vector.keys))
        open_now = {inc.key: inc for inc in self.engine.open_incidents()}
        for tr in transitions:
            self.metrics.transitions.labels(tr.kind).inc()
        posted = self.book.step(transitions, open_now, vector.values_of, now)
        alerts = self._settle(now, open_now, posted)
        alerts += self._resend(now, posted)
        # Saved after each delivery: a crash right after one must not replay it (a resolved
        # alert posted again as firing would page until it expires).
        self._post(alerts)
        self._save()
        self._write()
        self._save()
        self._forget_evicted()
        self.metrics.series.set(len(vector.keys))
        self.metrics.known.set(self.engine.series_count)
        self.metrics.open.set(len(self.reports))
        self.metrics.cycle.observe(time.perf_counter() - started)
        return transitions

    def _resend(self, now: float, posted: set[SeriesKey]) -> list[dict[str, Any]]:
        """Every `resend_s`, the open reports not posted this cycle, so Alertmanager keeps
        them firing (and the rows their current figures)."""
        if now - self.last_resend < self.cfg.resend_s:
            return []
        self.last_resend = now
        out = []
        for key, report in self.reports.items():
            if key not in posted:
                out.append(self._alert(report, now + self.cfg.alert_ttl_s))
                self._queue(Upsert(self._row(report)))
        return out

    def _forget_evicted(self) -> None:
        if self.engine.evicted_total != self._evictions_seen:
            # Forget the raw label sets of evicted series too, or churn grows the cache.
            self._evictions_seen = self.engine.evicted_total
            for level, cache in self.key_cache.items():
                self.key_cache[level] = {
                    raw: k for raw, k in cache.items() if k is None or k in self.engine
                }

    def _settle(
        self, now: float, open_now: Mapping[SeriesKey, OpenIncident], posted: set[SeriesKey]
    ) -> list[dict[str, Any]]:
        """Resolve the reports none of whose sources is open, escalate those a source raised,
        and post those touched this cycle (with their current figures)."""
        out: list[dict[str, Any]] = []
        for report in self.book.close(open_now):
            out.append(self._alert(report, now))
            self._queue(Resolve(self._row(report), now))
        for key, report in self.reports.items():
            severity = self.book.severity(report, open_now)
            if SEVERITIES.index(severity) > SEVERITIES.index(report.severity):
                out += self._escalate(report, severity, now)
                posted.add(key)
            elif key in posted:
                out.append(self._alert(report, now + self.cfg.alert_ttl_s))
                self._queue(Upsert(self._row(report)))
        return out

    def _reported(self, report: Report, how: str, events: Sequence[ChangeEvent]) -> None:
        self.metrics.reported.labels(report.key.level, how).inc()
        if events:
            newest = max(e.event_time for e in events).timestamp()
            self.metrics.event_to_alert.observe(max(0.0, report.last_seen - newest))

    def _adopt(self, now: float, watched: Collection[SeriesKey]) -> None:
        """Take over the incidents a previous run left open (a restart, a new pod): they are
        re-sent as before, so Alertmanager does not resolve them while the cost is still
        high, and resolve when their value falls back (or the engine takes them over)."""
        if not self._first_adopt_done:
            # The spool's incidents count their absence from the first cycle, not from the
            # start (the history load before it may take longer than stale_after_s).
            self._first_adopt_done = True
            for spooled in self._from_spool:
                if spooled in self.reports:
                    self.reports[spooled].last_seen = now
        if len(self.pending_rows):
            # The last run's spooled rows first: the incidents it opened during an outage are
            # open rows to adopt. Rows of this run's own incidents go too, skipped below.
            self._write()
            if len(self.pending_rows):
                return
        try:
            rows = store.open_rows(self._db(), self.cfg.levels)
            with translate_errors("end read"):
                self._db().commit()
        except StoreError as exc:
            self._db_failed(exc)
            return  # the next cycle tries again
        self.adopted = True
        self._drop_stale_spool({(row.fingerprint, row.started_at) for row in rows}, now)
        for row in rows:
            key = self._mine(row, watched)
            if key is None:
                continue
            own = self.reports.get(key)
            if own is not None and (
                fingerprint(own.labels),
                datetime.fromtimestamp(own.started_at, tz=UTC),
            ) == (row.fingerprint, row.started_at):
                # Opened by this run before the adoption could read PostgreSQL, or taken over
                # from the spool (`_recover`).
                continue
            self._take_over(key, row, now)
        if rows:
            log.info("open incidents adopted", extra={"incidents": len(self.reports)})

    def _mine(
        self, row: store.AnomalyRow, watched: Collection[SeriesKey] | None
    ) -> SeriesKey | None:
        """The key of a stored or spooled incident this detector watches, else None. An
        aggregate lacks the labels it was selected by (a team's rollup selected by account
        has `team` only): it is this detector's when it reads that series (`watched`; None:
        not known yet, so not this detector's yet)."""
        if row.level not in self.cfg.levels:
            return None
        dims = {k: v for k, v in row.dimensions.items() if k in LEVEL_LABELS[row.level]}
        key = SeriesKey.of(row.level, dims)
        if selector_matches(self.cfg.selector, dims) is False and (
            selector_matches(self.cfg.selector, dims, LEVEL_LABELS[row.level]) is False
            or watched is None
            or key not in watched
        ):
            return None
        return key

    def _drop_stale_spool(self, open_rows: set[tuple[str, datetime]], now: float) -> None:
        """Incidents taken over from the spool that PostgreSQL does not hold open (resolved
        or escalated since, the spool being older than the last delivery) are not this run's
        to report: their alert is resolved, and a row PostgreSQL has open for the key is
        adopted instead."""
        for key, incident in self._from_spool.items():
            report = self.reports.get(key)
            if report is not None and incident not in open_rows:
                del self.reports[key]
                self.unsent.add([self._alert(report, now)])
                log.info(
                    "spooled incident not open in PostgreSQL, dropped", extra={"fp": incident[0]}
                )
        self._from_spool = {}

    def _take_over(self, key: SeriesKey, row: store.AnomalyRow, now: float) -> None:
        """Report an incident a previous run left open (stored or spooled) as this run's."""
        labels = alert_labels(key, row.rule, row.severity)
        if fingerprint(labels) != row.fingerprint or key in self.reports:
            # Written under other labels (an older contract) or a duplicate: it cannot be
            # re-sent as the same alert, so it is closed.
            self._queue(Resolve(row, now))
            log.info("open anomaly of other labels closed", extra={"fp": row.fingerprint})
            return
        self.reports[key] = Report(
            key=key,
            labels=labels,
            started_at=row.started_at.timestamp(),
            rule=row.rule,
            severity=row.severity,
            expected=row.expected_usd_per_hour,
            observed=row.observed_usd_per_hour,
            baseline="adopted",
            contributors=[dict(c) for c in row.contributors],
            events=[dict(e) for e in row.change_events],
            own=False,
            stored_ancestors=[dict(a) for a in row.ancestors],
            adopted=True,
            last_seen=now,
            opened_delta=row.observed_usd_per_hour - row.expected_usd_per_hour,
            opened_expected=row.expected_usd_per_hour,
        )
        self.metrics.reported.labels(row.level, "adopted").inc()

    def _escalate(self, report: Report, severity: str, now: float) -> list[dict[str, Any]]:
        """The incident's alert with its new severity: severity is a label, so this is a new
        alert for Alertmanager. The old one is resolved in the same post, pointing at its
        successor; both share the incident's `startsAt` and dimension labels (Alertmanager
        groups by dimensions, not severity, so a receiver sees one group with one firing
        alert). The `anomalies` row follows the new fingerprint: one row per incident."""
        old = self._alert(report, now)
        old_fingerprint = fingerprint(report.labels)
        report.escalated_from = report.escalated_from or report.severity
        report.severity = severity
        report.labels = alert_labels(report.key, report.rule, severity)
        old["annotations"][A_SUPERSEDED_BY] = fingerprint(report.labels)
        self._queue(Escalate(self._row(report), old_fingerprint))
        return [old, self._alert(report, now + self.cfg.alert_ttl_s)]

    def _queue(self, op: RowOp) -> None:
        dropped = self.pending_rows.add(op)
        if dropped:
            self.metrics.dropped.labels("row").inc(dropped)
            log.error("anomaly row queue full, oldest dropped", extra={"rows": dropped})

    def _write(self) -> None:
        """Write the pending incident rows in order, all or none; kept for the next cycle
        when PostgreSQL is unavailable. A row PostgreSQL refuses (bad data: retrying cannot
        help) is logged, counted and dropped, so it cannot block the rows behind it."""
        if not self.pending_rows:
            return
        ops = list(self.pending_rows)
        try:
            self._apply(ops)
            self.pending_rows.done(len(ops))
            return
        except StoreError as exc:
            self._db_failed(exc)
            if exc.retryable:
                return
        written = 0  # or dropped; taken off the queue once, not one by one
        try:
            for op in ops:
                try:
                    self._apply([op])
                except StoreError as exc:
                    self._db_failed(exc)
                    if exc.retryable:
                        return
                    log.error(
                        "anomaly row refused, dropped",
                        extra={"error": str(exc), "fingerprint": op.row.fingerprint},
                    )
                written += 1
        finally:
            self.pending_rows.done(written)

    def _apply(self, ops: Sequence[RowOp]) -> None:
        conn = self._db()
        apply_ops(conn, ops)
        with translate_errors("commit anomalies"):
            conn.commit()

    def _alert(self, r: Report, ends_at: float) -> dict[str, Any]:
        alert = build_alert(
            r.labels,
            started_at=r.started_at,
            ends_at=ends_at,
            expected=r.expected,
            observed=r.observed,
            deviation=r.deviation,
            baseline=r.baseline,
            contributors=r.contributors,
            change_events=r.events,
            ancestors=r.ancestors_json(),
        )
        if r.escalated_from:
            alert["annotations"][A_ESCALATED_FROM] = r.escalated_from
        return alert

    def _row(self, r: Report) -> store.AnomalyRow:
        return store.AnomalyRow(
            fingerprint=fingerprint(r.labels),
            started_at=datetime.fromtimestamp(r.started_at, tz=UTC),
            rule=r.rule,
            level=r.key.level,
            severity=r.severity,
            dimensions=r.key.as_dict(),
            expected_usd_per_hour=r.expected,
            observed_usd_per_hour=r.observed,
            deviation=r.deviation,
            contributors=r.contributors,
            change_events=r.events,
            ancestors=r.ancestors_json(),
        )

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        """Post, keeping what failed retryably for the next cycle: a resolve must never be
        lost. When Alertmanager refuses the batch (4xx), each alert is posted alone so that
        only the refused ones are dropped (logged and counted). With several replicas a post
        is done once one took it; the others get it again with the next post (`Alertmanager`)."""
        dropped = self.unsent.add(alerts)
        if dropped:
            self.metrics.dropped.labels("alert").inc(dropped)
            log.error("alert queue full, oldest dropped", extra={"alerts": dropped})
        batch = self.unsent.take()
        if not batch:
            # A resolve a replica missed must reach it even when nothing else is open.
            self.am.post([])
            return
        try:
            self.am.post(batch)
            self.metrics.posted.inc(len(batch))
            return
        except AlertmanagerError as exc:
            self.metrics.errors.labels("alertmanager").inc()
            if exc.retryable:
                self.unsent.add(batch)
                return
        for n, alert in enumerate(batch):
            try:
                self.am.post([alert])
                self.metrics.posted.inc()
            except AlertmanagerError as exc:
                self.metrics.errors.labels("alertmanager").inc()
                if exc.retryable:
                    self.unsent.add(batch[n:])
                    return
                log.error(
                    "alertmanager refused an alert, dropped",
                    extra={"error": str(exc), "labels": alert["labels"]},
                )


def stuck_after_s(interval_s: float) -> float:
    """How long one cycle may run before the detector reports itself not ready: a database
    or VictoriaMetrics call that hangs is cut off within about 15 s (connection liveness,
    client timeouts), so a cycle this long is stuck, not slow."""
    return max(60.0, 10.0 * interval_s)


def serve() -> None:
    """Run until SIGTERM/SIGINT."""
    cfg = DetectorSettings.from_env()
    metrics = Metrics()
    # Why the detector is not ready yet, or None once a cycle has succeeded.
    state: dict[str, str | None] = {"not_ready": "history not loaded yet"}
    # When the last cycle ended (monotonic): a cycle stuck on a dependency says so to the
    # readiness probe instead of the last cycle's "ready".
    ended = {"at": time.monotonic()}

    def not_ready() -> str | None:
        stuck = time.monotonic() - ended["at"]
        if state["not_ready"] is None and stuck > stuck_after_s(cfg.interval_s):
            return f"the current cycle has not ended for {stuck:.0f} s"
        return state["not_ready"]

    shell = ThreadedShell(
        metrics.registry,
        cfg.host,
        cfg.port,
        not_ready,
        header_timeout_s=cfg.header_timeout_s,
    )
    shell.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    detector = Detector(cfg, metrics)
    try:
        while not stop.is_set():
            try:
                began = time.monotonic()
                loaded = detector.bootstrap(time.time())
                # The seconds before the first cycle: the load and the records it seeds (about
                # 25 s per 100,000 series on one core: docs/detection.md).
                log.info(
                    "history loaded",
                    extra={"series": loaded, "seconds": round(time.monotonic() - began, 1)},
                )
                state["not_ready"] = "no detection cycle has completed yet"
                break
            except VMError as exc:
                log.warning("history not loaded yet", extra={"error": str(exc)})
                stop.wait(cfg.interval_s)
        last = -math.inf
        while not stop.is_set():
            started = time.monotonic()
            now = time.time()
            if now < last:
                # The wall clock stepped back (NTP, a VM resumed): the engine's hours only go
                # forward, so the cycle runs at the last time until the clock catches up.
                log.warning("clock went backwards", extra={"seconds": round(last - now, 3)})
                now = last
            last = now
            try:
                detector.cycle(now)
                state["not_ready"] = None
            except VMError as exc:
                state["not_ready"] = f"last cycle failed: {exc}"
                log.warning("cycle failed", extra={"error": str(exc), "retryable": exc.retryable})
            except Exception as exc:
                # A bug or an unforeseen input. A crash would lose the queued resolves and
                # rows and reload three weeks of history; a cause that persists is a
                # not-ready pod with the reason instead of a crash loop.
                metrics.errors.labels("internal").inc()
                state["not_ready"] = f"last cycle failed: {type(exc).__name__}: {exc}"
                log.exception("cycle failed with an unexpected error")
            ended["at"] = time.monotonic()
            # Monotonic: a wall clock stepped back by X would otherwise add X to the wait.
            stop.wait(max(0.0, cfg.interval_s - (ended["at"] - started)))
    finally:
        shell.stop()
        detector.flush()
        detector.close()
