"""`cct serve trigger`: the consumer loop around the Processor.

Delivery guarantees:
- An event's offset is committed only after it was fully handled: submitted (or found
  submitted), recorded as denied, or written to the dead-letter topic with the broker's ack.
  A crash at any point redelivers the event, and the Processor's idempotence turns the
  redelivery into a no-op for whatever was already done.
- Events of one partition are handled in order, one at a time; a backend outage stalls the
  partition (retrying with backoff) instead of skipping events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lambdas.common.httpshell import Site, ops_app, serving, signal_stop
from lambdas.common.settings import SettingsError
from lambdas.events.cloudevents import encode, unmapped_event
from lambdas.events.producer import ProducerSlot
from lambdas.policy import PolicyLoadError, load_policy_set
from lambdas.store.db import PoolConnections, open_pool
from lambdas.trigger.admission import AdmissionCallSettings, AdmissionClient
from lambdas.trigger.argo import ArgoBackend, KubeSettings, api_client
from lambdas.trigger.backends import Backend
from lambdas.trigger.detached import DetachedLocalBackend
from lambdas.trigger.local import LocalBackend
from lambdas.trigger.mapping import MappingError, load_mapping
from lambdas.trigger.processor import Handled, Processor, Stopping
from lambdas.trigger.settings import TriggerSettings

log = logging.getLogger("cct.trigger")

DLQ_REASON_HEADER = "cct-dlq-reason"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "cct_trigger_events_total",
            "Anomaly events handled, by outcome (created, already_exists, denied, "
            "precheck_denied, settled, unmapped, resolved, dead_letter; history: skipped "
            "by a fresh consumer group).",
            ["outcome"],
            registry=self.registry,
        )
        self.handle_seconds = Histogram(
            "cct_trigger_handle_seconds",
            "Time to handle one event, from receipt to committed offset.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "cct_trigger_consumer_lag_messages",
            "Events on the topic not yet handled, per partition (high watermark minus this "
            "consumer's position after its last batch).",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.unmapped = Counter(
            "cct_trigger_unmapped_total",
            "Detected anomalies that no playbook rule matches, by level and resource type "
            "(published on the unmapped topic with the reason).",
            ["level", "resource_type"],
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "cct_trigger_commit_failures_total",
            "Offset commits refused after a rebalance; the event is redelivered (harmless).",
            registry=self.registry,
        )


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes], reason: str
) -> list[tuple[str, bytes]]:
    return [
        (DLQ_REASON_HEADER, reason.encode()),
        ("cct-dlq-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        *[(k, v) for k, v in (record.headers or ()) if k != DLQ_REASON_HEADER],
    ]


class FreshGroupStart(ConsumerRebalanceListener):
    """Where a partition without a committed offset starts: at the first event of the last
    `seconds` (Kafka's record timestamps), or at the end when there is none; never at the
    topic's beginning (see TriggerSettings.fresh_group_start_s).

    The fetcher may read a partition from the reset position before the lookup is done, so
    the consumer loop also waits for `ready` and skips records older than `floor`."""

    def __init__(self, consumer: AIOKafkaConsumer, seconds: float) -> None:
        self.consumer = consumer
        self.seconds = seconds
        self.ready = asyncio.Event()
        self.floor: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.ready.clear()
        try:
            fresh = [tp for tp in assigned if await self.consumer.committed(tp) is None]
            if fresh:
                await self._start_recent(fresh)
        finally:
            self.ready.set()

    async def _start_recent(self, fresh: list[TopicPartition]) -> None:
        since_ms = int((time.time() - self.seconds) * 1000)
        # The floor first: should a lookup below fail (a broker restarting; aiokafka logs a
        # listener's error and goes on), the partition is read from the earliest offset, and
        # the floor still keeps its history from starting workflows.
        for tp in fresh:
            self.floor[tp] = since_ms
        # The end is read before the lookup, and "none since" starts there: an event that
        # lands between the lookup and the seek is read. (seek_to_end resolved the end at the
        # next fetch, after it: the first alert of a new installation could be skipped.)
        ends = await self.consumer.end_offsets(fresh)
        found = await self.consumer.offsets_for_times({tp: since_ms for tp in fresh})
        for tp in fresh:
            at = found.get(tp)
            self.consumer.seek(tp, ends[tp] if at is None else at.offset)
        log.info(
            "fresh consumer group: starting at recent events",
            extra={"partitions": len(fresh), "since_s": self.seconds},
        )


# Retry delays of the consumer's start while Kafka cannot be reached (doubling).
START_RETRY_MIN_S = 1.0
START_RETRY_MAX_S = 30.0


class TriggerService:
    def __init__(
        self, settings: TriggerSettings, processor: Processor, stopping: threading.Event
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.stopping = stopping
        self.metrics = Metrics()
        self.start: FreshGroupStart
        # Why the trigger cannot handle events now, None while it can.
        self.problem: str | None = "Kafka consumer not started yet"
        # Events not yet handled, per partition this replica consumes.
        self.lag: dict[TopicPartition, int] = {}

    def not_ready(self) -> str | None:
        return self.problem

    def ready_details(self) -> dict[str, object]:
        return {"lag": sum(self.lag.values()), "partitions": len(self.lag)}

    def _consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        consumer = AIOKafkaConsumer(
            **s.kafka.client_kwargs(),
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
        )
        # Subscribed before start: start() then asks for the topic's metadata, which creates
        # a topic that does not exist yet where the broker auto-creates topics.
        self.start = FreshGroupStart(consumer, s.fresh_group_start_s)
        consumer.subscribe([s.topic], listener=self.start)
        return consumer

    async def _started_consumer(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        """A started consumer, retried while Kafka cannot be reached (not ready meanwhile,
        with the reason), rather than an exit and the restart back-off of Kubernetes; None
        when asked to stop first."""
        delay = START_RETRY_MIN_S
        while not stop.is_set():
            consumer = self._consumer()
            try:
                await consumer.start()
                return consumer
            except KafkaError as exc:
                self.problem = f"Kafka unreachable: {exc!r}"
                log.warning("kafka unreachable; retrying", extra={"error": repr(exc)})
                with contextlib.suppress(KafkaError):
                    await consumer.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, START_RETRY_MAX_S)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        producers = ProducerSlot(
            lambda: AIOKafkaProducer(**s.kafka.client_kwargs(), acks="all", enable_idempotence=True)
        )
        started = await self._started_consumer(stop)
        if started is None:
            return
        consumer = started
        self.problem = None
        log.info("trigger consuming", extra={"topic": s.topic, "group": s.group_id})
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                if not await self._handle_batch(consumer, producers, batch, stop):
                    return
                await self._observe_lag(consumer)
        except Stopping:
            log.info("stopping with an event uncommitted; it will be redelivered")
        finally:
            await consumer.stop()
            await producers.close()

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        producers: ProducerSlot,
        batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
        stop: asyncio.Event,
    ) -> bool:
        """Handle a fetched batch in order; False when asked to stop part way."""
        for tp, records in batch.items():
            for record in records:
                if stop.is_set():
                    return False
                if tp not in consumer.assignment():
                    # Revoked by a rebalance while this batch was handled (a replica joined
                    # or left): its new owner handles the rest.
                    break
                await self._one(consumer, producers, tp, record)
        return True

    async def _observe_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:  # nothing fetched from this partition yet
                continue
            try:
                position = await consumer.position(tp)
            except IllegalStateError:  # revoked since assignment() was read
                continue
            self.lag[tp] = max(0, highwater - position)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(self.lag[tp])
        for gone in set(self.lag) - consumer.assignment():
            del self.lag[gone]

    async def _one(
        self,
        consumer: AIOKafkaConsumer,
        producers: ProducerSlot,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
    ) -> None:
        started = time.perf_counter()
        await self.start.ready.wait()
        if record.timestamp < self.start.floor.get(tp, 0):
            # History a fresh group does not replay (read before its start was set).
            await self._commit(consumer, tp, record)
            self.metrics.events.labels("history").inc()
            return
        handled: Handled = await asyncio.to_thread(self.processor.handle, record.value)
        if handled.outcome == "dead_letter":
            await self._dead_letter(producers, record, handled.reason or "unknown")
        elif handled.outcome == "unmapped":
            await self._unmapped(producers, record, handled.reason or "unknown")
        await self._commit(consumer, tp, record)
        self.metrics.events.labels(handled.outcome).inc()
        self.metrics.handle_seconds.observe(time.perf_counter() - started)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
    ) -> None:
        try:
            await consumer.commit({tp: record.offset + 1})
        except (CommitFailedError, IllegalStateError) as exc:
            # (IllegalStateError: the partition was revoked in the meantime.) The record is
            # handled; its new owner may see it again, and the run it made is idempotent.
            self.metrics.commit_failures.inc()
            log.warning("offset commit refused after a rebalance", extra={"error": str(exc)})

    async def _dead_letter(
        self, producers: ProducerSlot, record: ConsumerRecord[bytes, bytes], reason: str
    ) -> None:
        """Put the original bytes on the dead-letter topic."""
        await self._send_acked(
            producers,
            self.settings.dlq_topic,
            record.value,
            record.key,
            dead_letter_headers(record, reason),
        )
        log.warning(
            "event dead-lettered",
            extra={
                "reason": reason,
                "source": f"{record.topic}/{record.partition}/{record.offset}",
            },
        )

    async def _unmapped(
        self, producers: ProducerSlot, record: ConsumerRecord[bytes, bytes], reason: str
    ) -> None:
        """Publish a detected anomaly no playbook rule matches, with the reason: reported,
        never dropped silently."""
        assert record.value is not None  # it decoded, so it has bytes
        event = unmapped_event(
            record.value, reason, datetime.now(UTC).isoformat().replace("+00:00", "Z")
        )
        labels = event["data"]["labels"]
        self.metrics.unmapped.labels(labels.get("level", ""), labels.get("resource_type", "")).inc()
        await self._send_acked(
            producers, self.settings.unmapped_topic, encode(event), record.key, []
        )
        log.info(
            "anomaly unmapped",
            extra={
                "reason": reason,
                "event_id": event["data"]["original_id"],
                "level": labels.get("level"),
                "resource_id": labels.get("resource_id"),
            },
        )

    async def _send_acked(
        self,
        producers: ProducerSlot,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Send and retry until the broker acks, because the offset may not be committed
        before."""
        delay = 0.5
        while True:
            producer = None
            try:
                producer = await producers.get()
                await producer.send_and_wait(topic, value=value, key=key, headers=headers)
                self.problem = None
                return
            except KafkaError as exc:
                if producer is not None:
                    producers.discard(producer)
                self.problem = f"Kafka topic {topic} unavailable: {exc!r}"
                log.warning(
                    "topic unavailable; retrying", extra={"topic": topic, "error": repr(exc)}
                )
                if self.stopping.is_set():
                    raise Stopping from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_backoff_s)

    def http_app(self) -> web.Application:
        return ops_app(self.metrics.registry, self.not_ready, self.ready_details)


def make_backend(settings: TriggerSettings) -> Backend:
    if settings.backend == "local":
        call = AdmissionCallSettings.from_env(settings.namespace)
        admission = AdmissionClient(call) if call is not None else None
        if settings.local_state_dir is not None:
            return DetachedLocalBackend(
                settings.local_state_dir,
                command=settings.step_command,
                admission=admission,
                step_runner=settings.local_step_runner,
            )
        return LocalBackend(command=settings.step_command, admission=admission)
    kube = KubeSettings(
        namespace=settings.namespace,
        api_url=settings.kube_api_url,
        token_file=settings.kube_token_file,
        ca_file=settings.kube_ca_file,
        request_timeout_s=settings.kube_timeout_s,
    )
    return ArgoBackend(api_client(kube), kube.namespace, kube.request_timeout_s)


async def _serve(settings: TriggerSettings) -> None:
    stop = signal_stop()
    stopping = threading.Event()

    async def relay_stop() -> None:
        # The processor's retry loops run in a thread and watch a threading.Event.
        await stop.wait()
        stopping.set()

    relay = asyncio.create_task(relay_stop())

    mapping = load_mapping(Path(settings.playbooks_file))
    policy_set = load_policy_set(settings.policies_dir)
    pool = open_pool(settings.pg_dsn, application_name="cct-trigger", max_size=2)
    try:
        processor = Processor(
            mapping,
            policy_set,
            make_backend(settings),
            connection=PoolConnections(pool, settings.pg_dsn).connection,
            stopping=stopping,
            max_backoff_s=settings.retry_max_backoff_s,
            limits=settings.event_limits,
            max_delta_usd_per_hour=settings.max_delta_usd_per_hour,
        )
        service = TriggerService(settings, processor, stopping)
        site = Site(
            service.http_app(), settings.host, settings.port, None, settings.header_timeout_s
        )
        async with serving([site]):
            await service.run(stop)
    finally:
        relay.cancel()
        pool.close()


def serve() -> None:
    """`cct serve trigger`."""
    try:
        settings = TriggerSettings.from_env()
        log.info("trigger starting", extra={"backend": settings.backend, "topic": settings.topic})
        asyncio.run(_serve(settings))
    except (SettingsError, MappingError, PolicyLoadError) as exc:
        # Configuration errors: say what is wrong and exit; restarting cannot fix them.
        raise SystemExit(f"cct serve trigger: {exc}") from None
