"""Full AWS inventory sync against the moto server: drift in both directions is repaired."""

from __future__ import annotations

import boto3
import psycopg

from lambdas.collector.service import Processor
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
    dsn = collector.processor.settings.pg_dsn
    processor = Processor(
        collector_settings(
            dsn, vm_url, sync_aws_regions=(region,), sync_aws_billing_account_id=f"payer-{uid}"
        )
    )
    await processor.start(background=False)
    try:
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
        assert processor.rollups.live.get(("aws", inst)) is None
    finally:
        await processor.stop()
