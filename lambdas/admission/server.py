"""`cct serve admission`: the ValidatingAdmissionWebhook's HTTPS server (the I/O shell).

- POST /validate on the TLS port: AdmissionReview v1 in and out (`review.decide` decides).
  Mutual TLS: only a client certificate from `CCT_ADMISSION_CLIENT_CA` completes the
  handshake, and only one whose CN or DNS SAN is in `CCT_ADMISSION_CLIENT_NAMES` (the API
  server) gets a decision; anything else is refused before the body is read, so it can
  neither count towards the blast radius nor reach the audit table.
- GET /healthz, /readyz and /metrics on the plain port (the shared shell,
  `lambdas.common.httpshell`): /readyz is 200 only while a valid policy set is loaded, else 503
  with the reason; both bodies name the policy set in use.

Slow work never sits on the admission path: the body is decoded and decided on a worker
thread under the request budget (the failure mode answers when it runs out), decisions are
queued for a background writer, and the policy directory is re-read on a timer, keeping the
last good set when the new files are invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from lambdas.admission.metrics import AdmissionMetrics
from lambdas.admission.recent import WINDOW, RecentActions
from lambdas.admission.recorder import DecisionRecorder
from lambdas.admission.review import (
    BadReview,
    Context,
    Outcome,
    decide,
    fail_outcome,
    parse_review,
)
from lambdas.admission.settings import AdmissionSettings
from lambdas.common.edge import TooDeep, holds_nul, loads_bounded
from lambdas.common.httpshell import Site, ops_app, serving, signal_stop
from lambdas.common.settings import SettingsError
from lambdas.policy.loader import PolicyLoadError, parse_policy_files, policy_files
from lambdas.policy.policyset import PolicySet
from lambdas.store.db import StoreError, connect
from lambdas.store.decisions import admitted_since

log = logging.getLogger("cct.admission")


class PolicyHolder:
    """The policy set in use, and whether the files on disk are that set."""

    def __init__(self, settings: AdmissionSettings, metrics: AdmissionMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: PolicySet | None = None
        self.stale_reason: str | None = None
        self._last_files: dict[str, bytes] | None = None
        self._last_error: str | None = None

    def read_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in policy_files(self.settings.policy_dir)}

    def reload(self) -> None:
        """Load the directory if it changed; on invalid files keep the last good set."""
        try:
            files = self.read_files()
        except (OSError, PolicyLoadError) as exc:
            self._failed(None, str(exc))
            return
        if files == self._last_files:
            return
        self._last_files = files
        try:
            policy_set = parse_policy_files(files, origin=str(self.settings.policy_dir))
        except PolicyLoadError as exc:
            self._failed(files, str(exc))
            return
        self.current = policy_set
        self.stale_reason = None
        self._last_error = None
        self.metrics.reloads.labels(result="success").inc()
        self.metrics.policy_set_valid.set(1)
        self.metrics.policy_set_loaded.set(time.time())
        self.metrics.policy_rules.set(len(policy_set.rules))
        log.info(
            "policy set loaded",
            extra={"fingerprint": policy_set.fingerprint, "rules": len(policy_set.rules)},
        )

    def _failed(self, files: dict[str, bytes] | None, error: str) -> None:
        if files is None and error == self._last_error:
            return  # the same unreadable directory: already reported
        self._last_files = files
        self._last_error = error
        self.metrics.reloads.labels(result="failure").inc()
        self.metrics.policy_set_valid.set(0)
        kept = self.current.fingerprint[:12] if self.current else None
        self.stale_reason = (
            f"the newest CCT policy files are invalid; deciding with the last good set {kept}"
            if kept
            else None
        )
        log.error(
            "policy files invalid; keeping the last good set"
            if kept
            else "policy files invalid; no policy set in use, the failure mode decides",
            extra={"errors": error.splitlines(), "kept_fingerprint": kept},
        )


class AdmissionServer:
    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings = settings
        self.metrics = AdmissionMetrics()
        self.policies = PolicyHolder(settings, self.metrics)
        self.recent = RecentActions()
        self.recorder = DecisionRecorder(settings.pg_dsn, self.metrics, settings.decision_queue)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="decide")
        # The listening context only hands each new connection to the context of the newest
        # good key pair (from the SNI callback, which runs for every client hello, with or
        # without SNI), so a rotated certificate is served without re-binding the socket.
        self._ssl = _tls_context(settings.client_ca)
        self._ssl.sni_callback = self._use_current_certificate
        self._current_ssl: ssl.SSLContext | None = None
        self._cert_mtimes: tuple[float, ...] | None = None
        self._sites = contextlib.AsyncExitStack()
        self.metrics.decision_queue_depth.set_function(self.recorder.queue_depth)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._load_certificate()
        self.policies.reload()
        self.recorder.start()
        webhook = web.Application(client_max_size=self.settings.max_body_bytes)
        webhook.router.add_post("/validate", self.validate)
        ops = ops_app(self.metrics.registry, self.not_ready, self.ready_details)
        host, timeout = self.settings.host, self.settings.header_timeout_s
        sites = [
            Site(webhook, host, self.settings.port, self._ssl, timeout),
            Site(ops, host, self.settings.metrics_port, None, timeout),
        ]
        await self._sites.enter_async_context(serving(sites))
        self._tasks = [
            asyncio.create_task(self._every(self.settings.reload_interval_s, self._reload)),
            # Not awaited before serving: an unreachable database must not delay admission.
            asyncio.create_task(
                self._every(self.settings.recent_refresh_s, self._refresh_recent, at_once=True)
            ),
        ]
        log.info(
            "admission webhook listening",
            extra={
                "port": self.settings.port,
                "metrics_port": self.settings.metrics_port,
                "failure_mode": self.settings.failure_mode,
            },
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sites.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def validate(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        budget = self.settings.request_timeout_s
        refused = self._refuse_caller_or_media(request)
        if refused is not None:
            return refused
        try:
            body = await asyncio.wait_for(request.read(), budget)
        except TimeoutError:
            return self._refuse(408, "timeout", f"request body not received within {budget}s")
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(
                413, "oversized", f"request body exceeds {self.settings.max_body_bytes} bytes"
            )
        now = datetime.now(UTC)
        policy_set, stale = self.policies.current, self.policies.stale_reason

        def context(uid: str) -> Context:
            return Context(
                now=now,
                policy_set=policy_set,
                recent_actions=self.recent.view(now, exclude=uid),
                failure_mode=self.settings.failure_mode,
                approval_templates=self.settings.approval_templates,
                controller_users=self.settings.controller_users,
                stale_reason=stale,
            )

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, _decode_and_decide, body, context, self.settings
        )
        outcome: Outcome | None
        try:
            outcome = await asyncio.wait_for(
                future, max(budget - (time.perf_counter() - started), 0.0)
            )
        except BadReview as exc:
            return self._refuse(400, "malformed", str(exc))
        except TimeoutError:
            outcome = self._fail(body, "timeout", f"no decision within {budget}s")
        except Exception as exc:
            # A bug, not bad input: still an AdmissionReview answer, by the failure mode.
            log.exception("admission decision failed")
            outcome = self._fail(body, "internal_error", f"internal error: {exc!r}")
        if outcome is None:
            return self._refuse(400, "malformed", "not an AdmissionReview with a uid")
        self._account(outcome, now)
        self.metrics.duration.observe(time.perf_counter() - started)
        return web.json_response(outcome.response())

    def _refuse_caller_or_media(self, request: web.Request) -> web.Response | None:
        caller = _client_names(request)
        if not caller & self.settings.client_names:
            # Verified by the CA but not the API server (another holder of a certificate
            # from the same CA): no decision, nothing counted or recorded.
            return self._refuse(
                403, "forbidden_client", f"client certificate {sorted(caller)} may not call"
            )
        if request.content_type != "application/json":
            return self._refuse(415, "unsupported_media_type", "expected application/json")
        return None

    def _fail(self, body: bytes, failure: str, why: str) -> Outcome | None:
        uid = _uid_of(body, self.settings)
        if uid is None:
            return None
        return fail_outcome(uid, self.settings.failure_mode, failure, why)

    def _account(self, outcome: Outcome, now: datetime) -> None:
        self.metrics.requests.labels(
            allowed=str(outcome.allowed).lower(), verdict=outcome.verdict
        ).inc()
        if outcome.failure is not None:
            self.metrics.failures.labels(
                reason=outcome.failure, mode=self.settings.failure_mode
            ).inc()
        record = outcome.record
        if record is not None:
            self.recorder.submit(record)
            if record.allowed and record.dry_run is False and record.account_id:
                self.recent.add(record.decision_id, record.account_id, now)
        if not outcome.allowed:
            log.info(
                "workflow refused",
                extra={"uid": outcome.uid, "verdict": outcome.verdict, "why": outcome.message},
            )

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self.metrics.bad_requests.labels(reason=reason).inc()
        log.warning("bad admission request", extra={"status": status, "why": message})
        return web.json_response({"error": message}, status=status)

    def not_ready(self) -> str | None:
        if self.policies.current is None:
            return (
                "no valid policy set is loaded; the failure mode "
                f"({self.settings.failure_mode}) decides"
            )
        return None

    def ready_details(self) -> dict[str, Any]:
        current = self.policies.current
        return {
            "policy_set": current.fingerprint if current else None,
            "files_valid": self.policies.stale_reason is None and current is not None,
            "failure_mode": self.settings.failure_mode,
        }

    async def _every(
        self, interval_s: float, job: Callable[[], Awaitable[None]], at_once: bool = False
    ) -> None:
        if not at_once:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await job()
            except Exception:
                # One failed round (a bug, an unexpected driver error) must not end every
                # later reload or refresh: the task would die silently and the webhook would
                # keep deciding with stale policies or blast-radius counts.
                log.exception("periodic %s failed; trying again next interval", job.__name__)
            await asyncio.sleep(interval_s)

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.policies.reload)
        self._load_certificate()

    def _load_certificate(self) -> None:
        """(Re)load the serving certificate when cert-manager rotated it; new connections use
        the new one. A broken pair keeps the previous one."""
        cert, key = self.settings.tls_cert, self.settings.tls_key
        client_ca = self.settings.client_ca
        try:
            mtimes = tuple(p.stat().st_mtime for p in (cert, key, client_ca))
            if mtimes == self._cert_mtimes:
                return
            fresh = _tls_context(client_ca)
            fresh.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            if self._cert_mtimes is None:
                raise
            log.error("cannot load the rotated certificate; keeping the previous one: %s", exc)
            return
        if self._current_ssl is None:
            # The listening context needs a certificate of its own to start.
            self._ssl.load_cert_chain(cert, key)
        self._current_ssl = fresh
        self._cert_mtimes = mtimes
        log.info("serving certificate loaded", extra={"cert": str(cert)})

    def _use_current_certificate(
        self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if self._current_ssl is not None:
            conn.context = self._current_ssl

    async def _refresh_recent(self) -> None:
        now = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(None, self._read_admitted, now - WINDOW)
        except StoreError as exc:
            log.warning("cannot read recent actions; using this replica's own: %s", exc)
            return
        self.recent.merge(rows, now)

    def _read_admitted(self, since: datetime) -> list[tuple[str, str, datetime]]:
        with connect(self.settings.pg_dsn, application_name="cct-admission") as conn:
            return admitted_since(conn, since - timedelta(seconds=1))


def _tls_context(client_ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Set on the listening context too: the SNI callback swaps in the newest key pair, but the
    # verification mode of a connection is the one it started with.
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca))
    # The API server speaks HTTP/2 to webhooks that offer it; aiohttp serves HTTP/1.1.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _client_names(request: web.Request) -> frozenset[str]:
    """CN and DNS SANs of the verified client certificate (empty without one)."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not isinstance(peer, dict):
        return frozenset()
    names = {value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS")
    return frozenset(names)


def _decode_and_decide(
    body: bytes, context: Callable[[str], Context], settings: AdmissionSettings
) -> Outcome:
    """Runs on a worker thread, so a large body never stalls the event loop."""
    review = _bounded_review(body, settings)
    uid, _ = parse_review(review)
    return decide(review, context(uid))


def _bounded_review(body: bytes, settings: AdmissionSettings) -> Any:
    """The decoded body, or BadReview when it is beyond the edge limits: nested too deep, a
    uid too long to be one, or a NUL anywhere (no decision holding it could be recorded)."""
    try:
        review = loads_bounded(body, settings.max_json_depth)
    except TooDeep as exc:
        raise BadReview(str(exc)) from None
    except ValueError as exc:
        raise BadReview(f"body is not JSON: {exc}") from None
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if isinstance(uid, str) and len(uid) > settings.max_uid_chars:
        raise BadReview(
            f"request uid of {len(uid)} characters exceeds the limit of {settings.max_uid_chars}"
        )
    if b"\\u0000" in body and holds_nul(review):
        raise BadReview("a string in the review holds a NUL character")
    return review


def _uid_of(body: bytes, settings: AdmissionSettings) -> str | None:
    try:
        uid = _bounded_review(body, settings)["request"]["uid"]
    except (BadReview, KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) and uid else None


async def _run(settings: AdmissionSettings) -> None:
    server = AdmissionServer(settings)
    stop = signal_stop()
    await server.start()
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def serve() -> None:
    """Entry point of `cct serve admission` (settings from CCT_* variables)."""
    try:
        settings = AdmissionSettings.from_env()
        asyncio.run(_run(settings))
    except (SettingsError, OSError, ssl.SSLError) as exc:
        # Bad configuration or an unusable certificate: say which, do not restart-loop on
        # a traceback.
        raise SystemExit(f"cct serve admission: {exc}") from exc
