"""Environment-backed settings shared by every handler.

Each handler declares a frozen dataclass of its own settings; the helpers here read
`CCT_*` variables once at start and fail with an error that names the variable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from lambdas.common.pg import DsnSource


class SettingsError(ValueError):
    """A setting is missing or malformed. Fix the configuration; retrying will not help."""


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SettingsError(f"{name} is required but not set")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        # float() takes "nan" and "inf": a nan interval made a loop that never sleeps, a nan
        # eviction age kept every vanished series for ever (every comparison is False).
        raise SettingsError(f"{name}={raw!r} is not a finite number")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def pg_dsn() -> str:
    """The PostgreSQL DSN as it is now, for one-shot commands (CronJobs, CLI)."""
    return pg_dsn_source().read()


def pg_dsn_source() -> DsnSource:
    """Where the PostgreSQL DSN comes from: the file named by CCT_PG_DSN_FILE (in the cluster:
    rendered by Vault Agent from `database/creds/<role>`, re-read on every connect), else
    CCT_PG_DSN (local use and tests). A file is read once here so a bad one fails at start."""
    # pg imports SettingsError from this module, hence the late import.
    from lambdas.common.pg import DsnSource

    path = os.environ.get("CCT_PG_DSN_FILE")
    if path:
        source = DsnSource(path=Path(path), variable="CCT_PG_DSN_FILE")
        source.read()
        return source
    return DsnSource(dsn=env_str("CCT_PG_DSN"))


def vm_url() -> str:
    """VictoriaMetrics' base URL (CCT_VM_URL) when one URL serves writes and queries (a
    single node)."""
    return env_str("CCT_VM_URL", "http://127.0.0.1:18428").rstrip("/")


def vm_write_url() -> str:
    """Base URL samples are written under: CCT_VM_WRITE_URL (the cluster version's
    `http://vminsert:8480/insert/0/prometheus`), else CCT_VM_URL."""
    return (os.environ.get("CCT_VM_WRITE_URL") or vm_url()).rstrip("/")


def vm_read_url() -> str:
    """Base URL queries are sent under: CCT_VM_READ_URL (the cluster version's
    `http://vmselect:8481/select/0/prometheus`), else CCT_VM_URL."""
    return (os.environ.get("CCT_VM_READ_URL") or vm_url()).rstrip("/")


def alertmanager_url() -> str:
    """Alertmanager's base URL (CCT_ALERTMANAGER_URL), where the detector posts its alerts;
    with several replicas (high availability) every replica's own URL, comma-separated:
    replicas gossip silences and notifications but not alerts, so each alert is posted to all
    of them."""
    raw = env_str("CCT_ALERTMANAGER_URL", "http://127.0.0.1:19093")
    return ",".join(alertmanager_urls(raw))


_ALERTMANAGER_URL = "CCT_ALERTMANAGER_URL"


def alertmanager_urls(value: str) -> tuple[str, ...]:
    """The base URLs in a value of the Alertmanager URL setting (see `alertmanager_url`)."""
    return url_list(_ALERTMANAGER_URL, value)


def url_list(name: str, value: str) -> tuple[str, ...]:
    """`value` as comma-separated base URLs, `http(s)://host[:port][/path]` each, without a
    trailing slash; an error naming `name` for an empty, repeated or malformed one. No user
    info: the URLs are logged and label metrics."""
    urls: list[str] = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        try:
            parsed = urlsplit(url)
            ok = (
                parsed.scheme in {"http", "https"}
                and bool(parsed.hostname)
                and "@" not in parsed.netloc
                and not parsed.query
                and not parsed.fragment
            )
            parsed.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            ok = False
        if not ok:
            shown = "a URL with user info" if "@" in url else repr(url)  # never a password
            raise SettingsError(f"{name}: {shown} is not an http(s)://host[:port] base URL")
        if url in urls:
            raise SettingsError(f"{name}: {url!r} is listed twice")
        urls.append(url)
    return tuple(urls)


def kafka_bootstrap() -> str:
    """The Kafka brokers (CCT_KAFKA_BOOTSTRAP, `host:port[,host:port...]`); the client's
    identity is `lambdas.common.kafka.KafkaAuth`."""
    return env_str("CCT_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
