"""Trigger settings, read once from CCT_* environment variables."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

from lambdas import contract
from lambdas.common.kafka import KafkaAuth
from lambdas.common.pg import DsnSource
from lambdas.common.settings import (
    SettingsError,
    env_float,
    env_int,
    env_str,
    kafka_bootstrap,
    pg_dsn_source,
)
from lambdas.events.cloudevents import EventLimits
from lambdas.trigger.local import STEP_RUNNERS, StepRunner

REPO = Path(__file__).resolve().parents[2]


def _from_repo(value: str) -> Path:
    """A relative path names a file of the repository, wherever the trigger was started."""
    path = Path(value)
    return path if path.is_absolute() else REPO / path


@dataclass(frozen=True)
class TriggerSettings:
    """
    kafka: CCT_KAFKA_BOOTSTRAP and the trigger's Kafka identity (`KafkaAuth`: CCT_KAFKA_USERNAME,
        CCT_KAFKA_PASSWORD_FILE, ...); its ACLs let it read the anomalies topic, which only
        the bridge may write, so it acts only on the bridge's events.
    topic / dlq_topic / unmapped_topic: CCT_TRIGGER_TOPIC (default `cct.cost.anomalies`),
        CCT_TRIGGER_DLQ_TOPIC (default `cct.cost.anomalies.dlq`) and
        CCT_TRIGGER_UNMAPPED_TOPIC (default `cct.cost.anomalies.unmapped`: detected anomalies
        no playbook rule matches, as `io.cct.anomaly.unmapped` events with the reason).
    fresh_group_start_s: CCT_TRIGGER_FRESH_GROUP_START_S, default 3600: a consumer group
        without a committed offset on a partition (a new deployment, a renamed group) starts
        at the events of the last this many seconds, not at the topic's beginning: replaying
        days of history would start workflows for anomalies long over. A group with a
        committed offset always resumes there, however long it was down.
    group_id: CCT_TRIGGER_GROUP, default `cct-trigger`: every replica joins it, so each
        partition has one reader.
    pg_dsn: CCT_PG_DSN_FILE (a DSN file Vault Agent keeps current; re-read on every connect)
        or CCT_PG_DSN.
    backend: CCT_TRIGGER_BACKEND, `argo` (default, in the cluster) or `local` (development).
    playbooks_file: CCT_PLAYBOOKS_FILE, default `policies/playbooks.yaml` (schema beside it).
    policies_dir: CCT_POLICY_DIR, default `policies/optimization`.
    namespace: CCT_TRIGGER_ARGO_NAMESPACE, default `cct-system`, where Workflows are created.
    kube_api_url / kube_token_file / kube_ca_file: CCT_TRIGGER_KUBE_API_URL,
        CCT_TRIGGER_KUBE_TOKEN_FILE, CCT_TRIGGER_KUBE_CA_FILE; unset API URL = the pod's
        in-cluster service account.
    kube_timeout_s: CCT_TRIGGER_KUBE_TIMEOUT_S, default 10 s per API call.
    step_command: CCT_TRIGGER_STEP_COMMAND, default `cct`: how the local backend runs
        `<command> step NAME`.
    local_state_dir: CCT_TRIGGER_LOCAL_STATE_DIR: with the local backend, where workflow
        objects are created and run by their own runner processes, as Argo would
        (`lambdas/trigger/detached.py`); unset, the local backend runs each playbook inside
        the consumer, one at a time (tests).
    local_step_runner: CCT_TRIGGER_LOCAL_STEP_RUNNER, `fork` (default) or `process`: how a
        detached runner runs each step. `fork` imports the step code once per workflow and
        forks a child per step (a Python start-up saved per step: 2 to 8 s each on a busy
        machine); `process` runs `<step_command> step NAME` as a step pod does.
    host, port: CCT_TRIGGER_HOST (default 127.0.0.1) and CCT_TRIGGER_PORT (default 18084) for
        /healthz and /metrics.
    max_poll_interval_ms: CCT_TRIGGER_MAX_POLL_INTERVAL_MS. The local backend runs a whole
        playbook per event (execute may take 30 min), so its default is 1 h; Argo submission
        takes milliseconds, its default is Kafka's 5 min.
    session_timeout_ms: CCT_TRIGGER_SESSION_TIMEOUT_MS, default 10 s: how long a crashed
        replica holds its partitions before another takes over.
    retry_max_backoff_s: CCT_TRIGGER_RETRY_MAX_BACKOFF_S, default 30 s: the longest wait
        between retries of a backend or database that is unavailable.
    max_event_bytes / max_event_labels / max_label_chars: CCT_TRIGGER_MAX_EVENT_BYTES
        (default 262144), CCT_TRIGGER_MAX_EVENT_LABELS (128), CCT_TRIGGER_MAX_LABEL_CHARS
        (4096): an event beyond any of them, or with a NUL character, is dead-lettered.
    max_delta_usd_per_hour: CCT_TRIGGER_MAX_DELTA_USD_PER_HOUR, default 1000000: an anomaly
        whose `delta_usd_per_hour` is larger in magnitude is dead-lettered, not planned.
    header_timeout_s: CCT_TRIGGER_HEADER_TIMEOUT_S, default 10 s: a client of /healthz or
        /metrics that has not sent its request headers by then is disconnected.
    """

    kafka: KafkaAuth
    topic: str
    dlq_topic: str
    unmapped_topic: str
    fresh_group_start_s: float
    group_id: str
    pg_dsn: str | DsnSource
    backend: Literal["argo", "local"]
    playbooks_file: Path
    policies_dir: Path
    namespace: str
    kube_api_url: str | None
    kube_token_file: str | None
    kube_ca_file: str | None
    kube_timeout_s: float
    step_command: tuple[str, ...]
    local_state_dir: Path | None
    local_step_runner: StepRunner
    host: str
    port: int
    max_poll_interval_ms: int
    session_timeout_ms: int
    retry_max_backoff_s: float
    max_event_bytes: int
    max_event_labels: int
    max_label_chars: int
    max_delta_usd_per_hour: Decimal
    header_timeout_s: float

    @property
    def event_limits(self) -> EventLimits:
        return EventLimits(self.max_event_bytes, self.max_event_labels, self.max_label_chars)

    @classmethod
    def from_env(cls) -> TriggerSettings:
        backend = env_str("CCT_TRIGGER_BACKEND", "argo")
        if backend not in ("argo", "local"):
            raise SettingsError(f"CCT_TRIGGER_BACKEND={backend!r} must be argo or local")
        poll_default = 3_600_000 if backend == "local" else 300_000
        step_runner = env_str("CCT_TRIGGER_LOCAL_STEP_RUNNER", "fork")
        if step_runner not in STEP_RUNNERS:
            raise SettingsError(
                f"CCT_TRIGGER_LOCAL_STEP_RUNNER={step_runner!r} must be one of {STEP_RUNNERS}"
            )
        return cls(
            kafka=KafkaAuth.from_env(kafka_bootstrap()),
            topic=env_str("CCT_TRIGGER_TOPIC", contract.TOPIC_ANOMALIES),
            dlq_topic=env_str("CCT_TRIGGER_DLQ_TOPIC", contract.TOPIC_DEAD_LETTER),
            unmapped_topic=env_str("CCT_TRIGGER_UNMAPPED_TOPIC", contract.TOPIC_UNMAPPED),
            fresh_group_start_s=env_float("CCT_TRIGGER_FRESH_GROUP_START_S", 3600.0),
            group_id=env_str("CCT_TRIGGER_GROUP", "cct-trigger"),
            pg_dsn=pg_dsn_source(),
            backend="local" if backend == "local" else "argo",
            playbooks_file=_from_repo(env_str("CCT_PLAYBOOKS_FILE", "policies/playbooks.yaml")),
            policies_dir=_from_repo(env_str("CCT_POLICY_DIR", "policies/optimization")),
            namespace=env_str("CCT_TRIGGER_ARGO_NAMESPACE", "cct-system"),
            kube_api_url=os.environ.get("CCT_TRIGGER_KUBE_API_URL") or None,
            kube_token_file=os.environ.get("CCT_TRIGGER_KUBE_TOKEN_FILE") or None,
            kube_ca_file=os.environ.get("CCT_TRIGGER_KUBE_CA_FILE") or None,
            kube_timeout_s=env_float("CCT_TRIGGER_KUBE_TIMEOUT_S", 10.0),
            step_command=tuple(shlex.split(env_str("CCT_TRIGGER_STEP_COMMAND", "cct"))),
            local_state_dir=(
                Path(os.environ["CCT_TRIGGER_LOCAL_STATE_DIR"]).resolve()
                if os.environ.get("CCT_TRIGGER_LOCAL_STATE_DIR")
                else None
            ),
            local_step_runner="fork" if step_runner == "fork" else "process",
            # The trigger runs in a pod; its probes and scrapes come from the cluster.
            host=env_str("CCT_TRIGGER_HOST", "127.0.0.1"),
            port=env_int("CCT_TRIGGER_PORT", 18084),
            max_poll_interval_ms=env_int("CCT_TRIGGER_MAX_POLL_INTERVAL_MS", poll_default),
            session_timeout_ms=env_int("CCT_TRIGGER_SESSION_TIMEOUT_MS", 10_000),
            retry_max_backoff_s=env_float("CCT_TRIGGER_RETRY_MAX_BACKOFF_S", 30.0),
            max_event_bytes=env_int("CCT_TRIGGER_MAX_EVENT_BYTES", 256 * 1024),
            max_event_labels=env_int("CCT_TRIGGER_MAX_EVENT_LABELS", 128),
            max_label_chars=env_int("CCT_TRIGGER_MAX_LABEL_CHARS", 4096),
            max_delta_usd_per_hour=Decimal(
                env_int("CCT_TRIGGER_MAX_DELTA_USD_PER_HOUR", 1_000_000)
            ),
            header_timeout_s=env_float("CCT_TRIGGER_HEADER_TIMEOUT_S", 10.0),
        )
