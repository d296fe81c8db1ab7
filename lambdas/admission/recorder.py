"""Writes admission decisions to PostgreSQL off the admission path.

The request handler only puts a record on a bounded queue; one thread drains it in batches.
A slow or unreachable database therefore never delays an admission answer: the queue absorbs
the outage, the writer retries with backoff, and when the queue is full new records are
dropped and counted (`cct_admission_decisions_dropped_total`) instead of blocking. A batch
keeps its records until they are written, so a rotated PostgreSQL login (a new DSN file, or
the old user's session ended) costs a reconnect, never a decision. Only a record the database
refuses for its own values is dropped (and counted); a refusal that would hit every record
(a missing grant or column: the deployment, not the decision) holds the batch until an
operator fixes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import psycopg

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.common.pg import DsnSource
from lambdas.store.db import BadRecordError, StoreError, connect
from lambdas.store.decisions import DecisionRecord, record_decisions

log = logging.getLogger("cct.admission.recorder")

BATCH_SIZE = 200
# How long the writer waits for more records after the first of a batch. Without it every
# decision was its own transaction at a steady request rate (one commit, one round trip and
# the thread's Python work per decision, competing with the event loop for the GIL); a
# decision reaching PostgreSQL 50 ms later changes nothing (this replica counts its own
# admissions at once).
LINGER_S = 0.05
_MAX_BACKOFF_S = 5.0
# A deployment fault is fixed by a person, not by the next try: retrying it every 5 s only
# fills the log.
_MAX_FAULT_BACKOFF_S = 30.0


class DecisionRecorder:
    def __init__(
        self,
        dsn: str | DsnSource,
        metrics: AdmissionMetrics,
        queue_size: int,
    ) -> None:
        self._dsn = DsnSource.of(dsn)
        self._generation = 0  # of the DSN self._conn was opened with
        self._metrics = metrics
        self._queue: queue.Queue[DecisionRecord] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._in_batch = 0  # taken off the queue, not yet written (or dropped)
        self._thread = threading.Thread(target=self._run, name="decision-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: DecisionRecord) -> bool:
        """Queue a record without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._metrics.decisions_dropped.labels(reason="queue_full").inc()
            return False
        return True

    def queue_depth(self) -> int:
        """Decisions not yet written: queued, or in the batch the writer holds. The server
        sets the gauge from this when /metrics is scraped, the only time it is read."""
        return self._queue.qsize() + self._in_batch

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued, giving up (and counting the rest) after `timeout_s`."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 1.0)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take()
            if batch:
                self._write(batch)
                self._in_batch = 0

    def _take(self) -> list[DecisionRecord]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        self._in_batch = 1
        until = time.monotonic() + (0.0 if self._stop.is_set() else LINGER_S)
        while len(batch) < BATCH_SIZE:
            try:
                batch.append(self._queue.get(timeout=max(until - time.monotonic(), 0.0)))
            except queue.Empty:
                break
            self._in_batch = len(batch)
        return batch

    def _write(self, batch: list[DecisionRecord]) -> None:
        delay = 0.1
        while True:
            try:
                if self._conn is not None and self._dsn.rotated(self._generation):
                    log.info("postgres credentials rotated; reconnecting")
                    self._reset()
                if self._conn is None:
                    self._conn = connect(self._dsn, application_name="cct-admission")
                    self._generation = self._dsn.generation
                record_decisions(self._conn, batch)
                self._conn.commit()
            except BadRecordError as exc:
                self._reset()
                self._write_one_by_one(batch, exc)
                return
            except StoreError as exc:
                self._reset()
                self._metrics.decision_write_errors.inc()
                if time.monotonic() + delay > self._deadline:
                    self._metrics.decisions_dropped.labels(reason="shutdown").inc(len(batch))
                    log.error("dropping %d decisions at shutdown: %s", len(batch), exc)
                    return
                if exc.retryable:
                    log.warning("recording decisions failed, retrying in %.1fs: %s", delay, exc)
                    time.sleep(delay)
                    delay = min(delay * 2, _MAX_BACKOFF_S)
                else:
                    # Insufficient privilege, a missing table or column: every record fails
                    # alike, so dropping them one by one would lose the whole audit trail of
                    # the outage. The queue keeps absorbing (and counts what overflows).
                    log.error(
                        "the database refuses all decisions (a grant or migration missing?);"
                        " holding %d, retrying in %.1fs: %s",
                        len(batch),
                        delay,
                        exc,
                    )
                    time.sleep(delay)
                    delay = min(max(delay * 2, 1.0), _MAX_FAULT_BACKOFF_S)
                continue
            self._metrics.decisions_recorded.inc(len(batch))
            return

    def _write_one_by_one(self, batch: list[DecisionRecord], exc: BadRecordError) -> None:
        if len(batch) == 1:
            self._metrics.decisions_dropped.labels(reason="rejected").inc()
            log.error("decision %s rejected by the database: %s", batch[0].decision_id, exc)
            return
        # One bad record must not lose the good ones written with it.
        for record in batch:
            self._write([record])

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
