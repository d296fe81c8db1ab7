"""The bundle is wired to what the other areas built: every command exists in the `cct` CLI,
every `${VAR}` a generated config expands is set, every file a config names is mounted, and
the WorkflowTemplates are the playbooks', runnable under the restricted Pod Security."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

import click
import yaml

from components.kafka import ca_secret
from infra.policypack.checks import check_pod_security, check_resources, pod_spec_of
from lambdas.cli import COMMANDS, HANDLERS, _load
from lambdas.steps.playbooks import PLAYBOOKS
from tests.infra.harness import BuiltStack
from tests.infra.mocks import Registered

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def _named(built: BuiltStack, typ: str, name: str) -> Registered:
    (found,) = [r for r in built.of_type(typ) if r.inputs["metadata"]["name"] == name]
    return found


def _workload(built: BuiltStack, name: str) -> dict[str, Any]:
    for typ in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"):
        for r in built.of_type(typ):
            if r.inputs["metadata"]["name"] == name:
                spec: dict[str, Any] = r.inputs["spec"]["template"]["spec"]
                return spec
    raise AssertionError(f"no workload {name}")


def test_every_handler_runs_a_real_cct_command(built: BuiltStack) -> None:
    for resource in built.resources:
        pod = pod_spec_of(resource.typ, resource.inputs)
        if pod is None:
            continue
        for container in pod["containers"]:
            if container.get("command", [None])[0] != "cct":
                continue
            args = container["command"][1:]
            if args[0] == "serve":
                assert args[1] in HANDLERS, f"{resource.urn}: `cct serve {args[1]}` does not exist"
                continue
            group = _load(COMMANDS[args[0]][0])
            if isinstance(group, click.Group) and len(args) > 1:
                assert args[1] in group.commands, f"{resource.urn}: `cct {' '.join(args)}`"


def test_workflow_templates_are_the_playbooks(built: BuiltStack) -> None:
    templates = built.of_type("kubernetes:argoproj.io/v1alpha1:WorkflowTemplate")
    assert {t.inputs["metadata"]["name"] for t in templates} == {f"cct-{p}" for p in PLAYBOOKS}
    config_maps = {
        r.inputs["metadata"]["name"] for r in built.of_type("kubernetes:core/v1:ConfigMap")
    }
    secrets = {r.inputs["metadata"]["name"] for r in built.of_type("kubernetes:core/v1:Secret")}
    for template in templates:
        spec = template.inputs["spec"]
        assert spec["serviceAccountName"] == "cct-steps", template.urn
        for step in spec["templates"]:
            container = step.get("container")
            if not container:
                continue
            assert container["image"] == built.settings.image, template.urn
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, template.urn
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, template.urn


def test_step_pods_pass_the_restricted_pod_security(built: BuiltStack) -> None:
    (argo,) = [
        r
        for r in built.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs["name"] == "argo-workflows"
    ]
    controller = argo.inputs["values"]["controller"]
    assert controller["workflowRestrictions"] == {"templateReferencing": "Strict"}
    defaults = controller["workflowDefaults"]["spec"]
    (patch,) = json.loads(defaults["podSpecPatch"])["containers"]
    assert patch["name"] == "main"
    template = next(iter(built.of_type("kubernetes:argoproj.io/v1alpha1:WorkflowTemplate")))
    step = next(s["container"] for s in template.inputs["spec"]["templates"] if "container" in s)
    pod = {
        "securityContext": defaults["securityContext"],
        "containers": [{**step, **patch, "name": "main"}],
    }
    props = {"spec": pod}
    assert check_pod_security("kubernetes:core/v1:Pod", props) == []
    assert check_resources("kubernetes:core/v1:Pod", props) == []
    mounts = {m["mountPath"] for m in patch["volumeMounts"]}
    assert (
        "/tmp" in mounts
        and {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in defaults["volumes"]
    )


def _env_names(pod: dict[str, Any]) -> set[str]:
    return {e["name"] for c in pod["containers"] for e in c.get("env", [])}


def test_fluent_bit_gets_every_variable_its_config_expands(built: BuiltStack) -> None:
    config = _named(built, "kubernetes:core/v1:ConfigMap", "fluent-bit-config").inputs["data"]
    wanted = {v for text in config.values() for v in _VAR.findall(text)}
    assert wanted, "the generated config names no tokens"
    assert wanted <= _env_names(_workload(built, "fluent-bit"))
    routes = yaml.safe_load(next(iter(config.values())))["pipeline"]["outputs"]
    assert {r["host"] for r in routes} == {f"collector.{built.settings.namespace}.svc"}


def test_grafana_gets_every_variable_its_provisioning_expands(built: BuiltStack) -> None:
    (grafana,) = [
        r for r in built.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "grafana"
    ]
    values = grafana.inputs["values"]
    wanted = set(_VAR.findall(json.dumps(values["datasources"])))
    assert wanted == set(values["env"]) | set(values["envValueFrom"])


def _secret_keys(built: BuiltStack, name: str) -> set[str]:
    """Keys of a Secret the stack declares, or that Strimzi writes: a KafkaUser's `password`
    and the cluster CA's `ca.crt`."""
    users = {
        r.inputs["metadata"]["name"]
        for r in built.of_type("kubernetes:kafka.strimzi.io/v1beta2:KafkaUser")
    }
    if name in users:
        return {"password"}
    if name == ca_secret():
        assert built.of_type("kubernetes:kafka.strimzi.io/v1beta2:Kafka")
        return {"ca.crt"}
    return set(_named(built, "kubernetes:core/v1:Secret", name).inputs["stringData"])


def _mounted_files(built: BuiltStack, workload: str) -> set[str]:
    pod = _workload(built, workload)
    sources = {v["name"]: v for v in pod.get("volumes", [])}
    files = set()
    for mount in pod["containers"][0].get("volumeMounts", []):
        volume = sources.get(mount["name"], {})  # absent: a StatefulSet's volume claim
        if "secret" in volume:
            keys = _secret_keys(built, volume["secret"]["secretName"])
            files |= {f"{mount['mountPath']}/{k}" for k in keys}
        if "configMap" in volume:
            cm = _named(built, "kubernetes:core/v1:ConfigMap", volume["configMap"]["name"])
            files |= {f"{mount['mountPath']}/{k}" for k in cm.inputs["data"]}
        if mount["name"] == "credentials":  # what the pod's Vault Agent sidecar renders
            agent_map = sources["vault-agent"]["configMap"]["name"]
            agent = _named(built, "kubernetes:core/v1:ConfigMap", agent_map)
            templates = [k for k in agent.inputs["data"] if k.endswith(".ctmpl")]
            files |= {f"{mount['mountPath']}/{k.removesuffix('.ctmpl')}" for k in templates}
    return files


def test_files_named_in_configs_are_mounted(built: BuiltStack) -> None:
    alertmanager = yaml.safe_load(
        _named(built, "kubernetes:core/v1:ConfigMap", "alertmanager-config").inputs["data"][
            "alertmanager.yml"
        ]
    )
    token_files = {
        hook["http_config"]["authorization"]["credentials_file"]
        for receiver in alertmanager["receivers"]
        for hook in receiver.get("webhook_configs", [])
    }
    assert token_files and token_files <= _mounted_files(built, "alertmanager")
    for workload in ("bridge", "collector", "detector", "trigger", "admission"):
        env = {
            e["name"]: e.get("value") for e in _workload(built, workload)["containers"][0]["env"]
        }
        files = _mounted_files(built, workload)
        pod = _workload(built, workload)
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        # A file the handler writes itself (the detector's spool) is on its own claim.
        state_dirs = {
            m["mountPath"]
            for m in pod["containers"][0].get("volumeMounts", [])
            if m["name"] in claims and not m.get("readOnly")
        }
        for name, value in env.items():
            if name.endswith("_FILE"):
                assert value in files or str(PurePosixPath(value).parent) in state_dirs, (
                    f"{workload}: {name}={value} is not mounted"
                )
            if name.endswith("_DIR"):
                assert any(PurePosixPath(f).parent == PurePosixPath(value) for f in files), name


def test_admission_failure_mode_follows_the_webhook(built: BuiltStack) -> None:
    env = {e["name"]: e.get("value") for e in _workload(built, "admission")["containers"][0]["env"]}
    (config,) = built.of_type(
        "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration"
    )
    policy = config.inputs["webhooks"][0]["failurePolicy"]
    assert (policy, env["CCT_ADMISSION_FAILURE_MODE"]) in {("Fail", "closed"), ("Ignore", "open")}


def test_the_webhook_knows_the_workflow_controller_the_chart_deploys(built: BuiltStack) -> None:
    """Only the controller may write the stored spec a Workflow runs from: a name that does
    not match the chart's service account would stop every workflow at its first pass."""
    env = {e["name"]: e.get("value") for e in _workload(built, "admission")["containers"][0]["env"]}
    (argo,) = [
        r
        for r in built.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs["name"] == "argo-workflows"
    ]
    account = argo.inputs["values"]["controller"]["serviceAccount"]
    assert account["create"] is True
    expected = f"system:serviceaccount:{argo.inputs['namespace']}:{account['name']}"
    assert env["CCT_ADMISSION_CONTROLLER_USERS"] == expected


def test_billing_loader_reads_the_aws_export(built: BuiltStack) -> None:
    jobs = built.of_type("kubernetes:batch/v1:CronJob")
    if built.settings.aws is None:
        assert not jobs, "without AWS there is no export to load"
        return
    (job,) = jobs
    container = job.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    (export,) = built.of_type("aws:bcmdata/export:Export")
    (destination,) = export.inputs["export"]["destinationConfigurations"][0]["s3Destinations"]
    uri = f"s3://{destination['s3Bucket']}/{destination['s3Prefix']}/"
    assert container["command"] == ["cct", "billing", "load", uri]


def test_fluent_bit_listens_where_its_service_points(built: BuiltStack) -> None:
    config = _named(built, "kubernetes:core/v1:ConfigMap", "fluent-bit-config").inputs["data"]
    (listener,) = yaml.safe_load(next(iter(config.values())))["pipeline"]["inputs"]
    ports = {
        p["name"]: p["containerPort"]
        for p in _workload(built, "fluent-bit")["containers"][0]["ports"]
    }
    assert ports["http-in"] == listener["port"]
    service = _named(built, "kubernetes:core/v1:Service", "fluent-bit").inputs["spec"]
    # The Service faces the clouds: it publishes the input and nothing else (the metrics
    # port is scraped from the pods).
    assert [p["port"] for p in service["ports"]] == [ports["http-in"]]
    assert service["type"] == "LoadBalancer"
    assert built.outputs["fluentbitEndpoint"].endswith(f":{listener['port']}")


def test_every_served_handler_listens_where_its_service_and_probes_look(
    built: BuiltStack,
) -> None:
    """Handlers bind 127.0.0.1 unless told otherwise; each `cct serve X` pod is told to bind the
    pod's interfaces on the port its container declares, and is probed on the shared shell's
    routes: liveness /healthz, readiness /readyz (lambdas.common.httpshell), except the
    bridge's readiness: /healthz, so a Kafka outage does not stop Zenduty pages."""
    for resource in built.resources:
        pod = pod_spec_of(resource.typ, resource.inputs)
        if pod is None:
            continue
        for container in pod["containers"]:
            command = container.get("command", [])
            if command[:2] != ["cct", "serve"]:
                continue
            prefix = f"CCT_{command[2].upper().replace('-', '_')}"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            ports = {p["containerPort"] for p in container.get("ports", [])}
            assert env.get(f"{prefix}_HOST") == "0.0.0.0", resource.urn
            assert int(env[f"{prefix}_PORT"]) in ports, resource.urn
            live, ready = container["livenessProbe"], container["readinessProbe"]
            assert live["httpGet"]["path"] == "/healthz", resource.urn
            expected = "/healthz" if command[2] == "bridge" else "/readyz"
            assert ready["httpGet"]["path"] == expected, resource.urn
            assert live["httpGet"]["port"] == ready["httpGet"]["port"], resource.urn
            assert ready["httpGet"]["port"] in ports, resource.urn


def test_each_kafka_client_authenticates_as_its_own_kafka_user(built: BuiltStack) -> None:
    """The bridge and the trigger log in as their own KafkaUser over TLS; only the bridge's
    may write the anomalies topic (lambdas.common.kafka.HANDLER_GRANTS)."""
    users = {
        r.inputs["metadata"]["name"]: r.inputs["spec"]
        for r in built.of_type("kubernetes:kafka.strimzi.io/v1beta2:KafkaUser")
    }
    assert set(users) == {"kafka-bridge", "kafka-trigger", "kafka-steps"}
    for workload in ("bridge", "trigger"):
        env = {
            e["name"]: e.get("value") for e in _workload(built, workload)["containers"][0]["env"]
        }
        assert env["CCT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["CCT_KAFKA_USERNAME"] == f"kafka-{workload}"
        assert env["CCT_KAFKA_BOOTSTRAP"].endswith(":9093")
    writers = {
        name
        for name, spec in users.items()
        for acl in spec["authorization"]["acls"]
        if acl["resource"]["name"] == "cct.cost.anomalies" and "Write" in acl["operations"]
    }
    assert writers == {"kafka-bridge"}
    (cluster,) = built.of_type("kubernetes:kafka.strimzi.io/v1beta2:Kafka")
    assert [listener["tls"] for listener in cluster.inputs["spec"]["kafka"]["listeners"]] == [True]


def _pod_labels(built: BuiltStack, name: str) -> dict[str, str]:
    for typ in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"):
        for r in built.of_type(typ):
            if r.inputs["metadata"]["name"] == name:
                labels: dict[str, str] = r.inputs["spec"]["template"]["metadata"]["labels"]
                return labels
    raise AssertionError(f"no workload {name}")


def test_the_detector_and_vmalert_post_to_every_alertmanager_replica(built: BuiltStack) -> None:
    """Alertmanager replicas gossip silences and the notification log, not alerts: an alert
    posted through the ClusterIP Service reaches one replica, and a resolve or an escalation
    that misses the others leaves them firing the old alert. So the detector and vmalert are
    given every replica's own address, as the StatefulSet and its headless Service are built
    (one address, the Service's, for a single replica), and the replicas admit both."""
    (statefulset,) = [
        r
        for r in built.of_type("kubernetes:apps/v1:StatefulSet")
        if r.inputs["metadata"]["name"] == "alertmanager"
    ]
    name, ns = statefulset.inputs["metadata"]["name"], statefulset.inputs["metadata"]["namespace"]
    spec = statefulset.inputs["spec"]
    replicas, governing = int(spec["replicas"]), spec["serviceName"]
    assert (replicas > 1) == built.settings.high_availability
    headless = _named(built, "kubernetes:core/v1:Service", governing).inputs["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (port,) = [int(p["port"]) for p in headless["ports"] if p["name"] == "web"]
    if replicas > 1:
        wanted = [f"http://{name}-{i}.{governing}.{ns}.svc:{port}" for i in range(replicas)]
    else:
        _named(built, "kubernetes:core/v1:Service", name)
        wanted = [f"http://{name}.{ns}.svc:{port}"]

    env = {e["name"]: e.get("value") for e in _workload(built, "detector")["containers"][0]["env"]}
    assert env["CCT_ALERTMANAGER_URL"].split(",") == wanted
    (vmalert,) = _workload(built, "vmalert")["containers"]
    notifiers = [a.partition("=")[2] for a in vmalert["args"] if a.startswith("-notifier.url=")]
    assert notifiers == wanted

    # The pods are addressed directly now: their own ingress policy must admit both clients.
    admitted: list[dict[str, Any]] = []
    pod_labels = spec["template"]["metadata"]["labels"]
    for policy in built.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        rules = policy.inputs["spec"]
        if rules["podSelector"].get("matchLabels", {}).items() <= pod_labels.items():
            for rule in rules.get("ingress", []):
                ports = rule.get("ports") or [{"port": port, "protocol": "TCP"}]  # none: all
                if any(p["port"] == port and p["protocol"] == "TCP" for p in ports):
                    admitted += rule["from"]
    for client in ("detector", "vmalert"):
        labels = _pod_labels(built, client)
        assert any(
            peer.get("namespaceSelector", {}).get("matchLabels")
            == {"kubernetes.io/metadata.name": ns}
            and peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
            for peer in admitted
        ), f"{client} may not reach the Alertmanager replicas on {port}"
