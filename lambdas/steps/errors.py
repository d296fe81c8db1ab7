"""Step errors. Each type says what the caller (Argo or the local backend) should do, and maps
to the step's exit code (docs/architecture.md, section 6)."""

from __future__ import annotations

from lambdas.steps.playbooks import EXIT_INVALID_INPUT, EXIT_PERMANENT, EXIT_RETRYABLE


class StepError(Exception):
    """Base class; never raised directly."""

    exit_code = EXIT_PERMANENT
    retryable = False


class InvalidInput(StepError):
    """The step input is malformed: fix the caller, retrying will not help."""

    exit_code = EXIT_INVALID_INPUT


class Retryable(StepError):
    """A transient condition (throttling, timeout, resource mid-transition): retry later."""

    exit_code = EXIT_RETRYABLE
    retryable = True


class Permanent(StepError):
    """The step cannot succeed as asked (refused by policy, resource in the wrong state)."""


class NotFound(Permanent):
    """The resource does not exist. Each action decides whether that means "already done"."""


class AccessDenied(Permanent):
    """The cloud refused the credentials. The message names the permissions the action needs,
    so an operator can fix the Vault role instead of guessing."""
