"""The Storage contract: JSON documents and folder deletion behave alike on the local disk and on S3."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    "document",
    [
        {"run_id": "run-1", "items": [{"table": "orders", "columns": [{"name": "id"}]}], "n": 3},
        [{"table": "orders"}, {"table": "customers"}],
        [],
    ],
    ids=["object", "array-of-items", "empty-array"],
)
def test_a_written_json_value_reads_back_equal(storage_case, document):
    location = storage_case.location("runs/run-1/items.json")

    storage_case.storage.write_json(location, document)

    assert storage_case.storage.read_json(location) == document


def test_writing_again_replaces_the_document(storage_case):
    location = storage_case.location("runs/run-1/report.json")
    storage_case.storage.write_json(location, {"status": "running"})

    storage_case.storage.write_json(location, {"status": "done"})

    assert storage_case.storage.read_json(location) == {"status": "done"}


def test_a_missing_document_reads_as_none(storage_case):
    assert storage_case.storage.read_json(storage_case.location("runs/run-1/manifests/none.json")) is None


@pytest.mark.parametrize("content", [b"{not json", b"", b"\x80\x81"], ids=["truncated", "empty", "not-utf8"])
def test_a_document_that_is_not_json_is_a_value_error(storage_case, content):
    storage_case.put_file("runs/run-1/manifests/orders.json", content)

    with pytest.raises(ValueError):  # noqa: PT011 - the port promises ValueError; messages differ
        storage_case.storage.read_json(storage_case.location("runs/run-1/manifests/orders.json"))


def test_delete_tree_removes_everything_below_and_reports_it(storage_case):
    for relative in ("snap/r1/part-0.parquet", "snap/r1/part-1.parquet", "snap/r1/year=2024/part-2.parquet"):
        storage_case.put_file(relative, b"data")

    deleted = storage_case.storage.delete_tree(storage_case.location("snap/r1"))

    assert deleted is True
    assert storage_case.files() == {}


def test_delete_tree_leaves_siblings_that_merely_share_the_name_prefix(storage_case):
    storage_case.put_file("snap/r1/part-0.parquet", b"old")
    storage_case.put_file("snap/r10/part-0.parquet", b"kept")
    storage_case.put_file("snap/r1.json", json.dumps({"kept": True}).encode())

    storage_case.storage.delete_tree(storage_case.location("snap/r1"))

    assert set(storage_case.files()) == {"snap/r10/part-0.parquet", "snap/r1.json"}


def test_delete_tree_accepts_a_trailing_slash(storage_case):
    storage_case.put_file("snap/r1/part-0.parquet", b"data")

    assert storage_case.storage.delete_tree(storage_case.location("snap/r1") + "/") is True
    assert storage_case.files() == {}


def test_delete_tree_of_nothing_reports_false_and_touches_nothing(storage_case):
    storage_case.put_file("snap/r10/part-0.parquet", b"kept")

    assert storage_case.storage.delete_tree(storage_case.location("snap/r1")) is False
    assert set(storage_case.files()) == {"snap/r10/part-0.parquet"}


def test_file_sizes_give_every_file_below_a_folder_and_nothing_beside_it(storage_case):
    storage_case.put_file("snap/r1/part-0.parquet", b"12345")
    storage_case.put_file("snap/r1/year=2024/part-1.parquet", b"123")
    storage_case.put_file("snap/r10/part-0.parquet", b"not counted")
    storage_case.put_file("snap/r1.json", b"{}")

    expected = {"part-0.parquet": 5, "year=2024/part-1.parquet": 3}
    assert storage_case.storage.file_sizes(storage_case.location("snap/r1")) == expected
    assert storage_case.storage.file_sizes(storage_case.location("snap/r1") + "/") == expected


def test_file_sizes_of_nothing_are_empty(storage_case):
    assert storage_case.storage.file_sizes(storage_case.location("snap/none")) == {}


def test_list_folders_names_the_folders_directly_below_and_no_file_or_deeper_folder(storage_case):
    storage_case.put_file("orders/snapshots/r2/part-0.parquet", b"x")
    storage_case.put_file("orders/snapshots/r1/cdc_partition=p1/part-0.parquet", b"x")
    storage_case.put_file("orders/snapshots/r10/part-0.parquet", b"x")
    storage_case.put_file("orders/snapshots/notes.json", b"{}")
    storage_case.put_file("orders/snapshots-old/r3/part-0.parquet", b"x")

    expected = ["r1", "r10", "r2"]
    assert storage_case.storage.list_folders(storage_case.location("orders/snapshots")) == expected
    assert storage_case.storage.list_folders(storage_case.location("orders/snapshots") + "/") == expected
    assert storage_case.storage.list_folders(storage_case.location("orders/snapshots/r1")) == [
        "cdc_partition=p1"
    ]


def test_list_folders_of_nothing_or_of_a_folder_of_files_is_empty(storage_case):
    storage_case.put_file("orders/snapshots/r1/part-0.parquet", b"x")

    assert storage_case.storage.list_folders(storage_case.location("orders/none")) == []
    assert storage_case.storage.list_folders(storage_case.location("orders/snapshots/r1")) == []
