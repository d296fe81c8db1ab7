"""`cct step NAME`: one workflow step, JSON in, JSON out (docs/architecture.md, section 6).

Input is one JSON object on stdin, or with `--from-env` assembled from the variables the
Argo WorkflowTemplate sets (CCT_RUN_ID, CCT_PLAYBOOK, CCT_PARAM_<NAME>, CCT_PREVIOUS_<STEP>,
and for the exit handler CCT_WORKFLOW_STATUS / CCT_WORKFLOW_FAILURES). Output is one JSON
object on stdout; with `--output-dir` it is also written to `output.json` there, plus one file
per top-level scalar (key with `_` as `-`), which Argo reads as output parameters.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from lambdas.common.logging import configure
from lambdas.common.settings import SettingsError
from lambdas.steps.action import ActionFailed
from lambdas.steps.errors import InvalidInput, StepError
from lambdas.steps.playbooks import (
    EXIT_INVALID_INPUT,
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    STEPS,
)
from lambdas.steps.redact import REDACTOR, RedactingFormatter

log = logging.getLogger("cct.steps")

PARAM_PREFIX = "CCT_PARAM_"
PREVIOUS_PREFIX = "CCT_PREVIOUS_"


def input_from_env(env: dict[str, str]) -> dict[str, Any]:
    """The step input the WorkflowTemplate passes as environment variables."""
    try:
        doc: dict[str, Any] = {
            "run_id": env.get("CCT_RUN_ID", ""),
            "playbook": env.get("CCT_PLAYBOOK", ""),
            "parameters": {
                key[len(PARAM_PREFIX) :].lower().replace("_", "-"): value
                for key, value in env.items()
                if key.startswith(PARAM_PREFIX)
            },
            "previous": {
                key[len(PREVIOUS_PREFIX) :].lower(): json.loads(value)
                for key, value in env.items()
                if key.startswith(PREVIOUS_PREFIX) and value
            },
        }
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"a CCT_PREVIOUS_* variable is not JSON: {exc}") from None
    uid = env.get("CCT_WORKFLOW_UID")
    if uid:
        doc["workflow_uid"] = uid
    status = env.get("CCT_WORKFLOW_STATUS")
    if status:
        doc["workflow_status"] = status
        if status != "Succeeded":
            doc["failure"] = {
                "step": "workflow",
                "exit_code": None,
                "message": f"workflow {status}: {env.get('CCT_WORKFLOW_FAILURES', '')}"[:2000],
            }
    return doc


def run(name: str, doc: Any) -> tuple[int, dict[str, Any]]:
    """Run one step on a parsed JSON document; returns the exit code and the output."""
    import psycopg

    from lambdas.steps.cloud import cloud_session
    from lambdas.steps.contract import parse_input
    from lambdas.steps.settings import StepSettings
    from lambdas.steps.steps import STEP_FUNCTIONS, StepIO, pg_opener

    try:
        inp = parse_input(doc)
        if isinstance(doc, dict) and doc.get("workflow_status") == "Succeeded":
            # The exit handler of a successful workflow: the record step already ran.
            return EXIT_OK, {"state": "succeeded", "noop": True}
        settings = StepSettings.from_env()
        io = StepIO(
            settings=settings,
            cloud=lambda i: cloud_session(i.parameters, settings, i.run_id),
            db=pg_opener(settings.pg_dsn),
        )
        return EXIT_OK, STEP_FUNCTIONS[name](inp, io)
    except StepError as exc:
        # An action failure is reported as its cause (AccessDenied, Retryable, ...).
        kind = type(exc.cause if isinstance(exc, ActionFailed) else exc).__name__
        log.error("step failed", extra={"step": name, "error": kind, "detail": str(exc)})
        return exc.exit_code, {
            "error": {"type": kind, "message": str(exc), "retryable": exc.retryable}
        }
    except SettingsError as exc:
        log.error("bad settings", extra={"step": name, "detail": str(exc)})
        return EXIT_PERMANENT, {
            "error": {"type": "SettingsError", "message": str(exc), "retryable": False}
        }
    except psycopg.OperationalError as exc:
        # The database went away mid-step; every step is safe to run again.
        log.error("database unavailable", extra={"step": name, "error": type(exc).__name__})
        return EXIT_RETRYABLE, {
            "error": {
                "type": "DatabaseUnavailable",
                "message": type(exc).__name__,
                "retryable": True,
            }
        }
    except Exception as exc:
        # A bug, not a cloud condition: fail permanently with the traceback in the (redacted)
        # log rather than retrying something that cannot succeed.
        log.exception("step crashed", extra={"step": name})
        return EXIT_PERMANENT, {
            "error": {"type": type(exc).__name__, "message": str(exc), "retryable": False}
        }


def redact_logging() -> None:
    """Secrets never reach a log line: every root handler formats through the redactor."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))


def output_text(output: dict[str, Any]) -> str:
    """The step's output as printed: JSON, with every known secret redacted."""
    return REDACTOR(json.dumps(output, default=str, sort_keys=True))


def _write_outputs(directory: Path, output: dict[str, Any], text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "output.json").write_text(text)
    for key, value in output.items():
        if isinstance(value, bool):
            (directory / key.replace("_", "-")).write_text("true" if value else "false")
        elif isinstance(value, str | int | float):
            (directory / key.replace("_", "-")).write_text(REDACTOR(str(value)))


@click.command("step", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", type=click.Choice(STEPS))
@click.option("--from-env", is_flag=True, help="Read the input from CCT_* variables (Argo).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write output.json and one file per scalar output here (Argo outputs).",
)
@click.option("--log-level", default="INFO", show_default=True)
def step(name: str, from_env: bool, output_dir: Path | None, log_level: str) -> None:
    """Run one remediation step: JSON on stdin, JSON on stdout.

    Exit codes: 0 success, 75 retryable, 65 invalid input, 1 permanent failure.
    """
    configure(log_level)
    redact_logging()
    code: int
    output: dict[str, Any]
    try:
        doc = input_from_env(dict(os.environ)) if from_env else json.loads(sys.stdin.read())
    except json.JSONDecodeError as exc:
        code, output = (
            EXIT_INVALID_INPUT,
            {
                "error": {
                    "type": "InvalidInput",
                    "message": f"stdin is not JSON: {exc}",
                    "retryable": False,
                }
            },
        )
    except InvalidInput as exc:
        code, output = (
            EXIT_INVALID_INPUT,
            {"error": {"type": "InvalidInput", "message": str(exc), "retryable": False}},
        )
    else:
        code, output = run(name, doc)
    text = output_text(output)
    if output_dir is not None:
        _write_outputs(output_dir, output, text)
    click.echo(text)
    sys.exit(code)
