"""The Plan and Commit Lambda tasks on moto: S3 state, Glue catalogs, the Map's result files."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from cdc_pipeline.aws.glue import GlueCatalog, GlueOutputCatalog
from cdc_pipeline.aws.s3 import S3RegistrySource, S3StateStore, S3Storage
from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.plan import WorkItem
from cdc_pipeline.settings import CommitSettings, PlanSettings
from cdc_pipeline.tasks import commit_task, failure_text, map_failures, plan_task

from .fakes import (
    create_source_tables,
    ingest_failed,
    ingest_succeeded,
    land_files,
    registry_csv,
    work_items_at,
)

TABLES = ["customers", "orders", "payments"]


@pytest.fixture
def deployment(s3_client, bucket, glue_client, source_database, output_database) -> dict[str, Any]:
    create_source_tables(glue_client, source_database, TABLES, bucket=bucket, s3=s3_client)
    s3_client.put_object(Bucket=bucket, Key="registry/tables-1.csv", Body=registry_csv(TABLES).encode())
    plan_settings = PlanSettings(
        source_database=source_database,
        output_path=f"s3://{bucket}/current",
        cdc_path=f"s3://{bucket}/state",
        registry_prefix=f"s3://{bucket}/registry",
    )
    commit_settings = CommitSettings(
        output_path=plan_settings.output_path,
        cdc_path=plan_settings.cdc_path,
        output_database=output_database,
        retained_snapshots=2,
    )
    storage = S3Storage(client=s3_client)

    def plan(event: dict[str, Any], settings: PlanSettings = plan_settings) -> dict[str, Any]:
        return plan_task(
            event,
            settings,
            catalog=GlueCatalog(source_database, client=glue_client, s3_client=s3_client),
            registry_source=S3RegistrySource(plan_settings.registry_prefix, client=s3_client),
            state_store=S3StateStore(plan_settings.cdc_path, client=s3_client),
            storage=storage,
        )

    return {
        "plan": plan,
        # One Glue run per table: packing off.
        "plan_unpacked": lambda event: plan(event, replace(plan_settings, pack_bytes=0)),
        "commit": lambda event: commit_task(
            event,
            commit_settings,
            state_store=S3StateStore(commit_settings.cdc_path, client=s3_client),
            storage=storage,
            output_catalog=GlueOutputCatalog(output_database, client=glue_client),
        ),
        "storage": storage,
        "s3": s3_client,
        "glue": glue_client,
        "bucket": bucket,
        "state": S3StateStore(plan_settings.cdc_path, client=s3_client),
    }


def items_of(deployment: dict[str, Any], planned: dict[str, Any]) -> list[WorkItem]:
    body = (
        deployment["s3"].get_object(Bucket=planned["items_bucket"], Key=planned["items_key"])["Body"].read()
    )
    entries = json.loads(body)
    # The Map's list names each work item's (or pack's) file: a child's input stays small however
    # wide the table.
    assert all(set(entry) == {"table", "work_item_location"} for entry in entries)
    return [
        item
        for entry in entries
        for item in work_items_at(deployment["storage"], entry["work_item_location"])
    ]


def test_plan_writes_the_maps_items_to_s3_and_returns_only_where_they_are(deployment) -> None:
    planned = deployment["plan"]({"load_type": "incremental"})

    items = items_of(deployment, planned)
    # Three small tables: one Glue run (a pack) ingests them all.
    assert (planned["item_count"], planned["table_count"]) == (1, 3)
    assert sorted(item.table for item in items) == TABLES
    assert all(item.run_id == planned["run_id"] for item in items)
    assert planned["plan_location"].startswith(f"s3://{deployment['bucket']}/state/runs/{planned['run_id']}/")
    # A first run has no tracker: every table is a full load whatever the schedule asked.
    assert {item.load_type for item in items} == {"full"}
    assert len(json.dumps(planned)) < 1_000


def test_plan_rejects_a_bad_event_with_the_fix(deployment) -> None:
    with pytest.raises(ConfigurationError, match="load_type 'sideways'"):
        deployment["plan"]({"load_type": "sideways"})
    with pytest.raises(ConfigurationError, match="tables must be a list"):
        deployment["plan"]({"tables": "orders"})


def test_commit_publishes_the_succeeded_tables_and_points_the_output_catalog_at_them(deployment) -> None:
    planned = deployment["plan"]({})
    items = items_of(deployment, planned)
    for item in items:
        if item.table != "payments":
            ingest_succeeded(deployment["storage"], item)

    result = deployment["commit"]({"plan": planned, "map_result": {}})

    assert (result["succeeded_count"], result["failed_count"], result["failed_tables"]) == (
        2,
        1,
        ["payments"],
    )
    assert (result["rows_read"], result["rows_written"]) == (20, 14)
    state, _ = deployment["state"].read()
    assert sorted(state.tables) == ["customers", "orders"]
    by_table = {item.table: item for item in items}
    for table in ("customers", "orders"):
        glue_table = deployment["glue"].get_table(DatabaseName="current", Name=table)["Table"]
        assert glue_table["StorageDescriptor"]["Location"].rstrip("/") == by_table[table].output_location
    report = deployment["storage"].read_json(result["report_location"])
    assert {t["table"]: t["status"] for t in report["tables"]} == {
        "customers": "succeeded",
        "orders": "succeeded",
        "payments": "failed",
    }


def test_commit_names_the_glue_error_of_a_failed_table_from_the_maps_result_files(deployment) -> None:
    planned = deployment["plan_unpacked"]({})
    items = items_of(deployment, planned)
    assert planned["item_count"] == len(items) == 3
    ingest_succeeded(deployment["storage"], next(i for i in items if i.table == "customers"))
    location = {
        item.table: f"s3://{deployment['bucket']}/state/runs/{item.run_id}/items/{item.table}.json"
        for item in items
    }
    map_result = write_map_results(
        deployment,
        {
            "SUCCEEDED": [
                child(location["customers"], "SUCCEEDED", {"table": "customers", "status": "SUCCEEDED"}),
                child(
                    location["orders"],
                    "SUCCEEDED",
                    {
                        "table": "orders",
                        "status": "FAILED",
                        "error": {
                            "Error": "States.TaskFailed",
                            "Cause": "table 'orders': file x.parquet is not readable Parquet",
                        },
                    },
                ),
            ],
            "FAILED": [
                child(location["payments"], "FAILED", None, error="States.Timeout", cause="child timed out")
            ],
        },
    )

    result = deployment["commit"]({"plan": planned, "map_result": map_result})

    assert result["failed_tables"] == ["orders", "payments"]
    report = deployment["storage"].read_json(result["report_location"])
    messages = {t["table"]: t["message"] for t in report["tables"]}
    assert "file x.parquet is not readable Parquet" in messages["orders"]
    assert "States.Timeout" in messages["payments"]


def test_a_retried_commit_returns_the_same_result_and_publishes_nothing_twice(deployment) -> None:
    planned = deployment["plan"]({})
    for item in items_of(deployment, planned):
        ingest_succeeded(deployment["storage"], item)
    first = deployment["commit"]({"plan": planned, "map_result": {}})
    _, version = deployment["state"].read()

    again = deployment["commit"]({"plan": planned, "map_result": {}})

    assert deployment["state"].read()[1] == version
    assert {k: again[k] for k in ("revision", "succeeded_count", "failed_count")} == {
        k: first[k] for k in ("revision", "succeeded_count", "failed_count")
    }


def test_map_failures_without_a_result_writer_is_empty(deployment) -> None:
    assert map_failures({}, deployment["storage"]) == {}


def child(
    location: str, status: str, output: dict | None, error: str | None = None, cause: str | None = None
) -> dict:
    """One child execution (the Glue run of a work item or pack file) as the Distributed Map's
    ResultWriter records it."""
    label = location.rsplit("/", 1)[-1]
    record = {
        "ExecutionArn": f"arn:aws:states:eu-west-1:123456789012:execution:sm/map:{label}",
        "Input": json.dumps({"table": label, "work_item_location": location}),
        "Status": status,
    }
    if output is not None:
        record["Output"] = json.dumps(output)
    if error:
        record |= {"Error": error, "Cause": cause or ""}
    return record


def write_map_results(deployment: dict[str, Any], groups: dict[str, list[dict]]) -> dict[str, Any]:
    s3, bucket, prefix = deployment["s3"], deployment["bucket"], "state/map-results/run/uuid"
    files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
    for group, children in groups.items():
        key = f"{prefix}/{group}_0.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(children).encode())
        files[group].append({"Key": key, "Size": 1})
    manifest = {"DestinationBucket": bucket, "MapRunArn": "arn:map", "ResultFiles": files}
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps(manifest).encode())
    return {
        "MapRunArn": "arn:map",
        "ResultWriterDetails": {"Bucket": bucket, "Key": f"{prefix}/manifest.json"},
    }


def test_an_unchanged_table_gets_no_ingest_and_keeps_its_catalog_entry(deployment) -> None:
    first = deployment["plan"]({})
    for item in items_of(deployment, first):
        ingest_succeeded(deployment["storage"], item)
    deployment["commit"]({"plan": first, "map_result": {}})
    land_files(deployment["s3"], deployment["bucket"], ["customers"], "CDC-2.parquet")

    second = deployment["plan"]({})
    assert [item.table for item in items_of(deployment, second)] == ["customers"]
    assert (second["item_count"], second["unchanged_count"]) == (1, 2)
    for item in items_of(deployment, second):
        assert item.files == ["CDC-2.parquet"]
        ingest_succeeded(deployment["storage"], item)
    result = deployment["commit"]({"plan": second, "map_result": {}})

    assert (result["succeeded_count"], result["failed_count"]) == (1, 0)
    report = deployment["storage"].read_json(result["report_location"])
    assert {t["table"]: t["status"] for t in report["tables"]} == {
        "customers": "succeeded",
        "orders": "unchanged",
        "payments": "unchanged",
    }

    def catalog_run_id(table: str) -> str:
        found = deployment["glue"].get_table(DatabaseName="current", Name=table)["Table"]
        return found["Parameters"]["cdc_pipeline.run_id"]

    assert catalog_run_id("orders") == first["run_id"]
    assert catalog_run_id("customers") == second["run_id"]


def test_the_result_names_at_most_fifty_failed_tables_and_the_report_all(
    deployment, glue_client, s3_client
) -> None:
    many = [f"t{n:03d}" for n in range(60)]
    create_source_tables(glue_client, "raw", many, bucket=deployment["bucket"], s3=s3_client)
    s3_client.put_object(
        Bucket=deployment["bucket"], Key="registry/tables-2.csv", Body=registry_csv(many).encode()
    )
    planned = deployment["plan"]({"tables": many})

    result = deployment["commit"]({"plan": planned, "map_result": {}})

    assert result["failed_count"] == 60
    assert len(result["failed_tables"]) == 50
    report = deployment["storage"].read_json(result["report_location"])
    assert sum(t["status"] == "failed" for t in report["tables"]) == 60


def test_a_glue_failure_shows_the_job_runs_error_message_not_the_whole_job_run() -> None:
    cause = json.dumps(
        {
            "Id": "jr_1",
            "JobRunState": "FAILED",
            "ErrorMessage": "table 'orders': bad file",
            "Arguments": {"--work_item": "{...}"},
        }
    )

    assert failure_text("States.TaskFailed", cause) == "States.TaskFailed: table 'orders': bad file"
    assert failure_text("States.Timeout", "child timed out") == "States.Timeout: child timed out"


def test_a_failed_packed_run_fails_only_the_tables_it_did_not_finish(deployment) -> None:
    planned = deployment["plan"]({})
    (entry,) = deployment["storage"].read_json(f"s3://{planned['items_bucket']}/{planned['items_key']}")
    by_table = {item.table: item for item in items_of(deployment, planned)}
    # The run ingested customers, recorded orders' own error, then died before payments.
    ingest_succeeded(deployment["storage"], by_table["customers"])
    ingest_failed(deployment["storage"], by_table["orders"], "table 'orders': file x.parquet is not Parquet")
    map_result = write_map_results(
        deployment,
        {
            "FAILED": [
                child(entry["work_item_location"], "FAILED", None, error="Glue.JobRunFailed", cause="OOM")
            ]
        },
    )

    result = deployment["commit"]({"plan": planned, "map_result": map_result})

    assert (result["succeeded_count"], result["failed_tables"]) == (1, ["orders", "payments"])
    report = deployment["storage"].read_json(result["report_location"])
    messages = {t["table"]: t["message"] for t in report["tables"]}
    assert messages["orders"] == "table 'orders': file x.parquet is not Parquet"
    assert (
        messages["payments"]
        == f"Glue.JobRunFailed: OOM (the Glue run of its pack {entry['work_item_location']})"
    )
    state, _ = deployment["state"].read()
    assert sorted(state.tables) == ["customers"]
    assert report["glue_estimate"]["glue_runs"] == 1
