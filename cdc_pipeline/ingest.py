"""Ingest one table: read its new rows, deduplicate, merge into the snapshot, write a manifest.

This is the Glue job's body (and the local runner's, per table). It writes only to run-specific
locations and publishes nothing: the commit stage does that for all tables at once.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdc_pipeline.errors import TableError
from cdc_pipeline.manifest import SUCCEEDED, Manifest
from cdc_pipeline.plan import LoadType, Mode, WorkItem
from cdc_pipeline.spark import check_session
from cdc_pipeline.storage import Storage
from cdc_pipeline.transform import (
    DedupStrategy,
    append_rows,
    col,
    incremental_rows,
    merge_into_snapshot,
    null_key_condition,
    watermark_kind,
    watermark_micros,
)
from cdc_pipeline.watermark import Watermark, WatermarkKind

logger = logging.getLogger(__name__)


def ingest_table(
    spark: SparkSession,
    item: WorkItem,
    storage: Storage,
    strategy: DedupStrategy = DedupStrategy.AGGREGATE,
) -> Manifest:
    """Run one work item; raise TableError (naming the table and the fix) when it cannot be done."""
    check_session(spark)
    if item.output_location in {item.location, item.current_snapshot}:
        raise TableError(item.table, f"output location {item.output_location} would overwrite live data")
    started_at = datetime.now(UTC)
    start = time.monotonic()
    try:
        manifest = _ingest(spark, item, strategy, started_at, start)
    except (Py4JJavaError, PySparkException) as exc:
        raise TableError(item.table, f"Spark failed reading or writing it: {_first_line(exc)}") from exc
    storage.write_json(item.manifest_location, manifest.to_json())
    logger.info(
        "table %s ingested: %d rows read, %d written, watermark %s -> %s",
        item.table,
        manifest.rows_read,
        manifest.rows_written,
        manifest.watermark_before,
        manifest.watermark_after,
    )
    return manifest


def _ingest(
    spark: SparkSession, item: WorkItem, strategy: DedupStrategy, started_at: datetime, start: float
) -> Manifest:
    warnings = list(item.warnings)
    source = read_source(spark, item)
    kind = _watermark_kind(item, source)
    incremental = item.load_type == LoadType.INCREMENTAL
    before = Watermark.parse(item.last_watermark) if item.last_watermark else None
    keyed = item.mode == Mode.DEDUP

    batch = source
    if incremental and item.watermark_column and before and kind:
        # Keyed tables re-read the boundary instant (and the lookback window): the merge is
        # idempotent, and a row stamped with the boundary that landed after the last run is not
        # missed. Appends cannot absorb a re-read row, so they read strictly newer rows only.
        since = before.as_kind(kind).minus(item.lookback_micros) if keyed else before.as_kind(kind)
        batch = incremental_rows(source, item.watermark_column, kind, since, inclusive=keyed)
    # The batch is read twice (stats, then merge). An incremental batch is small: cache it. A full
    # load's batch is the whole table: scanning it twice is cheaper than caching it (benchmarks/).
    if incremental:
        batch = batch.persist()
    try:
        stats = _batch_stats(batch, item, kind)
        null_watermarks = stats.null_watermarks
        if incremental and item.watermark_column:
            # Not in the batch (they cannot be placed after a watermark): counted on the source,
            # where Parquet null counts let Spark skip every row group without one.
            null_watermarks = source.filter(col(item.watermark_column).isNull()).count()
        if null_watermarks:
            warnings.append(_null_watermark_warning(item, null_watermarks, incremental))
        after = _new_watermark(before, stats.max_watermark, kind)
        snapshot = read_snapshot(spark, item) if incremental else None
        counts = {"rows_read": stats.rows, "null_watermarks": null_watermarks}

        if snapshot is not None and item.current_snapshot and stats.rows == 0:
            # Nothing new: the snapshot stays where it is, no rewrite.
            return _manifest(
                item,
                warnings,
                started_at,
                start,
                **counts,
                set_aside=0,
                before=before,
                after=after,
                output=item.current_snapshot,
                quarantine=None,
                schema=schema_columns(snapshot),
                rows_written=snapshot.count(),
            )

        quarantine = None
        if keyed and stats.null_keys:
            quarantine = item.quarantine_location
            batch.filter(null_key_condition(item.primary_key)).write.mode("overwrite").parquet(quarantine)
            warnings.append(
                f"{stats.null_keys} row(s) with a null primary key set aside in {quarantine}; fix them at "
                "the source, they are not in the snapshot"
            )

        if keyed:
            result = merge_into_snapshot(
                snapshot,
                batch.filter(~null_key_condition(item.primary_key)),
                primary_key=item.primary_key,
                ordering=[c for c in (item.watermark_column, item.sequence_column) if c],
                delete_column=item.delete_column,
                delete_values=item.delete_values,
                strategy=strategy,
            )
        else:
            result = append_rows(snapshot, batch)
        _check_pipeline_columns(item, result)
        result.write.mode("overwrite").parquet(item.output_location)
    finally:
        if incremental:
            batch.unpersist()

    written = spark.read.parquet(item.output_location)
    return _manifest(
        item,
        warnings,
        started_at,
        start,
        **counts,
        set_aside=stats.null_keys,
        before=before,
        after=after,
        output=item.output_location,
        quarantine=quarantine,
        schema=schema_columns(written),
        rows_written=written.count(),
    )


def read_source(spark: SparkSession, item: WorkItem) -> DataFrame:
    """The raw table: Parquet with its own schema; CSV and JSON with the catalog's columns (DMS writes
    header-less CSV, so only the catalog knows the column names)."""
    if item.format not in READERS:
        raise TableError(
            item.table,
            f"format {item.format!r} is not supported; the source must be Parquet, CSV or JSON",
        )
    reader = spark.read.options(**item.read_options)
    if item.format != "parquet" and not item.columns:
        raise TableError(item.table, f"the catalog gives no columns for this {item.format} table")
    if item.format == "parquet":
        # Merge every file's schema: a column that only newer files carry must not be dropped.
        reader = reader.option("mergeSchema", "true")
    elif item.format == "csv":
        reader = reader.schema(", ".join(f"`{c['name']}` {_spark_type(c['type'])}" for c in item.columns))
    if not item.partition_keys:
        # Landing zones nest files in date folders (2024/05/01/...) that are not key=value partitions.
        reader = reader.option("recursiveFileLookup", "true")
    df = reader.format(item.format).load(item.location)
    return _json_as_catalog(df, item) if item.format == "json" else df


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
    if item.current_snapshot is None:
        return None
    try:
        return spark.read.parquet(item.current_snapshot)
    except PySparkException as exc:
        raise TableError(
            item.table,
            f"its current snapshot {item.current_snapshot} (from the committed state) cannot be read "
            f"({_first_line(exc)}); run it with --load-type full to rebuild the snapshot",
        ) from exc


def _watermark_kind(item: WorkItem, source: DataFrame) -> WatermarkKind | None:
    if item.watermark_column is None:
        return None
    missing = [c for c in (item.watermark_column, *item.primary_key) if c not in source.columns]
    if missing:
        raise TableError(item.table, f"column(s) {', '.join(missing)} not found in {item.location}")
    data_type = source.schema[item.watermark_column].dataType
    kind = watermark_kind(data_type)
    if kind is None:
        raise TableError(
            item.table,
            f"watermark column {item.watermark_column!r} has type {data_type.simpleString()}; it must be "
            "a timestamp, timestamp_ntz or date. Name another watermark_column in the registry",
        )
    return kind


@dataclass(frozen=True)
class _BatchStats:
    rows: int
    null_keys: int
    null_watermarks: int
    max_watermark: int | None


def _batch_stats(batch: DataFrame, item: WorkItem, kind: WatermarkKind | None) -> _BatchStats:
    """Every count the manifest needs, in one pass over the batch."""
    zero = F.lit(0).cast("long")
    keyed = item.mode == Mode.DEDUP
    null_keys = F.sum(null_key_condition(item.primary_key).cast("long")) if keyed else zero
    if item.watermark_column and kind:
        null_watermarks = F.sum(col(item.watermark_column).isNull().cast("long"))
        max_watermark = F.max(watermark_micros(item.watermark_column, kind))
    else:
        null_watermarks, max_watermark = zero, F.lit(None).cast("long")
    row = batch.agg(
        F.count(F.lit(1)).alias("rows"),
        null_keys.alias("null_keys"),
        null_watermarks.alias("null_watermarks"),
        max_watermark.alias("max_watermark"),
    ).first()
    assert row is not None  # a global aggregate always returns one row
    return _BatchStats(
        rows=int(row["rows"]),
        null_keys=int(row["null_keys"] or 0),
        null_watermarks=int(row["null_watermarks"] or 0),
        max_watermark=row["max_watermark"],
    )


def _new_watermark(
    before: Watermark | None, max_micros: int | None, kind: WatermarkKind | None
) -> Watermark | None:
    """The greatest watermark seen; never earlier than the last one (a lookback re-reads older rows)."""
    if kind is None:
        return None
    seen = Watermark.from_micros(max_micros, kind) if max_micros is not None else None
    if before is None:
        return seen
    before = before.as_kind(kind)
    return before if seen is None or seen < before else seen


def _null_watermark_warning(item: WorkItem, count: int, incremental: bool) -> str:
    if incremental:
        return (
            f"{count} row(s) of the table have a null {item.watermark_column!r}: incremental runs do not "
            "read them (they cannot be placed after a watermark); a full load (--load-type full) does"
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


def _manifest(
    item: WorkItem,
    warnings: list[str],
    started_at: datetime,
    start: float,
    *,
    rows_read: int,
    rows_written: int,
    set_aside: int,
    null_watermarks: int,
    before: Watermark | None,
    after: Watermark | None,
    output: str,
    quarantine: str | None,
    schema: list[dict[str, str]],
) -> Manifest:
    return Manifest(
        run_id=item.run_id,
        table=item.table,
        status=SUCCEEDED,
        load_type=item.load_type,
        mode=item.mode,
        rows_read=rows_read,
        rows_written=rows_written,
        rows_set_aside=set_aside,
        null_watermark_rows=null_watermarks,
        watermark_column=item.watermark_column,
        watermark_before=before.iso() if before else None,
        watermark_after=after.iso() if after else None,
        schema=schema,
        output_location=output,
        quarantine_location=quarantine,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - start, 3),
        warnings=warnings,
        primary_key=item.primary_key,
        sequence_column=item.sequence_column,
        delete_column=item.delete_column,
        delete_values=item.delete_values,
    )


def schema_columns(df: DataFrame) -> list[dict[str, str]]:
    """The snapshot's columns as the manifest and the output catalog carry them."""
    return [{"name": field.name, "type": field.dataType.simpleString()} for field in df.schema.fields]


def _first_line(exc: BaseException) -> str:
    """The message a person needs: for a Java error, the Java exception, not py4j's call site."""
    text = str(exc.java_exception.toString()) if isinstance(exc, Py4JJavaError) else str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
