"""Bridge settings, read once from CCT_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lambdas.common.kafka import KafkaAuth
from lambdas.common.settings import SettingsError, env_float, env_int, env_str, kafka_bootstrap
from lambdas.contract import TOPIC_ANOMALIES
from lambdas.events.cloudevents import EventLimits


def read_secret(variable: str, path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None
    if not value:
        raise SettingsError(f"{variable}={path!r} is empty")
    return value


@dataclass(frozen=True)
class BridgeSettings:
    """
    kafka: CCT_KAFKA_BOOTSTRAP, brokers to produce to, and the bridge's Kafka identity
        (CCT_KAFKA_USERNAME, CCT_KAFKA_PASSWORD_FILE, ...: `lambdas.common.kafka.KafkaAuth`);
        only this identity may write the anomalies topic.
    topic: CCT_BRIDGE_TOPIC, default `cct.cost.anomalies`.
    token: the bearer token Alertmanager presents, read from the file named by
        CCT_BRIDGE_TOKEN_FILE (a mounted Secret; never an environment value).
    zenduty_url: the Zenduty integration URL (it embeds the integration key), read from the
        file named by CCT_BRIDGE_ZENDUTY_URL_FILE; unset disables the relay endpoint.
    host, port: CCT_BRIDGE_HOST (default 127.0.0.1; the bundle sets 0.0.0.0 in the pod) and
        CCT_BRIDGE_PORT (default 18083, distinct per handler: docs/architecture.md section 2).
    produce_timeout_s: CCT_BRIDGE_PRODUCE_TIMEOUT_S, default 5 s: how long a request waits for
        the broker's acknowledgement before answering 503. Alertmanager gives a notification
        at least 10 s including its own retries, so 5 s leaves room for one retry inside it.
    relay_timeout_s: CCT_BRIDGE_RELAY_TIMEOUT_S, default 5 s, for the call to Zenduty.
    max_body_bytes: CCT_BRIDGE_MAX_BODY_BYTES, default 4 MiB; Alertmanager groups are small,
        a larger body is not from Alertmanager.
    header_timeout_s / body_timeout_s: CCT_BRIDGE_HEADER_TIMEOUT_S (default 10 s) and
        CCT_BRIDGE_BODY_TIMEOUT_S (default 10 s): a client slower than that to send its
        headers or body has its connection closed (the body with a 408).
    max_json_depth: CCT_BRIDGE_MAX_JSON_DEPTH, default 32: deeper payloads are refused (400).
    max_event_bytes / max_event_labels / max_label_chars: CCT_BRIDGE_MAX_EVENT_BYTES
        (default 262144), CCT_BRIDGE_MAX_EVENT_LABELS (128), CCT_BRIDGE_MAX_LABEL_CHARS (4096):
        the trigger's limits (`EventLimits`); an alert whose event would pass none of them, or
        holds a NUL, is dropped and counted, the rest of its payload is produced.
    """

    kafka: KafkaAuth
    topic: str
    # Secrets: kept out of repr, so never in logs or tracebacks.
    token: str = field(repr=False)
    zenduty_url: str | None = field(repr=False)
    host: str
    port: int
    produce_timeout_s: float
    relay_timeout_s: float
    max_body_bytes: int
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_json_depth: int = 32
    max_event_bytes: int = 256 * 1024
    max_event_labels: int = 128
    max_label_chars: int = 4096

    @property
    def event_limits(self) -> EventLimits:
        return EventLimits(self.max_event_bytes, self.max_event_labels, self.max_label_chars)

    @classmethod
    def from_env(cls) -> BridgeSettings:
        import os

        token_file = env_str("CCT_BRIDGE_TOKEN_FILE")
        zenduty_file = os.environ.get("CCT_BRIDGE_ZENDUTY_URL_FILE") or None
        zenduty_url = (
            read_secret("CCT_BRIDGE_ZENDUTY_URL_FILE", zenduty_file) if zenduty_file else None
        )
        if zenduty_url is not None and not zenduty_url.startswith(("https://", "http://")):
            raise SettingsError("CCT_BRIDGE_ZENDUTY_URL_FILE must hold an http(s) URL")
        return cls(
            kafka=KafkaAuth.from_env(kafka_bootstrap()),
            topic=env_str("CCT_BRIDGE_TOPIC", TOPIC_ANOMALIES),
            token=read_secret("CCT_BRIDGE_TOKEN_FILE", token_file),
            zenduty_url=zenduty_url,
            # The bridge runs in a pod and must accept the cluster's traffic.
            host=env_str("CCT_BRIDGE_HOST", "127.0.0.1"),
            port=env_int("CCT_BRIDGE_PORT", 18083),
            produce_timeout_s=env_float("CCT_BRIDGE_PRODUCE_TIMEOUT_S", 5.0),
            relay_timeout_s=env_float("CCT_BRIDGE_RELAY_TIMEOUT_S", 5.0),
            max_body_bytes=env_int("CCT_BRIDGE_MAX_BODY_BYTES", 4 * 1024 * 1024),
            header_timeout_s=env_float("CCT_BRIDGE_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=env_float("CCT_BRIDGE_BODY_TIMEOUT_S", 10.0),
            max_json_depth=env_int("CCT_BRIDGE_MAX_JSON_DEPTH", 32),
            max_event_bytes=env_int("CCT_BRIDGE_MAX_EVENT_BYTES", 256 * 1024),
            max_event_labels=env_int("CCT_BRIDGE_MAX_EVENT_LABELS", 128),
            max_label_chars=env_int("CCT_BRIDGE_MAX_LABEL_CHARS", 4096),
        )
