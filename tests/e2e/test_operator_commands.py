"""The operator commands between real runs, through the CLI, judged by DuckDB.

- reset, then a run: a complete rebuild from every landed file (it does not even read the snapshot
  it replaces), equal to DuckDB's latest version per key;
- rollback, then a run: the earlier snapshot is current again as it was, and the next run
  re-applies every file that landed after it, ending equal to DuckDB over every file;
- vacuum: lists the folders of a crashed run and nothing a commit references, --apply deletes only
  those, and the next run still matches DuckDB.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from .helpers import (
    actual_snapshot,
    expected_latest_per_key,
    lake_folders,
    read_status,
    run_cli,
    run_pipeline,
    write_parquet,
)

pytestmark = pytest.mark.spark

TABLE = "customers"
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("op", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = ["id", "name", "op", "updated_at"]
REGISTRY = (
    "table_name,primary_key,watermark_column,delete_column,delete_values\ncustomers,id,updated_at,op,D\n"
)
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def row(key: int, name: str, minute: int, op: str = "U") -> dict[str, Any]:
    return {"id": key, "name": name, "op": op, "updated_at": T0 + dt.timedelta(minutes=minute)}


# Each batch lands as one file; later batches update, delete, and bring late older versions.
BATCHES = [
    [row(key, f"v1-{key}", key, "I") for key in range(1, 21)],
    [row(3, "v2-3", 100), row(4, "gone", 101, "D"), row(21, "v1-21", 102, "I")],
    [row(5, "v3-5", 200), row(6, "gone", 201, "D"), row(3, "late-older-3", 50), row(22, "v1-22", 202, "I")],
    [row(7, "v4-7", 300), row(21, "v4-21", 301), row(6, "late-older-6", 150)],
]


@pytest.fixture
def lake(tmp_path: Path) -> dict[str, Path]:
    return lake_folders(tmp_path, REGISTRY)


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def land(lake: dict[str, Path], number: int) -> None:
    write_parquet(lake["source"] / TABLE / f"batch-{number}.parquet", BATCHES[number], SCHEMA)


def run(lake: dict[str, Path]) -> dict[str, Any]:
    """One run, which must succeed; the table's committed tracker after it."""
    assert run_pipeline(lake["source"], lake["output"], lake["state"], lake["registry"]) == 0
    return read_status(lake["state"])["tables"][TABLE]


def expected(con: duckdb.DuckDBPyConnection, lake: dict[str, Path]) -> list[tuple]:
    """DuckDB's current state over every file landed so far."""
    return expected_latest_per_key(con, lake["source"], TABLE, ["id"], "updated_at", None, "op", ["D"])


def actual(con: duckdb.DuckDBPyConnection, location: str) -> list[tuple]:
    return actual_snapshot(con, location, COLUMNS)[1]


def command(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(list(argv))
    return code, out.getvalue()


def history(lake: dict[str, Path]) -> list[dict[str, Any]]:
    code, out = command("history", "--state", str(lake["state"]), "--table", TABLE, "--json")
    assert code == 0, out
    return json.loads(out)["tables"][TABLE]


def test_reset_then_a_run_rebuilds_the_table_from_every_file(lake, con):
    land(lake, 0)
    run(lake)
    land(lake, 1)
    before = run(lake)
    assert before["load_type"] == "incremental"

    assert command("reset", "--state", str(lake["state"]), "--table", TABLE)[0] == 0
    reset = read_status(lake["state"])["tables"][TABLE]
    assert (reset["location"], reset["cursor"], reset["watermark"]) == (before["location"], None, None)
    # A complete rebuild does not read the snapshot it replaces: it may even be gone.
    shutil.rmtree(before["location"])
    land(lake, 2)
    after = run(lake)

    assert after["load_type"] == "full"
    assert actual(con, after["location"]) == expected(con, lake)
    assert after["rows"] == len(expected(con, lake))
    assert [entry["outcome"] for entry in history(lake)] == ["succeeded", "reset", "succeeded", "succeeded"]


def test_rollback_then_a_run_reapplies_every_file_that_landed_after_the_snapshot(lake, con):
    land(lake, 0)
    run(lake)
    land(lake, 1)
    second = run(lake)
    as_of_second = expected(con, lake)
    land(lake, 2)
    third = run(lake)
    assert actual(con, third["location"]) == expected(con, lake) != as_of_second

    code, out = command("rollback", "--state", str(lake["state"]), "--table", TABLE)
    assert code == 0, out
    rolled_back = read_status(lake["state"])["tables"][TABLE]
    assert {key: rolled_back[key] for key in ("location", "cursor", "watermark", "rows", "run_id")} == {
        key: second[key] for key in ("location", "cursor", "watermark", "rows", "run_id")
    }
    assert actual(con, rolled_back["location"]) == as_of_second
    assert rolled_back["previous_locations"][0] == third["location"]  # kept: it can roll forward
    land(lake, 3)
    after = run(lake)

    assert after["load_type"] == "incremental"
    assert actual(con, after["location"]) == expected(con, lake)
    assert [entry["outcome"] for entry in history(lake)][:2] == ["succeeded", "rolled back"]


def test_vacuum_deletes_a_crashed_runs_folders_and_nothing_a_commit_references(lake, con):
    land(lake, 0)
    first = run(lake)
    land(lake, 1)
    second = run(lake)
    # A run that crashed two days ago while writing: its snapshot and quarantine, never committed.
    crashed = f"{dt.datetime.now(dt.UTC) - dt.timedelta(days=2):%Y%m%dT%H%M%S}Z-c0ffee00"
    snapshot = lake["output"] / TABLE / "snapshots" / crashed
    quarantine = lake["output"] / TABLE / "quarantine" / crashed
    shutil.copytree(second["location"], snapshot)
    shutil.copytree(second["location"], quarantine)
    args = ["vacuum", "--state", str(lake["state"]), "--output", str(lake["output"])]

    code, out = command(*args, "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert sorted(folder["location"] for folder in listed["orphans"]) == sorted(
        [str(quarantine.resolve()), str(snapshot.resolve())]
    )
    assert listed["in_progress"] == []
    assert snapshot.exists()

    code, out = command(*args, "--apply")
    assert code == 0, out
    assert "deleted 2 folder(s)" in out
    assert not snapshot.exists()
    assert not quarantine.exists()
    for location in (first["location"], second["location"], second["tombstones"]):
        assert Path(location).is_dir(), f"{location}, which the state references, was deleted"
    land(lake, 2)
    after = run(lake)

    assert actual(con, after["location"]) == expected(con, lake)
    assert json.loads(command(*args, "--json")[1])["orphans"] == []
