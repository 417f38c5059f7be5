"""Ingest one table: read its new rows, set aside what cannot be merged, merge, write, describe.

This is the Glue job's body (and the local runner's, per table). It writes only to run-specific
locations and publishes nothing: the commit stage does that for all tables at once. The steps:

1. **read**: exactly the files the plan chose (or, for a source with no files to list, its whole
   location), the current snapshot and its tombstones, reconciled to one set of column names
   (ignoring case) and widened types (:mod:`cdc_pipeline.schema`);
2. **order**: each row's ordering value as exact microseconds, whatever the column's type;
   a watermark-mode run keeps only the rows at or after the watermark;
3. **set aside** rows with a null key or an unreadable ordering value, to the quarantine;
4. **merge** the rest into the snapshot (or append them), keeping tombstones of deleted keys;
5. **write** the new snapshot (and tombstones), collecting the counts while writing;
6. **describe** what was done in the manifest the commit reads.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from py4j.protocol import Py4JError, Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdc_pipeline import partitions
from cdc_pipeline.errors import TableError, cause_messages, root_cause
from cdc_pipeline.manifest import SUCCEEDED, Manifest, failure_record
from cdc_pipeline.packs import work_bytes
from cdc_pipeline.plan import LoadType, Mode, WorkItem
from cdc_pipeline.registry import EPOCH_UNITS, IncrementalBy
from cdc_pipeline.schema import AmbiguousColumnError, by_lower_name, widen
from cdc_pipeline.spark import check_session, literal_groups, load_literally, read_parquet
from cdc_pipeline.storage import Storage
from cdc_pipeline.transform import (
    ORDER_COLUMN,
    DedupStrategy,
    Merged,
    append_rows,
    col,
    full_load_tombstones,
    is_time_type,
    merge_into_snapshot,
    null_key_condition,
    ordering_micros,
    spelling,
    watermark_kind,
    watermark_literal,
)
from cdc_pipeline.watermark import Watermark, WatermarkKind

logger = logging.getLogger(__name__)

SEQUENCE_COLUMN = "_cdc_sequence"  # the sequence column's value, or NULL where a file lacks it
_REASON = "_cdc_set_aside_reason"
NULL_KEY = "null primary key"
UNREADABLE_ORDERING = "unreadable ordering value"


def ingest_table(
    spark: SparkSession,
    item: WorkItem,
    storage: Storage,
    strategy: DedupStrategy = DedupStrategy.WINDOW,
) -> Manifest:
    """Run one work item; raise TableError (naming the table and the fix) when it cannot be done."""
    check_session(spark)
    if item.output_location in {item.location, item.current_snapshot}:
        raise TableError(item.table, f"output location {item.output_location} would overwrite live data")
    # An earlier attempt's manifest must not vouch for the output this attempt is about to replace.
    storage.delete_tree(item.manifest_location)
    started_at = datetime.now(UTC)
    start = time.monotonic()
    try:
        manifest = _ingest(spark, item, storage, strategy=strategy, started_at=started_at, start=start)
    except (Py4JJavaError, PySparkException) as exc:
        raise TableError(item.table, _spark_failure(exc)) from exc
    storage.write_json(item.manifest_location, manifest.to_json())
    logger.info(
        "table %s ingested: %d file(s), %d rows read, %d written, watermark %s -> %s",
        item.table,
        manifest.files_read,
        manifest.rows_read,
        manifest.rows_written,
        manifest.watermark_before,
        manifest.watermark_after,
    )
    return manifest


Done = Callable[[WorkItem, "Manifest | None", "str | None"], None]


@dataclass(frozen=True)
class Ingested:
    """What several ingests left: each table's manifest, or its error."""

    manifests: dict[str, Manifest]
    failures: dict[str, str]


def ingest_items(
    spark: SparkSession,
    items: Sequence[WorkItem],
    storage: Storage,
    *,
    parallelism: int,
    started: Callable[[WorkItem], None] | None = None,
    done: Done | None = None,
) -> Ingested:
    """Ingest several work items on one session, each on its own: one table's failure fails only
    that table; the error of each table that failed is also left as its failure record.

    An item whose success manifest of this run already exists (a retried Glue run) is not ingested
    again. ``started`` and ``done`` are called once per item, ``done`` with its manifest or its error.
    """
    manifests: dict[str, Manifest] = {}
    failures: dict[str, str] = {}

    def one(item: WorkItem) -> Manifest:
        if started:
            started(item)
        existing = storage.read_json(item.manifest_location)
        if isinstance(existing, dict) and existing.get("status") == SUCCEEDED:
            manifest = Manifest.from_json(existing)
            if (manifest.run_id, manifest.table) == (item.run_id, item.table):
                logger.info(
                    "table %s: already ingested by an earlier attempt of run %s", item.table, item.run_id
                )
                return manifest
        return ingest_table(spark, item, storage)

    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="ingest") as pool:
        futures = {pool.submit(one, item): item for item in items}
        try:
            for future in as_completed(futures):
                item = futures[future]
                try:
                    manifest = future.result()
                except TableError as exc:
                    logger.warning("%s", exc, exc_info=exc)  # the cause's trace, for the run's log only
                    failures[item.table] = str(exc)
                except Exception as exc:
                    logger.exception("table %s failed unexpectedly", item.table)
                    failures[item.table] = f"unexpected {type(exc).__name__}: {root_cause(exc)}"
                else:
                    manifests[item.table] = manifest
                    if done:
                        done(item, manifest, None)
                    continue
                storage.write_json(
                    item.manifest_location, failure_record(item.run_id, item.table, failures[item.table])
                )
                if done:
                    done(item, None, failures[item.table])
        except BaseException:
            _stop(spark, pool, list(futures))
            raise
    return Ingested(manifests, failures)


def _stop(spark: SparkSession, pool: ThreadPoolExecutor, futures: list[Future[Manifest]]) -> None:
    """The run is being stopped (interrupted): start no other table, and cancel the Spark jobs of
    those running until their threads have ended, so that nothing writes on behind the caller.
    Jobs are cancelled again and again: a thread between two jobs starts its next one after a
    cancel."""
    pool.shutdown(wait=False, cancel_futures=True)
    running = {future for future in futures if not future.done()}
    logger.warning("stopping: %d ingest(s) under way, their Spark jobs cancelled", len(running))
    start = time.monotonic()
    while running:
        try:
            spark.sparkContext.cancelAllJobs()
        except Py4JError:
            logger.warning("could not cancel the Spark jobs of the run being stopped", exc_info=True)
        _, running = wait(running, timeout=0.5)
    logger.info("stopped the ingests in %.1fs", time.monotonic() - start)


# ----------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------


def _ingest(
    spark: SparkSession,
    item: WorkItem,
    storage: Storage,
    *,
    strategy: DedupStrategy,
    started_at: datetime,
    start: float,
) -> Manifest:
    item, carried = _select_partitions(spark, item)
    inputs = read_inputs(spark, item)
    ordering = _Ordering.of(item, inputs.batch)
    before = Watermark.parse(item.last_watermark) if item.last_watermark else None
    prepared = _prepare(item, inputs, ordering, before)
    incremental = item.load_type == LoadType.INCREMENTAL
    merged = _merge(item, prepared, strategy, started_at)
    # A large full load's tombstones come from its delete rows and the written snapshot's keys:
    # keeping every winning row to derive both outputs from one comparison cost 44% of the load.
    after_write = (
        not incremental
        and merged.tombstones is not None
        and item.delete_column is not None
        # Names match ignoring case: Glue's catalog says op where the files say Op.
        and spelling(prepared.batch, item.delete_column) in prepared.batch.columns
        and not _is_small(item)
    )
    # An incremental batch, deduplicated, meets the snapshot and the tombstones by its keys several
    # times: it is small, cache it. A full load's is the whole table and is used once. Otherwise
    # snapshot and tombstones both come from one comparison of the changed keys: run it once.
    with (
        _cached(merged.latest, incremental and not _is_small(item)),
        _cached(merged.resolved, merged.tombstones is not None and not after_write),
    ):
        written = _write_snapshot(spark, item, merged.snapshot, carried, storage)
        tombstones = (
            _full_load_tombstones(spark, item, prepared, merged.snapshot, started_at)
            if after_write
            else merged.tombstones
        )
        tombstones_location = _write_tombstones(item, tombstones)
    stats = _BatchStats.of(prepared.metrics)
    quarantine = _set_aside(item, prepared.batch, stats)

    warnings = list(item.warnings)
    if quarantine:
        warnings.append(_set_aside_warning(item, stats, quarantine))
    null_orderings = _null_orderings(item, inputs, ordering, stats)
    if null_orderings:
        warnings.append(_null_ordering_warning(item, null_orderings, incremental))
    return _manifest(
        item,
        warnings,
        started_at,
        start,
        rows_read=stats.rows,
        written=written,
        set_aside=stats.set_aside,
        null_watermarks=null_orderings,
        before=before,
        after=_new_watermark(before, stats.max_order, ordering.kind),
        quarantine=quarantine,
        schema=schema_columns(merged.snapshot),
        tombstones=tombstones_location,
    )


def _select_partitions(spark: SparkSession, item: WorkItem) -> tuple[WorkItem, partitions.Partitions]:
    """For a partitioned snapshot: the item reading only the partitions its batch touches, and the
    partitions carried as they are."""
    if not item.partition_by or item.current_partitions is None:
        return item, {}
    touched = _touched_partitions(spark, item)
    current = item.current_partitions
    carried = {pid: p for pid, p in current.items() if pid not in touched}
    return replace(item, current_partitions={pid: p for pid, p in current.items() if pid in touched}), carried


@dataclass(frozen=True)
class _Written:
    """The new snapshot: its rows and bytes, and its partitions when it has them."""

    rows: int
    bytes: int
    partitions: partitions.Partitions | None = None


def _write_snapshot(
    spark: SparkSession, item: WorkItem, snapshot: DataFrame, carried: partitions.Partitions, storage: Storage
) -> _Written:
    if not item.partition_by:
        rows = _write(snapshot, item.output_location, f"written-{item.run_id}-{item.table}")
        return _Written(rows, sum(storage.file_sizes(item.output_location).values()))
    partitions.check_columns(item.table, snapshot)
    partitions.write(snapshot, item.output_location, item.partition_by, one_task=_is_small_output(snapshot))
    sizes = storage.file_sizes(item.output_location)
    current = {**carried, **partitions.describe(spark, item.output_location, item.partition_by, sizes)}
    return _Written(
        sum(p["rows"] for p in current.values()), sum(p["bytes"] for p in current.values()), current
    )


def _touched_partitions(spark: SparkSession, item: WorkItem) -> set[str]:
    """The ids of the current snapshot's partitions this item's batch touches."""
    batch = read_inputs(
        spark, replace(item, current_snapshot=None, current_partitions=None, current_tombstones=None)
    )
    return partitions.touched(
        batch.batch,
        partitions.read(spark, item.current_partitions or {}),
        primary_key=item.primary_key,
        partition_by=item.partition_by,
    )


@dataclass(frozen=True)
class _Prepared:
    """The batch with its ordering and set-aside columns, observed (and as it is before: a second
    read of a few of its columns must not re-read them all for the observation); the snapshot and
    tombstones reconciled with it."""

    batch: DataFrame
    unobserved: DataFrame
    snapshot: DataFrame | None
    tombstones: DataFrame | None
    primary_key: list[str]
    metrics: Observation


def _prepare(item: WorkItem, inputs: Inputs, ordering: _Ordering, before: Watermark | None) -> _Prepared:
    batch, snapshot, tombstones = _with_internal_columns(item, inputs, ordering)
    batch = _rows_since_watermark(batch, item, ordering, before)
    unobserved = batch.withColumn(_REASON, _set_aside_reason(item, ordering))
    metrics = Observation(f"batch-{item.run_id}-{item.table}")
    batch = unobserved.observe(
        metrics,
        F.count(F.lit(1)).alias("rows"),
        F.count(_REASON).alias("set_aside"),
        F.sum(col(_REASON).eqNullSafe(F.lit(NULL_KEY)).cast("long")).alias("null_keys"),
        F.sum(col(_REASON).eqNullSafe(F.lit(UNREADABLE_ORDERING)).cast("long")).alias("unreadable"),
        F.sum(_raw_null_ordering(ordering).cast("long")).alias("null_orderings"),
        F.max(F.when(col(_REASON).isNull(), col(ORDER_COLUMN))).alias("max_order"),
    )
    primary_key = [spelling(batch, c) for c in item.primary_key]
    return _Prepared(batch, unobserved, snapshot, tombstones, primary_key, metrics)


@contextmanager
def _cached(df: DataFrame, wanted: bool) -> Iterator[DataFrame]:
    if not wanted:
        yield df
        return
    df = df.persist()
    try:
        yield df
    finally:
        df.unpersist()


def _merge(item: WorkItem, prepared: _Prepared, strategy: DedupStrategy, started_at: datetime) -> Merged:
    """The new snapshot (without the pipeline's columns) and its tombstones."""
    kept = prepared.batch.filter(col(_REASON).isNull()).drop(_REASON)
    if item.mode == Mode.DEDUP:
        merged = merge_into_snapshot(
            prepared.snapshot,
            kept,
            primary_key=prepared.primary_key,
            ordering=[ORDER_COLUMN, SEQUENCE_COLUMN],
            delete_column=item.delete_column,
            delete_values=item.delete_values,
            strategy=strategy,
            small=_is_small(item),
            tombstones=prepared.tombstones,
            now_micros=_micros(started_at),
            tombstone_retention_micros=item.tombstone_retention_micros,
        )
    else:
        appended = append_rows(prepared.snapshot, kept)
        merged = Merged(appended, None, kept, appended)
    result = merged.snapshot.drop(ORDER_COLUMN, SEQUENCE_COLUMN)
    _check_pipeline_columns(item, result)
    return replace(
        merged, snapshot=result, tombstones=merged.tombstones if item.tombstones_location else None
    )


# A table whose work (files to read and snapshot to rewrite) is at most this size is merged in one
# partition by one aggregation over all its rows: for a small table that is one Spark stage instead
# of a shuffle and the joins that find the changed keys (benchmarks/README.md).
SMALL_TABLE_BYTES = 16 * 1024 * 1024


def _is_small(item: WorkItem) -> bool:
    size = work_bytes(item)
    return size is not None and size <= SMALL_TABLE_BYTES


def _full_load_tombstones(
    spark: SparkSession, item: WorkItem, prepared: _Prepared, snapshot: DataFrame, started_at: datetime
) -> DataFrame:
    """A full load's tombstones from its delete rows and the keys of the snapshot just written."""
    assert item.delete_column is not None
    keys = T.StructType([snapshot.schema[name] for name in prepared.primary_key])
    # The schema given, so that a snapshot of no rows (every key deleted) reads as empty.
    written = load_literally(spark.read.schema(keys).format("parquet"), [item.output_location])
    return full_load_tombstones(
        prepared.unobserved.filter(col(_REASON).isNull()),
        written,
        primary_key=prepared.primary_key,
        ordering=[ORDER_COLUMN, SEQUENCE_COLUMN],
        delete_column=spelling(prepared.batch, item.delete_column),
        delete_values=item.delete_values,
        now_micros=_micros(started_at),
    )


def _write_tombstones(item: WorkItem, tombstones: DataFrame | None) -> str | None:
    if tombstones is None or not item.tombstones_location:
        return None
    # Written even when empty: the folder then holds the schema, and the next run reads it.
    _write(tombstones, item.tombstones_location, f"tombstones-{item.run_id}-{item.table}")
    return item.tombstones_location


def _set_aside(item: WorkItem, batch: DataFrame, stats: _BatchStats) -> str | None:
    """Rows that cannot be merged, kept with their reason; a second read only when there are any."""
    if not stats.set_aside:
        return None
    rows = batch.filter(col(_REASON).isNotNull()).drop(ORDER_COLUMN, SEQUENCE_COLUMN)
    rows.write.mode("overwrite").parquet(item.quarantine_location)
    return item.quarantine_location


def _null_orderings(item: WorkItem, inputs: Inputs, ordering: _Ordering, stats: _BatchStats) -> int:
    incremental = item.load_type == LoadType.INCREMENTAL
    if not (incremental and item.incremental_by == IncrementalBy.WATERMARK and ordering.column):
        return stats.null_orderings
    # Not in the batch (they cannot be placed after a watermark): counted on the source, where
    # Parquet null counts let Spark skip every row group without one.
    return inputs.batch.filter(col(ordering.column).isNull()).count()


@dataclass(frozen=True)
class Inputs:
    """What one ingest merges: the new rows, the current snapshot and its tombstones, with one
    spelling per column name and one (widened) type per column across all three."""

    batch: DataFrame
    snapshot: DataFrame | None
    tombstones: DataFrame | None


def read_inputs(spark: SparkSession, item: WorkItem) -> Inputs:
    parts = read_source_parts(spark, item)
    snapshot = read_snapshot(spark, item)
    labelled = (
        [(snapshot, Place(f"the current snapshot {item.current_snapshot}"))] if snapshot is not None else []
    )
    reconciled = reconcile(item.table, [*labelled, *parts])
    batch, *others = reconciled[len(labelled) :]
    for part in others:
        batch = batch.unionByName(part, allowMissingColumns=True)
    batch = _with_catalog_columns(batch, item)
    tombstones = _read_existing(spark, item, item.current_tombstones, "tombstones")
    return Inputs(batch, reconciled[0] if labelled else None, tombstones)


def _with_catalog_columns(batch: DataFrame, item: WorkItem) -> DataFrame:
    """The work item's (the catalog's) columns that none of the files read hold, as NULL, the way
    Athena reads them: the plan checked the registry against these columns, so the ingest never
    refuses a table for a column the plan accepted."""
    present = {name.lower() for name in batch.columns}
    missing = [c for c in item.columns if c["name"].lower() not in present]
    if not missing:
        return batch
    return batch.withColumns({c["name"]: F.lit(None).cast(_spark_type(c["type"])) for c in missing})


def read_source_parts(spark: SparkSession, item: WorkItem) -> list[tuple[DataFrame, Place]]:
    """The files to read as DataFrames, each labelled with a file it holds. Parquet files whose
    schemas cannot be merged (a column widened between files) are read in groups that can."""
    if item.format not in READERS:
        raise TableError(
            item.table,
            f"format {item.format!r} is not supported; the source must be Parquet, CSV or JSON",
        )
    if item.format != "parquet" and not item.columns:
        raise TableError(item.table, f"the catalog gives no columns for this {item.format} table")
    paths = [_join(item.location, f) for f in item.files] if item.files is not None else [item.location]
    if not paths:
        raise TableError(item.table, "the work item names no file to read; plan the run again")
    groups = literal_groups(paths)  # most often one: see cdc_pipeline.spark.reads_alone
    if item.format != "parquet":
        # Read with the catalog's columns: every group has the same ones.
        frames = [_read(spark, item, group) for group in groups]
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame)
        return [(union, Place(f"the files from {paths[0]}"))]
    return [
        (df, Place(f"the file(s) from {group[0]}", tuple(group)))
        for paths_read_together in groups
        for df, group in _parquet_groups(spark, item, paths_read_together)
    ]


def _parquet_groups(
    spark: SparkSession, item: WorkItem, paths: list[str]
) -> list[tuple[DataFrame, list[str]]]:
    try:
        return [(_read(spark, item, paths), paths)]
    except (Py4JJavaError, PySparkException) as exc:
        if len(paths) == 1 or not _is_schema_merge_failure(exc):
            raise
    # Halve until each group's schemas merge: a few splits around each file where a type changed.
    middle = len(paths) // 2
    return _parquet_groups(spark, item, paths[:middle]) + _parquet_groups(spark, item, paths[middle:])


def _is_schema_merge_failure(exc: BaseException) -> bool:
    text = str(exc.java_exception.toString()) if isinstance(exc, Py4JJavaError) else str(exc)
    return "CANNOT_MERGE_SCHEMAS" in text or "Failed to merge" in text


def _read(spark: SparkSession, item: WorkItem, paths: list[str]) -> DataFrame:
    """Parquet with its own schema; CSV and JSON with the catalog's columns (DMS writes header-less
    CSV, so only the catalog knows the column names)."""
    reader = spark.read.options(**item.read_options)
    if item.format == "parquet":
        # Merge every file's schema: a column that only newer files carry must not be dropped.
        reader = reader.option("mergeSchema", "true")
    elif item.format == "csv":
        reader = reader.schema(", ".join(f"`{c['name']}` {_spark_type(c['type'])}" for c in item.columns))
    if item.partition_keys:
        # Files named one by one keep their key=value folders as columns only with the table root
        # (a literal path: Spark does not glob it).
        reader = reader.option("basePath", item.location)
    elif item.files is None:
        # Landing zones nest files in date folders (2024/05/01/...) that are not key=value partitions.
        reader = reader.option("recursiveFileLookup", "true")
    df = load_literally(reader.format(item.format), paths)
    return _json_as_catalog(df, item) if item.format == "json" else df


def _join(location: str, relative: str) -> str:
    return location.rstrip("/") + "/" + relative


def _json_as_catalog(df: DataFrame, item: WorkItem) -> DataFrame:
    """JSON keys matched to the catalog's columns case-insensitively, as Athena's JSON SerDes do
    (Spark's reader given a schema would match them exactly and read NULL for ``customerId``)."""
    by_lower = {name.lower(): name for name in df.columns}
    columns = [
        (col(by_lower[c["name"].lower()]) if c["name"].lower() in by_lower else F.lit(None))
        .cast(_spark_type(c["type"]))
        .alias(c["name"])
        for c in item.columns
    ]
    return df.select(*columns, *(col(key) for key in item.partition_keys if key in df.columns))


def _spark_type(catalog_type: str) -> str:
    # Spark refuses char(n)/varchar(n) in a read schema; Hive and Athena read them as strings.
    return re.sub(r"\b(?:var)?char\s*\(\s*\d+\s*\)", "string", catalog_type, flags=re.IGNORECASE)


READERS = frozenset({"parquet", "csv", "json"})


def read_snapshot(spark: SparkSession, item: WorkItem) -> DataFrame | None:
    if item.current_partitions is not None:
        return partitions.read(spark, item.current_partitions)
    return _read_existing(spark, item, item.current_snapshot, "snapshot")


def _read_existing(spark: SparkSession, item: WorkItem, location: str | None, what: str) -> DataFrame | None:
    if location is None:
        return None
    try:
        return read_parquet(spark, [location])
    except PySparkException as exc:
        raise TableError(
            item.table,
            f"its current {what} {location} (from the committed state) cannot be read "
            f"({root_cause(exc)}); run it with --load-type full to rebuild the snapshot",
        ) from exc


@dataclass(frozen=True)
class Place:
    """Where a DataFrame's rows come from, for messages: a description, and for a group of source
    files their paths (so that a message can name one file holding a column's type)."""

    description: str
    paths: tuple[str, ...] = ()


def reconcile(table: str, labelled: list[tuple[DataFrame, Place]]) -> list[DataFrame]:
    """The DataFrames with one spelling per column (the first seen) and one type per column (the
    widened one). A column that holds only NULLs in one place takes the others' type (pyarrow
    writes an all-NULL column with a type of its own); any other incompatible change fails the
    table, naming a place holding each type."""
    spelling: dict[str, str] = {}
    typed: dict[str, list[tuple[int, str, str]]] = {}  # lower name -> (place index, name, type)
    for index, (df, place) in enumerate(labelled):
        try:
            names = by_lower_name(df.columns, place.description)
        except AmbiguousColumnError as exc:
            raise TableError(table, str(exc)) from exc
        for lower, name in names.items():
            spelling.setdefault(lower, name)
        for field in df.schema.fields:
            typed.setdefault(field.name.lower(), []).append(
                (index, field.name, field.dataType.simpleString())
            )

    unified: dict[str, str] = {}
    nulls: set[tuple[int, str]] = set()  # (place index, lower name) of all-NULL columns set aside
    for lower, entries in typed.items():
        candidates = entries
        if _widened(entries)[0] is None:
            # Only on a conflict, so the extra look at the data is rare.
            nulls |= {(i, lower) for i, name, _ in entries if _all_null(labelled[i][0], name)}
            candidates = [e for e in entries if (e[0], lower) not in nulls] or entries[:1]
        result, clash = _widened(candidates)
        if result is None:
            assert clash is not None
            (i, name, known), (j, _, other) = clash
            raise TableError(
                table,
                f"column {spelling[lower]!r} changed type incompatibly: {known} in "
                f"{_holder(labelled[i], name, known)}, {other} in {_holder(labelled[j], name, other)}. Only "
                "widening (int to bigint, float to double, date to timestamp, more decimal digits) is "
                "applied; rewrite the files with one type, or reload the table in full once its files agree",
            )
        unified[lower] = result

    def conform(index: int, df: DataFrame) -> DataFrame:
        columns = []
        for field in df.schema.fields:
            lower = field.name.lower()
            column = F.lit(None) if (index, lower) in nulls else col(field.name)
            if (index, lower) in nulls or field.dataType.simpleString() != unified[lower]:
                column = column.cast(unified[lower])
            columns.append(column.alias(spelling[lower]))
        return df.select(*columns)

    return [conform(index, df) for index, (df, _) in enumerate(labelled)]


_Typed = tuple[int, str, str]


def _widened(entries: list[_Typed]) -> tuple[str | None, tuple[_Typed, _Typed] | None]:
    """The type all entries fit in, or None and the first pair that does not fit."""
    holder = entries[0]
    result = holder[2]
    for entry in entries[1:]:
        wider = widen(result, entry[2])
        if wider is None:
            return None, (holder, entry)
        if wider != result:
            result, holder = wider, entry
    return result, None


def _all_null(df: DataFrame, column: str) -> bool:
    return df.select(col(column)).filter(col(column).isNotNull()).limit(1).count() == 0


_FILES_SEARCHED = 50  # files whose footers an error message looks through for a column's type


def _holder(labelled: tuple[DataFrame, Place], column: str, type_name: str) -> str:
    """A place holding ``column`` as ``type_name``: for a group of files, one file that does."""
    df, place = labelled
    for path in place.paths[:_FILES_SEARCHED]:
        schema = read_parquet(df.sparkSession, [path]).schema
        if any(f.name.lower() == column.lower() and f.dataType.simpleString() == type_name for f in schema):
            return f"file {path}"
    return place.description


@dataclass(frozen=True)
class _Ordering:
    """The watermark (ordering) column as the batch holds it."""

    column: str | None
    data_type: T.DataType | None
    unit_micros: int | None
    kind: WatermarkKind | None

    @classmethod
    def of(cls, item: WorkItem, batch: DataFrame) -> _Ordering:
        by_lower = {name.lower(): name for name in batch.columns}
        if item.watermark_column is None or item.watermark_column.lower() not in by_lower:
            return cls(None, None, None, None)
        column = by_lower[item.watermark_column.lower()]
        data_type = batch.schema[column].dataType
        unit = EPOCH_UNITS[item.watermark_unit] if item.watermark_unit else None
        integral = isinstance(data_type, T.IntegralType)
        if not (is_time_type(data_type) or isinstance(data_type, T.StringType) or (integral and unit)):
            raise TableError(
                item.table,
                f"watermark column {column!r} has type {data_type.simpleString()} in the files; it must be "
                "a timestamp, timestamp_ntz, date, ISO-8601 string or integer epoch (with "
                "watermark_unit in the registry). Name another watermark_column in the registry",
            )
        return cls(column, data_type, unit, watermark_kind(data_type))

    def micros(self) -> Column:
        if self.column is None or self.data_type is None:
            return F.lit(None).cast("long")
        return ordering_micros(self.column, self.data_type, self.unit_micros)


def _with_internal_columns(
    item: WorkItem, inputs: Inputs, ordering: _Ordering
) -> tuple[DataFrame, DataFrame | None, DataFrame | None]:
    """Batch and snapshot with the ordering value and the sequence value (NULL where a file lacks
    the column: DMS full-load files carry no sequence), reconciled with the tombstones, which hold
    both already."""

    def internal(df: DataFrame) -> DataFrame:
        by_lower = {name.lower(): name for name in df.columns}
        sequence = by_lower.get(item.sequence_column.lower()) if item.sequence_column else None
        order = ordering.micros() if ordering.column in df.columns else F.lit(None).cast("long")
        return df.withColumn(ORDER_COLUMN, order).withColumn(
            SEQUENCE_COLUMN, col(sequence) if sequence else F.lit(None)
        )

    labelled = [(internal(inputs.batch), Place("the files read"))]
    if inputs.snapshot is not None:
        labelled.append((internal(inputs.snapshot), Place(f"the current snapshot {item.current_snapshot}")))
    if inputs.tombstones is not None:
        labelled.append((inputs.tombstones, Place(f"the current tombstones {item.current_tombstones}")))
    reconciled = reconcile(item.table, labelled)
    if all(isinstance(df.schema[SEQUENCE_COLUMN].dataType, T.NullType) for df in reconciled):
        reconciled = [df.withColumn(SEQUENCE_COLUMN, col(SEQUENCE_COLUMN).cast("long")) for df in reconciled]
    batch, rest = reconciled[0], reconciled[1:]
    snapshot = rest.pop(0) if inputs.snapshot is not None else None
    tombstones = rest.pop(0) if inputs.tombstones is not None else None
    return batch, snapshot, tombstones


def _rows_since_watermark(
    batch: DataFrame, item: WorkItem, ordering: _Ordering, before: Watermark | None
) -> DataFrame:
    """A watermark-mode incremental run reads the rows at or after the watermark (minus the lookback)
    of keyed tables, strictly after it for appends, which cannot absorb a re-read row."""
    incremental = item.load_type == LoadType.INCREMENTAL
    if not (incremental and item.incremental_by == IncrementalBy.WATERMARK and before and ordering.column):
        return batch
    keyed = item.mode == Mode.DEDUP
    kind = ordering.kind or WatermarkKind.TIMESTAMP
    since = before.as_kind(kind).minus(item.lookback_micros) if keyed else before.as_kind(kind)
    by_value = col(ORDER_COLUMN) >= F.lit(since.micros) if keyed else col(ORDER_COLUMN) > F.lit(since.micros)
    if ordering.data_type is not None and is_time_type(ordering.data_type):
        # The same bound on the column itself, which the Parquet reader can push down.
        bound = watermark_literal(since, kind)
        raw = col(ordering.column)
        batch = batch.filter(raw >= bound if keyed else raw > bound)
    # A value that is no readable time cannot be placed after the watermark either: it is kept, to
    # be set aside (and reported) rather than silently skipped.
    unreadable = col(ordering.column).isNotNull() & col(ORDER_COLUMN).isNull()
    return batch.filter(by_value | unreadable)


def _set_aside_reason(item: WorkItem, ordering: _Ordering) -> Column:
    """Why a row cannot be merged, or NULL: a null key, or an ordering value that is not a time."""
    reason = F.lit(None).cast("string")
    if ordering.column is not None:
        unreadable = col(ordering.column).isNotNull() & col(ORDER_COLUMN).isNull()
        reason = F.when(unreadable, F.lit(UNREADABLE_ORDERING)).otherwise(reason)
    if item.mode == Mode.DEDUP:
        reason = F.when(null_key_condition(item.primary_key), F.lit(NULL_KEY)).otherwise(reason)
    return reason


def _raw_null_ordering(ordering: _Ordering) -> Column:
    return col(ordering.column).isNull() if ordering.column else F.lit(False)


# Below this estimated size a table's output is written as one file; above it, Spark's partitions
# (file splits and shuffle partitions of about 128 MiB, see spark.py) make the files. Coalescing a
# larger output would pull the snapshot's scan and anti-join into one task (measured: 2M rows on
# one core, benchmarks/README.md).
ONE_FILE_BYTES = 16 * 1024 * 1024


def _is_small_output(df: DataFrame) -> bool:
    # Spark's own estimate of the result, from the bytes of the files it reads (on the high side).
    return int(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()) <= ONE_FILE_BYTES


def _write(df: DataFrame, location: str, name: str) -> int:
    """Write ``df`` as the Parquet folder ``location`` (a small table as one file); the rows written,
    counted while writing."""
    written = Observation(name)
    if _is_small_output(df):
        df = df.coalesce(1)
    df.observe(written, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").parquet(location)
    return int(written.get["rows"])


@dataclass(frozen=True)
class _BatchStats:
    rows: int
    set_aside: int
    null_keys: int
    unreadable: int
    null_orderings: int
    max_order: int | None

    @classmethod
    def of(cls, observation: Observation) -> _BatchStats:
        metrics = observation.get
        return cls(
            rows=int(metrics["rows"]),
            set_aside=int(metrics["set_aside"]),
            null_keys=int(metrics["null_keys"] or 0),
            unreadable=int(metrics["unreadable"] or 0),
            null_orderings=int(metrics["null_orderings"] or 0),
            max_order=metrics["max_order"],
        )


def _new_watermark(
    before: Watermark | None, max_micros: int | None, kind: WatermarkKind | None
) -> Watermark | None:
    """The greatest ordering value merged; never earlier than the last watermark (a lookback, or a
    late file, brings older rows). Rows set aside never move it."""
    if kind is None:
        return before
    seen = Watermark.from_micros(max_micros, kind) if max_micros is not None else None
    if before is None:
        return seen
    before = before.as_kind(kind)
    return before if seen is None or seen < before else seen


def _set_aside_warning(item: WorkItem, stats: _BatchStats, quarantine: str) -> str:
    reasons = []
    if stats.null_keys:
        reasons.append(f"{stats.null_keys} with a null primary key")
    if stats.unreadable:
        reasons.append(f"{stats.unreadable} whose {item.watermark_column!r} is not a readable time")
    return (
        f"{stats.set_aside} row(s) set aside in {quarantine} ({', '.join(reasons)}); fix them at the "
        "source, they are not in the snapshot and never move the watermark"
    )


def _null_ordering_warning(item: WorkItem, count: int, incremental: bool) -> str:
    if incremental and item.incremental_by == IncrementalBy.WATERMARK:
        return (
            f"{count} row(s) of the table have a null {item.watermark_column!r}: incremental runs by "
            "watermark do not read them (they cannot be placed after a watermark); a full load "
            "(--load-type full) does"
        )
    ordering = "ordered before every stamped version of their key" if item.mode == Mode.DEDUP else "appended"
    return f"{count} row(s) with a null {item.watermark_column!r} loaded, {ordering}"


def _check_pipeline_columns(item: WorkItem, result: DataFrame) -> None:
    clashing = [c for c in result.columns if c.startswith("_cdc_")]
    if clashing:
        raise TableError(
            item.table,
            f"source column(s) {', '.join(clashing)} use the prefix _cdc_, reserved for columns the "
            "pipeline adds; rename them at the source",
        )


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _manifest(
    item: WorkItem,
    warnings: list[str],
    started_at: datetime,
    start: float,
    *,
    rows_read: int,
    written: _Written,
    set_aside: int,
    null_watermarks: int,
    before: Watermark | None,
    after: Watermark | None,
    quarantine: str | None,
    schema: list[dict[str, str]],
    tombstones: str | None,
) -> Manifest:
    return Manifest(
        run_id=item.run_id,
        table=item.table,
        status=SUCCEEDED,
        load_type=item.load_type,
        mode=item.mode,
        rows_read=rows_read,
        rows_written=written.rows,
        rows_set_aside=set_aside,
        null_watermark_rows=null_watermarks,
        watermark_column=item.watermark_column,
        watermark_before=before.iso() if before else None,
        watermark_after=after.iso() if after else None,
        schema=schema,
        output_location=item.output_location,
        quarantine_location=quarantine,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - start, 3),
        warnings=warnings,
        primary_key=item.primary_key,
        sequence_column=item.sequence_column,
        delete_column=item.delete_column,
        delete_values=item.delete_values,
        incremental_by=item.incremental_by,
        files_read=len(item.files) if item.files is not None else None,
        cursor=item.next_cursor,
        watermark_unit=item.watermark_unit,
        tombstones_location=tombstones,
        bytes_written=written.bytes,
        partition_by=item.partition_by,
        partitions=written.partitions,
    )


def schema_columns(df: DataFrame) -> list[dict[str, str]]:
    """The snapshot's columns as the manifest and the output catalog carry them."""
    return [{"name": field.name, "type": field.dataType.simpleString()} for field in df.schema.fields]


# Spark names the file it could not read ("Encountered error while reading file <path>. Details:")
# in one of the wrappers around the cause.
_READING_FILE = re.compile(r"while reading file (\S+?)\.?(?:\s|$)")


def _spark_failure(exc: BaseException) -> str:
    """What Spark failed at and why, in one line: the file it could not read, when it names one, and
    the deepest cause's message. The whole trace goes to the run's log (``ingest_items``)."""
    messages = cause_messages(exc)
    cause = messages[-1].splitlines()[0] if messages[-1] else type(exc).__name__
    for message in messages:
        match = _READING_FILE.search(message)
        if match:
            return f"Spark failed reading file {re.sub(r'^file:(//)?', '', match.group(1))}: {cause}"
    return f"Spark failed reading or writing it: {cause}"
