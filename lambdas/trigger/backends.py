"""The workflow backend interface the trigger submits through.

A backend's `submit` is idempotent on `run.run_id`: submitting a run that already exists is
success (`already_exists`), never a second workflow. It returns how the submission ended or
raises one of the two errors below, which tell the caller what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from lambdas.trigger.core import WorkflowRun

Outcome = Literal["created", "already_exists", "denied"]


class RetryableSubmitError(RuntimeError):
    """The backend could not take the run now (API unreachable, throttled, 5xx). Retry the
    same run later; do not commit the event."""


class PermanentSubmitError(RuntimeError):
    """The backend refused the run for good (invalid object). Dead-letter the event."""


@dataclass(frozen=True)
class Submission:
    outcome: Outcome
    # For `denied`: the admission webhook's message. For the local backend, which runs the
    # steps inside submit: where they stopped (completed, awaiting_approval, failed).
    detail: str | None = None
    # The local backend's failed step and its message: the run must end up `failed`.
    failure: str | None = None


class Backend(Protocol):
    @property
    def name(self) -> Literal["argo", "local"]: ...

    def submit(self, run: WorkflowRun) -> Submission: ...
