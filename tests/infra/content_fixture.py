"""Small, hand-written generated content for component tests that must not depend on the
other areas' generators."""

from __future__ import annotations

import pulumi

from infra.content import Content, Forwarder, RemediationPermissions


def small_content() -> Content:
    archive = pulumi.AssetArchive({"main.py": pulumi.StringAsset("def handler(e, c): pass\n")})
    return Content(
        fluentbit_files={"fluent-bit.yaml": "service:\n  flush: 1\n"},
        fluentbit_main="fluent-bit.yaml",
        vmalert_rules={"budgets.yaml": "groups: []\n"},
        alertmanager_config="route:\n  receiver: bridge\nreceivers:\n  - name: bridge\n",
        alertmanager_secret_files={"zenduty-url": "zenduty", "bridge-token": "bridge"},
        alertmanager_secrets_dir="/etc/alertmanager/secrets",
        workflow_templates=[
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "WorkflowTemplate",
                "metadata": {"name": "cct-rightsize-compute"},
                "spec": {"entrypoint": "main", "templates": [{"name": "main", "suspend": {}}]},
            }
        ],
        remediation=RemediationPermissions(
            aws=("ec2:DescribeInstances", "ec2:ModifyInstanceAttribute", "ec2:StopInstances"),
            azure=("Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/write"),
            gcp=("compute.instances.get", "compute.instances.setMachineType"),
        ),
        policies={"default.yaml": "apiVersion: cct.io/v1\nkind: OptimizationPolicy\n"},
        dashboards={"overview.json": '{"uid": "cct-overview", "title": "Overview"}'},
        datasource_uids={"victoriametrics": "cct-vm", "postgres": "cct-pg"},
        forwarders={
            cloud: Forwarder(archive=archive, entry_point="main.handler")
            for cloud in ("aws", "azure", "gcp")
        },
        workflow_label={"cct.io/managed": "true"},
    )
