"""Real processes and small local servers for the routing, bridge and trigger tests.

- a private Kafka broker (KRaft, own ports and data dir) that a test may stop and restart;
- a private Alertmanager running a generated configuration;
- the bridge and the trigger as real `cct serve` subprocesses;
- a recording HTTP receiver shaped like Zenduty's Alertmanager integration endpoint;
- helpers to read a topic back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.contract.recorded import recorded_alert
from tests.support.kafka import client_kwargs, handler_env, sasl_broker_properties, scram_users
from tests.support.procs import free_port, http_ready, running
from tests.support.services import ROOT

CCT = str(ROOT / ".venv" / "bin" / "cct")
KAFKA_LIBS = ROOT / ".local" / "kafka" / "libs"
# Generous: the machine is shared, and a start-up that is merely slow must not fail a test.
STARTUP_TIMEOUT_S = 60.0


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ private Kafka broker
@dataclass
class PrivateKafka:
    """A single-node KRaft broker of our own, so a test can stop and restart it."""

    workdir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kafka.log"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            # C1 only: a test broker lives for seconds, start-up time matters most.
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
            "-cp",
            f"{KAFKA_LIBS}/*",
            main,
            *args,
        ]

    def format(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        props = self.workdir / "server.properties"
        host = "127.0.0.1"
        props.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.bootstrap.servers={host}:{self.controller_port}\n"
            f"listeners=CLIENT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}\n"
            f"advertised.listeners=CLIENT://{host}:{self.port},"
            f"CONTROLLER://{host}:{self.controller_port}\n"
            # Authenticated like the shared broker (same users), without its ACLs: the
            # tests that stop and restart this one are about faults, not permissions.
            + sasl_broker_properties()
            + f"log.dirs={self.workdir / 'data'}\n"
            "num.partitions=3\noffsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=3\n"
            "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=true\n"
            "min.insync.replicas=1\n"
        )
        (self.workdir / "log4j2.yaml").write_text(
            "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n"
            "      PatternLayout:\n        Pattern: '[%d] %p %m (%c)%n'\n"
            "  Loggers:\n    Root:\n      level: WARN\n      AppenderRef:\n"
            "        - ref: STDOUT\n"
            "    Logger:\n      - name: kafka.server.KafkaRaftServer\n        level: INFO\n"
        )
        # Never one starting with '-' (StorageTool would read it as an option), as Kafka's
        # own Uuid.randomUuid ensures.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                "--standalone",
                *scram_users(),
            ),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 3 * STARTUP_TIMEOUT_S) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {time.time()}\n".encode())
            offset = log.tell()
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.workdir / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def started() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"private Kafka exited:\n{self.log_path.read_text()[-3000:]}")
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return b"Kafka Server started" in fh.read()

        wait_until(started, timeout, "the private Kafka broker", interval=0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def private_kafka(workdir: Path) -> Iterator[PrivateKafka]:
    broker = PrivateKafka(workdir)
    broker.format()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------ reading topics back
async def consume_topic(
    bootstrap: str, topic: str, expected: int, timeout: float
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        **client_kwargs(bootstrap),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            out.extend(records)
    finally:
        await consumer.stop()
    return out


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` (at least `expected`, unless the timeout passes first)."""
    return asyncio.run(consume_topic(bootstrap, topic, expected, timeout))


def events_of(records: list[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.value is not None]


# ------------------------------------------------------------------ a Zenduty-shaped receiver
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class RecordingReceiver:
    """Accepts POSTs like Zenduty's integration endpoint and records them.

    `fail_next` answers that many requests with 500 first (to prove retries)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    fail = receiver.fail_next > 0
                    if fail:
                        receiver.fail_next -= 1
                    else:
                        receiver.received.append(
                            Received(self.path, dict(self.headers.items()), json.loads(body))
                        )
                self.send_response(500 if fail else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": false}' if fail else b'{"ok": true}')

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


# ------------------------------------------------------------------ real processes
@dataclass
class Bridge:
    url: str
    token: str
    proc: subprocess.Popen[bytes]


@contextmanager
def bridge_process(
    workdir: Path,
    bootstrap: str,
    topic: str,
    zenduty_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Bridge]:
    workdir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    token_file = workdir / "bridge.token"
    token_file.write_text(token + "\n")
    env = {
        **handler_env(bootstrap, "bridge"),
        "CCT_BRIDGE_TOPIC": topic,
        "CCT_BRIDGE_TOKEN_FILE": str(token_file),
        "CCT_BRIDGE_HOST": "127.0.0.1",
        "CCT_BRIDGE_PORT": str(port := free_port()),
        **(extra_env or {}),
    }
    if zenduty_url is not None:
        url_file = workdir / "zenduty.url"
        url_file.write_text(zenduty_url)
        env["CCT_BRIDGE_ZENDUTY_URL_FILE"] = str(url_file)
    base = f"http://127.0.0.1:{port}"
    with running(
        [CCT, "serve", "bridge"],
        http_ready(f"{base}/healthz"),
        workdir / "bridge.log",
        timeout=STARTUP_TIMEOUT_S,
        env=env,
    ) as proc:
        yield Bridge(base, token, proc)


@contextmanager
def alertmanager_process(workdir: Path, config: str) -> Iterator[str]:
    """A private Alertmanager (single node) with `config`; yields its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(
        [
            "prometheus-alertmanager",
            f"--config.file={cfg}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ],
        http_ready(f"{base}/-/ready"),
        workdir / "alertmanager.log",
        timeout=STARTUP_TIMEOUT_S,
    ):
        yield base


class FlakyProxy:
    """Forwards POSTs to `target`, but answers the first `failures` of them with 500.

    `forward_failed` decides whether a failed request reached the target first: False
    models an error before the bridge produced anything, True the worst case where the
    event is already on Kafka when the sender sees the error."""

    def __init__(self, target: str, failures: int, forward_failed: bool) -> None:
        self.target = target
        self.failures = failures
        self.forward_failed = forward_failed
        self.answers: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fail = len(proxy.answers) < proxy.failures
                status = 500
                if not fail or proxy.forward_failed:
                    req = urllib.request.Request(
                        proxy.target + self.path,
                        data=body,
                        method="POST",
                        headers={
                            "Authorization": self.headers.get("Authorization", ""),
                            "Content-Type": "application/json",
                        },
                    )
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:
                            status = resp.status
                    except urllib.error.HTTPError as exc:
                        status = exc.code
                if fail:
                    status = 500
                proxy.answers.append(status)
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def post_alerts(alertmanager: str, alerts: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def anomaly_alert(uid: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    """An alert as the real detector posts it to Alertmanager's v2 API: its recorded output
    (tests/contract) for a production instance, or a dev one when `env="dev"`, with this
    test's uid in its ids and a `test_uid` label (test-only: keeps tests on the shared
    Alertmanager apart)."""
    kind = "dev-instance" if labels.get("env") == "dev" else "prod-instance"
    alert = recorded_alert(kind, uid)
    alert["labels"] = {**alert["labels"], "severity": severity, "test_uid": uid, **labels}
    return alert


async def produce_async(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        acks = [await producer.send(topic, value=value, key=key) for key, value in items]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    asyncio.run(produce_async(bootstrap, topic, items))


async def _committed(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the end offsets) over `topic`."""
    producer = AIOKafkaProducer(**client_kwargs(bootstrap))
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=group)
    await producer.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
        ends = await consumer.end_offsets(partitions)
        committed = [await consumer.committed(tp) or 0 for tp in partitions]
    finally:
        await consumer.stop()
        await producer.stop()
    return sum(committed), sum(ends.values())


def committed_and_end(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    return asyncio.run(_committed(bootstrap, topic, group))


@dataclass
class Trigger:
    metrics_url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def trigger_process(workdir: Path, env: dict[str, str]) -> Iterator[Trigger]:
    """`cct serve trigger` with `env` on top of the test's environment."""
    port = free_port()
    full_env = {
        "CCT_TRIGGER_HOST": "127.0.0.1",
        "CCT_TRIGGER_PORT": str(port),
        "CCT_PLAYBOOKS_FILE": str(ROOT / "policies" / "playbooks.yaml"),
        "CCT_POLICY_DIR": str(ROOT / "policies" / "optimization"),
        # The smallest session the broker allows: a killed replica's partitions move fast.
        "CCT_TRIGGER_SESSION_TIMEOUT_MS": "6000",
        **env,
    }
    base = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    with running(
        [CCT, "serve", "trigger"],
        http_ready(f"{base}/healthz"),
        workdir / "trigger.log",
        timeout=STARTUP_TIMEOUT_S,
        env=full_env,
    ) as proc:
        yield Trigger(f"{base}/metrics", proc)
