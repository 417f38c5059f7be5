"""S3RegistrySource beyond the shared contract: listing pages, and S3 errors as registry errors."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from cdc_pipeline.aws.s3 import S3RegistrySource
from cdc_pipeline.errors import RegistryError

MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)
MAY_2 = datetime(2024, 5, 2, tzinfo=UTC)


def _listing(entries: list[tuple[str, datetime]], next_token: str | None = None) -> dict[str, object]:
    page: dict[str, object] = {
        "Contents": [{"Key": key, "LastModified": modified} for key, modified in entries],
        "IsTruncated": next_token is not None,
    }
    if next_token:
        page["NextContinuationToken"] = next_token
    return page


def _object(text: bytes) -> dict[str, object]:
    return {"Body": StreamingBody(io.BytesIO(text), len(text))}


def test_the_newest_file_is_found_on_a_later_listing_page(offline_s3_client):
    stubber = Stubber(offline_s3_client)
    stubber.add_response(
        "list_objects_v2",
        _listing([("registry/a.csv", MAY_1), ("registry/b.csv", MAY_1)], next_token="page-2"),
        {"Bucket": "config", "Prefix": "registry/", "Delimiter": "/"},
    )
    stubber.add_response(
        "list_objects_v2",
        _listing([("registry/c.csv", MAY_2), ("registry/d.txt", MAY_2)]),
        {"Bucket": "config", "Prefix": "registry/", "Delimiter": "/", "ContinuationToken": "page-2"},
    )
    stubber.add_response(
        "get_object", _object(b"table_name,primary_key\n"), {"Bucket": "config", "Key": "registry/c.csv"}
    )

    with stubber:
        name, text = S3RegistrySource("s3://config/registry", offline_s3_client).newest()

    assert name == "s3://config/registry/c.csv"
    assert text == "table_name,primary_key\n"
    stubber.assert_no_pending_responses()


def test_a_missing_bucket_is_a_registry_error_naming_it(s3_client, bucket):
    with pytest.raises(RegistryError, match="'no-such-bucket' does not exist"):
        S3RegistrySource("s3://no-such-bucket/registry/", s3_client).newest()


def test_a_newest_file_that_is_not_utf8_is_a_registry_error_naming_it(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="registry/tables.csv", Body=b"table_name\xff,primary_key\n")

    with pytest.raises(RegistryError, match=f"s3://{bucket}/registry/tables.csv"):
        S3RegistrySource(f"s3://{bucket}/registry/", s3_client).newest()


def test_a_registry_at_the_bucket_root_lists_the_root(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="tables.csv", Body=b"table_name,primary_key\n")

    name, _ = S3RegistrySource(f"s3://{bucket}", s3_client).newest()

    assert name == f"s3://{bucket}/tables.csv"
