"""`cct serve detector`'s settings: every refused value names its variable. Found in review:
"nan" and "inf" were accepted (a nan interval made a loop that never sleeps, a nan eviction
age kept every vanished series for ever), and errors named the dataclass field or two
variables at once."""

from __future__ import annotations

import os

import pytest

from lambdas.common.settings import SettingsError
from lambdas.detector.service import DetectorSettings

REQUIRED = {
    "CCT_VM_URL": "http://127.0.0.1:1",
    "CCT_ALERTMANAGER_URL": "http://127.0.0.1:2",
    "CCT_PG_DSN": "postgresql://x@127.0.0.1:3/cct",
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CCT_DETECTOR_INTERVAL_S": "nan"},
            "CCT_DETECTOR_INTERVAL_S='nan' is not a finite number",
        ),
        (
            {"CCT_DETECTOR_ALERT_TTL_S": "inf"},
            "CCT_DETECTOR_ALERT_TTL_S='inf' is not a finite number",
        ),
        (
            {"CCT_DETECTOR_EVICT_AFTER_S": "NaN"},
            "CCT_DETECTOR_EVICT_AFTER_S='NaN' is not a finite number",
        ),
        ({"CCT_DETECTOR_INTERVAL_S": "0"}, "CCT_DETECTOR_INTERVAL_S must be > 0"),
        ({"CCT_DETECTOR_RESEND_S": "-1"}, "CCT_DETECTOR_RESEND_S must be > 0"),
        (
            {"CCT_DETECTOR_ALERT_TTL_S": "30"},
            "CCT_DETECTOR_ALERT_TTL_S must be > CCT_DETECTOR_RESEND_S",
        ),
        ({"CCT_DETECTOR_BOOTSTRAP_HOURS": "-1"}, "CCT_DETECTOR_BOOTSTRAP_HOURS must be >= 0"),
        ({"CCT_DETECTOR_HOLD_FRACTION": "2"}, "CCT_DETECTOR_HOLD_FRACTION must be in (0, 1]"),
        ({"CCT_DETECTOR_STALE_AFTER_S": "0"}, "CCT_DETECTOR_STALE_AFTER_S must be > 0"),
        (
            {"CCT_DETECTOR_RESOLVE_AFTER_TICKS": "0"},
            "CCT_DETECTOR_RESOLVE_AFTER_TICKS must be >= 1",
        ),
        (
            {"CCT_DETECTOR_HISTORY_WEEKS": "1"},
            "CCT_DETECTOR_HISTORY_WEEKS must be >= CCT_DETECTOR_WEEKLY_MIN_WEEKS",
        ),
        (
            {"CCT_DETECTOR_EVICT_AFTER_S": "1"},
            "CCT_DETECTOR_EVICT_AFTER_S must be >= CCT_DETECTOR_STALE_AFTER_S",
        ),
    ],
)
def test_refused_settings_name_their_variable(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CCT_"):
            monkeypatch.delenv(name)
    for name, value in {**REQUIRED, **env}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        DetectorSettings.from_env()
    assert str(err.value) == message
