"""The table-settings registry: format, defaults, and the errors a data engineer sees."""

from __future__ import annotations

import os

import pytest

from cdc_pipeline.errors import RegistryError
from cdc_pipeline.registry import (
    DEFAULT_WATERMARK_COLUMN,
    LocalRegistrySource,
    load_registry,
    parse_registry,
)


def test_composite_key_in_one_quoted_field_and_optional_columns_are_read() -> None:
    registry = parse_registry(
        "table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,lookback\n"
        'order_lines,"order_id, line_no",changed_at,change_seq,Op,D|X,PT15M\n'
        "customers,customer_id,,,,,\n",
        "tables.csv",
    )

    lines = registry.settings_for("order_lines")
    assert lines is not None
    assert lines.primary_key == ("order_id", "line_no")
    assert lines.watermark_column == "changed_at"
    assert lines.watermark_column_explicit
    assert lines.sequence_column == "change_seq"
    assert lines.delete_column == "Op"
    assert lines.delete_values == ("D", "X")
    assert lines.lookback_micros == 15 * 60 * 1_000_000

    customers = registry.settings_for("customers")
    assert customers is not None
    assert customers.watermark_column == DEFAULT_WATERMARK_COLUMN
    assert not customers.watermark_column_explicit
    assert (customers.sequence_column, customers.delete_column, customers.lookback_micros) == (None, None, 0)


def test_the_original_two_column_primary_key_csv_is_a_valid_registry() -> None:
    registry = parse_registry("table_name,primary_key\norders,order_id\nnotes,\n", "pk.csv")

    orders, notes = registry.settings_for("orders"), registry.settings_for("notes")
    assert orders is not None
    assert orders.primary_key == ("order_id",)
    assert notes is not None
    assert notes.primary_key == ()


def test_table_names_match_case_insensitively_like_the_glue_catalog() -> None:
    registry = parse_registry("table_name,primary_key\nOrders,order_id\n", "pk.csv")

    assert registry.settings_for("orders") is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("table_name,primary_key\n", "no table rows"),
        ("table,primary_key\norders,id\n", "lacks the column(s) table_name"),
        ("table_name,primary_key,watermark\norders,id,ts\n", "unknown column(s) watermark"),
        ("table_name,primary_key\norders,order_id,line_no\n", "line 2: expected 2 fields"),
        ("table_name,primary_key\norders,id\norders,id\n", "line 3: table 'orders' is listed twice"),
        ("table_name,primary_key,lookback\norders,id,15 minutes\n", "line 2: table 'orders': lookback"),
        ("table_name,primary_key,lookback\norders,id,P1M\n", "not an ISO-8601 duration"),
        (
            "table_name,primary_key,delete_column\norders,id,Op\n",
            "names delete_column 'Op' but no delete_values",
        ),
        ("table_name,primary_key,delete_values\norders,id,D\n", "has delete_values but no delete_column"),
        ("table_name,primary_key\n,id\n", "line 2: table_name is blank"),
        ('table_name,primary_key\norders,"id,id"\n', "names a column twice"),
        (
            'table_name,primary_key,partition_by\norders,id,"day,Day"\n',
            "partition_by of 'orders' names a column twice",
        ),
        ("table_name,primary_key,partition_by\norders,,day\n", "has partition_by but no primary_key"),
    ],
)
def test_malformed_registry_is_refused_with_the_file_and_the_fix(text: str, expected: str) -> None:
    with pytest.raises(RegistryError, match=r"registry file bad\.csv") as error:
        parse_registry(text, "bad.csv")

    assert expected in str(error.value)


def test_newest_registry_file_is_authoritative(tmp_path) -> None:
    older, newer = tmp_path / "z-old.csv", tmp_path / "a-new.csv"
    older.write_text("table_name,primary_key\norders,old_id\n")
    newer.write_text("table_name,primary_key\norders,new_id\n")
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    (tmp_path / "notes.txt").write_text("not a registry")

    registry = load_registry(LocalRegistrySource(tmp_path))

    settings = registry.settings_for("orders")
    assert settings is not None
    assert settings.primary_key == ("new_id",)
    assert registry.source.endswith("a-new.csv")


def test_registry_directory_without_csv_files_is_an_error_naming_it(tmp_path) -> None:
    with pytest.raises(RegistryError, match=r"holds no \.csv file"):
        load_registry(LocalRegistrySource(tmp_path))
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(LocalRegistrySource(tmp_path / "missing"))


def test_partition_by_names_the_output_partition_columns_in_order() -> None:
    registry = parse_registry(
        'table_name,primary_key,partition_by\norders,id,"region, day"\nusers,id,\n', "tables.csv"
    )

    assert registry.tables["orders"].partition_by == ("region", "day")
    assert registry.tables["users"].partition_by == ()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("table_name;primary_key\norders;order_id\n", "semicolon"),
        ("table_name\tprimary_key\norders\torder_id\n", "tab"),
        ("table_name|primary_key\norders|order_id\n", "pipe"),
    ],
)
def test_a_registry_written_with_another_delimiter_says_so_and_that_registry_files_are_comma_separated(
    text: str, named: str
) -> None:
    with pytest.raises(RegistryError) as error:
        parse_registry(text, "excel.csv")

    message = str(error.value)
    assert f"looks {named}-delimited" in message
    assert "registry files are comma-separated" in message
    assert "excel.csv" in message


def test_a_row_written_with_another_delimiter_under_a_comma_header_says_so() -> None:
    with pytest.raises(RegistryError, match=r"line 3: .*looks semicolon-delimited"):
        parse_registry("table_name,primary_key\norders,id\ncustomers;id\n", "tables.csv")


def test_a_one_field_line_without_another_delimiter_gets_no_delimiter_hint() -> None:
    with pytest.raises(RegistryError) as error:
        parse_registry("table_name,primary_key\norders\n", "tables.csv")

    assert "delimited" not in str(error.value)
