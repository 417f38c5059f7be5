"""Odd table names on S3 and Glue (moto), and a registry change accepted through the execution input.

Each odd name sits next to the lookalike its name matches as a glob pattern. Locally the ingest
reads such tables for real (tests/e2e/test_odd_names.py); here the AWS side is checked at the level
the other tests/aws tests check it: S3 listing, the Plan and Commit tasks with the Glue catalogs,
a stand-in for the Glue job, and the paths the job would hand Spark.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from cdc_pipeline.aws.executions import start_run
from cdc_pipeline.aws.glue import GlueCatalog, GlueOutputCatalog, check_table_name
from cdc_pipeline.aws.s3 import S3RegistrySource, S3StateStore, S3Storage, list_data_files
from cdc_pipeline.catalog import PublishedTable
from cdc_pipeline.errors import ConfigurationError, TableError
from cdc_pipeline.plan import WorkItem
from cdc_pipeline.settings import CommitSettings, PlanSettings
from cdc_pipeline.spark import literal_groups, reads_alone
from cdc_pipeline.tasks import commit_task, plan_task

from .fakes import create_source_tables, ingest_succeeded, work_items_at

# Odd names and their lookalikes; each table's file names hold colons, spaces and brackets too.
TABLES = ["pv1", "pv[1]", "ba", "b{a,b}", "x:y1", "x:y[1]", "qa x", "q? *", "ü:n ï\\é"]
FILES = ["2024-01-01T00:00:00.parquet", "part [0].parquet", "t:1/LOAD 00000001.parquet"]


def registry_csv(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([("table_name", "primary_key"), *rows])
    return out.getvalue().encode()


def put_registry(s3: Any, bucket: str, key: str, body: bytes, modified: datetime) -> None:
    # moto stamps LastModified from this clock: a later file is newer without sleeping.
    with mock.patch("moto.s3.models.utcnow", return_value=modified.astimezone(UTC).replace(tzinfo=None)):
        s3.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.fixture
def lake(s3_client, bucket, glue_client, source_database, output_database) -> dict[str, Any]:
    create_source_tables(glue_client, source_database, TABLES, bucket=bucket)
    for table in TABLES:
        for name in FILES:
            s3_client.put_object(Bucket=bucket, Key=f"raw/{table}/{name}", Body=table.encode())
    now = datetime.now(UTC)
    put_registry(
        s3_client,
        bucket,
        "registry/tables-1.csv",
        registry_csv([(t, "id") for t in TABLES]),
        now - timedelta(hours=1),
    )
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

    def plan(event: dict[str, Any]) -> dict[str, Any]:
        return plan_task(
            event,
            plan_settings,
            catalog=GlueCatalog(source_database, client=glue_client, s3_client=s3_client),
            registry_source=S3RegistrySource(plan_settings.registry_prefix, client=s3_client),
            state_store=S3StateStore(plan_settings.cdc_path, client=s3_client),
            storage=storage,
        )

    def commit(planned: dict[str, Any]) -> dict[str, Any]:
        return commit_task(
            {"plan": planned, "map_result": {}},
            commit_settings,
            state_store=S3StateStore(commit_settings.cdc_path, client=s3_client),
            storage=storage,
            output_catalog=GlueOutputCatalog(output_database, client=glue_client),
        )

    return {"plan": plan, "commit": commit, "storage": storage, "s3": s3_client, "bucket": bucket, "now": now}


def items(lake: dict[str, Any], planned: dict[str, Any]) -> dict[str, WorkItem]:
    runs = lake["storage"].read_json(f"s3://{planned['items_bucket']}/{planned['items_key']}")
    return {
        item.table: item for run in runs for item in work_items_at(lake["storage"], run["work_item_location"])
    }


def ingest_all(lake: dict[str, Any], planned: dict[str, Any]) -> dict[str, WorkItem]:
    """The Glue job's stand-in: every item's manifest, as a successful ingest leaves it."""
    planned_items = items(lake, planned)
    for item in planned_items.values():
        ingest_succeeded(lake["storage"], item)
    return planned_items


def test_s3_listing_of_an_odd_table_holds_exactly_its_own_files(lake) -> None:
    for table in TABLES:
        listing = list_data_files(lake["s3"], f"s3://{lake['bucket']}/raw/{table}/")

        assert sorted(f.path for f in listing.files) == sorted(FILES), table


def test_odd_tables_plan_read_their_own_files_commit_and_publish_under_their_own_names(
    lake, glue_client
) -> None:
    planned = lake["plan"]({})
    planned_items = ingest_all(lake, planned)

    result = lake["commit"](planned)

    assert (result["succeeded_count"], result["failed_count"]) == (len(TABLES), 0)
    bucket = lake["bucket"]
    for table, item in planned_items.items():
        assert item.location == f"s3://{bucket}/raw/{table}/", table
        assert sorted(item.files or []) == sorted(FILES)
        paths = [f"{item.location.rstrip('/')}/{name}" for name in item.files or []]
        # What the Glue job hands Spark: every file once, a colon beside a glob character alone.
        groups = literal_groups(paths)
        assert sorted(path for group in groups for path in group) == sorted(paths)
        assert all(len(group) == 1 for group in groups if any(reads_alone(path) for path in group))
        assert item.output_location == f"s3://{bucket}/current/{table}/snapshots/{item.run_id}"
        published = glue_client.get_table(DatabaseName="current", Name=table)["Table"]
        assert published["StorageDescriptor"]["Location"] == item.output_location + "/"
    state, _ = S3StateStore(f"s3://{bucket}/state", client=lake["s3"]).read()
    assert sorted(state.tables) == sorted(TABLES)
    assert {t.registry_file for t in state.tables.values()} == {f"s3://{bucket}/registry/tables-1.csv"}
    report = lake["storage"].read_json(result["report_location"])
    assert report["registry_file"] == f"s3://{bucket}/registry/tables-1.csv"


def test_a_registry_change_fails_the_table_on_aws_until_the_execution_input_accepts_it(lake) -> None:
    lake["commit"](_planned_and_ingested(lake, {}))
    bucket = lake["bucket"]
    kept = [(t, "id") for t in TABLES if t != "pv[1]"]
    put_registry(lake["s3"], bucket, "registry/tables-2.csv", registry_csv(kept), lake["now"])
    lake["s3"].put_object(Bucket=bucket, Key="raw/pv[1]/later.parquet", Body=b"PAR1")
    state_store = S3StateStore(f"s3://{bucket}/state", client=lake["s3"])
    before, _ = state_store.read()

    refused = lake["commit"](_planned_and_ingested(lake, {}))

    assert refused["failed_tables"] == ["pv[1]"]
    report = lake["storage"].read_json(refused["report_location"])
    (outcome,) = [o for o in report["tables"] if o["table"] == "pv[1]"]
    assert (
        f"the newest registry file s3://{bucket}/registry/tables-2.csv no longer lists it"
        in outcome["message"]
    )
    assert f"committed under registry file s3://{bucket}/registry/tables-1.csv" in outcome["message"]
    assert '"accept_registry_change": ["pv[1]"]' in outcome["message"]
    assert state_store.read()[0].tables["pv[1]"] == before.tables["pv[1]"]

    planned = lake["plan"]({"accept_registry_change": ["pv[1]"]})
    accepted = items(lake, planned)["pv[1]"]

    assert (accepted.mode, accepted.load_type) == ("append", "full")
    assert sorted(accepted.files or []) == sorted([*FILES, "later.parquet"])


def _planned_and_ingested(lake: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    planned = lake["plan"](event)
    ingest_all(lake, planned)
    return planned


def test_the_plan_refuses_an_accept_registry_change_that_is_no_list_of_names(lake) -> None:
    with pytest.raises(ConfigurationError, match="accept_registry_change must be a list of table names"):
        lake["plan"]({"accept_registry_change": "pv[1]"})


def test_start_run_passes_the_accepted_tables_in_the_execution_input() -> None:
    class StepFunctions:
        def start_execution(self, **kwargs: Any) -> dict[str, str]:
            self.input = json.loads(kwargs["input"])
            return {"executionArn": "arn:execution"}

    sfn = StepFunctions()

    start_run(sfn, "arn:machine", "incremental", accept_registry_change=["pv[1]", "q? *"])

    assert sfn.input == {"load_type": "incremental", "accept_registry_change": ["pv[1]", "q? *"]}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Orders", "Glue stores table names in lowercase, so it would be published as 'orders'"),
        ("a\nb", "holds characters Glue refuses"),
        ("x" * 256, "it is 256 characters long; Glue takes 1 to 255"),
    ],
)
def test_a_name_the_glue_output_table_cannot_have_fails_that_table_naming_why(
    glue_client, output_database, name: str, why: str
) -> None:
    catalog = GlueOutputCatalog(output_database, client=glue_client)
    columns = [{"name": "id", "type": "bigint"}]

    with pytest.raises(TableError) as refused:
        catalog.publish(
            [
                PublishedTable(name, "s3://lake/current/x/snapshots/r1", columns, "r1"),
                PublishedTable("pv[1]", "s3://lake/current/pv[1]/snapshots/r1", columns, "r1"),
            ]
        )

    assert why in str(refused.value)
    assert refused.value.table == name
    published = glue_client.get_table(DatabaseName=output_database, Name="pv[1]")["Table"]
    assert published["StorageDescriptor"]["Location"] == "s3://lake/current/pv[1]/snapshots/r1/"
    assert [t["Name"] for t in glue_client.get_tables(DatabaseName=output_database)["TableList"]] == ["pv[1]"]


@pytest.mark.parametrize("name", ["pv[1]", "q? *", "ü:n ï\\é", "x:y[1]"])
def test_odd_names_are_valid_glue_output_table_names(name: str) -> None:
    check_table_name(name)
