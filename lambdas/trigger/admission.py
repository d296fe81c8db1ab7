"""What the Kubernetes API server does for the local backend: before a Workflow exists, it
is sent to CCT's validating admission webhook as an AdmissionReview, and a refusal stops it.

With the Argo backend the API server makes this call (the webhook is registered by the
bundle); the local backend has no API server, so without this call the webhook would never
see a locally run workflow and the admission decision (recorded by the webhook in
`policy_decisions`) would be missing from the audit chain. The object sent is the one the
Argo backend would create (`build_workflow`), so both backends are judged alike.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from lambdas.common.settings import SettingsError, env_float
from lambdas.trigger.argo import build_workflow
from lambdas.trigger.backends import PermanentSubmitError, RetryableSubmitError
from lambdas.trigger.core import WorkflowRun

# Who the API server says created the Workflow: the trigger's service account.
TRIGGER_USER = {
    "username": "system:serviceaccount:cct-system:cct-trigger",
    "groups": [
        "system:serviceaccounts",
        "system:serviceaccounts:cct-system",
        "system:authenticated",
    ],
}


@dataclass(frozen=True)
class AdmissionCallSettings:
    """
    url: CCT_TRIGGER_ADMISSION_URL, the webhook's https `/validate` URL; unset = the local
        backend runs workflows without admission (as a cluster without the webhook would).
    ca_file: CCT_TRIGGER_ADMISSION_CA_FILE, the CA that signed the webhook's certificate (the
        webhook configuration's caBundle); required with the URL.
    cert_file / key_file: CCT_TRIGGER_ADMISSION_CERT_FILE / CCT_TRIGGER_ADMISSION_KEY_FILE,
        the client certificate the API server presents (the webhook accepts only its
        callers' certificates); both or neither.
    timeout_s: CCT_TRIGGER_ADMISSION_TIMEOUT_S, default 10 s (the API server's default).
    namespace: the Workflow's namespace, as the Argo backend would create it.
    """

    url: str
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    timeout_s: float = 10.0
    namespace: str = "cct-system"

    @classmethod
    def from_env(cls, namespace: str) -> AdmissionCallSettings | None:
        target = os.environ.get("CCT_TRIGGER_ADMISSION_URL") or ""
        if not target:
            return None
        if not target.startswith("https://"):
            raise SettingsError("CCT_TRIGGER_ADMISSION_URL must be an https URL")
        ca_file = os.environ.get("CCT_TRIGGER_ADMISSION_CA_FILE") or ""
        if not ca_file or not os.path.isfile(ca_file):
            raise SettingsError("CCT_TRIGGER_ADMISSION_CA_FILE must name the webhook CA's PEM file")
        cert_file = os.environ.get("CCT_TRIGGER_ADMISSION_CERT_FILE") or None
        key_file = os.environ.get("CCT_TRIGGER_ADMISSION_KEY_FILE") or None
        if (cert_file is None) != (key_file is None):
            raise SettingsError(
                "CCT_TRIGGER_ADMISSION_CERT_FILE and CCT_TRIGGER_ADMISSION_KEY_FILE go together"
            )
        for name, path in (("CERT", cert_file), ("KEY", key_file)):
            if path is not None and not os.path.isfile(path):
                raise SettingsError(f"CCT_TRIGGER_ADMISSION_{name}_FILE={path!r} is not a file")
        return cls(
            url=target,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            timeout_s=env_float("CCT_TRIGGER_ADMISSION_TIMEOUT_S", 10.0),
            namespace=namespace,
        )


def admission_review(obj: dict[str, Any], uid: str) -> dict[str, Any]:
    """An AdmissionReview v1 CREATE request for a Workflow, shaped like the API server's."""
    kind = {"group": "argoproj.io", "version": "v1alpha1", "kind": "Workflow"}
    resource = {"group": "argoproj.io", "version": "v1alpha1", "resource": "workflows"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": TRIGGER_USER,
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


class AdmissionClient:
    def __init__(self, settings: AdmissionCallSettings) -> None:
        self.settings = settings
        self.context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file and settings.key_file:
            self.context.load_cert_chain(settings.cert_file, settings.key_file)

    def review(self, run: WorkflowRun) -> str | None:
        """None when admitted; the webhook's message when it refused the Workflow."""
        obj = build_workflow(run, self.settings.namespace)
        uid = str(uuid.uuid4())
        body = json.dumps(admission_review(obj, uid)).encode()
        req = urllib.request.Request(  # noqa: S310 - https only (checked in settings)
            f"{self.settings.url}?timeout={int(self.settings.timeout_s)}s",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - https only (checked in settings)
                req, timeout=self.settings.timeout_s, context=self.context
            ) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            # Like the API server with failurePolicy: Fail, a webhook that cannot answer
            # blocks the create; the run waits on the partition and is retried.
            raise RetryableSubmitError(f"admission webhook answered {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RetryableSubmitError(f"admission webhook unreachable: {exc}") from exc
        response = answer.get("response") if isinstance(answer, dict) else None
        if not isinstance(response, dict) or response.get("uid") != uid:
            raise PermanentSubmitError("admission webhook answered without this review's uid")
        if response.get("allowed") is True:
            return None
        status = response.get("status") or {}
        message = str(status.get("message") or "denied")
        # The API server's wording, which the Argo backend's denial check also reads.
        return f'admission webhook "cct-admission" denied the request: {message}'
