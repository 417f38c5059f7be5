"""Plan: decide, for every table of the source database, what this run will do with it.

The plan is bookkeeping: it joins the catalog, the files each table holds, the registry and the
committed state into one JSON-serialisable work item per table that has something to read (see
docs/semantics.md). A table with no new file gets no work item at all. It becomes the Plan Lambda.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import uuid
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW, FileCursor, settle_micros
from cdc_pipeline.catalog import Catalog, CatalogTable, table_name_pages
from cdc_pipeline.errors import ConfigurationError, NewerFormatError, TableError
from cdc_pipeline.registry import DEFAULT_WATERMARK_COLUMN, IncrementalBy, Registry, TableSettings
from cdc_pipeline.schema import AmbiguousColumnError, by_lower_name, normalise_type, resolve
from cdc_pipeline.state import StateDocument, TableState
from cdc_pipeline.watermark import WatermarkKind

logger = logging.getLogger(__name__)

# What a watermark (ordering) column may hold: a time type, ISO-8601 text, or an integer epoch whose
# unit the registry names.
TIME_TYPES = frozenset(kind.value for kind in WatermarkKind)
INTEGER_TYPES = frozenset({"tinyint", "smallint", "int", "bigint"})
WORK_ITEM_FORMAT = 3
# plan.json's format. 1 (written before formats were numbered, no format_version) held every work
# item whole; 2 leaves out each item's file lists (PER_FILE_FIELDS), which only the ingest reads,
# from the item and pack files. Both are read; a newer format is refused (Plan.from_json).
PLAN_FORMAT = 2
PER_FILE_FIELDS = ("files", "next_cursor")
UPGRADE_INGEST = (
    "upgrade the ingest's cdc-pipeline: deploy one version of the Plan and the ingest, start a new run"
)
PLAN_THREADS = 16  # tables listed and described at once (S3 and Glue calls)


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

    def tombstones(self, table: str, run_id: str) -> str:
        return _join(self.output_path, table, "tombstones", run_id)

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

    def pack(self, number: int, run_id: str) -> str:
        return _join(self.run_dir(run_id), "packs", f"pack-{number:04d}.json")

    def report(self, run_id: str) -> str:
        return _join(self.run_dir(run_id), "report.json")


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *(part.strip("/") for part in parts[1:])])


@dataclass(frozen=True)
class WorkItem:
    """Everything one ingest needs; travels as JSON (a file the Glue job argument names).

    ``files`` are the data files to read, relative to ``location``; None reads the whole location
    (a source with no files to list). ``next_cursor`` is the table's file cursor once this item is
    committed. ``input_bytes`` (the files' bytes) and ``snapshot_bytes`` (the current snapshot's)
    size the work; None where they are not known.
    """

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
    incremental_by: str = IncrementalBy.WATERMARK.value
    files: list[str] | None = None
    next_cursor: dict[str, Any] | None = None
    watermark_unit: str | None = None
    current_tombstones: str | None = None
    tombstones_location: str | None = None
    tombstone_retention_micros: int = 0
    # What the ingest will read, for packing small tables into shared Glue runs (None: unknown).
    input_bytes: int | None = None
    snapshot_bytes: int | None = None
    # Output partition columns, and the current snapshot's partitions (state.Partitions) when it has some.
    partition_by: list[str] = field(default_factory=list)
    current_partitions: dict[str, dict[str, Any]] | None = None
    format_version: int = WORK_ITEM_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkItem:
        version = data.get("format_version") if isinstance(data, dict) else None
        table = data.get("table") if isinstance(data, dict) else None
        NewerFormatError.check(f"the work item of table {table!r}", version, WORK_ITEM_FORMAT, UPGRADE_INGEST)
        if version != WORK_ITEM_FORMAT:
            raise ConfigurationError(
                f"work item of table {table!r} has format "
                f"{version!r}; this cdc-pipeline reads format {WORK_ITEM_FORMAT}. The Plan and the ingest "
                "come from different versions: deploy one version of both and start a new run"
            )
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    """What a run will do with each table of the source.

    ``items`` are whole where the plan is made. plan.json, the plan as the Commit reads it back,
    holds each item without its file lists (``files``, ``next_cursor``: up to one name per data
    file): the commit reads none of them, and the item and pack files the ingest reads hold every
    item whole, so the file lists are written once. A plan read back therefore has items whose
    ``files`` and ``next_cursor`` are None: enough to commit the run, not to ingest it.
    """

    run_id: str
    created_at: str
    requested_load_type: str | None
    state_version: str | None
    items: list[WorkItem]
    failed: dict[str, str]
    skipped: dict[str, str]
    warnings: list[str]
    # Tables with no new file since their last commit: no ingest, their tracker stays as it is...
    unchanged: list[str] = field(default_factory=list)
    # ...but for its file cursor, where it can forget many files that have settled since.
    refreshed_cursors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Tables that share one Glue run, by the location of their pack file (packs.py).
    packs: dict[str, list[str]] = field(default_factory=dict)
    # The registry file the run planned with: the commit records it in each tracker it writes.
    registry_file: str | None = None

    def glue_runs(self) -> list[list[str]]:
        """The tables of each Glue run: every pack, and every other item alone."""
        packed = {table for tables in self.packs.values() for table in tables}
        alone = [[item.table] for item in self.items if item.table not in packed]
        return alone + [list(tables) for tables in self.packs.values()]

    def to_json(self) -> dict[str, Any]:
        """plan.json: the plan with each item's file lists replaced by ``file_count``; it shares the
        plan's values rather than copying them, so write it, do not change it."""
        return {
            "format_version": PLAN_FORMAT,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "requested_load_type": self.requested_load_type,
            "state_version": self.state_version,
            "items": [_without_files(item) for item in self.items],
            "failed": self.failed,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "unchanged": self.unchanged,
            "refreshed_cursors": self.refreshed_cursors,
            "packs": self.packs,
            "registry_file": self.registry_file,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """The plan plan.json holds, its items without their file lists (see the class docstring).

        Raises
        ------
        ConfigurationError
            When the plan is of a format this version does not read (a newer one).
        """
        # Format 1 (no format_version) held whole items: reading them without their file lists
        # gives what a format 2 plan gives. A later format may mean anything: refused.
        version = data.get("format_version", 1) if isinstance(data, dict) else None
        run_id = data.get("run_id") if isinstance(data, dict) else None
        NewerFormatError.check(
            f"the plan of run {run_id!r}",
            version,
            PLAN_FORMAT,
            "upgrade the Commit's cdc-pipeline: deploy one version of the Plan and the Commit",
        )
        if version not in (1, PLAN_FORMAT):
            raise ConfigurationError(
                f"the plan of run {run_id!r} has format {version!r}; this cdc-pipeline reads plan formats 1 "
                f"and {PLAN_FORMAT}. The Plan and the Commit come from different versions: deploy one "
                "version of both and start a new run"
            )
        left_out = {*PER_FILE_FIELDS, "file_count"}
        items = [
            WorkItem.from_json({key: value for key, value in entry.items() if key not in left_out})
            for entry in data["items"]
        ]
        return cls(
            run_id=data["run_id"],
            created_at=data["created_at"],
            requested_load_type=data["requested_load_type"],
            state_version=data["state_version"],
            items=items,
            failed=data["failed"],
            skipped=data["skipped"],
            warnings=data["warnings"],
            unchanged=data.get("unchanged", []),
            refreshed_cursors=data.get("refreshed_cursors", {}),
            packs=data.get("packs", {}),
            registry_file=data.get("registry_file"),
        )


_PLAN_ENTRY_FIELDS = tuple(f.name for f in fields(WorkItem) if f.name not in PER_FILE_FIELDS)


def _without_files(item: WorkItem) -> dict[str, Any]:
    """A work item as plan.json holds it: its file lists left out, their count kept.

    The entry shares the item's values (JSON types all) instead of copying them as
    ``WorkItem.to_json`` does: it is serialised at once, and copying 10,000 items again cost as
    much as writing them.
    """
    entry = {name: getattr(item, name) for name in _PLAN_ENTRY_FIELDS}
    entry["file_count"] = None if item.files is None else len(item.files)
    return entry


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
    settle_window: str = DEFAULT_SETTLE_WINDOW,
    planned: Callable[[WorkItem], None] | None = None,
    accept_registry_change: Collection[str] = (),
) -> Plan:
    """One work item per table of the catalog (or of ``tables``) with something to read, with every
    fallback explained; tables with no new file are listed as unchanged.

    A committed table whose registry entry changed how its rows are keyed, ordered or deleted
    (or that the registry no longer lists) fails, keeping its tracker and snapshot, unless it is
    named in ``accept_registry_change``: it is then rebuilt by a full load with the new settings.

    Tables are planned on ``PLAN_THREADS`` threads as the catalog's pages of names arrive (a paged
    catalog such as Glue's), so listing their files overlaps listing the catalog; the plan holds
    them in name order whatever order they were listed and planned in. ``planned`` is called with
    each work item as soon as it is made, on the thread that made it (the plan stage starts
    writing it there); an error it raises fails the plan.
    """
    settle = settle_micros(settle_window)
    wanted = set(tables) if tables else None
    accepted = frozenset(accept_registry_change)

    def plan_table(name: str) -> WorkItem | _Unchanged | str | TableError:
        try:
            decision = _plan_table(
                name,
                catalog=catalog,
                registry=registry,
                tracker=state.tables.get(name),
                layout=layout,
                run_id=run_id,
                requested=load_type,
                settle=settle,
                accept_change=name in accepted,
            )
        except TableError as exc:
            return exc
        if planned is not None and isinstance(decision, WorkItem):
            planned(decision)
        return decision

    available: set[str] = set()
    planning: dict[str, Future[WorkItem | _Unchanged | str | TableError]] = {}
    pool = ThreadPoolExecutor(max_workers=PLAN_THREADS, thread_name_prefix="plan")
    try:
        for page in table_name_pages(catalog):
            available.update(page)
            for name in page:
                if (wanted is None or name in wanted) and name not in planning:
                    planning[name] = pool.submit(plan_table, name)
        for option, names in (("--tables", wanted or set()), ("--accept-registry-change", accepted)):
            unknown = sorted(names - available)
            if unknown:
                raise ConfigurationError(
                    f"{option} names {', '.join(map(repr, unknown))}, which the source does not hold"
                    f"{_case_hint(unknown, available)}; its tables are: "
                    f"{', '.join(map(repr, sorted(available))) or '(none)'}"
                )
        selected = sorted(planning)
        decisions = [planning[name].result() for name in selected]
    finally:
        # On an error, tables not started yet are not planned for nothing.
        pool.shutdown(cancel_futures=True)

    warnings = [
        f"registry names table {name!r}, which the source does not hold; check the name"
        for name in sorted(set(registry.tables) - {name.lower() for name in available})
    ]
    warnings += [
        f"--accept-registry-change names table {name!r}, but the registry has not changed how its rows "
        "are kept since its last commit: nothing to accept, it is planned as usual"
        for name in sorted(accepted & set(selected))
        if name not in state.tables
        or _registry_change(state.tables[name], registry.settings_for(name)) is None
    ]
    warnings += [
        f"--accept-registry-change names table {name!r}, which this run does not plan (--tables): "
        "nothing accepted"
        for name in sorted(accepted - set(selected))
    ]

    items: list[WorkItem] = []
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unchanged: list[str] = []
    refreshed: dict[str, dict[str, Any]] = {}
    for name, decision in zip(selected, decisions, strict=True):
        if isinstance(decision, TableError):
            failed[name] = str(decision)
            logger.error("table %s cannot be planned: %s", name, decision)
        elif isinstance(decision, _Unchanged):
            unchanged.append(name)
            if decision.refreshed_cursor is not None:
                refreshed[name] = decision.refreshed_cursor
        elif isinstance(decision, str):
            skipped[name] = decision
            logger.warning("table %s skipped: %s", name, decision)
        else:
            items.append(decision)
            for warning in decision.warnings:
                logger.warning("table %s: %s", name, warning)
    return Plan(
        run_id=run_id,
        created_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        requested_load_type=load_type.value if load_type else None,
        state_version=state_version,
        items=items,
        failed=failed,
        skipped=skipped,
        warnings=warnings,
        unchanged=unchanged,
        refreshed_cursors=refreshed,
        registry_file=registry.source,
    )


# An unchanged table's cursor is rewritten when that lets it forget at least this many files.
CURSOR_REFRESH_FILES = 1_000


@dataclass(frozen=True)
class _Unchanged:
    """No new file; ``refreshed_cursor`` is the cursor to commit when it shrinks by many files (a
    bulk load's files settle, and the state should not keep naming them)."""

    refreshed_cursor: dict[str, Any] | None = None


_NO_DATA = "no data files yet; its state is left as it was"


def _plan_table(
    name: str,
    *,
    catalog: Catalog,
    registry: Registry,
    tracker: TableState | None,
    layout: Layout,
    run_id: str,
    requested: LoadType | None,
    settle: int,
    accept_change: bool = False,
) -> WorkItem | _Unchanged | str:
    """The table's work item, or why it has none (unchanged, or no data yet).

    Raises
    ------
    TableError
        When the table cannot be planned, among others when the registry changed how its
        committed rows are kept and the change is not accepted (see :func:`_registry_change`).
    """
    _check_name(name)
    settings = registry.settings_for(name)
    change = _registry_change(tracker, settings) if tracker is not None else None
    if tracker is not None and change is not None and not accept_change:
        raise TableError(name, _refused_change(name, change, tracker, registry.source))
    ordered_keys = bool(settings and settings.time_ordered_keys)
    committed = FileCursor.from_json(tracker.cursor) if tracker and tracker.cursor else None
    start_after = (
        committed.start_after if committed and ordered_keys and requested is not LoadType.FULL else None
    )
    listing = catalog.list_files(name, start_after)
    if listing is not None and not listing.files and start_after is None:
        return _NO_DATA
    incremental_by = (settings.incremental_by if settings else None) or (
        IncrementalBy.ARRIVAL if listing is not None else IncrementalBy.WATERMARK
    )
    if incremental_by is IncrementalBy.ARRIVAL and listing is None:
        raise TableError(
            name,
            "the registry reads it by arrival, but its source has no files to list (its location is not "
            "a folder of files); set incremental_by to watermark in the registry",
        )
    warnings: list[str] = []
    if ordered_keys and incremental_by is IncrementalBy.WATERMARK:
        warnings.append("time_ordered_keys is ignored: the table is read by watermark, from all its files")
    load_type = _load_type(requested, tracker, incremental_by, warnings)
    if tracker is not None and change is not None:
        load_type = LoadType.FULL
        warnings.append(
            f"registry change accepted (since {_registry_name(tracker)}: {'; '.join(change.differences)}): "
            "full load to rebuild the snapshot with the new settings"
        )
    partition_by = settings.partition_by if settings else ()
    if (
        load_type is LoadType.INCREMENTAL
        and tracker is not None
        and [c.lower() for c in partition_by] != [c.lower() for c in tracker.partition_by]
    ):
        load_type = LoadType.FULL
        warnings.append(
            f"output partitioning changed from {list(tracker.partition_by)} to {list(partition_by)} since "
            "the last commit: full load to write the snapshot in the new layout"
        )
    if listing is not None and start_after is not None and load_type is LoadType.FULL:
        listing = catalog.list_files(name)  # a full load reads every file, not only the newest
    cursor = FileCursor()
    if load_type is LoadType.INCREMENTAL and committed is not None:
        cursor = committed
        if listing is not None and not cursor.new_files(listing.files):
            listed = listing.files if ordered_keys and incremental_by is IncrementalBy.ARRIVAL else None
            settled = cursor.advance([], listing.reference, settle, listed)
            forgets = len(cursor.recent) - len(settled.recent)
            return _Unchanged(settled.to_json() if forgets >= CURSOR_REFRESH_FILES else None)

    def build(load_type: LoadType, cursor: FileCursor) -> WorkItem | str:
        applied = cursor.new_files(listing.files) if listing is not None else []
        files: list[str] | None = None
        if listing is not None:
            files = [f.path for f in (applied if incremental_by is IncrementalBy.ARRIVAL else listing.files)]
        table = catalog.describe(name, files)
        if not table.has_data:
            return _NO_DATA
        item = _work_item(
            table,
            settings=settings,
            registry_source=registry.source,
            tracker=tracker,
            layout=layout,
            run_id=run_id,
            load_type=load_type,
            incremental_by=incremental_by,
            warnings=list(warnings),
        )
        if listing is None:
            return item
        listed = listing.files if ordered_keys and incremental_by is IncrementalBy.ARRIVAL else None
        read = applied if incremental_by is IncrementalBy.ARRIVAL else listing.files
        return replace(
            item,
            files=files,
            input_bytes=sum(data_file.size for data_file in read),
            location=listing.location,
            next_cursor=cursor.advance(applied, listing.reference, settle, listed).to_json(),
        )

    item = build(load_type, cursor)
    if isinstance(item, WorkItem) and item.load_type != load_type.value:
        # The settings call for a full load (they changed, or no watermark): read every file.
        warnings = item.warnings
        if listing is not None and start_after is not None:
            listing = catalog.list_files(name)
        item = build(LoadType.FULL, FileCursor())
        if isinstance(item, WorkItem):
            item = replace(item, warnings=warnings)
    return item


@dataclass(frozen=True)
class RegistryChange:
    """How the newest registry keeps a committed table's rows differently from its tracker."""

    dropped: bool  # the newest registry file no longer lists the table
    differences: tuple[str, ...]  # each "what: old -> new"


def _registry_change(tracker: TableState, settings: TableSettings | None) -> RegistryChange | None:
    """How the registry's settings (None: it does not list the table) key, order and delete the
    table's rows differently from the settings its committed snapshot was built with; None when
    they do not.

    Column names compare ignoring case, without reading the table's columns; a key-less table's
    delete and sequence settings are ignored, as its work items ignore them. The output
    partitioning, the read mode and the other settings are not compared: changing them rebuilds
    the same rows (see docs/registry.md, "Registry changes").
    """
    now = settings or TableSettings.default("")
    keyed = bool(now.primary_key)
    compared = [
        ("primary key", tracker.primary_key, now.primary_key),
        ("sequence column", tracker.sequence_column, now.sequence_column if keyed else None),
        ("delete column", tracker.delete_column, now.delete_column if keyed else None),
        ("delete values", tracker.delete_values, now.delete_values if keyed else ()),
        ("watermark unit", tracker.watermark_unit, now.watermark_unit),
    ]
    ordering = "ordering (watermark) column"
    if now.watermark_column_explicit:
        compared.append((ordering, tracker.watermark_column, now.watermark_column))
    elif (tracker.watermark_column or DEFAULT_WATERMARK_COLUMN).lower() != DEFAULT_WATERMARK_COLUMN:
        # Only a registry naming it orders by another column than the default: it no longer does.
        compared.append((ordering, tracker.watermark_column, f"{DEFAULT_WATERMARK_COLUMN} (the default)"))
    differences = [
        f"{what} {_shown(what, was)} -> {_shown(what, new)}"
        for what, was, new in compared
        if _comparable(what, was) != _comparable(what, new)
    ]
    if not differences and (tracker.mode == Mode.DEDUP.value) != keyed:
        # A tracker of a keyed table always records its key: only a damaged one gets here.
        differences.append(f"mode {tracker.mode} -> {(Mode.DEDUP if keyed else Mode.APPEND).value}")
    return RegistryChange(settings is None, tuple(differences)) if differences else None


def _comparable(what: str, value: str | tuple[str, ...] | None) -> object:
    """A setting as the pipeline matches it: column names ignoring case, delete values exactly."""
    if value is None or isinstance(value, str):
        return value.lower() if value else None
    return tuple(value) if what == "delete values" else tuple(name.lower() for name in value)


def _shown(what: str, value: str | tuple[str, ...] | None) -> str:
    if what == "primary key":
        return f"({', '.join(value)})" if value else "none (rows appended without deduplication)"
    if what == "delete values":
        return "|".join(value) if value else "none"
    return repr(value) if value else "none"


def _registry_name(tracker: TableState) -> str:
    return (
        f"registry file {tracker.registry_file}"
        if tracker.registry_file
        else "an earlier registry file (not recorded: committed by an earlier version)"
    )


def _refused_change(name: str, change: RegistryChange, tracker: TableState, newest: str) -> str:
    """Why a table whose registry entry changed is not loaded, and the two ways out."""
    if change.dropped:
        what = (
            f"the newest registry file {newest} no longer lists it; without a row it has no primary key "
            "and its rows would be appended as they land, deleted and superseded versions included"
        )
        revert = "publish a registry file that lists it again"
    else:
        what = f"the newest registry file {newest} changes how its rows are keyed, ordered or deleted"
        revert = "publish a registry file with its previous settings"
    since = _registry_name(tracker)
    if tracker.registry_file == newest:
        since += " (the same file, edited in place since: publish changes as new files)"
    return (
        f"{what}, since its tracker was committed under {since}: {'; '.join(change.differences)}. The "
        "table is not loaded and its tracker and snapshot are kept. If the change is intended, run again "
        f'with --accept-registry-change {name!r} (on AWS, "accept_registry_change": [{_json_name(name)}] '
        f"in the execution input) to rebuild it from all its files with the new settings; otherwise {revert}"
    )


def _json_name(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def _check_name(name: str) -> None:
    """A table's name becomes one folder of the output and of the run's files (any character but
    ``/``: the Glue catalog allows one, and ``a/b`` would nest inside table ``a``'s folder)."""
    if "/" in name or name in ("", ".", ".."):
        raise TableError(
            name,
            "its name cannot be a folder name in the output (it is empty, '.' or '..', or holds '/'), so "
            "its snapshot would land in another table's folder; rename the table in the source catalog, "
            "or leave it out with an exclude pattern",
        )


def _case_hint(names: Iterable[str], available: Iterable[str]) -> str:
    """For names matching none of ``available`` exactly: those that differ only in case."""
    by_folded: dict[str, list[str]] = {}
    for candidate in available:
        by_folded.setdefault(candidate.casefold(), []).append(candidate)
    hints = [
        f"{name!r} differs only in case from {', '.join(map(repr, by_folded[name.casefold()]))}"
        for name in names
        if name.casefold() in by_folded
    ]
    return f" ({'; '.join(hints)}: names are matched exactly here)" if hints else ""


def _load_type(
    requested: LoadType | None, tracker: TableState | None, incremental_by: IncrementalBy, warnings: list[str]
) -> LoadType:
    """The load type the read mode and the tracker allow; the settings are checked in _work_item."""
    if requested is LoadType.FULL:
        return LoadType.FULL
    if tracker is None:
        warnings.append("no committed tracker: full load")
        return LoadType.FULL
    # Trackers written before arrival reads (state format 1) read by watermark.
    was = IncrementalBy(tracker.incremental_by or IncrementalBy.WATERMARK)
    if was is not incremental_by:
        if tracker.incremental_by is None:
            reason = "its tracker predates reading by arrival and records no files"
        else:
            reason = f"it was read by {was.value}"
        warnings.append(f"now read by {incremental_by.value}, but {reason}: one full load")
        return LoadType.FULL
    if incremental_by is IncrementalBy.ARRIVAL and tracker.cursor is None:
        warnings.append("its tracker records no files: full load")
        return LoadType.FULL
    return LoadType.INCREMENTAL


def _resolve_named(
    table: CatalogTable, settings: TableSettings, registry_source: str, warnings: list[str]
) -> dict[str, str | None]:
    """The registry's columns in the table's spelling (names match ignoring case)."""
    try:
        columns = by_lower_name(table.column_names(), f"table {table.name!r}")
    except AmbiguousColumnError as exc:
        raise TableError(table.name, str(exc)) from exc
    resolved: dict[str, str | None] = {}
    for field_name, column in settings.named_columns().items():
        found = resolve(column, columns)
        if found is None and field_name in ("sequence_column", "delete_column"):
            # DMS full-load files carry no Op column: rows without it are not deletes.
            warnings.append(
                f"{field_name} {column!r} is in none of the files read: their rows have no "
                f"{'sequence' if field_name == 'sequence_column' else 'delete marker'}"
                f"{_lookalikes(column, columns.values())}"
            )
        elif found is None:
            raise TableError(
                table.name,
                f"registry {registry_source} names {field_name} {column!r}, which the table lacks; its "
                f"columns are {', '.join(map(repr, columns.values()))}"
                f"{_lookalikes(column, columns.values())}. Fix the registry row (or the source table)",
            )
        resolved[field_name] = found or column
    if not settings.watermark_column_explicit:
        resolved["watermark_column"] = resolve(settings.watermark_column, columns)
    return resolved


def _lookalikes(column: str, columns: Iterable[str]) -> str:
    """For a registry column the table lacks: the table's columns that differ from it only in case
    or in Unicode form, which look the same. Names match by lowercasing each (as Glue does), so
    ``ID`` finds ``id``; but not every case pair lowercases alike (``ΟΔΟΣ`` and ``οδοσ``), and an
    accented letter has a composed and a decomposed form (NFC, NFD) that compare unequal."""

    def folded(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    def case_only(name: str) -> bool:
        return len(name) == len(column) and all(
            a == b or a.upper() == b.upper() or a.lower() == b.lower()
            for a, b in zip(name, column, strict=True)
        )

    hints = []
    for name in columns:
        if case_only(name):
            hints.append(f"{name!r}, which differs from it only in case")
        elif folded(name) == folded(column):
            hints.append(f"{name!r}, which differs from it only in case or in its Unicode form (NFC, NFD)")
    if not hints:
        return ""
    return (
        f"; the table has {' and '.join(hints)}, but names are matched by lowercasing them, which does not "
        "make these equal: write the column in the registry as the table spells it"
    )


def _work_item(
    table: CatalogTable,
    *,
    settings: TableSettings | None,
    registry_source: str,
    tracker: TableState | None,
    layout: Layout,
    run_id: str,
    load_type: LoadType,
    incremental_by: IncrementalBy,
    warnings: list[str],
) -> WorkItem:
    if settings is None:
        settings = TableSettings.default(table.name)
        warnings.append("not in the registry: no primary key, rows are appended without deduplication")
    elif not settings.primary_key:
        warnings.append("registry gives no primary key: rows are appended without deduplication")
    named = _resolve_named(table, settings, registry_source, warnings)
    primary_key = [named[f"primary_key ({column})"] or column for column in settings.primary_key]
    partition_by = [named[f"partition_by ({column})"] or column for column in settings.partition_by]
    sequence_column = named.get("sequence_column")
    delete_column = named.get("delete_column")
    watermark_column = named.get("watermark_column")
    if watermark_column in table.partition_keys:
        raise TableError(
            table.name,
            f"watermark column {watermark_column!r} is a partition folder key, not a column inside the "
            "files, so it cannot order versions to the microsecond; name a timestamp column inside the "
            "files as watermark_column in the registry",
        )
    if watermark_column is None:
        how = (
            "versions of a key are ordered by the sequence column, then by arrival"
            if incremental_by is IncrementalBy.ARRIVAL
            else "the table is fully reloaded every run"
        )
        warnings.append(
            f"no watermark column {settings.watermark_column!r}: {how}, and it keeps no watermark"
        )
    else:
        _check_watermark_type(table, watermark_column, settings)

    keyed = bool(settings.primary_key)
    if not keyed:
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
            "keyed, but with neither a watermark nor a sequence column: when a key has several versions "
            "in one run, the one kept is chosen by content, not recency; set sequence_column in the registry"
        )
    if settings.lookback and incremental_by is IncrementalBy.ARRIVAL:
        warnings.append(
            f"lookback {settings.lookback!r} is ignored: the table is read by arrival, not by watermark"
        )

    mode = Mode.DEDUP if keyed else Mode.APPEND
    was_ordered_by = (tracker.watermark_column or "").lower() if tracker else ""
    if load_type is LoadType.INCREMENTAL and tracker is not None:
        if incremental_by is IncrementalBy.WATERMARK and watermark_column is None:
            load_type = LoadType.FULL
        elif incremental_by is IncrementalBy.WATERMARK and (
            tracker.watermark is None or was_ordered_by != (watermark_column or "").lower()
        ):
            load_type = LoadType.FULL
            warnings.append(
                f"tracker has no watermark on column {watermark_column!r} (was "
                f"{tracker.watermark_column!r}): full load"
            )
        elif tracker.watermark_column is not None and was_ordered_by != (watermark_column or "").lower():
            # The registry names no ordering column (a change of one it names fails in plan): the
            # default column appeared in or vanished from the table's files.
            load_type = LoadType.FULL
            warnings.append(
                f"its versions were ordered by {tracker.watermark_column!r}, which the files read now "
                f"{'lack' if watermark_column is None else 'spell ' + repr(watermark_column)}: full load to "
                "rebuild the snapshot in the new order"
            )

    incremental = load_type is LoadType.INCREMENTAL and tracker is not None
    return WorkItem(
        run_id=run_id,
        table=table.name,
        location=table.location,
        format=table.format,
        columns=[column.to_json() for column in table.columns],
        partition_keys=list(table.partition_keys),
        mode=mode.value,
        load_type=load_type.value,
        primary_key=primary_key,
        watermark_column=watermark_column,
        sequence_column=sequence_column if keyed else None,
        delete_column=delete_column if keyed else None,
        delete_values=list(settings.delete_values) if keyed else [],
        lookback_micros=settings.lookback_micros if incremental_by is IncrementalBy.WATERMARK else 0,
        last_watermark=tracker.watermark if incremental and tracker else None,
        current_snapshot=tracker.location if incremental and tracker else None,
        output_location=layout.snapshot(table.name, run_id),
        quarantine_location=layout.quarantine(table.name, run_id),
        manifest_location=layout.manifest(table.name, run_id),
        read_options=dict(table.options),
        warnings=warnings,
        incremental_by=incremental_by.value,
        watermark_unit=settings.watermark_unit,
        current_tombstones=tracker.tombstones if incremental and tracker else None,
        snapshot_bytes=tracker.bytes if incremental and tracker else None,
        partition_by=partition_by,
        current_partitions=tracker.partitions if incremental and tracker and partition_by else None,
        tombstones_location=layout.tombstones(table.name, run_id) if keyed and delete_column else None,
        tombstone_retention_micros=settings.tombstone_retention_micros,
    )


def _check_watermark_type(table: CatalogTable, column: str, settings: TableSettings) -> None:
    type_name = normalise_type(table.column_type(column) or "void")
    unit = settings.watermark_unit
    if type_name in INTEGER_TYPES and unit is None:
        raise TableError(
            table.name,
            f"watermark column {column!r} holds integers ({type_name}); say what they count with "
            "watermark_unit in the registry: seconds, milliseconds or microseconds since 1970-01-01 UTC",
        )
    if unit is not None and type_name not in INTEGER_TYPES:
        raise TableError(
            table.name,
            f"the registry gives watermark_unit {unit!r}, but watermark column {column!r} is a "
            f"{type_name}, not an integer epoch; leave watermark_unit blank",
        )
    if type_name not in TIME_TYPES | INTEGER_TYPES | {"string"}:
        raise TableError(
            table.name,
            f"watermark column {column!r} has type {type_name}; it must be a timestamp, timestamp_ntz, "
            "date, ISO-8601 string or integer epoch (with watermark_unit). Name another column as "
            "watermark_column in the registry, or cast this one in the source",
        )
