"""GlueOutputCatalog: each output table is an external Parquet table over its newest snapshot."""

from __future__ import annotations

import pytest
from botocore.stub import ANY, Stubber

from cdc_pipeline.aws.glue import (
    PARQUET_INPUT_FORMAT,
    PARQUET_OUTPUT_FORMAT,
    PARQUET_SERDE,
    GlueOutputCatalog,
    hive_type,
)
from cdc_pipeline.catalog import PublishedTable
from cdc_pipeline.errors import TableError

SNAPSHOT_1 = "s3://lake/current/orders/snapshots/run-1"
SNAPSHOT_2 = "s3://lake/current/orders/snapshots/run-2"


def _orders(location: str, run_id: str, columns: list[dict[str, str]] | None = None) -> PublishedTable:
    return PublishedTable(
        name="orders",
        location=location,
        columns=columns
        or [
            {"name": "id", "type": "bigint"},
            {"name": "updated_at", "type": "timestamp_ntz"},
            {"name": "amount", "type": "decimal(12,2)"},
        ],
        run_id=run_id,
    )


def test_publishing_a_new_table_creates_an_external_parquet_table_at_the_snapshot(
    glue_client, output_database
):
    GlueOutputCatalog(output_database, glue_client).publish([_orders(SNAPSHOT_1, "run-1")])

    table = glue_client.get_table(DatabaseName=output_database, Name="orders")["Table"]
    descriptor = table["StorageDescriptor"]
    assert table["TableType"] == "EXTERNAL_TABLE"
    assert table["Parameters"]["classification"] == "parquet"
    assert table["Parameters"]["cdc_pipeline.run_id"] == "run-1"
    assert descriptor["Location"] == SNAPSHOT_1 + "/"
    assert descriptor["InputFormat"] == PARQUET_INPUT_FORMAT
    assert descriptor["OutputFormat"] == PARQUET_OUTPUT_FORMAT
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == PARQUET_SERDE
    assert descriptor["Columns"] == [
        {"Name": "id", "Type": "bigint"},
        {"Name": "updated_at", "Type": "timestamp"},
        {"Name": "amount", "Type": "decimal(12,2)"},
    ]


def test_publishing_again_points_the_table_at_the_new_snapshot_and_columns(glue_client, output_database):
    catalog = GlueOutputCatalog(output_database, glue_client)
    catalog.publish([_orders(SNAPSHOT_1, "run-1")])

    catalog.publish(
        [_orders(SNAPSHOT_2, "run-2", [{"name": "id", "type": "long"}, {"name": "note", "type": "string"}])]
    )

    table = glue_client.get_table(DatabaseName=output_database, Name="orders")["Table"]
    assert table["StorageDescriptor"]["Location"] == SNAPSHOT_2 + "/"
    assert table["StorageDescriptor"]["Columns"] == [
        {"Name": "id", "Type": "bigint"},
        {"Name": "note", "Type": "string"},
    ]
    assert table["Parameters"]["cdc_pipeline.run_id"] == "run-2"
    assert [t["Name"] for t in glue_client.get_tables(DatabaseName=output_database)["TableList"]] == [
        "orders"
    ]


@pytest.mark.parametrize(
    ("spark_type", "hive"),
    [
        ("timestamp_ntz", "timestamp"),
        ("timestamp", "timestamp"),
        ("long", "bigint"),
        ("bigint", "bigint"),
        ("integer", "int"),
        ("int", "int"),
        ("short", "smallint"),
        ("byte", "tinyint"),
        ("decimal(38,18)", "decimal(38,18)"),
        ("decimal(10, 2)", "decimal(10,2)"),
        ("string", "string"),
        ("double", "double"),
        ("float", "float"),
        ("boolean", "boolean"),
        ("date", "date"),
        ("binary", "binary"),
        ("array<long>", "array<bigint>"),
        ("map<string,timestamp_ntz>", "map<string,timestamp>"),
        (
            "struct<long:long,at:timestamp_ntz,items:array<struct<n:integer>>>",
            "struct<long:bigint,at:timestamp,items:array<struct<n:int>>>",
        ),
    ],
)
def test_spark_types_are_published_as_athena_spells_them(spark_type, hive):
    assert hive_type("orders", "c", spark_type) == hive


@pytest.mark.parametrize(
    "spark_type", ["void", "interval", "calendarinterval", "array<void>", "decimal(10,2"]
)
def test_a_type_athena_cannot_read_is_a_table_error_naming_table_and_column(spark_type):
    with pytest.raises(TableError) as refused:
        hive_type("orders", "odd_column", spark_type)

    assert refused.value.table == "orders"
    assert "'odd_column'" in str(refused.value)


def test_one_table_failing_still_publishes_the_others_and_raises_naming_it(glue_client, output_database):
    broken = PublishedTable(
        "broken", "s3://lake/current/broken/snapshots/run-1", [{"name": "x", "type": "void"}], "run-1"
    )
    customers = PublishedTable(
        "customers", "s3://lake/current/customers/snapshots/run-1", [{"name": "id", "type": "long"}], "run-1"
    )

    with pytest.raises(TableError) as refused:
        GlueOutputCatalog(output_database, glue_client).publish(
            [_orders(SNAPSHOT_1, "run-1"), broken, customers]
        )

    assert refused.value.table == "broken"
    published = {t["Name"] for t in glue_client.get_tables(DatabaseName=output_database)["TableList"]}
    assert published == {"orders", "customers"}


def test_several_failing_tables_are_all_named_in_one_error(glue_client, output_database):
    broken = [
        PublishedTable(name, f"s3://lake/current/{name}/snapshots/r", [{"name": "x", "type": "void"}], "r")
        for name in ("a", "b")
    ]

    with pytest.raises(TableError) as refused:
        GlueOutputCatalog(output_database, glue_client).publish(broken)

    assert refused.value.table == "a"
    assert "table 'a'" in str(refused.value)
    assert "table 'b'" in str(refused.value)


def test_publishing_to_a_missing_database_names_the_table_the_database_and_the_fix(glue_client):
    with pytest.raises(TableError) as refused:
        GlueOutputCatalog("no_such_database", glue_client).publish([_orders(SNAPSHOT_1, "run-1")])

    message = str(refused.value)
    assert refused.value.table == "orders"
    assert "no_such_database" in message
    assert "create the output database" in message


def test_a_table_created_by_a_concurrent_publisher_is_updated_instead(offline_glue_client):
    stubber = Stubber(offline_glue_client)
    stubber.add_client_error("update_table", service_error_code="EntityNotFoundException")
    stubber.add_client_error("create_table", service_error_code="AlreadyExistsException")
    stubber.add_response(
        "update_table", {}, {"DatabaseName": "current", "TableInput": ANY, "SkipArchive": True}
    )

    with stubber:
        GlueOutputCatalog("current", offline_glue_client).publish([_orders(SNAPSHOT_1, "run-1")])

    stubber.assert_no_pending_responses()


def _partitioned(run_id: str, partitions: dict[str, tuple[str, str]]) -> PublishedTable:
    """orders partitioned by day; ``partitions``: id -> (day, the run whose folder holds it)."""
    return PublishedTable(
        name="orders",
        location=f"s3://lake/current/orders/snapshots/{run_id}",
        columns=[{"name": "id", "type": "bigint"}, {"name": "day", "type": "date"}],
        run_id=run_id,
        partition_by=["day"],
        partitions={
            pid: {
                "location": f"s3://lake/current/orders/snapshots/{run}/cdc_partition={pid}",
                "values": [day],
            }
            for pid, (day, run) in partitions.items()
        },
    )


def _glue_partitions(glue_client, database: str) -> dict[tuple[str, ...], str]:
    return {
        tuple(p["Values"]): p["StorageDescriptor"]["Location"]
        for p in glue_client.get_partitions(DatabaseName=database, TableName="orders")["Partitions"]
    }


def test_a_partitioned_snapshot_gets_one_glue_partition_per_partition_folder_kept_in_step(
    glue_client, output_database
):
    catalog = GlueOutputCatalog(output_database, glue_client)
    catalog.publish([_partitioned("run-1", {"p1": ("2026-01-01", "run-1"), "p2": ("2026-01-02", "run-1")})])

    table = glue_client.get_table(DatabaseName=output_database, Name="orders")["Table"]
    assert table["PartitionKeys"] == [{"Name": "day", "Type": "date"}]
    assert table["StorageDescriptor"]["Columns"] == [{"Name": "id", "Type": "bigint"}]
    assert _glue_partitions(glue_client, output_database) == {
        ("2026-01-01",): "s3://lake/current/orders/snapshots/run-1/cdc_partition=p1/",
        ("2026-01-02",): "s3://lake/current/orders/snapshots/run-1/cdc_partition=p2/",
    }

    # run-2 rewrote day 2, carried day 1, added day 3; a later run's snapshot lost day 1.
    catalog.publish(
        [
            _partitioned(
                "run-2",
                {"p1": ("2026-01-01", "run-1"), "p2": ("2026-01-02", "run-2"), "p3": ("2026-01-03", "run-2")},
            )
        ]
    )
    assert _glue_partitions(glue_client, output_database) == {
        ("2026-01-01",): "s3://lake/current/orders/snapshots/run-1/cdc_partition=p1/",
        ("2026-01-02",): "s3://lake/current/orders/snapshots/run-2/cdc_partition=p2/",
        ("2026-01-03",): "s3://lake/current/orders/snapshots/run-2/cdc_partition=p3/",
    }
    catalog.publish([_partitioned("run-3", {"p2": ("2026-01-02", "run-2"), "p3": ("2026-01-03", "run-2")})])
    assert set(_glue_partitions(glue_client, output_database)) == {("2026-01-02",), ("2026-01-03",)}
