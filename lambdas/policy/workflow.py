"""Read what the policies need from an Argo `Workflow` object (argoproj.io/v1alpha1).

Pure functions over the JSON the API server sends, shared by the admission webhook and
`cct policy explain` (which accepts a Workflow manifest as input).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from lambdas.policy.model import InvalidRequestError

APPROVAL_STEP = "approve"


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


def has_approval_step(workflow: Mapping[str, Any], approval_templates: Collection[str]) -> bool:
    """True when the workflow will stop at a suspend step named `approve` before acting.

    Inline templates are inspected: a suspend template named `approve`, or a step/task named
    `approve` whose template suspends, reachable from the entrypoint. A workflow created from
    a WorkflowTemplate (`spec.workflowTemplateRef`) qualifies when that template is one of
    `approval_templates`, the templates known to carry the step (the webhook cannot read
    other objects from the API server on the admission path).
    """
    spec = workflow.get("spec")
    if not isinstance(spec, Mapping):
        return False
    ref = spec.get("workflowTemplateRef")
    if isinstance(ref, Mapping) and ref.get("name") in approval_templates:
        return True
    templates = {
        t["name"]: t
        for t in _list(spec.get("templates"))
        if isinstance(t, Mapping) and isinstance(t.get("name"), str)
    }
    entry = spec.get("entrypoint")
    if not isinstance(entry, str) or entry not in templates:
        return False
    seen: set[str] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        template = templates.get(name)
        if template is None:
            continue
        if name == APPROVAL_STEP and "suspend" in template:
            return True
        for step_name, target in _children(template):
            if step_name == APPROVAL_STEP and "suspend" in templates.get(target, {}):
                return True
            pending.append(target)
    return False


def _children(template: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(step or task name, template name) of a steps or dag template."""
    out: list[tuple[str, str]] = []
    for group in _list(template.get("steps")):
        for step in group if isinstance(group, list) else [group]:
            if isinstance(step, Mapping) and isinstance(step.get("template"), str):
                out.append((str(step.get("name", "")), step["template"]))
    dag = template.get("dag")
    if isinstance(dag, Mapping):
        for task in _list(dag.get("tasks")):
            if isinstance(task, Mapping) and isinstance(task.get("template"), str):
                out.append((str(task.get("name", "")), task["template"]))
    return out


def _list(value: Any) -> list[Any]:
    # The Workflow CRD may preserve unknown fields unvalidated, so any JSON can arrive here;
    # a malformed list means "no steps", never an exception (which the failure mode would
    # answer, and in open mode admit without the approval step).
    return value if isinstance(value, list) else []
