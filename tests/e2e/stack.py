"""The system test's view of the stack `make up` started: only its public interfaces (the
cloud simulator's APIs, the collector's ingest endpoint as forwarders use it, the HTTP APIs of
VictoriaMetrics, Alertmanager and the Zenduty-compatible receiver, the Kafka topics, the
PostgreSQL tables and the dashboards' queries)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer

from lambdas.devstack.cloud import AwsSimulator, AzureUser, GcpUser
from lambdas.devstack.stack import admin_kafka

ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = ROOT / ".local" / "stack.json"
T = TypeVar("T")


def get_json(target: str) -> Any:
    with urllib.request.urlopen(target, timeout=5) as resp:
        return json.load(resp)


@dataclass
class Stack:
    doc: dict[str, Any]

    @classmethod
    def load(cls) -> Stack:
        if not STACK_FILE.exists():
            raise AssertionError(f"{STACK_FILE} is missing: run `make up` first")
        return cls(json.loads(STACK_FILE.read_text()))

    def service(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.doc["services"][name]
        return entry

    @property
    def dsn(self) -> str:
        return str(self.service("postgres")["dsn"])

    @property
    def bootstrap(self) -> str:
        return str(self.service("kafka")["bootstrap"])

    def unhealthy(self) -> list[str]:
        bad = []
        for name, part in self.doc["parts"].items():
            try:
                with urllib.request.urlopen(part["health"], timeout=5) as resp:
                    resp.read()
            except OSError:
                bad.append(f"{name} ({part['health']}, log {part['log']})")
        return bad

    def simulator(self, account: str) -> AwsSimulator:
        """The cloud simulator, sending events from `account`."""
        token = Path(self.doc["secrets"]["collector_token_file"]).read_text().strip()
        ingest = self.doc["parts"]["collector"]["ingest"]
        return AwsSimulator(self.service("moto")["url"], ingest, token, account)

    def azure(self, subscription: str) -> AzureUser:
        """A user of the Azure simulator, working in `subscription`."""
        return AzureUser(
            self.doc["parts"]["azure"]["arm"], self.doc["secrets"]["azure_user_file"], subscription
        )

    def gcp(self, project: str) -> GcpUser:
        """A user of the GCP simulator, working in `project`."""
        return GcpUser(
            self.doc["parts"]["gcp"]["api"], self.doc["secrets"]["gcp_user_token_file"], project
        )

    # ------------------------------------------------------------------ queries
    def vm_query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        result: list[dict[str, Any]] = get_json(
            f"{self.service('victoriametrics')['url']}/api/v1/query?{q}"
        )["data"]["result"]
        return result

    def alerts(self, resource_id: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"filter": f'resource_id="{resource_id}"'})
        found: list[dict[str, Any]] = get_json(
            f"{self.service('alertmanager')['url']}/api/v2/alerts?{q}"
        )
        return found

    def pages(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get_json(self.doc["parts"]["zenduty"]["pages"])
        return found

    def leases(self, engine: str) -> dict[str, float]:
        """The credential source's lease events of one engine (issued, revoked, ...)."""
        with urllib.request.urlopen(self.doc["parts"]["vault"]["metrics"], timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("cct_vaultdev_leases_total{") and f'engine="{engine}"' in line:
                event = line.split('event="', 1)[1].split('"', 1)[0]
                out[event] = float(line.rsplit(" ", 1)[1])
        return out

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(query, args).fetchall()


@dataclass
class TopicWatch:
    """Every record of some topics, read from the start in a background thread, each with
    the record's Kafka timestamp (epoch seconds: when the producer sent it)."""

    bootstrap: str
    topics: tuple[str, ...]
    records: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> TopicWatch:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        if not self.ready.wait(60):
            raise AssertionError(f"could not read {self.topics} from {self.bootstrap}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            *self.topics,
            **{**admin_kafka(), "bootstrap_servers": self.bootstrap},
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        self.ready.set()
        try:
            while not self.stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                with self.lock:
                    for tp, records in batches.items():
                        for r in records:
                            if r.value is not None:
                                sent = r.timestamp / 1000
                                self.records.append((tp.topic, sent, json.loads(r.value)))
        finally:
            await consumer.stop()

    def find(self, topic: str, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for _, e in self.find_timed(topic, match)]

    def find_timed(
        self, topic: str, match: Callable[[dict[str, Any]], bool]
    ) -> list[tuple[float, dict[str, Any]]]:
        """(Kafka timestamp, event) of the matching records, oldest first."""
        with self.lock:
            return [(ts, e) for t, ts, e in self.records if t == topic and match(e)]


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)
