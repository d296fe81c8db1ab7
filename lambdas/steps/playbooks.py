"""The remediation playbooks as data.

Both workflow backends read this module: the Argo WorkflowTemplates
(`lambdas.steps.templates`) and the trigger's local backend run the same `cct step NAME`
entrypoints in the order given by `Playbook.steps`, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

STEPS: Final[tuple[str, ...]] = ("analyze", "plan", "approve", "execute", "verify", "record")

# Exit codes of `cct step NAME` (docs/architecture.md, section 6).
EXIT_OK: Final = 0
EXIT_PERMANENT: Final = 1
EXIT_INVALID_INPUT: Final = 65
EXIT_RETRYABLE: Final = 75


@dataclass(frozen=True)
class RetryPolicy:
    """How a backend retries a step that exited 75 (retryable).

    limit: retries after the first attempt; 4 covers a throttling burst of about a minute.
    backoff_s / factor / max_backoff_s: exponential delay between attempts, in seconds.
    """

    limit: int = 4
    backoff_s: float = 5.0
    factor: float = 2.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(min(self.backoff_s * self.factor ** (attempt - 1), self.max_backoff_s))


@dataclass(frozen=True)
class Playbook:
    """One remediation playbook.

    actions: provider -> name of the registry action (`lambdas.steps.registry.ACTIONS`) that
        `execute` runs for that provider.
    requires_approval: a human must approve even when policy allows (databases: a resize
        restarts the instance, so a person picks the moment).
    step_timeout_s: per-step deadline (Argo activeDeadlineSeconds; the local backend kills
        the subprocess after it). `execute` waits for stop/start and cloud operations, so
        it gets longer.
    """

    name: str
    description: str
    actions: MappingProxyType[str, str]
    requires_approval: bool = False
    steps: tuple[str, ...] = STEPS
    step_timeout_s: MappingProxyType[str, int] = field(
        default_factory=lambda: MappingProxyType(
            {
                "analyze": 120,
                "plan": 60,
                "approve": 60,
                "execute": 1800,
                "verify": 600,
                "record": 60,
            }
        )
    )
    retry: RetryPolicy = RetryPolicy()


def _pb(name: str, description: str, actions: dict[str, str], approval: bool = False) -> Playbook:
    return Playbook(name, description, MappingProxyType(actions), requires_approval=approval)


PLAYBOOKS: Final[MappingProxyType[str, Playbook]] = MappingProxyType(
    {
        p.name: p
        for p in (
            _pb(
                "rightsize-compute",
                "Resize an over-provisioned VM to the smallest size that keeps CPU under the "
                "target, from the provider's utilization metrics.",
                {
                    "aws": "aws.ec2.resize_instance",
                    "azure": "azure.compute.resize_vm",
                    "gcp": "gcp.compute.resize_instance",
                },
            ),
            _pb(
                "stop-idle-compute",
                "Stop an idle non-production VM and tag it with its restart schedule.",
                {
                    "aws": "aws.ec2.stop_instance",
                    "azure": "azure.compute.deallocate_vm",
                    "gcp": "gcp.compute.stop_instance",
                },
            ),
            _pb(
                "delete-unattached-volume",
                "Snapshot, then delete, a disk that is attached to nothing.",
                {
                    "aws": "aws.ebs.delete_volume",
                    "azure": "azure.compute.delete_disk",
                    "gcp": "gcp.compute.delete_disk",
                },
            ),
            _pb(
                "storage-tiering",
                "Add a lifecycle rule that moves objects to a colder storage class.",
                {
                    "aws": "aws.s3.put_lifecycle_tiering",
                    "azure": "azure.storage.put_tiering_policy",
                    "gcp": "gcp.storage.set_lifecycle_tiering",
                },
            ),
            _pb(
                "rightsize-database",
                "Resize an over-provisioned managed database (always approved by a human).",
                {
                    "aws": "aws.rds.modify_instance_class",
                    "azure": "azure.sql.update_database_sku",
                    "gcp": "gcp.sql.set_tier",
                },
                approval=True,
            ),
        )
    }
)
