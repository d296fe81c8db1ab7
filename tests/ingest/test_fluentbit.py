"""The generated Fluent Bit configuration. Fluent Bit cannot run here, so these tests check its
structure and that every provider's route reaches the collector (a small model of Fluent Bit's
tag matching), never that Fluent Bit accepts it."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
import yaml

from lambdas.ingest.fluentbit import CONFIG_FILE, PROVIDERS, FluentBitSettings, render_config


def config(**kw: Any) -> dict[str, Any]:
    files = render_config(FluentBitSettings(**kw))
    assert list(files) == [CONFIG_FILE]
    doc: dict[str, Any] = yaml.safe_load(files[CONFIG_FILE])
    return doc


def route(doc: dict[str, Any], tag: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Filters then outputs a record with `tag` goes through."""
    p = doc["pipeline"]
    matches = lambda e: fnmatch.fnmatchcase(tag, e["match"])  # noqa: E731
    return [f for f in p["filters"] if matches(f)], [o for o in p["outputs"] if matches(o)]


def test_input_is_tls_http_with_filesystem_buffering() -> None:
    doc = config()
    [inp] = doc["pipeline"]["inputs"]
    assert inp["name"] == "http" and inp["tls"] == "on" and inp["storage.type"] == "filesystem"
    assert inp["tls.crt_file"] and inp["tls.key_file"]
    assert doc["service"]["storage.path"] == "/fluent-bit/buffer"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_route_reaches_the_collector_with_token_checks(provider: str) -> None:
    doc = config(collector_host="collector.ns.svc", collector_port=8080)
    filters, outputs = route(doc, f"cct.{provider}")
    assert [f["name"] for f in filters] == ["grep", "modify"]
    assert filters[0]["regex"] == "auth ^${CCT_INGEST_TOKEN}$"
    assert filters[1]["remove"] == "auth" and filters[1]["set"] == f"provider {provider}"
    [out] = outputs
    assert (out["name"], out["host"], out["port"], out["uri"], out["format"]) == (
        "http",
        "collector.ns.svc",
        8080,
        "/ingest",
        "json",
    )
    assert out["header"] == "Authorization Bearer ${CCT_COLLECTOR_TOKEN}"
    assert out["retry_limit"] == "no_limits" and out["header_tag"] == "X-Fluent-Tag"


def test_unknown_tags_go_nowhere_and_no_secret_is_rendered() -> None:
    doc = config()
    assert route(doc, "cct.oracle") == ([], [])
    text = render_config()[CONFIG_FILE]
    assert "${CCT_INGEST_TOKEN}" in text and "Bearer ${CCT_COLLECTOR_TOKEN}" in text


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="not an environment variable name"):
        FluentBitSettings(ingest_token_env="token; rm -rf")
    with pytest.raises(ValueError, match="ports"):
        FluentBitSettings(collector_port=0)
