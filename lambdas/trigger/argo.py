"""Argo backend: create an `argoproj.io/v1alpha1` Workflow from the playbook's
WorkflowTemplate through the Kubernetes API (official client).

Remote answers are matched by status code, narrowly:
- 201: created; 409 AlreadyExists: the same (event, playbook) was submitted before: done.
- a 4xx whose Status message says an admission webhook denied the request: a policy denial,
  recorded and never retried (the same object would be denied again).
- 400/422 otherwise: the object is invalid; permanent.
- anything else (401/403 RBAC, 404 missing CRD or namespace, 429, 5xx, no connection) is a
  deployment or availability problem that affects every event alike: retryable, so events
  wait on the partition instead of all going to the dead-letter topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from lambdas.trigger.backends import PermanentSubmitError, RetryableSubmitError, Submission
from lambdas.trigger.core import WorkflowRun

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "workflows"


def template_name(playbook: str) -> str:
    """The WorkflowTemplate each playbook's workflows reference."""
    return f"cct-{playbook}"


def build_workflow(run: WorkflowRun, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {
            "name": run.run_id,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "cct-trigger",
                "cct.io/playbook": run.playbook,
                "cct.io/event-id": run.event_id,
            },
            "annotations": {"cct.io/mapping-rule": run.rule_id},
        },
        "spec": {
            "workflowTemplateRef": {"name": template_name(run.playbook)},
            "arguments": {
                "parameters": [{"name": k, "value": v} for k, v in sorted(run.parameters.items())]
            },
        },
    }


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.body or exc.reason)
    return str(body.get("message") or exc.reason) if isinstance(body, dict) else str(body)


def is_admission_denial(status: int, message: str) -> bool:
    return (
        400 <= status < 500
        and message.startswith("admission webhook ")
        and ("denied the request" in message)
    )


@dataclass(frozen=True)
class KubeSettings:
    """api_url empty = in-cluster service account configuration."""

    namespace: str
    api_url: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    request_timeout_s: float = 10.0


def api_client(settings: KubeSettings) -> client.ApiClient:
    cfg = client.Configuration()
    if settings.api_url:
        cfg.host = settings.api_url
        if settings.token_file:
            with open(settings.token_file) as fh:
                cfg.api_key = {"authorization": fh.read().strip()}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        if settings.ca_file:
            cfg.ssl_ca_cert = settings.ca_file
    else:
        from kubernetes import config

        config.load_incluster_config(client_configuration=cfg)
    # One attempt per call: the trigger's own retry loop decides when to try again.
    cfg.retries = False
    return client.ApiClient(cfg)


class ArgoBackend:
    name: Literal["argo"] = "argo"

    def __init__(self, api: client.ApiClient, namespace: str, request_timeout_s: float) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.request_timeout_s = request_timeout_s

    def submit(self, run: WorkflowRun) -> Submission:
        body = build_workflow(run, self.namespace)
        try:
            self.objects.create_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                body,
                _request_timeout=self.request_timeout_s,
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            message = _status_message(exc)
            if status == 409:
                return Submission("already_exists")
            if is_admission_denial(status, message):
                return Submission("denied", message)
            if status in (400, 422):
                raise PermanentSubmitError(
                    f"workflow {run.run_id} rejected ({status}): {message}"
                ) from None
            raise RetryableSubmitError(f"Kubernetes API answered {status}: {message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RetryableSubmitError(f"Kubernetes API unreachable: {exc}") from None
        return Submission("created")
