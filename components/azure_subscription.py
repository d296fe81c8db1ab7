"""One Azure subscription: the FOCUS cost export to a storage account, the Event Grid
subscription on resource events with the forwarder Function, and the role assignment of the
identity CCT's Vault hands out (remediation; no other: an identity no handler uses is only
something to steal, and the cost-read one was removed for that).

The remediation identity gets a custom role with exactly the permissions the actions registry
declares (an input), never a built-in Contributor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_azure_native as azure
import pulumi_random as random
import pulumi_vault as vault

from lambdas.forwarders.azure import ARM_READ_ACTIONS

# Built-in role definition ids (the same in every tenant).
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
RESOURCE_EVENTS = (
    "Microsoft.Resources.ResourceWriteSuccess",
    "Microsoft.Resources.ResourceDeleteSuccess",
    "Microsoft.Resources.ResourceActionSuccess",
)
FUNCTION_NAME = "forward"
CREDENTIAL_TTL_SECONDS = 900
# The GA Cost Management API for FOCUS exports. azure-native's `costmanagement.Export` speaks
# 2024-08-01, whose export types and formats stop at ActualCost/AmortizedCost and Csv, so the
# export is declared in an ARM deployment that names its own API version.
EXPORT_API_VERSION = "2025-03-01"
# FOCUS 1.0 (revision 2): the columns the billing loader reads. Left out, Azure exports its
# newest FOCUS version, whose columns can change under the loader.
FOCUS_DATA_VERSION = "1.0r2"


def focus_export_template() -> dict[str, Any]:
    """ARM template (subscription scope) of the daily month-to-date FOCUS export in Parquet,
    written by the export's system-assigned identity; outputs that identity's principal id."""
    export_id = (
        "subscriptionResourceId('Microsoft.CostManagement/exports', parameters('exportName'))"
    )
    principal = f"reference({export_id}, '{EXPORT_API_VERSION}', 'full').identity.principalId"
    return {
        "$schema": (
            "https://schema.management.azure.com/schemas/2018-05-01/"
            "subscriptionDeploymentTemplate.json#"
        ),
        "contentVersion": "1.0.0.0",
        "parameters": {
            "exportName": {"type": "string"},
            "storageAccountId": {"type": "string"},
            "container": {"type": "string"},
            "location": {"type": "string"},
            # The schedule must start in the future when it is created; utcNow() may only
            # appear in a parameter default, and Pulumi never passes this one, so a redeploy
            # (which happens only when the template or other parameters change) moves it on.
            "scheduleStart": {"type": "string", "defaultValue": "[dateTimeAdd(utcNow(), 'PT1H')]"},
        },
        "resources": [
            {
                "type": "Microsoft.CostManagement/exports",
                "apiVersion": EXPORT_API_VERSION,
                "name": "[parameters('exportName')]",
                "location": "[parameters('location')]",
                "identity": {"type": "SystemAssigned"},
                "properties": {
                    "format": "Parquet",
                    "partitionData": True,
                    "definition": {
                        "type": "FocusCost",
                        "timeframe": "MonthToDate",
                        "dataSet": {
                            "granularity": "Daily",
                            "configuration": {"dataVersion": FOCUS_DATA_VERSION},
                        },
                    },
                    "deliveryInfo": {
                        "destination": {
                            "type": "AzureBlob",
                            "resourceId": "[parameters('storageAccountId')]",
                            "container": "[parameters('container')]",
                            "rootFolderPath": "exports",
                        }
                    },
                    "schedule": {
                        "status": "Active",
                        "recurrence": "Daily",
                        "recurrencePeriod": {
                            "from": "[parameters('scheduleStart')]",
                            "to": "2036-01-01T00:00:00Z",
                        },
                    },
                },
            }
        ],
        "outputs": {
            "principalId": {
                "type": "string",
                "value": f"[{principal}]",
            }
        },
    }


def private_storage(
    names: tuple[str, str],
    group: azure.resources.ResourceGroup,
    location: str,
    *,
    container: str,
    tags: Mapping[str, str],
    opts: pulumi.ResourceOptions,
) -> tuple[azure.storage.StorageAccount, azure.storage.BlobContainer]:
    """A storage account that takes no shared key and serves nothing anonymously (every
    reader and writer comes with an identity and a role) and one private container in it;
    `names`: the two resources' names."""
    account = azure.storage.StorageAccount(
        names[0],
        resource_group_name=group.name,
        location=location,
        kind="StorageV2",
        sku={"name": "Standard_LRS"},
        allow_blob_public_access=False,
        allow_shared_key_access=False,
        enable_https_traffic_only=True,
        minimum_tls_version="TLS1_2",
        tags=dict(tags),
        opts=opts,
    )
    blobs = azure.storage.BlobContainer(
        names[1],
        account_name=account.name,
        resource_group_name=group.name,
        container_name=container,
        public_access=azure.storage.PublicAccess.NONE,
        opts=opts,
    )
    return account, blobs


@dataclass(frozen=True)
class AzureSubscriptionArgs:
    subscription_id: str
    location: str
    fluentbit_url: str
    fluentbit_token: pulumi.Input[str]
    # The forwarder's Function App package (zip).
    forwarder_package: pulumi.Archive
    # Exact Azure permissions of the remediation actions registry (provider "azure").
    remediation_actions: Sequence[str]
    # The existing Entra ID application whose secrets Vault issues for remediation: object
    # ids of the application (for Vault) and of its service principal (for its role).
    remediation_application_object_id: str
    remediation_principal_id: str
    vault_backend: pulumi.Input[str] | None = None
    name_prefix: str = "cct"
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for action in self.remediation_actions:
            if "*" in action or action.count("/") < 2:
                raise ValueError(
                    f"remediation action {action!r} must be one exact Provider/type/operation"
                )
        if not self.remediation_actions:
            raise ValueError("remediation_actions is empty: the registry declares no Azure action")

    @property
    def scope(self) -> str:
        return f"/subscriptions/{self.subscription_id}"

    def role_definition(self, role_id: str) -> str:
        return f"{self.scope}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


class AzureSubscription(pulumi.ComponentResource):
    export_container: pulumi.Output[str]
    storage_account: pulumi.Output[str]
    function_app: pulumi.Output[str]
    remediation_role_id: pulumi.Output[str]
    vault_roles: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: AzureSubscriptionArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:cloud:AzureSubscription", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix, tags = args.name_prefix, {"cct.io/component": "cct", **args.tags}
        group = azure.resources.ResourceGroup(
            f"{name}-group",
            resource_group_name=f"{prefix}-cost",
            location=args.location,
            tags=dict(tags),
            opts=child,
        )
        account, exports = private_storage(
            (f"{name}-storage", f"{name}-exports"),
            group,
            args.location,
            container="focus",
            tags=tags,
            opts=child,
        )
        export = azure.resources.DeploymentAtSubscriptionScope(
            f"{name}-focus-export",
            deployment_name=f"{prefix}-focus-export",
            location=args.location,
            properties={
                "mode": azure.resources.DeploymentMode.INCREMENTAL,
                "template": focus_export_template(),
                "parameters": {
                    "exportName": {"value": f"{prefix}-focus"},
                    "storageAccountId": {"value": account.id},
                    "container": {"value": exports.name},
                    "location": {"value": args.location},
                },
            },
            opts=child,
        )
        # With shared-key access off, the export writes as its own managed identity.
        azure.authorization.RoleAssignment(
            f"{name}-export-writer",
            role_assignment_name=random.RandomUuid(f"{name}-export-writer-id", opts=child).result,
            role_definition_id=args.role_definition(STORAGE_BLOB_DATA_CONTRIBUTOR),
            principal_id=export.properties.apply(lambda p: str(p.outputs["principalId"]["value"])),
            principal_type=azure.authorization.PrincipalType.SERVICE_PRINCIPAL,
            scope=exports.id,
            opts=child,
        )
        function_app = self._forwarder(name, args, group, tags=tags, opts=child)

        remediation_role = azure.authorization.RoleDefinition(
            f"{name}-remediation-role",
            role_name=f"{prefix}-remediation",
            description="CCT remediation: exactly the actions CCT's registry declares",
            scope=args.scope,
            role_definition_id=random.RandomUuid(f"{name}-remediation-role-id", opts=child).result,
            permissions=[{"actions": sorted(set(args.remediation_actions)), "not_actions": []}],
            assignable_scopes=[args.scope],
            opts=child,
        )
        azure.authorization.RoleAssignment(
            f"{name}-remediation",
            role_assignment_name=random.RandomUuid(f"{name}-remediation-id", opts=child).result,
            role_definition_id=remediation_role.id,
            principal_id=args.remediation_principal_id,
            principal_type=azure.authorization.PrincipalType.SERVICE_PRINCIPAL,
            scope=args.scope,
            opts=child,
        )

        vault_roles: list[str] = []
        if args.vault_backend is not None:
            for role_name, app_id in (
                (f"{prefix}-remediation", args.remediation_application_object_id),
            ):
                vault.azure.BackendRole(
                    f"{name}-vault-{role_name}",
                    backend=args.vault_backend,
                    role=role_name,
                    application_object_id=app_id,
                    ttl=str(CREDENTIAL_TTL_SECONDS),
                    max_ttl="3600",
                    opts=child,
                )
                vault_roles.append(role_name)

        self.export_container = exports.name
        self.storage_account = account.name
        self.function_app = function_app.name
        self.remediation_role_id = remediation_role.id
        self.vault_roles = pulumi.Output.from_input(vault_roles)
        self.register_outputs(
            {
                "export_container": self.export_container,
                "storage_account": self.storage_account,
                "function_app": self.function_app,
                "remediation_role_id": self.remediation_role_id,
                "vault_roles": self.vault_roles,
            }
        )

    def _forwarder(
        self,
        name: str,
        args: AzureSubscriptionArgs,
        group: azure.resources.ResourceGroup,
        *,
        tags: Mapping[str, str],
        opts: pulumi.ResourceOptions,
    ) -> azure.web.WebApp:
        # The Functions host's own storage account (its package and the `azure-webjobs-*`
        # containers the host creates for keys and coordination), apart from the FOCUS
        # exports: identity-based host storage (AzureWebJobsStorage__accountName) needs
        # Storage Blob Data Owner *on a storage account*, container creation included
        # (learn.microsoft.com, functions-reference, "Connecting to host storage with an
        # identity"), so a container-scoped assignment would not let the host start, and
        # on the exports' account the internet-facing Function could read, overwrite or
        # delete the billing exports.
        account, packages = private_storage(
            (f"{name}-function-storage", f"{name}-packages"),
            group,
            args.location,
            container="function-packages",
            tags=tags,
            opts=opts,
        )
        package = azure.storage.Blob(
            f"{name}-forwarder-package",
            account_name=account.name,
            resource_group_name=group.name,
            container_name=packages.name,
            type=azure.storage.BlobType.BLOCK,
            source=args.forwarder_package,
            opts=opts,
        )
        plan = azure.web.AppServicePlan(
            f"{name}-plan",
            resource_group_name=group.name,
            location=args.location,
            kind="functionapp",
            reserved=True,
            sku={"name": "Y1", "tier": "Dynamic"},
            tags=dict(tags),
            opts=opts,
        )
        package_url = pulumi.Output.concat(
            "https://", account.name, ".blob.core.windows.net/", packages.name, "/", package.name
        )
        site_config: Any = {
            "linux_fx_version": "Python|3.12",
            "ftps_state": "Disabled",
            "min_tls_version": "1.2",
            "app_settings": [
                {"name": "FUNCTIONS_WORKER_RUNTIME", "value": "python"},
                {"name": "FUNCTIONS_EXTENSION_VERSION", "value": "~4"},
                # Identity-based storage: no account key anywhere.
                {"name": "AzureWebJobsStorage__accountName", "value": account.name},
                {"name": "WEBSITE_RUN_FROM_PACKAGE", "value": package_url},
                # The package blob is private and the account takes no shared key: the host
                # fetches it with the app's own identity only when told which one
                # (learn.microsoft.com, run-functions-from-deployment-package, "Fetch a
                # package from Azure Blob Storage using a managed identity"); without it the
                # fetch is anonymous and the app starts with no functions.
                {"name": "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID", "value": "SystemAssigned"},
                {"name": "CCT_FORWARDER_ENDPOINT", "value": args.fluentbit_url},
                # App settings are encrypted at rest; a secret Output in Pulumi's state.
                {
                    "name": "CCT_FORWARDER_TOKEN",
                    "value": pulumi.Output.secret(args.fluentbit_token),
                },
                {"name": "CCT_FORWARDER_BILLING_ACCOUNT_ID", "value": args.subscription_id},
            ],
        }
        app = azure.web.WebApp(
            f"{name}-forwarder",
            name=f"{args.name_prefix}-forwarder-{args.subscription_id[:8]}",
            resource_group_name=group.name,
            location=args.location,
            kind="functionapp,linux",
            server_farm_id=plan.id,
            https_only=True,
            identity={"type": azure.web.ManagedServiceIdentityType.SYSTEM_ASSIGNED},
            site_config=site_config,
            tags=dict(tags),
            opts=opts,
        )
        azure.authorization.RoleAssignment(
            f"{name}-forwarder-storage",
            role_assignment_name=random.RandomUuid(
                f"{name}-forwarder-storage-id", opts=opts
            ).result,
            role_definition_id=args.role_definition(STORAGE_BLOB_DATA_OWNER),
            principal_id=app.identity.apply(lambda i: i.principal_id if i else ""),
            principal_type=azure.authorization.PrincipalType.SERVICE_PRINCIPAL,
            scope=account.id,
            opts=opts,
        )
        # The forwarder reads each written VM and disk from ARM with this identity
        # (lambdas.forwarders.azure.arm_reader): exactly those reads, anywhere in the
        # subscription the events come from, and no data action.
        arm_read = azure.authorization.RoleDefinition(
            f"{name}-forwarder-arm-read",
            role_name=f"{args.name_prefix}-forwarder-arm-read",
            description="CCT forwarder: reads the resources its events name",
            scope=args.scope,
            role_definition_id=random.RandomUuid(f"{name}-forwarder-arm-read-id", opts=opts).result,
            permissions=[{"actions": sorted(ARM_READ_ACTIONS), "not_actions": []}],
            assignable_scopes=[args.scope],
            opts=opts,
        )
        azure.authorization.RoleAssignment(
            f"{name}-forwarder-arm-reader",
            role_assignment_name=random.RandomUuid(
                f"{name}-forwarder-arm-reader-id", opts=opts
            ).result,
            role_definition_id=arm_read.id,
            principal_id=app.identity.apply(lambda i: i.principal_id if i else ""),
            principal_type=azure.authorization.PrincipalType.SERVICE_PRINCIPAL,
            scope=args.scope,
            opts=opts,
        )
        keys = azure.web.list_web_app_host_keys_output(
            name=app.name,
            resource_group_name=group.name,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        function_key: pulumi.Output[str] = keys.function_keys.apply(
            lambda k: pulumi.Output.secret(str((k or {})["default"]))
        )
        endpoint_url = pulumi.Output.format(
            "https://{0}/api/{1}?code={2}", app.default_host_name, FUNCTION_NAME, function_key
        )
        topic = azure.eventgrid.SystemTopic(
            f"{name}-resource-events",
            resource_group_name=group.name,
            system_topic_name=f"{args.name_prefix}-resource-events",
            location="global",
            source=args.scope,
            topic_type="Microsoft.Resources.Subscriptions",
            tags=dict(tags),
            opts=opts,
        )
        azure.eventgrid.SystemTopicEventSubscription(
            f"{name}-to-forwarder",
            resource_group_name=group.name,
            system_topic_name=topic.name,
            event_subscription_name=f"{args.name_prefix}-forwarder",
            # The forwarder is an HTTP-triggered function (it answers Event Grid's validation
            # handshake itself); the function key authenticates Event Grid's deliveries.
            destination={
                "endpoint_type": "WebHook",
                "endpoint_url": endpoint_url,
                "max_events_per_batch": 50,
                "preferred_batch_size_in_kilobytes": 64,
            },
            filter={"included_event_types": list(RESOURCE_EVENTS)},
            event_delivery_schema="EventGridSchema",
            retry_policy={"max_delivery_attempts": 30, "event_time_to_live_in_minutes": 1440},
            opts=opts,
        )
        return app
