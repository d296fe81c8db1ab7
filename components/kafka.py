"""Kafka: the Strimzi operator (official chart), one KRaft cluster and CCT's topics.

Kafka runs in KRaft mode with one node pool whose nodes are both controllers and brokers;
production sizes it to three nodes so losing one keeps both the controller quorum and
`min.insync.replicas=2` for every topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.namespace import EGRESS_KUBE_API_LABEL

STRIMZI_CHART = "strimzi-kafka-operator"
STRIMZI_VERSION = "0.48.0"
KAFKA_VERSION = "4.1.0"
METADATA_VERSION = "4.1-IV1"
API_VERSION = "kafka.strimzi.io/v1beta2"
# The only client listener: TLS with SCRAM-SHA-512 (each handler a KafkaUser).
TLS_PORT = 9093
METRICS_PORT = 9404


def user_secret(handler: str) -> str:
    """The KafkaUser (and so the Secret with its `password`) of a handler."""
    return f"kafka-{handler}"


def ca_secret(cluster: str = "cct") -> str:
    """Strimzi's Secret with the cluster CA (`ca.crt`) that clients verify brokers with."""
    return f"{cluster}-cluster-ca-cert"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    # Extra topic configuration (e.g. cleanup.policy), merged over the defaults.
    config: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class KafkaArgs:
    namespace: str
    operator_namespace: str
    topics: Sequence[TopicSpec]
    # Pods (network peers) allowed to reach the listener: the bridge, the trigger, the steps.
    clients: Sequence[Mapping[str, Any]]
    # KafkaUser name -> its ACLs in Strimzi's form ({resource, operations}); each user may
    # only produce and consume its own topics (lambdas.common.kafka.HANDLER_GRANTS).
    users: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    cluster_name: str = "cct"
    replicas: int = 1
    storage_size: str = "20Gi"
    storage_class: str | None = None
    high_availability: bool = False
    operator_version: str = STRIMZI_VERSION
    kafka_version: str = KAFKA_VERSION
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("250m", "1Gi", "2", "2Gi")
    )

    def __post_init__(self) -> None:
        if self.high_availability and self.replicas < 3:
            raise ValueError("high_availability needs at least 3 Kafka nodes")
        names = [t.name for t in self.topics]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate topic names in {names}")
        if not kube.is_exact_version(self.kafka_version):
            raise ValueError(f"kafka_version {self.kafka_version!r} must be an exact version")

    @property
    def min_insync(self) -> int:
        return 2 if self.replicas >= 3 else 1


class Kafka(pulumi.ComponentResource):
    bootstrap: pulumi.Output[str]
    topic_names: pulumi.Output[list[str]]
    # The Secret holding the cluster CA (`ca.crt`) clients verify the brokers with; each
    # KafkaUser's password is in a Secret of the user's name (key `password`).
    ca_secret: str

    def __init__(
        self, name: str, args: KafkaArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:events:Kafka", name, None, opts)
        child = kube.child_opts(self, opts)
        ns, cluster = args.namespace, args.cluster_name
        operator = kube.helm_release(
            f"{name}-strimzi",
            chart=STRIMZI_CHART,
            version=args.operator_version,
            namespace=args.operator_namespace,
            values={
                "watchNamespaces": [ns],
                "watchAnyNamespace": False,
                "replicas": 2 if args.high_availability else 1,
                "resources": kube.Resources("100m", "384Mi", "1", "512Mi").to_k8s(),
                # Strimzi then sets restricted-compliant security contexts on Kafka's pods.
                "extraEnvs": [
                    {"name": "STRIMZI_POD_SECURITY_PROVIDER_CLASS", "value": "restricted"}
                ],
                "securityContext": kube.container_security_context(),
                "podSecurityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                # The operator reconciles through the API server (the chart's pod labels,
                # templates/060-Deployment-strimzi-cluster-operator.yaml).
                "labels": {EGRESS_KUBE_API_LABEL: "true"},
            },
            opts=child,
        )
        after_operator = pulumi.ResourceOptions.merge(
            child, pulumi.ResourceOptions(depends_on=[operator])
        )
        cluster_labels = {"strimzi.io/cluster": cluster, **kube.labels(cluster, "events")}
        storage: dict[str, Any] = {
            "type": "persistent-claim",
            "size": args.storage_size,
            "deleteClaim": False,
            "kraftMetadata": "shared",
            "id": 0,
        }
        if args.storage_class:
            storage["class"] = args.storage_class
        pool_template: dict[str, Any] = {}
        if args.high_availability:
            pool_template["pod"] = {
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"strimzi.io/cluster": cluster}
                                    },
                                },
                            }
                        ]
                    }
                }
            }
        pool = k8s.apiextensions.CustomResource(
            f"{name}-pool",
            api_version=API_VERSION,
            kind="KafkaNodePool",
            metadata={"name": f"{cluster}-dual", "namespace": ns, "labels": cluster_labels},
            spec={
                "replicas": args.replicas,
                "roles": ["controller", "broker"],
                "storage": {"type": "jbod", "volumes": [storage]},
                "resources": args.resources.to_k8s(),
                "template": pool_template,
            },
            opts=after_operator,
        )
        rf = min(args.replicas, 3)
        kafka = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version=API_VERSION,
            kind="Kafka",
            metadata={
                "name": cluster,
                "namespace": ns,
                # No `strimzi.io/kraft`/`node-pools` annotations: Strimzi 0.48 ignores them.
                "labels": kube.labels(cluster, "events"),
            },
            spec={
                "kafka": {
                    "version": args.kafka_version,
                    "metadataVersion": METADATA_VERSION,
                    "listeners": [
                        {
                            "name": "tls",
                            "port": TLS_PORT,
                            "type": "internal",
                            "tls": True,
                            # Every client proves who it is; no plaintext listener exists.
                            "authentication": {"type": "scram-sha-512"},
                            # Strimzi turns this into the listener's NetworkPolicy.
                            "networkPolicyPeers": list(args.clients),
                        }
                    ],
                    # ACLs of the KafkaUsers; nothing is allowed without one.
                    "authorization": {"type": "simple"},
                    "config": {
                        "default.replication.factor": rf,
                        "min.insync.replicas": args.min_insync,
                        "offsets.topic.replication.factor": rf,
                        "transaction.state.log.replication.factor": rf,
                        "transaction.state.log.min.isr": args.min_insync,
                        "auto.create.topics.enable": False,
                    },
                    "metricsConfig": {
                        "type": "jmxPrometheusExporter",
                        "valueFrom": {
                            "configMapKeyRef": {"name": f"{cluster}-metrics", "key": "kafka.yaml"}
                        },
                    },
                    "template": {
                        "pod": {"metadata": {"annotations": kube.scrape_annotations(METRICS_PORT)}}
                    },
                },
                # The topic and user operators watch KafkaTopics/KafkaUsers and write the
                # users' Secrets through the API server. The brokers do not use the API: Strimzi
                # adds its API-reading init container only for `rack` or nodeport listeners.
                "entityOperator": {
                    "topicOperator": {"resources": kube.Resources().to_k8s()},
                    "userOperator": {"resources": kube.Resources().to_k8s()},
                    "template": {"pod": {"metadata": {"labels": {EGRESS_KUBE_API_LABEL: "true"}}}},
                },
            },
            opts=pulumi.ResourceOptions.merge(
                after_operator, pulumi.ResourceOptions(depends_on=[pool])
            ),
        )
        k8s.core.v1.ConfigMap(
            f"{name}-metrics",
            metadata=kube.metadata(f"{cluster}-metrics", ns, "events"),
            data={"kafka.yaml": 'lowercaseOutputName: true\nrules:\n  - pattern: ".*"\n'},
            opts=child,
        )
        topic_opts = pulumi.ResourceOptions.merge(
            after_operator, pulumi.ResourceOptions(depends_on=[kafka])
        )
        for topic in args.topics:
            k8s.apiextensions.CustomResource(
                f"{name}-topic-{topic.name}",
                api_version=API_VERSION,
                kind="KafkaTopic",
                metadata={"name": topic.name, "namespace": ns, "labels": cluster_labels},
                spec={
                    "topicName": topic.name,
                    "partitions": topic.partitions,
                    "replicas": rf,
                    "config": {
                        "retention.ms": topic.retention_ms,
                        "min.insync.replicas": args.min_insync,
                        **topic.config,
                    },
                },
                opts=topic_opts,
            )
        for user, acls in sorted(args.users.items()):
            k8s.apiextensions.CustomResource(
                f"{name}-user-{user}",
                api_version=API_VERSION,
                kind="KafkaUser",
                metadata={"name": user, "namespace": ns, "labels": cluster_labels},
                spec={
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": [dict(a) for a in acls]},
                },
                opts=topic_opts,
            )
        self.ca_secret = ca_secret(cluster)
        self.bootstrap = pulumi.Output.from_input(f"{cluster}-kafka-bootstrap.{ns}.svc:{TLS_PORT}")
        self.topic_names = pulumi.Output.from_input([t.name for t in args.topics])
        self.register_outputs({"bootstrap": self.bootstrap, "topic_names": self.topic_names})
