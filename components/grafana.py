"""Grafana (official chart) with CCT's datasources and dashboards provisioned.

The provisioning documents (datasources with fixed uids, the dashboard provider) and the
dashboards are inputs, shipped unchanged from `dashboards/`. The documents refer to
environment variables (`${NAME}`) for URLs and credentials; this component sets them, the
credentials only from Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from components.derived import derived_secret

CHART = "grafana"
CHART_VERSION = "10.1.4"
IMAGE = "docker.io/grafana/grafana:12.2.1"
PORT = 3000
# The chart mounts dashboardsConfigMaps[<provider>] here.
DASHBOARDS_ROOT = "/var/lib/grafana/dashboards"


@dataclass(frozen=True)
class GrafanaArgs:
    namespace: str
    # Grafana provisioning documents: datasources (each with a fixed uid) and one file
    # dashboard provider.
    datasources: Mapping[str, Any]
    dashboard_providers: Mapping[str, Any]
    # filename -> dashboard JSON text.
    dashboards: Mapping[str, str]
    # The stack secret the admin password is derived from (components.derived).
    secret_seed: pulumi.Input[str]
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, kube.SecretEnv] = field(default_factory=dict)
    # Who may reach the UI (the ingress controller's pods); defaults to anywhere.
    clients: Sequence[Mapping[str, Any]] = (kube.ANYWHERE,)
    hostname: str | None = None
    replicas: int = 1
    high_availability: bool = False
    chart_version: str = CHART_VERSION
    image: str = IMAGE
    resources: kube.Resources = field(
        default_factory=lambda: kube.Resources("100m", "256Mi", "1", "512Mi")
    )

    def __post_init__(self) -> None:
        kube.require_pinned_image(self.image, "grafana")
        uids = [d.get("uid") for d in self.datasources.get("datasources", [])]
        if not uids or None in uids or len(set(uids)) != len(uids):
            raise ValueError(f"every datasource needs a unique uid, got {uids}")
        providers = self.dashboard_providers.get("providers", [])
        if len(providers) != 1:
            raise ValueError("exactly one dashboard provider is expected")
        expected = f"{DASHBOARDS_ROOT}/{providers[0].get('name')}"
        if providers[0].get("options", {}).get("path") != expected:
            raise ValueError(f"the dashboard provider must read {expected}, where the chart mounts")
        if not self.dashboards:
            raise ValueError("dashboards must not be empty")

    @property
    def provider_name(self) -> str:
        return str(self.dashboard_providers["providers"][0]["name"])


class Grafana(pulumi.ComponentResource):
    url: pulumi.Output[str]
    admin_secret_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: GrafanaArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("cct:ui:Grafana", name, None, opts)
        child = kube.child_opts(self, opts)
        ns, app = args.namespace, "grafana"
        admin_password = derived_secret(args.secret_seed, f"grafana/{ns}/admin")
        admin = k8s.core.v1.Secret(
            f"{name}-admin",
            metadata=kube.metadata(f"{app}-admin", ns, "ui"),
            string_data={"admin-user": "admin", "admin-password": admin_password},
            opts=child,
        )
        dashboards = k8s.core.v1.ConfigMap(
            f"{name}-dashboards",
            metadata=kube.metadata(f"{app}-dashboards", ns, "ui"),
            data=dict(args.dashboards),
            opts=child,
        )
        repository, tag = args.image.rsplit(":", 1)
        registry, _, repo_path = repository.partition("/")
        ha = args.high_availability
        values: dict[str, Any] = {
            "replicas": args.replicas,
            "image": {"registry": registry, "repository": repo_path, "tag": tag},
            "admin": {
                "existingSecret": f"{app}-admin",
                "userKey": "admin-user",
                "passwordKey": "admin-password",
            },
            "resources": args.resources.to_k8s(),
            "securityContext": kube.pod_security_context()
            | {"runAsUser": 472, "runAsGroup": 472, "fsGroup": 472},
            "containerSecurityContext": kube.container_security_context(),
            # The chart mounts writable volumes for data and provisioning only; Grafana also
            # writes scratch files to /tmp (grafana-community/helm-charts#729).
            "extraVolumes": [kube.tmp_volume()],
            "extraVolumeMounts": [kube.TMP_MOUNT],
            "podAnnotations": kube.scrape_annotations(PORT),
            "persistence": {"enabled": False},
            "env": dict(args.env),
            "envValueFrom": {
                env: {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}
                for env, ref in sorted(args.secret_env.items())
            },
            "datasources": {"cct.yaml": dict(args.datasources)},
            "dashboardProviders": {"cct.yaml": dict(args.dashboard_providers)},
            "dashboardsConfigMaps": {args.provider_name: f"{app}-dashboards"},
            "grafana.ini": {
                "analytics": {"reporting_enabled": False, "check_for_updates": False},
                "users": {"allow_sign_up": False},
                "auth.anonymous": {"enabled": False},
            },
            "podDisruptionBudget": {"maxUnavailable": 1} if ha else {},
            "affinity": kube.anti_affinity(app) if ha else {},
        }
        if args.hostname:
            values["ingress"] = {
                "enabled": True,
                "hosts": [args.hostname],
                "tls": [{"hosts": [args.hostname], "secretName": f"{app}-tls"}],
            }
            values["grafana.ini"]["server"] = {"root_url": f"https://{args.hostname}"}
        kube.helm_release(
            f"{name}-chart",
            chart=CHART,
            version=args.chart_version,
            namespace=ns,
            values=values,
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[admin, dashboards])
            ),
        )
        kube.ingress_policy(
            f"{name}-ingress",
            f"{app}-ingress",
            ns,
            "ui",
            pod_selector={"app.kubernetes.io/name": app},
            ports=[PORT],
            peers=list(args.clients),
            opts=child,
        )
        self.url = pulumi.Output.from_input(
            f"https://{args.hostname}" if args.hostname else f"http://{app}.{ns}.svc:80"
        )
        self.admin_secret_name = admin.metadata.name
        self.register_outputs({"url": self.url, "admin_secret_name": self.admin_secret_name})
