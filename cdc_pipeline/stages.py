"""The plan and commit stages with their I/O: what the local runner and the Lambdas both call.

``plan_run`` and ``commit_run`` decide; these functions add the reads and writes around them
(registry, state, plan and item files, report, output catalog) through the ports they are given,
so the local runner and the Plan and Commit Lambdas run the same code on different adapters.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW
from cdc_pipeline.catalog import Catalog, OutputCatalog, PublishedTable
from cdc_pipeline.commit import IO_THREADS, CommitReport, commit_run
from cdc_pipeline.lease import LeaseGuardedStateStore, LeaseStore
from cdc_pipeline.packs import DEFAULT_GLUE_DPU, DEFAULT_PACK_BYTES, Pack, pack, runs_alone
from cdc_pipeline.plan import PLAN_THREADS, Layout, LoadType, Plan, WorkItem, plan_run
from cdc_pipeline.registry import RegistrySource, load_registry
from cdc_pipeline.state import StateStore
from cdc_pipeline.storage import Storage

logger = logging.getLogger(__name__)

# Work item files written while tables are still being listed on PLAN_THREADS: together they use no
# more connections than the IO_THREADS that write the rest at the end (the Plan's S3 client's size).
EARLY_WRITE_THREADS = max(1, IO_THREADS - PLAN_THREADS)


def plan_stage(
    *,
    catalog: Catalog,
    registry_source: RegistrySource,
    state_store: StateStore,
    storage: Storage,
    layout: Layout,
    run_id: str,
    load_type: LoadType | None = None,
    tables: list[str] | None = None,
    settle_window: str = DEFAULT_SETTLE_WINDOW,
    pack_bytes: int = DEFAULT_PACK_BYTES,
    accept_registry_change: list[str] | None = None,
) -> Plan:
    """Plan a run and write its plan and its item list (the Distributed Map's input): one entry per
    Glue run, naming a work item's file or a pack's (small tables sharing a run).

    A table that gets a Glue run of its own whatever the others are (``runs_alone``: too large to
    pack, or of unknown size) has its work item file written as soon as it is planned, while other
    tables are still being listed; packs are decided once every item exists, so their files, and
    plan.json and items.json, are written at the end.
    """
    registry = load_registry(registry_source)
    state, version = state_store.read()
    written: dict[str, Future[None]] = {}
    writer = ThreadPoolExecutor(max_workers=EARLY_WRITE_THREADS, thread_name_prefix="item")

    def write_if_alone(item: WorkItem) -> None:
        if runs_alone(item, pack_bytes):
            location = layout.item(item.table, run_id)
            written[item.table] = writer.submit(storage.write_json, location, item.to_json())

    try:
        plan = plan_run(
            catalog=catalog,
            registry=registry,
            state=state,
            state_version=version,
            layout=layout,
            run_id=run_id,
            load_type=load_type,
            tables=tables,
            settle_window=settle_window,
            planned=write_if_alone,
            accept_registry_change=accept_registry_change or (),
        )
        for write in written.values():
            write.result()
    finally:
        # A plan that failed leaves at most some item files no items.json names: no Glue run reads them.
        writer.shutdown(cancel_futures=True)
    # Each Glue run's work item (or pack) in a file of its own, and the Map's list names them: a
    # child execution's input and the Glue job's argument stay small however many columns a table has.
    runs: list[_GlueRun] = []
    packs: dict[str, list[str]] = {}
    for run in pack(plan.items, pack_bytes):
        if len(run) == 1:
            document = None if run[0].table in written else run[0].to_json()
            runs.append(_GlueRun(run[0].table, layout.item(run[0].table, run_id), document))
        else:
            number = len(packs) + 1
            label = f"pack-{number:04d}"
            location = layout.pack(number, run_id)
            packs[location] = [item.table for item in run]
            runs.append(
                _GlueRun(f"{label} ({len(run)} tables)", location, Pack(run_id, label, run).to_json())
            )
    plan = replace(plan, packs=packs)
    storage.write_json(layout.plan(run_id), plan.to_json())
    unwritten = [run for run in runs if run.document is not None]
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        list(pool.map(lambda run: storage.write_json(run.location, run.document), unwritten))
    storage.write_json(
        layout.items(run_id), [{"table": run.label, "work_item_location": run.location} for run in runs]
    )
    return plan


@dataclass(frozen=True)
class _GlueRun:
    """One Distributed Map item: ``label`` names the child execution (a table, or a pack);
    ``document`` is None for a work item written while the plan was being made."""

    label: str
    location: str
    document: dict[str, Any] | None


def load_plan(storage: Storage, layout: Layout, run_id: str) -> Plan:
    data = storage.read_json(layout.plan(run_id))
    if data is None:
        raise FileNotFoundError(f"no plan at {layout.plan(run_id)} for run {run_id}")
    return Plan.from_json(data)


def commit_stage(
    *,
    plan: Plan,
    state_store: StateStore,
    storage: Storage,
    output_catalog: OutputCatalog,
    layout: Layout,
    failures: dict[str, str],
    retained_snapshots: int,
    run_failures: dict[str, str] | None = None,
    dpu_per_run: float = DEFAULT_GLUE_DPU,
    lease_store: LeaseStore | None = None,
) -> CommitReport:
    """Commit the run, point the output catalog at the new snapshots, write the report.

    With ``lease_store``, the state write is refused (LeaseLostError) once the run lease names
    another run: that run took it over after this one's lease expired, and is the one to commit.

    The state document is the commit; the output catalog follows it. If updating the catalog
    fails, the error is raised after the state is committed: a retry finds the run committed and
    publishes again. Meanwhile the catalog still points at the previous snapshot, which exists as
    long as at least two snapshots are retained (the deployment's minimum).
    """
    report = commit_run(
        plan,
        state_store if lease_store is None else LeaseGuardedStateStore(state_store, lease_store, plan.run_id),
        storage,
        failures=failures,
        run_failures=run_failures,
        retained_snapshots=retained_snapshots,
        dpu_per_run=dpu_per_run,
    )
    storage.write_json(layout.report(plan.run_id), report.to_json())
    # A table whose snapshot did not move (nothing new to append) keeps its catalog entry.
    output_catalog.publish(
        [
            PublishedTable(
                outcome.table,
                outcome.location,
                outcome.columns,
                plan.run_id,
                partition_by=outcome.partition_by,
                partitions=outcome.partitions,
            )
            for outcome in report.outcomes
            if outcome.status == "succeeded"
            and outcome.location
            and outcome.location != outcome.previous_location
        ]
    )
    return report
