"""Stacks built once per test session under the Pulumi mocks, for every provider switch."""

from __future__ import annotations

import asyncio
import importlib
import warnings
from collections.abc import Iterator

import pytest

from infra.generated import collect
from tests.infra.harness import ALL_CLOUDS_ON, BuiltStack, build_stack

# The provider SDKs define deprecated classes that warn when their module is first loaded; that
# is the SDKs' business, not the bundle's, so the modules the bundle uses load quietly here.
# (Using a deprecated class later still warns, and fails the tests.)
SDK_MODULES = (
    *(f"pulumi_aws.{m}" for m in ("s3", "lambda_", "cloudwatch", "iam", "bcmdata")),
    *(
        f"pulumi_azure_native.{m}"
        for m in ("resources", "storage", "costmanagement", "web", "eventgrid", "authorization")
    ),
    *(
        f"pulumi_gcp.{m}"
        for m in (
            "bigquery", "pubsub", "logging", "serviceaccount", "projects",
            "cloudfunctionsv2", "cloudrunv2", "storage", "secretmanager",
        )
    ),
)  # fmt: skip
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for _module in SDK_MODULES:
        # The SDKs load submodules lazily: reading any attribute runs the module body.
        getattr(importlib.import_module(_module), "__all__", None)

_CLOUD_KEYS = {
    "aws": ("awsEnabled", "awsAccountId", "awsVaultPrincipalArn"),
    "azure": tuple(k for k in ALL_CLOUDS_ON if k.startswith("azure")),
    "gcp": ("gcpEnabled", "gcpProject"),
}


def _only(cloud: str) -> dict[str, str]:
    return {k: ALL_CLOUDS_ON[k] for k in ("vaultConfigure", *_CLOUD_KEYS[cloud])}


# name -> (stack file, config overrides). Every switch on alone, all on, all off, per stack.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "dev-off": ("dev", {}),
    "dev-vault": ("dev", {"vaultConfigure": "true"}),
    "dev-aws": ("dev", _only("aws")),
    "dev-azure": ("dev", _only("azure")),
    "dev-gcp": ("dev", _only("gcp")),
    "dev-all": ("dev", ALL_CLOUDS_ON),
    "prod-off": ("prod", {}),
    "prod-all": ("prod", ALL_CLOUDS_ON),
}


# Loops this module had to create; kept referenced for the whole session, as the implicit
# default loop would be, so none is collected (and warned about) while tests still run.
_LOOPS: list[asyncio.AbstractEventLoop] = []


def ensure_event_loop() -> None:
    """Pulumi creates its Futures on the thread's current event loop. Tests elsewhere in the
    suite that call asyncio.run() leave none set, so give the infra tests one back."""
    policy = asyncio.get_event_loop_policy()
    try:
        loop: asyncio.AbstractEventLoop | None = policy.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        loop = policy.new_event_loop()
        _LOOPS.append(loop)
        policy.set_event_loop(loop)


@pytest.fixture(autouse=True)
def _event_loop_for_pulumi() -> None:
    ensure_event_loop()


@pytest.fixture(scope="session")
def stacks() -> Iterator[dict[str, BuiltStack]]:
    """Every variant, built from the real generated content (infra.generated.collect)."""
    ensure_event_loop()
    yield {
        name: build_stack(stack, collect, overrides)
        for name, (stack, overrides) in VARIANTS.items()
    }


@pytest.fixture(params=sorted(VARIANTS))
def built(request: pytest.FixtureRequest, stacks: dict[str, BuiltStack]) -> BuiltStack:
    return stacks[request.param]
