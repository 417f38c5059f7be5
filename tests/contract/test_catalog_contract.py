"""One contract for the source catalog: the local folders and the Glue Data Catalog (moto) agree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline.aws.glue import GlueCatalog
from cdc_pipeline.catalog import Catalog, Column, LocalCatalog, table_name_pages
from cdc_pipeline.errors import TableError

ARROW = {
    "bigint": pa.int64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
SAMPLE = {"bigint": 1, "string": "x", "timestamp": datetime(2026, 1, 1, tzinfo=UTC), "date": date(2026, 1, 1)}
DATABASE = "raw"


@dataclass
class CatalogCase:
    add_table: Callable[[str, list[tuple[str, str]], list[str]], None]
    make: Callable[[], Catalog]


def _local_case(root: Path) -> CatalogCase:
    root.mkdir()

    def add_table(name: str, columns: list[tuple[str, str]], partition_keys: list[str]) -> None:
        folder = root / name
        for key in partition_keys:
            folder = folder / f"{key}=1"
        folder.mkdir(parents=True)
        schema = pa.schema([(column, ARROW[kind]) for column, kind in columns])
        pq.write_table(
            pa.Table.from_pylist([{c: SAMPLE[k] for c, k in columns}], schema=schema), folder / "p.parquet"
        )

    return CatalogCase(add_table, lambda: LocalCatalog(root))


def _glue_case(glue: Any) -> CatalogCase:
    glue.create_database(DatabaseInput={"Name": DATABASE})

    def add_table(name: str, columns: list[tuple[str, str]], partition_keys: list[str]) -> None:
        glue.create_table(
            DatabaseName=DATABASE,
            TableInput={
                "Name": name,
                "PartitionKeys": [{"Name": key, "Type": "string"} for key in partition_keys],
                "StorageDescriptor": {
                    "Columns": [{"Name": column, "Type": kind} for column, kind in columns],
                    "Location": f"s3://landing/raw/{name}/",
                    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                    "SerdeInfo": {
                        "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                    },
                },
            },
        )

    return CatalogCase(add_table, lambda: GlueCatalog(DATABASE, client=glue))


@pytest.fixture(params=["local", "glue"])
def catalog_case(request: pytest.FixtureRequest, tmp_path: Path) -> CatalogCase:
    if request.param == "local":
        return _local_case(tmp_path / "raw")
    return _glue_case(request.getfixturevalue("glue_client"))


def test_every_table_is_listed_in_name_order(catalog_case) -> None:
    for name in ("orders", "customers", "audit_log"):
        catalog_case.add_table(name, [("id", "bigint")], [])

    assert catalog_case.make().table_names() == ["audit_log", "customers", "orders"]


def test_a_table_is_described_with_its_format_columns_in_order_and_partition_keys(catalog_case) -> None:
    columns = [("id", "bigint"), ("name", "string"), ("updated_at", "timestamp"), ("day", "date")]
    catalog_case.add_table("orders", columns, ["region"])

    table = catalog_case.make().describe("orders")

    assert table.name == "orders"
    assert table.format == "parquet"
    assert table.columns == tuple(Column(name, kind) for name, kind in columns)
    assert table.partition_keys == ("region",)
    assert table.column_names() == ("id", "name", "updated_at", "day", "region")
    assert table.location.rstrip("/").endswith("raw/orders")


def test_describing_a_table_that_is_not_there_is_a_table_error(catalog_case) -> None:
    catalog_case.add_table("orders", [("id", "bigint")], [])

    with pytest.raises(TableError, match="missing"):
        catalog_case.make().describe("missing")


def test_the_pages_of_names_hold_every_table_listed_once_each_describable_as_it_comes(catalog_case) -> None:
    for name in ("orders", "customers", "audit_log"):
        catalog_case.add_table(name, [("id", "bigint")], [])
    catalog = catalog_case.make()

    paged = [(name, catalog.describe(name).name) for page in table_name_pages(catalog) for name in page]

    assert sorted(name for name, _ in paged) == catalog.table_names() == ["audit_log", "customers", "orders"]
    assert all(name == described for name, described in paged)
