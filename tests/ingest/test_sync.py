"""Full AWS inventory sync against the moto server: drift in both directions is repaired."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import psycopg

from lambdas.collector.model import ResourceChange
from lambdas.collector.normalize import AWS_EC2
from lambdas.collector.service import Processor
from lambdas.collector.sync import aws_observed
from tests.ingest.conftest import Collector, collector_settings


async def test_aws_sync_adds_missing_and_removes_vanished_resources(
    collector: Collector, aws_env: str, uid: str, vm_url: str
) -> None:
    region = "eu-west-3"  # a region nothing else in the suite uses on moto
    ec2 = boto3.client("ec2", region_name=region)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.large",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "team", "Value": uid}]}],
    )["Instances"][0]["InstanceId"]
    vol = ec2.create_volume(AvailabilityZone=f"{region}a", Size=50, VolumeType="gp3")["VolumeId"]
    dsn = collector.dsn
    processor = Processor(
        collector_settings(
            dsn, vm_url, sync_aws_regions=(region,), sync_aws_billing_account_id=f"payer-{uid}"
        )
    )
    await processor.start(background=False)
    # Another account's instance in the same region (an organisation's collector hears every
    # account's events; the sync lists its own credentials' account only): never "vanished".
    other = f"i-{abs(hash(uid)) % 16**17:017x}"
    other_run = ResourceChange(
        event_id=f"ev-other-{uid}",
        provider="aws",
        billing_account_id=f"payer-{uid}",
        sub_account_id="999999999999",
        region_id=region,
        service_name=AWS_EC2,
        resource_id=other,
        resource_type="Instance",
        action="RunInstances",
        event_time=datetime.now(UTC),
        state="running",
        sku="m5.large",
    )
    try:
        assert (await processor.submit([other_run], [])).accepted == 1
        await processor.sync_aws()
        with psycopg.connect(dsn) as conn:
            found: dict[str, str] = dict(
                conn.execute(
                    "select resource_id, state from resource_inventory where region_id = %s",
                    (region,),
                ).fetchall()
            )
            assert found[inst] == "running" and found[vol] == "available"
            actions = conn.execute(
                "select distinct action from resource_events where resource_id = %s", (inst,)
            ).fetchall()
            assert actions == [("InventorySync",)]
        # Unchanged resources produce no events on the next sync.
        with psycopg.connect(dsn) as conn:
            before = conn.execute("select count(*) from resource_events").fetchone()
        await processor.sync_aws()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select count(*) from resource_events").fetchone() == before
        # A re-tag (CreateTags, which no forwarded event carries) is drift the sync repairs:
        # the instance's cost moves to its new team.
        ec2.create_tags(Resources=[inst], Tags=[{"Key": "team", "Value": f"{uid}-new"}])
        await processor.sync_aws()
        with psycopg.connect(dsn) as conn:
            [(tags,)] = conn.execute(
                "select tags from resource_inventory where resource_id = %s", (inst,)
            ).fetchall()
        assert tags == {"team": f"{uid}-new"}
        assert f'team="{uid}-new"' in processor.rollups.live[("aws", inst)].labels
        # A terminated instance and deleted volume (events lost) are marked deleted.
        ec2.terminate_instances(InstanceIds=[inst])
        ec2.delete_volume(VolumeId=vol)
        await processor.sync_aws()
        with psycopg.connect(dsn) as conn:
            states: dict[str, str] = dict(
                conn.execute(
                    "select resource_id, state from resource_inventory where resource_id = any(%s)",
                    ([inst, vol],),
                ).fetchall()
            )
        assert states == {inst: "deleted", vol: "deleted"}
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "select state from resource_inventory where resource_id = %s", (other,)
            ).fetchall() == [("running",)]
        assert processor.rollups.live.get(("aws", inst)) is None
    finally:
        await processor.stop()


def test_aws_listing_carries_the_pricing_attributes(aws_env: str, uid: str) -> None:
    """The sync path reports the pricing attributes the events carry: EBS IOPS and
    throughput, RDS storage type, size and IOPS."""
    region = "ap-southeast-2"  # a region no other test lists
    ec2 = boto3.client("ec2", region_name=region)
    vol = ec2.create_volume(
        AvailabilityZone=f"{region}a", Size=100, VolumeType="gp3", Iops=6000, Throughput=250
    )["VolumeId"]
    db = boto3.client("rds", region_name=region).create_db_instance(
        DBInstanceIdentifier=f"db-{uid}",
        DBInstanceClass="db.m5.large",
        Engine="postgres",
        AllocatedStorage=100,
        StorageType="io1",
        Iops=3000,
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-0",
    )["DBInstance"]["DBInstanceArn"]
    now = datetime.now(UTC)
    observed = {c.resource_id: c for c in aws_observed(region, now, "payer-1", "sync:test")}
    assert observed[vol].attributes == {"gib": 100.0, "iops": 6000.0, "throughput": 250.0}
    assert {k: observed[db].attributes[k] for k in ("storage_type", "iops", "gib")} == {
        "storage_type": "io1",
        "iops": 3000.0,
        "gib": 100.0,
    }
