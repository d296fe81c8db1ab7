"""A Kafka producer that survives broker outages, shared by the bridge and the trigger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaProducer


class ProducerSlot:
    """The current Kafka producer, replaced after any failed produce.

    aiokafka's idempotent producer does not recover when a batch expires unacknowledged (a
    broker outage longer than the request timeout): the sequence numbers it assigned leave a
    gap and every later batch fails with OutOfOrderSequenceNumber until the process restarts
    (measured in tests/bridge/test_faults.py; aio-libs/aiokafka#1017). A new producer gets a
    new producer id and starts its sequences afresh, so a failure costs one retry, not the
    process.
    """

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self._current: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._current is None:
                producer = self._factory()
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._current = producer
            return self._current

    def discard(self, producer: AIOKafkaProducer) -> None:
        """Stop using `producer`; its pending batches still get their chance to deliver
        (a duplicate is harmless: same event id) while it stops in the background."""
        current = self._current
        if current is None or current is not producer:
            return  # another request already replaced it
        self._current = None
        task = asyncio.create_task(current.stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            self._retiring.add(asyncio.create_task(current.stop()))
        await asyncio.gather(*self._retiring, return_exceptions=True)
