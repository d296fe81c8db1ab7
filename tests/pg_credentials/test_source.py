"""The DSN source and the reconnect policy (`lambdas.common.pg`), and the connection
factories that read it (`lambdas.store.db`), against the real PostgreSQL."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from lambdas.common.pg import DsnError, DsnSource, needs_reconnect
from lambdas.common.settings import SettingsError, pg_dsn, pg_dsn_source
from lambdas.store.db import PoolConnections, StoreError, connect, open_pool, translate_errors
from tests.pg_credentials.conftest import FakeVault, Vaults


@pytest.fixture
def vault(vaults: Vaults) -> FakeVault:
    return vaults("admission")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def user_of(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_a_fixed_dsn_never_rotates() -> None:
    source = DsnSource.of("postgresql://u@h/db")
    assert source.read() == "postgresql://u@h/db"
    assert not source.rotated(0)
    assert DsnSource.of(source) is source
    assert "u@h" not in repr(source)


def test_a_file_is_read_on_every_connect_and_checked_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    path, clock = tmp_path / "pg-dsn", Clock()
    path.write_text("postgresql://a:secret-a@h/db\n")
    source = DsnSource(path=path, clock=clock)
    assert source.read() == "postgresql://a:secret-a@h/db"
    opened = source.generation
    assert not source.rotated(opened)

    path.write_text("postgresql://b:secret-b@h/db")
    clock.now += 0.5
    assert not source.rotated(opened)  # checked less than a second ago: not looked at
    clock.now += 0.6
    assert source.rotated(opened)
    assert source.read() == "postgresql://b:secret-b@h/db"
    assert not source.rotated(source.generation)

    # Rewritten with the same DSN (a renewed lease): nothing to switch.
    same = source.generation
    path.write_text("postgresql://b:secret-b@h/db\n")
    clock.now += 1.1
    assert not source.rotated(same)


def test_a_file_gone_or_bad_after_start_keeps_the_current_connection(tmp_path: Path) -> None:
    path, clock = tmp_path / "pg-dsn", Clock()
    path.write_text("postgresql://a@h/db")
    source = DsnSource(path=path, clock=clock)
    source.read()
    path.unlink()
    clock.now += 2
    assert not source.rotated(source.generation)
    path.write_text("not a dsn ' at all")
    clock.now += 2
    assert not source.rotated(source.generation)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "file not found (Vault Agent renders it; is its sidecar running?)"),
        ("", "file is empty"),
        ("  \n", "file is empty"),
        ("host=h password='s3cret-pw", "does not hold a PostgreSQL DSN"),
        (b"\xff\xfe", "cannot be read: not UTF-8 text"),
    ],
)
def test_bad_files_are_named_and_never_quoted(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "pg-dsn"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DsnError) as info:
        DsnSource(path=path).read()
    assert str(info.value) == f"CCT_PG_DSN_FILE={path}: {problem}"
    assert "s3cret" not in str(info.value)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DsnError, match=rf"CCT_PG_DSN_FILE={tmp_path}: cannot be read: "):
        DsnSource(path=tmp_path).read()  # a directory


def test_settings_prefer_the_file_and_fail_at_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pg-dsn"
    monkeypatch.setenv("CCT_PG_DSN", "postgresql://local@h/db")
    monkeypatch.setenv("CCT_PG_DSN_FILE", str(path))
    with pytest.raises(SettingsError, match=rf"^CCT_PG_DSN_FILE={path}: file not found"):
        pg_dsn_source()
    path.write_text("postgresql://vault-user@h/db")
    assert pg_dsn_source().path == path
    assert pg_dsn() == "postgresql://vault-user@h/db"
    monkeypatch.delenv("CCT_PG_DSN_FILE")
    assert pg_dsn() == "postgresql://local@h/db"
    monkeypatch.delenv("CCT_PG_DSN")
    with pytest.raises(SettingsError, match="CCT_PG_DSN is required"):
        pg_dsn_source()


def test_a_connect_after_the_file_vanished_is_retryable_and_names_it(
    vault: FakeVault,
) -> None:
    vault.issue()
    source = DsnSource(path=vault.path)
    connect(source).close()
    vault.path.unlink()
    with pytest.raises(StoreError) as info:
        connect(source)
    assert info.value.retryable
    assert f"CCT_PG_DSN_FILE={vault.path}: file not found" in str(info.value)


def test_reconnect_policy_on_real_errors(vault: FakeVault, pg_dsn: str) -> None:
    first = vault.issue()
    source = DsnSource(path=vault.path)
    conn = connect(source, autocommit=True)
    # Bad data and timeouts keep the connection.
    with pytest.raises(psycopg.Error) as bad:
        conn.execute("select 1/0")
    assert not needs_reconnect(bad.value)
    with pytest.raises(psycopg.errors.QueryCanceled) as slow:
        conn.execute("set statement_timeout = 50; select pg_sleep(1)")
    assert not needs_reconnect(slow.value)
    conn.execute("set statement_timeout = 0")
    # The lease's user revoked: the session is terminated (57P01 or a lost connection).
    vault.revoke(first)
    with pytest.raises(psycopg.OperationalError) as ended:
        conn.execute("select 1")
    assert needs_reconnect(ended.value)
    with pytest.raises(StoreError) as wrapped, translate_errors("read"):
        conn.execute("select 1")
    assert needs_reconnect(wrapped.value)
    # Logging in as the dropped user: invalid authorization (class 28) or a failed connect.
    with pytest.raises(StoreError) as login:
        connect(source)
    assert needs_reconnect(login.value)
    # The file now names a new user: the next connect uses it.
    second = vault.issue()
    with connect(source) as fresh:
        assert user_of(fresh) == second


def test_a_pool_switches_users_at_checkout_when_the_file_rotates(vault: FakeVault) -> None:
    first = vault.issue()
    source = DsnSource(path=vault.path, check_interval_s=0.0)
    pool = open_pool(source, application_name="cct-rotation-test", max_size=2)
    connections = PoolConnections(pool, source)
    try:
        with connections.connection() as conn:
            assert user_of(conn) == first
        second = vault.issue()
        with connections.connection() as conn:
            assert user_of(conn) == second
        vault.revoke(first)
        with connections.connection() as conn:
            assert user_of(conn) == second
        assert vault.sessions(first) == 0
    finally:
        pool.close()


def test_source_is_safe_to_share_between_threads(tmp_path: Path) -> None:
    path = tmp_path / "pg-dsn"
    path.write_text("postgresql://a@h/db")
    source = DsnSource(path=path, check_interval_s=0.0)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(200):
                assert source.read().startswith("postgresql://")
                source.rotated(0)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(50):  # replaced atomically, as Vault Agent does
        fresh = tmp_path / f".pg-dsn.{n}"
        fresh.write_text(f"postgresql://u{n}@h/db")
        os.replace(fresh, path)
    for t in threads:
        t.join()
    assert errors == []


def _collector() -> str | DsnSource:
    from lambdas.collector.service import CollectorSettings

    return CollectorSettings.from_env().pg_dsn


def _detector() -> str | DsnSource:
    from lambdas.detector.service import DetectorSettings

    return DetectorSettings.from_env().pg_dsn


def _trigger() -> str | DsnSource:
    from lambdas.trigger.settings import TriggerSettings

    return TriggerSettings.from_env().pg_dsn


def _admission() -> str | DsnSource:
    from lambdas.admission.settings import AdmissionSettings

    return AdmissionSettings.from_env().pg_dsn


@pytest.mark.parametrize("read", [_collector, _detector, _trigger, _admission])
def test_every_long_running_handler_reads_the_dsn_file(
    read: Callable[[], str | DsnSource], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pg-dsn"
    monkeypatch.delenv("CCT_PG_DSN", raising=False)
    monkeypatch.setenv("CCT_PG_DSN_FILE", str(path))
    monkeypatch.setenv("CCT_COLLECTOR_TOKEN", "t" * 20)
    monkeypatch.setenv("CCT_ADMISSION_TLS_CERT", str(tmp_path / "tls.crt"))
    monkeypatch.setenv("CCT_ADMISSION_TLS_KEY", str(tmp_path / "tls.key"))
    monkeypatch.setenv("CCT_ADMISSION_CLIENT_CA", str(tmp_path / "client-ca.crt"))
    monkeypatch.setenv("CCT_ADMISSION_CLIENT_NAMES", "kube-apiserver")
    monkeypatch.setenv("CCT_ADMISSION_CONTROLLER_USERS", "system:serviceaccount:argo:c")
    kafka_password = tmp_path / "kafka-password"
    kafka_password.write_text("p\n")
    monkeypatch.setenv("CCT_KAFKA_CA_FILE", str(tmp_path / "kafka-ca.crt"))
    monkeypatch.setenv("CCT_KAFKA_USERNAME", "trigger")
    monkeypatch.setenv("CCT_KAFKA_PASSWORD_FILE", str(kafka_password))
    with pytest.raises(SettingsError, match=rf"^CCT_PG_DSN_FILE={path}: file not found"):
        read()
    path.write_text("postgresql://v-user:pw@pg/cct?sslmode=require")
    source = read()
    assert isinstance(source, DsnSource) and source.path == path
