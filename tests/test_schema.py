"""Column types widen only where no value is lost; names match ignoring case unless that is ambiguous."""

from __future__ import annotations

import pytest

from cdc_pipeline.schema import AmbiguousColumnError, by_lower_name, normalise_type, resolve, widen


@pytest.mark.parametrize(
    ("first", "second", "widened"),
    [
        ("tinyint", "smallint", "smallint"),
        ("smallint", "int", "int"),
        ("int", "bigint", "bigint"),
        ("tinyint", "bigint", "bigint"),
        ("float", "double", "double"),
        ("date", "timestamp", "timestamp"),
        ("date", "timestamp_ntz", "timestamp_ntz"),
    ],
)
def test_a_type_widens_to_the_wider_of_its_family_whichever_comes_first(
    first: str, second: str, widened: str
) -> None:
    assert widen(first, second) == widened
    assert widen(second, first) == widened


@pytest.mark.parametrize(
    ("first", "second", "widened"),
    [
        ("decimal(10,2)", "decimal(12,2)", "decimal(12,2)"),
        ("decimal(10,2)", "decimal(10,4)", "decimal(12,4)"),  # 8 integer digits kept, 4 of scale
        ("decimal(5,0)", "decimal(3,3)", "decimal(8,3)"),
        ("decimal(38,0)", "decimal(38,0)", "decimal(38,0)"),
        ("decimal(36,2)", "decimal(20,4)", "decimal(38,4)"),
        ("decimal", "decimal(12,2)", "decimal(12,2)"),  # bare decimal is decimal(10,0)
        ("DECIMAL(10, 2)", "decimal(10,2)", "decimal(10,2)"),
    ],
)
def test_decimals_widen_to_hold_every_integer_digit_and_the_larger_scale(
    first: str, second: str, widened: str
) -> None:
    assert widen(first, second) == widened
    assert widen(second, first) == widened


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("decimal(38,0)", "decimal(38,1)"),
        ("decimal(30,0)", "decimal(20,10)"),
        ("decimal(38,0)", "decimal(1,1)"),
    ],
)
def test_decimals_needing_more_than_38_digits_are_incompatible(first: str, second: str) -> None:
    assert widen(first, second) is None
    assert widen(second, first) is None


@pytest.mark.parametrize("other", ["int", "string", "decimal(12,2)", "timestamp", "void"])
def test_a_column_of_no_type_takes_the_other_columns_type(other: str) -> None:
    assert widen("void", other) == other
    assert widen(other, "void") == other
    assert widen("null", other) == other


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("int", "string"),
        ("bigint", "double"),
        ("int", "float"),
        ("timestamp", "timestamp_ntz"),
        ("int", "decimal(10,0)"),
        ("bigint", "decimal(38,0)"),
        ("double", "decimal(10,2)"),
        ("date", "string"),
        ("boolean", "int"),
        ("string", "binary"),
    ],
)
def test_types_that_would_lose_or_reinterpret_values_are_incompatible(first: str, second: str) -> None:
    assert widen(first, second) is None
    assert widen(second, first) is None


@pytest.mark.parametrize(
    ("spelling", "normal"),
    [
        ("varchar(20)", "string"),
        ("char(3)", "string"),
        ("VARCHAR(255)", "string"),
        ("integer", "int"),
        ("long", "bigint"),
        ("short", "smallint"),
        ("byte", "tinyint"),
        ("real", "float"),
        (" BigInt ", "bigint"),
        ("decimal", "decimal(10,0)"),
        ("decimal(12, 2)", "decimal(12,2)"),
        ("array<varchar(10)>", "array<string>"),
    ],
)
def test_each_type_has_one_spelling(spelling: str, normal: str) -> None:
    assert normalise_type(spelling) == normal


def test_aliases_widen_as_the_types_they_name() -> None:
    assert widen("varchar(20)", "string") == "string"
    assert widen("integer", "long") == "bigint"


def test_names_are_keyed_by_their_lower_case_and_resolved_to_their_own_spelling() -> None:
    columns = by_lower_name(["Id", "updated_AT"], "table orders")

    assert columns == {"id": "Id", "updated_at": "updated_AT"}
    assert resolve("ID", columns) == "Id"
    assert resolve("Updated_At", columns) == "updated_AT"
    assert resolve("missing", columns) is None


def test_two_names_equal_ignoring_case_in_one_place_are_ambiguous_naming_both_and_the_place() -> None:
    with pytest.raises(AmbiguousColumnError) as raised:
        by_lower_name(["id", "Amount", "amount"], "file s3://landing/orders/p.parquet")

    message = str(raised.value)
    assert "'Amount'" in message
    assert "'amount'" in message
    assert "file s3://landing/orders/p.parquet" in message
