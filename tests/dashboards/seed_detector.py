"""Anomaly rows for the dashboards' tests, written by the real detector.

The first dashboard tests wrote anomaly rows by hand, with contributors at every level. The
detector's rows are different (one incident per root cause: a resource-level anomaly lists no
contributors and keeps the aggregates it explains as `ancestors`; a team-level anomaly's
dimensions are {team} only), and the anomalies dashboard showed neither. So this runs the
real `Detector` against the real VictoriaMetrics, Alertmanager and PostgreSQL on series of
the test's own account, as in tests/detector/test_live.py, and leaves its rows in place:

- i-old is resized (+50 $/h) and i-new created (+50 $/h), both with change events by alice:
  two resource-level incidents, critical, each with its service, team and account as
  ancestors; i-new is then deleted and its incident resolved;
- a second team's twelve instances each grow by 1.5 $/h: no one resource explains the
  team's +18 $/h, so it is one team-level incident (its resources as contributors), open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lambdas.common.vm import Sample, VictoriaMetrics
from lambdas.detector.config import DetectionConfig
from lambdas.detector.service import Detector, DetectorSettings
from tests.detector.test_incidents import terminate
from tests.detector.test_live import RESOURCE, ROLLUP, Account, insert_events, wait_for

# Each grows by 1.5 $/h, under a resource's materiality floor (2 $/h) and 8 % of the team's
# increase: no one resource explains it.
OTHER_RESOURCES = 12


@dataclass(frozen=True)
class DetectorRows:
    account: str
    team: str
    other_team: str
    resources: tuple[str, ...]


class _Accounts(Account):
    """The test's account with a second team whose resources each grow a little."""

    def __init__(self, vm: VictoriaMetrics, uid: str) -> None:
        super().__init__(vm, uid)
        self.other_team = f"batch-{uid}"
        self.other = {**self.group, "team": self.other_team}

    def spend(self, rollup: float, each_other: float, **resources: float) -> None:
        now_ms = int(time.time() * 1000)
        others = [
            Sample(
                RESOURCE,
                {
                    **self.other,
                    "resource_id": f"i-batch-{n}",
                    "resource_type": "instance",
                    "sub_account_id": self.account,
                },
                each_other,
                now_ms,
            )
            for n in range(OTHER_RESOURCES)
        ]
        total = each_other * OTHER_RESOURCES
        self.vm.import_samples([Sample(ROLLUP, self.other, total, now_ms), *others])
        self.write(rollup, **resources)
        wait_for(lambda: self._other_is(total), f"{self.other_team} at {total}")

    def visible(self, value: float) -> bool:
        return self._rollup_is(self.team, value)

    def _other_is(self, value: float) -> bool:
        return self._rollup_is(self.other_team, value)

    def _rollup_is(self, team: str, value: float) -> bool:
        rows = self.vm.query(f'{ROLLUP}{{team="{team}"}}')
        return bool(rows) and float(rows[0]["value"][1]) == value


def run_detector(
    vm: VictoriaMetrics, vm_url: str, alertmanager_url: str, pg_dsn: str, uid: str
) -> DetectorRows:
    accounts = _Accounts(vm, uid)
    settings = DetectorSettings(
        vm_url=vm_url,
        alertmanager_url=alertmanager_url,
        pg_dsn=pg_dsn,
        selector=f'billing_account_id="{accounts.account}"',
        bootstrap_hours=0,
        detection=DetectionConfig(resolve_after_ticks=2),
    )
    detector = Detector(settings)
    try:
        accounts.spend(100.0, 1.0, **{"i-old": 100.0})
        # Series already there at a start are judged from their second value on.
        detector.cycle(time.time())
        detector.cycle(time.time())
        insert_events(pg_dsn, accounts, datetime.now(UTC) - timedelta(seconds=5))
        accounts.spend(200.0, 2.5, **{"i-old": 150.0, "i-new": 50.0})
        detector.cycle(time.time())
        # i-new is deleted, as the collector records it: its incident resolves.
        terminate(pg_dsn, accounts, "i-new", 50.0)
        accounts.spend(150.0, 2.5, **{"i-old": 150.0, "i-new": 0.0})
        for _ in range(DetectionConfig().resolve_after_ticks):
            detector.cycle(time.time())
    finally:
        detector.close()
    return DetectorRows(accounts.account, accounts.team, accounts.other_team, ("i-old", "i-new"))
