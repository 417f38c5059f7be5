"""S3StateStore beyond the shared contract: racing runs, S3's 409, retried requests, history clashes."""

from __future__ import annotations

import io
import json
import re

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from cdc_pipeline.aws.s3 import S3StateStore
from cdc_pipeline.errors import CommitConflictError, ConfigurationError, PipelineError
from cdc_pipeline.state import StateDocument, TableState

COMMITTED_AT = "2024-05-01T12:00:00+00:00"
STATE_URI = "s3://lake/cdc/state.json"


def _next_document(base: StateDocument, run_id: str) -> StateDocument:
    tracker = TableState(
        watermark="2024-04-30T23:59:59",
        location=f"s3://lake/out/orders/snapshots/{run_id}",
        rows=1,
        run_id=run_id,
        committed_at=COMMITTED_AT,
        load_type="full",
        mode="dedup",
    )
    return base.with_tables({**base.tables, "orders": tracker}, run_id, COMMITTED_AT)


def _body(document: StateDocument) -> dict[str, object]:
    """A stubbed GetObject answer holding ``document``."""
    raw = json.dumps(document.to_json()).encode()
    return {"Body": StreamingBody(io.BytesIO(raw), len(raw)), "ETag": f'"etag-{document.run_id}"'}


def _history_keys(s3_client, bucket: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="cdc/history/")
    return [entry["Key"] for entry in listed.get("Contents", [])]


@pytest.fixture
def planned(s3_client, bucket):
    """Two runs that planned from the same committed revision: (store A, store B, base, its ETag)."""
    S3StateStore(f"s3://{bucket}/cdc", s3_client).write(_next_document(StateDocument(), "run-0"), None)
    store_a = S3StateStore(f"s3://{bucket}/cdc", s3_client)
    store_b = S3StateStore(f"s3://{bucket}/cdc", s3_client)
    base, etag = store_a.read()
    assert store_b.read() == (base, etag)
    return store_a, store_b, base, etag


def test_two_runs_racing_from_the_same_etag_produce_one_winner_and_a_conflict_naming_it(
    planned, s3_client, bucket
):
    store_a, store_b, base, etag = planned

    winner_etag = store_a.write(_next_document(base, "run-a"), etag)
    with pytest.raises(CommitConflictError) as refused:
        store_b.write(_next_document(base, "run-b"), etag)

    assert refused.value.competing_run_id == "run-a"
    assert "run-a" in str(refused.value)
    assert f"s3://{bucket}/cdc/state.json" in str(refused.value)
    assert store_b.read() == (_next_document(base, "run-a"), winner_etag)
    assert _history_keys(s3_client, bucket) == [
        "cdc/history/0000000001-run-0.json",
        "cdc/history/0000000002-run-a.json",
    ]


def test_two_first_runs_racing_to_create_the_state_produce_one_winner(s3_client, bucket):
    store_a = S3StateStore(f"s3://{bucket}/cdc", s3_client)
    store_b = S3StateStore(f"s3://{bucket}/cdc", s3_client)
    assert store_a.read()[1] is None
    assert store_b.read()[1] is None

    store_a.write(_next_document(StateDocument(), "run-a"), None)
    with pytest.raises(CommitConflictError) as refused:
        store_b.write(_next_document(StateDocument(), "run-b"), None)

    assert refused.value.competing_run_id == "run-a"
    assert store_b.read()[0].run_id == "run-a"


def test_the_version_a_write_returns_is_the_etag_s3_reports(s3_client, bucket):
    store = S3StateStore(f"s3://{bucket}/cdc", s3_client)

    etag = store.write(_next_document(StateDocument(), "run-1"), None)

    assert etag == s3_client.head_object(Bucket=bucket, Key="cdc/state.json")["ETag"]


def test_a_409_from_s3_is_a_conflict_naming_the_run_whose_write_landed(offline_s3_client):
    stubber = Stubber(offline_s3_client)
    stubber.add_client_error(
        "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
    )
    stubber.add_response("get_object", _body(_next_document(StateDocument(), "run-other")))
    store = S3StateStore("s3://lake/cdc", offline_s3_client)

    with stubber, pytest.raises(CommitConflictError) as refused:
        store.write(_next_document(StateDocument(), "run-mine"), expected_version=None)

    assert refused.value.competing_run_id == "run-other"
    assert "run-other" in str(refused.value)
    stubber.assert_no_pending_responses()


def test_a_409_while_the_competing_write_is_still_in_flight_is_a_conflict_without_a_name(
    offline_s3_client,
):
    base = _next_document(StateDocument(), "run-0")
    stubber = Stubber(offline_s3_client)
    stubber.add_client_error(
        "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
    )
    # The document still is the one this run planned from: whoever conflicted has not landed.
    stubber.add_response("get_object", _body(base))
    store = S3StateStore("s3://lake/cdc", offline_s3_client)

    with stubber, pytest.raises(CommitConflictError, match="at the same moment") as refused:
        store.write(_next_document(base, "run-mine"), expected_version='"etag-run-0"')

    assert refused.value.competing_run_id is None
    assert STATE_URI in str(refused.value)


def test_a_retried_put_that_fails_its_own_condition_counts_as_committed(offline_s3_client):
    mine = _next_document(StateDocument(), "run-mine")
    stubber = Stubber(offline_s3_client)
    # The first PUT landed but its response was lost; botocore's retry then met its own document.
    stubber.add_client_error("put_object", service_error_code="PreconditionFailed", http_status_code=412)
    stubber.add_response("get_object", _body(mine))
    stubber.add_response(
        "put_object",
        {"ETag": '"history"'},
        {
            "Bucket": "lake",
            "Key": "cdc/history/0000000001-run-mine.json",
            "Body": ANY,
            "ContentType": "application/json",
            "IfNoneMatch": "*",
        },
    )

    with stubber:
        version = S3StateStore("s3://lake/cdc", offline_s3_client).write(mine, expected_version=None)

    assert version == '"etag-run-mine"'
    stubber.assert_no_pending_responses()


def test_the_state_write_is_conditional_on_the_planned_etag(offline_s3_client):
    base = _next_document(StateDocument(), "run-0")
    stubber = Stubber(offline_s3_client)
    stubber.add_response(
        "put_object",
        {"ETag": '"new"'},
        {
            "Bucket": "lake",
            "Key": "cdc/state.json",
            "Body": ANY,
            "ContentType": "application/json",
            "IfMatch": '"etag-run-0"',
        },
    )
    stubber.add_response("put_object", {"ETag": '"history"'})

    with stubber:
        version = S3StateStore("s3://lake/cdc", offline_s3_client).write(
            _next_document(base, "run-1"), '"etag-run-0"'
        )

    assert version == '"new"'


def test_a_history_copy_that_exists_with_other_content_is_an_error_after_the_commit(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="cdc/history/0000000001-run-1.json", Body=b"an earlier lineage")
    store = S3StateStore(f"s3://{bucket}/cdc", s3_client)

    with pytest.raises(PipelineError, match=re.escape("0000000001-run-1.json already exists")):
        store.write(_next_document(StateDocument(), "run-1"), None)

    assert store.read()[0].run_id == "run-1"
    body = s3_client.get_object(Bucket=bucket, Key="cdc/history/0000000001-run-1.json")["Body"].read()
    assert body == b"an earlier lineage"


def test_access_denied_reading_the_state_names_the_document_and_the_permissions(offline_s3_client):
    stubber = Stubber(offline_s3_client)
    stubber.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)

    with stubber, pytest.raises(ConfigurationError) as denied:
        S3StateStore("s3://lake/cdc", offline_s3_client).read()

    assert STATE_URI in str(denied.value)
    assert "s3:GetObject" in str(denied.value)
    assert "s3:ListBucket" in str(denied.value)


def test_the_state_may_live_at_the_root_of_a_bucket(s3_client, bucket):
    store = S3StateStore(f"s3://{bucket}", s3_client)

    store.write(_next_document(StateDocument(), "run-1"), None)

    assert store.uri == f"s3://{bucket}/state.json"
    assert s3_client.head_object(Bucket=bucket, Key="history/0000000001-run-1.json")
