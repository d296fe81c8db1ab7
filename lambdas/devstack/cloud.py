"""The local stack's AWS: API calls on the moto server, and the EventBridge events AWS would
emit for them, delivered through the real forwarder code to the collector.

In production an API call lands in CloudTrail, EventBridge matches it (the forwarder's
`event_pattern`) and invokes the forwarder Lambda, which posts to the collector. Here each
call is made on moto and the same "AWS API Call via CloudTrail" event is built from the
call's request and moto's response, then handed to `lambdas.forwarders.aws.handle` with the
collector's URL and token: the collector sees exactly what a forwarder sends. CloudWatch
utilization (what the steps' analyze reads) is written to moto's CloudWatch.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import requests

from lambdas.forwarders import aws
from lambdas.forwarders.common import Forwarder, ForwarderSettings

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"


# One client per service for every simulator of the process: making a boto3 client parses
# the service's model (seconds for EC2 on a busy machine), and every simulator talks to the
# same moto server with the same key.
_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_IMAGE: dict[str, str] = {}


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


@dataclass
class AwsSimulator:
    """moto_url: the moto server; collector_url/collector_token: where forwarders post
    (the collector's /ingest). account: the AWS account the events come from; moto serves
    every call from its own account, so a fresh account per test run or benchmark sample
    keeps per-account policy counts (blast radius) and dashboards apart."""

    moto_url: str
    collector_url: str
    collector_token: str
    account: str = ACCOUNT
    # Deliveries of one event before giving up. The forwarder's own 5 attempts span a few
    # seconds; production's platform retries a failed invocation for hours, which a fault
    # run plays by allowing more attempts while a collector restarts.
    forward_attempts: int = 5
    # When the last API call changed the cloud (epoch seconds): the start of the pipeline's
    # latency, after the simulator's own set-up (clients, image lookup).
    changed_at: float = field(default=0.0, compare=False)

    def client(self, service: str) -> Any:
        with _CLIENTS_LOCK:
            key = (self.moto_url, service)
            if key not in _CLIENTS:
                _CLIENTS[key] = boto3.client(  # type: ignore[call-overload]  # runtime name
                    service,
                    endpoint_url=self.moto_url,
                    region_name=REGION,
                    aws_access_key_id="simulator",
                    aws_secret_access_key="simulator",  # noqa: S106 - moto accepts any key
                )
            return _CLIENTS[key]

    def forward(
        self,
        source: str,
        name: str,
        request: dict[str, Any],
        response: Any,
        actor: str | None = None,
    ) -> str:
        """Post the CloudTrail event of one API call through the AWS forwarder; its id.
        `actor`: the caller's ARN (the simulator's developer role by default)."""
        self.changed_at = time.time()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event_id = str(uuid.uuid4())
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "AWS API Call via CloudTrail",
            "source": source,
            "account": self.account,
            "time": now,
            "region": REGION,
            "resources": [],
            "detail": {
                "eventVersion": "1.08",
                "userIdentity": {
                    "type": "AssumedRole",
                    "arn": actor or f"arn:aws:sts::{self.account}:assumed-role/Developer/simulator",
                    "accountId": self.account,
                },
                "eventTime": now,
                "eventSource": f"{source.split('.')[1]}.amazonaws.com",
                "eventName": name,
                "awsRegion": REGION,
                "requestParameters": request,
                "responseElements": response,
                "eventID": event_id,
                "readOnly": False,
                "eventType": "AwsApiCall",
                "managementEvent": True,
                "recipientAccountId": self.account,
            },
        }
        settings = ForwarderSettings(
            endpoint=self.collector_url,
            token=self.collector_token,
            billing_account_id=self.account,
            max_attempts=self.forward_attempts,
        )
        result = aws.handle(event, Forwarder(settings, "aws"))
        if result.sent != 1:
            raise RuntimeError(f"the forwarder did not send {name}: {dict(result.dropped)}")
        return event_id

    # ------------------------------------------------------------------ EC2
    def image_id(self) -> str:
        """An AMI moto knows: listing them all takes seconds (moto ships thousands), so the
        first is looked up once per process."""
        if "image" not in _IMAGE:
            _IMAGE["image"] = self.client("ec2").describe_images()["Images"][0]["ImageId"]
        return _IMAGE["image"]

    def run_instance(self, instance_type: str, tags: Mapping[str, str]) -> str:
        ec2 = self.client("ec2")
        image = self.image_id()
        spec = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
        out = ec2.run_instances(
            ImageId=image,
            InstanceType=instance_type,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=spec,
        )
        inst = out["Instances"][0]
        response = {
            "reservationId": out["ReservationId"],
            "ownerId": self.account,
            "instancesSet": {
                "items": [
                    {
                        "instanceId": inst["InstanceId"],
                        "imageId": image,
                        "instanceState": {"code": 0, "name": "pending"},
                        "instanceType": instance_type,
                        "placement": {"availabilityZone": inst["Placement"]["AvailabilityZone"]},
                        "platformDetails": "Linux/UNIX",
                        "tagSet": {"items": _tags(tags)},
                    }
                ]
            },
        }
        request = {
            "instancesSet": {"items": [{"imageId": image, "minCount": 1, "maxCount": 1}]},
            "instanceType": instance_type,
            "tagSpecificationSet": {"items": [{"resourceType": "instance", "tags": _tags(tags)}]},
        }
        self.forward("aws.ec2", "RunInstances", request, response)
        return str(inst["InstanceId"])

    def instance_state(self, instance_id: str) -> str:
        out = self.client("ec2").describe_instances(InstanceIds=[instance_id])
        return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])

    def trail_instance_state(self, instance_id: str, actor: str) -> str:
        """CloudTrail's record of a state change someone else made on moto (a workflow step
        stopping an instance with its Vault-issued role): moto keeps no trail, so the
        StopInstances, StartInstances or TerminateInstances event AWS would emit for the
        instance's current state is built here and forwarded like the simulator's own calls.
        The event id."""
        state = self.instance_state(instance_id)
        names = {"stopped": "StopInstances", "running": "StartInstances"}
        name = names.get(state, "TerminateInstances" if state == "terminated" else "")
        if not name:
            raise ValueError(f"instance {instance_id} is {state}: no call leads to that state")
        item = {"instanceId": instance_id, "currentState": {"name": state}}
        request = {"instancesSet": {"items": [{"instanceId": instance_id}]}}
        return self.forward("aws.ec2", name, request, {"instancesSet": {"items": [item]}}, actor)

    # ------------------------------------------------------------------ EBS
    def create_volume(self, size_gb: int, volume_type: str, tags: Mapping[str, str]) -> str:
        ec2 = self.client("ec2")
        spec = [
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
        out = ec2.create_volume(
            Size=size_gb,
            AvailabilityZone=f"{REGION}a",
            VolumeType=volume_type,
            TagSpecifications=spec,
        )
        request = {
            "size": str(size_gb),
            "zone": f"{REGION}a",
            "volumeType": volume_type,
            "tagSpecificationSet": {"items": [{"resourceType": "volume", "tags": _tags(tags)}]},
        }
        response = {
            "volumeId": out["VolumeId"],
            "size": str(size_gb),
            "zone": f"{REGION}a",
            "status": "creating",
            "volumeType": volume_type,
        }
        self.forward("aws.ec2", "CreateVolume", request, response)
        return str(out["VolumeId"])

    def modify_volume(self, volume_id: str, size_gb: int) -> None:
        ec2 = self.client("ec2")
        before = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        ec2.modify_volume(VolumeId=volume_id, Size=size_gb)
        request = {"ModifyVolumeRequest": {"VolumeId": volume_id, "Size": size_gb}}
        response = {
            "ModifyVolumeResponse": {
                "volumeModification": {
                    "volumeId": volume_id,
                    "modificationState": "modifying",
                    "targetSize": size_gb,
                    "targetVolumeType": before["VolumeType"],
                    "originalSize": before["Size"],
                    "originalVolumeType": before["VolumeType"],
                    "progress": 0,
                }
            }
        }
        self.forward("aws.ec2", "ModifyVolume", request, response)

    def volume_exists(self, volume_id: str) -> bool:
        vols = self.client("ec2").describe_volumes(
            Filters=[{"Name": "volume-id", "Values": [volume_id]}]
        )["Volumes"]
        return bool(vols)

    # ------------------------------------------------------------------ RDS
    def create_database(self, name: str, db_class: str, tags: Mapping[str, str]) -> str:
        """The database's ARN, which is how CloudTrail and the collector name it."""
        rds = self.client("rds")
        out = rds.create_db_instance(
            DBInstanceIdentifier=name,
            DBInstanceClass=db_class,
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="cct",
            MasterUserPassword=uuid.uuid4().hex,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["DBInstance"]
        request = {
            "dBInstanceIdentifier": name,
            "allocatedStorage": 20,
            "dBInstanceClass": db_class,
            "engine": "postgres",
            "multiAZ": False,
            "tags": _tags(tags),
            "storageType": "gp2",
        }
        response = {
            "dBInstanceIdentifier": name,
            "dBInstanceClass": db_class,
            "engine": "postgres",
            "dBInstanceStatus": "creating",
            "allocatedStorage": 20,
            "storageType": "gp2",
            "multiAZ": False,
            "dBInstanceArn": self.db_arn(name),
            "dbiResourceId": out.get("DbiResourceId", ""),
        }
        self.forward("aws.rds", "CreateDBInstance", request, response)
        return self.db_arn(name)

    def db_arn(self, name: str) -> str:
        return f"arn:aws:rds:{REGION}:{self.account}:db:{name}"

    def modify_database(self, name: str, db_class: str) -> None:
        rds = self.client("rds")
        out = rds.modify_db_instance(
            DBInstanceIdentifier=name, DBInstanceClass=db_class, ApplyImmediately=True
        )["DBInstance"]
        request = {
            "dBInstanceIdentifier": name,
            "dBInstanceClass": db_class,
            "applyImmediately": True,
        }
        response = {
            "dBInstanceIdentifier": name,
            "dBInstanceClass": out["DBInstanceClass"],
            "engine": "postgres",
            "dBInstanceStatus": "available",
            "dBInstanceArn": self.db_arn(name),
        }
        self.forward("aws.rds", "ModifyDBInstance", request, response)

    def database_class(self, arn_or_name: str) -> str:
        name = arn_or_name.rsplit(":db:", 1)[-1]
        out = self.client("rds").describe_db_instances(DBInstanceIdentifier=name)
        return str(out["DBInstances"][0]["DBInstanceClass"])

    # ------------------------------------------------------------------ CloudWatch
    def put_cpu(
        self,
        namespace: str,
        dimension: str,
        value: str,
        *,
        avg: float,
        peak: float,
        hours: int = 48,
    ) -> None:
        """Hourly CPU utilization statistics for the last `hours`, as CloudWatch keeps them."""
        cw = self.client("cloudwatch")
        now = datetime.now(UTC)
        points = [
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": dimension, "Value": value}],
                "Timestamp": now - timedelta(hours=h, minutes=30),
                "StatisticValues": {
                    "SampleCount": 60,
                    "Sum": avg * 60,
                    "Minimum": 0.0,
                    "Maximum": peak,
                },
                "Unit": "Percent",
            }
            for h in range(hours)
        ]
        for start in range(0, len(points), 20):
            cw.put_metric_data(Namespace=namespace, MetricData=points[start : start + 20])


# ---------------------------------------------------------------------- Azure and GCP
# A user's view of the Azure and GCP simulators (lambdas/devstack/azure_sim.py, gcp_sim.py):
# the same public API calls a user's tooling makes; the simulators raise the providers'
# events for them and push them through the real forwarders.


SQL_API_VERSION = "2021-11-01"


@dataclass
class AzureUser:
    """Signs in with client credentials (`user_file`: tenant, client_id, client_secret) and
    calls ARM in `subscription`."""

    base_url: str
    user_file: str
    subscription: str
    location: str = "eastus"

    def token(self) -> str:
        me = json.loads(Path(self.user_file).read_text())
        resp = requests.post(
            f"{self.base_url}/{me['tenant']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": me["client_id"],
                "client_secret": me["client_secret"],
                "scope": "https://management.azure.com/.default",
            },
            timeout=10,
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def arm(self, method: str, rid: str, api: str, body: Any = None, **query: str) -> Any:
        resp = requests.request(
            method,
            f"{self.base_url}{rid}",
            params={"api-version": api, **query},
            json=body,
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json() if resp.content else {}

    def vm_id(self, group: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{group}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )

    def create_vm(self, group: str, name: str, size: str, tags: Mapping[str, str]) -> str:
        """PUT a VM; its ARM id (as Event Grid names it)."""
        rid = self.vm_id(group, name)
        body = {
            "location": self.location,
            "tags": dict(tags),
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {"osDisk": {"osType": "Linux", "createOption": "FromImage"}},
            },
        }
        self.arm("PUT", rid, "2024-07-01", body)
        return rid

    def delete_group(self, group: str) -> None:
        """DELETE a resource group, with everything in it."""
        self.arm(
            "DELETE", f"/subscriptions/{self.subscription}/resourceGroups/{group}", "2021-04-01"
        )

    def merge_tags(self, rid: str, tags: Mapping[str, str]) -> None:
        """Set some tags through the Tags API (as the portal and `az tag update` do)."""
        body = {"operation": "Merge", "properties": {"tags": dict(tags)}}
        self.arm("PATCH", f"{rid}/providers/Microsoft.Resources/tags/default", "2021-04-01", body)

    def power_state(self, rid: str) -> str:
        vm = self.arm("GET", rid, "2024-07-01", **{"$expand": "instanceView"})
        codes = [s["code"] for s in vm["properties"]["instanceView"]["statuses"]]
        return next(c.split("/", 1)[1] for c in codes if c.startswith("PowerState/"))

    def tags(self, rid: str) -> dict[str, str]:
        return dict(self.arm("GET", rid, "2024-07-01").get("tags") or {})

    def create_sql_database(
        self, group: str, server: str, name: str, objective: str, tags: Mapping[str, str]
    ) -> str:
        """PUT a vCore SQL database (32 GB maximum size, licence included); its ARM id."""
        rid = (
            f"/subscriptions/{self.subscription}/resourceGroups/{group}/providers/"
            f"Microsoft.Sql/servers/{server}/databases/{name}"
        )
        body = {
            "location": self.location,
            "tags": dict(tags),
            "sku": {"name": objective},
            "properties": {"maxSizeBytes": 32 * 2**30},
        }
        self.arm("PUT", rid, SQL_API_VERSION, body)
        return rid

    def sql_objective(self, rid: str) -> str:
        db = self.arm("GET", rid, SQL_API_VERSION)
        return str(db["properties"]["currentServiceObjectiveName"])


@dataclass
class GcpUser:
    """Calls the Compute API in `project` with the user's OAuth2 token (`token_file`)."""

    base_url: str
    token_file: str
    project: str
    zone: str = "us-central1-a"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A Compute Engine call in the user's zone."""
        return self._call(
            method, f"/compute/v1/projects/{self.project}/zones/{self.zone}{path}", body
        )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        token = Path(self.token_file).read_text().strip()
        resp = requests.request(
            method,
            f"{self.base_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()

    def insert_sql_instance(
        self, name: str, tier: str, labels: Mapping[str, str], disk_gb: int = 100
    ) -> str:
        """Cloud SQL instances.insert (PostgreSQL 15, zonal, an SSD of `disk_gb`); the
        instance's full asset name, as the collector keys it."""
        self._call(
            "POST",
            f"/v1/projects/{self.project}/instances",
            {
                "name": name,
                "databaseVersion": "POSTGRES_15",
                "region": self.zone.rsplit("-", 1)[0],
                "settings": {
                    "tier": tier,
                    "availabilityType": "ZONAL",
                    "dataDiskSizeGb": str(disk_gb),
                    "dataDiskType": "PD_SSD",
                    "userLabels": dict(labels),
                },
            },
        )
        return f"//cloudsql.googleapis.com/projects/{self.project}/instances/{name}"

    def sql_instance(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/v1/projects/{self.project}/instances/{name}")
        return found

    def insert_instance(self, name: str, machine_type: str, labels: Mapping[str, str]) -> str:
        """instances.insert; the instance's full asset name, as the collector keys it."""
        self.call(
            "POST",
            "/instances",
            {
                "name": name,
                "machineType": f"zones/{self.zone}/machineTypes/{machine_type}",
                "labels": dict(labels),
                "disks": [
                    {
                        "boot": True,
                        "autoDelete": True,
                        "initializeParams": {
                            "sourceImage": "projects/debian-cloud/global/images/family/debian-12"
                        },
                    }
                ],
                "networkInterfaces": [{"network": "global/networks/default"}],
            },
        )
        return f"//compute.googleapis.com/{self.name(name)}"

    def name(self, instance: str) -> str:
        return f"projects/{self.project}/zones/{self.zone}/instances/{instance}"

    def instance(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"/instances/{name}")
        return found
