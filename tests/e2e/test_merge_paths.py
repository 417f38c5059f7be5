"""End to end, against DuckDB: the lookback of a table read by watermark, the batch copy winning a
full tie with the snapshot (and with a tombstone), and rows holding map columns, along each way a
merge can go.

A merge goes one of four ways: the dedup strategy (window ``row_number``, the default, or the
``max(struct)`` aggregate, reached only when a caller asks for it) times the table's size (a small
table merged by one aggregation over all rows in one partition, a larger one by its changed keys
only). Map columns force the window strategy whatever was asked. Each path runs the same three
rounds; every round's published tables are compared with DuckDB's answer, computed from the raw
files alone: per key the newest version by (stamp, sequence, landing round), and for the table read
by watermark, only the rows each run could read (at or after the last watermark minus the lookback).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from cdc_pipeline import ingest
from cdc_pipeline.runner import RunSettings, run_local
from cdc_pipeline.state import LocalStateStore
from cdc_pipeline.transform import DedupStrategy

from .helpers import UTC, _lit, canonical_rows, columns_of, instant_us, snapshot_relation, write_parquet

pytestmark = pytest.mark.spark

REGISTRY_CSV = """\
table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,incremental_by,lookback
ledger,entry_id,updated_at,seq,Op,D,,
tagged,item_id,updated_at,,,,,
gauges,gauge_id,measured_at,,,,watermark,PT10M
"""
LOOKBACK_US = 10 * 60 * 1_000_000
STAMP = pa.timestamp("us", tz="UTC")
SCHEMAS = {
    "ledger": pa.schema(
        [
            ("Op", pa.string()),
            ("entry_id", pa.int64()),
            ("note", pa.string()),
            ("seq", pa.int64()),
            ("updated_at", STAMP),
        ]
    ),
    "tagged": pa.schema(
        [("item_id", pa.int64()), ("tags", pa.map_(pa.string(), pa.string())), ("updated_at", STAMP)]
    ),
    "gauges": pa.schema([("gauge_id", pa.int64()), ("level", pa.int64()), ("measured_at", STAMP)]),
}
KEYS = {"ledger": "entry_id", "tagged": "item_id", "gauges": "gauge_id"}
T0 = dt.datetime(2024, 6, 1, tzinfo=UTC)


def minute(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def entry(op: str, key: int, note: str, at: float, seq: int | None) -> dict[str, Any]:
    return dict(Op=op, entry_id=key, note=note, seq=seq, updated_at=minute(at))


def item(key: int, at: float, **tags: str) -> dict[str, Any]:
    return dict(item_id=key, tags=list(tags.items()), updated_at=minute(at))


def gauge(key: int, level: int, at: float) -> dict[str, Any]:
    return dict(gauge_id=key, level=level, measured_at=minute(at))


# Per round and table, the rows landing (one file each). No two versions of a key share a
# (stamp, sequence) within a round, so the oracle's answer is one row per key.
ROUNDS: list[dict[str, list[dict[str, Any]]]] = [
    {
        "ledger": [entry("I", k, "first", k, 1) for k in range(1, 9)],
        "tagged": [item(k, k, color="red", size=str(k)) for k in range(1, 6)],
        "gauges": [gauge(k, 0, 60 + k) for k in range(1, 7)],  # watermark 66
    },
    {
        "ledger": [
            entry("U", 1, "tie: the batch wins", 1, 1),
            entry("D", 2, "tie: the delete wins", 2, 1),
            entry("U", 3, "same stamp, lower sequence", 3, 0),
            entry("U", 4, "newer", 104, 1),
            entry("U", 5, "older", 4.5, 9),
            entry("I", 9, "new", 9, 1),
        ],
        "tagged": [
            item(1, 1, color="blue"),  # a full tie with the snapshot: the batch wins
            item(2, 102, color="green", size="L"),
            item(3, 2.5, color="older"),
            item(6, 6, color="new"),
        ],
        "gauges": [
            gauge(1, 1, 63),  # 3 minutes before the watermark, newer than gauge 1's: read and applied
            gauge(3, 1, 60),  # within the lookback but older than gauge 3's: read, loses
            gauge(7, 1, 56),  # exactly the watermark minus the lookback: read (inclusive)
            gauge(8, 1, 55),  # a minute before that: never read by an incremental run
            gauge(4, 1, 70),  # newer: the watermark moves to 70
        ],
    },
    {
        "ledger": [
            entry("I", 2, "tie with its tombstone: back", 2, 1),
            entry("U", 1, "tie again: the batch wins", 1, 1),
            entry("D", 4, "tie with round 1: deleted", 104, 1),
            entry("U", 5, "late, older than the first", 0.5, 1),
        ],
        "tagged": [item(1, 1, color="teal", shade="dark"), item(2, 102, color="tie")],
        "gauges": [
            gauge(9, 2, 60),  # exactly 70 minus 10 minutes: read
            gauge(5, 2, 59),  # before it: never read
            gauge(6, 2, 68),  # within the lookback, newer than gauge 6's 66: applied
        ],
    },
]


# ----------------------------------------------------------------------------------------------
# DuckDB: the oracle
# ----------------------------------------------------------------------------------------------


def landed(source: Path, table: str) -> str:
    """Every raw row with the round its file landed in; maps as sorted text, so rows compare."""
    files = _lit(str(source / table) + "/*.parquet")
    maps = " REPLACE (CAST(list_sort(map_entries(tags)) AS VARCHAR) AS tags)" if table == "tagged" else ""
    return (
        f"(SELECT * EXCLUDE (filename){maps}, "
        "CAST(regexp_extract(filename, '/r(\\d+)-[^/]*$', 1) AS INTEGER) AS __round "
        f"FROM read_parquet({files}, union_by_name=true, filename=true))"
    )


def published(location: str, table: str) -> str:
    maps = " REPLACE (CAST(list_sort(map_entries(tags)) AS VARCHAR) AS tags)" if table == "tagged" else ""
    return f"(SELECT *{maps} FROM {snapshot_relation(location)})"


def readable(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[str, int]:
    """The rows of a table read by watermark that some run read, and the watermark after the last:
    a full load reads everything, each incremental run the rows stamped at or after the last
    watermark minus the lookback; the watermark is the newest stamp read, never moving back."""
    watermark: int | None = None
    read: list[str] = []
    for (round_no,) in con.execute(f"SELECT DISTINCT __round FROM {relation} ORDER BY 1").fetchall():
        condition = f"__round = {round_no}"
        if watermark is not None:
            condition += f" AND epoch_us(measured_at) >= {watermark - LOOKBACK_US}"
        read.append(f"({condition})")
        newest = con.execute(
            f"SELECT max(epoch_us(measured_at)) FROM {relation} WHERE {condition}"
        ).fetchone()[0]
        watermark = newest if watermark is None else max(watermark, newest or watermark)
    assert watermark is not None
    return f"(SELECT * FROM {relation} WHERE {' OR '.join(read)})", watermark


def expected(con: duckdb.DuckDBPyConnection, source: Path, table: str) -> tuple[list[str], list[tuple], int]:
    """(columns, DuckDB's current rows of ``table``, its expected watermark in microseconds)."""
    relation = landed(source, table)
    columns = [name for name, _ in columns_of(con, relation) if name != "__round"]
    ordering = "measured_at" if table == "gauges" else "updated_at"
    if table == "gauges":
        relation, watermark = readable(con, relation)
    else:
        watermark = con.execute(f"SELECT max(epoch_us({ordering})) FROM {relation}").fetchone()[0]
    sequence = ", seq DESC NULLS LAST" if table == "ledger" else ""
    newest = (
        f"(SELECT * FROM {relation} QUALIFY row_number() OVER "
        f"(PARTITION BY {KEYS[table]} ORDER BY {ordering} DESC{sequence}, __round DESC) = 1)"
    )
    live = "Op IS DISTINCT FROM 'D'" if table == "ledger" else "TRUE"
    return columns, canonical_rows(con, newest, columns, live), watermark


# ----------------------------------------------------------------------------------------------
# The runs, one scenario per path
# ----------------------------------------------------------------------------------------------


@dataclass
class Round:
    expected: dict[str, list[tuple]] = field(default_factory=dict)
    actual: dict[str, list[tuple]] = field(default_factory=dict)
    watermark: dict[str, tuple[int | None, int]] = field(default_factory=dict)  # (published, expected)


@dataclass
class Scenario:
    rounds: list[Round]
    merges: set[tuple[str, str, bool]]  # (table, strategy, small) of every merge done


PATHS = {
    # What production runs on tiny tables: the window strategy, one partition.
    "window-small": (DedupStrategy.WINDOW, ingest.SMALL_TABLE_BYTES),
    # The strategy only a caller's choice reaches, both ways.
    "aggregate-small": (DedupStrategy.AGGREGATE, ingest.SMALL_TABLE_BYTES),
    "aggregate-changed-keys": (DedupStrategy.AGGREGATE, -1),
}


@pytest.fixture(scope="module", params=list(PATHS))
def scenario(request, spark, tmp_path_factory) -> Scenario:
    strategy, small_bytes = PATHS[request.param]
    tables = list(SCHEMAS)
    root = tmp_path_factory.mktemp(request.param)
    source, registry = root / "source", root / "registry"
    registry.mkdir()
    (registry / "registry.csv").write_text(REGISTRY_CSV)
    paths = dict(source=source, output=root / "output", state=root / "state", registry=registry)
    con = duckdb.connect()
    merges: set[tuple[str, str, bool]] = set()
    real_merge = ingest.merge_into_snapshot

    def merge_into_snapshot(*args: Any, **kwargs: Any) -> Any:
        table = next(t for t in tables if kwargs["primary_key"] == [KEYS[t]])
        merges.add((table, kwargs["strategy"].value, kwargs["small"]))
        return real_merge(*args, **kwargs)

    rounds = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest, "SMALL_TABLE_BYTES", small_bytes)
        mp.setattr(ingest, "ingest_table", functools.partial(ingest.ingest_table, strategy=strategy))
        mp.setattr(ingest, "merge_into_snapshot", merge_into_snapshot)
        for round_no, landing in enumerate(ROUNDS):
            for table in tables:
                write_parquet(source / table / f"r{round_no}-f0.parquet", landing[table], SCHEMAS[table])
            report = run_local(RunSettings(**paths), spark)  # a new run id each
            assert not report.failed, [(o.table, o.message) for o in report.failed]
            document = LocalStateStore(paths["state"]).read()[0]
            record = Round()
            for table in tables:
                tracker = document.tables[table]
                columns, record.expected[table], watermark = expected(con, source, table)
                record.actual[table] = canonical_rows(con, published(tracker.location, table), columns)
                record.watermark[table] = (instant_us(tracker.watermark), watermark)
            rounds.append(record)
    return Scenario(rounds, merges)


def notes(rows: list[tuple]) -> dict[int, str]:
    """The ledger's note by key (columns Op, entry_id, note, seq, updated_at)."""
    return {row[1]: row[2] for row in rows}


def by_key(rows: list[tuple]) -> dict[int, Any]:
    """The second column by the first: tagged's tags as text, gauges' level."""
    return {row[0]: row[1] for row in rows}


def test_every_merge_took_the_path_under_test(scenario, request) -> None:
    strategy, small_bytes = PATHS[request.node.callspec.params["scenario"]]
    small = small_bytes >= 0
    incremental = {(table, strategy.value, small) for table in ("ledger", "tagged")}
    assert incremental <= scenario.merges


def test_each_round_publishes_what_duckdb_computes_from_the_files(scenario) -> None:
    for round_no, record in enumerate(scenario.rounds):
        for table, rows in record.actual.items():
            assert rows == record.expected[table], f"round {round_no}, {table}"
            published_watermark, expected_watermark = record.watermark[table]
            assert published_watermark == expected_watermark, f"round {round_no}, {table} watermark"


def test_the_batch_copy_wins_a_full_tie_with_the_snapshot_and_with_a_tombstone(scenario) -> None:
    first, second, third = (notes(record.actual["ledger"]) for record in scenario.rounds)
    assert sorted(first) == list(range(1, 9))
    assert second[1] == "tie: the batch wins"
    assert 2 not in second  # the delete tied the snapshot's version and won
    assert second[3] == "first"  # the same stamp with a lower sequence lost
    assert third[1] == "tie again: the batch wins"
    assert third[2] == "tie with its tombstone: back"
    assert 4 not in third
    assert third[5] == "first"


def test_rows_holding_maps_merge_by_the_window_whatever_strategy_was_asked(scenario) -> None:
    second, third = (by_key(record.actual["tagged"]) for record in scenario.rounds[1:])
    assert "blue" in second[1]  # a full tie with the snapshot: the batch's maps won
    assert "teal" in third[1]
    assert "dark" in third[1]
    assert "tie" in third[2]
    assert "red" in third[3]  # the older version landing later lost
    assert sorted(third) == list(range(1, 7))


def test_the_lookback_rereads_late_rows_within_it_and_only_those(scenario) -> None:
    first, second, third = (record.actual["gauges"] for record in scenario.rounds)
    levels = by_key(third)
    assert {row[0] for row in first} == {1, 2, 3, 4, 5, 6}
    assert (levels[1], levels[3], levels[4]) == (1, 0, 1)
    assert 7 in levels  # stamped exactly at the watermark minus the lookback
    assert 8 not in levels  # a minute earlier than that
    assert (levels[9], levels[5], levels[6]) == (2, 0, 2)
    assert {row[0] for row in second} == {1, 2, 3, 4, 5, 6, 7}
    assert [record.watermark["gauges"][0] for record in scenario.rounds] == [
        instant_us(minute(66)),
        instant_us(minute(70)),
        instant_us(minute(70)),
    ]
