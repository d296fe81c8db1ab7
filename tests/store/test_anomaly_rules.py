"""The anomalies table admits exactly the contract's rules: the detector's rows of a rule the
table refused were dropped (logged) while the alert still went out."""

from __future__ import annotations

import re

import psycopg

from lambdas import contract


def test_the_rule_check_lists_the_contracts_rules(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        row = conn.execute(
            "select pg_get_constraintdef(oid) from pg_constraint"
            " where conname = 'anomalies_rule_check'"
        ).fetchone()
    assert row is not None
    assert set(re.findall(r"'([a-z0-9_]+)'", row[0])) == set(contract.RULES)
