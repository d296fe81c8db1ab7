"""The six workflow steps. Each takes the parsed input and a `StepIO` (clouds, database,
clock) and returns the JSON object the step prints; the decisions are in `planning`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg

from lambdas.pricing.catalog import (
    azure_disk_tier,
    azure_sql_compute,
    cloud_sql_compute,
    gcp_machine_shape,
)
from lambdas.steps import results
from lambdas.steps.action import Action, ActionFailed
from lambdas.steps.contract import StepInput
from lambdas.steps.errors import InvalidInput, NotFound, Permanent, Retryable
from lambdas.steps.planning import (
    ApprovalNeed,
    approval_need,
    assess,
    make_plan,
    verified_saving,
)
from lambdas.steps.playbooks import PLAYBOOKS
from lambdas.steps.redact import REDACTOR
from lambdas.steps.registry import ACTIONS
from lambdas.steps.settings import StepSettings
from lambdas.steps.sizing import HOURS_PER_MONTH, smaller_sizes
from lambdas.store import actions as store
from lambdas.store.db import CONNECTION_LIVENESS

log = logging.getLogger("cct.steps")

CloudOpener = Callable[[StepInput], AbstractContextManager[Any]]
DbOpener = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class StepIO:
    settings: StepSettings
    cloud: CloudOpener
    db: DbOpener
    now: Callable[[], float] = time.time


def pg_opener(dsn: str) -> DbOpener:
    @contextmanager
    def open_db() -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = psycopg.connect(dsn, connect_timeout=10, **CONNECTION_LIVENESS)
        except psycopg.OperationalError as exc:
            raise Retryable(f"PostgreSQL unavailable: {type(exc).__name__}") from None
        with conn:
            yield conn

    return open_db


def _action(inp: StepInput) -> Action:
    playbook = PLAYBOOKS[inp.playbook]
    return ACTIONS[playbook.actions[inp.parameters.provider]]


def _base(inp: StepInput) -> dict[str, Any]:
    """The parameters every action of the provider reads a resource by."""
    p = inp.parameters
    return {
        "resource_id": api_resource_id(p.provider, p.resource_id),
        **({"region": p.region} if p.provider == "aws" else {}),
    }


# ARM's spelling of the path segments the collector lower-cases (ARM ids are case-insensitive;
# the actions' schemas name the canonical spelling).
_ARM_SEGMENTS = {
    seg.lower(): seg
    for seg in (
        "subscriptions",
        "resourceGroups",
        "providers",
        "Microsoft.Compute",
        "virtualMachines",
        "disks",
        "Microsoft.Storage",
        "storageAccounts",
        "Microsoft.Sql",
        "servers",
        "databases",
    )
}
# The collector's GCP ids are asset names; the APIs take the relative name after these.
GCP_ASSET_PREFIXES = ("//compute.googleapis.com/", "//cloudsql.googleapis.com/")


def api_resource_id(provider: str, resource_id: str) -> str:
    """How the provider's API names a resource that its events and the collector name
    otherwise. RDS's ModifyDBInstance takes the instance identifier, never the ARN
    (`arn:aws:rds:<region>:<account>:db:<identifier>`); the collector keys Azure resources by
    the lower-cased ARM id (ARM ids are case-insensitive, the actions' schemas use ARM's
    spelling of the fixed segments); GCP resources by their full asset name
    (`//compute.googleapis.com/projects/...`, `//cloudsql.googleapis.com/projects/...`), while
    the Compute and Cloud SQL Admin APIs take the relative name. Other ids pass unchanged."""
    if provider == "aws" and resource_id.startswith("arn:aws:rds:") and ":db:" in resource_id:
        return resource_id.rsplit(":db:", 1)[1]
    if provider == "gcp" and resource_id.startswith(GCP_ASSET_PREFIXES):
        return resource_id.split("/", 3)[3]
    if provider == "azure" and resource_id.startswith("/"):
        parts = resource_id.split("/")
        # Names (even positions) keep their spelling; the fixed segments (subscriptions,
        # resourceGroups, providers, types at odd positions, the namespace at 6) get ARM's.
        for i in range(1, len(parts)):
            if i % 2 == 1 or i == 6:
                parts[i] = _ARM_SEGMENTS.get(parts[i].lower(), parts[i])
        return "/".join(parts)
    return resource_id


def _run_row(inp: StepInput, settings: StepSettings) -> store.RunRow:
    p = inp.parameters
    return store.RunRow(
        run_id=inp.run_id,
        event_id=p.event_id or inp.run_id,
        playbook=inp.playbook,
        backend=settings.backend,
        provider=p.provider,
        account_id=p.account_id,
        resource_id=p.resource_id,
        team=p.team,
        environment=p.environment,
        parameters=p.raw,
    )


def _ensure_run(conn: psycopg.Connection[Any], inp: StepInput, settings: StepSettings) -> None:
    try:
        store.ensure_run(conn, _run_row(inp, settings))
    except store.RunConflict as exc:
        raise InvalidInput(str(exc)) from None


def _approval_need(
    inp: StepInput, verdict: store.PolicyVerdict | None, settings: StepSettings
) -> ApprovalNeed:
    # In the cluster every run is judged (the trigger's pre-check, the admission webhook).
    judged = settings.backend == "argo"
    if verdict is None:
        return approval_need(PLAYBOOKS[inp.playbook], inp.parameters, None, verdict_expected=judged)
    return approval_need(
        PLAYBOOKS[inp.playbook],
        inp.parameters,
        verdict.verdict,
        tuple(verdict.policy_ids),
        tuple(verdict.reasons),
        verdict_expected=judged,
    )


def _prices(
    conn: psycopg.Connection[Any], inp: StepInput, action: Action, state: Mapping[str, Any]
) -> dict[str, Decimal]:
    """The price catalog rows for the resource's region, in the action's unit, by the sku
    the cloud reports (see `catalog_skus`)."""
    provider, region = inp.parameters.provider, str(state.get("region", ""))
    rows = store.prices(conn, provider, action.service_name, region, action.price_unit)
    if provider == "azure" and action.price_unit == "gib_month":
        hourly = store.prices(conn, provider, action.service_name, region, "hour")
        rows = {**rows, **azure_disk_per_gib(hourly, state)}
    return catalog_skus(rows, state, provider)


_PER_GIB_PLACES = Decimal("0.00000001")  # the catalog's own scale, numeric(18, 8)


def azure_disk_per_gib(
    hourly: Mapping[str, Decimal], state: Mapping[str, Any]
) -> dict[str, Decimal]:
    """Azure bills a managed disk at its tier's price, whatever it holds: a 256 GiB
    Premium_LRS disk is a P15 at $38.01 a month. `cct prices load` keeps tiers per hour
    (`Premium_LRS/P15`); a plan in GiB-months gets the disk's own sku at the tier's monthly
    price over the disk's size, so size x price is the tier's price. The tier is the disk's
    performance tier when it has one set and priced, else the smallest that holds it."""
    sku, size = state.get("sku"), state.get("size_gib")
    if not sku or not size or float(size) <= 0:
        return {}
    # A raised performance tier (`properties.tier`, P30 on a 128 GiB disk) is what is billed.
    tiers = (state.get("tier"), azure_disk_tier(str(sku), float(size)))
    prices = [hourly[f"{sku}/{t}"] for t in tiers if t and f"{sku}/{t}" in hourly]
    if not prices:
        return {}
    per_hour = prices[0]
    per_gib = per_hour * HOURS_PER_MONTH / Decimal(str(size))
    return {str(sku): per_gib.quantize(_PER_GIB_PLACES)}


def catalog_skus(
    rows: Mapping[str, Decimal], state: Mapping[str, Any], provider: str = ""
) -> dict[str, Decimal]:
    """`cct prices load` keys an RDS instance's hourly price as `class/engine/deployment`
    (`db.m5.large/postgres/Single-AZ`) while RDS reports the class alone: the rows of the
    database's own engine and deployment are also offered under the bare class. GCP prices
    a machine type per vCPU and GiB of its family (`e2/core`, `e2/ram`): the machine's own
    type and the smaller sizes a rightsize may choose are offered composed from them, as the
    collector prices them (`lambdas.pricing.catalog.gcp_machine_shape`); a Cloud SQL tier
    likewise, from the vCPU and GiB prices of the instance's engine and availability
    (`postgres/zonal/core`); an Azure SQL database from its compute and licence prices.
    Azure blob capacity is keyed `<tier>/<redundancy>` (`Cool/LRS`): the account's own
    redundancy's rows are offered under the bare tier, as the account reports it."""
    sku = str(state.get("sku") or "")
    compose: Callable[[str], list[tuple[str, float]] | None] | None = None
    if provider == "gcp" and sku:
        engine, availability = state.get("engine"), state.get("availability")
        if engine and availability:  # a Cloud SQL tier
            compose = partial(cloud_sql_compute, engine=str(engine), availability=str(availability))
        else:
            compose = _gce_compute
    elif provider == "azure" and sku and "license" in state:  # an Azure SQL database
        compose = partial(
            azure_sql_compute,
            license_type=state.get("license"),
            zone_redundant=bool(state.get("zone_redundant")),
        )
    if compose is not None:
        return {**_priced_sizes(rows, provider, sku, compose), **rows}
    engine, deployment = state.get("engine"), state.get("deployment")
    if engine and deployment:
        suffix = f"/{engine}/{deployment}"
    elif state.get("redundancy"):
        suffix = f"/{state['redundancy']}"
    else:
        return dict(rows)
    narrowed = {k.removesuffix(suffix): v for k, v in rows.items() if k.endswith(suffix)}
    return {**rows, **narrowed}


def _sizes(provider: str, sku: str) -> list[tuple[str, int | None]]:
    """`sku` and the smaller sizes a rightsize may choose, with their vCPUs (None: a size CCT
    does not resize, such as a shared-core or custom machine type, is still priced)."""
    try:
        vcpu, smaller = smaller_sizes(provider, sku)
    except InvalidInput:
        return [(sku, None)]
    return [(sku, vcpu), *smaller]


def _priced_sizes(
    rows: Mapping[str, Decimal],
    provider: str,
    sku: str,
    compose: Callable[[str], list[tuple[str, float]] | None],
) -> dict[str, Decimal]:
    """The price of `sku` and of the smaller sizes a rightsize may choose, each the sum of the
    catalog rows `compose` names for it (`lambdas.pricing.catalog`, as the collector prices
    it); a size with any row missing has no price."""
    out: dict[str, Decimal] = {}
    for name, _ in _sizes(provider, sku):
        parts = compose(name)
        prices = [(rows.get(part), Decimal(str(qty))) for part, qty in parts or []]
        if parts and all(price is not None for price, _ in prices):
            out[name] = sum((p * q for p, q in prices if p is not None), Decimal(0))
    return out


def _gce_compute(machine_type: str) -> list[tuple[str, float]] | None:
    shape = gcp_machine_shape(machine_type)
    if shape is None:
        return None
    family, cpus, mem = shape
    return [(f"{family}/core", cpus), (f"{family}/ram", mem)]


def _save_action(
    conn: psycopg.Connection[Any],
    inp: StepInput,
    action: str,
    *,
    dry_run: bool,
    outcome: str,
    reason: str | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    estimated: Decimal | None,
    verified: Decimal | None = None,
) -> None:
    store.upsert_action(
        conn,
        store.ActionRow(
            inp.run_id,
            action,
            inp.parameters.resource_id,
            dry_run,
            outcome,
            reason,
            before,
            after,
            estimated,
            verified,
        ),
    )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def resource_account(provider: str, resource_id: str) -> str | None:
    """The account a resource id names, where it names one: an Azure subscription, a GCP
    project, the account of an RDS ARN (EC2, EBS and S3 ids name none)."""
    api_id = api_resource_id(provider, resource_id)
    parts = api_id.split("/")
    if provider == "azure" and len(parts) > 2 and parts[1] == "subscriptions":
        return parts[2]
    if provider == "gcp" and len(parts) > 1 and parts[0] == "projects":
        return parts[1]
    if provider == "aws" and resource_id.startswith("arn:aws:"):
        fields = resource_id.split(":")
        return fields[4] if len(fields) > 5 and fields[4] else None
    return None


def check_resource(inp: StepInput, action: Action, base: Mapping[str, Any]) -> None:
    """Before any credential is fetched: the resource is one the action accepts, in the
    account the run was judged and will be recorded for (a subscription or project that
    Vault's identity can also reach is not the same as the one the policy saw)."""
    action.validate_resource(base)
    p = inp.parameters
    owner = resource_account(p.provider, p.resource_id)
    if p.account_id and owner is not None and owner.lower() != p.account_id.lower():
        raise InvalidInput(
            f"parameters.resource-id is in account {owner!r}, not in "
            f"parameters.account-id {p.account_id!r}"
        )


def analyze(inp: StepInput, io: StepIO) -> dict[str, Any]:
    action = _action(inp)
    base = _base(inp)
    check_resource(inp, action, base)
    with io.cloud(inp) as session:
        try:
            state = action.read(session, base)
        except NotFound as exc:
            raise Permanent(f"{inp.parameters.resource_id} not found: {exc}") from None
        metrics: dict[str, Any] = {}
        if action.metrics is not None and state.get("exists") is not False:
            metrics = action.metrics(session, base, io.now(), io.settings.lookback_hours)
    verdict = assess(inp.playbook, inp.parameters, state, metrics, io.settings)
    log.info(
        "analyzed",
        extra={"run_id": inp.run_id, "applicable": verdict.applicable, "reason": verdict.reason},
    )
    return {
        "action": action.name,
        "resource": base,
        "state": state,
        "metrics": metrics,
        "applicable": verdict.applicable,
        "reason": verdict.reason,
    }


def plan(inp: StepInput, io: StepIO) -> dict[str, Any]:
    analysis = inp.output_of("analyze")
    action = ACTIONS[str(analysis["action"])]
    state, metrics = analysis["state"], analysis["metrics"]
    with io.db() as conn:
        verdict = store.latest_verdict(conn, inp.run_id, inp.workflow_uid)
        prices = _prices(conn, inp, action, state) if analysis["applicable"] else {}
    need = _approval_need(inp, verdict, io.settings)
    if not analysis["applicable"]:
        return {
            "action": action.name,
            "noop": True,
            "reason": analysis["reason"],
            "action_params": {},
            "estimated_monthly_saving_usd": None,
            "price_basis": {},
            "approval_required": False,
        }
    result = make_plan(
        inp.playbook,
        params=inp.parameters,
        base=analysis["resource"],
        state=state,
        metrics=metrics,
        prices=prices,
        settings=io.settings,
    )
    if not result.noop:
        action.validate(result.action_params)
    return {
        "action": action.name,
        "noop": result.noop,
        "reason": result.reason,
        "action_params": dict(result.action_params),
        "estimated_monthly_saving_usd": _money(result.estimated_monthly_saving_usd),
        "price_basis": dict(result.price_basis),
        "approval_required": need.required and not result.noop,
    }


def approve(inp: StepInput, io: StepIO) -> dict[str, Any]:
    planned = inp.output_of("plan")
    with io.db() as conn:
        _ensure_run(conn, inp, io.settings)
        verdict = store.latest_verdict(conn, inp.run_id, inp.workflow_uid)
        need = _approval_need(inp, verdict, io.settings)
        outcome, refusal = _approval_outcome(inp, planned, need)
        store.record_step_decision(
            conn,
            inp.run_id,
            "deny" if need.denied else "require-approval" if outcome["required"] else "allow",
            policy_ids=need.policy_ids,
            reasons=need.reasons,
            decision_input={"plan": dict(planned), "approval": dict(inp.approval or {})},
        )
        if refusal is not None:
            store.set_run_state(conn, inp.run_id, "denied" if need.denied else "failed", refusal)
        elif outcome["status"] == "awaiting_approval":
            store.set_run_state(conn, inp.run_id, "awaiting_approval", "; ".join(need.reasons))
        elif outcome["by"]:
            store.set_run_state(conn, inp.run_id, "running", f"approved by {outcome['by']}")
    # Raised after the transaction committed, so the refusal is on record.
    if refusal is not None:
        raise Permanent(refusal)
    return outcome


def _approval_outcome(
    inp: StepInput, planned: Mapping[str, Any], need: ApprovalNeed
) -> tuple[dict[str, Any], str | None]:
    """The approve step's output, and the reason when the run must stop here."""
    if need.denied:
        reason = "denied by policy: " + "; ".join(need.reasons)
        return {
            "status": "denied",
            "required": False,
            "by": None,
            "reasons": list(need.reasons),
        }, reason
    if not need.required or planned.get("noop"):
        return {"status": "approved", "required": False, "by": None, "reasons": []}, None
    reasons = list(need.reasons)
    if inp.approval is None:
        return {
            "status": "awaiting_approval",
            "required": True,
            "by": None,
            "reasons": reasons,
        }, None
    by = str(inp.approval.get("by") or "").strip()
    if not by:
        raise InvalidInput("input.approval.by must name who decided")
    if inp.approval.get("approved") is not True:
        return {
            "status": "rejected",
            "required": True,
            "by": by,
            "reasons": reasons,
        }, f"rejected by {by}"
    return {"status": "approved", "required": True, "by": by, "reasons": reasons}, None


def execute(inp: StepInput, io: StepIO) -> dict[str, Any]:
    planned = inp.output_of("plan")
    if planned["noop"]:
        return {"outcome": "skipped", "reason": planned["reason"], "before": None, "after": None}
    approval = inp.output_of("approve")
    if approval.get("status") != "approved":
        raise Permanent(f"not approved (approve step says {approval.get('status')!r})")
    action = ACTIONS[str(planned["action"])]
    params = planned["action_params"]
    dry_run = inp.parameters.dry_run
    with io.db() as conn:
        _ensure_run(conn, inp, io.settings)
        store.mark_running(conn, inp.run_id)
    try:
        with io.cloud(inp) as session:
            result = action.run(session, params, dry_run)
    except ActionFailed as exc:
        # Saved on a retryable failure too, so a run whose retries run out still has its
        # action on record (the row keeps the first attempt's before-state; a retry that
        # succeeds overwrites the outcome). Only a permanent failure ends the run here.
        with io.db() as conn:
            # Restored means as it was before the first attempt: a retry starts from what the
            # attempts before it left (an instance stopped by one of them).
            first = store.first_before_state(
                conn, inp.run_id, action.name, inp.parameters.resource_id
            )
            outcome = "restored" if exc.after == (first or exc.before) else "failed"
            # Cloud error text goes to PostgreSQL and the results event: keep secrets out.
            reason = REDACTOR(f"execute {action.name}: {exc} (resource {outcome})")
            _save_action(
                conn,
                inp,
                action.name,
                dry_run=dry_run,
                outcome=outcome,
                reason=reason,
                before=exc.before,
                after=exc.after,
                estimated=_decimal(planned["estimated_monthly_saving_usd"]),
            )
            if not exc.retryable:
                store.set_run_state(conn, inp.run_id, "failed", reason)
        raise
    log.info("executed", extra={"run_id": inp.run_id, "outcome": result.outcome})
    return {
        "action": action.name,
        "outcome": result.outcome,
        "message": result.message,
        "before": result.before,
        "after": result.after,
    }


def verify(inp: StepInput, io: StepIO) -> dict[str, Any]:
    planned = inp.output_of("plan")
    executed = inp.output_of("execute")
    if executed["outcome"] in ("skipped", "dry_run"):
        return {"verified": False, "skipped": True, "state": executed.get("before")}
    action = ACTIONS[str(planned["action"])]
    with io.cloud(inp) as session:
        state = action.read(session, planned["action_params"])
    if state.get("busy"):
        raise Retryable(f"{inp.parameters.resource_id} is still settling ({state.get('status')})")
    if not action.is_done(state, planned["action_params"]):
        raise Permanent(
            f"verify: {inp.parameters.resource_id} is not in the planned state: {state}"
        )
    return {"verified": True, "skipped": False, "state": state}


def record(inp: StepInput, io: StepIO) -> dict[str, Any]:
    """Write the run's outcome to PostgreSQL, then (when Kafka is configured) publish it.

    The rows are committed before the event is produced: a broker outage makes the step
    retryable, and the retried step rewrites the same rows and produces the same event id.
    """
    output = _record(inp, io)
    kafka = io.settings.kafka
    if kafka is None:
        return output
    with io.db() as conn:
        outcome = store.run_outcome(conn, inp.run_id)
    if outcome is None or outcome.state not in store.FINAL_STATES:
        return output
    when = datetime.fromtimestamp(io.now(), UTC).isoformat(timespec="milliseconds")
    event = results.result_event(inp.run_id, inp.playbook, outcome, when.replace("+00:00", "Z"))
    results.publish(kafka, io.settings, event)
    log.info("result published", extra={"run_id": inp.run_id, "event_id": event["id"]})
    return {**output, "event_id": event["id"]}


def _record(inp: StepInput, io: StepIO) -> dict[str, Any]:
    planned = inp.previous.get("plan")
    executed = inp.previous.get("execute")
    verified = inp.previous.get("verify")
    with io.db() as conn:
        _ensure_run(conn, inp, io.settings)
        if inp.failure is not None:
            return _record_failure(inp, conn, planned, executed)
        if planned is None or executed is None or verified is None:
            raise Permanent("record needs the plan, execute and verify outputs, or a failure")
        estimated = _decimal(planned["estimated_monthly_saving_usd"])
        if planned["noop"]:
            store.set_run_state(
                conn,
                inp.run_id,
                "succeeded",
                f"no change: {planned['reason']}",
                estimated_usd=Decimal(0),
                verified_usd=Decimal(0),
            )
            return {"state": "succeeded", "reason": f"no change: {planned['reason']}"}
        action = ACTIONS[str(planned["action"])]
        before = executed.get("before") or {}
        if executed["outcome"] == "dry_run":
            _save_action(
                conn,
                inp,
                action.name,
                dry_run=True,
                outcome="dry_run",
                reason=executed["message"],
                before=before,
                after=None,
                estimated=estimated,
            )
            store.set_run_state(
                conn, inp.run_id, "dry_run", executed["message"], estimated_usd=estimated
            )
            return {"state": "dry_run", "estimated_monthly_saving_usd": _money(estimated)}
        after = verified["state"]
        prices = _prices(conn, inp, action, before)
        saving = verified_saving(inp.playbook, estimated, before, after, prices)
        _save_action(
            conn,
            inp,
            action.name,
            dry_run=False,
            outcome=executed["outcome"],
            reason=executed["message"],
            before=before,
            after=after,
            estimated=estimated,
            verified=saving,
        )
        store.set_run_state(
            conn,
            inp.run_id,
            "succeeded",
            executed["message"],
            estimated_usd=estimated,
            verified_usd=saving,
        )
        return {
            "state": "succeeded",
            "outcome": executed["outcome"],
            "estimated_monthly_saving_usd": _money(estimated),
            "verified_monthly_saving_usd": _money(saving),
        }


def _record_failure(
    inp: StepInput,
    conn: psycopg.Connection[Any],
    planned: Mapping[str, Any] | None,
    executed: Mapping[str, Any] | None,
) -> dict[str, Any]:
    assert inp.failure is not None
    current = store.run_state(conn, inp.run_id)
    if current is not None and current[0] in store.FINAL_STATES:
        # execute or approve already wrote the precise reason, or record itself finished
        # the run before failing later (e.g. on publishing): keep what is on record.
        return {"state": current[0], "reason": current[1]}
    reason = f"{inp.failure.get('step', 'workflow')} failed: {inp.failure.get('message', '')}"
    if planned is not None and executed is not None and executed.get("outcome") == "changed":
        _save_action(
            conn,
            inp,
            str(planned["action"]),
            dry_run=False,
            outcome="changed",
            reason=reason,
            before=executed.get("before"),
            after=executed.get("after"),
            estimated=_decimal(planned.get("estimated_monthly_saving_usd")),
        )
    store.set_run_state(conn, inp.run_id, "failed", reason)
    return {"state": "failed", "reason": reason}


STEP_FUNCTIONS: Mapping[str, Callable[[StepInput, StepIO], dict[str, Any]]] = {
    "analyze": analyze,
    "plan": plan,
    "approve": approve,
    "execute": execute,
    "verify": verify,
    "record": record,
}
