"""The transformations of an ingest, as functions of DataFrames with no I/O inside.

Vocabulary: the *record key* is the primary key; the *ordering* of a key's versions is
(watermark column, sequence column, source rank, content hash), greatest wins. The source rank
makes a version read in this run win over the snapshot's copy of the same (watermark, sequence),
and the content hash settles any tie left, so the result never depends on file or task order.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdc_pipeline.watermark import Watermark, WatermarkKind

RANK_COLUMN = "_cdc_source_rank"
SNAPSHOT_RANK = 0
BATCH_RANK = 1
_TIEBREAK = "_cdc_tiebreak"
_WINNER = "_cdc_winner"
_ROW_NUMBER = "_cdc_row_number"


class DedupStrategy(StrEnum):
    # Both plan as sort, shuffle, sort in Spark 3.5 and measure within noise of each other
    # (benchmarks/README.md); AGGREGATE is the default as it needs no window frame per key.
    AGGREGATE = "aggregate"  # max(struct(ordering..., row)) per key
    WINDOW = "window"  # row_number() over (partition by key order by ordering desc) = 1


def col(name: str) -> Column:
    """A column by its exact name, even one holding dots, spaces or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def watermark_kind(data_type: T.DataType) -> WatermarkKind | None:
    if isinstance(data_type, T.TimestampNTZType):
        return WatermarkKind.TIMESTAMP_NTZ
    if isinstance(data_type, T.TimestampType):
        return WatermarkKind.TIMESTAMP
    if isinstance(data_type, T.DateType):
        return WatermarkKind.DATE
    return None


def watermark_literal(watermark: Watermark, kind: WatermarkKind) -> Column:
    """A constant of the column's own type, so the comparison is pushed down to the Parquet reader.

    Built from integer microseconds, never from a Python datetime, whose conversion would depend on
    the driver's local time zone. Requires the session time zone UTC (see spark.py).
    """
    if kind is WatermarkKind.DATE:
        return F.date_from_unix_date(F.lit(watermark.micros // 86_400_000_000))
    instant = F.timestamp_micros(F.lit(watermark.micros))
    return instant.cast("timestamp_ntz") if kind is WatermarkKind.TIMESTAMP_NTZ else instant


def watermark_micros(column: str, kind: WatermarkKind) -> Column:
    """The column as integer microseconds on the UTC wall clock (exact, no float)."""
    if kind is WatermarkKind.DATE:
        return F.unix_date(col(column)).cast("long") * F.lit(86_400_000_000)
    return F.unix_micros(col(column).cast("timestamp"))


def incremental_rows(
    df: DataFrame, column: str, kind: WatermarkKind, since: Watermark, *, inclusive: bool
) -> DataFrame:
    """Rows at or after (``inclusive``) or strictly after ``since``; a null watermark never matches."""
    bound = watermark_literal(since, kind)
    return df.filter(col(column) >= bound if inclusive else col(column) > bound)


def null_key_condition(primary_key: Sequence[str]) -> Column:
    condition = F.lit(False)
    for column in primary_key:
        condition = condition | col(column).isNull()
    return condition


def latest_per_key(
    df: DataFrame,
    primary_key: Sequence[str],
    ordering: Sequence[str],
    strategy: DedupStrategy = DedupStrategy.AGGREGATE,
) -> DataFrame:
    """One row per key: the greatest by ``ordering`` then source rank, then content hash.

    ``df`` may carry RANK_COLUMN (snapshot vs batch); it is dropped from the result. A null in an
    ordering column sorts below every value, so an unstamped version never beats a stamped one.
    """
    if RANK_COLUMN not in df.columns:
        df = df.withColumn(RANK_COLUMN, F.lit(BATCH_RANK))
    data_fields = [field for field in df.schema.fields if field.name != RANK_COLUMN]
    data_columns = [field.name for field in data_fields]
    # Maps can be neither hashed nor compared: hash their JSON text, and rank rows with a window
    # (whose ordering holds only the ordering columns) instead of comparing whole-row structs.
    hashed = [F.to_json(col(f.name)) if _has_map(f.dataType) else col(f.name) for f in data_fields]
    if any(_has_map(f.dataType) for f in data_fields):
        strategy = DedupStrategy.WINDOW
    df = df.withColumn(_TIEBREAK, F.xxhash64(*hashed))
    order_columns = [*ordering, RANK_COLUMN, _TIEBREAK]

    if strategy is DedupStrategy.WINDOW:
        window = Window.partitionBy(*(col(c) for c in primary_key)).orderBy(
            *(col(c).desc_nulls_last() for c in order_columns)
        )
        return (
            df.withColumn(_ROW_NUMBER, F.row_number().over(window))
            .filter(col(_ROW_NUMBER) == 1)
            .select(*(col(c) for c in data_columns))
        )
    # Struct comparison is field by field, nulls lowest: exactly the ordering wanted.
    winner = F.max(
        F.struct(
            *(col(c).alias(f"_cdc_order_{i}") for i, c in enumerate(order_columns)),
            F.struct(*(col(c) for c in data_columns)).alias("row"),
        )
    )
    return df.groupBy(*(col(c) for c in primary_key)).agg(winner.alias(_WINNER)).select(f"{_WINNER}.row.*")


def _has_map(data_type: T.DataType) -> bool:
    if isinstance(data_type, T.MapType):
        return True
    if isinstance(data_type, T.ArrayType):
        return _has_map(data_type.elementType)
    if isinstance(data_type, T.StructType):
        return any(_has_map(field.dataType) for field in data_type.fields)
    return False


def drop_deleted(df: DataFrame, delete_column: str | None, delete_values: Sequence[str]) -> DataFrame:
    """Remove keys whose latest version is a delete marker (compared as text)."""
    if not delete_column:
        return df
    is_delete = col(delete_column).cast("string").isin(list(delete_values))
    return df.filter(~F.coalesce(is_delete, F.lit(False)))


def merge_into_snapshot(
    snapshot: DataFrame | None,
    batch: DataFrame,
    *,
    primary_key: Sequence[str],
    ordering: Sequence[str],
    delete_column: str | None,
    delete_values: Sequence[str],
    strategy: DedupStrategy = DedupStrategy.AGGREGATE,
) -> DataFrame:
    """The new current state: the newest version of every key in the snapshot and the batch, deletes removed.

    Deduplicating the batch and merging it into the snapshot is one aggregation over their union:
    an older version, from either side, never overwrites a newer one.
    """
    combined = batch.withColumn(RANK_COLUMN, F.lit(BATCH_RANK))
    if snapshot is not None:
        combined = snapshot.withColumn(RANK_COLUMN, F.lit(SNAPSHOT_RANK)).unionByName(
            combined, allowMissingColumns=True
        )
        combined = combined.select(*map(col, _source_order(batch, snapshot)), col(RANK_COLUMN))
    latest = latest_per_key(combined, primary_key, ordering, strategy)
    return drop_deleted(latest, delete_column, delete_values)


def append_rows(snapshot: DataFrame | None, batch: DataFrame) -> DataFrame:
    """Rows of a table without a primary key: the snapshot's, then the batch's, kept as they are."""
    if snapshot is None:
        return batch
    return snapshot.unionByName(batch, allowMissingColumns=True).select(
        *map(col, _source_order(batch, snapshot))
    )


def _source_order(batch: DataFrame, snapshot: DataFrame) -> list[str]:
    """The source's column order; columns only the snapshot still has go last."""
    return [*batch.columns, *(c for c in snapshot.columns if c not in batch.columns)]
