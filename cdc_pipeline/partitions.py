"""Partitioned snapshots: an incremental run rewrites only the partitions its changes touch.

A table whose registry row names ``partition_by`` columns is written as one folder per partition,
``<snapshot>/cdc_partition=<id>/``, where the id is a digest of the partition columns' values (as
text). The files keep every column, the partition columns included, so any folder reads alone with
its exact types, and folder names never depend on how a value would have to be escaped in a path.

The snapshot is the set of its partitions (``state.TableState.partitions``: id -> folder, values,
rows, bytes). An incremental run finds the partitions its batch touches (those holding a changed
key's new version, and those where the snapshot holds a changed key's current version, which may
move or be deleted), merges and rewrites only those into its own snapshot folder, and carries
every other partition forward by reference to the folder an earlier run wrote. Folders are deleted
only once no retained snapshot names them (commit.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cdc_pipeline.errors import TableError
from cdc_pipeline.spark import read_parquet
from cdc_pipeline.transform import spelling

PARTITION_COLUMN = "cdc_partition"  # a folder name Spark does not hide (no leading underscore)
NULL_VALUE = "__HIVE_DEFAULT_PARTITION__"  # how Hive and Glue name a partition whose value is NULL

Partitions = dict[str, dict[str, Any]]


def partition_id(df: DataFrame, columns: Sequence[str]) -> Column:
    """The id of each row's partition: a digest of its partition values as text (a prefix keeps
    Spark from reading the folder name as a number)."""
    values = F.to_json(
        F.struct(*(F.col(spelling(df, c)).cast("string").alias(str(i)) for i, c in enumerate(columns)))
    )
    return F.concat(F.lit("p"), F.substring(F.sha2(values, 256), 1, 32))


def check_columns(table: str, df: DataFrame) -> None:
    if any(column.lower() == PARTITION_COLUMN for column in df.columns):
        raise TableError(
            table,
            f"it has a column named {PARTITION_COLUMN!r}, which names the output's partition folders; "
            "rename the column at the source, or leave partition_by empty for this table",
        )


def read(spark: SparkSession, partitions: Partitions) -> DataFrame | None:
    """The rows of these partitions (None: there are none), each folder read as it is."""
    folders = sorted(partition["location"] for partition in partitions.values())
    if not folders:
        return None
    return read_parquet(spark, folders)


def touched(
    batch: DataFrame,
    snapshot: DataFrame | None,
    *,
    primary_key: Sequence[str],
    partition_by: Sequence[str],
) -> set[str]:
    """The ids of the partitions a batch touches: those of its rows, and those where the snapshot
    holds a version of one of its keys. A set-aside or older row may add a partition that is then
    rewritten unchanged; no partition holding a changed key is ever left out."""
    ids = batch.select(partition_id(batch, partition_by).alias(PARTITION_COLUMN))
    if snapshot is not None:
        keys = batch.select(*(F.col(spelling(batch, c)).alias(spelling(snapshot, c)) for c in primary_key))
        hits = snapshot.join(keys.distinct(), [spelling(snapshot, c) for c in primary_key], "left_semi")
        ids = ids.unionByName(hits.select(partition_id(hits, partition_by).alias(PARTITION_COLUMN)))
    return {row[0] for row in ids.distinct().collect()}


def write(df: DataFrame, location: str, partition_by: Sequence[str], *, one_task: bool) -> None:
    """Write ``df`` as one folder per partition; the rows of a partition are gathered into few files
    (Spark's REBALANCE: about 128 MiB each), never one per task and partition. ``one_task``: the
    output is small, one task writes it all (one file per partition, no shuffle)."""
    df = df.withColumn(PARTITION_COLUMN, partition_id(df, partition_by))
    if one_task:
        df.coalesce(1).write.mode("overwrite").partitionBy(PARTITION_COLUMN).parquet(location)
        return
    # PySpark's DataFrame.hint takes no column: the hint goes through a temporary view, named by a
    # digest of the output location (unique per run and table, and safe to put in SQL).
    view = "cdc_" + hashlib.sha256(location.encode()).hexdigest()[:32]
    df.createOrReplaceTempView(view)
    try:
        rebalanced = df.sparkSession.sql(f"SELECT /*+ REBALANCE({PARTITION_COLUMN}) */ * FROM {view}")  # noqa: S608
        rebalanced.write.mode("overwrite").partitionBy(PARTITION_COLUMN).parquet(location)
    finally:
        df.sparkSession.catalog.dropTempView(view)


def describe(
    spark: SparkSession, location: str, partition_by: Sequence[str], sizes: dict[str, int]
) -> Partitions:
    """The partitions just written under ``location``: folder, values (as Glue partition values),
    rows and bytes of each, from the files' partition columns (a scan of those columns only)."""
    sizes_by_id: dict[str, int] = {}
    for relative, size in sizes.items():
        head, _, _ = relative.partition("/")
        if head.startswith(f"{PARTITION_COLUMN}="):
            partition = head.split("=", 1)[1]
            sizes_by_id[partition] = sizes_by_id.get(partition, 0) + size
    if not sizes_by_id:
        return {}
    written = read_parquet(spark, [location])
    values = [
        F.first(F.coalesce(F.col(spelling(written, c)).cast("string"), F.lit(NULL_VALUE))).alias(f"v{i}")
        for i, c in enumerate(partition_by)
    ]
    rows = written.groupBy(PARTITION_COLUMN).agg(F.count(F.lit(1)).alias("rows"), *values).collect()
    return {
        row[PARTITION_COLUMN]: {
            "location": f"{location.rstrip('/')}/{PARTITION_COLUMN}={row[PARTITION_COLUMN]}",
            "values": [row[f"v{i}"] for i in range(len(partition_by))],
            "rows": int(row["rows"]),
            "bytes": sizes_by_id.get(row[PARTITION_COLUMN], 0),
        }
        for row in rows
    }
