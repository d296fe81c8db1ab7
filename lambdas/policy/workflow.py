"""Read and judge an Argo `Workflow` object (argoproj.io/v1alpha1).

Pure functions over the JSON the API server sends, shared by the admission webhook and
`cct policy explain` (which accepts a Workflow manifest as input).

What a governed Workflow may be is deliberately narrow: a reference to one approved
WorkflowTemplate (`spec.workflowTemplateRef`) plus its parameters, nothing else. Everything
that decides how pods run (templates, steps, DAG tasks, `podSpecPatch`, the service account,
security contexts, volumes, host namespaces, the entrypoint, hooks) then comes from the
reviewed template, never from the author of the Workflow. `workflow_findings` names every
part of a Workflow outside that shape, walking inline templates so the refusal says what the
workflow would have run (a privileged container, a hostPath volume, a self-resuming approval).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from lambdas.policy.model import InvalidRequestError

APPROVAL_STEP = "approve"
# Parameters the approved WorkflowTemplates declare (lambdas.steps.templates.WORKFLOW_PARAMETERS,
# kept equal by a test; the webhook must not import the template generator and its hera).
TEMPLATE_PARAMETERS = frozenset(
    {
        "provider",
        "service",
        "resource-id",
        "resource-type",
        "action",
        "environment",
        "team",
        "account-id",
        "region",
        "tags",
        "estimated-monthly-impact-usd",
        "dry-run",
        "event-id",
        "restart-schedule",
        "target-sku",
        "require-approval",
    }
)
# A parameter value longer than this is not a resource id, a region or a tag set; the tags
# JSON is the longest real value (cloud tag sets stay well under 4 KiB).
MAX_PARAMETER_CHARS = 4096
# The only condition the approved templates put on their approve step: the platform's own
# plan step (which reads the recorded admission verdict) says whether approval is needed.
PLATFORM_APPROVAL_CONDITION = "{{steps.plan.outputs.parameters.approval-required}} == true"
# What a governed Workflow's spec may contain.
_ALLOWED_SPEC = frozenset({"workflowTemplateRef", "arguments"})
# Why the usual pod-shaping spec fields are refused, for a clear message.
_SPEC_WHY = {
    "templates": "inline templates are not allowed; reference an approved WorkflowTemplate",
    "podSpecPatch": "podSpecPatch rewrites every pod of the workflow",
    "serviceAccountName": "the workflow may not choose its pods' service account",
    "executor": "the workflow may not choose its pods' executor service account",
    "automountServiceAccountToken": "the workflow may not mount service account tokens",
    "securityContext": "the workflow may not set its pods' security context",
    "volumes": "the workflow may not add volumes to its pods",
    "hostNetwork": "host namespaces are not allowed",
    "hostPID": "host namespaces are not allowed",
    "hostIPC": "host namespaces are not allowed",
    "entrypoint": "the workflow may not start the template anywhere but its entrypoint",
    "onExit": "the workflow may not add exit handlers",
    "hooks": "the workflow may not add lifecycle hooks",
    "templateDefaults": "templateDefaults change every template of the workflow",
    "suspend": "the workflow may not suspend or resume itself",
    "workflowTemplateRef": "",
}
_HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
_CONTAINER_KINDS = ("container", "script")
# How deep inline templates (steps/tasks with `inline`) are followed; deeper is itself refused.
_MAX_DEPTH = 8


def workflow_parameters(workflow: Mapping[str, Any]) -> dict[str, str]:
    """`spec.arguments.parameters` as name -> value. A duplicate name is invalid input
    (Argo itself would reject it, and the policies must see exactly one value)."""
    spec = workflow.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidRequestError("workflow has no spec")
    arguments = spec.get("arguments") or {}
    raw = arguments.get("parameters") if isinstance(arguments, Mapping) else None
    if not isinstance(raw, list):
        raise InvalidRequestError("workflow has no spec.arguments.parameters")
    params: dict[str, str] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InvalidRequestError(f"spec.arguments.parameters[{i}] has no name")
        name = item["name"]
        if name in params:
            raise InvalidRequestError(f"parameter {name} is given twice")
        value = item.get("value")
        if value is None:
            # A parameter without a value would be filled from a template default that the
            # webhook cannot see; the policies must not guess it.
            raise InvalidRequestError(f"parameter {name} has no value")
        params[name] = value if isinstance(value, str) else str(value)
    return params


def workflow_findings(
    workflow: Mapping[str, Any], approved_templates: Collection[str]
) -> tuple[str, ...]:
    """Every reason this Workflow is not "an approved WorkflowTemplate by reference, with
    parameters in bounds"; empty when it is. Never raises: any JSON may arrive (the Workflow
    CRD preserves unknown fields unvalidated)."""
    spec = workflow.get("spec")
    if not isinstance(spec, Mapping):
        return ("workflow has no spec",)
    found: list[str] = []
    if _has_status(workflow.get("status")):
        # The Workflow CRD has no status subresource, so a status sent with the CREATE is
        # kept, and a controller runs a status.storedWorkflowTemplateSpec or a node marked done
        # instead of the referenced template. Only the controller writes a status.
        found.append("status: a new Workflow carries no status (the controller writes it)")
    ref = spec.get("workflowTemplateRef")
    if ref is None:
        found.append("spec.workflowTemplateRef is missing: only approved WorkflowTemplates run")
    else:
        found.extend(_template_ref_findings(ref, approved_templates, _action_of(spec)))
    for key in sorted(k for k in spec if isinstance(k, str) and k not in _ALLOWED_SPEC):
        why = _SPEC_WHY.get(key) or "not allowed beside a workflowTemplateRef"
        found.append(f"spec.{key}: {why}")
        if key == "templates":
            found.extend(_inline_findings(spec, "spec.templates"))
        elif key == "templateDefaults":
            found.extend(_template_findings(spec[key], "spec.templateDefaults", 0))
    found.extend(_pod_spec_findings(spec, "spec"))
    found.extend(_argument_findings(spec.get("arguments")))
    return tuple(dict.fromkeys(found))  # each once, in order


# What `argo stop`, `terminate` and `suspend` write into a running Workflow's spec.
_MUTABLE_SPEC = frozenset({"shutdown", "suspend"})


def spec_changes(old: Any, new: Any) -> tuple[str, ...]:
    """Spec fields an UPDATE changes, other than the ones Argo's own commands write; any
    malformed object counts as a change of `spec`."""
    old_spec = old.get("spec") if isinstance(old, Mapping) else None
    new_spec = new.get("spec") if isinstance(new, Mapping) else None
    if not isinstance(old_spec, Mapping) or not isinstance(new_spec, Mapping):
        return ("(whole spec)",)
    keys = (set(old_spec) | set(new_spec)) - _MUTABLE_SPEC
    return tuple(sorted(str(k) for k in keys if old_spec.get(k) != new_spec.get(k)))


# Status fields the Argo controller runs from: with `templateReferencing: Strict` a Workflow
# whose status already holds a stored spec runs that spec, not the approved template's.
CONTROLLER_STATUS = ("storedTemplates", "storedWorkflowTemplateSpec")


def controller_status_changes(old: Any, new: Any) -> tuple[str, ...]:
    """The controller-owned status fields an UPDATE sets or changes; a status that is not an
    object counts as a change of each."""
    old_status = old.get("status") if isinstance(old, Mapping) else None
    new_status = new.get("status") if isinstance(new, Mapping) else None
    old_status = {} if old_status is None else old_status
    new_status = {} if new_status is None else new_status
    if not isinstance(old_status, Mapping) or not isinstance(new_status, Mapping):
        return CONTROLLER_STATUS
    return tuple(k for k in CONTROLLER_STATUS if old_status.get(k) != new_status.get(k))


def _has_status(status: Any) -> bool:
    """Whether a status says anything: Argo's own clients (argo submit, the UI) send the Go
    zero value, `{"startedAt": null, "finishedAt": null}`."""
    if isinstance(status, Mapping):
        return any(v not in (None, {}, [], "") for v in status.values())
    return status is not None


def _action_of(spec: Mapping[str, Any]) -> str | None:
    arguments = spec.get("arguments")
    raw = arguments.get("parameters") if isinstance(arguments, Mapping) else None
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, Mapping) and item.get("name") == "action":
            # Compared as the policies see it (`workflow_parameters` reads any scalar as text):
            # a number must not skip the template's cross-check.
            value = item.get("value")
            return None if value is None else str(value)
    return None


def _template_ref_findings(
    ref: Any, approved: Collection[str], action: str | None
) -> Iterator[str]:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        yield "spec.workflowTemplateRef has no name"
        return
    extra = sorted(str(k) for k in ref if k != "name")
    if extra:
        # clusterScope would run a ClusterWorkflowTemplate of the same name: not the approved one.
        yield f"spec.workflowTemplateRef: only a name may be given, not {', '.join(extra)}"
    name = ref["name"]
    if name not in approved:
        yield f"WorkflowTemplate {name} is not an approved template"
    elif action is not None and name != f"cct-{action}":
        # The policies judge the action parameter; the template decides what runs.
        yield f"WorkflowTemplate {name} does not run the action {action} the policies judged"


def _argument_findings(arguments: Any) -> Iterator[str]:
    if arguments is None:
        return
    if not isinstance(arguments, Mapping):
        yield "spec.arguments is not an object"
        return
    for key in sorted(str(k) for k in arguments if k != "parameters"):
        # artifacts would put files the author chose into the approved template's pods.
        yield f"spec.arguments.{key}: only parameters may be passed"
    raw = arguments.get("parameters")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, Mapping):
            continue  # workflow_parameters names it
        name = item.get("name")
        where = f"parameter {name}" if isinstance(name, str) else f"parameters[{i}]"
        extra = sorted(str(k) for k in item if k not in ("name", "value"))
        if extra:
            # valueFrom/default would read values the webhook never sees.
            yield f"{where}: only name and value may be given, not {', '.join(extra)}"
        if isinstance(name, str) and name not in TEMPLATE_PARAMETERS:
            yield f"{where} is not a parameter of the approved templates"
        value = item.get("value")
        if value is not None and not isinstance(value, str | int | float | bool):
            yield f"{where}: the value must be a string"
        elif isinstance(value, str):
            if len(value) > MAX_PARAMETER_CHARS:
                yield f"{where}: the value is longer than {MAX_PARAMETER_CHARS} characters"
            if "{{" in value:
                # Argo substitutes parameters into the template's commands and conditions.
                yield f"{where}: the value may not contain an Argo expression ({{{{)"
            if any(ord(c) < 32 and c not in "\t" for c in value):
                yield f"{where}: the value may not contain control characters"


def _inline_findings(spec: Mapping[str, Any], where: str) -> Iterator[str]:
    templates = spec.get("templates")
    for i, template in enumerate(templates if isinstance(templates, list) else []):
        name = template.get("name") if isinstance(template, Mapping) else None
        yield from _template_findings(template, f"{where}[{name if name else i}]", 0)
    yield from approval_gate_findings(spec)


def _template_findings(template: Any, where: str, depth: int) -> Iterator[str]:
    """What one inline template would do to its pod, and its inline children."""
    if not isinstance(template, Mapping):
        return
    if depth > _MAX_DEPTH:
        yield f"{where}: inline templates nested deeper than {_MAX_DEPTH}"
        return
    yield from _pod_spec_findings(template, where)
    for container_where, container in _containers(template, where):
        context = container.get("securityContext")
        if isinstance(context, Mapping):
            yield from _security_findings(context, f"{container_where}.securityContext")
    if "resource" in template:
        yield f"{where}.resource: creates arbitrary Kubernetes objects"
    for kind in ("http", "plugin"):
        if kind in template:
            yield f"{where}.{kind}: runs outside the approved steps"
    suspend = template.get("suspend")
    if isinstance(suspend, Mapping) and suspend.get("duration") not in (None, ""):
        yield f"{where}.suspend: resumes itself after {suspend.get('duration')}"
    for step_where, step in _steps(template, where):
        if isinstance(step.get("templateRef"), Mapping):
            yield f"{step_where}.templateRef: runs a template outside the workflow's own"
        if "inline" in step:
            yield from _template_findings(step["inline"], f"{step_where}.inline", depth + 1)


def _pod_spec_findings(holder: Mapping[str, Any], where: str) -> Iterator[str]:
    """Pod-level fields a Workflow spec or a template can set."""
    if "podSpecPatch" in holder:
        patch = holder["podSpecPatch"]
        text = patch if isinstance(patch, str) else repr(patch)
        yield f"{where}.podSpecPatch: rewrites the pod"
        for field in (*_HOST_NAMESPACES, "privileged", "hostPath", "serviceAccountName"):
            if field in text:
                yield f"{where}.podSpecPatch sets {field}"
    for field in _HOST_NAMESPACES:
        if holder.get(field) is True:
            yield f"{where}.{field}: host namespaces are not allowed"
    account = holder.get("serviceAccountName")
    if account is not None:
        yield f"{where}.serviceAccountName: runs as service account {account}"
    if holder.get("automountServiceAccountToken") is True:
        yield f"{where}.automountServiceAccountToken: mounts a service account token"
    context = holder.get("securityContext")
    if isinstance(context, Mapping):
        yield from _security_findings(context, f"{where}.securityContext")
    for i, volume in enumerate(_list(holder.get("volumes"))):
        if isinstance(volume, Mapping) and "hostPath" in volume:
            path = volume["hostPath"].get("path") if isinstance(volume["hostPath"], Mapping) else ""
            yield f"{where}.volumes[{i}]: hostPath {path} mounts the node's filesystem"


def _containers(template: Mapping[str, Any], where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    listed = [(f"{where}.{kind}", template.get(kind)) for kind in _CONTAINER_KINDS]
    for kind in ("initContainers", "sidecars"):
        listed += [(f"{where}.{kind}[{j}]", c) for j, c in enumerate(_list(template.get(kind)))]
    container_set = template.get("containerSet")
    if isinstance(container_set, Mapping):
        listed += [
            (f"{where}.containerSet[{j}]", c)
            for j, c in enumerate(_list(container_set.get("containers")))
        ]
    for container_where, container in listed:
        if isinstance(container, Mapping):
            yield container_where, container


def _security_findings(context: Mapping[str, Any], where: str) -> Iterator[str]:
    if context.get("privileged") is True:
        yield f"{where}: privileged container"
    if context.get("allowPrivilegeEscalation") is True:
        yield f"{where}: allows privilege escalation"
    if context.get("runAsUser") == 0 or context.get("runAsNonRoot") is False:
        yield f"{where}: runs as root"
    capabilities = context.get("capabilities")
    if isinstance(capabilities, Mapping) and _list(capabilities.get("add")):
        yield f"{where}: adds capabilities {capabilities.get('add')}"


def approval_gate_findings(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """Why the approval gate of a Workflow or WorkflowTemplate spec could be passed without an
    authorised `argo resume`; empty when it cannot.

    The gate is a step named `approve` in the entrypoint's steps, in a group before the
    `execute` step, whose template suspends without a duration (only a resume ends it),
    guarded by no condition but the platform's own plan output, and not marked to continue
    on failure."""
    templates = {
        t["name"]: t
        for t in _list(spec.get("templates"))
        if isinstance(t, Mapping) and isinstance(t.get("name"), str)
    }
    entrypoint = spec.get("entrypoint")
    entry = templates.get(entrypoint) if isinstance(entrypoint, str) else None
    if entry is None:
        return ("the entrypoint is not one of the workflow's templates",)
    groups = [g if isinstance(g, list) else [g] for g in _list(entry.get("steps"))]
    placed = [
        (g, step)
        for g, group in enumerate(groups)
        for step in group
        if isinstance(step, Mapping) and step.get("name") in (APPROVAL_STEP, "execute")
    ]
    gates = [(g, step) for g, step in placed if step.get("name") == APPROVAL_STEP]
    if not gates:
        return (f"the entrypoint's steps have no step named {APPROVAL_STEP}",)
    found: list[str] = []
    first_gate = min(g for g, _ in gates)
    if any(step.get("name") == "execute" and g <= first_gate for g, step in placed):
        found.append(f"execute runs before or beside the {APPROVAL_STEP} step")
    for g, step in gates:
        where = f"steps[{g}] {APPROVAL_STEP}"
        suspend = _suspend_of(step, templates)
        if suspend is None:
            found.append(f"{where}: does not suspend")
        elif suspend.get("duration") not in (None, ""):
            found.append(f"{where}: resumes itself after {suspend['duration']}")
        condition = step.get("when")
        if condition is not None and condition != PLATFORM_APPROVAL_CONDITION:
            found.append(f"{where}: skipped unless {condition!r}")
        for key in ("continueOn", "hooks", "onExit"):
            if key in step:
                found.append(f"{where}: has {key}")
    return tuple(found)


def _suspend_of(step: Mapping[str, Any], templates: Mapping[str, Any]) -> Mapping[str, Any] | None:
    target = step.get("inline")
    if not isinstance(target, Mapping) and isinstance(step.get("template"), str):
        target = templates.get(step["template"])
    suspend = target.get("suspend") if isinstance(target, Mapping) else None
    return suspend if isinstance(suspend, Mapping) else None


def _steps(template: Mapping[str, Any], where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, step or task) of a steps or dag template, malformed entries skipped."""
    for g, group in enumerate(_list(template.get("steps"))):
        for s, step in enumerate(group if isinstance(group, list) else [group]):
            if isinstance(step, Mapping):
                yield f"{where}.steps[{g}][{s}]", step
    dag = template.get("dag")
    if isinstance(dag, Mapping):
        for t, task in enumerate(_list(dag.get("tasks"))):
            if isinstance(task, Mapping):
                yield f"{where}.dag.tasks[{t}]", task


def _list(value: Any) -> list[Any]:
    # A malformed list means "nothing there", never an exception (which the failure mode
    # would answer, and in open mode admit).
    return value if isinstance(value, list) else []
