"""The transformations of an ingest, as functions of DataFrames with no I/O inside.

Vocabulary: the *record key* is the primary key; the *ordering* of a key's versions is
(ordering value, sequence column, source rank, content hash), greatest wins. The ordering value is
the watermark column as exact microseconds (:func:`ordering_micros`), whatever its type. The source
rank makes a version read in this run win over the snapshot's copy of the same (ordering value,
sequence), and the content hash settles any tie left, so the result never depends on file or task
order. A *tombstone* remembers a deleted key with the ordering of its delete, so that a late, older
version cannot bring the key back; tombstones live beside the snapshot, never in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdc_pipeline.watermark import Watermark, WatermarkKind

RANK_COLUMN = "_cdc_source_rank"
SNAPSHOT_RANK = 0
BATCH_RANK = 1
ORDER_COLUMN = "_cdc_order"  # the ordering value, microseconds since the epoch (UTC)
DELETED_AT = "_cdc_deleted_at"  # in tombstones: when the delete was applied, microseconds
_DELETED = "_cdc_deleted"
_LONG_MAX = 2**63 - 1
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z as microseconds since the epoch.
MIN_ORDERING_MICROS = -62_135_596_800_000_000
MAX_ORDERING_MICROS = 253_402_300_799_999_999
# What an ISO-8601 ordering value may look like: a calendar date, optionally a time (T or a space,
# hh:mm, seconds and a fraction optional) and an offset (Z, +hh, +hhmm or +hh:mm).
ISO_8601_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$"
)
_TIEBREAK = "_cdc_tiebreak"
_WINNER = "_cdc_winner"
_ROW_NUMBER = "_cdc_row_number"


class DedupStrategy(StrEnum):
    # Both plan as sort, partial top-1, shuffle, sort in Spark 3.5. WINDOW is the default: it
    # shuffles the rows as they are, where AGGREGATE's struct of every column doubled the bytes
    # shuffled (421.6 against 217.1 MiB at 10M rows) and made a full load 16% slower (28.7 s
    # against 24.2 s, benchmarks/README.md).
    AGGREGATE = "aggregate"  # max(struct(ordering..., row)) per key
    WINDOW = "window"  # row_number() over (partition by key order by ordering desc) = 1


def col(name: str) -> Column:
    """A column by its exact name, even one holding dots, spaces or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def spelling(df: DataFrame, name: str) -> str:
    """How ``df`` spells the column ``name`` (names match ignoring case); ``name`` if it has none."""
    return next((c for c in df.columns if c.lower() == name.lower()), name)


def watermark_kind(data_type: T.DataType) -> WatermarkKind | None:
    """How a watermark on a column of this type is written: ISO-8601 strings and integer epochs
    name instants, so their watermark is a ``timestamp``."""
    if isinstance(data_type, T.TimestampNTZType):
        return WatermarkKind.TIMESTAMP_NTZ
    if isinstance(data_type, T.TimestampType | T.StringType | T.IntegralType):
        return WatermarkKind.TIMESTAMP
    if isinstance(data_type, T.DateType):
        return WatermarkKind.DATE
    return None


def is_time_type(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.TimestampType | T.TimestampNTZType | T.DateType)


def ordering_micros(column: str, data_type: T.DataType, unit_micros: int | None) -> Column:
    """The column's value as exact integer microseconds on the UTC clock, NULL when it is NULL or
    cannot be read as a time: ISO-8601 text (offsets allowed, mixed offsets ordered by instant; no
    offset means UTC) or an integer count of ``unit_micros`` since the epoch."""
    if isinstance(data_type, T.StringType):
        # Spark's cast alone also takes "10:00:00" (today's date!), "2026" or zone names: only the
        # ISO-8601 calendar forms are let through to it.
        text = F.trim(col(column))
        iso = text.rlike(ISO_8601_PATTERN)
        micros = F.when(iso, F.unix_micros(F.expr(f"try_cast(trim({_sql_name(column)}) AS timestamp)")))
    elif isinstance(data_type, T.IntegralType):
        if unit_micros is None:
            raise ValueError(f"integer ordering column {column!r} needs a unit")
        value = col(column).cast("long")
        limit = _LONG_MAX // unit_micros
        micros = F.when(F.abs(value) <= F.lit(limit), value * F.lit(unit_micros))
    elif is_time_type(data_type):
        kind = watermark_kind(data_type)
        assert kind is not None
        micros = watermark_micros(column, kind)
    else:
        raise ValueError(f"column {column!r} of type {data_type.simpleString()} cannot order versions")
    # Years 1 to 9999 only: outside them no watermark can be written down (nor read by most tools).
    return F.when(micros.between(F.lit(MIN_ORDERING_MICROS), F.lit(MAX_ORDERING_MICROS)), micros)


def _sql_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


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
    strategy: DedupStrategy = DedupStrategy.WINDOW,
    keep: Sequence[str] = (),
) -> DataFrame:
    """One row per key: the greatest by ``ordering`` then source rank, then content hash.

    ``df`` may carry RANK_COLUMN (snapshot vs batch); it is dropped from the result. A null in an
    ordering column sorts below every value, so an unstamped version never beats a stamped one.
    ``keep`` are bookkeeping columns carried with the winner but left out of the content hash.
    """
    if RANK_COLUMN not in df.columns:
        df = df.withColumn(RANK_COLUMN, F.lit(BATCH_RANK))
    data_fields = [field for field in df.schema.fields if field.name not in (RANK_COLUMN, *keep)]
    data_columns = [field.name for field in data_fields]
    # Maps can be neither hashed nor compared: hash their JSON text, and rank rows with a window
    # (whose ordering holds only the ordering columns) instead of comparing whole-row structs.
    hashed = [F.to_json(col(f.name)) if _has_map(f.dataType) else col(f.name) for f in data_fields]
    if any(_has_map(f.dataType) for f in data_fields):
        strategy = DedupStrategy.WINDOW
    df = df.withColumn(_TIEBREAK, F.xxhash64(*hashed))
    order_columns = [*ordering, RANK_COLUMN, _TIEBREAK]
    data_columns += list(keep)

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


@dataclass(frozen=True)
class Merged:
    """A merge's result: the new snapshot, and the tombstones to keep beside it (None: no deletes).

    ``latest`` (the batch deduplicated, whose keys meet the snapshot and tombstones several times;
    the batch itself when every row is compared) and ``resolved`` (the one row per compared key
    both outputs derive from) are what a caller may cache so that neither is computed more than
    once.
    """

    snapshot: DataFrame
    tombstones: DataFrame | None
    latest: DataFrame
    resolved: DataFrame


def merge_into_snapshot(
    snapshot: DataFrame | None,
    batch: DataFrame,
    *,
    primary_key: Sequence[str],
    ordering: Sequence[str],
    delete_column: str | None,
    delete_values: Sequence[str],
    strategy: DedupStrategy = DedupStrategy.WINDOW,
    tombstones: DataFrame | None = None,
    now_micros: int = 0,
    tombstone_retention_micros: int | None = None,
    small: bool = False,
) -> Merged:
    """The new current state: per key, the newest version among the batch, the snapshot and the
    tombstones; a key whose newest version is a delete leaves the snapshot and becomes a tombstone.

    Only keys the batch holds are compared: the batch is deduplicated on its own, then meets the
    snapshot rows and tombstones of its keys; every other snapshot row is carried as it is. Since
    "newest" is a maximum, this equals one aggregation over all of them, which is what a ``small``
    table gets instead: every row in one partition (no shuffle, no join), one aggregation, so its
    merge is one Spark stage rather than the several that finding the changed keys takes.
    ``tombstones`` hold the key, the ordering columns and DELETED_AT; those older than
    ``tombstone_retention_micros`` (before ``now_micros``) are dropped, and a new one is stamped
    ``now_micros``.
    """
    # Names match ignoring case: the batch may spell the column as the snapshot does, not as the
    # files the plan described (an exact match here once dropped every delete of such a batch).
    marker = spelling(batch, delete_column) if delete_column else None
    is_delete = (
        F.coalesce(col(marker).cast("string").isin(list(delete_values)), F.lit(False))
        if marker and marker in batch.columns
        else F.lit(False)
    )
    latest = batch if small else latest_per_key(batch, primary_key, ordering, strategy)
    keys = latest.select(*map(col, primary_key))
    data_columns = list(batch.columns)
    candidates = latest.withColumn(RANK_COLUMN, F.lit(BATCH_RANK)).withColumn(_DELETED, is_delete)
    candidates = candidates.withColumn(DELETED_AT, F.lit(None).cast("long"))
    kept_snapshot = None
    if snapshot is not None:
        data_columns = _source_order(batch, snapshot)
        hits = snapshot if small else snapshot.join(keys, list(primary_key), "left_semi")
        candidates = candidates.unionByName(
            hits.withColumn(RANK_COLUMN, F.lit(SNAPSHOT_RANK))
            .withColumn(_DELETED, F.lit(False))
            .withColumn(DELETED_AT, F.lit(None).cast("long")),
            allowMissingColumns=True,
        )
        if not small:
            kept_snapshot = snapshot.join(keys, list(primary_key), "left_anti")
    kept_tombstones = None
    if tombstones is not None:
        if tombstone_retention_micros is not None:
            # An expired tombstone no longer counts, whether or not the batch holds its key.
            tombstones = tombstones.filter(col(DELETED_AT) > F.lit(now_micros - tombstone_retention_micros))
        hits = tombstones if small else tombstones.join(keys, list(primary_key), "left_semi")
        candidates = candidates.unionByName(
            hits.withColumn(RANK_COLUMN, F.lit(SNAPSHOT_RANK)).withColumn(_DELETED, F.lit(True)),
            allowMissingColumns=True,
        )
        if not small:
            kept_tombstones = tombstones.join(keys, list(primary_key), "left_anti")
    if small:
        # One partition satisfies the aggregation's distribution: no exchange is planned.
        winners = latest_per_key(
            candidates.coalesce(1), primary_key, ordering, strategy, keep=(_DELETED, DELETED_AT)
        )
    elif snapshot is None and tombstones is None:
        winners = candidates  # the batch alone, already one row per key
    else:
        winners = latest_per_key(candidates, primary_key, ordering, strategy, keep=(_DELETED, DELETED_AT))
    current = winners.filter(~col(_DELETED)).select(*map(col, data_columns))
    if kept_snapshot is not None:
        # A column only the batch has (or only the snapshot) is NULL on the other side's rows.
        current = kept_snapshot.unionByName(current, allowMissingColumns=True).select(*map(col, data_columns))
    if not delete_column:
        return Merged(current, None, latest, winners)
    tombstone_columns = [*primary_key, *(c for c in ordering if c not in primary_key)]
    deleted = winners.filter(col(_DELETED)).select(
        *map(col, tombstone_columns),
        F.coalesce(col(DELETED_AT), F.lit(now_micros)).alias(DELETED_AT),
    )
    if kept_tombstones is not None:
        deleted = kept_tombstones.select(*map(col, tombstone_columns), col(DELETED_AT)).unionByName(deleted)
    return Merged(current, deleted, latest, winners)


def full_load_tombstones(
    batch: DataFrame,
    written: DataFrame,
    *,
    primary_key: Sequence[str],
    ordering: Sequence[str],
    delete_column: str,
    delete_values: Sequence[str],
    now_micros: int,
) -> DataFrame:
    """The tombstones :func:`merge_into_snapshot` gives a full load (no snapshot, no tombstones
    before it), found without comparing every key a second time or keeping every winning row.

    A key's newest version is a delete exactly when the key has a delete among its versions and the
    new snapshot ``written`` (its key columns suffice) does not hold it. Its newest version's
    ordering is then the greatest of all its versions' orderings (orderings decide before source
    rank and content hash do), which is its newest delete's. So only the delete rows of ``batch``
    are aggregated (a few columns of a few rows) and only the keys of ``written`` are read.
    """
    is_delete = F.coalesce(col(delete_column).cast("string").isin(list(delete_values)), F.lit(False))
    tombstone_columns = [*primary_key, *(c for c in ordering if c not in primary_key)]
    ordering_only = [c for c in tombstone_columns if c not in primary_key]
    # Struct comparison is field by field, nulls lowest: the ordering latest_per_key ranks by.
    newest = (
        batch.filter(is_delete)
        .groupBy(*map(col, primary_key))
        .agg(F.max(F.struct(*map(col, ordering_only))).alias(_WINNER))
        .select(*map(col, primary_key), *(col(_WINNER)[c].alias(c) for c in ordering_only))
    )
    # The deleted keys are few; the snapshot's keys are every live key: probe the snapshot's keys
    # for deleted ones (the small side is the one built), then drop those few from the deleted.
    live = written.select(*map(col, primary_key)).join(
        newest.select(*map(col, primary_key)), list(primary_key), "left_semi"
    )
    return newest.join(live, list(primary_key), "left_anti").select(
        *map(col, tombstone_columns), F.lit(now_micros).cast("long").alias(DELETED_AT)
    )


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
