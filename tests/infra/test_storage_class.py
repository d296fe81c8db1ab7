"""`cct:storageClass` reaches every volume the bundle asks for. Found in review: Alertmanager's
claim and Vault's chart ignored it, so on a cluster without a suitable default class their
claims stayed Pending and Vault never started."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from infra.generated import collect
from tests.infra.harness import build_stack

CLASS = "fast-ssd"


def _storage_classes(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every `storageClass` / `storageClassName` / `class` under a storage key, with where."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in ("storageClass", "storageClassName") or (
                key == "class" and "storage" in path.lower()
            ):
                yield where, item
            else:
                yield from _storage_classes(item, where)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _storage_classes(item, f"{path}[{n}]")


def test_every_volume_uses_the_configured_storage_class() -> None:
    built = build_stack("prod", collect, {"storageClass": CLASS})
    found: dict[str, Any] = {}
    claims = 0
    for resource in built.resources:
        if resource.typ.endswith("CustomResourceDefinition"):
            continue  # schemas, not volumes
        inputs = resource.inputs
        for where, value in _storage_classes(inputs):
            found[f"{resource.name}{where}"] = value
        spec = inputs.get("spec") if isinstance(inputs, dict) else None
        if isinstance(spec, dict) and spec.get("volumeClaimTemplates"):
            claims += len(spec["volumeClaimTemplates"])
    assert claims, "no StatefulSet asks for a volume"
    wrong = {where: value for where, value in found.items() if value != CLASS}
    assert not wrong, wrong
    # Each stateful part that asks for storage is among them.
    for part in ("alertmanager", "vault", "postgres", "kafka", "victoria-metrics"):
        assert any(where.startswith(part) for where in found), (part, sorted(found))
