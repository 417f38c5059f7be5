"""Partitioned snapshots' building blocks on Spark: ids, the touched partitions, writing, describing."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from cdc_pipeline import partitions
from cdc_pipeline.storage import LocalStorage

pytestmark = pytest.mark.spark

ROWS = [
    (1, "a", dt.date(2026, 1, 1)),
    (2, "b", dt.date(2026, 1, 1)),
    (3, "c", dt.date(2026, 1, 2)),
    (4, "d", None),
]


def frame(spark, rows=ROWS):
    return spark.createDataFrame(rows, "id bigint, name string, day date")


@pytest.mark.parametrize("one_task", [True, False], ids=["one-task", "rebalanced"])
def test_written_partitions_hold_only_their_rows_and_are_described_with_their_values(
    spark, tmp_path, one_task
) -> None:
    location = str(tmp_path / "snapshot")

    partitions.write(frame(spark), location, ["day"], one_task=one_task)
    described = partitions.describe(spark, location, ["day"], LocalStorage().file_sizes(location))

    by_values = {tuple(p["values"]): p for p in described.values()}
    assert set(by_values) == {("2026-01-01",), ("2026-01-02",), (partitions.NULL_VALUE,)}
    assert {values: p["rows"] for values, p in by_values.items()} == {
        ("2026-01-01",): 2,
        ("2026-01-02",): 1,
        (partitions.NULL_VALUE,): 1,
    }
    for partition in described.values():
        table = pq.read_table(partition["location"])
        assert table.column_names == ["id", "name", "day"]  # the files keep the partition column
        days = {str(day) if day else partitions.NULL_VALUE for day in table["day"].to_pylist()}
        assert days == set(partition["values"])
        assert partition["bytes"] == sum(
            f.stat().st_size
            for f in (tmp_path / "snapshot").glob(
                f"{partitions.PARTITION_COLUMN}={partition['location'].rsplit('=', 1)[1]}/*"
            )
        )


def test_a_partition_id_depends_on_the_values_not_on_their_integer_width(spark) -> None:
    narrow = spark.createDataFrame([(7,)], "region int")
    wide = spark.createDataFrame([(7,)], "region bigint")
    other = spark.createDataFrame([(8,)], "region bigint")

    def pid(df):
        return df.select(partitions.partition_id(df, ["REGION"])).first()[0]

    assert pid(narrow) == pid(wide) != pid(other)
    assert pid(narrow).startswith("p")


def test_touched_partitions_include_where_a_changed_key_lies_now_and_where_it_goes(spark) -> None:
    snapshot = frame(spark)
    # Key 3 moves from Jan 2 to Jan 9; key 9 is new on Jan 1; Jan 1's keys 1 and 2 are untouched.
    batch = spark.createDataFrame(
        [(3, "c2", dt.date(2026, 1, 9)), (9, "z", dt.date(2026, 1, 1))], snapshot.schema
    )

    def pid(day):
        row = spark.createDataFrame([(day,)], "day date")
        return row.select(partitions.partition_id(row, ["day"])).first()[0]

    touched = partitions.touched(batch, snapshot, primary_key=["id"], partition_by=["day"])

    assert touched == {pid(dt.date(2026, 1, 2)), pid(dt.date(2026, 1, 9)), pid(dt.date(2026, 1, 1))}
    assert pid(None) not in touched
