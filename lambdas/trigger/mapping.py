"""The anomaly → playbook mapping (`policies/playbooks.yaml`), loaded and checked once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lambdas.steps.playbooks import PLAYBOOKS

SCHEMA_NAME = "playbooks.schema.json"


class MappingError(ValueError):
    """The mapping file is invalid. Fix the file; the trigger refuses to start with it."""


@dataclass(frozen=True)
class Rule:
    id: str
    playbook: str
    match: Mapping[str, frozenset[str]]
    dry_run: bool

    def accepts(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(name) in values for name, values in self.match.items())


@dataclass(frozen=True)
class PlaybookMapping:
    rules: tuple[Rule, ...]

    def select(self, labels: Mapping[str, str]) -> Rule | None:
        """The first rule that accepts the anomaly's labels, or None."""
        return next((r for r in self.rules if r.accepts(labels)), None)

    def why_unmapped(self, labels: Mapping[str, str]) -> str:
        """Why no rule accepts the labels: each rule's first label that does not match."""
        parts = []
        for rule in self.rules:
            for name, values in rule.match.items():
                if labels.get(name) not in values:
                    parts.append(f"{rule.id}: {name}={labels.get(name, '')!r}")
                    break
        return "no playbook rule matches (" + "; ".join(parts) + ")"


def parse_mapping(doc: Any, schema: Mapping[str, Any], origin: str) -> PlaybookMapping:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"{origin}: {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in errors
        ]
        raise MappingError("\n".join(lines))
    default_dry_run = bool(doc.get("defaults", {}).get("dry_run", True))
    rules = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["rules"]):
        if raw["id"] in seen:
            raise MappingError(f"{origin}: rules/{i}/id: duplicate rule id {raw['id']!r}")
        seen.add(raw["id"])
        if raw["playbook"] not in PLAYBOOKS:
            # The schema's enum and the steps' registry must agree; a test checks both.
            raise MappingError(f"{origin}: rules/{i}/playbook: unknown {raw['playbook']!r}")
        rules.append(
            Rule(
                id=raw["id"],
                playbook=raw["playbook"],
                match={k: frozenset(v) for k, v in raw["match"].items()},
                dry_run=bool(raw.get("dry_run", default_dry_run)),
            )
        )
    return PlaybookMapping(tuple(rules))


def load_mapping(path: Path, schema_path: Path | None = None) -> PlaybookMapping:
    """Read and check the mapping; the schema defaults to the file beside it."""
    schema_path = schema_path or path.with_name(SCHEMA_NAME)
    try:
        doc = yaml.safe_load(path.read_text())
        schema = json.loads(schema_path.read_text())
    except OSError as exc:
        raise MappingError(f"{exc.filename}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not YAML: {exc}") from None
    return parse_mapping(doc, schema, str(path))
