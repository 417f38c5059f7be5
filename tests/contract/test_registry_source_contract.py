"""The RegistrySource contract: the newest CSV file of the folder is authoritative, locally and on S3."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cdc_pipeline.errors import RegistryError
from tests.contract.conftest import T0

HEADER = b"table_name,primary_key\n"


def test_the_newest_file_wins_whatever_its_name(registry_case):
    registry_case.add("z-first.csv", HEADER + b"orders,id\n", T0)
    registry_case.add("a-second.csv", HEADER + b"orders,order_id\n", T0 + timedelta(minutes=5))

    name, text = registry_case.source.newest()

    assert name == registry_case.name_of("a-second.csv")
    assert text == (HEADER + b"orders,order_id\n").decode()


def test_files_modified_at_the_same_time_go_to_the_greatest_name(registry_case):
    registry_case.add("2024-05-02.csv", HEADER + b"orders,newer\n", T0)
    registry_case.add("2024-05-01.csv", HEADER + b"orders,older\n", T0)

    name, _ = registry_case.source.newest()

    assert name == registry_case.name_of("2024-05-02.csv")


def test_only_csv_files_directly_in_the_folder_count(registry_case):
    registry_case.add("tables.csv", HEADER + b"orders,id\n", T0)
    registry_case.add("notes.txt", b"not a registry", T0 + timedelta(minutes=1))
    registry_case.add("archive/tables.csv", HEADER + b"orders,archived\n", T0 + timedelta(minutes=2))

    name, _ = registry_case.source.newest()

    assert name == registry_case.name_of("tables.csv")


def test_a_byte_order_mark_is_not_part_of_the_text(registry_case):
    registry_case.add("excel.csv", b"\xef\xbb\xbf" + HEADER + b"orders,id\n", T0)

    _, text = registry_case.source.newest()

    assert text.startswith("table_name,")


def test_a_folder_without_csv_files_is_an_error_naming_it_and_the_fix(registry_case):
    registry_case.add("readme.txt", b"registry files go here", T0)

    with pytest.raises(RegistryError) as missing:
        registry_case.source.newest()

    assert registry_case.location.rstrip("/") in str(missing.value)
    assert "table_name,primary_key" in str(missing.value)


def test_a_missing_folder_is_a_registry_error(registry_case):
    with pytest.raises(RegistryError, match="no-such-registry"):
        registry_case.missing_source.newest()


@pytest.mark.parametrize("hidden", ["._tables.csv", ".tables.csv", "_tables.csv", ".~lock.tables.csv#.csv"])
def test_a_hidden_csv_file_is_never_the_registry_even_when_newest(registry_case, hidden):
    registry_case.add("tables.csv", HEADER + b"orders,id\n", T0)
    # macOS writes its resource fork beside a copied file as ._name: binary, and newer.
    registry_case.add(hidden, b"\x00\x05\x16\x07 not a registry", T0 + timedelta(minutes=5))

    name, text = registry_case.source.newest()

    assert name == registry_case.name_of("tables.csv")
    assert text == (HEADER + b"orders,id\n").decode()


def test_a_folder_holding_only_hidden_csv_files_is_an_error_that_says_they_are_hidden(registry_case):
    registry_case.add("._tables.csv", HEADER + b"orders,id\n", T0)

    with pytest.raises(RegistryError, match=r"holds no \.csv file .*hidden"):
        registry_case.source.newest()
