"""The pure core of analyze and plan: size ladders, target choice, schedules and savings.

No I/O here; every number comes in as an argument, so the decisions are tested with tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from lambdas.steps.errors import InvalidInput

HOURS_PER_MONTH = Decimal(730)
HOURS_PER_WEEK = 168
PRODUCTION_ENVIRONMENTS = frozenset({"prod", "production", "prd"})
_ENV_WORD = re.compile(r"[-_.\s/:]+")

_AWS_SIZE = re.compile(r"^(db\.)?([a-z0-9-]+)\.(medium|large|xlarge|(\d+)xlarge)$")
_AWS_VCPU = {"medium": 1, "large": 2, "xlarge": 4}


@dataclass(frozen=True)
class _Family:
    """One naming scheme: how to read the vCPUs from a size name and name another size."""

    provider: str
    pattern: re.Pattern[str]
    vcpu: Callable[[re.Match[str]], int]
    name: Callable[[re.Match[str], int], str]
    min_vcpu: int


def _aws_vcpu(m: re.Match[str]) -> int:
    return _AWS_VCPU.get(m.group(3)) or 4 * int(m.group(4))


def _aws_name(m: re.Match[str], vcpu: int) -> str:
    size = {1: "medium", 2: "large", 4: "xlarge"}.get(vcpu, f"{vcpu // 4}xlarge")
    return f"{m.group(1) or ''}{m.group(2)}.{size}"


_FAMILIES = (
    _Family("aws", _AWS_SIZE, _aws_vcpu, _aws_name, 1),
    # Azure VMs: Standard_D4s_v3; Azure SQL vCore: GP_Gen5_4.
    _Family(
        "azure",
        re.compile(r"^(Standard_[A-Z]+)(\d+)([a-z]*(?:_v\d+)?)$"),
        lambda m: int(m.group(2)),
        lambda m, v: f"{m.group(1)}{v}{m.group(3)}",
        2,
    ),
    _Family(
        "azure",
        re.compile(r"^([A-Z]+)_(Gen\d+)_(\d+)$"),
        lambda m: int(m.group(3)),
        lambda m, v: f"{m.group(1)}_{m.group(2)}_{v}",
        2,
    ),
    # Cloud SQL custom tiers keep their memory per vCPU: db-custom-4-16384.
    _Family(
        "gcp",
        re.compile(r"^db-custom-(\d+)-(\d+)$"),
        lambda m: int(m.group(1)),
        lambda m, v: f"db-custom-{v}-{int(m.group(2)) * v // int(m.group(1))}",
        2,
    ),
    _Family(
        "gcp",
        re.compile(r"^(db-n1-(?:standard|highmem))-(\d+)$"),
        lambda m: int(m.group(2)),
        lambda m, v: f"{m.group(1)}-{v}",
        2,
    ),
    # GCE predefined types: e2-standard-4.
    _Family(
        "gcp",
        re.compile(r"^([a-z0-9]+-[a-z]+)-(\d+)$"),
        lambda m: int(m.group(2)),
        lambda m, v: f"{m.group(1)}-{v}",
        2,
    ),
)


def smaller_sizes(provider: str, sku: str) -> tuple[int, list[tuple[str, int]]]:
    """The current vCPU count of `sku` and the smaller sizes of the same family, largest first.

    Sizes halve the vCPUs (each family's sizes do, within a generation). Whether a size
    really exists is decided by the caller: only sizes with a price-catalog row are used.
    """
    for family in _FAMILIES:
        m = family.pattern.match(sku) if family.provider == provider else None
        if m is None:
            continue
        vcpu = family.vcpu(m)
        smaller: list[tuple[str, int]] = []
        v = vcpu // 2
        while v >= family.min_vcpu:
            smaller.append((family.name(m, v), v))
            v //= 2
        return vcpu, smaller
    raise InvalidInput(f"{provider} size {sku!r} is not one CCT knows how to resize")


@dataclass(frozen=True)
class ResizeChoice:
    target_sku: str | None
    projected_cpu_percent: float | None
    reason: str


def choose_smaller_size(
    provider: str,
    sku: str,
    peak_cpu_percent: float,
    target_cpu_percent: float,
    priced_skus: frozenset[str],
) -> ResizeChoice:
    """The smallest priced size whose projected peak CPU stays within the target.

    The peak is the highest hourly average; scaling it by the vCPU ratio assumes the load is
    CPU-bound, which over-estimates the load on the smaller size for memory-bound workloads
    and so errs on the safe side.
    """
    vcpu, candidates = smaller_sizes(provider, sku)
    best: ResizeChoice = ResizeChoice(
        None,
        None,
        f"peak CPU {peak_cpu_percent:.1f}% leaves no smaller size under {target_cpu_percent:.0f}%",
    )
    for candidate, cand_vcpu in candidates:
        projected = peak_cpu_percent * vcpu / cand_vcpu
        if projected > target_cpu_percent:
            break
        if candidate in priced_skus:
            best = ResizeChoice(
                candidate,
                projected,
                f"peak CPU {peak_cpu_percent:.1f}% on {sku} projects to {projected:.1f}% "
                f"on {candidate}",
            )
    return best


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SCHEDULE = re.compile(
    r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?"
    r" ([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$"
)


@dataclass(frozen=True)
class RestartSchedule:
    """When a stopped non-production VM should run: `mon-fri 08:00-18:00` (UTC), or `none`
    (stay stopped until someone starts it)."""

    text: str
    days: tuple[str, ...]
    start_minute: int
    end_minute: int

    @property
    def running_hours_per_week(self) -> float:
        return len(self.days) * (self.end_minute - self.start_minute) / 60

    @property
    def stopped_fraction(self) -> Decimal:
        return Decimal(1) - Decimal(str(self.running_hours_per_week)) / HOURS_PER_WEEK


def parse_schedule(text: str) -> RestartSchedule:
    text = text.strip().lower()
    if text == "none":
        return RestartSchedule("none", (), 0, 0)
    m = _SCHEDULE.match(text)
    if not m:
        raise InvalidInput(
            f"restart-schedule {text!r} must look like 'mon-fri 08:00-18:00' or be 'none'"
        )
    first = _DAYS.index(m.group(1))
    last = _DAYS.index(m.group(2) or m.group(1))
    if last < first:
        raise InvalidInput(f"restart-schedule {text!r}: days must run forwards (mon..sun)")
    start = int(m.group(3)) * 60 + int(m.group(4))
    end = int(m.group(5)) * 60 + int(m.group(6))
    if end <= start or end > 24 * 60:
        raise InvalidInput(f"restart-schedule {text!r}: the end must be after the start")
    return RestartSchedule(text, _DAYS[first : last + 1], start, end)


def is_production(environment: str, tags: Mapping[str, str]) -> bool:
    """Whether the environment or an env/environment tag says production. Tag keys are
    matched in any case (AWS's usual spelling is `Environment`; Azure's tag names are
    case-insensitive), and a value counts by its first word (`prod-eu`, `Production_2`):
    this guard errs towards leaving a resource alone."""
    named = {k.strip().lower(): v for k, v in tags.items()}
    values = (environment, named.get("env", ""), named.get("environment", ""))
    return any(_ENV_WORD.split(v.strip().lower())[0] in PRODUCTION_ENVIRONMENTS for v in values)


def monthly(usd_per_hour: Decimal) -> Decimal:
    return (usd_per_hour * HOURS_PER_MONTH).quantize(Decimal("0.01"))


def money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))
