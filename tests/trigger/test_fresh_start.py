"""Where a fresh consumer group starts, on the real Kafka: an event that lands while the
trigger looks up its start is read, not skipped (CI caught the race once: an alert posted
while a new trigger was starting never became a workflow)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from lambdas.trigger.service import FreshGroupStart
from tests.support.kafka import client_kwargs


async def _send(bootstrap: str, tp: TopicPartition, value: bytes) -> None:
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(tp.topic, value, partition=tp.partition)
    finally:
        await producer.stop()


async def _race(bootstrap: str, uid: str) -> list[bytes]:
    tp = TopicPartition(f"cct.test.fresh.{uid}", 0)
    await _send(bootstrap, tp, b"history")
    await asyncio.sleep(2.0)  # older than the 1 s window below
    consumer = AIOKafkaConsumer(
        **client_kwargs(bootstrap),
        group_id=f"cct-fresh-{uid}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        lookup = consumer.offsets_for_times

        async def lookup_then_an_event_lands(*args: Any, **kwargs: Any) -> Any:
            found = await lookup(*args, **kwargs)
            await _send(bootstrap, tp, b"new")
            return found

        consumer.offsets_for_times = lookup_then_an_event_lands
        await FreshGroupStart(consumer, seconds=1.0)._start_recent([tp])
        out: list[bytes] = []
        deadline = time.monotonic() + 10
        while not out and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            out += [r.value or b"" for r in batch.get(tp, [])]
        return out
    finally:
        await consumer.stop()


def test_an_event_landing_while_a_fresh_group_looks_up_its_start_is_read(
    kafka_bootstrap: str, uid: str
) -> None:
    assert asyncio.run(_race(kafka_bootstrap, uid)) == [b"new"]
