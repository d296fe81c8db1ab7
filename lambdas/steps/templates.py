"""Argo WorkflowTemplates for the playbooks, generated with hera from `PLAYBOOKS`.

One WorkflowTemplate per playbook. Its `main` steps run the same `cct step NAME` entrypoints,
in the same order, as the local backend:

    analyze -> plan -> approve-request -> approve -> execute -> verify -> record

`approve-request` runs `cct step approve` (records the decision, sets the run to
awaiting_approval when a human must decide); `approve` is an Argo suspend step that runs
only when the plan says approval is required, and `argo resume` is the approval. Every
container retries on exit code 75 (and on pod errors) with exponential backoff, and has an
activeDeadlineSeconds. The exit handler runs `cct step record` with the workflow's status,
so a failed or stopped workflow is recorded as failed with Argo's failure message.
"""

from __future__ import annotations

import json
from typing import Any

from hera.workflows import (
    ConfigMapEnvFrom,
    ConfigMapVolume,
    Container,
    Env,
    Parameter,
    RetryStrategy,
    SecretEnvFrom,
    SecretVolume,
    Steps,
    Suspend,
    WorkflowTemplate,
)
from hera.workflows.models import Backoff, IntOrString, ValueFrom

from lambdas.steps.playbooks import EXIT_RETRYABLE, PLAYBOOKS, Playbook

# Workflow parameters (docs/architecture.md, section 6) with their defaults.
WORKFLOW_PARAMETERS: dict[str, str | None] = {
    "provider": None,
    "service": None,
    "resource-id": None,
    "resource-type": None,
    "action": None,
    "environment": None,
    "team": None,
    "account-id": None,
    "region": "",
    "tags": "{}",
    "estimated-monthly-impact-usd": "0",
    "dry-run": "true",
    "event-id": None,
    "restart-schedule": "",
    "target-sku": "",
    "require-approval": "false",
}
# Where `record` finds its Kafka identity (the steps' KafkaUser password and the cluster CA).
KAFKA_USER_DIR = "/etc/cct/kafka-user"
KAFKA_CA_DIR = "/etc/cct/kafka-ca"
# Where every step finds the CA Vault's certificate is verified against (VAULT_CACERT).
VAULT_CA_DIR = "/etc/cct/vault-ca"
OUTPUT_DIR = "/tmp/cct"  # noqa: S108 - an emptyDir-free scratch path inside the step container
DEFAULT_IMAGE = "ghcr.io/cct/cct:0.1.0"
# What execute sees as the approve output under Argo: the workflow only reaches execute after
# the approve suspend step was resumed by a person or skipped because no approval is needed.
ARGO_APPROVAL = json.dumps(
    {"status": "approved", "required": None, "by": "argo-resume", "reasons": []}
)


def _env_name(parameter: str) -> str:
    return "CCT_PARAM_" + parameter.upper().replace("-", "_")


# Integer-or-string fields are written as strings: Argo's published JSON schema types them as
# strings, and the API accepts both.
def _retry(playbook: Playbook) -> RetryStrategy:
    return RetryStrategy(
        limit=str(playbook.retry.limit),
        retry_policy="Always",
        # Only retryable exits (75) and pod-level errors; 1 and 65 fail at once.
        expression=f'asInt(lastRetry.exitCode) == {EXIT_RETRYABLE} || lastRetry.status == "Error"',
        backoff=Backoff(
            duration=f"{int(playbook.retry.backoff_s)}s",
            factor=IntOrString(str(int(playbook.retry.factor))),
            cap=f"{int(playbook.retry.max_backoff_s)}s",
        ),
    )


def _common_env(playbook: Playbook) -> list[Env]:
    env = [
        Env(name="CCT_RUN_ID", value="{{workflow.name}}"),
        Env(name="CCT_WORKFLOW_UID", value="{{workflow.uid}}"),
        Env(name="CCT_PLAYBOOK", value=playbook.name),
        Env(name="CCT_STEP_BACKEND", value="argo"),
    ]
    env += [
        Env(name=_env_name(p), value=f"{{{{workflow.parameters.{p}}}}}")
        for p in WORKFLOW_PARAMETERS
    ]
    return env


def _step_container(
    playbook: Playbook,
    template_name: str,
    step: str,
    previous: dict[str, str],
    *,
    image: str,
    env_from: list[Any],
    outputs: list[str],
    volumes: list[Any] | None = None,
) -> Container:
    env = [
        *_common_env(playbook),
        *(
            Env(name=f"CCT_PREVIOUS_{name.upper()}", value=value)
            for name, value in previous.items()
        ),
    ]
    return Container(
        name=template_name,
        image=image,
        command=["cct"],
        args=["step", step, "--from-env", "--output-dir", OUTPUT_DIR],
        env=env,
        env_from=env_from,
        volumes=volumes or None,
        active_deadline_seconds=str(playbook.step_timeout_s[step]),
        retry_strategy=_retry(playbook),
        outputs=[
            Parameter(name="result", value_from=ValueFrom(path=f"{OUTPUT_DIR}/output.json")),
            *[Parameter(name=o, value_from=ValueFrom(path=f"{OUTPUT_DIR}/{o}")) for o in outputs],
        ],
    )


def _result(step: str) -> str:
    return f"{{{{steps.{step}.outputs.parameters.result}}}}"


def workflow_template(
    playbook: Playbook,
    namespace: str,
    *,
    image: str = DEFAULT_IMAGE,
    service_account: str = "cct-steps",
    config_map: str = "cct-steps",
    db_env_from: str = "cct-steps-db",
    kafka_secrets: tuple[str, str] | None = None,
    vault_ca_config_map: str | None = None,
) -> dict[str, Any]:
    """`kafka_secrets`: (the steps' KafkaUser Secret, the cluster CA Secret), mounted into
    the steps that publish results (`record`, `record-on-exit`); None publishes nothing.
    `vault_ca_config_map`: the ConfigMap of Vault's CA, mounted into every step at
    VAULT_CA_DIR (any step may ask Vault for credentials); None mounts nothing."""
    env_from = [ConfigMapEnvFrom(name=config_map), SecretEnvFrom(name=db_env_from)]
    vault_volumes: list[Any] = (
        # (hera names the volume after its ConfigMap.)
        [ConfigMapVolume(name=vault_ca_config_map, mount_path=VAULT_CA_DIR)]
        if vault_ca_config_map
        else []
    )
    kafka_volumes: list[Any] = (
        [
            SecretVolume(
                name="kafka-user", secret_name=kafka_secrets[0], mount_path=KAFKA_USER_DIR
            ),
            SecretVolume(name="kafka-ca", secret_name=kafka_secrets[1], mount_path=KAFKA_CA_DIR),
        ]
        if kafka_secrets
        else []
    )
    with WorkflowTemplate(
        name=f"cct-{playbook.name}",
        namespace=namespace,
        entrypoint="main",
        on_exit="record-on-exit",
        volumes=[*vault_volumes, *kafka_volumes] or None,
        service_account_name=service_account,
        labels={"app.kubernetes.io/part-of": "cct", "cct.io/playbook": playbook.name},
        annotations={
            "cct.io/steps": ",".join(playbook.steps),
            "workflows.argoproj.io/description": playbook.description,
        },
        arguments=[
            Parameter(name=p, value=v) if v is not None else Parameter(name=p)
            for p, v in WORKFLOW_PARAMETERS.items()
        ],
    ) as wt:

        def step(
            name: str, entrypoint: str, previous: dict[str, str], outputs: list[str]
        ) -> Container:
            return _step_container(
                playbook,
                name,
                entrypoint,
                previous,
                image=image,
                env_from=env_from,
                outputs=outputs,
                volumes=[*vault_volumes, *(kafka_volumes if entrypoint == "record" else [])],
            )

        analyze = step("analyze", "analyze", {}, [])
        plan = step("plan", "plan", {"analyze": _result("analyze")}, ["approval-required"])
        approve_request = step(
            "approve-request",
            "approve",
            {"analyze": _result("analyze"), "plan": _result("plan")},
            ["status"],
        )
        approve = Suspend(name="approve")
        execute = step(
            "execute",
            "execute",
            {"analyze": _result("analyze"), "plan": _result("plan"), "approve": ARGO_APPROVAL},
            ["outcome"],
        )
        verify = step(
            "verify", "verify", {"plan": _result("plan"), "execute": _result("execute")}, []
        )
        record = step(
            "record",
            "record",
            {"plan": _result("plan"), "execute": _result("execute"), "verify": _result("verify")},
            [],
        )
        # Created inside the context, so hera adds it to the templates; onExit names it.
        Container(
            name="record-on-exit",
            image=image,
            command=["cct"],
            args=["step", "record", "--from-env"],
            env=[
                *_common_env(playbook),
                Env(name="CCT_WORKFLOW_STATUS", value="{{workflow.status}}"),
                Env(name="CCT_WORKFLOW_FAILURES", value="{{workflow.failures}}"),
            ],
            env_from=env_from,
            # Every step gets the CA: VAULT_CACERT is in the shared environment, and the
            # settings refuse a CA file that is not there.
            volumes=[*vault_volumes, *kafka_volumes] or None,
            active_deadline_seconds=str(playbook.step_timeout_s["record"]),
            retry_strategy=_retry(playbook),
        )
        with Steps(name="main"):
            analyze(name="analyze")
            plan(name="plan")
            approve_request(name="approve-request")
            approve(
                name="approve",
                when="{{steps.plan.outputs.parameters.approval-required}} == true",
            )
            execute(name="execute")
            verify(name="verify")
            record(name="record")
    manifest: dict[str, Any] = wt.to_dict()
    return manifest


def workflow_templates(namespace: str) -> list[dict[str, Any]]:
    """One WorkflowTemplate manifest per playbook, for the deployment bundle."""
    return [workflow_template(p, namespace) for p in PLAYBOOKS.values()]
