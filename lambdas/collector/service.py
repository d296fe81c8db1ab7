"""The collector's I/O shell: HTTP input from Fluent Bit, batching writers to PostgreSQL and
VictoriaMetrics, the heartbeat, catalog refresh and the periodic AWS inventory sync.

A request's changes are split by resource over `writers` shards; each shard's writer task
drains everything waiting for it (up to `batch_max_events`) into one write, so many small
Fluent Bit flushes cost the same round trip as one large one. The HTTP response is
sent after PostgreSQL has committed and the samples are queued for the VictoriaMetrics writer
task (bounded queue: a slow VictoriaMetrics slows ingestion instead of growing memory). A
VictoriaMetrics failure is retried with the heartbeat (which re-emits every live value)
rather than failing the batch, because PostgreSQL already holds the events and a Fluent Bit
retry would be dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import reprlib
import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lambdas.collector.core import (
    Applied,
    Factors,
    Labels,
    Rollups,
    Tombstone,
    Tombstones,
    apply_changes,
    group_factor,
    held_event_id,
    resource_lines,
)
from lambdas.collector.model import (
    EventIgnored,
    EventRejected,
    Resource,
    ResourceChange,
    change_of,
)
from lambdas.collector.normalize import ChangeLimits, check_change, held_by, normalize
from lambdas.common.edge import BodyTimeout, holds_nul, read_body
from lambdas.common.httpshell import Site, add_ops_routes, serving, signal_stop
from lambdas.common.pg import DsnSource, needs_reconnect
from lambdas.common.settings import (
    SettingsError,
    env_float,
    env_int,
    env_str,
    pg_dsn_source,
    vm_write_url,
)
from lambdas.contract import TAG_LABELS
from lambdas.ingest.exposition import body
from lambdas.pricing.catalog import PriceBook
from lambdas.store import inventory as store
from lambdas.store.db import StoreError, aconnect
from lambdas.store.pricing import aload_price_book

# What the dead letter of a record that cannot be encoded as JSON keeps: its outline (a
# plain repr of such a record would recurse as deep as the encoder did).
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 8, 200, 200

log = logging.getLogger(__name__)

LATE_MS = 1000
GC_GEN0_THRESHOLD = 50_000
VM_QUEUE_BATCHES = 4
# The most a price-book refresh may wait for PostgreSQL. A query already sent and acknowledged
# when the database's replies stop (a partition) waits for TCP keepalives to give up, about a
# minute, and the collector reads as not ready all that time; past this the reader is dropped
# and the next round opens a new one. The refresh reads a few thousand rows in milliseconds.
READER_TIMEOUT_S = 10.0
# How long a container's deletion is kept in memory; the table keeps it as its retention says
# (`cct db retention`, 30 days by default). A write dated before a deletion older than this is
# far beyond any redelivery, and the billing export's reconciliation corrects it.
TOMBSTONES_KEPT = timedelta(days=30)
# Tries to delete rows committed live under a deleted container (about 4 minutes with the
# back-off); past them the check at start deletes them.
BURIED_ATTEMPTS = 10


@dataclass(frozen=True)
class CollectorSettings:
    # CCT_PG_DSN_FILE (a DSN file Vault Agent keeps current; re-read on every connect) or
    # CCT_PG_DSN.
    pg_dsn: str | DsnSource
    # VictoriaMetrics base URL of the imports (CCT_VM_WRITE_URL, else CCT_VM_URL): the collector
    # only writes.
    vm_url: str
    # Bearer token Fluent Bit must send. From CCT_COLLECTOR_TOKEN_FILE (a mounted secret) or
    # CCT_COLLECTOR_TOKEN; the collector refuses to start without one.
    token: str
    # Loopback by default; the bundle sets 0.0.0.0:8080 in the pod (docs/architecture.md 2).
    host: str = "127.0.0.1"
    port: int = 18081
    # A Fluent Bit chunk is at most ~2 MiB; 8 MiB leaves room without letting one request
    # hold the writer for long.
    max_body_bytes: int = 8 * 1024 * 1024
    max_records: int = 20_000
    # Events per writer batch: large enough to amortise round trips, small enough that a
    # batch commits in tens of milliseconds.
    batch_max_events: int = 5_000
    # Parallel writer shards (PostgreSQL connections); a resource always uses the same one.
    writers: int = 2
    # Inventory rows kept in memory (LRU) so a resource's next event needs no read; about
    # 1 KiB each.
    cache_resources: int = 200_000
    # Re-emit every live value this often so gauges stay fresh in instant queries.
    heartbeat_s: float = 15.0
    # Reload the price catalog and reconciliation factors this often.
    refresh_s: float = 60.0
    # Resource tags that become labels (cardinality control); lower-case tag keys.
    tag_labels: tuple[str, ...] = TAG_LABELS
    # Full AWS inventory sync for drift: interval (0 = off) and regions.
    sync_interval_s: float = 0.0
    sync_aws_regions: tuple[str, ...] = ()
    sync_aws_billing_account_id: str = ""
    # Edge limits of one change (ChangeLimits): characters of any string or tag (key plus
    # value), tags per resource, magnitude of a size/IOPS figure, and how far in the future
    # an event time may be. Beyond them the record is dead-lettered with the reason. Tags
    # merged over several events are bounded too: edits past max_tags are not applied
    # (counted by cct_collector_tags_refused_total).
    max_value_chars: int = 1024
    max_tags: int = 64
    max_quantity: float = 1e9
    max_future_s: float = 3600.0
    # Distinct values each tag label may take in the series (0 = no cap); later values become
    # `__overflow__`, counted by cct_collector_label_overflow_total.
    max_values_per_label: int = 1000
    # Seconds a client may take to send a request's headers (from connecting, or from the end
    # of its previous response) and its body; past them the connection is closed.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0

    @property
    def change_limits(self) -> ChangeLimits:
        return ChangeLimits(
            self.max_value_chars, self.max_tags, self.max_quantity, self.max_future_s
        )

    @classmethod
    def from_env(cls) -> CollectorSettings:
        secret_path = os.environ.get("CCT_COLLECTOR_TOKEN_FILE")
        if secret_path:
            token = Path(secret_path).read_text().strip()
        else:
            token = env_str("CCT_COLLECTOR_TOKEN")
        if len(token) < 16:
            raise SettingsError("the collector token must be at least 16 characters")

        def csv(name: str, default: str) -> tuple[str, ...]:
            raw = os.environ.get(name, default)
            return tuple(x.strip().lower() for x in raw.split(",") if x.strip())

        return cls(
            pg_dsn=pg_dsn_source(),
            vm_url=vm_write_url(),
            token=token,
            host=env_str("CCT_COLLECTOR_HOST", "127.0.0.1"),
            port=env_int("CCT_COLLECTOR_PORT", 18081),
            max_body_bytes=env_int("CCT_COLLECTOR_MAX_BODY_BYTES", 8 * 1024 * 1024),
            max_records=env_int("CCT_COLLECTOR_MAX_RECORDS", 20_000),
            batch_max_events=env_int("CCT_COLLECTOR_BATCH_MAX_EVENTS", 5_000),
            writers=max(1, env_int("CCT_COLLECTOR_WRITERS", 2)),
            cache_resources=env_int("CCT_COLLECTOR_CACHE_RESOURCES", 200_000),
            heartbeat_s=env_float("CCT_COLLECTOR_HEARTBEAT_S", 15.0),
            refresh_s=env_float("CCT_COLLECTOR_REFRESH_S", 60.0),
            tag_labels=csv("CCT_COLLECTOR_TAG_LABELS", ",".join(TAG_LABELS)),
            sync_interval_s=env_float("CCT_COLLECTOR_SYNC_INTERVAL_S", 0.0),
            sync_aws_regions=csv("CCT_COLLECTOR_SYNC_AWS_REGIONS", ""),
            sync_aws_billing_account_id=os.environ.get(
                "CCT_COLLECTOR_SYNC_AWS_BILLING_ACCOUNT_ID", ""
            ),
            max_value_chars=env_int("CCT_COLLECTOR_MAX_VALUE_CHARS", 1024),
            max_tags=env_int("CCT_COLLECTOR_MAX_TAGS", 64),
            max_quantity=env_float("CCT_COLLECTOR_MAX_QUANTITY", 1e9),
            max_future_s=env_float("CCT_COLLECTOR_MAX_FUTURE_S", 3600.0),
            max_values_per_label=env_int("CCT_COLLECTOR_MAX_VALUES_PER_LABEL", 1000),
            header_timeout_s=env_float("CCT_COLLECTOR_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=env_float("CCT_COLLECTOR_BODY_TIMEOUT_S", 20.0),
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "cct_collector_events",
            "Events by provider and outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "cct_collector_rejected",
            "Rejected events or batches by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "cct_collector_requests", "Ingest requests by HTTP status.", ["status"], registry=r
        )
        self.unpriced = Counter(
            "cct_collector_unpriced_events",
            "Accepted events whose resource is unpriced.",
            ["provider"],
            registry=r,
        )
        self.rechecks = Counter(
            "cct_collector_batch_rechecks",
            "Batches written again after looking up known event ids, because the first write"
            " met one (typically Fluent Bit retrying a request that had committed).",
            registry=r,
        )
        self.vm_failures = Counter(
            "cct_collector_vm_write_failures", "Failed VictoriaMetrics writes.", registry=r
        )
        self.batch_seconds = Histogram(
            "cct_collector_batch_seconds",
            "Receipt to written in PostgreSQL and VictoriaMetrics.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.live = Gauge("cct_collector_live_resources", "Live resources.", registry=r)
        self.vm_refused = Counter(
            "cct_collector_vm_refused_batches",
            "VictoriaMetrics imports refused as bad (HTTP 4xx): dropped, not retried.",
            registry=r,
        )
        self.tags_refused = Counter(
            "cct_collector_tags_refused",
            "Accepted events whose tag edits were not applied: the resource would have held"
            " more than CCT_COLLECTOR_MAX_TAGS tags.",
            ["provider"],
            registry=r,
        )
        self.label_overflow = Counter(
            "cct_collector_label_overflow",
            "Resources labelled __overflow__ because the tag label had reached"
            " CCT_COLLECTOR_MAX_VALUES_PER_LABEL distinct values.",
            ["label"],
            registry=r,
        )


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    stale: int = 0


@dataclass
class _Job:
    changes: list[ResourceChange]
    dead: list[tuple[str, str, str]]
    done: asyncio.Future[BatchResult] = field(repr=False)
    # Containers' deletions to record (`ResourceChange.contains`), written with the dead letters.
    containers: list[ResourceChange] = field(default_factory=list)


class Processor:
    """The collector's state and writers: PostgreSQL inventory and events, in-memory rollups,
    VictoriaMetrics samples. One per process, and one process per deployment."""

    def __init__(self, settings: CollectorSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.labels = Labels(settings.tag_labels, settings.max_values_per_label)
        self.rollups = Rollups(self.labels)
        self.book: PriceBook = {}
        self.factors: Factors = {}
        # Deleted containers, loaded at start and added to as their deletions arrive.
        self.tombstones = Tombstones()
        self.last_heartbeat_ms = 0
        # One queue, writer task and connection per shard; a resource always maps to the same
        # shard, so its events stay in order while shards commit in parallel.
        self._queues: list[asyncio.Queue[_Job]] = [asyncio.Queue() for _ in range(settings.writers)]
        # Recently written inventory rows. This process is the only writer (one replica), so a
        # cached row equals PostgreSQL's and need not be read back; misses are read and locked.
        self._rows: OrderedDict[tuple[str, str], Resource] = OrderedDict()
        self._pending: list[str] = []
        self._overflow_counted: dict[str, int] = {}
        # Set after a batch met an event id PostgreSQL already holds: later batches look for
        # known ids before writing until one finds none.
        self._careful = False
        # Per shard: resources of failed writes, whose state in PostgreSQL is unknown (the
        # failure may have come after the commit). The shard reads them back before its next
        # batch, so the rollups catch up even if Fluent Bit never retries.
        self._unsure: list[set[tuple[str, str]]] = [set() for _ in range(settings.writers)]
        # Samples go to VictoriaMetrics from their own task, so the next batch's PostgreSQL
        # work overlaps this batch's import; a full queue pushes back on the writer.
        self._vm_queue: asyncio.Queue[list[str]] = asyncio.Queue(maxsize=VM_QUEUE_BATCHES)
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: list[psycopg.AsyncConnection] = []
        self._reader: psycopg.AsyncConnection | None = None
        # The DSN generation each writer connection (and the reader) was opened with.
        self._dsn = DsnSource.of(settings.pg_dsn)
        self._opened: list[int] = []
        self._reader_opened = 0
        self._http: aiohttp.ClientSession | None = None
        # The last failure to reach PostgreSQL / VictoriaMetrics, None after a success.
        self.pg_error: str | None = None
        self.vm_error: str | None = None

    def not_ready(self) -> str | None:
        """Without PostgreSQL no batch can be accepted. VictoriaMetrics failing does not make
        the collector unready: events are still stored and the heartbeat re-sends samples;
        it shows in /readyz's `victoriametrics` field instead."""
        if self.pg_error is not None:
            return f"PostgreSQL unreachable: {self.pg_error}"
        return None

    def ready_details(self) -> dict[str, Any]:
        return {
            "live_resources": len(self.rollups.live),
            "victoriametrics": self.vm_error or "ok",
        }

    async def start(self, background: bool = True) -> None:
        for _ in range(self.settings.writers):
            conn = await self._open(writer=True)
            self._conns.append(conn)
            self._opened.append(self._dsn.generation)
        # Refresh and sync read on their own connection so they never join a write transaction.
        self._reader = await self._open(writer=False)
        self._reader_opened = self._dsn.generation
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.tombstones = await store.container_deletions(self._conns[0])
        await self.refresh()
        live = await store.live_resources(self._conns[0])
        for r in live:
            self.rollups.update(r)
        self.metrics.live.set(len(self.rollups.live))
        for shard in range(self.settings.writers):
            self._tasks.append(asyncio.create_task(self._writer(shard)))
        # A process that stopped between committing a live row and deleting it (a write in
        # flight while its container's deletion arrived) left it live: deleted now.
        self._delete_buried(live)
        self._tasks.append(asyncio.create_task(self._vm_writer()))
        if background:
            self._tasks.append(
                asyncio.create_task(self._every(self.settings.heartbeat_s, self.heartbeat))
            )
            self._tasks.append(
                asyncio.create_task(self._every(self.settings.refresh_s, self.refresh))
            )
            if self.settings.sync_interval_s > 0 and self.settings.sync_aws_regions:
                self._tasks.append(
                    asyncio.create_task(self._every(self.settings.sync_interval_s, self.sync_aws))
                )

    async def _open(self, *, writer: bool) -> psycopg.AsyncConnection:
        conn = await aconnect(self._dsn, application_name="cct-collector", autocommit=True)
        if writer:
            await store.prepare(conn)
        return conn

    async def _renew_writer(self, shard: int, *, broken: bool = False) -> None:
        """At a batch boundary: reconnect the shard with the current DSN when it rotated, or
        when the connection or its login is gone. When that fails the next batch tries again;
        meanwhile a rotated-away login that still works is kept, and a gone one stays closed,
        failing its batches (Fluent Bit retries them)."""
        conn = self._conns[shard]
        if broken:
            await conn.close()
        elif not conn.closed and not self._dsn.rotated(self._opened[shard]):
            return
        try:
            fresh = await self._open(writer=True)
        except (StoreError, psycopg.Error) as exc:
            log.warning("postgres reconnect failed", extra={"shard": shard, "error": str(exc)})
            return
        await conn.close()
        self._conns[shard], self._opened[shard] = fresh, self._dsn.generation
        log.info("postgres writer reconnected", extra={"shard": shard})

    async def _renew_reader(self) -> psycopg.AsyncConnection:
        """The reader, reconnected first when the DSN rotated or the connection is gone;
        refresh and sync are retried on their next round when this fails."""
        assert self._reader is not None
        if self._reader.closed or self._dsn.rotated(self._reader_opened):
            fresh = await self._open(writer=False)
            await self._reader.close()
            self._reader, self._reader_opened = fresh, self._dsn.generation
        return self._reader

    async def stop(self) -> None:
        try:  # hand what is queued to VictoriaMetrics before stopping
            await asyncio.wait_for(self._vm_queue.join(), timeout=10)
        except TimeoutError:
            log.warning("stopping with samples not yet written to victoriametrics")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http:
            await self._http.close()
        for conn in [*self._conns, self._reader]:
            if conn:
                await conn.close()

    async def _every(self, seconds: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except Exception:  # a failed round is logged and retried next round
                log.exception("periodic task failed", extra={"task": fn.__name__})

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(READER_TIMEOUT_S):
                reader = await self._renew_reader()
                book = await aload_price_book(reader)
                factors = await store.reconciliation_factors(reader)
        except TimeoutError:
            self.pg_error = f"no answer from PostgreSQL within {READER_TIMEOUT_S:g} s"
            await self._drop_reader()
            raise StoreError(f"price refresh: {self.pg_error}", retryable=True) from None
        except (StoreError, psycopg.Error, OSError) as exc:
            self.pg_error = str(exc) or type(exc).__name__
            raise
        self.book, self.factors = book, factors
        self.pg_error = None
        self.tombstones.forget_before(datetime.now(UTC) - TOMBSTONES_KEPT)

    async def _drop_reader(self) -> None:
        """Close the reader whose query was abandoned: its connection's state is unknown,
        and `_renew_reader` opens a new one next round."""
        if self._reader is not None and not self._reader.closed:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                await asyncio.wait_for(self._reader.close(), timeout=1.0)

    def _contents_deleted(
        self, changes: list[ResourceChange], containers: list[ResourceChange]
    ) -> list[ResourceChange]:
        """A container's deletion (`ResourceChange.contains`) as the deletion of every live
        resource under it, each with an event id of its own (a retry after a partly written
        batch deletes the rest under the same ids). The live set is every resource not
        deleted, priced or not. What is not live yet is met by the tombstones: a write dated
        before the deletion, queued or delivered later, is applied as a deletion; one in
        flight now is deleted once committed (`_delete_buried`)."""
        out = [ch for ch in changes if not ch.contains]
        # One pass over the live set for the whole request, the cheap prefix test first: a
        # request of many container deletions must not hold the event loop once per each.
        prefixes = tuple(ch.resource_id + "/" for ch in containers)
        for provider, rid in self.rollups.live:
            if not rid.startswith(prefixes):
                continue
            held = held_by(provider, rid)
            if held is None:
                continue
            service, rtype = held
            for ch, prefix in zip(containers, prefixes, strict=True):
                if ch.provider == provider and rid.startswith(prefix):
                    out.append(
                        ch._replace(
                            event_id=held_event_id(ch.event_id, rid),
                            resource_id=rid,
                            service_name=service,
                            resource_type=rtype,
                            contains=False,
                        )
                    )
        return out

    async def heartbeat(self) -> None:
        now_ms = int(time.time() * 1000)
        samples = self._pending + self.rollups.heartbeat_lines(self.factors, now_ms)
        self._pending = []
        self.last_heartbeat_ms = now_ms
        await self._vm_queue.put(samples)

    async def submit(
        self, changes: list[ResourceChange], dead: list[tuple[str, str, str]]
    ) -> BatchResult:
        """Write one request's changes (split over the shards) and dead letters; returns when
        every part is committed. A failed part fails the request: the retry finds the parts
        that did commit as duplicates."""
        containers = [ch for ch in changes if ch.contains]
        if containers:
            # Before the expansion, so a write of one of its resources still queued in a shard
            # meets the tombstone when applied.
            for ch in containers:
                tombstone = Tombstone(ch.event_time, ch.event_id, ch.action)
                self.tombstones.add(ch.provider, ch.resource_id, tombstone)
            changes = self._contents_deleted(changes, containers)
        n = self.settings.writers
        parts: list[list[ResourceChange]] = [[] for _ in range(n)]
        for ch in changes:
            parts[hash((ch.provider, ch.resource_id)) % n].append(ch)
        loop = asyncio.get_running_loop()
        jobs = []
        for shard, part in enumerate(parts):
            extra, held = (dead, containers) if shard == 0 else ([], [])
            if part or extra or held or (shard == 0 and not changes):
                job = _Job(part, extra, loop.create_future(), held)
                await self._queues[shard].put(job)
                jobs.append(job)
        total = BatchResult()
        for result in await asyncio.gather(*(job.done for job in jobs)):
            total.accepted += result.accepted
            total.duplicates += result.duplicates
            total.stale += result.stale
        return total

    async def _writer(self, shard: int) -> None:
        queue = self._queues[shard]
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0].changes)
            while not queue.empty() and size < self.settings.batch_max_events:
                job = queue.get_nowait()
                jobs.append(job)
                size += len(job.changes)
            await self._renew_writer(shard)
            try:
                if self._unsure[shard]:
                    await self._resync(shard)
                results = await self._process(jobs, self._conns[shard])
            except Exception as exc:  # every waiter gets the failure (Fluent Bit retries)
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(exc)
                    self._unsure[shard].update((c.provider, c.resource_id) for c in job.changes)
                if needs_reconnect(exc):
                    # Reconnect now, so Fluent Bit's retry of these requests finds the new
                    # login (a rotated lease whose old user was revoked, a restarted server).
                    await self._renew_writer(shard, broken=True)
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.done.done():
                    job.done.set_result(result)

    async def _resync(self, shard: int) -> None:
        """Take PostgreSQL's rows of the shard's unsure resources into the cache and rollups
        (the heartbeat writes the rollups out). Runs in the shard's writer, the only writer of
        these resources, so nothing changes them meanwhile."""
        keys = self._unsure[shard]
        read = await store.read_rows(self._conns[shard], list(keys))
        for key, row in read.items():
            self.rollups.update(row)
            self._rows[key] = row
        log.info("unsure resources read back", extra={"shard": shard, "resources": len(keys)})
        keys.clear()
        self.metrics.live.set(len(self.rollups.live))
        # A write that committed although its batch failed never met `_delete_buried`.
        self._delete_buried(read.values())

    async def _process(
        self, jobs: Sequence[_Job], conn: psycopg.AsyncConnection
    ) -> list[BatchResult]:
        results = [BatchResult() for _ in jobs]
        owner: dict[str, int] = {}
        fresh: list[ResourceChange] = []
        for i, job in enumerate(jobs):
            for ch in job.changes:
                if ch.event_id in owner:
                    results[i].duplicates += 1
                    self.metrics.events.labels(ch.provider, "duplicate").inc()
                    continue
                owner[ch.event_id] = i
                fresh.append(ch)
        dead = [d for job in jobs for d in job.dead]
        containers = [c for job in jobs for c in job.containers]
        tombstones_seen = self.tombstones.added
        known, rows, applied = await self._commit(conn, fresh, dead, containers)
        outcomes: Tally[tuple[str, str]] = Tally()
        for ch in fresh:
            if ch.event_id in known:
                results[owner[ch.event_id]].duplicates += 1
                outcomes[(ch.provider, "duplicate")] += 1
        refused: list[Applied] = []
        for a in applied:
            result = results[owner[a.change.event_id]]
            result.accepted += 1
            result.stale += a.stale
            outcomes[(a.change.provider, "stale" if a.stale else "accepted")] += 1
            if a.tags_refused:
                refused.append(a)
        for (provider, outcome), n in outcomes.items():
            self.metrics.events.labels(provider, outcome).inc(n)
        if refused:
            for a in refused:
                self.metrics.tags_refused.labels(a.change.provider).inc()
            log.warning(
                "tag edits refused: the resource would hold more than the allowed tags",
                extra={
                    "events": len(refused),
                    "resource_id": refused[0].change.resource_id[:200],
                    "max_tags": self.settings.max_tags,
                },
            )
        await self._vm_queue.put(self._samples(rows, applied))
        if self.tombstones.added != tombstones_seen:
            # A container's deletion arrived while this batch was written: its changes were
            # checked against the tombstones before that, and its rows were not live for the
            # deletion's expansion.
            self._delete_buried(rows.values())
        return results

    def _delete_buried(self, rows: Iterable[Resource]) -> None:
        """Delete the live rows of `rows` that a container's deletion dated after their last
        event holds: written while that deletion was expanded (their write in flight, past the
        tombstone check, not yet live). Runs as its own task, retried until written: the
        shards it needs may be the caller's own."""
        buried = []
        for r in rows:
            if r.state == "deleted":
                continue
            found = self.tombstones.covering(r.provider, r.resource_id, r.last_event_time)
            if found is not None:
                buried.append(
                    change_of(
                        r,
                        held_event_id(found.event_id, r.resource_id),
                        found.action,
                        found.deleted_at,
                        state="deleted",
                    )
                )
        if buried:
            task = asyncio.create_task(self._submit_until_written(buried))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _submit_until_written(self, changes: list[ResourceChange]) -> None:
        for attempt in range(BURIED_ATTEMPTS):
            try:
                await self.submit(changes, [])
            except Exception as exc:  # PostgreSQL away: the same ids again, duplicates none
                log.warning(
                    "deleting resources of a deleted container failed; will retry",
                    extra={"resources": len(changes), "error": str(exc), "attempt": attempt},
                )
                await asyncio.sleep(min(2.0**attempt, 30.0))
                continue
            log.info(
                "resources written under a deleted container deleted",
                extra={"resources": len(changes)},
            )
            return
        log.error(
            "resources written under a deleted container are still live; the next start"
            " deletes them",
            extra={"resources": len(changes)},
        )

    async def _commit(
        self,
        conn: psycopg.AsyncConnection,
        fresh: list[ResourceChange],
        dead: list[tuple[str, str, str]],
        containers: list[ResourceChange],
    ) -> tuple[set[str], dict[tuple[str, str], Resource], list[Applied]]:
        """Write a batch: merge, upsert the inventory, insert events, dead letters and
        containers' deletions. Returns the event ids found already recorded, the rows to
        account for (changed, or read back) and what each new event did."""
        if not fresh and not dead and not containers:
            return set(), {}, []
        try:
            known, rows, applied = await self._write(conn, fresh, dead, containers)
        except BaseException:
            # The write may have committed before its failure reached us (the connection lost
            # after COMMIT): these resources' cached rows may be stale, so they are read back,
            # locked, the next time.
            for c in fresh:
                self._rows.pop((c.provider, c.resource_id), None)
            raise
        # Committed: only now may the cache hold the new rows.
        cache = self._rows
        for key, row in rows.items():
            cache[key] = row
            cache.move_to_end(key)
        while len(cache) > self.settings.cache_resources:
            cache.popitem(last=False)
        return known, rows, applied

    async def _write(
        self,
        conn: psycopg.AsyncConnection,
        fresh: list[ResourceChange],
        dead: list[tuple[str, str, str]],
        containers: list[ResourceChange],
    ) -> tuple[set[str], dict[tuple[str, str], Resource], list[Applied]]:
        now = datetime.now(UTC)
        cache = self._rows
        keys = {(c.provider, c.resource_id) for c in fresh}
        blind = not dead and not containers and not self._careful
        if blind and all(key in cache for key in keys):
            # The usual batch: every row is cached and duplicates are rare (a Fluent Bit retry
            # of a request that did commit), so write in one statement without looking first;
            # the events' primary key refuses a known id and the batch is redone with a look.
            rows, applied = self._apply(cache, fresh)
            try:
                await store.write_batch(conn, rows, applied, now)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != store.EVENTS_KEY:
                    raise
                self.metrics.rechecks.inc()
                self._careful = True
            else:
                return set(), rows, applied
        # Taken now, after any blind attempt and before the look-up: while either waits,
        # another shard's commit may evict some of these rows from the LRU cache, and a row
        # neither held nor read would be taken for a new resource.
        held = {key: cache[key] for key in keys if key in cache}
        missing = [key for key in keys if key not in held]
        async with conn.transaction():
            known, read = await store.read_batch(conn, [c.event_id for c in fresh], missing)
            new = [c for c in fresh if c.event_id not in known]
            rows, applied = self._apply({**held, **read}, new)
            if applied:
                await store.write_batch(conn, rows, applied, now)
            await store.insert_dead_letters(conn, "collector", dead)
            await store.insert_container_deletions(conn, containers)
        if fresh:  # write blind again once a look finds no duplicate
            self._careful = bool(known)
        # A row read back is PostgreSQL's state, which the rollups may not have seen (a batch
        # that committed although its write failed): they take it as well.
        return known, {**read, **rows}, applied

    def _apply(
        self, current: dict[tuple[str, str], Resource], changes: list[ResourceChange]
    ) -> tuple[dict[tuple[str, str], Resource], list[Applied]]:
        return apply_changes(
            current, changes, self.book, self.tombstones, max_tags=self.settings.max_tags
        )

    def _samples(self, rows: dict[tuple[str, str], Resource], applied: list[Applied]) -> list[str]:
        """Update the rollups with the committed rows; the lines to write."""
        now_ms = int(time.time() * 1000)
        late_before = max(self.last_heartbeat_ms + 1, now_ms - LATE_MS)
        rendered, touched = self.rollups.apply(rows.values())
        factor_of = {g: group_factor(self.factors, g) for g, _ in rendered.values()}
        samples: list[str] = []
        unpriced: Tally[str] = Tally()
        for a in applied:
            ch = a.change
            rate = a.usd_after
            if a.stale:
                continue
            if rate is None:
                unpriced[ch.provider] += 1
                continue
            key = (ch.provider, ch.resource_id)
            group, labels = rendered[key]
            factor = factor_of[group]
            ts = int(ch.event_time.timestamp() * 1000)
            samples += resource_lines(labels, rate, factor, ts)
            if ts < late_before and rows[key].last_event_id == ch.event_id:
                # Instant queries read the newest sample: a late event (CloudTrail delivers
                # minutes after the call) or an older heartbeat would hide this value, so the
                # current value is written at the receipt time as well.
                samples += resource_lines(labels, rate, factor, now_ms)
        for provider, n in unpriced.items():
            self.metrics.unpriced.labels(provider).inc(n)
        samples += self.rollups.rollup_lines(touched, self.factors, now_ms)
        self.metrics.live.set(len(self.rollups.live))
        self._count_overflow()
        return samples

    def _count_overflow(self) -> None:
        """Carry the pure core's overflow counts into the metric."""
        for name, total in self.labels.overflowed.items():
            counted = self._overflow_counted.get(name, 0)
            if total > counted:
                self.metrics.label_overflow.labels(name).inc(total - counted)
                self._overflow_counted[name] = total

    async def _vm_writer(self) -> None:
        while True:
            lines = await self._vm_queue.get()
            taken = 1
            while not self._vm_queue.empty():  # one import for everything waiting
                lines += self._vm_queue.get_nowait()
                taken += 1
            try:
                await self._write_vm(lines)
            except Exception:  # never lose the writer; the heartbeat re-emits current state
                log.exception("victoriametrics writer failed a batch")
            finally:
                for _ in range(taken):
                    self._vm_queue.task_done()

    async def _write_vm(self, lines: list[str]) -> None:
        if not lines:
            return
        assert self._http is not None
        payload = body(lines)
        try:
            async with self._http.post(
                f"{self.settings.vm_url}/api/v1/import/prometheus", data=payload
            ) as resp:
                if 400 <= resp.status < 500:
                    # VictoriaMetrics refused the lines themselves ("too long line"): sent
                    # again with every heartbeat they would fail every later import too.
                    self.metrics.vm_refused.inc()
                    log.error(
                        "victoriametrics refused the import; dropped",
                        extra={"status": resp.status, "error": (await resp.text())[:200]},
                    )
                    return
                if resp.status >= 300:
                    raise aiohttp.ClientError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            self.vm_error = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.vm_error = str(exc) or type(exc).__name__
            self.metrics.vm_failures.inc()
            # Keep the newest values only: the heartbeat re-emits current state anyway.
            self._pending = lines[-100_000:]
            log.warning("victoriametrics write failed; will retry", extra={"error": str(exc)})

    async def sync_aws(self) -> None:
        from lambdas.collector.sync import aws_inventory_changes

        now = datetime.now(UTC)
        for region in self.settings.sync_aws_regions:
            known = [
                r
                for r in await store.live_resources(await self._renew_reader())
                if r.provider == "aws" and r.region_id == region
            ]
            changes = await asyncio.to_thread(
                aws_inventory_changes, region, known, now, self.settings.sync_aws_billing_account_id
            )
            result = await self.submit(changes, [])
            log.info("aws inventory synced", extra={"region": region, "changes": result.accepted})


class Refused(Exception):
    """The whole request is refused: HTTP `status` with a machine `reason` and a detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _reject(metrics: Metrics, status: int, reason: str, detail: str) -> web.Response:
    metrics.rejected.labels(reason).inc()
    metrics.requests.labels(str(status)).inc()
    return web.json_response({"error": reason, "detail": detail}, status=status)


class Api:
    """The HTTP handler of /ingest (Fluent Bit batches); the shell adds /healthz, /readyz
    and /metrics."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.metrics = processor.metrics
        self.expected = f"Bearer {processor.settings.token}".encode()

    async def read_records(self, request: web.Request) -> tuple[list[Any], bool]:
        """The batch's records and whether any string in it holds a NUL character, or Refused
        naming what is wrong with the request."""
        # Non-UTF-8 header bytes arrive as surrogate escapes: encoded back, a wrong token.
        auth = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(auth, self.expected):
            raise Refused(401, "unauthorized", "missing or wrong bearer token")
        limit = self.settings.max_body_bytes
        if request.content_length and request.content_length > limit:
            raise Refused(
                413, "body_too_large", f"body of {request.content_length} bytes exceeds {limit}"
            )
        try:
            raw = await read_body(request, self.settings.body_timeout_s)
        except BodyTimeout as exc:
            raise Refused(408, "body_timeout", str(exc)) from None
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, "body_too_large", f"body exceeds {limit} bytes") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await _dead_letter(self.processor, "malformed_json", f"malformed JSON: {exc}", raw)
            raise Refused(400, "malformed_json", f"malformed JSON: {exc}") from None
        records = body if isinstance(body, list) else [body]
        if len(records) > self.settings.max_records:
            raise Refused(
                413,
                "too_many_records",
                f"{len(records)} records exceed the limit of {self.settings.max_records}",
            )
        return records, b"\\u0000" in raw

    def _reject_record(
        self,
        index: int,
        record: Any,
        exc: EventRejected,
        dead: list[tuple[str, str, str]],
        rejected: list[dict[str, Any]],
    ) -> None:
        """Count a rejected record and keep it as a dead letter (its JSON, or its outline when it
        cannot be encoded: nesting deeper than the encoder allows)."""
        self.metrics.rejected.labels(exc.reason).inc()
        try:
            payload = orjson.dumps(record, default=str).decode()
        except (orjson.JSONEncodeError, TypeError):
            payload = json.dumps({"unencodable_record": _short_repr.repr(record)})
        dead.append((exc.reason, f"record {index}: {exc.detail}", payload))
        rejected.append({"index": index, "reason": exc.reason, "detail": exc.detail})

    async def ingest(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            records, nul = await self.read_records(request)
        except Refused as refused:
            response = _reject(self.metrics, refused.status, refused.reason, refused.detail)
            if refused.status == 408:
                response.force_close()  # the rest of a slow body is never read
            return response
        tag = request.match_info.get("tag") or request.headers.get("X-Fluent-Tag") or ""
        default_provider = _tag_provider(tag)
        changes: list[ResourceChange] = []
        dead: list[tuple[str, str, str]] = []
        rejected: list[dict[str, Any]] = []
        ignored = 0
        limits = self.settings.change_limits
        now = datetime.now(UTC)
        for index, record in enumerate(records):
            if isinstance(record, dict):
                # Fluent Bit removes the forwarder's token; never store it if one slips through.
                record.pop("auth", None)
            try:
                if nul and holds_nul(record):
                    # PostgreSQL text cannot hold NUL: left in, it would fail the whole batch on
                    # every retry. (The dead letter keeps it JSON-escaped.)
                    raise EventRejected("nul_character", "a string holds a NUL character")
                record_changes = normalize(record, default_provider)
                for change in record_changes:
                    check_change(change, limits, now)
                changes += record_changes
            except EventRejected as exc:
                self._reject_record(index, record, exc, dead, rejected)
            except EventIgnored as exc:
                ignored += 1
                log.debug("event ignored", extra={"reason": exc.reason})
            except Exception as exc:  # one record must never cost the batch its good records
                log.exception("record %d could not be read", index)
                detail = f"unexpected {type(exc).__name__} reading the record"
                self._reject_record(
                    index, record, EventRejected("malformed_event", detail), dead, rejected
                )
        # The decoded records are the bulk of a request's objects: freed now rather than
        # kept (and traversed by the cyclic GC) while the batch waits for PostgreSQL.
        records.clear()
        if ignored:
            self.metrics.events.labels("all", "ignored").inc(ignored)
        try:
            result = await self.processor.submit(changes, dead)
        except (psycopg.Error, OSError) as exc:
            self.processor.pg_error = str(exc) or type(exc).__name__
            log.error("batch not written", extra={"error": str(exc)})
            return _reject(self.metrics, 503, "store_unavailable", f"PostgreSQL: {exc}")
        self.processor.pg_error = None
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.requests.labels("200").inc()
        return web.json_response(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "stale": result.stale,
                "ignored": ignored,
                "rejected": rejected,
            }
        )


def build_app(processor: Processor) -> web.Application:
    api = Api(processor)
    # aiohttp enforces the body limit itself as well (413 before the handler reads it all).
    app = web.Application(client_max_size=processor.settings.max_body_bytes)
    app.router.add_post("/ingest", api.ingest)
    # The forwarders' own URL shape (<base>/cct.<provider>), for sending without Fluent Bit.
    app.router.add_post("/ingest/{tag}", api.ingest)
    add_ops_routes(app, processor.metrics.registry, processor.not_ready, processor.ready_details)
    return app


def _tag_provider(tag: str) -> str | None:
    """The tag `cct.<provider>` (Fluent Bit's X-Fluent-Tag header, or the URL) names the
    provider of records that do not say."""
    parts = tag.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "cct" else None


async def _dead_letter(processor: Processor, reason: str, detail: str, raw: bytes) -> None:
    try:
        await processor.submit([], [(reason, detail, raw.decode("utf-8", errors="replace"))])
    except (psycopg.Error, OSError):
        log.exception("dead letter not written", extra={"reason": reason})


async def run(settings: CollectorSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (SIGTERM/SIGINT when not given); then finish in-flight
    requests and hand queued samples to VictoriaMetrics before closing."""
    stop = stop or signal_stop()
    processor = Processor(settings)
    await processor.start()
    # Each batch allocates tens of thousands of short-lived objects next to a large, long-lived
    # cache and rollup state: with the default thresholds the collector spent a noticeable
    # share of its CPU in cyclic GC passes re-scanning that state. Freeze what start() built
    # and collect the young generation less often (the objects are acyclic and freed by
    # reference counting anyway).
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    site = Site(build_app(processor), settings.host, settings.port, None, settings.header_timeout_s)
    try:
        async with serving([site]):
            await stop.wait()
    finally:
        await processor.stop()


def main() -> None:
    """`cct serve collector`."""
    asyncio.run(run(CollectorSettings.from_env()))
