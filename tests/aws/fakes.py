"""A landing zone in moto (Glue tables, registry) and a stand-in for the Glue job's ingest.

The ingest stand-in writes the manifest a successful ingest would: these tests prove the AWS
wiring (plan, Map, commit, catalog); the ingest itself runs for real in the Spark tests.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from cdc_pipeline.aws.s3 import S3Storage
from cdc_pipeline.manifest import SUCCEEDED, Manifest, failure_record
from cdc_pipeline.packs import work_items
from cdc_pipeline.plan import WorkItem

PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
COLUMNS = [
    {"Name": "id", "Type": "bigint"},
    {"Name": "name", "Type": "string"},
    {"Name": "updated_at", "Type": "timestamp"},
]


def create_source_tables(
    glue: Any, database: str, names: list[str], bucket: str = "landing", s3: Any = None
) -> None:
    """Glue tables over ``s3://bucket/raw/<name>/``, each with a first data file when ``s3`` is given."""
    if s3 is not None:
        land_files(s3, bucket, names, "LOAD00000001.parquet")
    for name in names:
        glue.create_table(
            DatabaseName=database,
            TableInput={
                "Name": name,
                "TableType": "EXTERNAL_TABLE",
                "StorageDescriptor": {
                    "Columns": COLUMNS,
                    "Location": f"s3://{bucket}/raw/{name}/",
                    "InputFormat": PARQUET_INPUT,
                    "OutputFormat": PARQUET_OUTPUT,
                    "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE},
                },
            },
        )


def land_files(s3: Any, bucket: str, names: list[str], file_name: str) -> None:
    """A new data file per table (its content is never read: the Glue job is a stand-in here)."""
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"raw/{name}/{file_name}", Body=b"PAR1")


def registry_csv(names: list[str]) -> str:
    return "table_name,primary_key\n" + "".join(f"{name},id\n" for name in names)


def ingest_succeeded(
    storage: S3Storage,
    item: WorkItem,
    watermark_after: str = "2026-11-01T00:00:00.000001Z",
    output_location: str | None = None,
) -> None:
    """What the Glue job leaves when a table's ingest succeeds: its manifest (the snapshot is not read)."""
    manifest = Manifest(
        run_id=item.run_id,
        table=item.table,
        status=SUCCEEDED,
        load_type=item.load_type,
        mode=item.mode,
        rows_read=10,
        rows_written=7,
        rows_set_aside=0,
        null_watermark_rows=0,
        watermark_column=item.watermark_column,
        watermark_before=item.last_watermark,
        watermark_after=watermark_after,
        schema=[
            {"name": "id", "type": "bigint"},
            {"name": "name", "type": "string"},
            {"name": "updated_at", "type": "timestamp"},
        ],
        output_location=output_location or item.output_location,
        quarantine_location=None,
        started_at="2026-11-01T00:00:00+00:00",
        duration_s=1.0,
        primary_key=item.primary_key,
        incremental_by=item.incremental_by,
        files_read=None if item.files is None else len(item.files),
        cursor=item.next_cursor,
        bytes_written=4096,
    )
    storage.write_json(item.manifest_location, manifest.to_json())


def work_items_at(storage: S3Storage, location: str) -> list[WorkItem]:
    """The work items a Glue run's ``--work_item_location`` names: one item, or a pack's."""
    return work_items(storage.read_json(location))


def ingest_failed(storage: S3Storage, item: WorkItem, message: str) -> None:
    """What the Glue job leaves when a table's ingest fails: its failure record."""
    storage.write_json(item.manifest_location, failure_record(item.run_id, item.table, message))


def run_to_end(
    sfn: Any, state_machine_arn: str, run_input: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Start an execution and wait for moto's interpreter to finish it; its final description."""
    arn = sfn.start_execution(
        stateMachineArn=state_machine_arn, name=f"test-{uuid.uuid4().hex}", input=json.dumps(run_input)
    )["executionArn"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        execution = sfn.describe_execution(executionArn=arn)
        if execution["status"] != "RUNNING":
            return dict(execution)
        time.sleep(0.1)
    raise AssertionError(f"execution {arn} still running after {timeout_s} s")
