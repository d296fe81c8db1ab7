"""Environment-backed settings shared by every handler.

Each handler declares a frozen dataclass of its own settings; the helpers here read
`CCT_*` variables once at start and fail with an error that names the variable.
"""

from __future__ import annotations

import os


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
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


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
    return env_str("CCT_PG_DSN")


def vm_url() -> str:
    return env_str("CCT_VM_URL", "http://127.0.0.1:18428").rstrip("/")


def alertmanager_url() -> str:
    return env_str("CCT_ALERTMANAGER_URL", "http://127.0.0.1:19093").rstrip("/")


def kafka_bootstrap() -> str:
    return env_str("CCT_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
