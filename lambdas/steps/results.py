"""The `cct.optimization.results` event: one per finished run, published by the `record` step.

CloudEvents 1.0 structured JSON (docs/architecture.md, section 5), key = the workflow name
(the run id), type `io.cct.optimization.completed`. The id is a hash of (run id, final state):
a retried `record`, or Argo's exit handler recording the same outcome again, produces the
same id, so consumers deduplicate on it. The event is built from the rows `record` just
committed, so it never reports what PostgreSQL does not hold.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from lambdas.common.kafka import KafkaAuth
from lambdas.events.cloudevents import SPEC_VERSION, encode
from lambdas.steps.errors import Retryable
from lambdas.steps.settings import StepSettings
from lambdas.store.actions import RunOutcome

SOURCE = "/cct/steps"
COMPLETED = "io.cct.optimization.completed"


def result_event_id(run_id: str, state: str) -> str:
    # 128 bits of sha256, like the anomaly events' ids.
    return hashlib.sha256(f"{run_id}\x1f{state}".encode()).hexdigest()[:32]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def result_event(run_id: str, playbook: str, run: RunOutcome, time: str) -> dict[str, Any]:
    """The CloudEvent for a run in its final state; `time` is when it is published
    (RFC 3339)."""
    return {
        "specversion": SPEC_VERSION,
        "id": result_event_id(run_id, run.state),
        "source": SOURCE,
        "type": COMPLETED,
        "subject": run_id,
        "time": time,
        "datacontenttype": "application/json",
        "data": {
            "run_id": run_id,
            "playbook": playbook,
            "state": run.state,
            "reason": run.reason,
            "provider": run.provider,
            "resource_id": run.resource_id,
            "action": run.action,
            "outcome": run.outcome,
            "dry_run": run.dry_run,
            "estimated_monthly_saving_usd": _money(run.estimated_usd),
            "verified_monthly_saving_usd": _money(run.verified_usd),
        },
    }


def publish(kafka: KafkaAuth, settings: StepSettings, event: Mapping[str, Any]) -> None:
    """Produce the event and wait for every in-sync replica to acknowledge it.

    A step is one short process, so it opens one producer for one send (the services' self-
    healing `ProducerSlot` is for long-lived producers). Any failure is retryable: the run's
    rows are already committed, and the retried step produces the same event id. aiokafka is
    imported here: only this step needs it, and every step pays for its imports at start.
    """
    from aiokafka.errors import KafkaError

    try:
        asyncio.run(
            asyncio.wait_for(
                _send(kafka, settings.results_topic, event),
                settings.publish_timeout_s,
            )
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        raise Retryable(f"publishing to {settings.results_topic}: {type(exc).__name__}") from None


async def _send(kafka: KafkaAuth, topic: str, event: Mapping[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    try:
        await producer.start()
        await producer.send_and_wait(topic, encode(event), key=str(event["subject"]).encode())
    finally:
        await producer.stop()
