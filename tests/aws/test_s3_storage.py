"""S3Storage beyond the shared contract: URI parsing, batched deletes, and S3's own failure modes."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from cdc_pipeline.aws.s3 import DELETE_BATCH, S3Storage, parse_s3_uri
from cdc_pipeline.errors import ConfigurationError, PipelineError


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/prefix/key.json", ("bucket", "prefix/key.json")),
        ("s3://bucket/folder/", ("bucket", "folder/")),
        ("s3://bucket", ("bucket", "")),
    ],
)
def test_an_s3_uri_splits_into_bucket_and_key(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "not_s3", ["/tmp/state", "bucket/key", "s3a://bucket/key", "https://bucket/key", "s3://"]
)
def test_a_location_that_is_not_an_s3_uri_is_a_configuration_error_naming_it(not_s3):
    with pytest.raises(ConfigurationError, match="s3://bucket/prefix") as refused:
        parse_s3_uri(not_s3)

    assert repr(not_s3) in str(refused.value)


def test_invalid_json_is_a_value_error_naming_the_uri(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="runs/r1/plan.json", Body=b"{truncated")

    with pytest.raises(ValueError, match=f"s3://{bucket}/runs/r1/plan.json"):
        S3Storage(s3_client).read_json(f"s3://{bucket}/runs/r1/plan.json")


def test_a_missing_bucket_is_a_configuration_error_naming_it(s3_client, bucket):
    with pytest.raises(ConfigurationError, match="'no-such-bucket' does not exist"):
        S3Storage(s3_client).read_json("s3://no-such-bucket/runs/r1/plan.json")


def test_a_folder_location_is_not_a_document(s3_client, bucket):
    with pytest.raises(ConfigurationError, match="names a folder"):
        S3Storage(s3_client).write_json(f"s3://{bucket}/runs/r1/", {"a": 1})


def test_delete_tree_also_deletes_an_object_at_the_location_itself(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="snap/r1", Body=b"marker")
    s3_client.put_object(Bucket=bucket, Key="snap/r1/part-0.parquet", Body=b"data")

    assert S3Storage(s3_client).delete_tree(f"s3://{bucket}/snap/r1") is True

    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_delete_tree_lists_every_page_and_deletes_in_batches_of_at_most_a_thousand(s3_client, bucket):
    count = DELETE_BATCH + 5
    for number in range(count):
        s3_client.put_object(Bucket=bucket, Key=f"snap/r1/part-{number:05d}.parquet", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="snap/r10/part-0.parquet", Body=b"kept")
    batches: list[int] = []
    s3_client.meta.events.register(
        "provide-client-params.s3.DeleteObjects",
        lambda params, **_: batches.append(len(params["Delete"]["Objects"])),
    )

    assert S3Storage(s3_client).delete_tree(f"s3://{bucket}/snap/r1") is True

    assert batches == [DELETE_BATCH, 5]
    remaining = [entry["Key"] for entry in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert remaining == ["snap/r10/part-0.parquet"]


def test_objects_s3_refuses_to_delete_are_an_error_naming_bucket_key_and_fix(offline_s3_client):
    stubber = Stubber(offline_s3_client)
    stubber.add_response(
        "list_objects_v2",
        {
            "Contents": [{"Key": "snap/r1/part-0.parquet"}, {"Key": "snap/r1/part-1.parquet"}],
            "IsTruncated": False,
        },
    )
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    stubber.add_response(
        "delete_objects",
        {"Errors": [{"Key": "snap/r1/part-1.parquet", "Code": "AccessDenied", "Message": "Access Denied"}]},
    )

    with stubber, pytest.raises(PipelineError) as refused:
        S3Storage(offline_s3_client).delete_tree("s3://lake/snap/r1")

    message = str(refused.value)
    assert "'lake'" in message
    assert "snap/r1/part-1.parquet: AccessDenied" in message
    assert "s3:DeleteObject" in message


def test_delete_tree_never_deletes_a_whole_bucket(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="state.json", Body=b"{}")

    with pytest.raises(ConfigurationError, match="whole bucket"):
        S3Storage(s3_client).delete_tree(f"s3://{bucket}/")

    assert s3_client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
