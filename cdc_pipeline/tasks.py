"""The state machine's Lambda tasks: plan a run for the Distributed Map, commit it from its results.

Each takes the Lambda event and the ports, and returns the JSON the state machine passes on; the
handlers in ``lambdas/`` only build the ports. Event and result shapes are documented in
docs/aws.md and fixed by ``state_machine/cdc_pipeline.asl.json``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdc_pipeline.aws.s3 import parse_s3_uri
from cdc_pipeline.catalog import Catalog, OutputCatalog
from cdc_pipeline.errors import ConfigurationError, PipelineError
from cdc_pipeline.lease import AWS_TTL_MARGIN_S, LeaseStore, OwnerEnded, acquire, release
from cdc_pipeline.plan import Layout, LoadType, Plan, new_run_id
from cdc_pipeline.registry import RegistrySource
from cdc_pipeline.settings import CommitSettings, PlanSettings
from cdc_pipeline.stages import commit_stage, load_plan, plan_stage
from cdc_pipeline.state import StateStore
from cdc_pipeline.storage import Storage

logger = logging.getLogger(__name__)

MAX_NAMED_FAILURES = 50


def plan_task(
    event: dict[str, Any],
    settings: PlanSettings,
    *,
    catalog: Catalog,
    registry_source: RegistrySource,
    state_store: StateStore,
    storage: Storage,
    lease_store: LeaseStore | None = None,
    owner_ended: OwnerEnded | None = None,
) -> dict[str, Any]:
    """Plan a run; the Map reads its items from S3, never from this (bounded) payload.

    With ``lease_store``, the run first takes the run lease for the execution the event's ``lease``
    names (``owner``, ``run_timeout_s``): RunInProgressError, before anything is read or written,
    when another execution holds it; a plan that fails gives it back.
    """
    requested = event.get("load_type")
    if requested not in (None, *(t.value for t in LoadType)):
        raise ConfigurationError(f"load_type {requested!r} must be 'full' or 'incremental'")
    tables = event.get("tables")
    if tables is not None and not (isinstance(tables, list) and all(isinstance(t, str) for t in tables)):
        raise ConfigurationError(f"tables must be a list of table names, got {tables!r}")
    accepted = event.get("accept_registry_change")
    if accepted is not None and not (
        isinstance(accepted, list) and all(isinstance(t, str) for t in accepted)
    ):
        raise ConfigurationError(f"accept_registry_change must be a list of table names, got {accepted!r}")
    layout = Layout(output_path=settings.output_path, cdc_path=settings.cdc_path)
    run_id = new_run_id()
    if lease_store is not None:
        _take_lease(event, lease_store, run_id, owner_ended)
    try:
        plan = plan_stage(
            catalog=catalog,
            registry_source=registry_source,
            state_store=state_store,
            storage=storage,
            layout=layout,
            run_id=run_id,
            load_type=LoadType(requested) if requested else None,
            tables=tables or None,
            settle_window=settings.settle_window,
            pack_bytes=settings.pack_bytes,
            accept_registry_change=accepted,
        )
    except BaseException:
        if lease_store is not None:
            _give_back(lease_store, run_id)
        raise
    items_bucket, items_key = parse_s3_uri(layout.items(plan.run_id))
    logger.info(
        "run %s planned: %d table(s) to ingest in %d Glue run(s), %d unchanged, %d failed in plan, "
        "%d skipped",
        plan.run_id,
        len(plan.items),
        len(plan.glue_runs()),
        len(plan.unchanged),
        len(plan.failed),
        len(plan.skipped),
    )
    return {
        "run_id": plan.run_id,
        "items_bucket": items_bucket,
        "items_key": items_key,
        "item_count": len(plan.glue_runs()),
        "table_count": len(plan.items),
        "unchanged_count": len(plan.unchanged),
        "plan_location": layout.plan(plan.run_id),
    }


def _take_lease(
    event: dict[str, Any], lease_store: LeaseStore, run_id: str, owner_ended: OwnerEnded | None
) -> None:
    terms = event.get("lease")
    if not isinstance(terms, dict) or not terms.get("owner") or not terms.get("run_timeout_s"):
        raise ConfigurationError(
            f"the Plan Lambda's event names no run lease ({{'owner', 'run_timeout_s'}}), got {terms!r}: "
            "start runs through the state machine, which adds it"
        )
    acquire(
        lease_store,
        run_id,
        str(terms["owner"]),
        float(terms["run_timeout_s"]) + AWS_TTL_MARGIN_S,
        owner_ended=owner_ended,
        owner_retakes=True,
        advice="this execution started no Glue run. Let that run finish (a schedule's next run goes "
        "ahead once it has), or stop its execution: a stopped execution's lease is taken over at once",
    )


def _give_back(lease_store: LeaseStore, run_id: str) -> None:
    """Release the lease of a plan that failed; the plan's error is the one the execution reports."""
    try:
        release(lease_store, run_id)
    except (ClientError, PipelineError) as exc:
        logger.error("run %s could not release its run lease after its plan failed: %s", run_id, exc)


def map_failures(map_result: dict[str, Any], storage: Storage) -> dict[str, str]:
    """The error of every Glue run whose child execution failed or was caught, by the location of
    its work item or pack, from the Map's results.

    The Distributed Map's ResultWriter leaves a manifest listing result files; each holds the
    child executions with their input and output. A table missing here is still failed by the
    commit when it has no manifest, so this only adds the reason.
    """
    details = map_result.get("ResultWriterDetails")
    if not details:
        return {}
    manifest = storage.read_json(f"s3://{details['Bucket']}/{details['Key']}")
    if not isinstance(manifest, dict):
        raise ValueError(f"the Map's result manifest s3://{details['Bucket']}/{details['Key']} is missing")
    failures: dict[str, str] = {}
    for group in ("FAILED", "SUCCEEDED"):
        for result_file in manifest.get("ResultFiles", {}).get(group, []):
            for child in storage.read_json(f"s3://{details['Bucket']}/{result_file['Key']}") or []:
                location, reason = _child_failure(child)
                if location is not None and reason is not None:
                    failures[location] = reason
    return failures


def table_failures(
    plan: Plan, layout: Layout, by_location: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The Map's failures by table: a table's own Glue run failed (its outcome), and the run of a
    pack failed (the reason of each of its tables that left no manifest)."""
    own = {
        item.table: by_location[layout.item(item.table, plan.run_id)]
        for item in plan.items
        if layout.item(item.table, plan.run_id) in by_location
    }
    packed = {
        table: f"{reason} (the Glue run of its pack {location})"
        for location, reason in by_location.items()
        for table in plan.packs.get(location, [])
    }
    return own, packed


def failure_text(error: str, cause: str) -> str:
    """``Error: Cause`` of a child; a Glue .sync Cause is the JobRun as JSON: keep its ErrorMessage."""
    try:
        run = json.loads(cause)
    except (TypeError, ValueError):
        run = None
    if isinstance(run, dict) and run.get("ErrorMessage"):
        cause = str(run["ErrorMessage"])
    return f"{error}: {cause}".strip()


def _child_failure(child: dict[str, Any]) -> tuple[str | None, str | None]:
    location = json.loads(child.get("Input") or "{}").get("work_item_location")
    output = json.loads(child["Output"]) if child.get("Output") else {}
    if output.get("status") == "FAILED":
        error = output.get("error") or {}
        return location, failure_text(error.get("Error", "error"), error.get("Cause", ""))
    if child.get("Status") != "SUCCEEDED":
        return location, failure_text(
            str(child.get("Error") or child.get("Status")), str(child.get("Cause") or "")
        )
    return None, None


def commit_task(
    event: dict[str, Any],
    settings: CommitSettings,
    *,
    state_store: StateStore,
    storage: Storage,
    output_catalog: OutputCatalog,
    lease_store: LeaseStore | None = None,
) -> dict[str, Any]:
    """Commit the run the event names; raise CommitConflictError when another run came first.

    With ``lease_store``: refused (LeaseLostError) when another run took the run lease over; the
    lease is released once the run is published.
    """
    layout = Layout(output_path=settings.output_path, cdc_path=settings.cdc_path)
    plan = load_plan(storage, layout, event["plan"]["run_id"])
    failures, run_failures = table_failures(
        plan, layout, map_failures(event.get("map_result") or {}, storage)
    )
    report = commit_stage(
        plan=plan,
        state_store=state_store,
        storage=storage,
        output_catalog=output_catalog,
        layout=layout,
        failures=failures,
        run_failures=run_failures,
        retained_snapshots=settings.retained_snapshots,
        dpu_per_run=settings.glue_dpu,
        lease_store=lease_store,
    )
    if lease_store is not None:
        release(lease_store, plan.run_id)
    succeeded = [o for o in report.outcomes if o.status == "succeeded"]
    for outcome in report.failed:
        logger.error("table %s failed: %s", outcome.table, outcome.message)
    return {
        "run_id": report.run_id,
        "revision": report.revision,
        "succeeded_count": len(succeeded),
        "failed_count": len(report.failed),
        "unchanged_count": sum(1 for o in report.outcomes if o.status == "unchanged"),
        # Capped: the state machine's payload limit is 256 KiB; the report names every table.
        "failed_tables": [o.table for o in report.failed][:MAX_NAMED_FAILURES],
        "rows_read": sum(o.rows_read or 0 for o in succeeded),
        "rows_written": sum(o.rows_written or 0 for o in succeeded),
        "report_location": layout.report(report.run_id),
        "run_duration_s": round(
            (datetime.now(UTC) - datetime.fromisoformat(plan.created_at)).total_seconds(), 1
        ),
    }


def release_task(event: dict[str, Any], *, lease_store: LeaseStore) -> dict[str, Any]:
    """The state machine's failure path: give back the run lease of the run the event names, if it
    still holds it (``{"release_lease": {"run_id": ...}}``)."""
    run_id = event["release_lease"]["run_id"]
    released = release(lease_store, run_id)
    logger.info("run %s %s the run lease", run_id, "released" if released else "no longer held")
    return {"run_id": run_id, "released": released}
