"""Operator commands on an ``s3://`` state and output (moto): the scenarios of tests/test_operations.py,
through the S3 state store and storage, and the CLI given s3:// locations."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from cdc_pipeline.aws.s3 import S3StateStore, S3Storage, parse_s3_uri
from cdc_pipeline.cli import main
from cdc_pipeline.errors import CommitConflictError
from cdc_pipeline.operations import (
    FAILED,
    ROLLED_BACK,
    SUCCEEDED,
    WAS_RESET,
    reset_tables,
    rollback_table,
    table_history,
    vacuum,
)
from cdc_pipeline.plan import Layout
from tests.test_operations import (
    DAY,
    FAILED_RUN,
    NOW,
    R1,
    R2,
    R3,
    Lake,
    _StaleStore,
    crashed_and_failed_runs,
    referenced,
    three_runs,
)


@pytest.fixture
def lake(s3_client: Any, bucket: str) -> Lake:
    def put_file(location: str, content: bytes) -> None:
        target, key = parse_s3_uri(location)
        s3_client.put_object(Bucket=target, Key=key, Body=content)

    return Lake(
        store=S3StateStore(f"s3://{bucket}/state", client=s3_client),
        storage=S3Storage(client=s3_client),
        layout=Layout(output_path=f"s3://{bucket}/current", cdc_path=f"s3://{bucket}/state"),
        put_file=put_file,
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_history_on_s3_shows_committed_and_failed_runs(lake):
    three_runs(lake)

    found = table_history(lake.store, lake.storage, lake.layout)

    assert [(e.run_id, e.outcome) for e in found["orders"]] == [
        (R3, SUCCEEDED),
        (R2, SUCCEEDED),
        (R1, SUCCEEDED),
    ]
    assert (found["customers"][0].run_id, found["customers"][0].outcome) == (FAILED_RUN, FAILED)


def test_reset_and_rollback_on_s3_commit_by_compare_and_swap(lake):
    trackers = three_runs(lake)
    before, _ = lake.store.read()

    reset = reset_tables(lake.store, ["customers"], now=NOW)
    done = rollback_table(lake.store, lake.storage, "orders", now=NOW)

    after, _ = lake.store.read()
    assert after == done.document
    assert after.revision == reset.revision + 1 == before.revision + 2
    assert (after.tables["customers"].cursor, after.tables["customers"].watermark) == (None, None)
    assert after.tables["orders"].location == trackers["orders2"].location
    assert after.tables["orders"].cursor == trackers["orders2"].cursor
    assert referenced(after) == referenced(before)
    assert [r.run_id for r in lake.store.history()][-2:] == [reset.run_id, done.document.run_id]

    stale = _StaleStore(lake.store, (before, lake.store.read()[1]))
    lake.commit("20240501T140000Z-aaaa0005", {})
    with pytest.raises(CommitConflictError, match="20240501T140000Z-aaaa0005"):
        reset_tables(stale, ["orders"])


def test_vacuum_on_s3_lists_then_deletes_only_the_orphans(lake):
    three_runs(lake)
    folders = crashed_and_failed_runs(lake)

    listed = vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, now=NOW)
    applied = vacuum(lake.store, lake.storage, lake.layout, min_age=DAY, apply=True, now=NOW)

    orphans = {folders[name] for name in folders if name != "young snapshot"}
    assert {f.location for f in listed.orphans} == orphans
    assert listed.deleted == []
    assert set(applied.deleted) == orphans
    assert {location for location in folders.values() if lake.storage.file_sizes(location)} == {
        folders["young snapshot"]
    }
    assert all(lake.storage.file_sizes(location) for location in referenced(lake.store.read()[0]))


def test_the_commands_take_s3_locations(lake, capsys):
    trackers = three_runs(lake)
    crashed_and_failed_runs(lake)
    state, output = lake.layout.cdc_path, lake.layout.output_path

    code, out = cli(capsys, "history", "--state", state + "/", "--table", "orders", "--limit", "2", "--json")
    assert code == 0
    assert [entry["run_id"] for entry in json.loads(out)["tables"]["orders"]] == [R3, R2]

    assert cli(capsys, "reset", "--state", state, "--table", "customers")[0] == 0
    code, out = cli(capsys, "rollback", "--state", state, "--table", "orders", "--to", R1)
    assert code == 0
    assert f"rolled back to the snapshot of run {R1}" in out
    assert lake.store.read()[0].tables["orders"].location == trackers["orders1"].location

    code, out = cli(capsys, "history", "--state", state)
    assert code == 0
    assert WAS_RESET in out.split("customers:")[1]
    assert ROLLED_BACK in out.split("orders:")[1]

    # Every run here started in May 2024, long before today: the "young" one too, from here.
    code, out = cli(capsys, "vacuum", "--state", state, "--output", output, "--min-age", "PT1H", "--json")
    assert code == 0
    listed = json.loads(out)
    assert listed["applied"] is False
    assert len(listed["orphans"]) == 5
    assert cli(capsys, "vacuum", "--state", state, "--output", output, "--apply")[0] == 0
    code, out = cli(capsys, "vacuum", "--state", state, "--output", output, "--json")
    assert json.loads(out)["orphans"] == []


def test_vacuum_refuses_a_local_output_for_an_s3_state(lake, capsys, tmp_path):
    three_runs(lake)

    assert main(["vacuum", "--state", lake.layout.cdc_path, "--output", str(tmp_path)]) == 2
    assert "both be local or both s3://" in capsys.readouterr().err


def test_vacuum_leaves_young_folders_of_runs_without_a_report_alone(lake):
    three_runs(lake)
    young = lake.folder(lake.layout.snapshot("orders", "20240503T113000Z-live0001"))

    result = vacuum(lake.store, lake.storage, lake.layout, min_age=timedelta(hours=1), apply=True, now=NOW)

    assert [f.location for f in result.in_progress] == [young]
    assert lake.storage.file_sizes(young)
