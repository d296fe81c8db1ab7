"""Only the bridge's identity may write the anomalies topic, so the trigger acts only on
events the bridge produced (issue 17: a CloudEvent from anyone who could reach Kafka started
a remediation). Checked on the real local broker, which authenticates every client
(SASL/SCRAM) and authorises each handler principal with the ACLs of `HANDLER_GRANTS`, the
same grants the bundle gives the Strimzi KafkaUsers."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from lambdas.common.kafka import ANOMALIES_TOPIC, HANDLER_GRANTS, RESULTS_TOPIC, KafkaAuth
from lambdas.common.settings import SettingsError
from tests.support.kafka import auth, client_kwargs


async def _produce(kwargs: dict[str, object], topic: str) -> None:
    producer = AIOKafkaProducer(**kwargs, acks="all", request_timeout_ms=10_000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, b'{"forged": true}', key=b"k")
    finally:
        await producer.stop()


@pytest.mark.parametrize("principal", ["trigger", "steps"])
def test_no_principal_but_the_bridge_may_write_the_anomalies_topic(
    kafka_bootstrap: str, principal: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_produce(client_kwargs(kafka_bootstrap, principal), ANOMALIES_TOPIC))


def test_the_bridge_writes_what_the_trigger_reads(kafka_bootstrap: str) -> None:
    # Valid JSON: this lands on the production topic, which the stack's consumers and the
    # system tests' watchers read after this suite.
    marker = json.dumps({"cct_test_marker": uuid.uuid4().hex}).encode()

    async def scenario() -> bool:
        producer = AIOKafkaProducer(**client_kwargs(kafka_bootstrap, "bridge"), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(ANOMALIES_TOPIC, marker, key=marker)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            ANOMALIES_TOPIC,
            **client_kwargs(kafka_bootstrap, "trigger"),
            group_id=f"cct-trigger-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    if any(r.value == marker for rs in batch.values() for r in rs):
                        return True
        finally:
            await consumer.stop()

    assert asyncio.run(scenario())


def test_the_bridge_may_not_write_the_results_topic(kafka_bootstrap: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_produce(client_kwargs(kafka_bootstrap, "bridge"), RESULTS_TOPIC))


@pytest.mark.parametrize("how", ["no-credentials", "wrong-password"])
def test_unauthenticated_clients_cannot_produce(
    kafka_bootstrap: str, tmp_path: Path, how: str
) -> None:
    if how == "no-credentials":
        kwargs: dict[str, object] = {"bootstrap_servers": kafka_bootstrap}
    else:
        (tmp_path / "pw").write_text("not-the-password")
        kwargs = KafkaAuth(
            kafka_bootstrap, "bridge", tmp_path / "pw", "SASL_PLAINTEXT"
        ).client_kwargs()
    with pytest.raises((KafkaError, TimeoutError)):
        asyncio.run(asyncio.wait_for(_produce(kwargs, ANOMALIES_TOPIC), 20))


def test_only_the_bridge_has_a_grant_on_the_anomalies_topic() -> None:
    writers = {
        user
        for user, grants in HANDLER_GRANTS.items()
        for g in grants
        if g.name == ANOMALIES_TOPIC and "Write" in g.operations
    }
    assert writers == {"bridge"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "CCT_KAFKA_USERNAME is required but not set"),
        (
            {"CCT_KAFKA_USERNAME": "trigger", "CCT_KAFKA_PASSWORD_FILE": "/p"},
            "CCT_KAFKA_CA_FILE is required with SASL_SSL",
        ),
        (
            {
                "CCT_KAFKA_USERNAME": "trigger",
                "CCT_KAFKA_PASSWORD_FILE": "/p",
                "CCT_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            },
            "CCT_KAFKA_SECURITY_PROTOCOL='PLAINTEXT' must be SASL_SSL or SASL_PLAINTEXT",
        ),
        (
            {
                "CCT_KAFKA_USERNAME": "trigger",
                "CCT_KAFKA_PASSWORD_FILE": "/p",
                "CCT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            },
            "only loopback brokers may use it, not kafka.cct.svc:9093",
        ),
    ],
)
def test_kafka_settings_name_the_variable(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("USERNAME", "PASSWORD_FILE", "SECURITY_PROTOCOL", "CA_FILE"):
        monkeypatch.delenv(f"CCT_KAFKA_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        KafkaAuth.from_env("kafka.cct.svc:9093")


def test_a_rotated_password_is_read_on_the_next_connect(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("one\n")
    identity = KafkaAuth("127.0.0.1:1", "bridge", tmp_path / "pw", "SASL_PLAINTEXT")
    assert identity.client_kwargs()["sasl_plain_password"] == "one"
    (tmp_path / "pw").write_text("two\n")
    assert identity.client_kwargs()["sasl_plain_password"] == "two"
    assert auth("127.0.0.1:1", "bridge").username == "bridge"
