"""The Fluent Bit configuration in front of the collector, generated for the Pulumi component.

Forwarders POST JSON arrays to `https://<fluent-bit>:<port>/cct.<provider>`; the URL path is
the tag. Pipeline per provider: keep only records carrying the ingest token (Fluent Bit's HTTP
input has no static bearer-token check, so a grep filter does it on the `auth` field the
forwarders add, then the field is removed), set `provider` from the tag, buffer on the
filesystem, and send to the collector's `/ingest` with the collector's own bearer token and
unlimited retries. The ingest token is matched as a regular expression, so it must be
URL-safe (letters, digits, `-`, `_`), as generated tokens are. Secrets are never in the
text: `${VAR}` is expanded by Fluent Bit from the pod's environment (Kubernetes Secrets).

Fluent Bit itself cannot run here; tests check the structure of what this renders and that
every provider's route reaches the collector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

PROVIDERS = ("aws", "azure", "gcp")
CONFIG_FILE = "fluent-bit.yaml"


@dataclass(frozen=True)
class FluentBitSettings:
    collector_host: str = "cct-collector.cct-system.svc"
    collector_port: int = 8080
    collector_tls: bool = False
    listen_port: int = 9880
    tls_crt_file: str = "/fluent-bit/tls/tls.crt"
    tls_key_file: str = "/fluent-bit/tls/tls.key"
    # Env vars holding the secrets (from Kubernetes Secrets); never the secrets themselves.
    ingest_token_env: str = "CCT_INGEST_TOKEN"  # noqa: S105 - a variable name
    collector_token_env: str = "CCT_COLLECTOR_TOKEN"  # noqa: S105 - a variable name
    buffer_path: str = "/fluent-bit/buffer"
    # Per-provider filesystem backlog limit: an outage of the collector is absorbed up to this.
    buffer_limit: str = "2G"
    # One-second flushes keep the event-to-collector latency at about a second.
    flush_s: int = 1
    # Fluent Bit caps a request body; the collector accepts up to 8 MiB.
    max_request: str = "4M"

    def __post_init__(self) -> None:
        for name in (self.ingest_token_env, self.collector_token_env):
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        if not 0 < self.collector_port < 65536 or not 0 < self.listen_port < 65536:
            raise ValueError("ports must be between 1 and 65535")


def render_config(settings: FluentBitSettings | None = None) -> dict[str, str]:
    """{filename: text} for the ConfigMap."""
    s = settings or FluentBitSettings()
    inputs: list[dict[str, Any]] = [
        {
            "name": "http",
            "listen": "0.0.0.0",  # noqa: S104 - the pod's address; clients come from outside
            "port": s.listen_port,
            "tls": "on",
            "tls.verify": "off",  # clients are authenticated by token, not certificates
            "tls.crt_file": s.tls_crt_file,
            "tls.key_file": s.tls_key_file,
            "buffer_max_size": s.max_request,
            "successful_response_code": 200,
            "storage.type": "filesystem",
        }
    ]
    filters: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for provider in PROVIDERS:
        tag = f"cct.{provider}"
        filters += [
            {"name": "grep", "match": tag, "regex": f"auth ^${{{s.ingest_token_env}}}$"},
            {"name": "modify", "match": tag, "remove": "auth", "set": f"provider {provider}"},
        ]
        outputs.append(
            {
                "name": "http",
                "alias": f"collector-{provider}",
                "match": tag,
                "host": s.collector_host,
                "port": s.collector_port,
                "uri": "/ingest",
                "format": "json",
                "json_date_key": "false",
                "header": f"Authorization Bearer ${{{s.collector_token_env}}}",
                "header_tag": "X-Fluent-Tag",
                # No compression on this in-cluster hop: the collector is CPU-bound, and
                # inflating a batch costs it more than the bytes cost the network.
                "tls": "on" if s.collector_tls else "off",
                "retry_limit": "no_limits",
                # Requests in flight to the collector: it parses one batch while PostgreSQL
                # commits another (benchmarks/collector_throughput.py posts the same way).
                "workers": 4,
                "storage.total_limit_size": s.buffer_limit,
            }
        )
    doc = {
        "service": {
            "flush": s.flush_s,
            "log_level": "info",
            "http_server": "on",
            "http_listen": "0.0.0.0",  # noqa: S104 - kubelet health probes
            "http_port": 2020,
            "health_check": "on",
            "storage.path": s.buffer_path,
            "storage.sync": "normal",
            "storage.checksum": "on",
            "storage.backlog.mem_limit": "64M",
        },
        "pipeline": {"inputs": inputs, "filters": filters, "outputs": outputs},
    }
    return {CONFIG_FILE: yaml.safe_dump(doc, sort_keys=False)}
