"""Every playbook end to end on Azure and GCP, against recorded HTTP exchanges in the REST
APIs' documented formats, with credentials from Vault's recorded exchanges (see
tests/steps/recordings/*.json for where each recording comes from)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import pytest

from lambdas.steps.registry import ACTIONS
from tests.steps.cloud_cases import ARM_TOKEN, CASES, GCP_TOKEN, NOT_CLOUD, Case, params, recordings
from tests.steps.conftest import assert_no_secrets
from tests.steps.replay import Replay, Seen
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
    with replay(*recordings(case)) as r:
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
    with replay(*recordings(case)) as r:
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


def test_a_gcp_snapshot_still_being_made_is_waited_for_not_created_again() -> None:
    """An execute retried while its first attempt's snapshot is still CREATING (a large disk
    outlasts a step's wait): it waits for that snapshot, then deletes the disk. Creating it
    again under its name was a 409, a permanent failure."""
    import copy

    from lambdas.steps.providers.gcp import GcpSession
    from lambdas.steps.registry import ACTIONS
    from tests.steps.replay import _handler, load
    from tests.support.http import serving_http

    _, disk, _, _, delete, delete_wait, snap_ready, disk_gone = load("gcp_delete_disk.json")
    pending = copy.deepcopy(snap_ready)
    pending["response"]["body"]["status"] = "CREATING"
    pending.update(when_state="start", sets_state="pending")
    ready = {**copy.deepcopy(snap_ready), "when_state": "pending", "sets_state": "snapshotted"}
    disk = {**disk, "when_state": "pending"}
    replay = Replay([pending, disk, ready, delete, delete_wait, snap_ready, disk_gone])
    with serving_http(_handler(replay)) as url:
        replay.base_url = url
        session = GcpSession("token", url, poll_initial_s=0.01, poll_max_s=0.01)
        rid = "projects/cct-payments-dev/zones/us-central1-a/disks/old-data"
        result = ACTIONS["gcp.compute.delete_disk"].run(session, {"resource_id": rid}, False)
    assert (result.outcome, replay.unmatched) == ("changed", [])
    assert not replay.calls("POST", "createSnapshot")
    snapshot = {"snapshot_id": "old-data-cct-673b7f1a", "snapshot_state": "READY"}
    assert result.after == {"exists": False, **snapshot}
