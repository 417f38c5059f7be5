"""Partitioned output (registry partition_by), end to end through the CLI, against DuckDB.

An incremental run rewrites only the partitions its changes touch (a key's new version's, and the
one where the key's current version lay, when a key moves or is deleted) and carries every other
partition by reference to the folder an earlier run wrote; the union of the partitions equals
DuckDB's latest version per key over every file landed, and no folder a snapshot names is deleted.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from cdc_pipeline import ingest

from .helpers import (
    _lit,
    canonical_rows,
    expected_latest_per_key,
    lake_folders,
    read_status,
    run_pipeline,
    write_parquet,
)

pytestmark = pytest.mark.spark

SCHEMA = pa.schema(
    [
        ("Op", pa.string()),
        ("id", pa.int64()),
        ("name", pa.string()),
        ("event_date", pa.date32()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = ["Op", "id", "name", "event_date", "updated_at"]
REGISTRY = (
    "table_name,primary_key,watermark_column,delete_column,delete_values,partition_by\n"
    "events,id,updated_at,Op,D,event_date\n"
)
DAYS = [dt.date(2026, 1, day) for day in range(1, 11)]
T0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def row(op: str, key: int, name: str, day: dt.date | None, seconds: int) -> dict:
    return {
        "Op": op,
        "id": key,
        "name": name,
        "event_date": day,
        "updated_at": T0 + dt.timedelta(seconds=seconds),
    }


def snapshot_rows(con: duckdb.DuckDBPyConnection, locations: list[str]) -> list[tuple]:
    files = "[" + ", ".join(_lit(f"{location}/*.parquet") for location in locations) + "]"
    return canonical_rows(con, f"read_parquet({files}, hive_partitioning=false, union_by_name=true)", COLUMNS)


@pytest.fixture
def lake(tmp_path: Path) -> dict[str, Path]:
    return lake_folders(tmp_path, REGISTRY)


def run(lake: dict[str, Path]) -> dict:
    assert run_pipeline(lake["source"], lake["output"], lake["state"], lake["registry"]) == 0
    return read_status(lake["state"])["tables"]["events"]


@pytest.mark.parametrize(
    "small_bytes", [ingest.SMALL_TABLE_BYTES, -1], ids=["small-one-partition", "changed-keys-only"]
)
def test_an_incremental_run_rewrites_only_the_partitions_its_changes_touch(lake, monkeypatch, small_bytes):
    monkeypatch.setattr(ingest, "SMALL_TABLE_BYTES", small_bytes)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = lake["source"] / "events"
    history = [row("I", key, f"k{key}", DAYS[key % 10], key) for key in range(40)]
    write_parquet(source / "part-0.parquet", history, SCHEMA)

    def expected() -> list[tuple]:
        return expected_latest_per_key(con, lake["source"], "events", ["id"], "updated_at", None, "Op", ["D"])

    first = run(lake)
    assert len(first["partitions"]) == 10
    assert snapshot_rows(con, first["locations"]) == expected()
    for partition in first["partitions"].values():
        days = con.execute(
            f"SELECT DISTINCT event_date FROM read_parquet({_lit(partition['location'] + '/*.parquet')})"
        ).fetchall()
        assert [str(day[0]) for day in days] == partition["values"]

    # Day 1 and day 2 change: key 1 updated in place, key 11 deleted (day 2), key 21 moves from
    # day 2 to day 9, key 100 is new on day 1.
    write_parquet(
        source / "part-1.parquet",
        [
            row("U", 1, "k1-v2", DAYS[1], 100),
            row("D", 11, "k11", DAYS[1], 101),
            row("U", 21, "k21-moved", DAYS[8], 102),
            row("I", 100, "k100", DAYS[0], 103),
        ],
        SCHEMA,
    )
    second = run(lake)

    by_day = {p["values"][0]: pid for pid, p in second["partitions"].items()}
    rewritten = {
        day
        for day, pid in by_day.items()
        if second["partitions"][pid]["location"].startswith(second["location"])
    }
    assert rewritten == {"2026-01-01", "2026-01-02", "2026-01-09"}
    for pid, partition in second["partitions"].items():
        if partition["values"][0] not in rewritten:
            assert partition == first["partitions"][pid]  # carried by reference, untouched
    assert snapshot_rows(con, second["locations"]) == expected()
    assert second["rows"] == len(expected())
    # Nothing a snapshot names was deleted: the first run's folder still holds the carried partitions.
    assert all(Path(location).is_dir() for location in second["locations"])

    # A third run touching only day 10: the first run's folder stays while it holds carried partitions.
    write_parquet(source / "part-2.parquet", [row("U", 9, "k9-v2", DAYS[9], 200)], SCHEMA)
    third = run(lake)
    assert snapshot_rows(con, third["locations"]) == expected()
    assert all(Path(location).is_dir() for location in third["locations"])
    named = {Path(location).parent for location in third["locations"]}
    assert Path(first["location"]) in named
    # The second run's snapshot is retained (2 snapshots); its own partitions stay readable.
    assert all(Path(p["location"]).is_dir() for p in second["partitions"].values())
    # Two more runs on day 10: the third run's folder leaves the retained snapshots together with
    # its only partition, and both go (one deletion, no race between them).
    for n, seconds in ((3, 300), (4, 400)):
        write_parquet(source / f"part-{n}.parquet", [row("U", 9, f"k9-v{n}", DAYS[9], seconds)], SCHEMA)
        latest = run(lake)
    assert snapshot_rows(con, latest["locations"]) == expected()
    assert not Path(third["location"]).exists()
    assert Path(first["location"]).is_dir()  # still carries the untouched days
