"""The bridge's HTTP shell: Alertmanager webhooks in, CloudEvents on Kafka out.

A request is answered 2xx only after the broker acknowledged every event of it (idempotent
producer, acks from all in-sync replicas); any failure to get that acknowledgement is a 503,
which Alertmanager retries. Redelivery is harmless: the event id is stable per alert
transition, so consumers deduplicate.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from lambdas.bridge.core import PayloadError, convert, parse_payload
from lambdas.bridge.settings import BridgeSettings
from lambdas.common.edge import BodyTimeout, read_body, timeout_response
from lambdas.common.httpshell import Site, add_ops_routes, serve_until_stopped, signal_stop
from lambdas.common.settings import SettingsError
from lambdas.events.producer import ProducerSlot

log = logging.getLogger("cct.bridge")

SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
# While the broker is unreachable, how often the bridge tries again on its own, so readiness
# comes back without waiting for a request (a not-ready pod gets none).
RECHECK_S = 5.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cct_bridge_requests_total",
            "Webhook requests by endpoint and answered status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "cct_bridge_rejected_total",
            "Requests refused with a 4xx, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "cct_bridge_events_produced_total",
            "Events acknowledged by the broker, by CloudEvents type.",
            ["type"],
            registry=self.registry,
        )
        self.ignored = Counter(
            "cct_bridge_alerts_ignored_total",
            "Alerts that are not CostAnomaly alerts (misrouted), dropped.",
            registry=self.registry,
        )
        self.produce_failures = Counter(
            "cct_bridge_produce_failures_total",
            "Requests answered 503 because the broker did not acknowledge in time.",
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            "cct_bridge_produce_seconds",
            "Time from request to broker acknowledgement of all its events.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.relay = Counter(
            "cct_bridge_zenduty_relay_total",
            "Payloads relayed to Zenduty, by outcome (delivered, rejected, failed).",
            ["outcome"],
            registry=self.registry,
        )


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Bridge:
    """The request handlers; one instance per process, holding the producer and metrics."""

    def __init__(self, settings: BridgeSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.producers = ProducerSlot(self._new_producer)
        # Why the last attempt to reach the broker failed; None once it acknowledged.
        self.kafka_error: str | None = "Kafka not connected yet"

    def not_ready(self) -> str | None:
        return None if self.kafka_error is None else f"Kafka unreachable: {self.kafka_error}"

    def _reject(self, endpoint: str, status: int, reason: str, message: str) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        self.metrics.requests.labels(endpoint, str(status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response(
            {"error": reason, "message": message}, status=status, headers=headers
        )

    async def _admit(self, request: web.Request, endpoint: str) -> bytes | web.Response:
        """The request body, or the 4xx answer for an unauthenticated or oversized request."""
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        # aiohttp keeps non-UTF-8 header bytes as surrogate escapes: encoded back the same way,
        # such a token is simply wrong (a 401), not an encoding error (a 500).
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8", "surrogateescape"), self.settings.token.encode()
        ):
            return self._reject(endpoint, 401, "unauthenticated", "missing or wrong bearer token")
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._reject(endpoint, 413, "too_large", f"body exceeds {limit} bytes")
        try:
            return await read_body(request, self.settings.body_timeout_s)
        except BodyTimeout as exc:
            self.metrics.rejected.labels("body_timeout").inc()
            self.metrics.requests.labels(endpoint, "408").inc()
            return timeout_response({"error": "body_timeout", "message": str(exc)})
        except web.HTTPRequestEntityTooLarge:
            return self._reject(endpoint, 413, "too_large", f"body exceeds {limit} bytes")

    async def alerts(self, request: web.Request) -> web.Response:
        endpoint = "alerts"
        body = await self._admit(request, endpoint)
        if isinstance(body, web.Response):
            return body
        try:
            conversion = convert(
                body, _now_rfc3339(), self.settings.event_limits, self.settings.max_json_depth
            )
        except PayloadError as exc:
            log.warning("rejected webhook payload", extra={"reason": str(exc)})
            return self._reject(endpoint, 400, "malformed", str(exc))
        self.metrics.ignored.inc(conversion.ignored)
        if conversion.invalid:
            self.metrics.rejected.labels("invalid_alert").inc(len(conversion.invalid))
        started = time.perf_counter()
        producer: AIOKafkaProducer | None = None
        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                producer = await self.producers.get()
                acks = [
                    await producer.send(self.settings.topic, value=e.value, key=e.key)
                    for e in conversion.events
                ]
                await asyncio.gather(*acks)
        except (KafkaError, TimeoutError, SettingsError, OSError) as exc:
            # (SettingsError, OSError: the Kafka credentials unreadable for now; 503 too.)
            if producer is not None:
                self.producers.discard(producer)
            self.kafka_error = repr(exc)
            self.metrics.produce_failures.inc()
            self.metrics.requests.labels(endpoint, "503").inc()
            log.warning(
                "broker did not acknowledge; answering 503 so Alertmanager retries",
                extra={"error": repr(exc), "events": len(conversion.events)},
            )
            return web.json_response(
                {"error": "unavailable", "message": f"broker did not acknowledge: {exc!r}"},
                status=503,
            )
        self.kafka_error = None
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        for e in conversion.events:
            self.metrics.events.labels(e.type).inc()
        self.metrics.requests.labels(endpoint, "200").inc()
        return web.json_response(
            {
                "events": len(conversion.events),
                "ignored": conversion.ignored,
                "invalid": conversion.invalid,
            }
        )

    async def relay_zenduty(self, request: web.Request) -> web.Response:
        endpoint = "relay_zenduty"
        body = await self._admit(request, endpoint)
        if isinstance(body, web.Response):
            return body
        if self.settings.zenduty_url is None:
            return self._reject(
                endpoint, 404, "relay_disabled", "CCT_BRIDGE_ZENDUTY_URL_FILE is unset"
            )
        try:
            parse_payload(body, self.settings.max_json_depth)
        except PayloadError as exc:
            return self._reject(endpoint, 400, "malformed", str(exc))
        status = await self._post_zenduty(request.app[SESSION_KEY], self.settings.zenduty_url, body)
        if 200 <= status < 300:
            self.metrics.relay.labels("delivered").inc()
            self.metrics.requests.labels(endpoint, "200").inc()
            return web.json_response({"relayed": True})
        # Zenduty's 5xx or no answer becomes our 502, which Alertmanager retries. Its 4xx is
        # passed through: resending the same payload to a wrong key cannot succeed.
        code = status if 400 <= status < 500 else 502
        self.metrics.relay.labels("failed" if code == 502 else "rejected").inc()
        self.metrics.requests.labels(endpoint, str(code)).inc()
        return web.json_response({"error": "upstream", "upstream_status": status}, status=code)

    @staticmethod
    async def _post_zenduty(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
        """Zenduty's status code, or 0 when it could not be reached."""
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                detail = (await resp.text())[:300]
                if resp.status >= 300:
                    log.warning(
                        "Zenduty refused the payload",
                        extra={"status": resp.status, "detail": detail},
                    )
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The URL carries the integration key: log the error type, never the URL.
            log.warning("Zenduty unreachable", extra={"error": type(exc).__name__})
            return 0

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                await self.producers.get()
            self.kafka_error = None
        except (KafkaError, TimeoutError) as exc:
            self.kafka_error = repr(exc)
        except (SettingsError, OSError) as exc:
            # The Kafka password or CA file unreadable for now (a Secret being replaced):
            # not ready, and the recheck tries again, instead of a recheck task that died.
            self.kafka_error = f"Kafka client settings: {exc}"
            log.warning("kafka settings unreadable", extra={"error": str(exc)})

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_S)
            if self.kafka_error is not None:
                await self._connect()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.settings.kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            # Latency matters more than batching at alert rates; a burst still batches.
            linger_ms=2,
            request_timeout_ms=int(self.settings.produce_timeout_s * 1000),
            retry_backoff_ms=100,
        )

    async def _clients(self, app: web.Application) -> AsyncIterator[None]:
        await self._connect()
        if self.kafka_error is not None:
            # Start anyway: requests answer 503 (Alertmanager retries) until the broker is up.
            log.warning("Kafka unavailable at start", extra={"error": self.kafka_error})
        recheck = asyncio.create_task(self._recheck())
        timeout = aiohttp.ClientTimeout(total=self.settings.relay_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                app[SESSION_KEY] = session
                yield
        finally:
            recheck.cancel()
            await asyncio.gather(recheck, return_exceptions=True)
            await self.producers.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.cleanup_ctx.append(self._clients)
        app.router.add_post("/v1/alerts", self.alerts)
        app.router.add_post("/v1/relay/zenduty", self.relay_zenduty)
        add_ops_routes(app, self.metrics.registry, self.not_ready)
        return app


def serve() -> None:
    """`cct serve bridge`."""
    try:
        settings = BridgeSettings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"cct serve bridge: {exc}") from None
    log.info("bridge starting", extra={"settings": repr(settings)})

    async def main() -> None:
        site = Site(
            Bridge(settings).app(), settings.host, settings.port, None, settings.header_timeout_s
        )
        await serve_until_stopped([site], signal_stop())

    asyncio.run(main())
