"""Commit: publish every successful table of a run in one atomic write of the state document.

A table is published by its tracker in the state document pointing at its new snapshot; until that
one write succeeds nothing of the run is visible. Tables whose ingest failed keep their previous
tracker. Snapshots past the retention count are deleted only once the new state is committed, and
only locations the state itself recorded, so an overlapping run's output is never touched.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cdc_pipeline.errors import CommitConflictError, ConfigurationError, NewerFormatError
from cdc_pipeline.manifest import FAILED, SUCCEEDED, Manifest
from cdc_pipeline.packs import DEFAULT_GLUE_DPU, estimate_dpu_minutes
from cdc_pipeline.plan import Plan, WorkItem
from cdc_pipeline.state import StateDocument, StateStore, TableState
from cdc_pipeline.storage import Storage

logger = logging.getLogger(__name__)

DEFAULT_RETAINED_SNAPSHOTS = 2
IO_THREADS = 32  # manifest reads and snapshot deletes run in parallel; storage clients are thread-safe


@dataclass(frozen=True)
class TableOutcome:
    """One table's line in the run report."""

    table: str
    status: str  # succeeded | unchanged | failed | skipped
    load_type: str | None = None
    rows_read: int | None = None
    rows_written: int | None = None
    rows_set_aside: int | None = None
    watermark_before: str | None = None
    watermark_after: str | None = None
    duration_s: float | None = None
    location: str | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)
    previous_location: str | None = None
    columns: list[dict[str, str]] = field(default_factory=list)
    files_read: int | None = None
    # A partitioned snapshot's partition columns and partitions (for the output catalog; the
    # report names only how many: the state holds them).
    partition_by: list[str] = field(default_factory=list)
    partitions: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {name: value for name, value in self.__dict__.items() if name != "partitions"}
        return {**data, "partition_count": None if self.partitions is None else len(self.partitions)}


@dataclass(frozen=True)
class CommitReport:
    run_id: str
    revision: int
    committed_at: str
    outcomes: list[TableOutcome]
    warnings: list[str]
    deleted_locations: list[str]
    # What the run's ingest bills on Glue, packed as planned and one run per table (packs.py).
    glue_estimate: dict[str, Any] | None = None
    registry_file: str | None = None  # the registry file the run planned with

    @property
    def failed(self) -> list[TableOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "revision": self.revision,
            "committed_at": self.committed_at,
            "tables": [outcome.to_json() for outcome in self.outcomes],
            "warnings": self.warnings,
            "deleted_locations": self.deleted_locations,
            "glue_estimate": self.glue_estimate,
            "registry_file": self.registry_file,
        }


def commit_run(
    plan: Plan,
    state_store: StateStore,
    storage: Storage,
    *,
    failures: dict[str, str] | None = None,
    run_failures: dict[str, str] | None = None,
    retained_snapshots: int = DEFAULT_RETAINED_SNAPSHOTS,
    now: datetime | None = None,
    dpu_per_run: float = DEFAULT_GLUE_DPU,
) -> CommitReport:
    """Publish the run's successful tables; ``failures`` carries ingest errors by table name.

    ``run_failures`` carries, by table name, the error of a Glue run that ingested several tables:
    it explains a table with no manifest, but a table that run finished (success manifest written)
    is published.

    Raises CommitConflictError when another run committed since ``plan`` was made. Committing the
    same run twice (a retried Commit Lambda) returns the report again and writes nothing.
    """
    if retained_snapshots < 1:
        raise ConfigurationError("retained snapshots must be at least 1 (the current snapshot)")
    failures = failures or {}
    run_failures = run_failures or {}
    committed_at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    current, version = state_store.read()

    manifests: dict[str, Manifest] = {}
    outcomes: list[TableOutcome] = []
    # One read per table: in parallel, as 10,000 sequential S3 reads would take minutes.
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        results = list(
            pool.map(lambda item: _manifest_for(item, storage, failures, run_failures), plan.items)
        )
    for item, (manifest, problem) in zip(plan.items, results, strict=True):
        if manifest is None:
            before = current.tables.get(item.table)
            outcomes.append(
                TableOutcome(
                    table=item.table,
                    status="failed",
                    load_type=item.load_type,
                    watermark_before=before.watermark if before else None,
                    watermark_after=before.watermark if before else None,
                    message=problem,
                    warnings=item.warnings,
                )
            )
            continue
        manifests[item.table] = manifest
    outcomes += [TableOutcome(table=t, status="failed", message=m) for t, m in plan.failed.items()]
    outcomes += [TableOutcome(table=t, status="skipped", message=m) for t, m in plan.skipped.items()]
    outcomes += [_unchanged(name, current.tables.get(name)) for name in plan.unchanged]

    retried = _already_committed(current, plan.run_id)
    document, expired = current, []
    if retried:
        logger.info("run %s is already committed (state revision %d)", plan.run_id, current.revision)
    elif manifests or plan.refreshed_cursors:
        if version != plan.state_version:
            _discard_outputs(storage, plan, state_store)
            raise CommitConflictError(
                f"run {current.run_id!r} committed revision {current.revision} after run {plan.run_id!r} "
                "planned; this run published nothing, start it again",
                competing_run_id=current.run_id,
            )
        tables = dict(current.tables)
        for name, manifest in manifests.items():
            tables[name], dropped = _next_state(
                current.tables.get(name), manifest, committed_at, retained_snapshots, plan.registry_file
            )
            expired += dropped
        for name, cursor in plan.refreshed_cursors.items():
            if name in tables and name not in manifests:
                tables[name] = replace(tables[name], cursor=cursor)
        document = current.with_tables(tables, plan.run_id, committed_at)
        try:
            state_store.write(document, expected_version=version)
        except CommitConflictError:
            _discard_outputs(storage, plan, state_store)
            raise
        logger.info(
            "run %s committed %d table(s) and %d settled file cursor(s) as revision %d",
            plan.run_id,
            len(manifests),
            len(plan.refreshed_cursors),
            document.revision,
        )

    for name, manifest in manifests.items():
        previous = None if retried else current.tables.get(name)
        outcomes.append(
            TableOutcome(
                table=name,
                status="succeeded",
                load_type=manifest.load_type,
                rows_read=manifest.rows_read,
                rows_written=manifest.rows_written,
                rows_set_aside=manifest.rows_set_aside,
                watermark_before=previous.watermark if previous else manifest.watermark_before,
                watermark_after=manifest.watermark_after,
                duration_s=manifest.duration_s,
                location=manifest.output_location,
                warnings=manifest.warnings,
                previous_location=previous.location if previous else None,
                columns=manifest.schema,
                files_read=manifest.files_read,
                partition_by=manifest.partition_by,
                partitions=manifest.partitions,
            )
        )
    unpublished = [location for i in plan.items if i.table not in manifests for location in _outputs(i)]
    deleted = _delete_unreferenced(storage, expired + unpublished, document)
    seconds = {name: manifest.duration_s for name, manifest in manifests.items()}
    estimate = estimate_dpu_minutes(plan.glue_runs(), seconds, dpu_per_run) if plan.items else None
    return CommitReport(
        run_id=plan.run_id,
        revision=document.revision,
        committed_at=document.committed_at or committed_at,
        outcomes=sorted(outcomes, key=lambda outcome: outcome.table),
        warnings=plan.warnings,
        deleted_locations=deleted,
        glue_estimate=estimate.to_json() if estimate else None,
        registry_file=plan.registry_file,
    )


def _unchanged(name: str, tracker: TableState | None) -> TableOutcome:
    return TableOutcome(
        table=name,
        status="unchanged",
        rows_read=0,
        watermark_before=tracker.watermark if tracker else None,
        watermark_after=tracker.watermark if tracker else None,
        location=tracker.location if tracker else None,
        previous_location=tracker.location if tracker else None,
        files_read=0,
        message=None,
    )


def _outputs(item: WorkItem) -> list[str]:
    return [item.output_location, *([item.tombstones_location] if item.tombstones_location else [])]


def _discard_outputs(storage: Storage, plan: Plan, state_store: StateStore) -> None:
    """A refused run's outputs will never be published: remove them (never one the state names)."""
    current, _ = state_store.read()
    _delete_unreferenced(storage, [location for item in plan.items for location in _outputs(item)], current)


def _already_committed(current: StateDocument, run_id: str) -> bool:
    """A retried commit: the run's own revision, or trackers a later run has not replaced yet."""
    return current.run_id == run_id or any(table.run_id == run_id for table in current.tables.values())


def _manifest_for(
    item: WorkItem, storage: Storage, failures: dict[str, str], run_failures: dict[str, str]
) -> tuple[Manifest | None, str | None]:
    if item.table in failures:
        return None, failures[item.table]
    try:
        data = storage.read_json(item.manifest_location)
        if data is None:
            return None, run_failures.get(
                item.table, f"no manifest at {item.manifest_location}: its ingest did not finish"
            )
        if not isinstance(data, dict):
            raise ValueError("it holds JSON that is not an object")
        if _is_failure_record(data, item):
            return None, data["message"]
        manifest = Manifest.from_json(data)
    except (ValueError, TypeError, NewerFormatError) as exc:
        # A newer ingest's manifest is not unreadable: the message says which version to deploy.
        unreadable = f"manifest {item.manifest_location} is unreadable ({exc}); the table is not published"
        return None, str(exc) if isinstance(exc, NewerFormatError) else unreadable
    if (manifest.run_id, manifest.table) != (item.run_id, item.table) or manifest.status != SUCCEEDED:
        return None, (
            f"manifest {item.manifest_location} is for run {manifest.run_id!r} table {manifest.table!r} "
            f"with status {manifest.status!r}, not a success of this run"
        )
    return manifest, None


def _is_failure_record(data: dict[str, Any], item: WorkItem) -> bool:
    """What ``ingest_items`` leaves for a table that failed (manifest.failure_record)."""
    identity = (data.get("status"), data.get("run_id"), data.get("table"))
    return identity == (FAILED, item.run_id, item.table) and isinstance(data.get("message"), str)


def _next_state(
    previous: TableState | None,
    manifest: Manifest,
    committed_at: str,
    retained_snapshots: int,
    registry_file: str | None = None,
) -> tuple[TableState, list[str]]:
    """The table's new tracker and the folders (snapshots, tombstones, partitions) that fall out of
    retention: every folder the old tracker kept and the new one does not."""
    locations = _retain(
        manifest.output_location,
        [previous.location, *previous.previous_locations] if previous else [],
        retained_snapshots,
    )
    tombstones = _retain(
        manifest.tombstones_location,
        [
            *([previous.tombstones] if previous and previous.tombstones else []),
            *(previous.previous_tombstones if previous else ()),
        ],
        retained_snapshots,
    )
    state = TableState(
        watermark=manifest.watermark_after,
        location=manifest.output_location,
        rows=manifest.rows_written,
        run_id=manifest.run_id,
        committed_at=committed_at,
        load_type=manifest.load_type,
        mode=manifest.mode,
        watermark_column=manifest.watermark_column,
        previous_locations=tuple(locations),
        primary_key=tuple(manifest.primary_key),
        sequence_column=manifest.sequence_column,
        delete_column=manifest.delete_column,
        delete_values=tuple(manifest.delete_values),
        incremental_by=manifest.incremental_by,
        cursor=manifest.cursor,
        watermark_unit=manifest.watermark_unit,
        tombstones=manifest.tombstones_location,
        previous_tombstones=tuple(tombstones),
        bytes=manifest.bytes_written,
        partition_by=tuple(manifest.partition_by),
        partitions=manifest.partitions,
        retained_partitions=_retained_partitions(previous, manifest, retained_snapshots),
        registry_file=registry_file,
    )
    return state, sorted(previous.locations() - state.locations()) if previous else []


def _retained_partitions(
    previous: TableState | None, manifest: Manifest, retained_snapshots: int
) -> tuple[dict[str, dict[str, Any]], ...]:
    """The partitions of the earlier snapshots kept beside the new one (newest first)."""
    if previous is None or manifest.partitions is None:
        return ()
    earlier = ([previous.partitions] if previous.partitions is not None else []) + list(
        previous.retained_partitions
    )
    return tuple(earlier[: retained_snapshots - 1])


def _retain(current: str | None, history: list[str], retained: int) -> list[str]:
    """Of the earlier folders (newest first), those kept beside ``current``."""
    earlier = [location for location in dict.fromkeys(history) if location != current]
    return earlier[: retained - 1]


def _delete_unreferenced(storage: Storage, locations: list[str], document: StateDocument) -> list[str]:
    referenced = set()
    for table in document.tables.values():
        referenced.update(table.locations())
    doomed = [location for location in dict.fromkeys(locations) if location not in referenced]
    # A folder inside another doomed one (a partition in its run's folder) goes with it: deleting
    # both at once, from two threads, would race.
    folders = {location.rstrip("/") for location in doomed}
    doomed = [location for location in doomed if not _inside_any(location, folders)]
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        existed = list(pool.map(storage.delete_tree, doomed))
    return [location for location, was_there in zip(doomed, existed, strict=True) if was_there]


def _inside_any(location: str, folders: set[str]) -> bool:
    parts = location.rstrip("/").split("/")
    return any("/".join(parts[:end]) in folders for end in range(1, len(parts)))
