"""Every playbook end to end on Azure and GCP, against recorded HTTP exchanges in the REST
APIs' documented formats, with credentials from Vault's recorded exchanges (see
tests/steps/recordings/*.json for where each recording comes from)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from lambdas.steps.action import SNAPSHOTS_PER_RUN, ActionResult
from lambdas.steps.providers import azure, gcp
from lambdas.steps.registry import ACTIONS
from lambdas.steps.rest import RestClient
from lambdas.steps.steps import api_resource_id
from tests.steps.cloud_cases import (
    ARM_TOKEN,
    CASES,
    GCP_TOKEN,
    NOT_CLOUD,
    SUB_RG,
    Case,
    params,
    recordings,
    values,
)
from tests.steps.conftest import assert_no_secrets
from tests.steps.replay import Replay, Seen, load, serving_exchanges
from tests.steps.runner import RunResult, call_step, run_playbook

Serve = Callable[..., AbstractContextManager[Replay]]
IDS = [c.recording.removesuffix(".json") for c in CASES]


def run_approved(
    case: Case, run_id: str, parameters: dict[str, Any], env: dict[str, str], db: Any
) -> RunResult:
    """Run the playbook; a database resize stops awaiting approval, then alice approves."""
    result = run_playbook(case.playbook, run_id, parameters, env, inprocess=True)
    if case.playbook == "rightsize-database":
        assert result.awaiting_approval
        assert db("select state from optimization_runs where run_id = %s", run_id) == [
            ("awaiting_approval",)
        ]
        result = run_playbook(
            case.playbook,
            run_id,
            parameters,
            env,
            inprocess=True,
            approval={"approved": True, "by": "alice"},
            resume=result,
        )
    assert result.failed_step is None, result.runs[-1]
    return result


def _run_row(db: Any, run_id: str) -> tuple[Any, ...]:
    (row,) = db(
        "select state, estimated_monthly_saving_usd, verified_monthly_saving_usd"
        " from optimization_runs where run_id = %s",
        run_id,
    )
    return row


def cloud_calls(r: Replay) -> list[Seen]:
    return [x for x in r.requests if not x.path.startswith(NOT_CLOUD)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_playbook_end_to_end(
    *,
    case: Case,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    uid: str,
) -> None:
    seed_case(case)
    run_id = f"cct-{case.playbook}-{case.provider}-{uid}"
    parameters = params(case, uid)
    with replay(*recordings(case), values=values(case, run_id)) as r:
        env = step_env(r.base_url)
        result = run_approved(case, run_id, parameters, env, db)

        assert r.unmatched == [], [f"{u.method} {u.path} {u.query}" for u in r.unmatched]
        assert r.state == case.final_state
        if case.target:
            assert result.outputs["plan"]["action_params"]["target_sku"] == case.target
            assert result.outputs["verify"]["state"]["sku"] == case.target
        bearer = ARM_TOKEN if case.provider == "azure" else GCP_TOKEN
        calls = cloud_calls(r)
        assert calls and all(x.headers["authorization"] == f"Bearer {bearer}" for x in calls)
        # The calls the playbook made need exactly the permissions its action declares.
        assert all(x.permissions for x in calls), [x.path for x in calls if not x.permissions]
        action = ACTIONS[result.outputs["plan"]["action"]]
        assert {p for x in calls for p in x.permissions} == set(action.permissions)

        # Idempotent: execute again with the same plan reads the changed resource, does nothing.
        doc = {
            "run_id": run_id,
            "playbook": case.playbook,
            "parameters": parameters,
            "previous": {k: result.outputs[k] for k in ("analyze", "plan", "approve")},
        }
        again = call_step("execute", doc, env, inprocess=True)
        assert again.exit_code == 0, again.output
        assert again.output["outcome"] == "already_done"
        assert r.unmatched == []

    state, est, verified = _run_row(db, run_id)
    assert (state, est, verified) == ("succeeded", Decimal(case.saving), Decimal(case.saving))
    outcome, before, after = db(
        "select outcome, before_state, after_state from optimization_actions where run_id = %s",
        run_id,
    )[0]
    assert outcome == "changed" and before != after
    assert_no_secrets(result.text + again.stderr)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dry_run_sends_no_mutating_request(
    *,
    case: Case,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    uid: str,
) -> None:
    seed_case(case)
    run_id = f"cct-{case.playbook}-{case.provider}-dry-{uid}"
    with replay(*recordings(case), values=values(case, run_id)) as r:
        result = run_approved(
            case, run_id, params(case, uid, **{"dry-run": "true"}), step_env(r.base_url), db
        )
        calls = cloud_calls(r)

    assert r.unmatched == [], [f"{u.method} {u.path}" for u in r.unmatched]
    # Only reads reached the cloud (the resource and its metrics, by analyze and execute), and
    # the recorded scenario never left its first state.
    assert calls and {x.method for x in calls} == {"GET"}, [f"{x.method} {x.path}" for x in calls]
    assert r.state == "start"
    assert result.outputs["execute"]["outcome"] == "dry_run"
    assert result.outputs["execute"]["after"] is None
    assert result.outputs["verify"]["skipped"] is True
    state, est, verified = _run_row(db, run_id)
    assert (state, est, verified) == ("dry_run", Decimal(case.saving), None)
    outcome, dry_run, before, after = db(
        "select outcome, dry_run, before_state, after_state from optimization_actions"
        " where run_id = %s",
        run_id,
    )[0]
    assert (outcome, dry_run, after) == ("dry_run", True, None)
    assert before == result.outputs["analyze"]["state"]


def test_azure_access_denied_leaves_the_vm_and_names_the_permission(
    *,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    uid: str,
) -> None:
    case = CASES[0]
    seed_case(case)
    run_id = f"cct-rightsize-compute-denied-{uid}"
    with replay("vault.json", "azure_login.json", "azure_resize_denied.json") as r:
        result = run_playbook(
            case.playbook, run_id, params(case, uid), step_env(r.base_url), inprocess=True
        )
    assert result.failed_step == "execute"
    error = result.runs[-2].output["error"]
    assert error["type"] == "AccessDenied"
    assert "Microsoft.Compute/virtualMachines/write" in error["message"]
    assert db("select state from optimization_runs where run_id = %s", run_id) == [("failed",)]
    assert db("select outcome from optimization_actions where run_id = %s", run_id) == [
        ("restored",)
    ]


def test_azure_throttling_is_retryable(
    *,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    uid: str,
) -> None:
    case = CASES[0]
    with replay("vault.json", "azure_login.json", "azure_throttled.json") as r:
        run = call_step(
            "analyze",
            {
                "run_id": f"cct-x-{uid}",
                "playbook": case.playbook,
                "parameters": params(case, uid),
                "previous": {},
            },
            step_env(r.base_url),
            inprocess=True,
        )
    assert run.exit_code == 75
    assert run.output["error"]["retryable"] is True
    assert "TooManyRequests" in run.output["error"]["message"]


def test_gcp_playbook_through_the_real_entrypoint(
    *,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    uid: str,
) -> None:
    """A GCP playbook also runs as `cct step` subprocesses (the AWS suite has one too); the
    other cases run the same code in-process to keep the suite fast."""
    case = CASES[6]
    seed_case(case)
    run_id = f"cct-{case.playbook}-sub-{uid}"
    with replay("vault.json", case.recording) as r:
        result = run_playbook(case.playbook, run_id, params(case, uid), step_env(r.base_url))
    assert result.failed_step is None, result.runs[-1]
    assert r.state == case.final_state
    assert_no_secrets(result.text)
    assert db("select state from optimization_runs where run_id = %s", run_id) == [("succeeded",)]


def test_gcp_failed_resize_starts_the_instance_at_its_old_size(
    *,
    replay: Serve,
    step_env: Callable[..., dict[str, str]],
    seed_case: Any,
    db: Any,
    uid: str,
) -> None:
    case = CASES[5]
    seed_case(case)
    run_id = f"cct-rightsize-compute-gcpfail-{uid}"
    parameters = params(
        case,
        uid,
        **{"resource-id": "projects/cct-payments-dev/zones/us-central1-a/instances/api-2"},
    )
    with replay("vault.json", "gcp_resize_fails.json") as r:
        result = run_playbook(
            case.playbook, run_id, parameters, step_env(r.base_url), inprocess=True
        )
        assert r.unmatched == []
        # stop, setMachineType (failed), then start again: the instance is as it was.
        assert r.state == "restored"
    assert result.failed_step == "execute"
    error = result.runs[-2].output["error"]
    assert error["type"] == "Permanent" and "UNSUPPORTED_OPERATION" in error["message"]
    outcome, before, after = db(
        "select outcome, before_state, after_state from optimization_actions where run_id = %s",
        run_id,
    )[0]
    assert outcome == "restored" and before == after
    state, reason = db("select state, reason from optimization_runs where run_id = %s", run_id)[0]
    assert state == "failed" and "UNSUPPORTED_OPERATION" in reason


# The delete-disk playbooks' snapshots, scenario by scenario: put together from each provider's
# recording, taken apart, and run through the action with the run id every name comes from.
RUN = "cct-delete-unattached-volume-5d41402abc4b"
DISK_CASES = {c.provider: c for c in CASES if c.playbook == "delete-unattached-volume"}
DONE = {"azure": "Succeeded", "gcp": "READY"}
CREATING = {"azure": "Creating", "gcp": "CREATING"}
# The one name versions before run-scoped names gave every run's snapshot of the disk.
LEGACY = {"azure": "disk-old-data-cct-snapshot", "gcp": "old-data-cct-673b7f1a"}


def hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat()


class DiskScenario:
    """The provider's delete-disk recording for the run RUN, in parts: `missing` (the first
    snapshot name not found), `disk`, `create` (snapshot the disk), `created` (its operation
    done), `delete`, `deleted` (its operation done), `found` (the snapshot afterwards),
    `gone` (the disk afterwards)."""

    def __init__(self, provider: str) -> None:
        case = DISK_CASES[provider]
        self.provider = provider
        self.rid = api_resource_id(provider, case.resource_id)
        name = azure.snapshot_name if provider == "azure" else gcp.snapshot_name
        self.names = [name(self.rid, RUN, g) for g in range(3)]
        (
            self.missing,
            self.disk,
            self.create,
            self.created,
            self.delete,
            self.deleted,
            self.found,
            _,
            self.gone,
        ) = load(case.recording, values=values(case, RUN))

    def named(self, exchange: dict[str, Any], name: str, **states: str) -> dict[str, Any]:
        """`exchange` about the snapshot `name` instead of the run's first."""
        renamed: dict[str, Any] = json.loads(json.dumps(exchange).replace(self.names[0], name))
        renamed.pop("when_state", None)
        renamed.pop("sets_state", None)
        return {**renamed, **states}

    def snapshot(self, name: str, status: str, started: str, **states: str) -> dict[str, Any]:
        found = self.named(self.found, name, **states)
        body = found["response"]["body"]
        if self.provider == "azure":
            body["properties"].update(provisioningState=status, timeCreated=started)
        else:
            body.update(status=status, creationTimestamp=started)
        return found

    def snapshot_id(self, name: str) -> str:
        """How the action's state names the snapshot: ARM id, or GCE name."""
        if self.provider == "gcp":
            return name
        group = self.rid.rsplit("/providers/", 1)[0]
        return f"{group}/providers/Microsoft.Compute/snapshots/{name}"

    def run(self, exchanges: list[dict[str, Any]]) -> tuple[ActionResult, Replay]:
        with serving_exchanges(exchanges) as replay:
            session: Any
            if self.provider == "azure":
                rest = RestClient(replay.base_url, "token", timeout_s=10.0)
                session = azure.AzureSession(
                    rest, 60.0, poll_initial_s=0.01, poll_max_s=0.01, run_id=RUN
                )
            else:
                session = gcp.GcpSession(
                    "token", replay.base_url, poll_initial_s=0.01, poll_max_s=0.01, run_id=RUN
                )
            action = ACTIONS[f"{self.provider}.compute.delete_disk"]
            result = action.run(session, {"resource_id": self.rid}, False)
        assert replay.unmatched == [], [f"{u.method} {u.path}" for u in replay.unmatched]
        return result, replay

    def takes_snapshot(self, x: Seen) -> bool:
        if self.provider == "azure":
            return x.method == "PUT" and "/snapshots/" in x.path
        return x.method == "POST" and x.path.endswith("/createSnapshot")

    def snapshots_taken(self, replay: Replay) -> list[str]:
        taken = [x for x in replay.requests if self.takes_snapshot(x)]
        if self.provider == "azure":
            return [x.path.rsplit("/", 1)[1] for x in taken]
        return [x.body["name"] for x in taken]


@pytest.mark.parametrize("provider", ["azure", "gcp"])
def test_a_weeks_old_snapshot_of_the_disk_is_not_the_backup_of_its_delete(provider: str) -> None:
    """An earlier run snapshotted the disk weeks ago, then its delete failed (the disk was
    attached again and written to). Versions before run-scoped names called every run's
    snapshot of the disk the same, so the delete now found that one and deleted the disk
    without a backup of what it holds now. It takes the run's own snapshot first, names it in
    its result, and leaves the old one as it is."""
    d = DiskScenario(provider)
    # Found whenever it is asked for.
    old = d.snapshot(LEGACY[provider], DONE[provider], hours_ago(24 * 7 * 9))
    # The cloud deletes the disk whenever asked: whether a backup was taken first is CCT's.
    delete = d.named(d.delete, d.names[0], sets_state="deleting")
    after = d.named(d.missing, d.names[1], when_state="deleted")
    exchanges = [d.missing, d.disk, d.create, d.created, delete, d.deleted, d.found, after]
    result, replay = d.run([*exchanges, d.gone, old])

    assert result.outcome == "changed"
    assert d.snapshots_taken(replay) == [d.names[0]]
    order = [x.method for x in replay.requests if d.takes_snapshot(x) or x.method == "DELETE"]
    assert order[-1] == "DELETE" and len(order) == 2  # the snapshot, then the delete
    assert result.after is not None
    assert result.after["snapshot_id"] == d.snapshot_id(d.names[0])
    assert result.after["snapshot_state"] == DONE[provider]
    # Neither read, nor written, nor deleted: the old snapshot stays as the earlier run left it.
    assert not [x for x in replay.requests if LEGACY[provider] in x.path]


@pytest.mark.parametrize("provider", ["azure", "gcp"])
def test_this_runs_snapshot_from_days_ago_is_kept_and_a_new_one_taken(provider: str) -> None:
    """The same run (a workflow retried days later, or one named the same after the first was
    deleted) finds the snapshot it took under its own name older than SNAPSHOT_REUSE_S: the
    disk may have been written to since. It takes a new one under the run's next name,
    keeps the old one, and its result names the new one."""
    d = DiskScenario(provider)
    old = hours_ago(24 * 3)
    new = d.named(d.create, d.names[1], when_state="start", sets_state="snapshotting")
    exchanges = [
        d.snapshot(d.names[0], DONE[provider], old, when_state="start"),
        d.named(d.missing, d.names[1], when_state="start"),
        d.disk,
        new,
        d.created,
        d.delete,
        d.deleted,
        d.snapshot(d.names[0], DONE[provider], old, when_state="deleted"),
        d.snapshot(d.names[1], DONE[provider], hours_ago(0), when_state="deleted"),
        d.named(d.missing, d.names[2], when_state="deleted"),
        d.gone,
    ]
    result, replay = d.run(exchanges)

    assert result.outcome == "changed"
    assert d.snapshots_taken(replay) == [d.names[1]]
    assert result.before is not None and result.after is not None
    assert result.before["snapshot_id"] == d.snapshot_id(d.names[0])  # seen, not reused
    assert result.after["snapshot_id"] == d.snapshot_id(d.names[1])
    assert result.after["snapshot_state"] == DONE[provider]
    # The old one is neither overwritten nor deleted.
    assert not [x for x in replay.requests if x.method != "GET" and d.names[0] in x.path]


@pytest.mark.parametrize("provider", ["azure", "gcp"])
@pytest.mark.parametrize("scenario", ["still-creating", "taken-an-hour-ago"])
def test_a_retry_reuses_the_snapshot_its_run_just_took(provider: str, scenario: str) -> None:
    """An execute retried after its first attempt snapshotted the disk (the step's pod lost,
    its deadline passed): the run's snapshot still being taken is waited for, even past
    SNAPSHOT_REUSE_S (a large disk takes long); one taken an hour ago is used as it is. No
    second snapshot is taken (on GCP, creating it again under its name is a 409)."""
    d = DiskScenario(provider)
    first = d.names[0]
    if scenario == "still-creating":
        read = [
            d.snapshot(
                first, CREATING[provider], hours_ago(8), when_state="start", sets_state="pending"
            ),
            d.named(d.missing, d.names[1], when_state="pending"),
            {**d.disk, "when_state": "pending"},
            d.snapshot(first, DONE[provider], hours_ago(8), when_state="pending"),
        ]
        # Polled until it is done, then the disk is deleted.
        read[-1]["sets_state"] = "snapshotted"
        delete = d.delete
    else:
        read = [
            d.snapshot(first, DONE[provider], hours_ago(1), when_state="start"),
            d.named(d.missing, d.names[1], when_state="start"),
            d.disk,
        ]
        delete = {**d.delete, "when_state": "start"}
    after = [
        d.snapshot(first, DONE[provider], hours_ago(1), when_state="deleted"),
        d.named(d.missing, d.names[1], when_state="deleted"),
        d.gone,
    ]
    result, replay = d.run([*read, delete, d.deleted, *after])

    assert result.outcome == "changed"
    assert d.snapshots_taken(replay) == []
    assert result.before is not None and result.after is not None
    assert result.before["snapshot_id"] == result.after["snapshot_id"] == d.snapshot_id(first)
    assert result.after["snapshot_state"] == DONE[provider]
    assert not [x for x in replay.requests if x.method != "GET" and "/snapshots/" in x.path]


def test_snapshot_names_fit_the_providers_limits_and_are_the_runs_own() -> None:
    """ARM names: up to 80 characters, alphanumerics, `_`, `.`, `-`, ending alphanumeric or
    `_`; GCE names: up to 63, `[a-z]([-a-z0-9]*[a-z0-9])?`. A disk with the longest name
    each allows still gets a valid one, whatever the run id; another run or generation gets
    another name; past the last generation the run stops rather than reuse one."""
    import re

    from lambdas.steps.action import next_snapshot_name
    from lambdas.steps.errors import Permanent

    arm = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]$")
    gce = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    arm_disk = f"{SUB_RG}/providers/Microsoft.Compute/disks/{'D.a_t-a' * 11}x23"
    gce_disk = f"projects/cct-payments-dev/zones/us-central1-a/disks/{'d-' * 31}z"
    for run in (RUN, "cct-local-" + "9" * 200):
        for g in range(SNAPSHOTS_PER_RUN):
            assert arm.match(azure.snapshot_name(arm_disk, run, g))
            assert gce.match(gcp.snapshot_name(gce_disk, run, g))
    # ARM ids and names are case-insensitive: the same disk spelled otherwise, the same snapshot.
    same = azure.snapshot_name(arm_disk.lower(), RUN, 0)
    assert same.lower() == azure.snapshot_name(arm_disk, RUN, 0).lower()
    names = {
        f(disk, run, g)
        for f, disk in ((azure.snapshot_name, arm_disk), (gcp.snapshot_name, gce_disk))
        for run in (RUN, RUN + "x")
        for g in (0, 1)
    }
    assert len(names) == 8

    chain = [f"n{g}" for g in range(3)]
    assert next_snapshot_name(chain, None) == "n0"
    assert next_snapshot_name(chain, "n1") == "n2"
    with pytest.raises(Permanent, match="all taken"):
        next_snapshot_name(chain, "n2")
