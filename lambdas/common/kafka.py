"""Who may do what on Kafka, and how a handler proves who it is.

One module both sides use: the bundle turns `HANDLER_GRANTS` into Strimzi `KafkaUser` ACLs
(`components/kafka.py` through `infra/stack.py`), `scripts/services` into the local broker's
ACLs, and every handler's Kafka client authenticates with `KafkaAuth` (SCRAM-SHA-512 over
TLS, verifying the broker's certificate against the cluster CA; no listener anywhere is
plaintext). Only the bridge may write `cct.cost.anomalies`, so the trigger acts only on
events the bridge produced; a produce by any other principal is refused by the broker.

The local broker's side lives here too (`broker_security_properties`, `local_auth`,
`local_client_env`): `scripts/services`, `make up` and the tests configure it and its
clients from this one place.

Standard library only: `scripts/services` imports it with the system Python.
"""

from __future__ import annotations

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
PROTOCOL = "SASL_SSL"


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

    security_protocol: CCT_KAFKA_SECURITY_PROTOCOL, SASL_SSL (the default and the only value:
        SCRAM over TLS; the password never crosses the network in the clear).
    username / password_file: CCT_KAFKA_USERNAME, CCT_KAFKA_PASSWORD_FILE (the KafkaUser's
        secret, mounted; re-read on every connect so a rotated password is used).
    ca_file: CCT_KAFKA_CA_FILE, the CA that signed the broker's listener certificate
        (required: the client verifies the broker's certificate and name).
    """

    bootstrap: str
    username: str
    password_file: Path
    ca_file: Path

    @classmethod
    def from_env(cls, bootstrap: str) -> KafkaAuth:
        protocol = env_str("CCT_KAFKA_SECURITY_PROTOCOL", PROTOCOL)
        if protocol != PROTOCOL:
            raise SettingsError(
                f"CCT_KAFKA_SECURITY_PROTOCOL={protocol!r} must be {PROTOCOL}:"
                " every Kafka listener is TLS with SCRAM"
            )
        username = env_str("CCT_KAFKA_USERNAME")
        password_file = Path(env_str("CCT_KAFKA_PASSWORD_FILE"))
        if not os.environ.get("CCT_KAFKA_CA_FILE"):
            raise SettingsError(
                "CCT_KAFKA_CA_FILE is required: the CA the broker's certificate is verified with"
            )
        return cls(bootstrap, username, password_file, Path(env_str("CCT_KAFKA_CA_FILE")))

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate chain and that it names the bootstrap host."""
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"CCT_KAFKA_CA_FILE={self.ca_file}: {exc}") from exc

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producers, consumers and admin clients."""
        try:
            password = self.password_file.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"CCT_KAFKA_PASSWORD_FILE={self.password_file}: {exc}") from exc
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": PROTOCOL,
            "ssl_context": self.ssl_context(),
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": password,
        }


# ------------------------------------------------------------------ the local broker
# `scripts/services up kafka` writes these under .local/secrets (0600, never in git) and
# records them in .local/services.json's "kafka" entry, which the functions below read.
LOCAL_TLS_DIR = "kafka-tls"  # under .local/secrets: ca.crt and server.pem (key + cert)


def broker_security_properties(admin_password: str, tls_dir: Path) -> str:
    """server.properties lines of a local broker that authenticates and encrypts as the
    bundle's Strimzi cluster does: one client listener `CLIENT`, SASL_SSL with SCRAM-SHA-512
    and the certificate in `tls_dir` (`python -m lambdas.devstack.certs server`). The KRaft
    controller listener (loopback, broker to itself) authenticates with PLAIN."""
    keystore, truststore = tls_dir / "server.pem", tls_dir / "ca.crt"
    return (
        "controller.listener.names=CONTROLLER\ninter.broker.listener.name=CLIENT\n"
        f"listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,CLIENT:{PROTOCOL}\n"
        f"sasl.enabled.mechanisms={MECHANISM}\nsasl.mechanism.inter.broker.protocol={MECHANISM}\n"
        "sasl.mechanism.controller.protocol=PLAIN\n"
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN\n"
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="{admin_password}" user_admin="{admin_password}";\n'
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin_password}";\n'
        # The broker's own inter-broker client verifies the certificate as any client does.
        f"listener.name.client.ssl.keystore.type=PEM\n"
        f"listener.name.client.ssl.keystore.location={keystore}\n"
        f"listener.name.client.ssl.truststore.type=PEM\n"
        f"listener.name.client.ssl.truststore.location={truststore}\n"
        "ssl.endpoint.identification.algorithm=https\n"
        "ssl.enabled.protocols=TLSv1.3,TLSv1.2\n"
    )


def local_auth(kafka: dict[str, Any], user: str) -> KafkaAuth:
    """The identity of principal `user` of the local broker, from services.json's "kafka"."""
    files = kafka.get("password_files") or {}
    if user not in files or not kafka.get("ca_file"):
        raise SettingsError(
            f"the local Kafka has no TLS credentials for {user!r} in .local/services.json:"
            " restart it (scripts/services down kafka && scripts/services up kafka)"
        )
    return KafkaAuth(str(kafka["bootstrap"]), user, Path(files[user]), Path(kafka["ca_file"]))


def local_client_env(kafka: dict[str, Any], user: str) -> dict[str, str]:
    """The CCT_KAFKA_* variables a handler process started against the local broker gets."""
    auth = local_auth(kafka, user)
    return {
        "CCT_KAFKA_BOOTSTRAP": auth.bootstrap,
        "CCT_KAFKA_SECURITY_PROTOCOL": PROTOCOL,
        "CCT_KAFKA_USERNAME": auth.username,
        "CCT_KAFKA_PASSWORD_FILE": str(auth.password_file),
        "CCT_KAFKA_CA_FILE": str(auth.ca_file),
    }
