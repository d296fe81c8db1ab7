"""Recent admitted actions per account: the blast-radius input of the policy engine.

Each replica adds what it admits at once and merges what every replica recorded in
PostgreSQL on a timer, so the count is exact for this replica and at most one refresh
interval behind for the others. Keyed by decision id, so a decision seen both ways counts
once. Thread-safe: the event loop writes, the decision threads read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta

WINDOW = timedelta(hours=1)


class RecentActions:
    def __init__(self, window: timedelta = WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._by_account: dict[str, dict[str, datetime]] = {}

    def add(self, decision_id: str, account_id: str, at: datetime) -> None:
        with self._lock:
            self._by_account.setdefault(account_id, {})[decision_id] = at

    def merge(self, rows: Iterable[tuple[str, str, datetime]], now: datetime) -> None:
        cutoff = now - self.window
        with self._lock:
            for decision_id, account_id, at in rows:
                self._by_account.setdefault(account_id, {})[decision_id] = at
            for account_id in list(self._by_account):
                self._prune(account_id, cutoff)

    def count(self, account_id: str, now: datetime, exclude: str | None = None) -> int:
        """Actions in the window before `now`, not counting decision `exclude` (a retried
        review must get the answer its first attempt got, not count itself)."""
        with self._lock:
            self._prune(account_id, now - self.window)
            entries = self._by_account.get(account_id, {})
            return len(entries) - (exclude in entries)

    def accounts(self) -> list[str]:
        with self._lock:
            return list(self._by_account)

    def view(self, now: datetime, exclude: str | None = None) -> Mapping[str, int]:
        """The per-account counts at `now`, computed only for the accounts looked up."""
        return RecentView(self, now, exclude)

    def _prune(self, account_id: str, cutoff: datetime) -> None:
        entries = self._by_account.get(account_id)
        if entries is None:
            return
        for decision_id in [d for d, at in entries.items() if at <= cutoff]:
            del entries[decision_id]
        if not entries:
            del self._by_account[account_id]


class RecentView(Mapping[str, int]):
    def __init__(self, recent: RecentActions, now: datetime, exclude: str | None) -> None:
        self._recent = recent
        self._now = now
        self._exclude = exclude

    def __getitem__(self, account_id: str) -> int:
        count = self._recent.count(account_id, self._now, self._exclude)
        if count == 0:
            raise KeyError(account_id)
        return count

    def __iter__(self) -> Iterator[str]:
        return iter(a for a in self._recent.accounts() if a in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)
