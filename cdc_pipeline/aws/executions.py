"""Start a run of the deployed state machine and follow it table by table in the terminal; tell
whether an execution holding the run lease is still running."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdc_pipeline.lease import Lease
from cdc_pipeline.tasks import failure_text

logger = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
# The error of an execution that found another run holding the run lease (state machine: RunInProgress).
RUN_IN_PROGRESS = "RunInProgress"
Say = Callable[[str, str], None]


def start_run(
    sfn: Any,
    state_machine_arn: str,
    load_type: str | None = None,
    tables: list[str] | None = None,
    accept_registry_change: list[str] | None = None,
) -> str:
    """Start one execution with the input the schedule would give it (and, when given, the tables
    whose registry change is accepted); returns its ARN."""
    run_input: dict[str, Any] = {"load_type": load_type or "incremental"}
    if tables:
        run_input["tables"] = tables
    if accept_registry_change:
        run_input["accept_registry_change"] = accept_registry_change
    response = sfn.start_execution(
        stateMachineArn=state_machine_arn,
        name=f"manual-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        input=json.dumps(run_input),
    )
    return str(response["executionArn"])


def follow_run(
    sfn: Any,
    execution_arn: str,
    say: Say,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Report each table as its Glue run ends; return the final ``describe_execution``."""
    reported: set[str] = set()
    while True:
        execution = sfn.describe_execution(executionArn=execution_arn)
        for map_run in sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", []):
            _report_children(sfn, map_run["mapRunArn"], reported, say)
        if execution["status"] != "RUNNING":
            return dict(execution)
        sleep(poll_seconds)


def _report_children(sfn: Any, map_run_arn: str, reported: set[str], say: Say) -> None:
    paginator = sfn.get_paginator("list_executions")
    for status in TERMINAL:
        for page in paginator.paginate(mapRunArn=map_run_arn, statusFilter=status):
            for child in page["executions"]:
                if child["executionArn"] in reported:
                    continue
                reported.add(child["executionArn"])
                detail = sfn.describe_execution(executionArn=child["executionArn"])
                table = json.loads(detail.get("input") or "{}").get("table", child["name"])
                output = json.loads(detail.get("output") or "{}")
                if status == "SUCCEEDED" and output.get("status") != "FAILED":
                    say(table, "ingested")
                else:
                    error = output.get("error") or {
                        "Error": detail.get("error", status),
                        "Cause": detail.get("cause", ""),
                    }
                    say(table, f"FAILED: {failure_text(error.get('Error', status), error.get('Cause', ''))}")


def execution_ended(sfn: Any) -> Callable[[Lease], bool]:
    """Whether the execution owning a lease (its ARN) has ended, for ``lease.acquire``: a stopped,
    timed-out or failed execution never reached the step that releases its lease.

    An owner this cannot look up (not an execution ARN, or no permission to describe it) counts as
    running: its lease is then taken over only once it expires.
    """

    def ended(lease: Lease) -> bool:
        if ":states:" not in lease.owner or ":execution:" not in lease.owner:
            return False
        try:
            status = sfn.describe_execution(executionArn=lease.owner)["status"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ExecutionDoesNotExist":
                return True  # its history has expired (90 days after it ended)
            if code in ("AccessDeniedException", "InvalidArn"):
                logger.warning(
                    "cannot tell whether %s, which holds the run lease, still runs (%s); it is taken "
                    "over once it expires at %s",
                    lease.owner,
                    code,
                    lease.expires_at,
                )
                return False
            raise
        return status != "RUNNING"

    return ended
