"""What a remediation action is, and how `execute` runs one safely.

An action is data (name, provider, JSON schema of its parameters, the exact cloud permissions
it needs) plus three functions: `read` the resource's state, decide whether that state
`is_done`, and `apply` the change. `Action.run` turns them into an idempotent, dry-runnable
change that captures the state before and after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lambdas.steps.errors import InvalidInput, NotFound, Permanent, StepError

log = logging.getLogger("cct.steps")

State = dict[str, Any]
Reader = Callable[[Any, Mapping[str, Any]], State]
Metrics = Callable[[Any, Mapping[str, Any], float, int], dict[str, Any]]
Applier = Callable[[Any, Mapping[str, Any], State], None]
DoneCheck = Callable[[State, Mapping[str, Any]], bool]


@dataclass(frozen=True)
class ActionResult:
    outcome: str  # changed | already_done | dry_run
    before: State | None
    after: State | None
    message: str


class ActionFailed(StepError):
    """`apply` failed, with the states read before and after it (whether that is the state
    the run started from is the caller's to judge: a retry starts where the earlier attempt
    left the resource); the exit code and retryability are the underlying error's."""

    def __init__(self, cause: StepError, before: State, after: State | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.before = before
        self.after = after
        self.exit_code = cause.exit_code
        self.retryable = cause.retryable


@dataclass(frozen=True)
class Action:
    """One registry entry.

    service_name: the price catalog's service_name for this resource (FOCUS ServiceName).
    price_unit: the price catalog unit the saving is computed in (`hour` or `gib_month`).
    permissions: exactly what `read`, `metrics` and `apply` call, in the provider's own
        spelling (AWS IAM actions, Azure RBAC operations, GCP IAM permissions).
    metrics: reads utilization (CPU percent, stored GiB) for analyze; arguments are the
        session, the parameters, the end time (epoch seconds) and the look-back in hours.
    """

    name: str
    provider: str
    description: str
    service_name: str
    price_unit: str
    schema: Mapping[str, Any]
    permissions: tuple[str, ...]
    read: Reader
    apply: Applier
    is_done: DoneCheck
    metrics: Metrics | None = None

    def validate(self, params: Mapping[str, Any]) -> None:
        """Check the parameters; the error lists every problem, each with where it is."""
        _check(self.schema, params, f"{self.name} parameters")

    def validate_resource(self, base: Mapping[str, Any]) -> None:
        """Check the parameters a resource is read by (analyze's, before any cloud call)
        against the same schema: an id the action does not accept (an absolute URL, another
        resource type) never reaches a cloud API with a credential."""
        known = self.schema.get("properties", {})
        schema = {
            "type": "object",
            "properties": {k: known[k] for k in base if k in known},
            "additionalProperties": False,
        }
        _check(schema, base, f"{self.name} resource")

    def run(self, session: Any, params: Mapping[str, Any], dry_run: bool) -> ActionResult:
        """Apply the change once: "already done" is success, dry-run changes nothing, and a
        failure reports whether the resource was left as it was."""
        self.validate(params)
        before = self.read(session, params)
        if self.is_done(before, params):
            return ActionResult("already_done", before, before, "already done")
        if dry_run:
            return ActionResult("dry_run", before, None, f"dry run: would {self.description}")
        try:
            self.apply(session, params, before)
        except StepError as exc:
            try:
                after: State | None = self.read(session, params)
            except StepError:
                after = None
            raise ActionFailed(exc, before, after) from exc
        after = self.read(session, params)
        return ActionResult("changed", before, after, self.description)


def _check(schema: Mapping[str, Any], params: Mapping[str, Any], what: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(dict(schema))
    problems = sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(dict(params))
    )
    if problems:
        raise InvalidInput(f"{what}: " + "; ".join(problems))


def resized(state: State, params: Mapping[str, Any]) -> bool:
    """`is_done` of the compute resizes: at the target size, settled, and running. Only
    running instances are resized (analyze finds others not applicable), so a stopped one is
    not done: an earlier attempt stopped it and was cut short."""
    return bool(
        state["sku"] == params["target_sku"] and not state["busy"] and state["status"] == "running"
    )


def resize_or_restore(
    before: State,
    target: str,
    set_type: Callable[[str], None],
    start: Callable[[], None],
    what: str,
) -> None:
    """Set the stopped instance's type and start it. A failure leaves it running at its old
    size, as it was: a failed modify starts it as it is; a start that fails at the new type
    (no capacity for it, a type the image cannot boot) sets the old type back and starts it
    again, then reports the first error. Only running instances are planned for a resize, so
    a stopped one was stopped by an earlier attempt cut short: it is started too."""
    changed = False
    try:
        if before["sku"] != target:
            set_type(target)
            changed = True
        start()
    except Exception:
        # Any error, not only the providers' mapped ones (a connection reset, a body that is
        # not JSON): the instance must not stay stopped.
        if changed:
            try:
                set_type(str(before["sku"]))
            except Exception:
                log.warning("resize: %s could not be set back to %s", what, before["sku"])
        start()  # its own error, if it fails too, says what is left to do
        raise


# A snapshot CCT took of a volume is reused (not taken again) by an execute retried within
# this long: the same run's. An older one is an earlier run's, whose volume may have been
# attached and written to since; deleting on it would lose that data.
SNAPSHOT_REUSE_S = 6 * 3600.0
# How many snapshots one run may take of a volume it names them for (Azure, GCP): each after
# the one before it grew too old to reuse (the run retried days later). Bounds the names a
# read tries.
SNAPSHOTS_PER_RUN = 8


def snapshot_reusable(snapshot: str, started_at: str | None, pending: bool) -> bool:
    """Whether a snapshot of this run found by a retried delete is the backup of the volume
    now. One still being taken is, however long a large volume takes; a finished one only
    if started within SNAPSHOT_REUSE_S. An unknown start counts as old: a second snapshot
    costs a little money, a stale one the data written since."""
    if pending:
        return True
    if not started_at:
        return False
    age_s = time.time() - datetime.fromisoformat(started_at).timestamp()
    if age_s > SNAPSHOT_REUSE_S:
        log.info("snapshot %s is %.0f s old: taking a new one", snapshot, age_s)
        return False
    return True


def last_snapshot(
    names: Sequence[str], get: Callable[[str], Mapping[str, Any]]
) -> tuple[str, Mapping[str, Any]] | None:
    """The last of a run's snapshot names (`names`, in the order they are taken) that
    exists, and what `get` read of it. Each is taken only once the one before it exists and
    is too old to reuse, so the first that is missing ends the search."""
    found: tuple[str, Mapping[str, Any]] | None = None
    for name in names:
        try:
            found = (name, get(name))
        except NotFound:
            break
    return found


def started_at(value: Any) -> str | None:
    """A cloud's creation time as UTC ISO 8601; None when absent or unreadable (counted as
    old by `snapshot_reusable`: a new snapshot rather than trusting this one)."""
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC).isoformat()
    except ValueError:
        return None


def snapshot_to_take(
    names: Sequence[str], before: Mapping[str, Any], pending: bool
) -> tuple[str, bool]:
    """(name, reused) of the run's snapshot a delete relies on: the one the read found
    (`before["snapshot_id"]`, one of `names`) while it may be reused, else the run's next
    name, leaving an older one as it is under its own name."""
    found = before.get("snapshot_id")
    if found and snapshot_reusable(found, before.get("snapshot_started_at"), pending):
        return found, True
    return next_snapshot_name(names, found), False


def next_snapshot_name(names: Sequence[str], last: str | None) -> str:
    """The name for a new snapshot, after `last` (the last one that exists, too old)."""
    if last is None:
        return names[0]
    following = names.index(last) + 1
    if following == len(names):
        raise Permanent(
            f"the run's {len(names)} snapshot names are all taken by snapshots older than "
            f"{SNAPSHOT_REUSE_S / 3600:.0f} h, the last {last}: volume kept (delete them for "
            "a new one to be taken)"
        )
    return names[following]


_ACTIONS: dict[str, Action] = {}


def register(action: Action) -> Action:
    if action.name in _ACTIONS:
        raise ValueError(f"action {action.name} is registered twice")
    if not action.name.startswith(action.provider + "."):
        raise ValueError(f"action {action.name} must start with its provider {action.provider}")
    _ACTIONS[action.name] = action
    return action
