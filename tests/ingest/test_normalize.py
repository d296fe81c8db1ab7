"""Provider events (documented shapes, in fixtures/events) -> the resource-change model."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from lambdas.collector.model import EventIgnored, EventRejected
from lambdas.collector.normalize import normalize

Event = Callable[[str], dict[str, Any]]
VM = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourcegroups/rg-web/providers/"
    "microsoft.compute/virtualmachines/web-1"
)
GCP_VM = "//compute.googleapis.com/projects/shop-prod-123/zones/us-central1-a/instances/api-1"
ALICE = "arn:aws:sts::111122223333:assumed-role/Admin/alice"
DB = "arn:aws:rds:us-east-1:111122223333:db:orders-db"


@pytest.mark.parametrize(
    ("provider", "fixture", "expected"),
    [
        (
            "aws",
            "aws_run_instances",
            {
                "resource_id": "i-0aaa1111bbbb2222c",
                "state": "running",
                "sku": "m5.large",
                "region_id": "us-east-1",
                "actor": ALICE,
                "tags": {"team": "payments", "env": "prod"},
                "attributes": {},
            },
        ),
        (
            "aws",
            "aws_run_instances_windows",
            {
                "resource_id": "i-0bbb2222cccc3333d",
                "sku": "m5.large",
                "attributes": {"platform_details": "Windows"},
            },
        ),
        (
            "aws",
            "aws_stop_instances",
            {"resource_id": "i-0aaa1111bbbb2222c", "state": "stopped", "sku": None},
        ),
        ("aws", "aws_start_instances", {"resource_id": "i-0aaa1111bbbb2222c", "state": "running"}),
        (
            "aws",
            "aws_terminate_instances",
            {"resource_id": "i-0aaa1111bbbb2222c", "state": "deleted"},
        ),
        (
            "aws",
            "aws_modify_instance_attribute",
            {"resource_id": "i-0aaa1111bbbb2222c", "state": None, "sku": "m5.xlarge"},
        ),
        (
            "aws",
            "aws_ec2_state_change",
            {
                "resource_id": "i-0aaa1111bbbb2222c",
                "state": "stopped",
                "action": "state:stopped",
                "actor": None,
            },
        ),
        (
            "aws",
            "aws_create_volume",
            {
                "resource_id": "vol-0123456789abcdef0",
                "sku": "gp3",
                "attributes": {"gib": 100.0, "iops": 3000.0, "throughput": 125.0},
                "resource_type": "Volume",
            },
        ),
        (
            "aws",
            "aws_create_volume_io2",
            {
                "resource_id": "vol-0fedcba9876543210",
                "sku": "io2",
                "attributes": {"gib": 500.0, "iops": 40000.0},
            },
        ),
        (
            "aws",
            "aws_modify_volume",
            {
                "resource_id": "vol-0123456789abcdef0",
                "sku": "gp3",
                "attributes": {"gib": 200.0, "iops": 3000.0},
            },
        ),
        ("aws", "aws_delete_volume", {"resource_id": "vol-0123456789abcdef0", "state": "deleted"}),
        (
            "aws",
            "aws_create_db_instance",
            {
                "resource_id": DB,
                "sku": "db.m5.large",
                "attributes": {
                    "engine": "postgres",
                    "gib": 20.0,
                    "multi_az": False,
                    "storage_type": "gp3",
                    "iops": 3000.0,
                    "throughput": 125.0,
                },
                "tags": {"team": "orders"},
            },
        ),
        (
            "aws",
            "aws_create_db_instance_io1",
            {
                "resource_id": "arn:aws:rds:us-east-1:111122223333:db:ledger-db",
                "attributes": {
                    "engine": "postgres",
                    "gib": 100.0,
                    "multi_az": False,
                    "storage_type": "io1",
                    "iops": 3000.0,
                },
            },
        ),
        (
            "aws",
            "aws_modify_db_instance",
            {"resource_id": DB, "sku": "db.m5.xlarge", "state": None, "attributes": {}},
        ),
        ("aws", "aws_delete_db_instance", {"resource_id": DB, "state": "deleted"}),
        (
            "azure",
            "azure_vm_deallocate",
            {
                "resource_id": VM,
                "state": "deallocated",
                "actor": "bob@example.com",
                "region_id": None,
            },
        ),
        ("azure", "azure_vm_delete", {"resource_id": VM, "state": "deleted"}),
        (
            "gcp",
            "gcp_instances_insert",
            {
                "resource_id": GCP_VM,
                "state": "running",
                "sku": "e2-standard-4",
                "region_id": "us-central1",
                "actor": "carol@example.com",
                "tags": {"team": "api", "env": "prod"},
                "attributes": {},
            },
        ),
        (
            "gcp",
            "gcp_instances_insert_windows",
            {"sku": "e2-standard-4", "attributes": {"image_project": "windows-cloud"}},
        ),
        (
            "gcp",
            "gcp_instances_set_machine_type",
            {"resource_id": GCP_VM, "state": None, "sku": "e2-standard-8"},
        ),
        ("gcp", "gcp_instances_stop", {"state": "stopped"}),
        ("gcp", "gcp_instances_delete", {"state": "deleted"}),
        (
            "gcp",
            "gcp_disks_insert",
            {
                "sku": "pd-ssd",
                "attributes": {"gib": 500.0},
                "resource_type": "compute.googleapis.com/Disk",
            },
        ),
    ],
)
def test_provider_events_normalize(
    provider: str, fixture: str, expected: dict[str, Any], event: Event
) -> None:
    [change] = normalize(
        {"provider": provider, "billing_account_id": "payer-1", "event": event(fixture)}
    )
    assert change.billing_account_id == "payer-1"
    for field, value in expected.items():
        assert getattr(change, field) == value, field


def test_azure_write_takes_size_and_region_from_the_arm_resource(event: Event) -> None:
    arm_vm, arm_disk = event("arm_vm"), event("arm_disk")
    [vm] = normalize({"provider": "azure", "event": event("azure_vm_write"), "resource": arm_vm})
    assert (vm.sku, vm.region_id, vm.state, vm.tags) == (
        "Standard_D2s_v3",
        "eastus",
        "running",
        {"team": "web", "env": "prod"},
    )
    assert vm.sub_account_id == vm.billing_account_id == "00000000-1111-2222-3333-444444444444"
    [disk] = normalize(
        {"provider": "azure", "event": event("azure_disk_write"), "resource": arm_disk}
    )
    assert (disk.sku, disk.attributes, disk.resource_type) == (
        "Premium_LRS",
        {"gib": 100.0},
        "Microsoft.Compute/disks",
    )


def _b64(event: Event, nul: bool = False) -> str:
    """A GCP disk insert as Pub/Sub delivers it: base64 JSON in message.data."""
    entry = event("gcp_disks_insert")
    if nul:
        entry["protoPayload"]["authenticationInfo"]["principalEmail"] = "carol\x00@example.com"
    return base64.b64encode(json.dumps(entry).encode()).decode()


def test_gcp_pubsub_message_is_decoded(event: Event) -> None:
    entry = event("gcp_instances_insert")
    data = base64.b64encode(json.dumps(entry).encode()).decode()
    [change] = normalize(
        {"provider": "gcp", "event": {"message": {"data": data, "messageId": "1"}}}
    )
    assert change.event_id == "gcp:-abc123def1"
    assert change.billing_account_id == "shop-prod-123"  # no billing account: the project


def test_one_api_call_for_several_instances_gives_one_change_each(event: Event) -> None:
    ev = event("aws_run_instances")
    items = ev["detail"]["responseElements"]["instancesSet"]["items"]
    items.append({**items[0], "instanceId": "i-0ddd"})
    changes = normalize({"provider": "aws", "event": ev})
    assert [c.resource_id for c in changes] == ["i-0aaa1111bbbb2222c", "i-0ddd"]
    assert len({c.event_id for c in changes}) == 2


def test_failed_api_calls_and_irrelevant_events_are_ignored(event: Event) -> None:
    with pytest.raises(EventIgnored, match="UnauthorizedOperation"):
        normalize({"provider": "aws", "event": event("aws_failed_call")})
    other = event("aws_run_instances")
    other["detail"]["eventName"] = "DescribeInstances"
    with pytest.raises(EventIgnored, match="DescribeInstances"):
        normalize({"provider": "aws", "event": other})


def test_an_azure_sub_resource_event_is_not_a_vm(event: Event) -> None:
    """An extension's write: no phantom unpriced VM row named `.../web-1/extensions/...`, no
    change to the VM's own row."""
    ev = event("azure_vm_write")
    ev["data"]["resourceUri"] = ev["subject"] = ev["data"]["resourceUri"] + "/extensions/Script"
    with pytest.raises(EventIgnored, match="sub-resource"):
        normalize({"provider": "azure", "event": ev})


def _tags_resource(ev: dict[str, Any], scope: str | None = None) -> dict[str, Any]:
    """The event as the Tags API raises it: on the resource's tags sub-resource."""
    base = scope or ev["data"]["resourceUri"]
    ev["data"]["resourceUri"] = ev["subject"] = base + "/providers/Microsoft.Resources/tags/default"
    ev["data"]["operationName"] = "Microsoft.Resources/tags/write"
    return ev


def test_an_azure_re_tag_through_the_tags_api_is_the_vm_s_change(event: Event) -> None:
    """The portal's tag editor and `az tag update` write the VM's tags resource, which used
    to be ignored as a sub-resource: the VM's cost stayed with its old team. The forwarder
    reads the VM itself back; its tags are the VM's now."""
    arm_vm = event("arm_vm")
    arm_vm["tags"] = {"team": "data", "env": "prod"}
    ev = _tags_resource(event("azure_vm_write"))
    [vm] = normalize({"provider": "azure", "event": ev, "resource": arm_vm})
    assert (vm.resource_id, vm.tags, vm.sku, vm.state) == (
        VM,
        {"team": "data", "env": "prod"},
        "Standard_D2s_v3",
        "running",
    )
    # Without the read-back nothing says what the tags are.
    with pytest.raises(EventIgnored, match="could not be read back"):
        normalize({"provider": "azure", "event": ev})
    # `az tag delete`: all tags removed, the VM itself untouched.
    gone = _tags_resource(event("azure_vm_delete"))
    [vm] = normalize({"provider": "azure", "event": gone})
    assert (vm.resource_id, vm.tags, vm.state) == (VM, {}, None)
    # The tags of a resource group or a subscription: nothing priced.
    group = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-web"
    for ev in (
        _tags_resource(event("azure_vm_write"), group),
        _tags_resource(event("azure_vm_delete"), group),
    ):
        with pytest.raises(EventIgnored, match="resource group or subscription"):
            normalize({"provider": "azure", "event": ev})


def _mutate(
    fixture: str, fn: Callable[[dict[str, Any]], None]
) -> Callable[[Event], dict[str, Any]]:
    def build(event: Event) -> dict[str, Any]:
        ev = event(fixture)
        fn(ev)
        return ev

    return build


@pytest.mark.parametrize(
    ("record", "reason", "message"),
    [
        (lambda e: ["not", "an", "object"], "wrong_type", "record: expected an object"),
        (
            lambda e: {"provider": "oracle", "event": {}},
            "unknown_provider",
            "unknown provider 'oracle'",
        ),
        (lambda e: {"event": e("aws_run_instances")}, "unknown_provider", "unknown provider None"),
        (lambda e: {"provider": "aws", "event": "text"}, "wrong_type", "event: expected an object"),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate("aws_run_instances", lambda ev: ev.pop("time"))(e),
            },
            "missing_field",
            "missing field 'time'",
        ),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate("aws_run_instances", lambda ev: ev.update(time="yesterday"))(e),
            },
            "bad_time",
            "'yesterday' is not an ISO 8601 time",
        ),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate("aws_run_instances", lambda ev: ev.update(account=1234))(e),
            },
            "wrong_type",
            "event.account: expected a non-empty string",
        ),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate(
                    "aws_ec2_state_change", lambda ev: ev["detail"].pop("instance-id")
                )(e),
            },
            "missing_field",
            "instance-id",
        ),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate(
                    "aws_stop_instances",
                    lambda ev: ev["detail"].update(requestParameters={}, responseElements={}),
                )(e),
            },
            "missing_field",
            "no resource id",
        ),
        (
            lambda e: {
                "provider": "azure",
                "event": _mutate(
                    "azure_vm_write",
                    lambda ev: ev.update(eventType="Microsoft.Storage.BlobCreated"),
                )(e),
            },
            "unknown_event_type",
            "BlobCreated",
        ),
        (
            lambda e: {
                "provider": "azure",
                "event": _mutate(
                    "azure_vm_write", lambda ev: ev["data"].update(resourceUri="/nope")
                )(e),
            },
            "bad_resource_id",
            "not an ARM id",
        ),
        (
            lambda e: {"provider": "gcp", "event": {"message": {"data": "%%%not-base64"}}},
            "bad_encoding",
            "base64",
        ),
        (
            lambda e: {
                "provider": "gcp",
                "event": _mutate(
                    "gcp_instances_insert",
                    lambda ev: ev["protoPayload"].update(resourceName="projects/p/global/x"),
                )(e),
            },
            "bad_resource_id",
            "not a zonal resource",
        ),
        (
            lambda e: {"provider": "aws", "billing_account_id": 42, "event": {}},
            "wrong_type",
            "billing_account_id",
        ),
        (
            lambda e: {
                "provider": "gcp",
                "event": _mutate(
                    "gcp_disks_insert",
                    lambda ev: ev["protoPayload"]["request"].update(sizeGb="NaN"),
                )(e),
            },
            "wrong_type",
            "request.sizeGb: expected a non-negative finite number, got 'NaN'",
        ),
        (
            lambda e: {
                "provider": "aws",
                "event": _mutate(
                    "aws_create_volume",
                    lambda ev: ev["detail"]["responseElements"].update(size=-100),
                )(e),
            },
            "wrong_type",
            "volume size: expected a non-negative finite number, got -100",
        ),
        (
            lambda e: {"provider": "gcp", "event": {"message": {"data": _b64(e, nul=True)}}},
            "nul_character",
            "gcp message.data: a string holds a NUL character",
        ),
        (
            # A lone surrogate: valid JSON for the standard library, unwritable anywhere.
            lambda e: {
                "provider": "gcp",
                "event": {"message": {"data": base64.b64encode(b'{"a": "\\ud800"}').decode()}},
            },
            "bad_encoding",
            "base64 JSON",
        ),
    ],
)
def test_bad_records_are_rejected_with_a_reason(
    record: Callable[[Event], Any], reason: str, message: str, event: Event
) -> None:
    with pytest.raises(EventRejected, match=message) as info:
        normalize(record(event))
    assert info.value.reason == reason


def test_run_instances_platform_details_name_the_billing_product(event: Event) -> None:
    ev = event("aws_run_instances")
    item = ev["detail"]["responseElements"]["instancesSet"]["items"][0]
    item["platformDetails"] = "Red Hat Enterprise Linux"
    item["usageOperation"] = "RunInstances:0010"
    [change] = normalize({"provider": "aws", "event": ev})
    assert change.attributes == {"platform_details": "Red Hat Enterprise Linux"}


def test_modify_volume_carries_provisioned_iops_and_throughput(event: Event) -> None:
    ev = event("aws_modify_volume")
    ev["detail"]["requestParameters"]["ModifyVolumeRequest"].update(Iops=6000, Throughput=250)
    mod = ev["detail"]["responseElements"]["ModifyVolumeResponse"]["volumeModification"]
    mod.update(targetIops=6000, targetThroughput=250)
    [change] = normalize({"provider": "aws", "event": ev})
    assert change.attributes == {"gib": 200.0, "iops": 6000.0, "throughput": 250.0}


def test_modify_db_instance_storage_from_request_or_pending_values(event: Event) -> None:
    """ModifyDBInstance's response still shows the old storage; what changes is in the
    request and, when applied later, in pendingModifiedValues."""
    ev = event("aws_modify_db_instance")
    ev["detail"]["requestParameters"].update(allocatedStorage=500, storageType="gp3")
    resp = ev["detail"]["responseElements"]
    resp.update(allocatedStorage=100, storageType="gp2", iops=300)
    resp["pendingModifiedValues"] = {"allocatedStorage": 500, "storageType": "gp3", "iops": 15000}
    [change] = normalize({"provider": "aws", "event": ev})
    assert change.attributes == {"gib": 500.0, "iops": 15000.0, "storage_type": "gp3"}


def test_azure_vm_operating_system_and_licence(event: Event) -> None:
    arm = event("arm_vm_windows")
    [vm] = normalize(
        {"provider": "azure", "event": event("azure_vm_write_windows"), "resource": arm}
    )
    assert vm.attributes == {"os_type": "Windows"}
    arm["properties"]["licenseType"] = "Windows_Server"  # Azure Hybrid Benefit
    [vm] = normalize(
        {"provider": "azure", "event": event("azure_vm_write_windows"), "resource": arm}
    )
    assert vm.attributes == {"os_type": "Windows", "license_type": "Windows_Server"}
    [linux] = normalize(
        {"provider": "azure", "event": event("azure_vm_write"), "resource": event("arm_vm")}
    )
    assert linux.attributes == {"os_type": "Linux"}


@pytest.mark.parametrize(
    ("boot_disk", "project"),
    [
        (
            {"initializeParams": {"sourceImage": "projects/rhel-cloud/global/images/rhel-9-v1"}},
            "rhel-cloud",
        ),
        (
            {
                "initializeParams": {
                    "sourceImage": "https://www.googleapis.com/compute/v1/projects/"
                    "windows-cloud/global/images/windows-server-2022-dc-v20261010"
                }
            },
            "windows-cloud",
        ),
        (
            {
                "source": "projects/shop-prod-123/zones/us-central1-a/disks/restored",
                "licenses": [
                    "https://www.googleapis.com/compute/v1/projects/windows-cloud/global/"
                    "licenses/windows-server-2022-dc"
                ],
            },
            "windows-cloud",
        ),
        ({"initializeParams": {"sourceImage": "global/images/golden-1"}}, "shop-prod-123"),
        ({"source": "projects/shop-prod-123/zones/us-central1-a/disks/restored"}, None),
    ],
)
def test_gcp_boot_image_project(
    boot_disk: dict[str, Any], project: str | None, event: Event
) -> None:
    ev = event("gcp_instances_insert")
    ev["protoPayload"]["request"]["disks"] = [{"boot": True, **boot_disk}]
    [change] = normalize({"provider": "gcp", "event": ev})
    assert change.attributes.get("image_project") == project


def test_re_tags_carry_the_tags_set_and_removed_on_instances_volumes_and_databases(
    event: Event,
) -> None:
    """AWS re-tags are events of their own (CreateTags, DeleteTags; RDS AddTagsToResource,
    RemoveTagsFromResource) that name only the tags changed: without them a re-tagged
    resource's cost stayed with its old team for good."""
    instance, volume = normalize({"provider": "aws", "event": event("aws_create_tags")})
    assert [(c.resource_id, c.resource_type) for c in (instance, volume)] == [
        ("i-0aaa1111bbbb2222c", "Instance"),
        ("vol-0123456789abcdef0", "Volume"),
    ]  # the security group in the same call has no run-rate
    assert instance.tag_changes == volume.tag_changes == {"team": "data", "cost-center": "cc-42"}
    assert (instance.tags, instance.state, instance.sku) == (None, None, None)
    assert instance.actor == ALICE
    assert instance.event_id != volume.event_id
    [gone] = normalize({"provider": "aws", "event": event("aws_delete_tags")})
    assert gone.tag_changes == {"team": None}
    [db] = normalize({"provider": "aws", "event": event("aws_add_tags_to_resource")})
    assert (db.resource_id, db.service_name, db.tag_changes) == (
        DB,
        "Amazon Relational Database Service",
        {"team": "data"},
    )
    [db] = normalize({"provider": "aws", "event": event("aws_remove_tags_from_resource")})
    assert db.tag_changes == {"env": None}


def test_a_delete_tags_naming_a_value_removes_the_tag_only_where_it_has_that_value(
    event: Event,
) -> None:
    """AWS deletes a tag named with a value (an empty one too) only where it has that value;
    without a value, whatever it is. Every named tag was removed, so `delete-tags --tags
    Key=team,Value=web` on an instance of team `data` took it out of its team."""
    ev = event("aws_delete_tags")
    ev["detail"]["requestParameters"]["tagSet"]["items"] = [
        {"key": "team", "value": "web"},
        {"key": "env"},
        {"key": "owner", "value": ""},
        {"key": "tier", "value": None},  # no value stated: whatever it is
    ]
    [gone] = normalize({"provider": "aws", "event": ev})
    assert gone.tag_changes == {"env": None, "tier": None}
    assert gone.tag_removals_if == {"team": frozenset({"web"}), "owner": frozenset({""})}
    # The same key with and without a value: AWS removes it whatever its value.
    ev["detail"]["requestParameters"]["tagSet"]["items"] = [
        {"key": "team", "value": "web"},
        {"key": "team"},
    ]
    [gone] = normalize({"provider": "aws", "event": ev})
    assert (gone.tag_changes, gone.tag_removals_if) == ({"team": None}, {})
    # Review finding: one key named with two values kept the last one only.
    ev["detail"]["requestParameters"]["tagSet"]["items"] = [
        {"key": "team", "value": "web"},
        {"key": "team", "value": "data"},
    ]
    [gone] = normalize({"provider": "aws", "event": ev})
    assert gone.tag_removals_if == {"team": frozenset({"web", "data"})}


def test_re_tags_of_resources_without_a_run_rate_are_ignored(event: Event) -> None:
    ev = event("aws_create_tags")
    ev["detail"]["requestParameters"]["resourcesSet"]["items"] = [{"resourceId": "ami-0abc"}]
    with pytest.raises(EventIgnored, match="no instance or volume"):
        normalize({"provider": "aws", "event": ev})
    ev = event("aws_add_tags_to_resource")
    ev["detail"]["requestParameters"]["resourceName"] = (
        "arn:aws:rds:us-east-1:111122223333:snapshot:orders-2026-11-27"
    )
    with pytest.raises(EventIgnored, match="snapshot that is no DB instance"):
        normalize({"provider": "aws", "event": ev})


@pytest.mark.parametrize(
    ("fixture", "request_change", "message"),
    [
        ("aws_create_tags", {"tagSet": {"items": [{"value": "x"}]}}, "a tag without a key"),
        ("aws_create_tags", {"tagSet": {"items": [{"key": ""}]}}, "a tag without a key"),
        ("aws_create_tags", {"tagSet": {}}, "no tags"),
        ("aws_create_tags", {"resourcesSet": {}}, "no resource id"),
        ("aws_add_tags_to_resource", {"tags": [{"key": 7, "value": "x"}]}, "a tag without a key"),
        ("aws_add_tags_to_resource", {"resourceName": None}, "no resource id"),
        ("aws_remove_tags_from_resource", {"tagKeys": []}, "no tagKeys"),
        ("aws_remove_tags_from_resource", {"tagKeys": "env"}, "no tagKeys"),
    ],
)
def test_malformed_re_tags_are_rejected_with_a_reason(
    fixture: str, request_change: dict[str, Any], message: str, event: Event
) -> None:
    ev = event(fixture)
    ev["detail"]["requestParameters"].update(request_change)
    with pytest.raises(EventRejected, match=message) as info:
        normalize({"provider": "aws", "event": ev})
    assert info.value.reason == "missing_field"


def test_gcp_labels_as_the_audit_log_writes_them_and_a_relabel(event: Event) -> None:
    """A public setLabels audit entry writes the request's labels as a list of {key, value},
    which was read as no labels at all (for a creation too: the instance had no team). And
    setLabels, which replaces the whole label set, moves it to its new team."""
    entry = event("gcp_instances_insert")
    labels = entry["protoPayload"]["request"]["labels"]
    entry["protoPayload"]["request"]["labels"] = [{"key": k, "value": v} for k, v in labels.items()]
    [inst] = normalize({"provider": "gcp", "event": entry})
    assert inst.tags == {"team": "api", "env": "prod"}
    [relabel] = normalize({"provider": "gcp", "event": event("gcp_instances_set_labels")})
    assert (relabel.resource_id, relabel.tags, relabel.state, relabel.sku) == (
        GCP_VM,
        {"team": "data", "env": "prod"},
        None,
        None,
    )
    cleared = event("gcp_instances_set_labels")
    del cleared["protoPayload"]["request"]["labels"]
    assert normalize({"provider": "gcp", "event": cleared})[0].tags == {}
    broken = event("gcp_instances_set_labels")
    broken["protoPayload"]["request"]["labels"] = [{"value": "data"}]
    with pytest.raises(EventRejected, match="a label without a key"):
        normalize({"provider": "gcp", "event": broken})


def test_a_tag_without_a_value_is_empty_not_the_word_none(event: Event) -> None:
    """Review finding: an RDS tag with an empty value (`"value": null` or absent) was stored
    as "None", so the database landed in a team named "None"."""
    ev = event("aws_create_db_instance")
    ev["detail"]["requestParameters"]["tags"] = [{"key": "team"}, {"key": "env", "value": None}]
    [db] = normalize({"provider": "aws", "event": ev})
    assert db.tags == {"team": "", "env": ""}


def test_re_tag_edge_cases_from_review(event: Event) -> None:
    """Review findings: a GCP setLabels' completion entry (logged later, without the
    request) wiped every label; `delete-tags` without tags (all of them) was refused; a
    mixed-case RDS identifier made a second row; an Azure resource read back without
    `tags` (its last tag removed) kept its old team."""
    done = event("gcp_instances_set_labels")
    done["operation"] = {"id": "operation-3", "producer": "compute.googleapis.com", "last": True}
    del done["protoPayload"]["request"]["labels"]
    done["timestamp"] = "2026-11-27T09:20:05Z"
    assert normalize({"provider": "gcp", "event": done})[0].tags is None
    odd = event("gcp_instances_set_labels")
    odd["protoPayload"]["request"]["labels"] = "team=data"
    with pytest.raises(EventRejected, match="expected a list") as info:
        normalize({"provider": "gcp", "event": odd})
    assert info.value.reason == "wrong_type"

    all_tags = event("aws_delete_tags")
    del all_tags["detail"]["requestParameters"]["tagSet"]
    [untagged] = normalize({"provider": "aws", "event": all_tags})
    # AWS keeps its own `aws:` tags: not a full (empty) tag set, every user tag removed.
    assert (untagged.tags, untagged.tag_changes, untagged.drop_user_tags) == (None, {}, True)

    mixed = event("aws_add_tags_to_resource")
    mixed["detail"]["requestParameters"]["resourceName"] = (
        "arn:aws:rds:us-east-1:111122223333:db:Orders-DB"
    )
    assert normalize({"provider": "aws", "event": mixed})[0].resource_id == DB

    bare = event("arm_vm")
    del bare["tags"]
    [vm] = normalize({"provider": "azure", "event": event("azure_vm_write"), "resource": bare})
    assert vm.tags == {}


CLOUD_SQL = "//cloudsql.googleapis.com/projects/shop-prod-123/instances/orders-db"
AZURE_DB = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourcegroups/rg-data/providers/"
    "microsoft.sql/servers/sql-shop/databases/orders"
)


def _gcp(entry: dict[str, Any]) -> list[Any]:
    return normalize({"provider": "gcp", "event": entry})


def test_a_cloud_sql_creation_carries_its_tier_engine_disk_and_labels(event: Event) -> None:
    """The creation's first entry has the request (the Admin API's `SqlInstancesInsertRequest`
    body); its size is what pricing needs: tier, engine, availability, data disk."""
    [change] = _gcp(event("gcp_cloudsql_create"))
    assert (change.resource_id, change.resource_type, change.service_name) == (
        CLOUD_SQL,
        "sqladmin.googleapis.com/Instance",
        "Cloud SQL",
    )
    assert (change.state, change.sku, change.region_id, change.actor) == (
        "running",
        "db-custom-4-16384",
        "us-central1",
        "carol@example.com",
    )
    assert dict(change.attributes) == {
        "engine": "postgres",
        "availability": "zonal",
        "gib": 100.0,  # dataDiskSizeGb is a string in the API's JSON
        "disk_type": "PD_SSD",
    }
    assert change.tags == {"team": "data", "env": "prod"}
    assert change.event_id == "gcp:-sqlcreate01"


def test_a_cloud_sql_creation_without_disk_or_availability_gets_the_api_s_defaults(
    event: Event,
) -> None:
    entry = event("gcp_cloudsql_create")
    settings = entry["protoPayload"]["request"]["body"]["settings"]
    for key in ("dataDiskSizeGb", "dataDiskType", "availabilityType", "userLabels"):
        del settings[key]
    [change] = _gcp(entry)
    assert dict(change.attributes) == {
        "engine": "postgres",
        "availability": "zonal",
        "gib": 10.0,
        "disk_type": "PD_SSD",
    }
    assert change.tags == {}


@pytest.mark.parametrize(
    ("resource_name", "where"),
    [
        # gcloud's creation entry names the project only, the instance is the request's
        # (forseti-security/real-time-enforcer#14), and its database_id label is empty.
        ("projects/shop-prod-123", "body"),
        # Older entries: `instances/<project>:<instance>`.
        ("instances/shop-prod-123:orders-db", "name"),
    ],
)
def test_every_way_a_cloud_sql_entry_names_its_instance(
    event: Event, resource_name: str, where: str
) -> None:
    entry = event("gcp_cloudsql_create")
    entry["protoPayload"]["resourceName"] = resource_name
    entry["resource"]["labels"].update(database_id="", region="")
    [change] = _gcp(entry)
    assert change.resource_id == CLOUD_SQL
    assert change.region_id == "us-central1"  # from the request's body


def test_a_cloud_sql_patch_changes_only_what_it_states(event: Event) -> None:
    """A PATCH is logged as `cloudsql.instances.update` with only the changed settings: the
    tier here; no state, no labels, no disk (the inventory keeps what it knows)."""
    [change] = _gcp(event("gcp_cloudsql_update"))
    assert (change.resource_id, change.sku, change.state, change.tags) == (
        CLOUD_SQL,
        "db-custom-8-32768",
        None,
        None,
    )
    assert dict(change.attributes) == {}
    assert change.region_id == "us-central1"  # the entry's resource label


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"activationPolicy": "NEVER"}, {"state": "stopped"}),
        ({"activationPolicy": "ALWAYS"}, {"state": "running"}),
        ({"availabilityType": "REGIONAL"}, {"attributes": {"availability": "regional"}}),
        ({"dataDiskSizeGb": "250"}, {"attributes": {"gib": 250.0}}),
        # A PATCH merges labels; one sent as null is removed (gcloud --remove-labels).
        ({"userLabels": {"team": "web"}}, {"tag_changes": {"team": "web"}, "tags": None}),
        ({"userLabels": {"team": None}}, {"tag_changes": {"team": None}, "tags": None}),
    ],
)
def test_a_cloud_sql_patch_of_state_availability_disk_or_labels(
    event: Event, settings: dict[str, Any], expected: dict[str, Any]
) -> None:
    entry = event("gcp_cloudsql_update")
    entry["protoPayload"]["request"]["body"]["settings"] = settings
    [change] = _gcp(entry)
    assert change.sku is None
    for field, value in expected.items():
        got = getattr(change, field)
        assert (dict(got) if field == "attributes" else got) == value, field


def test_cloud_sql_deletion_and_an_operation_s_end(event: Event) -> None:
    """A long-running operation logs a second entry when it ends, without the request: an
    update's and a creation's say nothing (read as a creation, review: it set an instance
    created stopped running again), a deletion's is the deletion again. A creation's end may
    name the project only, like its start: still ignored, not refused."""
    [gone] = _gcp(event("gcp_cloudsql_delete"))
    assert (gone.resource_id, gone.state) == (CLOUD_SQL, "deleted")
    end = event("gcp_cloudsql_update")
    del end["protoPayload"]["request"]
    end["operation"] = {"id": "op-1", "producer": "cloudsql.googleapis.com", "last": True}
    with pytest.raises(EventIgnored, match="states no change"):
        _gcp(end)
    end = event("gcp_cloudsql_delete")
    del end["protoPayload"]["request"]
    [gone] = _gcp(end)
    assert gone.state == "deleted"
    for resource_name in ("projects/shop-prod-123/instances/orders-db", "projects/shop-prod-123"):
        end = event("gcp_cloudsql_create")
        del end["protoPayload"]["request"]
        end["protoPayload"]["resourceName"] = resource_name
        end["operation"] = {"id": "op-1", "producer": "cloudsql.googleapis.com", "last": True}
        with pytest.raises(EventIgnored, match="states no change"):
            _gcp(end)


def test_a_cloud_sql_instance_created_stopped_is_stopped(event: Event) -> None:
    entry = event("gcp_cloudsql_create")
    entry["protoPayload"]["request"]["body"]["settings"]["activationPolicy"] = "NEVER"
    [change] = _gcp(entry)
    assert change.state == "stopped"


def test_a_cloud_sql_server_instance_keeps_its_engine_and_no_price_is_guessed(
    event: Event,
) -> None:
    entry = event("gcp_cloudsql_create")
    entry["protoPayload"]["request"]["body"]["databaseVersion"] = "SQLSERVER_2019_STANDARD"
    [change] = _gcp(entry)
    assert change.attributes["engine"] == "sqlserver"


@pytest.mark.parametrize(
    ("mutate", "reason", "message"),
    [
        (
            lambda e: e["protoPayload"].update(resourceName="projects/shop-prod-123/zones/x"),
            "bad_resource_id",
            "names no Cloud SQL instance",
        ),
        (
            lambda e: e["protoPayload"].update(resourceName="projects/Shop/instances/orders-db"),
            "bad_resource_id",
            "names no Cloud SQL instance",
        ),
        (
            lambda e: e["protoPayload"].update(
                resourceName="projects/shop-prod-123/instances/../../x"
            ),
            "bad_resource_id",
            "names no Cloud SQL instance",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"]["settings"].update(dataDiskSizeGb="-5"),
            "wrong_type",
            "settings.dataDiskSizeGb: expected a non-negative finite number",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"].update(settings=["tier"]),
            "wrong_type",
            "request.body.settings: expected an object",
        ),
        # Review: values of the wrong type were turned into text or numbers.
        (
            lambda e: e["protoPayload"]["request"]["body"].update(region={"a": 1}),
            "wrong_type",
            "request.body.region: expected a non-empty string",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"]["settings"].update(dataDiskSizeGb=True),
            "wrong_type",
            "settings.dataDiskSizeGb: got True",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"]["settings"].update(
                activationPolicy={"x": 1}
            ),
            "wrong_type",
            "settings.activationPolicy: expected a non-empty string",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"]["settings"].update(
                userLabels={"a": {"b": 1}}
            ),
            "wrong_type",
            "userLabels.a: got",
        ),
        (  # a creation removes no label
            lambda e: e["protoPayload"]["request"]["body"]["settings"].update(
                userLabels={"team": None}
            ),
            "wrong_type",
            "userLabels.team: got None",
        ),
        (
            lambda e: e["protoPayload"]["request"]["body"].update(databaseVersion=15),
            "wrong_type",
            "request.body.databaseVersion: expected a non-empty string",
        ),
    ],
)
def test_malformed_cloud_sql_entries_are_rejected_with_a_reason(
    event: Event, mutate: Callable[[dict[str, Any]], Any], reason: str, message: str
) -> None:
    entry = event("gcp_cloudsql_create")
    mutate(entry)
    with pytest.raises(EventRejected, match=message) as info:
        _gcp(entry)
    assert info.value.reason == reason


def test_a_failed_cloud_sql_operation_is_ignored(event: Event) -> None:
    entry = event("gcp_cloudsql_update")
    entry["protoPayload"]["status"] = {"code": 7, "message": "PERMISSION_DENIED"}
    with pytest.raises(EventIgnored, match="failed"):
        _gcp(entry)


def _azure_db(event: Event, **props: Any) -> dict[str, Any]:
    arm = event("arm_sql_database")
    arm["properties"].update(props)
    return {"provider": "azure", "event": event("azure_sql_database_write"), "resource": arm}


def test_an_azure_sql_database_write_takes_its_size_from_the_arm_resource(event: Event) -> None:
    """ARM reports a vCore database's sku as family and capacity (`GP_Gen5` of 4) and its
    service objective (`GP_Gen5_4`), which is how its prices are keyed."""
    [db] = normalize(_azure_db(event))
    assert (db.resource_id, db.resource_type, db.service_name) == (
        AZURE_DB,
        "Microsoft.Sql/servers/databases",
        "SQL Database",
    )
    assert (db.sku, db.region_id, db.state, db.tags) == (
        "GP_Gen5_4",
        "eastus",
        "available",
        {"team": "data"},
    )
    assert dict(db.attributes) == {
        "zone_redundant": False,
        "license_type": "LicenseIncluded",
        "gib": 32.0,  # maxSizeBytes 34359738368: what its storage is billed for
    }


def test_an_azure_sql_resize_is_priced_at_the_size_asked_for(event: Event) -> None:
    """Read back while the resize runs, the database still reports its old objective as
    current: the one requested is what it is billed at within minutes."""
    [db] = normalize(
        _azure_db(
            event,
            currentServiceObjectiveName="GP_Gen5_4",
            requestedServiceObjectiveName="GP_Gen5_2",
        )
    )
    assert db.sku == "GP_Gen5_2"
    arm = _azure_db(event)
    for key in ("currentServiceObjectiveName", "requestedServiceObjectiveName"):
        del arm["resource"]["properties"][key]
    [db] = normalize(arm)
    assert db.sku == "GP_Gen5_4"  # from the sku's family and capacity


def test_azure_sql_master_firewall_rules_and_deletions(event: Event) -> None:
    ev = event("azure_sql_database_write")
    master = ev["data"]["resourceUri"].rsplit("/", 1)[0] + "/master"
    ev["data"]["resourceUri"] = ev["subject"] = master
    with pytest.raises(EventIgnored, match="master database"):
        normalize({"provider": "azure", "event": ev})
    ev = event("azure_sql_database_write")
    rule = ev["data"]["resourceUri"].split("/databases/")[0] + "/firewallRules/office"
    ev["data"]["resourceUri"] = ev["subject"] = rule
    with pytest.raises(EventIgnored, match="sub-resource"):
        normalize({"provider": "azure", "event": ev})
    ev = event("azure_sql_database_write")
    ev["eventType"] = "Microsoft.Resources.ResourceDeleteSuccess"
    ev["data"]["operationName"] = "Microsoft.Sql/servers/databases/delete"
    [gone] = normalize({"provider": "azure", "event": ev})
    assert (gone.resource_id, gone.state) == (AZURE_DB, "deleted")


def test_an_azure_sql_database_re_tagged_through_the_tags_api(event: Event) -> None:
    ev = _tags_resource(event("azure_sql_database_write"))
    arm = event("arm_sql_database")
    arm["tags"] = {"team": "web"}
    [db] = normalize({"provider": "azure", "event": ev, "resource": arm})
    assert (db.resource_id, db.tags, db.sku) == (AZURE_DB, {"team": "web"}, "GP_Gen5_4")


def _container_event(event: Event, uri: str, deleted: bool = True) -> dict[str, Any]:
    ev = event("azure_vm_delete" if deleted else "azure_vm_write")
    ev["data"]["resourceUri"] = ev["subject"] = uri
    return {"provider": "azure", "event": ev}


def test_deleting_a_resource_group_or_a_logical_server_deletes_what_it_holds(
    event: Event,
) -> None:
    """Event Grid raises the deletion of a resource group or a SQL logical server for the
    container only (its VMs, disks, databases go with it): the change names the container,
    which the collector expands to the resources it holds. Written, a container has no
    run-rate of its own: ignored (a resource group's write was refused as a bad ARM id)."""
    group = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/RG-Web"
    [change] = normalize(_container_event(event, group))
    assert (change.resource_id, change.resource_type, change.state, change.contains) == (
        group.lower(),
        "Microsoft.Resources/resourceGroups",
        "deleted",
        True,
    )
    server = AZURE_DB.split("/databases/", maxsplit=1)[0]
    [change] = normalize(_container_event(event, server))
    assert (change.resource_id, change.resource_type, change.contains) == (
        server,
        "Microsoft.Sql/servers",
        True,
    )
    for uri in (group, server):
        with pytest.raises(EventIgnored, match="no run-rate of its own"):
            normalize(_container_event(event, uri, deleted=False))
    # A VM's deletion is the VM's own, not a container's.
    [vm] = normalize({"provider": "azure", "event": event("azure_vm_delete")})
    assert vm.contains is False and vm.state == "deleted"
    # Review: one spelling of a container's id (an extra slash matched nothing); an empty
    # segment is no id.
    [change] = normalize(_container_event(event, "/" + group + "//"))
    assert change.resource_id == group.lower()
    with pytest.raises(EventRejected, match="is not an ARM id"):
        normalize(_container_event(event, "/subscriptions//resourceGroups/rg-web"))
