"""Who may do what on Kafka, and how a handler proves who it is.

One module both sides use: the bundle turns `HANDLER_GRANTS` into Strimzi `KafkaUser` ACLs
(`components/kafka.py` through `infra/stack.py`), `scripts/services` into the local broker's
ACLs, and every handler's Kafka client authenticates with `KafkaAuth` (SCRAM-SHA-512, over
TLS in a cluster). Only the bridge may write `cct.cost.anomalies`, so the trigger acts only
on events the bridge produced; a produce by any other principal is refused by the broker.

Standard library only: `scripts/services` imports it with the system Python.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lambdas.common.settings import SettingsError, env_str
from lambdas.contract import TOPIC_ANOMALIES, TOPIC_DEAD_LETTER, TOPIC_UNMAPPED

ANOMALIES_TOPIC = TOPIC_ANOMALIES
ANOMALIES_DLQ_TOPIC = TOPIC_DEAD_LETTER
UNMAPPED_TOPIC = TOPIC_UNMAPPED
RESULTS_TOPIC = "cct.optimization.results"
TRIGGER_GROUP = "cct-trigger"
MECHANISM = "SCRAM-SHA-512"
# The local broker only: topics under this prefix are a shared sandbox every handler
# principal may use, so tests can run a real handler on a topic of their own.
LOCAL_TEST_PREFIX = "cct.test."
Protocol = Literal["SASL_SSL", "SASL_PLAINTEXT"]


@dataclass(frozen=True)
class KafkaGrant:
    """One ACL: `operations` on a topic or consumer group, by exact name or by prefix."""

    resource: Literal["topic", "group"]
    name: str
    operations: tuple[str, ...]
    pattern: Literal["literal", "prefixed"] = "literal"


_PRODUCE = ("Write", "Describe")
_CONSUME = ("Read", "Describe")
HANDLER_GRANTS: dict[str, tuple[KafkaGrant, ...]] = {
    "bridge": (KafkaGrant("topic", ANOMALIES_TOPIC, _PRODUCE),),
    "trigger": (
        KafkaGrant("topic", ANOMALIES_TOPIC, _CONSUME),
        # Prefixed so replicas of differently named deployments (and tests) each get a group.
        KafkaGrant("group", TRIGGER_GROUP, ("Read",), "prefixed"),
        KafkaGrant("topic", ANOMALIES_DLQ_TOPIC, _PRODUCE),
        # Anomalies no playbook matches are published, never dropped (docs/routing.md).
        KafkaGrant("topic", UNMAPPED_TOPIC, _PRODUCE),
    ),
    "steps": (KafkaGrant("topic", RESULTS_TOPIC, _PRODUCE),),
}
TOPICS = (ANOMALIES_TOPIC, ANOMALIES_DLQ_TOPIC, UNMAPPED_TOPIC, RESULTS_TOPIC)


@dataclass(frozen=True)
class KafkaAuth:
    """How this process authenticates to Kafka, read once from the environment.

    security_protocol: CCT_KAFKA_SECURITY_PROTOCOL, SASL_SSL (default: TLS with the cluster
        CA) or SASL_PLAINTEXT (only to loopback brokers: the local services).
    username / password_file: CCT_KAFKA_USERNAME, CCT_KAFKA_PASSWORD_FILE (the KafkaUser's
        secret, mounted; re-read on every connect so a rotated password is used).
    ca_file: CCT_KAFKA_CA_FILE, the cluster CA (SASL_SSL only).
    """

    bootstrap: str
    username: str
    password_file: Path
    security_protocol: Protocol = "SASL_SSL"
    ca_file: Path | None = None

    @classmethod
    def from_env(cls, bootstrap: str) -> KafkaAuth:
        protocol = env_str("CCT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        if protocol not in ("SASL_SSL", "SASL_PLAINTEXT"):
            raise SettingsError(
                f"CCT_KAFKA_SECURITY_PROTOCOL={protocol!r} must be SASL_SSL or SASL_PLAINTEXT"
            )
        ca = os.environ.get("CCT_KAFKA_CA_FILE") or None
        auth = cls(
            bootstrap=bootstrap,
            username=env_str("CCT_KAFKA_USERNAME"),
            password_file=Path(env_str("CCT_KAFKA_PASSWORD_FILE")),
            security_protocol="SASL_SSL" if protocol == "SASL_SSL" else "SASL_PLAINTEXT",
            ca_file=Path(ca) if ca else None,
        )
        if auth.security_protocol == "SASL_SSL" and auth.ca_file is None:
            raise SettingsError("CCT_KAFKA_CA_FILE is required with SASL_SSL")
        if auth.security_protocol == "SASL_PLAINTEXT" and not _loopback_only(bootstrap):
            raise SettingsError(
                f"CCT_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the password in the clear; "
                f"only loopback brokers may use it, not {bootstrap}"
            )
        return auth

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producers, consumers and admin clients."""
        try:
            password = self.password_file.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"CCT_KAFKA_PASSWORD_FILE={self.password_file}: {exc}") from exc
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": password,
        }
        if self.security_protocol == "SASL_SSL":
            kwargs["ssl_context"] = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None
            )
        return kwargs


def _loopback_only(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True
