"""One GCP project: the BigQuery dataset for the Cloud Billing export, the audit-log sink to
Pub/Sub with the forwarder Cloud Function that sends resource events to Fluent Bit, the
service accounts, and the Vault GCP roleset that mints short-lived tokens for remediation (no
other: a cost-read roleset no handler used was removed).

The remediation roleset binds a custom role holding exactly the permissions the actions
registry declares (an input). Cloud Billing exports cannot be switched on through an API: the
README lists that one console step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp
import pulumi_vault as vault

# Roles Vault's GCP secrets engine needs to manage roleset service accounts and bindings.
VAULT_ENGINE_ROLES = (
    "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountKeyAdmin",
    "roles/resourcemanager.projectIamAdmin",
)


@dataclass(frozen=True)
class GcpProjectArgs:
    project: str
    region: str
    fluentbit_url: str
    fluentbit_token: pulumi.Input[str]
    forwarder_source: pulumi.Archive
    forwarder_entry_point: str
    # The Logging sink filter the forwarder is written for (lambdas.forwarders.gcp).
    log_filter: str
    # Exact GCP permissions of the remediation actions registry (provider "gcp").
    remediation_permissions: Sequence[str]
    vault_backend: pulumi.Input[str] | None = None
    dataset_location: str = "US"
    name_prefix: str = "cct"
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for permission in self.remediation_permissions:
            if "*" in permission or permission.count(".") < 2:
                raise ValueError(f"remediation permission {permission!r} must be exact")
        if not self.remediation_permissions:
            raise ValueError(
                "remediation_permissions is empty: the registry declares no GCP action"
            )

    @property
    def project_resource(self) -> str:
        return f"//cloudresourcemanager.googleapis.com/projects/{self.project}"


class GcpProject(pulumi.ComponentResource):
    billing_dataset: pulumi.Output[str]
    audit_topic: pulumi.Output[str]
    forwarder_uri: pulumi.Output[str]
    vault_service_account: pulumi.Output[str]
    remediation_role: pulumi.Output[str]
    vault_rolesets: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: GcpProjectArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:cloud:GcpProject", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix, project = args.name_prefix, args.project
        labels = {"cct-io-component": "cct", **args.labels}
        dataset = gcp.bigquery.Dataset(
            f"{name}-billing",
            project=project,
            dataset_id=f"{prefix.replace('-', '_')}_billing_export",
            friendly_name="Cloud Billing export (FOCUS source) for CCT",
            location=args.dataset_location,
            delete_contents_on_destroy=False,
            labels=labels,
            opts=child,
        )
        topic = gcp.pubsub.Topic(
            f"{name}-audit-events",
            project=project,
            name=f"{prefix}-audit-events",
            message_retention_duration="86400s",
            labels=labels,
            opts=child,
        )
        sink = gcp.logging.ProjectSink(
            f"{name}-audit-sink",
            project=project,
            name=f"{prefix}-audit-sink",
            destination=topic.id.apply(lambda t: f"pubsub.googleapis.com/{t}"),
            filter=args.log_filter,
            unique_writer_identity=True,
            opts=child,
        )
        gcp.pubsub.TopicIAMMember(
            f"{name}-sink-publisher",
            project=project,
            topic=topic.name,
            role="roles/pubsub.publisher",
            member=sink.writer_identity,
            opts=child,
        )
        function = self._forwarder(name, args, topic, labels, child)

        vault_sa = gcp.serviceaccount.Account(
            f"{name}-vault-sa",
            project=project,
            account_id=f"{prefix}-vault",
            display_name="CCT Vault GCP secrets engine",
            opts=child,
        )
        for role in VAULT_ENGINE_ROLES:
            gcp.projects.IAMMember(
                f"{name}-vault-{role.rsplit('.', 1)[-1]}",
                project=project,
                role=role,
                member=vault_sa.email.apply(lambda e: f"serviceAccount:{e}"),
                opts=child,
            )
        remediation_role = gcp.projects.IAMCustomRole(
            f"{name}-remediation-role",
            project=project,
            role_id=f"{prefix.replace('-', '_')}Remediation",
            title="CCT remediation",
            description="Exactly the permissions CCT's remediation actions registry declares",
            permissions=sorted(set(args.remediation_permissions)),
            stage="GA",
            opts=child,
        )
        rolesets: list[str] = []
        if args.vault_backend is not None:
            vault.gcp.SecretRoleset(
                f"{name}-vault-remediation",
                backend=args.vault_backend,
                roleset=f"{prefix}-remediation",
                project=project,
                secret_type="access_token",  # noqa: S106 - a token type, not a secret
                token_scopes=["https://www.googleapis.com/auth/cloud-platform"],
                bindings=[{"resource": args.project_resource, "roles": [remediation_role.name]}],
                opts=child,
            )
            rolesets = [f"{prefix}-remediation"]

        self.billing_dataset = dataset.dataset_id
        self.audit_topic = topic.name
        self.forwarder_uri = function.url
        self.vault_service_account = vault_sa.email
        self.remediation_role = remediation_role.name
        self.vault_rolesets = pulumi.Output.from_input(rolesets)
        self.register_outputs(
            {
                "billing_dataset": self.billing_dataset,
                "audit_topic": self.audit_topic,
                "forwarder_uri": self.forwarder_uri,
                "vault_service_account": self.vault_service_account,
                "remediation_role": self.remediation_role,
                "vault_rolesets": self.vault_rolesets,
            }
        )

    def _forwarder(
        self,
        name: str,
        args: GcpProjectArgs,
        topic: gcp.pubsub.Topic,
        labels: Mapping[str, str],
        opts: pulumi.ResourceOptions,
    ) -> gcp.cloudfunctionsv2.Function:
        prefix, project = args.name_prefix, args.project
        runner = gcp.serviceaccount.Account(
            f"{name}-forwarder-sa",
            project=project,
            account_id=f"{prefix}-forwarder",
            display_name="CCT audit-log forwarder",
            opts=opts,
        )
        member = runner.email.apply(lambda e: f"serviceAccount:{e}")
        token = gcp.secretmanager.Secret(
            f"{name}-fluentbit-token",
            project=project,
            secret_id=f"{prefix}-fluentbit-token",
            replication={"auto": {}},
            labels=labels,
            opts=opts,
        )
        gcp.secretmanager.SecretVersion(
            f"{name}-fluentbit-token-value",
            secret=token.id,
            secret_data=args.fluentbit_token,
            opts=opts,
        )
        gcp.secretmanager.SecretIamMember(
            f"{name}-forwarder-token-access",
            project=project,
            secret_id=token.secret_id,
            role="roles/secretmanager.secretAccessor",
            member=member,
            opts=opts,
        )
        source_bucket = gcp.storage.Bucket(
            f"{name}-sources",
            project=project,
            name=f"{prefix}-{project}-function-sources",
            location=args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            labels=labels,
            opts=opts,
        )
        source = gcp.storage.BucketObject(
            f"{name}-forwarder-source",
            bucket=source_bucket.name,
            name="forwarder.zip",
            source=args.forwarder_source,
            opts=opts,
        )
        function = gcp.cloudfunctionsv2.Function(
            f"{name}-forwarder",
            project=project,
            location=args.region,
            name=f"{prefix}-forwarder",
            build_config={
                "runtime": "python312",
                "entry_point": args.forwarder_entry_point,
                "source": {"storage_source": {"bucket": source_bucket.name, "object": source.name}},
            },
            service_config={
                "max_instance_count": 10,
                "available_memory": "256M",
                "timeout_seconds": 60,
                "service_account_email": runner.email,
                "ingress_settings": "ALLOW_INTERNAL_ONLY",
                "environment_variables": {"CCT_FORWARDER_ENDPOINT": args.fluentbit_url},
                "secret_environment_variables": [
                    {
                        "key": "CCT_FORWARDER_TOKEN",
                        "project_id": project,
                        "secret": token.secret_id,
                        "version": "latest",
                    }
                ],
            },
            event_trigger={
                "trigger_region": args.region,
                "event_type": "google.cloud.pubsub.topic.v1.messagePublished",
                "pubsub_topic": topic.id,
                "retry_policy": "RETRY_POLICY_RETRY",
                "service_account_email": runner.email,
            },
            labels=labels,
            opts=opts,
        )
        # Eventarc delivers Pub/Sub messages by invoking the function's Cloud Run service
        # as the trigger's service account: invoker on that one service (a gen2 function
        # runs as the Cloud Run service of its name), never on every service in the project.
        gcp.cloudrunv2.ServiceIamMember(
            f"{name}-forwarder-invoker",
            project=project,
            location=function.location,
            name=function.name,
            role="roles/run.invoker",
            member=member,
            opts=opts,
        )
        return function
