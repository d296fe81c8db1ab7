"""The webhook's Prometheus metrics, on their own registry (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AdmissionMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cct_admission_requests_total",
            "Admission reviews answered, by whether the object was admitted and the verdict "
            "(allow, deny, require-approval; invalid, not-governed, error).",
            ["allowed", "verdict"],
            registry=r,
        )
        self.duration = Histogram(
            "cct_admission_request_duration_seconds",
            "Time from the request's arrival to the answer.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.bad_requests = Counter(
            "cct_admission_bad_requests_total",
            "Requests refused before a decision (HTTP 4xx), by reason.",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "cct_admission_failure_mode_total",
            "Answers decided by the failure mode (no policy set, engine error, timeout).",
            ["reason", "mode"],
            registry=r,
        )
        self.reloads = Counter(
            "cct_admission_policy_reloads_total",
            "Attempts to load changed policy files, by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.policy_set_valid = Gauge(
            "cct_admission_policy_set_valid",
            "1 when the policy files on disk are the set in use; 0 when the newest files are "
            "invalid and the last good set (or none) is in use.",
            registry=r,
        )
        self.policy_set_loaded = Gauge(
            "cct_admission_policy_set_loaded_timestamp_seconds",
            "When the policy set in use was loaded (Unix time); 0 if none.",
            registry=r,
        )
        self.policy_rules = Gauge(
            "cct_admission_policy_rules", "Rules in the policy set in use.", registry=r
        )
        self.decisions_recorded = Counter(
            "cct_admission_decisions_recorded_total",
            "Decisions written to PostgreSQL.",
            registry=r,
        )
        self.decisions_dropped = Counter(
            "cct_admission_decisions_dropped_total",
            "Decisions not recorded, by reason (queue_full, rejected, shutdown).",
            ["reason"],
            registry=r,
        )
        self.decision_write_errors = Counter(
            "cct_admission_decision_write_errors_total",
            "Failed attempts to write a batch of decisions (retried).",
            registry=r,
        )
        self.decision_queue_depth = Gauge(
            "cct_admission_decision_queue_depth",
            "Decisions waiting to be written (queued, or in the batch being written).",
            registry=r,
        )
