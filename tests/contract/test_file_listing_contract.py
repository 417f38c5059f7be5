"""One contract for listing a table's data files: the local folders and S3 (moto) agree on which files
a table holds, their relative paths and sizes, and arrival times on the clock the reference is on."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from cdc_pipeline.arrivals import FileListing
from cdc_pipeline.aws.s3 import list_data_files
from cdc_pipeline.catalog import LocalCatalog

SECOND = 1_000_000
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
TABLE = "orders"


@dataclass
class ListingCase:
    """A table's folder (or prefix) and the ways files land in it, the same for every implementation."""

    put: Callable[[str, bytes], None]  # a file at a path relative to the table's folder
    put_beside: Callable[[str, bytes], None]  # a file relative to the folder holding every table
    make_folder: Callable[[str], None]  # an empty folder (on S3, a folder marker key ending in '/')
    move_in_old: Callable[[str, bytes], None]  # a file last modified long ago, moved or copied in now
    list: Callable[..., FileListing]  # list(start_after=None)


def _local_case(root: Path) -> ListingCase:
    source, staging = root / "raw", root / "staging"
    (source / TABLE).mkdir(parents=True)
    staging.mkdir()

    def write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    def move_in_old(relative: str, content: bytes) -> None:
        staged = staging / "file"
        write(staged, content)
        os.utime(staged, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))
        target = source / TABLE / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    return ListingCase(
        put=lambda relative, content: write(source / TABLE / relative, content),
        put_beside=lambda relative, content: write(source / relative, content),
        make_folder=lambda relative: (source / TABLE / relative).mkdir(parents=True, exist_ok=True),
        move_in_old=move_in_old,
        list=lambda start_after=None: LocalCatalog(source).list_files(TABLE, start_after),
    )


def _s3_case(client: Any, bucket: str) -> ListingCase:
    def put_beside(relative: str, content: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"raw/{relative}", Body=content)

    def move_in_old(relative: str, content: bytes) -> None:
        # moto stamps LastModified from this clock, so an object can be made old without sleeping.
        with mock.patch("moto.s3.models.utcnow", return_value=LONG_AGO.replace(tzinfo=None)):
            client.put_object(Bucket=bucket, Key="staging/file", Body=content)
        client.copy_object(
            Bucket=bucket, Key=f"raw/{TABLE}/{relative}", CopySource={"Bucket": bucket, "Key": "staging/file"}
        )
        client.delete_object(Bucket=bucket, Key="staging/file")

    return ListingCase(
        put=lambda relative, content: put_beside(f"{TABLE}/{relative}", content),
        put_beside=put_beside,
        make_folder=lambda relative: put_beside(f"{TABLE}/{relative}".rstrip("/") + "/", b""),
        move_in_old=move_in_old,
        # As Glue spells a table's location, without the trailing slash.
        list=lambda start_after=None: list_data_files(client, f"s3://{bucket}/raw/{TABLE}", start_after),
    )


@pytest.fixture(params=["local", "s3"])
def listing_case(request: pytest.FixtureRequest, tmp_path: Path) -> ListingCase:
    if request.param == "local":
        return _local_case(tmp_path)
    return _s3_case(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))


@pytest.fixture(autouse=True)
def local_time_far_from_utc() -> Iterator[None]:
    """UTC+14 as the machine's zone, so a time read as local instead of UTC is off by 14 hours."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "KIR-14")
        time.tzset()
        yield
    time.tzset()


def _sizes(listing: FileListing) -> dict[str, int]:
    return {file.path: file.size for file in listing.files}


def _now_micros() -> int:
    return time.time_ns() // 1000


def test_files_in_nested_date_and_partition_folders_are_listed_by_relative_path_and_size(
    listing_case: ListingCase,
) -> None:
    listing_case.put("top.parquet", b"1")
    listing_case.put("2024/05/01/part-00000.parquet", b"22")
    listing_case.put("dt=2024-05-01/hour=07/part-00001.parquet", b"333")
    listing_case.put("_col=1/part-00002.parquet", b"4444")
    listing_case.put("empty.parquet", b"")

    assert _sizes(listing_case.list()) == {
        "top.parquet": 1,
        "2024/05/01/part-00000.parquet": 2,
        "dt=2024-05-01/hour=07/part-00001.parquet": 3,
        "_col=1/part-00002.parquet": 4,
        "empty.parquet": 0,
    }


def test_markers_checksums_temporary_folders_files_being_copied_and_folders_are_not_data_files(
    listing_case: ListingCase,
) -> None:
    listing_case.put("dt=2024-05-01/part-00000.parquet", b"data")
    for hidden in (
        "_SUCCESS",
        "dt=2024-05-01/_SUCCESS",
        ".part-00000.parquet.crc",
        "dt=2024-05-01/.part-00000.parquet.crc",
        "_temporary/0/_temporary/attempt_1/part-00009.parquet",
        ".spark-staging-1/part-00008.parquet",
        "dt=2024-05-02/part-00007.parquet._COPYING_",
        "dt=2024-05-03_$folder$",
    ):
        listing_case.put(hidden, b"hidden")
    for folder in ("", "dt=2024-05-01/", "dt=2024-05-04/", "2024/05/"):
        listing_case.make_folder(folder)

    assert _sizes(listing_case.list()) == {"dt=2024-05-01/part-00000.parquet": 4}


def test_files_of_other_tables_sharing_the_name_as_a_prefix_are_not_listed(listing_case: ListingCase) -> None:
    listing_case.put("part-00000.parquet", b"mine")
    listing_case.put_beside(f"{TABLE}_archive/part-00000.parquet", b"other")
    listing_case.put_beside(f"{TABLE}.parquet", b"other")

    assert _sizes(listing_case.list()) == {"part-00000.parquet": 4}


@pytest.mark.parametrize(
    "relative",
    ["pv[1] é.parquet", "dt=2024-05-01 10%3A00/pv[1] é+ü.parquet", "a b&c=d?.parquet", "日本/データ.parquet"],
)
def test_a_file_name_with_brackets_spaces_and_unicode_is_listed_with_its_exact_relative_path(
    listing_case: ListingCase, relative: str
) -> None:
    listing_case.put(relative, b"x")

    assert [file.path for file in listing_case.list().files] == [relative]


def test_a_table_without_files_lists_none_and_still_has_a_reference(listing_case: ListingCase) -> None:
    before = _now_micros()

    listing = listing_case.list()

    assert listing.files == ()
    # S3's Date header counts whole seconds, and the reference is taken one second before it.
    assert before - 2 * SECOND <= listing.reference <= _now_micros()


def test_files_written_before_a_listing_arrived_no_later_than_its_reference(
    listing_case: ListingCase,
) -> None:
    before = _now_micros()
    for i in range(3):
        listing_case.put(f"part-{i:05d}.parquet", b"x")

    listing = listing_case.list()

    assert len(listing.files) == 3
    for file in listing.files:
        assert isinstance(file.arrived, int)
        # S3 stamps whole seconds, and its Date header counts whole seconds too.
        assert before - SECOND <= file.arrived <= listing.reference + SECOND


def test_a_file_written_after_a_listing_is_found_by_the_next_arriving_no_earlier_than_the_first_reference(
    listing_case: ListingCase,
) -> None:
    listing_case.put("part-00000.parquet", b"x")
    first = listing_case.list()

    listing_case.put("part-00001.parquet", b"y")
    second = listing_case.list()

    arrived = {file.path: file.arrived for file in second.files}
    assert set(arrived) == {"part-00000.parquet", "part-00001.parquet"}
    assert arrived["part-00001.parquet"] >= first.reference - SECOND
    assert arrived["part-00001.parquet"] <= second.reference + SECOND


def test_a_file_moved_in_with_an_old_modification_time_arrives_when_it_was_moved(
    listing_case: ListingCase,
) -> None:
    before = _now_micros()

    listing_case.move_in_old("dt=2019-12-31/part-00000.parquet", b"old")
    listing = listing_case.list()

    (file,) = listing.files
    assert file.path == "dt=2019-12-31/part-00000.parquet"
    assert before - SECOND <= file.arrived <= listing.reference + SECOND


def test_a_listing_of_more_than_one_page_holds_every_file(listing_case: ListingCase) -> None:
    # ListObjectsV2 answers at most 1,000 keys a page; hidden keys fall on both sides of the page break.
    names = [f"part-{i:05d}.parquet" for i in range(1003)]
    for name in names:
        listing_case.put(name, b"x")
    for i in (0, 999, 1002):
        listing_case.put(f".part-{i:05d}.parquet.crc", b"c")
        listing_case.put(f"part-{i:05d}.parquet._COPYING_", b"c")

    assert sorted(file.path for file in listing_case.list().files) == names


def test_a_listing_after_a_name_holds_only_the_names_that_sort_after_it(listing_case: ListingCase) -> None:
    for name in (
        "2026/01/01/a.parquet",
        "2026/01/02/b.parquet",
        "2026/01/02/c.parquet",
        "2026/01/03/d.parquet",
    ):
        listing_case.put(name, b"x")

    listing = listing_case.list(start_after="2026/01/02/b.parquet")

    assert sorted(f.path for f in listing.files) == ["2026/01/02/c.parquet", "2026/01/03/d.parquet"]
