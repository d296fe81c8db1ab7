"""The Pulumi program (`main: infra/` in Pulumi.yaml): read the stack's config once, build
the stack from the generated content, export its outputs."""

import sys
from pathlib import Path

# Pulumi runs this directory as the program; the `infra` package lives at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pulumi

from infra import nodeless
from infra.config import PulumiConfigSource, load
from infra.generated import collect
from infra.stack import build

settings = load(PulumiConfigSource())
if settings.nodeless:
    nodeless.register()
for name, value in build(settings, collect(settings)).items():
    pulumi.export(name, value)
