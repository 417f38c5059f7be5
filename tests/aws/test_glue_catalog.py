"""GlueCatalog: listing the source database, and describing each table as the pipeline reads it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from botocore.stub import Stubber

from cdc_pipeline.aws.glue import (
    LAZY_SIMPLE_SERDE,
    OPEN_CSV_SERDE,
    PARQUET_INPUT_FORMAT,
    PARQUET_SERDE,
    TEXT_INPUT_FORMAT,
    GlueCatalog,
)
from cdc_pipeline.catalog import Column
from cdc_pipeline.errors import ConfigurationError, TableError

COLUMNS = [
    {"Name": "id", "Type": "bigint"},
    {"Name": "amount", "Type": "decimal(12,2)"},
    {"Name": "tags", "Type": "array<string>"},
    {"Name": "updated_at", "Type": "timestamp"},
]


def _table(
    name: str,
    location: str | None = "s3://landing/raw/{name}/",
    *,
    input_format: str = PARQUET_INPUT_FORMAT,
    serde: str = PARQUET_SERDE,
    serde_parameters: dict[str, str] | None = None,
    parameters: dict[str, str] | None = None,
    partition_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A Glue TableInput shaped like what a crawler or Athena DDL writes."""
    descriptor: dict[str, Any] = {
        "Columns": COLUMNS,
        "InputFormat": input_format,
        "SerdeInfo": {"SerializationLibrary": serde, "Parameters": serde_parameters or {}},
    }
    if location is not None:
        descriptor["Location"] = location.format(name=name)
    return {
        "Name": name,
        "TableType": "EXTERNAL_TABLE",
        "StorageDescriptor": descriptor,
        "Parameters": parameters or {},
        "PartitionKeys": [{"Name": key, "Type": "string"} for key in partition_keys],
    }


def _create(glue_client, database: str, *tables: dict[str, Any]) -> None:
    for table in tables:
        glue_client.create_table(DatabaseName=database, TableInput=table)


def _add_partition(glue_client, database: str, table: str, values: list[str], location: str) -> None:
    glue_client.create_partition(
        DatabaseName=database,
        TableName=table,
        PartitionInput={"Values": values, "StorageDescriptor": {"Location": location}},
    )


# ----------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------


def test_hundreds_of_tables_are_all_listed(glue_client, source_database):
    names = [f"table_{number:03d}" for number in range(300)]
    _create(glue_client, source_database, *(_table(name) for name in names))

    assert GlueCatalog(source_database, glue_client).table_names() == names


def test_every_page_of_get_tables_is_read_and_describing_lists_nothing_again(offline_glue_client):
    stubber = Stubber(offline_glue_client)
    pages = [["orders", "customers"], ["invoices"], ["payments"]]
    for number, page in enumerate(pages):
        expected = {"DatabaseName": "raw"} | ({"NextToken": f"token-{number}"} if number else {})
        response: dict[str, Any] = {"TableList": [_table(name) for name in page]}
        if number < len(pages) - 1:
            response["NextToken"] = f"token-{number + 1}"
        stubber.add_response("get_tables", response, expected)
    catalog = GlueCatalog("raw", offline_glue_client)

    # The stubber answers exactly three calls: any further listing would fail the test.
    with stubber:
        names = catalog.table_names()
        described = [catalog.describe(name) for name in names]

    assert names == ["customers", "invoices", "orders", "payments"]
    assert [table.location for table in described] == [f"s3://landing/raw/{name}/" for name in names]
    stubber.assert_no_pending_responses()


def stub_pages(stubber: Stubber, pages: list[list[dict[str, Any]]]) -> None:
    """GetTables answering ``pages`` one after the other, each pointing at the next."""
    for number, page in enumerate(pages):
        expected = {"DatabaseName": "raw"} | ({"NextToken": f"token-{number}"} if number else {})
        response: dict[str, Any] = {"TableList": page}
        if number < len(pages) - 1:
            response["NextToken"] = f"token-{number + 1}"
        stubber.add_response("get_tables", response, expected)


def test_each_page_of_tables_is_handed_on_before_the_next_is_fetched_and_its_tables_described(
    offline_glue_client,
):
    stubber = Stubber(offline_glue_client)
    stub_pages(stubber, [[_table("orders"), _table("customers")], [_table("invoices")], [_table("payments")]])
    fetched: list[str] = []

    def fetching(params: dict[str, Any], **_: Any) -> None:
        fetched.append(params.get("NextToken", "first"))

    offline_glue_client.meta.events.register("before-parameter-build.glue.GetTables", fetching)
    catalog = GlueCatalog("raw", offline_glue_client)

    seen = []
    with stubber:
        for page in catalog.table_name_pages():
            seen.append((page, list(fetched), [catalog.describe(name).location for name in page]))
        names = catalog.table_names()  # the database is kept: no page is fetched again

    assert seen == [
        (["orders", "customers"], ["first"], ["s3://landing/raw/orders/", "s3://landing/raw/customers/"]),
        (["invoices"], ["first", "token-1"], ["s3://landing/raw/invoices/"]),
        (["payments"], ["first", "token-1", "token-2"], ["s3://landing/raw/payments/"]),
    ]
    assert names == ["customers", "invoices", "orders", "payments"]
    stubber.assert_no_pending_responses()


def test_pages_hold_only_the_tables_the_patterns_select(offline_glue_client):
    stubber = Stubber(offline_glue_client)
    stub_pages(stubber, [[_table("orders"), _table("tmp_orders")], [_table("tmp_lines")], [_table("lines")]])
    catalog = GlueCatalog("raw", offline_glue_client, exclude=("tmp_*",))

    with stubber:
        pages = list(catalog.table_name_pages())

    assert pages == [["orders"], [], ["lines"]]


def test_pages_of_a_database_already_listed_are_its_tables_at_once_without_listing_again(
    offline_glue_client,
):
    stubber = Stubber(offline_glue_client)
    stub_pages(stubber, [[_table("orders")], [_table("customers")]])
    catalog = GlueCatalog("raw", offline_glue_client)

    with stubber:
        catalog.table_names()
        pages = list(catalog.table_name_pages())

    assert pages == [["customers", "orders"]]
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ((), (), ["orders", "orders_archive", "orders_lines", "tmp_orders"]),
        (("orders*",), (), ["orders", "orders_archive", "orders_lines"]),
        (("orders*",), ("*_archive",), ["orders", "orders_lines"]),
        ((), ("tmp_*", "*_archive"), ["orders", "orders_lines"]),
        (("ORDERS",), (), ["orders"]),
    ],
    ids=["all", "include", "include-and-exclude", "exclude-only", "case-insensitive"],
)
def test_include_and_exclude_patterns_select_tables(glue_client, source_database, include, exclude, expected):
    names = ["orders", "orders_archive", "orders_lines", "tmp_orders"]
    _create(glue_client, source_database, *(_table(name) for name in names))

    catalog = GlueCatalog(source_database, glue_client, include=include, exclude=exclude)

    assert catalog.table_names() == expected


def test_a_missing_database_is_a_configuration_error_naming_it(glue_client):
    with pytest.raises(ConfigurationError, match="'no_such_database' does not exist"):
        GlueCatalog("no_such_database", glue_client).table_names()


def test_describing_a_table_the_database_lacks_is_a_table_error(glue_client, source_database):
    with pytest.raises(TableError, match="holds no such table"):
        GlueCatalog(source_database, glue_client).describe("orders")


# ----------------------------------------------------------------------------------------------
# Describing
# ----------------------------------------------------------------------------------------------


def test_a_parquet_table_keeps_its_location_columns_and_partition_keys(glue_client, source_database):
    _create(glue_client, source_database, _table("orders", partition_keys=("year", "month")))

    table = GlueCatalog(source_database, glue_client).describe("orders")

    assert table.location == "s3://landing/raw/orders/"
    assert table.format == "parquet"
    assert table.options == {}
    assert table.columns == (
        Column("id", "bigint"),
        Column("amount", "decimal(12,2)"),
        Column("tags", "array<string>"),
        Column("updated_at", "timestamp"),
    )
    assert table.partition_keys == ("year", "month")
    assert table.has_data is True


@pytest.mark.parametrize(
    ("definition", "expected_options"),
    [
        (
            {"serde": LAZY_SIMPLE_SERDE, "serde_parameters": {"field.delim": ","}},
            {"sep": ",", "header": "false", "quote": ""},
        ),
        (
            {
                "serde": LAZY_SIMPLE_SERDE,
                "serde_parameters": {"field.delim": "|", "serialization.null.format": ""},
                "parameters": {"skip.header.line.count": "1"},
            },
            {"sep": "|", "header": "true", "nullValue": "", "quote": ""},
        ),
        (
            {"serde": LAZY_SIMPLE_SERDE, "serde_parameters": {"serialization.format": "9"}},
            {"sep": "\t", "header": "false", "quote": ""},
        ),
        # LazySimpleSerDe knows no quoting: Spark's must be off too (quote "").
        ({"serde": LAZY_SIMPLE_SERDE}, {"sep": "\x01", "header": "false", "quote": ""}),
        (
            {
                "serde": OPEN_CSV_SERDE,
                "serde_parameters": {"separatorChar": ";", "quoteChar": "'", "escapeChar": "\\"},
                "parameters": {"skip.header.line.count": "1"},
            },
            {"sep": ";", "header": "true", "quote": "'", "escape": "\\"},
        ),
        ({"serde": OPEN_CSV_SERDE}, {"sep": ",", "header": "false"}),
    ],
    ids=[
        "dms-csv",
        "pipes-with-header-and-null-format",
        "numeric-delimiter",
        "hive-default-ctrl-a",
        "opencsv-with-quote-and-escape",
        "opencsv-defaults",
    ],
)
def test_a_csv_table_carries_its_separator_header_and_quoting_as_reader_options(
    glue_client, source_database, definition, expected_options
):
    _create(glue_client, source_database, _table("orders", input_format=TEXT_INPUT_FORMAT, **definition))

    table = GlueCatalog(source_database, glue_client).describe("orders")

    assert table.format == "csv"
    assert table.options == expected_options


@pytest.mark.parametrize(
    "serde",
    [
        "org.openx.data.jsonserde.JsonSerDe",
        "org.apache.hive.hcatalog.data.JsonSerDe",
        "org.apache.hadoop.hive.serde2.JsonSerDe",
    ],
)
def test_a_json_table_is_read_as_json(glue_client, source_database, serde):
    _create(glue_client, source_database, _table("events", input_format=TEXT_INPUT_FORMAT, serde=serde))

    table = GlueCatalog(source_database, glue_client).describe("events")

    assert (table.format, table.options) == ("json", {})


def test_a_table_without_a_location_is_a_table_error_naming_it_and_the_fix(glue_client, source_database):
    _create(glue_client, source_database, _table("orders_view", location=None))

    with pytest.raises(TableError) as refused:
        GlueCatalog(source_database, glue_client).describe("orders_view")

    assert refused.value.table == "orders_view"
    assert "has no location" in str(refused.value)
    assert "exclude pattern" in str(refused.value)


def test_a_table_in_an_unsupported_format_is_a_table_error_naming_the_format(glue_client, source_database):
    _create(
        glue_client,
        source_database,
        _table(
            "orders",
            input_format="org.apache.hadoop.hive.ql.io.orc.OrcInputFormat",
            serde="org.apache.hadoop.hive.ql.io.orc.OrcSerde",
            parameters={"classification": "orc"},
        ),
    )

    with pytest.raises(TableError) as refused:
        GlueCatalog(source_database, glue_client).describe("orders")

    message = str(refused.value)
    assert refused.value.table == "orders"
    assert "OrcSerde" in message
    assert "Parquet, CSV" in message


def test_a_csv_table_skipping_several_header_lines_is_a_table_error(glue_client, source_database):
    _create(
        glue_client,
        source_database,
        _table(
            "orders",
            input_format=TEXT_INPUT_FORMAT,
            serde=OPEN_CSV_SERDE,
            parameters={"skip.header.line.count": "2"},
        ),
    )

    with pytest.raises(TableError, match="skips 2 header lines"):
        GlueCatalog(source_database, glue_client).describe("orders")


# ----------------------------------------------------------------------------------------------
# Partitions
# ----------------------------------------------------------------------------------------------


def test_partitions_in_key_value_folders_under_the_table_location_are_accepted(glue_client, source_database):
    _create(glue_client, source_database, _table("orders", partition_keys=("year", "month")))
    _add_partition(
        glue_client, source_database, "orders", ["2024", "05"], "s3://landing/raw/orders/year=2024/month=05"
    )
    _add_partition(
        glue_client, source_database, "orders", ["2024", "06"], "s3a://landing/raw/orders/year=2024/month=06/"
    )

    table = GlueCatalog(source_database, glue_client).describe("orders")

    assert table.partition_keys == ("year", "month")


def test_a_partition_outside_the_table_location_is_rejected_with_the_fix(glue_client, source_database):
    _create(glue_client, source_database, _table("orders", partition_keys=("dt",)))
    _add_partition(
        glue_client, source_database, "orders", ["2024-05-01"], "s3://landing/raw/orders/dt=2024-05-01/"
    )
    # A sibling that merely shares the name prefix is outside too.
    _add_partition(
        glue_client, source_database, "orders", ["2024-05-02"], "s3://landing/raw/orders_old/dt=2024-05-02/"
    )

    with pytest.raises(TableError) as refused:
        GlueCatalog(source_database, glue_client).describe("orders")

    message = str(refused.value)
    assert refused.value.table == "orders"
    assert "s3://landing/raw/orders_old/dt=2024-05-02/" in message
    assert "partitions outside the table location are not supported" in message
    assert "Move their files under the table location" in message


def test_partitions_in_folders_not_named_key_value_are_rejected(glue_client, source_database):
    _create(glue_client, source_database, _table("orders", partition_keys=("year", "month")))
    _add_partition(glue_client, source_database, "orders", ["2024", "05"], "s3://landing/raw/orders/2024/05/")

    with pytest.raises(TableError, match=re.escape("year=.../month=...")):
        GlueCatalog(source_database, glue_client).describe("orders")


def test_every_page_of_partitions_is_checked(offline_glue_client):
    stubber = Stubber(offline_glue_client)
    stubber.add_response("get_tables", {"TableList": [_table("orders", partition_keys=("dt",))]})
    inside = {"Values": ["1"], "StorageDescriptor": {"Location": "s3://landing/raw/orders/dt=1/"}}
    outside = {"Values": ["2"], "StorageDescriptor": {"Location": "s3://elsewhere/dt=2/"}}
    stubber.add_response(
        "get_partitions",
        {"Partitions": [inside], "NextToken": "more"},
        {"DatabaseName": "raw", "TableName": "orders", "ExcludeColumnSchema": True},
    )
    stubber.add_response(
        "get_partitions",
        {"Partitions": [outside]},
        {"DatabaseName": "raw", "TableName": "orders", "ExcludeColumnSchema": True, "NextToken": "more"},
    )

    with stubber, pytest.raises(TableError, match="s3://elsewhere/dt=2/"):
        GlueCatalog("raw", offline_glue_client).describe("orders")

    stubber.assert_no_pending_responses()
