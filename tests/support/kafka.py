"""Credentials for the local Kafka, which authenticates every client (SASL/SCRAM) and
authorises each handler principal by ACL (scripts/services, from lambdas.common.kafka).

- `client_kwargs(bootstrap)`: aiokafka keyword arguments for the test's own clients, as the
  `admin` super user (creating, reading and producing to any topic).
- `handler_env(bootstrap, handler)`: the CCT_KAFKA_* variables a handler process gets, with
  that handler's own identity (bridge, trigger or steps) and so only its ACLs: the handler
  may use its production topics and the `cct.test.` sandbox (test topics and consumer groups
  must start with `cct.test.`; the trigger's groups may also start with `cct-trigger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lambdas.common.kafka import MECHANISM, KafkaAuth
from tests.support.services import load_settings


def _password_file(user: str) -> Path:
    kafka = load_settings().get("kafka") or {}
    files = kafka.get("password_files") or {}
    if user not in files:
        pytest.fail(
            f"no Kafka credentials for {user!r} in .local/services.json: restart Kafka with "
            "`scripts/services down kafka && scripts/services up kafka`",
            pytrace=False,
        )
    return Path(files[user])


def _users() -> dict[str, str]:
    kafka = load_settings().get("kafka") or {}
    return {u: Path(f).read_text().strip() for u, f in (kafka.get("password_files") or {}).items()}


def sasl_broker_properties() -> str:
    """server.properties lines of a broker that authenticates as the shared one does
    (scripts/services): SCRAM-SHA-512 clients, PLAIN between controller and broker."""
    admin = _users()["admin"]
    return (
        "controller.listener.names=CONTROLLER\ninter.broker.listener.name=CLIENT\n"
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT\n"
        f"sasl.enabled.mechanisms={MECHANISM}\nsasl.mechanism.inter.broker.protocol={MECHANISM}\n"
        "sasl.mechanism.controller.protocol=PLAIN\n"
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN\n"
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="{admin}" user_admin="{admin}";\n'
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin}";\n'
    )


def scram_users() -> list[str]:
    """StorageTool `format` arguments that create the shared broker's users."""
    return [
        arg
        for user, password in sorted(_users().items())
        for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={password}]")
    ]


def auth(bootstrap: str, user: str = "admin") -> KafkaAuth:
    return KafkaAuth(bootstrap, user, _password_file(user), "SASL_PLAINTEXT")


def client_kwargs(bootstrap: str, user: str = "admin") -> dict[str, Any]:
    return auth(bootstrap, user).client_kwargs()


def handler_env(bootstrap: str, handler: str) -> dict[str, str]:
    return {
        "CCT_KAFKA_BOOTSTRAP": bootstrap,
        "CCT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CCT_KAFKA_USERNAME": handler,
        "CCT_KAFKA_PASSWORD_FILE": str(_password_file(handler)),
    }
