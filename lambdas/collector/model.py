"""The one resource-change model every provider's events are normalised to."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple

PROVIDERS = ("aws", "azure", "gcp")


class EventRejected(ValueError):
    """One event cannot be used. `reason` is a short code for counting; the message names the
    problem. Retrying the same event will not help: it goes to the dead-letter table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class EventIgnored(Exception):
    """A readable event that does not change any run-rate (e.g. a failed API call)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The collector builds one ResourceChange and one Resource per event, tens of thousands a
# second: NamedTuples are immutable like frozen dataclasses and about four times cheaper to make.
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})


class ResourceChange(NamedTuple):
    """One lifecycle change of one resource. None means "this event does not say"; the
    inventory keeps what it knew."""

    event_id: str
    provider: str
    billing_account_id: str
    sub_account_id: str
    region_id: str | None
    service_name: str
    resource_id: str
    resource_type: str
    action: str
    event_time: datetime
    state: str | None = None
    sku: str | None = None
    # size and pricing attributes, merged into the inventory's `size` (e.g. gib, engine)
    attributes: Mapping[str, Any] = _NO_ATTRIBUTES
    # All of the resource's tags (a creation, an ARM read-back), replacing what was known...
    tags: Mapping[str, str] | None = None
    actor: str | None = None
    # ... or some of them (AWS CreateTags, DeleteTags, AddTagsToResource,
    # RemoveTagsFromResource): a value sets a tag, None removes it, the others stay.
    tag_changes: Mapping[str, str | None] = _NO_ATTRIBUTES
    # An EC2 DeleteTags item naming a value removes the tag only where it has that value
    # (AWS's rule: `--tags Key=team,Value=web` leaves a `team=data` tag alone); a key named
    # with several values, where it has any of them.
    tag_removals_if: Mapping[str, frozenset[str]] = _NO_ATTRIBUTES
    # An EC2 DeleteTags naming no tag: every tag but AWS's own (`aws:` keys) is removed.
    drop_user_tags: bool = False
    # The deletion of a container (an Azure resource group, a SQL logical server) whose event
    # names only itself: every known resource under `resource_id` is deleted with it.
    contains: bool = False


class Resource(NamedTuple):
    """A row of resource_inventory."""

    provider: str
    resource_id: str
    billing_account_id: str
    sub_account_id: str
    region_id: str
    service_name: str
    resource_type: str
    sku: str | None
    size: Mapping[str, Any]
    state: str
    tags: Mapping[str, str]
    usd_per_hour: float | None
    last_event_id: str
    last_event_time: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.resource_id)


# What places a resource, the same in its inventory row and in its changes.
_PLACEMENT = (
    "provider",
    "billing_account_id",
    "sub_account_id",
    "region_id",
    "service_name",
    "resource_id",
    "resource_type",
)


def change_of(
    r: Resource, event_id: str, action: str, event_time: datetime, **kw: Any
) -> ResourceChange:
    """A change of inventory row `r` (where it is, what it is) stating what `kw` says."""
    placed = {name: getattr(r, name) for name in _PLACEMENT}
    return ResourceChange(event_id=event_id, action=action, event_time=event_time, **placed, **kw)
