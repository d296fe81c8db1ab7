"""AWS Lambda forwarder for EventBridge: EC2 state-change notifications and CloudTrail API
calls. EventBridge invokes the function with one event; an SQS queue in between (for
buffering) delivers `{"Records": [{"body": "<event JSON>"}, ...]}`. Both are accepted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from lambdas.forwarders.common import Forwarder, ForwarderSettings, ForwardResult

log = logging.getLogger(__name__)

DETAIL_TYPES = {"EC2 Instance State-change Notification", "AWS API Call via CloudTrail"}
# The EventBridge rule's pattern (deployed by the Pulumi component) selects these calls.
CLOUDTRAIL_EVENTS = (
    "RunInstances",
    "StartInstances",
    "StopInstances",
    "TerminateInstances",
    "ModifyInstanceAttribute",
    "CreateVolume",
    "ModifyVolume",
    "DeleteVolume",
    "CreateDBInstance",
    "ModifyDBInstance",
    "DeleteDBInstance",
    # Re-tags: a resource's cost belongs to the team its tags name now.
    "CreateTags",
    "DeleteTags",
    "AddTagsToResource",
    "RemoveTagsFromResource",
)


def event_pattern() -> dict[str, Any]:
    """The EventBridge rule pattern that feeds this function."""
    return {
        "source": ["aws.ec2", "aws.rds"],
        "detail-type": sorted(DETAIL_TYPES),
        "$or": [
            {"detail-type": ["EC2 Instance State-change Notification"]},
            {"detail": {"eventName": list(CLOUDTRAIL_EVENTS)}},
        ],
    }


def _events(payload: Mapping[str, Any], result: ForwardResult) -> Iterator[Mapping[str, Any]]:
    if "Records" in payload:
        for record in payload.get("Records") or []:
            try:
                yield from _events(json.loads(record["body"]), result)
            except (KeyError, TypeError, ValueError):
                result.dropped["unreadable_sqs_record"] += 1
        return
    if payload.get("detail-type") not in DETAIL_TYPES or not isinstance(
        payload.get("detail"), Mapping
    ):
        result.dropped["not_a_lifecycle_event"] += 1
        return
    yield payload


def handle(payload: Any, forwarder: Forwarder) -> ForwardResult:
    result = ForwardResult()
    if not isinstance(payload, Mapping):
        result.dropped["not_an_object"] += 1
        return forwarder.send([], result)
    return forwarder.send((forwarder.envelope(e) for e in _events(payload, result)), result)


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point. ForwardError propagates so Lambda retries the invocation."""
    result = handle(event, Forwarder(ForwarderSettings.from_env(), "aws"))
    return {"sent": result.sent, "dropped": dict(result.dropped)}
