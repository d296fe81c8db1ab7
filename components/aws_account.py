"""One AWS account: the FOCUS Data Export to S3, the EventBridge rules and the forwarder Lambda
that sends resource events to Fluent Bit, the billing loader's export-read role, the
remediation role and the Vault AWS secrets engine roles that hand out short-lived credentials
for each. No other identity: one that no handler uses is only something to steal (a cost-read
role for the collector's inventory sync, off in the bundle, was removed).

The remediation role grants exactly the permissions the actions registry declares (an input),
and only on resources not tagged as protected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_vault as vault

# FOCUS 1.0 columns delivered by AWS Data Exports (table FOCUS_1_0_AWS).
FOCUS_COLUMNS = (
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory",
    "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "CommitmentDiscountCategory", "CommitmentDiscountId",
    "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId",
    "RegionName", "ResourceId", "ResourceName", "ResourceType", "ServiceCategory",
    "ServiceName", "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName", "Tags",
)  # fmt: skip
FOCUS_TABLE = "FOCUS_1_0_AWS"

PROTECT_TAG = "cct.io/protect"
# Read-only calls do not support resource-level conditions; they get their own statement.
READ_ONLY_PREFIXES = ("Describe", "Get", "List")
STS_TTL_SECONDS = 900


def export_bucket_name(name_prefix: str, account_id: str) -> str:
    """The FOCUS export bucket: one per account, named so the billing loader can find it."""
    return f"{name_prefix}-focus-{account_id}"


def is_read_only(action: str) -> bool:
    return action.split(":", 1)[1].startswith(READ_ONLY_PREFIXES)


def remediation_policy(actions: Sequence[str], protect_tag: str = PROTECT_TAG) -> dict[str, Any]:
    """The remediation role's policy: mutating actions only on resources not tagged
    `protect_tag=true` (an explicit deny backs the allow's condition), read-only actions
    unconditionally. No wildcard action is ever produced."""
    for action in actions:
        service, _, name = action.partition(":")
        if not service or not name or "*" in action or "?" in action:
            raise ValueError(f"remediation action {action!r} must be one exact service:Action")
    reads = sorted({a for a in actions if is_read_only(a)})
    writes = sorted({a for a in actions if not is_read_only(a)})
    protected = {f"aws:ResourceTag/{protect_tag}": "true"}
    statements: list[dict[str, Any]] = []
    if reads:
        statements.append({"Sid": "Read", "Effect": "Allow", "Action": reads, "Resource": "*"})
    if writes:
        statements.append(
            {
                "Sid": "ChangeUnprotected",
                "Effect": "Allow",
                "Action": writes,
                "Resource": "*",
                "Condition": {"StringNotEquals": protected},
            }
        )
        statements.append(
            {
                "Sid": "NeverTouchProtected",
                "Effect": "Deny",
                "Action": writes,
                "Resource": "*",
                "Condition": {"StringEquals": protected},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def export_read_policy(bucket_arn: str, export_prefix: str) -> dict[str, Any]:
    """Read the FOCUS export objects under `export_prefix` and list only that prefix."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListExport",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": bucket_arn,
                "Condition": {"StringLike": {"s3:prefix": [f"{export_prefix}/*"]}},
            },
            {
                "Sid": "ReadExport",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"{bucket_arn}/{export_prefix}/*",
            },
        ],
    }


@dataclass(frozen=True)
class AwsAccountArgs:
    account_id: str
    region: str
    # The identity Vault's AWS secrets engine runs as; the only principal trusted by the roles.
    vault_principal_arn: str
    fluentbit_url: str
    fluentbit_token: pulumi.Input[str]
    forwarder_code: pulumi.Archive
    forwarder_handler: str
    # The EventBridge pattern the forwarder is written for (lambdas.forwarders.aws).
    event_pattern: Mapping[str, Any]
    # Exact IAM actions of the remediation actions registry (provider "aws").
    remediation_actions: Sequence[str]
    # Mount path of Vault's AWS secrets engine; None when Vault is not configured yet.
    vault_backend: pulumi.Input[str] | None = None
    name_prefix: str = "cct"
    export_prefix: str = "focus"
    protect_tag: str = PROTECT_TAG
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.account_id.isdigit() and len(self.account_id) == 12):
            raise ValueError(f"account_id {self.account_id!r} must be 12 digits")
        if not self.vault_principal_arn.startswith("arn:aws:iam::"):
            raise ValueError(f"vault_principal_arn {self.vault_principal_arn!r} is not an IAM ARN")
        remediation_policy(self.remediation_actions, self.protect_tag)


class AwsAccount(pulumi.ComponentResource):
    export_bucket: pulumi.Output[str]
    forwarder_arn: pulumi.Output[str]
    billing_read_role_arn: pulumi.Output[str]
    remediation_role_arn: pulumi.Output[str]
    vault_roles: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: AwsAccountArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:cloud:AwsAccount", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix
        tags = {"cct.io/component": "cct", **args.tags}

        bucket = self._export_bucket(name, args, tags, child)
        trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": args.vault_principal_arn},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        )
        # The billing loader's identity: the FOCUS export under its prefix and nothing else.
        billing_read = aws.iam.Role(
            f"{name}-billing-read",
            name=f"{prefix}-billing-read",
            assume_role_policy=trust,
            max_session_duration=3600,
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-billing-read-policy",
            role=billing_read.id,
            policy=bucket.arn.apply(
                lambda arn: json.dumps(export_read_policy(arn, args.export_prefix))
            ),
            opts=child,
        )
        remediation = aws.iam.Role(
            f"{name}-remediation",
            name=f"{prefix}-remediation",
            assume_role_policy=trust,
            max_session_duration=3600,
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-remediation-policy",
            role=remediation.id,
            policy=json.dumps(remediation_policy(args.remediation_actions, args.protect_tag)),
            opts=child,
        )
        forwarder = self._forwarder(name, args, tags, child)

        vault_roles: list[str] = []
        if args.vault_backend is not None:
            for role_name, role in (
                (f"{prefix}-billing-read", billing_read),
                (f"{prefix}-remediation", remediation),
            ):
                vault.aws.SecretBackendRole(
                    f"{name}-vault-{role_name}",
                    backend=args.vault_backend,
                    name=role_name,
                    credential_type="assumed_role",
                    role_arns=[role.arn],
                    default_sts_ttl=STS_TTL_SECONDS,
                    max_sts_ttl=3600,
                    opts=child,
                )
                vault_roles.append(role_name)

        self.export_bucket = bucket.bucket
        self.forwarder_arn = forwarder.arn
        self.billing_read_role_arn = billing_read.arn
        self.remediation_role_arn = remediation.arn
        self.vault_roles = pulumi.Output.from_input(vault_roles)
        self.register_outputs(
            {
                "export_bucket": self.export_bucket,
                "forwarder_arn": self.forwarder_arn,
                "billing_read_role_arn": self.billing_read_role_arn,
                "remediation_role_arn": self.remediation_role_arn,
                "vault_roles": self.vault_roles,
            }
        )

    def _export_bucket(
        self, name: str, args: AwsAccountArgs, tags: Mapping[str, str], opts: pulumi.ResourceOptions
    ) -> aws.s3.Bucket:
        bucket = aws.s3.Bucket(
            f"{name}-exports",
            bucket=export_bucket_name(args.name_prefix, args.account_id),
            tags=dict(tags),
            opts=opts,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-exports-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=opts,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-exports-encryption",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=opts,
        )
        account = args.account_id
        aws.s3.BucketPolicy(
            f"{name}-exports-policy",
            bucket=bucket.id,
            policy=bucket.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "DataExportsDelivery",
                                "Effect": "Allow",
                                "Principal": {
                                    "Service": [
                                        "bcm-data-exports.amazonaws.com",
                                        "billingreports.amazonaws.com",
                                    ]
                                },
                                "Action": ["s3:PutObject", "s3:GetBucketPolicy"],
                                "Resource": [arn, f"{arn}/*"],
                                "Condition": {
                                    "StringLike": {
                                        "aws:SourceAccount": account,
                                        "aws:SourceArn": [
                                            f"arn:aws:cur:us-east-1:{account}:definition/*",
                                            f"arn:aws:bcm-data-exports:us-east-1:{account}:export/*",
                                        ],
                                    }
                                },
                            }
                        ],
                    }
                )
            ),
            opts=opts,
        )
        # The Data Exports API exists only in us-east-1, whatever the account's home region.
        us_east_1 = aws.Provider(f"{name}-us-east-1", region="us-east-1", opts=opts)
        aws.bcmdata.Export(
            f"{name}-focus-export",
            export={
                "name": f"{args.name_prefix}-focus",
                "description": "FOCUS 1.0 cost and usage for CCT's billing loader",
                "data_queries": [
                    {
                        "query_statement": f"SELECT {', '.join(FOCUS_COLUMNS)} FROM {FOCUS_TABLE}",
                        "table_configurations": {FOCUS_TABLE: {}},
                    }
                ],
                "destination_configurations": [
                    {
                        "s3_destinations": [
                            {
                                "s3_bucket": bucket.bucket,
                                "s3_prefix": args.export_prefix,
                                "s3_region": args.region,
                                "s3_output_configurations": [
                                    {
                                        "overwrite": "OVERWRITE_REPORT",
                                        "format": "PARQUET",
                                        "compression": "PARQUET",
                                        "output_type": "CUSTOM",
                                    }
                                ],
                            }
                        ]
                    }
                ],
                "refresh_cadences": [{"frequency": "SYNCHRONOUS"}],
            },
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=self, provider=us_east_1, depends_on=[bucket]),
        )
        return bucket

    def _forwarder(
        self, name: str, args: AwsAccountArgs, tags: Mapping[str, str], opts: pulumi.ResourceOptions
    ) -> aws.lambda_.Function:
        prefix = args.name_prefix
        function_name = f"{prefix}-forwarder"
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-forwarder-logs",
            name=f"/aws/lambda/{function_name}",
            retention_in_days=30,
            tags=dict(tags),
            opts=opts,
        )
        role = aws.iam.Role(
            f"{name}-forwarder-role",
            name=f"{prefix}-forwarder",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            tags=dict(tags),
            opts=opts,
        )
        aws.iam.RolePolicy(
            f"{name}-forwarder-policy",
            role=role.id,
            policy=log_group.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "Logs",
                                "Effect": "Allow",
                                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                                "Resource": f"{arn}:*",
                            }
                        ],
                    }
                )
            ),
            opts=opts,
        )
        function = aws.lambda_.Function(
            f"{name}-forwarder",
            name=function_name,
            runtime="python3.12",
            architectures=["arm64"],
            handler=args.forwarder_handler,
            code=args.forwarder_code,
            role=role.arn,
            timeout=30,
            memory_size=256,
            # Lambda encrypts environment variables at rest; the token stays a secret Output
            # in Pulumi's state.
            environment={
                "variables": {
                    "CCT_FORWARDER_ENDPOINT": args.fluentbit_url,
                    "CCT_FORWARDER_TOKEN": pulumi.Output.secret(args.fluentbit_token),
                    "CCT_FORWARDER_BILLING_ACCOUNT_ID": args.account_id,
                }
            },
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group]),
        )
        rule = aws.cloudwatch.EventRule(
            f"{name}-resource-events",
            name=f"{prefix}-resource-events",
            description="Resource lifecycle events priced by CCT",
            event_pattern=json.dumps(dict(args.event_pattern)),
            tags=dict(tags),
            opts=opts,
        )
        aws.cloudwatch.EventTarget(
            f"{name}-resource-events-target",
            rule=rule.name,
            arn=function.arn,
            # EventBridge keeps retrying a failing forwarder for up to an hour.
            retry_policy={"maximum_event_age_in_seconds": 3600, "maximum_retry_attempts": 185},
            opts=opts,
        )
        aws.lambda_.Permission(
            f"{name}-resource-events-invoke",
            action="lambda:InvokeFunction",
            function=function.name,
            principal="events.amazonaws.com",
            source_arn=rule.arn,
            opts=opts,
        )
        return function
