"""Fixtures for the step tests: the replay server (Vault, Azure, GCP recordings), the pod's
service-account token, the environment a step runs with, and price rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from lambdas.cli import cli
from tests.steps.cloud_cases import Case
from tests.steps.replay import Replay, serving

PRICE_FILES = Path(__file__).resolve().parents[1] / "ingest" / "fixtures" / "prices"

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImNjdC10ZXN0In0.c2VydmljZS1hY2NvdW50LXRva2Vu"
    ".SA-JWT-SECRET-SIGNATURE"
)
# Every secret the Vault recordings hand out; none may appear in a step's output or logs.
SECRETS = (
    JWT,
    "hvs.CAESIVAULT-CLIENT-TOKEN-SECRET-0123456789",
    "vault-aws-SECRET-KEY-must-never-leak-0123456789",
    "FwoGZXIvYXdzEVAULT-SESSION-TOKEN-must-never-leak",
    "azure-SP-SECRET-must-never-leak~0123456789",
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.AZURE-ARM-ACCESS-TOKEN-must-never-leak",
    "ya29.c.GCP-ACCESS-TOKEN-must-never-leak-0123456789",
)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a credential leaked: {secret[:12]}..."


def exit_handler_env(run_id: str, status: str) -> dict[str, str]:
    """What Argo's onExit handler passes to `cct step record --from-env`."""
    return {
        "CCT_RUN_ID": run_id,
        "CCT_PLAYBOOK": "stop-idle-compute",
        "CCT_PARAM_PROVIDER": "aws",
        "CCT_PARAM_RESOURCE_ID": "i-0123456789abcdef0",
        "CCT_PARAM_EVENT_ID": f"evt-{run_id}",
        "CCT_PARAM_REGION": "us-east-1",
        "CCT_WORKFLOW_STATUS": status,
        "CCT_WORKFLOW_FAILURES": '[{"displayName": "execute", "message": "OOMKilled"}]',
    }


@pytest.fixture
def jwt_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(JWT)
    return path


@pytest.fixture
def replay() -> Callable[..., AbstractContextManager[Replay]]:
    """`with replay("vault.json", "azure_x.json") as r:` serves those recordings."""
    return serving


@pytest.fixture
def step_env(pg_dsn: str, jwt_file: Path) -> Callable[..., dict[str, str]]:
    def make(replay_url: str, aws_endpoint: str | None = None) -> dict[str, str]:
        env = {
            "CCT_PG_DSN": pg_dsn,
            "VAULT_ADDR": replay_url,
            "CCT_STEP_VAULT_JWT_PATH": str(jwt_file),
            "CCT_STEP_AZURE_MANAGEMENT_URL": replay_url,
            "CCT_STEP_AZURE_LOGIN_URL": replay_url,
            "CCT_STEP_AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "CCT_STEP_GCP_API_URL": replay_url,
            "CCT_STEP_OPERATION_TIMEOUT_S": "60",
            "CCT_STEP_BACKEND": "local",
        }
        if aws_endpoint:
            env["CCT_AWS_ENDPOINT_URL"] = aws_endpoint
        return env

    return make


@pytest.fixture
def seed_prices(pg_dsn: str) -> Callable[[str, str, str, str, dict[str, str]], None]:
    def seed(provider: str, service: str, region: str, unit: str, rows: dict[str, str]) -> None:
        with psycopg.connect(pg_dsn) as conn:
            for sku, price in rows.items():
                conn.execute(
                    """insert into price_catalog (provider, service_name, region_id, sku, unit,
                           usd_per_unit, source, effective_from)
                       values (%s, %s, %s, %s, %s, %s, 'test', now() - interval '1 day')
                       on conflict (provider, service_name, region_id, sku, unit)
                       do update set usd_per_unit = excluded.usd_per_unit""",
                    (provider, service, region, sku, unit, Decimal(price)),
                )

    return seed


@pytest.fixture
def load_prices(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Price files (tests/ingest/fixtures/prices) loaded by the real `cct prices load`, so a
    plan is shown to work on what the loader writes."""

    def load(provider: str, *names: str) -> None:
        monkeypatch.setenv("CCT_PG_DSN", pg_dsn)
        files = [str(PRICE_FILES / name) for name in names]
        result = CliRunner().invoke(cli, ["prices", "load", "--provider", provider, *files])
        assert result.exit_code == 0, result.output

    return load


@pytest.fixture
def seed_case(
    seed_prices: Callable[..., None], load_prices: Callable[..., None]
) -> Callable[[Case], None]:
    """The prices a case's plan needs: its own rows and its price files."""

    def seed(case: Case) -> None:
        seed_prices(case.provider, case.service, case.region, case.unit, case.prices)
        if case.catalog:
            load_prices(case.provider, *case.catalog)

    return seed


@pytest.fixture
def db(pg_dsn: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    conn = psycopg.connect(pg_dsn, autocommit=True)

    def query(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []

    yield query
    conn.close()
