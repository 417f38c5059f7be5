"""A newer registry file that drops a committed table, or changes how its rows are deleted.

Before, both went through with exit code 0: the dropped keyed table was rebuilt as an append table
(delete markers and superseded versions in its snapshot), and only a warning said so. Now each
such table fails, naming both registry files and the change, and keeps its tracker and snapshot
until the change is accepted (``--accept-registry-change``); then it is rebuilt from all its files
as the registry says. Expected snapshots come from DuckDB over the raw files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from cdc_pipeline.commit import CommitReport
from cdc_pipeline.report import render_report

from .helpers import UTC, canonical_rows, read_status, run_pipeline, write_parquet
from .literal_files import actual_rows, expected_current, parquet_files, register

pytestmark = pytest.mark.spark

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("Op", pa.string()),
        ("Status", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = ["id", "name", "op", "status", "updated_at"]
BASE = dt.datetime(2024, 1, 1, tzinfo=UTC)
FIRST = "table_name,primary_key,delete_column,delete_values\ncustomers,id,Op,D\norders,id,Op,D\n"
# customers dropped; orders' deletes now marked by Status (the delete column alone changes).
SECOND = "table_name,primary_key,delete_column,delete_values\norders,id,Status,D\n"


def land(source: Path, round_no: int) -> None:
    at = BASE + dt.timedelta(minutes=round_no)
    for table in ("customers", "orders"):
        if round_no == 0:
            rows = [dict(id=k, name=f"v{k}", Op="I", Status="A", updated_at=at) for k in range(6)]
        elif round_no == 1:
            # Key 0 is deleted by Op, key 1 by Status: which one is a delete depends on the registry.
            rows = [
                dict(id=0, name="v0", Op="D", Status="A", updated_at=at),
                dict(id=1, name="v1", Op="U", Status="D", updated_at=at),
                dict(id=2, name="v2'", Op="U", Status="A", updated_at=at),
            ]
        else:
            rows = [dict(id=3, name="v3'", Op="U", Status="A", updated_at=at)]
        write_parquet(source / table / f"{round_no}.parquet", rows, SCHEMA)


def publish(registry: Path, name: str, text: str, age_s: float) -> Path:
    """A new registry file, its modification time ``age_s`` seconds in the past."""
    path = registry / name
    path.write_text(text)
    moment = dt.datetime.now().timestamp() - age_s
    os.utime(path, (moment, moment))
    return path


def run_json(
    capsys: pytest.CaptureFixture[str], *paths: Path, extra: tuple[str, ...] = ()
) -> tuple[int, dict]:
    capsys.readouterr()
    code = run_pipeline(*paths, "--json", *extra)
    return code, json.loads(capsys.readouterr().out)


def outcomes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {outcome["table"]: outcome for outcome in report["tables"]}


def snapshot(con: duckdb.DuckDBPyConnection, relation: str, entry: dict[str, Any]) -> list[tuple]:
    register(con, relation, [path for folder in entry["locations"] for path in parquet_files(folder)])
    return actual_rows(con, relation, COLUMNS)


def test_a_dropped_table_and_a_changed_delete_column_fail_until_accepted_then_are_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output, state, registry = (tmp_path / part for part in ("raw", "out", "state", "registry"))
    registry.mkdir()
    paths = (source, output, state, registry)
    first = publish(registry, "tables-1.csv", FIRST, age_s=3600)
    land(source, 0)

    code, report = run_json(capsys, *paths)
    assert code == 0
    assert report["registry_file"] == str(first)
    committed = read_status(state)["tables"]
    assert {entry["registry_file"] for entry in committed.values()} == {str(first)}

    # GIVEN a newer registry file that drops customers and moves orders' deletes to Status, new
    # files for both, and a newer hidden file in the registry folder (macOS's ._ resource fork)
    land(source, 1)
    second = publish(registry, "tables-2.csv", SECOND, age_s=60)
    publish(registry, "._tables-2.csv", "\x00\x05\x16\x07", age_s=0)

    # WHEN the next run plans
    code, report = run_json(capsys, *paths)

    # THEN both fail, naming both registry files and the change, and keep tracker and snapshot
    assert code == 1
    assert report["registry_file"] == str(second)
    failed = outcomes(report)
    assert (failed["customers"]["status"], failed["orders"]["status"]) == ("failed", "failed")
    customers, orders = failed["customers"]["message"], failed["orders"]["message"]
    assert f"the newest registry file {second} no longer lists it" in customers
    assert f"committed under registry file {first}" in customers
    assert "primary key (id) -> none (rows appended without deduplication)" in customers
    assert f"the newest registry file {second} changes how its rows are keyed, ordered or deleted" in orders
    assert "delete column 'Op' -> 'Status'" in orders
    assert "--accept-registry-change 'orders'" in orders
    assert read_status(state)["tables"] == committed

    # WHEN the changes are accepted
    code, report = run_json(capsys, *paths, extra=("--accept-registry-change", "customers,orders"))

    # THEN both are rebuilt from all their files with the new settings, under the new registry file
    assert code == 0
    rebuilt = outcomes(report)
    for table in ("customers", "orders"):
        assert (rebuilt[table]["status"], rebuilt[table]["load_type"]) == ("succeeded", "full")
        assert any(
            w.startswith(f"registry change accepted (since registry file {first}")
            for w in rebuilt[table]["warnings"]
        )
    tables = read_status(state)["tables"]
    assert {entry["registry_file"] for entry in tables.values()} == {str(second)}
    con = duckdb.connect()
    register(con, "raw_customers", parquet_files(source / "customers"))
    register(con, "raw_orders", parquet_files(source / "orders"))
    # customers, no longer keyed: every landed row, delete markers included.
    assert snapshot(con, "customers", tables["customers"]) == canonical_rows(con, "raw_customers", COLUMNS)
    expected_orders = expected_current(
        con,
        "raw_orders",
        COLUMNS,
        key="id",
        ordering="updated_at",
        delete_column="status",
        delete_values=["D"],
    )
    assert snapshot(con, "orders", tables["orders"]) == expected_orders
    # Key 0's Op-marked version is a row now; key 1's Status-marked one is a delete.
    assert [row[0] for row in expected_orders] == [0, 2, 3, 4, 5]

    # AND the next run goes on incrementally, nothing left to accept
    land(source, 2)
    code, report = run_json(capsys, *paths)
    assert code == 0
    assert {outcome["load_type"] for outcome in report["tables"]} == {"incremental"}
    tables = read_status(state)["tables"]
    register(con, "raw_orders_2", parquet_files(source / "orders"))
    assert snapshot(con, "orders_2", tables["orders"]) == expected_current(
        con,
        "raw_orders_2",
        COLUMNS,
        key="id",
        ordering="updated_at",
        delete_column="status",
        delete_values=["D"],
    )


def test_the_text_report_names_the_registry_file_used() -> None:
    report = CommitReport("r1", 3, "2026-01-01T00:00:00+00:00", [], [], [], registry_file="/reg/tables-2.csv")

    assert (
        render_report(report).splitlines()[0] == "run r1: state revision 3, registry file /reg/tables-2.csv"
    )
