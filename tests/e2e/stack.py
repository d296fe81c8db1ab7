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

    def settled(self, timeout: float = 120.0) -> list[str]:
        """The parts still unhealthy after up to `timeout` seconds. A test that darkens a
        shared service (tests/faults/test_database_dark.py drops PostgreSQL's packets) leaves
        a handler's query in flight to time out on its own (about a minute) before it is
        ready again: the next test waits for that rather than failing at once."""
        deadline = time.monotonic() + timeout
        while (bad := self.unhealthy()) and time.monotonic() < deadline:
            time.sleep(2.0)
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
    """Every record written to some topics after the watch starts, read in a background
    thread, each with the record's Kafka timestamp (epoch seconds: when the producer sent it).

    It starts at the topics' end offsets: what earlier runs or other tests left on the shared
    topics is not this test's evidence. A value that is not JSON is counted in `undecodable`
    (other writers may put anything on a topic), never a reason to stop watching; if the
    thread fails, every later lookup raises with its error instead of waiting out a timeout.
    """

    bootstrap: str
    topics: tuple[str, ...]
    records: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    undecodable: int = 0
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> TopicWatch:
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()
        if not self.ready.wait(60) or self.error is not None:
            raise AssertionError(
                f"could not read {self.topics} from {self.bootstrap}: {self.error!r}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)

    def _thread(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # handed to the test thread: check() raises it
            self.error = exc
            self.ready.set()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the Kafka watcher on {self.topics} failed: {self.error!r}")

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            *self.topics,
            **{**admin_kafka(), "bootstrap_servers": self.bootstrap},
            group_id=None,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            # Without a group every partition of the subscribed topics is assigned as soon as
            # their metadata arrives; positions are pinned at the end before `ready`.
            deadline = time.monotonic() + 30
            while {tp.topic for tp in consumer.assignment()} != set(self.topics):
                if time.monotonic() > deadline:
                    missing = set(self.topics) - {tp.topic for tp in consumer.assignment()}
                    raise AssertionError(f"topics {sorted(missing)} not found (run `make up`)")
                await asyncio.sleep(0.1)
            partitions = sorted(consumer.assignment())
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)
            self.ready.set()
            while not self.stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                with self.lock:
                    for tp, records in batches.items():
                        for r in records:
                            if r.value is None:
                                continue
                            try:
                                event = json.loads(r.value)
                            except ValueError:
                                self.undecodable += 1
                                continue
                            if isinstance(event, dict):
                                self.records.append((tp.topic, r.timestamp / 1000, event))
                            else:
                                self.undecodable += 1
        finally:
            await consumer.stop()

    def find(self, topic: str, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for _, e in self.find_timed(topic, match)]

    def find_timed(
        self, topic: str, match: Callable[[dict[str, Any]], bool]
    ) -> list[tuple[float, dict[str, Any]]]:
        """(Kafka timestamp, event) of the matching records, oldest first."""
        self.check()
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
