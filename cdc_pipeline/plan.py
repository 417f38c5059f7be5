"""Plan: decide, for every table of the source database, what this run will do with it.

The plan is pure bookkeeping (no data is read): it joins the catalog, the registry and the
committed state into one JSON-serialisable work item per table. It becomes the Plan Lambda.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cdc_pipeline.catalog import Catalog, CatalogTable
from cdc_pipeline.errors import ConfigurationError, TableError
from cdc_pipeline.registry import Registry, TableSettings
from cdc_pipeline.state import StateDocument
from cdc_pipeline.watermark import WatermarkKind

logger = logging.getLogger(__name__)

WATERMARK_TYPES = frozenset(kind.value for kind in WatermarkKind)


class LoadType(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class Mode(StrEnum):
    DEDUP = "dedup"  # keyed: one current version per primary key
    APPEND = "append"  # no key: rows are kept as they come


@dataclass(frozen=True)
class Layout:
    """Where a run writes: one fact, used by plan, ingest, commit and the tests alike."""

    output_path: str
    cdc_path: str

    def snapshot(self, table: str, run_id: str) -> str:
        return _join(self.output_path, table, "snapshots", run_id)

    def quarantine(self, table: str, run_id: str) -> str:
        return _join(self.output_path, table, "quarantine", run_id)

    def run_dir(self, run_id: str) -> str:
        return _join(self.cdc_path, "runs", run_id)

    def manifest(self, table: str, run_id: str) -> str:
        return _join(self.run_dir(run_id), "manifests", f"{table}.json")

    def plan(self, run_id: str) -> str:
        return _join(self.run_dir(run_id), "plan.json")

    def items(self, run_id: str) -> str:
        return _join(self.run_dir(run_id), "items.json")

    def item(self, table: str, run_id: str) -> str:
        return _join(self.run_dir(run_id), "items", f"{table}.json")

    def report(self, run_id: str) -> str:
        return _join(self.run_dir(run_id), "report.json")


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *(part.strip("/") for part in parts[1:])])


@dataclass(frozen=True)
class WorkItem:
    """Everything one ingest needs; travels as JSON (Glue job arguments, Map items)."""

    run_id: str
    table: str
    location: str
    format: str
    columns: list[dict[str, str]]
    partition_keys: list[str]
    mode: str
    load_type: str
    primary_key: list[str]
    watermark_column: str | None
    sequence_column: str | None
    delete_column: str | None
    delete_values: list[str]
    lookback_micros: int
    last_watermark: str | None
    current_snapshot: str | None
    output_location: str
    quarantine_location: str
    manifest_location: str
    read_options: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkItem:
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    run_id: str
    created_at: str
    requested_load_type: str | None
    state_version: str | None
    items: list[WorkItem]
    failed: dict[str, str]
    skipped: dict[str, str]
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created_at": self.created_at,
            "requested_load_type": self.requested_load_type,
            "state_version": self.state_version,
            "items": [item.to_json() for item in self.items],
            "failed": self.failed,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**{**data, "items": [WorkItem.from_json(item) for item in data["items"]]})


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by start time, unique across concurrent starts."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:8]}"


def plan_run(
    *,
    catalog: Catalog,
    registry: Registry,
    state: StateDocument,
    state_version: str | None,
    layout: Layout,
    run_id: str,
    load_type: LoadType | None = None,
    tables: list[str] | None = None,
    now: datetime | None = None,
) -> Plan:
    """One work item per table of the catalog (or of ``tables``), with every fallback explained."""
    available = catalog.table_names()
    if tables:
        unknown = sorted(set(tables) - set(available))
        if unknown:
            raise ConfigurationError(
                f"--tables names {', '.join(unknown)}, which the source does not hold; "
                f"its tables are: {', '.join(available) or '(none)'}"
            )
        selected = [name for name in available if name in set(tables)]
    else:
        selected = available

    warnings = [
        f"registry names table {name!r}, which the source does not hold; check the name"
        for name in sorted(set(registry.tables) - {name.lower() for name in available})
    ]
    items: list[WorkItem] = []
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in selected:
        try:
            table = catalog.describe(name)
            if not table.has_data:
                skipped[name] = "no data files yet; its state is left as it was"
                logger.warning("table %s skipped: no data files", name)
                continue
            items.append(
                _work_item(
                    table, registry=registry, state=state, layout=layout, run_id=run_id, requested=load_type
                )
            )
        except TableError as exc:
            failed[name] = str(exc)
            logger.error("table %s cannot be planned: %s", name, exc)
    for item in items:
        for warning in item.warnings:
            logger.warning("table %s: %s", item.table, warning)
    return Plan(
        run_id=run_id,
        created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        requested_load_type=load_type.value if load_type else None,
        state_version=state_version,
        items=items,
        failed=failed,
        skipped=skipped,
        warnings=warnings,
    )


def _work_item(
    table: CatalogTable,
    *,
    registry: Registry,
    state: StateDocument,
    layout: Layout,
    run_id: str,
    requested: LoadType | None,
) -> WorkItem:
    warnings: list[str] = []
    settings = registry.settings_for(table.name)
    if settings is None:
        settings = TableSettings.default(table.name)
        warnings.append("not in the registry: no primary key, rows are appended without deduplication")
    elif not settings.primary_key:
        warnings.append("registry gives no primary key: rows are appended without deduplication")

    columns = table.column_names()
    for field_name, column in settings.named_columns().items():
        if column not in columns:
            raise TableError(
                table.name,
                f"registry {registry.source} names {field_name} {column!r}, which the table lacks; its "
                f"columns are {', '.join(columns)}. Fix the registry row (or the source table)",
            )

    watermark_column: str | None = settings.watermark_column
    if watermark_column in table.partition_keys:
        raise TableError(
            table.name,
            f"watermark column {watermark_column!r} is a partition folder key, not a column inside the "
            "files, so it cannot order versions to the microsecond; name a timestamp column inside the "
            "files as watermark_column in the registry",
        )
    if watermark_column not in columns:
        warnings.append(
            f"no watermark column {watermark_column!r}: the table is fully reloaded every run and "
            "keeps no watermark"
        )
        watermark_column = None
    elif (kind := table.column_type(watermark_column)) not in WATERMARK_TYPES:
        raise TableError(
            table.name,
            f"watermark column {watermark_column!r} has type {kind}; a watermark must be one of "
            f"{', '.join(sorted(WATERMARK_TYPES))}. Name another column as watermark_column in the "
            "registry, or cast this one in the source",
        )
    if not settings.primary_key:
        ignored = {
            "delete_column": "there is no row for a delete to remove",
            "sequence_column": "no versions of a key are compared",
            "lookback": "appends read strictly newer rows only",
        }
        for name, reason in ignored.items():
            if getattr(settings, name):
                warnings.append(
                    f"{name} {getattr(settings, name)!r} is ignored without a primary key: {reason}"
                )
    elif watermark_column is None and not settings.sequence_column:
        warnings.append(
            "keyed, but with neither a watermark nor a sequence column: when a key has several versions, "
            "the one kept is chosen by content, not recency; set sequence_column in the registry"
        )

    mode = Mode.DEDUP if settings.primary_key else Mode.APPEND
    dedup_settings = (
        mode.value,
        settings.primary_key,
        settings.sequence_column,
        settings.delete_column,
        settings.delete_values,
    )
    tracker = state.tables.get(table.name)
    if requested is LoadType.FULL or watermark_column is None:
        load_type = LoadType.FULL
    elif tracker is None:
        load_type = LoadType.FULL
        warnings.append("no committed tracker: full load")
    elif tracker.watermark is None or tracker.watermark_column != watermark_column:
        load_type = LoadType.FULL
        warnings.append(
            f"tracker has no watermark on column {watermark_column!r} (was "
            f"{tracker.watermark_column!r}): full load"
        )
    elif tracker.dedup_settings() != dedup_settings:
        load_type = LoadType.FULL
        warnings.append(
            "registry changed how rows are keyed, ordered or deleted since the last commit "
            f"(was key {list(tracker.primary_key)}, sequence {tracker.sequence_column!r}, delete column "
            f"{tracker.delete_column!r}): full load to rebuild the snapshot"
        )
    else:
        load_type = LoadType.INCREMENTAL

    incremental = load_type is LoadType.INCREMENTAL
    return WorkItem(
        run_id=run_id,
        table=table.name,
        location=table.location,
        format=table.format,
        columns=[column.to_json() for column in table.columns],
        partition_keys=list(table.partition_keys),
        mode=mode.value,
        load_type=load_type.value,
        primary_key=list(settings.primary_key),
        watermark_column=watermark_column,
        sequence_column=settings.sequence_column,
        delete_column=settings.delete_column,
        delete_values=list(settings.delete_values),
        lookback_micros=settings.lookback_micros,
        last_watermark=tracker.watermark if incremental and tracker else None,
        current_snapshot=tracker.location if incremental and tracker else None,
        output_location=layout.snapshot(table.name, run_id),
        quarantine_location=layout.quarantine(table.name, run_id),
        manifest_location=layout.manifest(table.name, run_id),
        read_options=dict(table.options),
        warnings=warnings,
    )
