"""The Glue job's body and entrypoint, run on local paths, and the CSV/JSON readers it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline.catalog import CatalogTable, Column
from cdc_pipeline.errors import ConfigurationError, PipelineError
from cdc_pipeline.glue_job import parse_work_items, run_job
from cdc_pipeline.packs import Pack
from cdc_pipeline.plan import Layout, WorkItem, plan_run
from cdc_pipeline.registry import parse_registry
from cdc_pipeline.state import StateDocument
from cdc_pipeline.storage import LocalStorage

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parent.parent
# What Glue adds to every job run's arguments besides the job's own.
GLUE_ARGUMENTS = [
    "--JOB_ID",
    "j_123",
    "--JOB_RUN_ID",
    "jr_456",
    "--job-bookmark-option",
    "job-bookmark-disable",
]


class OneTableCatalog:
    def __init__(self, table: CatalogTable) -> None:
        self.table = table

    def table_names(self) -> list[str]:
        return [self.table.name]

    def list_files(self, name: str, start_after: str | None = None) -> None:
        return None  # read by watermark, from the whole location

    def describe(self, name: str, files=None) -> CatalogTable:
        return self.table


def plan_one(tmp_path: Path, table: CatalogTable, registry: str) -> WorkItem:
    plan = plan_run(
        catalog=OneTableCatalog(table),
        registry=parse_registry(registry, "registry.csv"),
        state=StateDocument(),
        state_version=None,
        layout=Layout(output_path=str(tmp_path / "out"), cdc_path=str(tmp_path / "state")),
        run_id="r1",
    )
    (item,) = plan.items
    return item


def rows(location: str) -> list[tuple]:
    table = pq.read_table(location)
    return sorted(zip(*(table[name].to_pylist() for name in table.column_names), strict=True))


DMS_CSV = (
    # DMS writes header-less CSV: Op, then the table's columns.
    "I,1,ada,2026-01-01 00:00:00.000001\n"
    "I,2,bob,2026-01-01 00:00:01\n"
    "U,1,ada lovelace,2026-01-01 00:00:02\n"
    "D,2,bob,2026-01-01 00:00:03\n"
)
CSV_COLUMNS = (
    Column("Op", "string"),
    Column("id", "bigint"),
    Column("name", "string"),
    Column("updated_at", "timestamp"),
)


def test_dms_headerless_csv_is_read_with_the_catalog_columns_and_merged(tmp_path, spark) -> None:
    source = tmp_path / "raw" / "people" / "2026" / "01"
    source.mkdir(parents=True)
    (source / "LOAD00000001.csv").write_text(DMS_CSV)
    table = CatalogTable(
        "people",
        str(tmp_path / "raw" / "people"),
        "csv",
        CSV_COLUMNS,
        options={"sep": ",", "header": "false"},
    )
    item = plan_one(tmp_path, table, "table_name,primary_key,delete_column,delete_values\npeople,id,Op,D\n")

    (manifest,) = run_job(["--work_item", json.dumps(item.to_json()), *GLUE_ARGUMENTS], spark=spark)

    assert (manifest.rows_read, manifest.rows_written) == (4, 1)
    assert manifest.watermark_after == "2026-01-01T00:00:03.000000Z"
    assert [(r[1], r[2]) for r in rows(manifest.output_location)] == [(1, "ada lovelace")]
    assert LocalStorage().read_json(item.manifest_location) == manifest.to_json()


def test_json_lines_are_read_with_the_catalog_columns(tmp_path, spark) -> None:
    source = tmp_path / "raw" / "events"
    source.mkdir(parents=True)
    lines = [
        {"id": 1, "kind": "a", "updated_at": "2026-01-01T00:00:00Z"},
        {"id": 1, "kind": "b", "updated_at": "2026-01-02T00:00:00Z"},
    ]
    (source / "part-0.json").write_text("\n".join(json.dumps(line) for line in lines))
    columns = (Column("id", "bigint"), Column("kind", "string"), Column("updated_at", "timestamp"))
    item = plan_one(
        tmp_path, CatalogTable("events", str(source), "json", columns), "table_name,primary_key\nevents,id\n"
    )

    (manifest,) = run_job(["--work_item", json.dumps(item.to_json())], spark=spark)

    assert [r[:2] for r in rows(manifest.output_location)] == [(1, "b")]


def test_unsupported_format_fails_the_job_naming_the_table(tmp_path, spark) -> None:
    item = plan_one(
        tmp_path,
        CatalogTable("logs", str(tmp_path), "avro", (Column("id", "bigint"),)),
        "table_name,primary_key\nlogs,id\n",
    )

    with pytest.raises(Exception, match="table 'logs': format 'avro' is not supported"):
        run_job(["--work_item", json.dumps(item.to_json())], spark=spark)


def test_work_item_argument_must_be_a_work_item() -> None:
    with pytest.raises(ConfigurationError, match="not one the Plan Lambda writes"):
        parse_work_items(["--work_item", '{"table": "x", "format_version": 3}'])
    with pytest.raises(ConfigurationError, match="has format None; this cdc-pipeline reads format 3"):
        parse_work_items(["--work_item", '{"table": "x"}'])
    with pytest.raises(SystemExit):
        parse_work_items(["--JOB_ID", "j_1"])


def test_glue_entrypoint_script_ingests_a_work_item_as_glue_invokes_it(tmp_path) -> None:
    source = tmp_path / "raw" / "people"
    source.mkdir(parents=True)
    (source / "part-0.csv").write_text(DMS_CSV)
    table = CatalogTable("people", str(source), "csv", CSV_COLUMNS, options={"header": "false"})
    item = plan_one(tmp_path, table, "table_name,primary_key\npeople,id\n")
    item = replace(item, delete_column="Op", delete_values=["D"])
    # As the state machine passes it: the location of the item's file.
    location = str(tmp_path / "items" / "people.json")
    LocalStorage().write_json(location, item.to_json())

    # A fresh interpreter, as Glue runs the script: proves the entrypoint has no hidden setup.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    script = ROOT / "glue_jobs" / "ingest_table.py"
    done = subprocess.run(
        [sys.executable, str(script), "--work_item_location", location, *GLUE_ARGUMENTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    manifest = LocalStorage().read_json(item.manifest_location)
    assert manifest is not None
    assert manifest["rows_written"] == 1


def test_json_keys_match_catalog_columns_case_insensitively_and_varchar_reads_as_string(
    tmp_path, spark
) -> None:
    source = tmp_path / "raw" / "crm"
    source.mkdir(parents=True)
    # Crawlers lower-case column names; the application wrote camelCase keys.
    lines = [{"customerId": 7, "FullName": "ada", "updatedAt": "2026-01-01T00:00:00Z"}]
    (source / "part-0.json").write_text("\n".join(json.dumps(line) for line in lines))
    columns = (
        Column("customerid", "bigint"),
        Column("fullname", "varchar(64)"),
        Column("updatedat", "timestamp"),
    )
    item = plan_one(
        tmp_path,
        CatalogTable("crm", str(source), "json", columns),
        "table_name,primary_key,watermark_column\ncrm,customerid,updatedat\n",
    )

    (manifest,) = run_job(["--work_item", json.dumps(item.to_json())], spark=spark)

    assert (manifest.rows_read, manifest.rows_set_aside) == (1, 0)
    assert [r[:2] for r in rows(manifest.output_location)] == [(7, "ada")]
    assert manifest.watermark_after == "2026-01-01T00:00:00.000000Z"


def test_csv_varchar_columns_read_as_strings(tmp_path, spark) -> None:
    source = tmp_path / "raw" / "people"
    source.mkdir(parents=True)
    (source / "part-0.csv").write_text(DMS_CSV)
    columns = (
        Column("Op", "char(1)"),
        Column("id", "bigint"),
        Column("name", "varchar(32)"),
        Column("updated_at", "timestamp"),
    )
    item = plan_one(
        tmp_path, CatalogTable("people", str(source), "csv", columns), "table_name,primary_key\npeople,id\n"
    )

    (manifest,) = run_job(["--work_item", json.dumps(item.to_json())], spark=spark)

    assert manifest.rows_written == 2


def test_catalog_columns_the_files_lack_are_read_as_null_never_a_refusal(tmp_path, spark) -> None:
    # The crawler saw Op and updated_at in later files; this DMS full-load file has neither.
    source = tmp_path / "raw" / "accounts"
    source.mkdir(parents=True)
    pq.write_table(pa.table({"ACCOUNT_ID": [1, 2], "NAME": ["ada", "bob"]}), source / "LOAD00000001.parquet")
    columns = (
        Column("op", "string"),
        Column("account_id", "bigint"),
        Column("name", "string"),
        Column("updated_at", "timestamp"),
    )
    item = plan_one(
        tmp_path,
        CatalogTable("accounts", str(source), "parquet", columns),
        "table_name,primary_key,watermark_column,delete_column,delete_values\naccounts,account_id,updated_at,op,D\n",
    )

    (manifest,) = run_job(["--work_item", json.dumps(item.to_json())], spark=spark)

    assert (manifest.rows_read, manifest.rows_written, manifest.rows_set_aside) == (2, 2, 0)
    table = pq.read_table(manifest.output_location)
    assert sorted(table["ACCOUNT_ID"].to_pylist()) == [1, 2]
    assert table["updated_at"].null_count == 2


def test_a_pack_ingests_each_table_on_its_own_and_fails_the_run_naming_the_failed_table(
    tmp_path, spark
) -> None:
    source = tmp_path / "raw" / "events"
    source.mkdir(parents=True)
    (source / "part-0.json").write_text(
        json.dumps({"id": 1, "kind": "a", "updated_at": "2026-01-01T00:00:00Z"})
    )
    columns = (Column("id", "bigint"), Column("kind", "string"), Column("updated_at", "timestamp"))
    good = plan_one(
        tmp_path, CatalogTable("events", str(source), "json", columns), "table_name,primary_key\nevents,id\n"
    )
    bad = plan_one(
        tmp_path / "other",
        CatalogTable("logs", str(tmp_path), "avro", (Column("id", "bigint"),)),
        "table_name,primary_key\nlogs,id\n",
    )
    pack_file = tmp_path / "state" / "runs" / "r1" / "packs" / "pack-0001.json"
    LocalStorage().write_json(str(pack_file), Pack("r1", "pack-0001", [bad, good]).to_json())

    with pytest.raises(
        PipelineError, match=r"1 of the 2 tables of this run failed: table 'logs': format 'avro'"
    ):
        run_job(["--work_item_location", str(pack_file), *GLUE_ARGUMENTS], spark=spark)

    storage = LocalStorage()
    manifest = storage.read_json(good.manifest_location)
    assert manifest["status"] == "succeeded"
    assert [r[:2] for r in rows(manifest["output_location"])] == [(1, "a")]
    assert manifest["bytes_written"] == sum(
        f.stat().st_size for f in Path(good.output_location).rglob("*") if f.is_file()
    )
    failure = storage.read_json(bad.manifest_location)
    assert (failure["status"], failure["table"]) == ("failed", "logs")
    assert "format 'avro' is not supported" in failure["message"]

    # A retried run of the pack does not ingest again what an earlier attempt finished.
    with pytest.raises(PipelineError, match="1 of the 2 tables"):
        run_job(["--work_item_location", str(pack_file)], spark=spark)
    assert storage.read_json(good.manifest_location) == manifest
