"""The webhook's pure core: one AdmissionReview (parsed JSON) in, the response and the
decision to record out. No I/O, no clock: the server passes the time, the policy set and the
recent actions.

What gets which answer:
- not an AdmissionReview v1 with a request uid: `BadReview` (the server answers HTTP 400 and
  the API server applies the webhook's failurePolicy);
- UPDATE of a Workflow: allowed while its spec stays as admitted (status updates,
  spec.shutdown, spec.suspend), otherwise denied (`spec_changes`); the status fields the
  controller runs from (`storedWorkflowTemplateSpec`, `storedTemplates`) may be set only by
  the workflow controller's own user (`controller_status_changes`);
- not an argoproj.io/v1alpha1 Workflow, or not a CREATE/UPDATE: allowed, not governed (the
  webhook configuration sends the managed namespaces' Workflow CREATEs; blocking anything
  else would be an outage);
- a Workflow that is not exactly a reference to an approved WorkflowTemplate with its
  parameters (inline templates, podSpecPatch, a service account, host namespaces, volumes,
  an entrypoint, hooks, unknown or unbounded parameters...): denied, naming every finding
  (`lambdas.policy.workflow.workflow_findings`);
- a Workflow whose parameters are missing or malformed: denied (invalid input never runs);
- deny verdict: denied with every reason in `status.message`;
- require-approval: allowed with a warning; the approved template's `approve` step is a
  suspend without a duration that only an authorised `argo resume` ends (the template's
  plan step reads this recorded verdict);
- no usable policy set or an engine error: the configured failure mode decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from lambdas.policy.engine import evaluate
from lambdas.policy.model import InvalidRequestError, PolicyRequest, Verdict
from lambdas.policy.policyset import PolicySet
from lambdas.policy.workflow import (
    controller_status_changes,
    spec_changes,
    workflow_findings,
    workflow_parameters,
)
from lambdas.store.decisions import DecisionRecord, decision_input

API_VERSION = "admission.k8s.io/v1"
WORKFLOW_KIND = {"group": "argoproj.io", "version": "v1alpha1", "kind": "Workflow"}
FailureMode = Literal["closed", "open"]
# Kubernetes shows warnings to the client and may truncate long ones.
_WARNING_LIMIT = 256
# metav1.Status reasons for the codes this webhook answers with.
_REASONS = {400: "BadRequest", 403: "Forbidden", 500: "InternalError"}
# The policy id recorded for a workflow refused for its shape rather than a policy verdict.
SHAPE_POLICY = "cct/approved-templates-only"
# Kubernetes object names are at most 253 characters (uids are bounded at the server's
# edge, CCT_ADMISSION_MAX_UID_CHARS); anything longer must not reach the audit table.
MAX_NAME_CHARS = 253
# Findings listed in a refusal and recorded: enough to explain, bounded for the audit table.
MAX_FINDINGS = 20


class BadReview(ValueError):
    """The body is not an AdmissionReview v1 this webhook can answer. HTTP 400, not retryable."""


@dataclass(frozen=True)
class Outcome:
    uid: str
    allowed: bool
    # allow | deny | require-approval (a policy verdict), or why there was none:
    # invalid (bad parameters), not-governed (other kinds/operations), error (fail mode).
    verdict: str
    message: str = ""
    code: int = 200
    warnings: tuple[str, ...] = ()
    record: DecisionRecord | None = None
    failure: str | None = None  # set when the failure mode decided: no_policy_set | internal_error

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if not self.allowed or self.message:
            body["status"] = {"code": self.code, "message": self.message}
            if not self.allowed:
                body["status"]["reason"] = _REASONS.get(self.code, "BadRequest")
        if self.warnings:
            body["warnings"] = [w[:_WARNING_LIMIT] for w in self.warnings]
        return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": body}


@dataclass(frozen=True)
class Context:
    """Everything the decision depends on besides the review itself."""

    now: datetime
    policy_set: PolicySet | None
    recent_actions: Mapping[str, int]
    failure_mode: FailureMode
    approval_templates: Collection[str]
    # Kubernetes user names of the Argo workflow controller: the only writers of the status
    # fields it runs from (CCT_ADMISSION_CONTROLLER_USERS).
    controller_users: Collection[str] = ()
    # Set while the newest policy files on disk are invalid and an older set is in use.
    stale_reason: str | None = None


def parse_review(review: Any) -> tuple[str, Mapping[str, Any]]:
    """(uid, request) of a well-formed AdmissionReview v1, else BadReview naming the problem."""
    if not isinstance(review, Mapping):
        raise BadReview("body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"{review.get('apiVersion')!r} {review.get('kind')!r}"
        )
    request = review.get("request")
    if not isinstance(request, Mapping):
        raise BadReview("AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("AdmissionReview request has no uid")
    return uid, request


@dataclass(frozen=True)
class _Review:
    uid: str
    name: str  # the workflow's name (or generateName prefix): the run id
    request: Mapping[str, Any]


def decide(review: Any, ctx: Context) -> Outcome:
    """Answer one AdmissionReview. Raises BadReview only; every other problem is an answer."""
    uid, request = parse_review(review)
    other = _not_a_create(uid, request, ctx)
    if other is not None:
        return other
    workflow = request.get("object")
    this = _Review(uid, _workflow_name(workflow, request), request)
    if isinstance(workflow, Mapping):
        findings = workflow_findings(workflow, ctx.approval_templates)
        if findings:
            return _refuse_shape(this, ctx.now, findings)
    try:
        if not isinstance(workflow, Mapping):
            raise InvalidRequestError("request has no Workflow object")
        policy_request = PolicyRequest.from_parameters(workflow_parameters(workflow))
    except InvalidRequestError as exc:
        message = f"CCT workflow {this.name} has invalid parameters: {exc}"
        record = _record(this, ctx.now, verdict="deny", reasons=(message,), allowed=False)
        return Outcome(
            uid, allowed=False, verdict="invalid", code=400, message=message, record=record
        )
    if ctx.policy_set is None:
        return fail_outcome(uid, ctx.failure_mode, "no_policy_set", "no valid policy set is loaded")
    try:
        verdict = evaluate(ctx.policy_set, policy_request, ctx.now, ctx.recent_actions)
    except Exception as exc:  # any engine failure must become the failure mode's answer
        why = f"policy evaluation failed: {exc!r}"
        return fail_outcome(uid, ctx.failure_mode, "internal_error", why)
    return _answer(
        this,
        workflow,
        policy_request=policy_request,
        verdict=verdict,
        ctx=ctx,
        fingerprint=ctx.policy_set.fingerprint,
    )


def _answer(
    this: _Review,
    workflow: Mapping[str, Any],
    *,
    policy_request: PolicyRequest,
    verdict: Verdict,
    ctx: Context,
    fingerprint: str,
) -> Outcome:
    warnings = [ctx.stale_reason] if ctx.stale_reason else []
    explained = "; ".join(f"{m.policy_id}: {m.reason}" for m in verdict.matches)
    allowed, code, message = True, 200, ""
    if verdict.decision == "deny":
        allowed, code, message = False, 403, f"denied by CCT policy: {explained}"
    elif verdict.decision == "require-approval":
        # workflow_findings admitted only an approved template, whose approve step is a
        # suspend that only an authorised resume ends (approval_gate_findings, tested on the
        # generated templates).
        warnings.append(
            f"CCT policy requires approval; the workflow waits at its approve step: {explained}"
        )
    record = _record(
        this,
        ctx.now,
        verdict=verdict.decision,
        policy_ids=verdict.policy_ids,
        reasons=verdict.reasons,
        allowed=allowed,
        policy_request=policy_request,
        facts=decision_input(
            policy_request.to_parameters(),
            recent_actions=ctx.recent_actions.get(policy_request.account_id, 0),
            policy_set=fingerprint,
        ),
    )
    return Outcome(
        this.uid,
        allowed=allowed,
        verdict=verdict.decision,
        message=message,
        code=code,
        warnings=tuple(warnings),
        record=record,
    )


def _not_a_create(uid: str, request: Mapping[str, Any], ctx: Context) -> Outcome | None:
    """The answer to anything but a Workflow CREATE; None for a Workflow CREATE."""
    kind = request.get("kind")
    operation = request.get("operation")
    if kind == WORKFLOW_KIND and operation == "UPDATE":
        return _judge_update(uid, request, ctx)
    if kind != WORKFLOW_KIND or operation != "CREATE":
        return Outcome(
            uid,
            allowed=True,
            verdict="not-governed",
            warnings=(
                f"cct-admission governs only CREATE and UPDATE of argoproj.io/v1alpha1 "
                f"Workflow; {operation} of {_kind_text(kind)} admitted without a policy check",
            ),
        )
    return None


def _judge_update(uid: str, request: Mapping[str, Any], ctx: Context) -> Outcome:
    """An admitted Workflow's spec must stay what was judged: the controller's status
    updates and `argo stop`/`terminate`/`suspend` (spec.shutdown, spec.suspend) pass; any
    other spec change (a podSpecPatch, other parameters, inline templates added after the
    CREATE was checked) is refused. So is a stored spec written by anyone but the controller:
    set before the controller's first pass, it would run instead of the approved template,
    and status is what approvers (`argo resume`) may write."""
    old, new = request.get("oldObject"), request.get("object")
    findings = [
        f"spec.{key} may not change after the workflow was admitted"
        for key in spec_changes(old, new)
    ]
    user = _username(request)
    if user not in ctx.controller_users:
        who = (user or "an unnamed user")[:MAX_NAME_CHARS]
        findings.extend(
            f"status.{key} is written only by the workflow controller, not by {who}"
            for key in controller_status_changes(old, new)
        )
    if not findings:
        return Outcome(uid, allowed=True, verdict="not-governed")
    this = _Review(uid, _workflow_name(new, request), request)
    return _refuse_shape(this, ctx.now, tuple(findings))


def _username(request: Mapping[str, Any]) -> str | None:
    user = request.get("userInfo")
    name = user.get("username") if isinstance(user, Mapping) else None
    return name if isinstance(name, str) and name else None


def _refuse_shape(this: _Review, now: datetime, findings: tuple[str, ...]) -> Outcome:
    shown = findings[:MAX_FINDINGS]
    more = f"; and {len(findings) - len(shown)} more" if len(findings) > len(shown) else ""
    message = (
        f"denied by CCT policy: {SHAPE_POLICY}: workflow {this.name} must be an approved "
        f"WorkflowTemplate by reference with its parameters: {'; '.join(shown)}{more}"
    )
    record = _record(
        this, now, verdict="deny", policy_ids=(SHAPE_POLICY,), reasons=shown, allowed=False
    )
    return Outcome(
        this.uid, allowed=False, verdict="deny", code=403, message=message, record=record
    )


def _workflow_uid(request: Mapping[str, Any]) -> str | None:
    obj = request.get("object")
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid[:MAX_NAME_CHARS] if isinstance(uid, str) and uid else None


def _record(
    this: _Review,
    now: datetime,
    *,
    verdict: str,
    reasons: Collection[str],
    allowed: bool,
    policy_ids: Collection[str] = (),
    policy_request: PolicyRequest | None = None,
    facts: Mapping[str, Any] | None = None,
) -> DecisionRecord | None:
    if this.request.get("dryRun", False):
        # A server-side dry run creates nothing, so it is answered but not recorded.
        return None
    user = this.request.get("userInfo")
    return DecisionRecord(
        decision_id=this.uid,
        source="admission",
        run_id=this.name,
        verdict=verdict,
        policy_ids=tuple(policy_ids),
        reasons=tuple(reasons),
        input={
            **(facts or {}),
            "namespace": this.request.get("namespace"),
            "user": user.get("username") if isinstance(user, Mapping) else None,
            "now": now.isoformat(),
            # The object's uid, set by the API server before admission: a second CREATE of the
            # same name (refused as AlreadyExists after this webhook) has another, so the run's
            # steps read the verdict of their own workflow (`store.actions.latest_verdict`).
            "workflow_uid": _workflow_uid(this.request),
        },
        decided_at=now,
        allowed=allowed,
        dry_run=policy_request.dry_run if policy_request else None,
        account_id=policy_request.account_id if policy_request else None,
    )


def fail_outcome(uid: str, failure_mode: FailureMode, failure: str, why: str) -> Outcome:
    """The failure mode's answer: no policy set, an engine error, or the server's own timeout.

    Not recorded: the decision was not a policy verdict, and the failure is counted instead.
    """
    if failure_mode == "open":
        return Outcome(
            uid,
            allowed=True,
            verdict="error",
            warnings=(f"CCT admission failed open: {why}",),
            failure=failure,
        )
    return Outcome(
        uid,
        allowed=False,
        verdict="error",
        code=500,
        message=f"CCT admission failed closed: {why}",
        failure=failure,
    )


def _workflow_name(workflow: Any, request: Mapping[str, Any]) -> str:
    meta = workflow.get("metadata") if isinstance(workflow, Mapping) else None
    if isinstance(meta, Mapping):
        # generateName workflows have no name yet at admission time.
        name = meta.get("name") or meta.get("generateName")
        if isinstance(name, str) and name:
            return name[:MAX_NAME_CHARS]
    name = request.get("name")
    return name[:MAX_NAME_CHARS] if isinstance(name, str) and name else "(unnamed)"


def _kind_text(kind: Any) -> str:
    if isinstance(kind, Mapping):
        group = kind.get("group") or "core"
        return f"{group}/{kind.get('version')} {kind.get('kind')}"
    return repr(kind)
