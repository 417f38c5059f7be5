"""The run lease on AWS: S3's conditional requests, the execution that owns a lease, and the Plan and
Commit tasks taking and giving it back (moto, and botocore's Stubber for answers moto never gives)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from cdc_pipeline import cli
from cdc_pipeline.aws.executions import execution_ended
from cdc_pipeline.aws.glue import GlueCatalog, GlueOutputCatalog
from cdc_pipeline.aws.s3 import S3LeaseStore, S3RegistrySource, S3StateStore, S3Storage
from cdc_pipeline.errors import ConfigurationError, RegistryError, RunInProgressError
from cdc_pipeline.lease import AWS_TTL_MARGIN_S, Lease, LeaseConflictError, acquire
from cdc_pipeline.settings import CommitSettings, PlanSettings
from cdc_pipeline.tasks import commit_task, plan_task, release_task

from .conftest import BUCKET, REGION
from .fakes import create_source_tables, ingest_succeeded, registry_csv, work_items_at

CDC_PATH = f"s3://{BUCKET}/state"
EXECUTION = "arn:aws:states:eu-west-1:123456789012:execution:cdc-pipeline:scheduled-1"
LEASE = Lease.new("run-1", EXECUTION, datetime(2026, 5, 1, 12, tzinfo=UTC), 3600)


# ---------------------------------------------------------------- S3's answers


def test_a_create_racing_another_conditional_write_409_is_a_conflict(offline_s3_client) -> None:
    store = S3LeaseStore(CDC_PATH, client=offline_s3_client)
    with Stubber(offline_s3_client) as stub:
        stub.add_client_error(
            "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
        )

        with pytest.raises(LeaseConflictError):
            store.create(LEASE)


def test_the_lease_is_taken_create_only_and_released_by_a_delete_conditional_on_its_etag(
    offline_s3_client,
) -> None:
    store = S3LeaseStore(CDC_PATH, client=offline_s3_client)
    with Stubber(offline_s3_client) as stub:
        key = {"Bucket": BUCKET, "Key": "state/lease.json"}
        put = {**key, "Body": LEASE.to_bytes(), "ContentType": "application/json", "IfNoneMatch": "*"}
        stub.add_response("put_object", {"ETag": '"e1"'}, put)
        stub.add_response("delete_object", {}, {**key, "IfMatch": '"e1"'})

        assert store.create(LEASE) == '"e1"'
        store.delete('"e1"')


def test_reading_the_lease_without_permission_names_the_permission(offline_s3_client) -> None:
    store = S3LeaseStore(CDC_PATH, client=offline_s3_client)
    with Stubber(offline_s3_client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)

        denied = r"state/lease.json: access denied; grant the role s3:GetObject"
        with pytest.raises(ConfigurationError, match=denied):
            store.read()


# ---------------------------------------------------------------- the execution owning a lease


@pytest.fixture
def sfn(aws: None, boto_session: Any) -> Any:
    return boto_session.client("stepfunctions")


def _execution(sfn: Any) -> str:
    machine = sfn.create_state_machine(
        name="cdc-pipeline",
        definition='{"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": true}}}',
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    return str(sfn.start_execution(stateMachineArn=machine, name="scheduled-1")["executionArn"])


def _held_by(owner: str) -> Lease:
    return Lease.new("run-1", owner, datetime.now(UTC), 3600)


def test_a_running_execution_holds_its_lease_and_a_stopped_one_no_longer_does(sfn) -> None:
    running = _execution(sfn)
    ended = execution_ended(sfn)

    assert ended(_held_by(running)) is False
    sfn.stop_execution(executionArn=running)
    assert ended(_held_by(running)) is True


def test_an_execution_no_longer_known_has_ended_and_an_owner_that_is_none_is_left_to_expire(sfn) -> None:
    ended = execution_ended(sfn)
    gone = f"arn:aws:states:{REGION}:123456789012:execution:cdc-pipeline:long-gone"

    assert ended(_held_by(gone)) is True
    assert ended(_held_by("laptop/4242")) is False


# ---------------------------------------------------------------- the Plan and Commit tasks


@pytest.fixture
def tasks(s3_client, bucket, glue_client, source_database, output_database) -> dict[str, Any]:
    create_source_tables(glue_client, source_database, ["customers"], bucket=bucket, s3=s3_client)
    s3_client.put_object(Bucket=bucket, Key="registry/tables.csv", Body=registry_csv(["customers"]).encode())
    settings = PlanSettings(
        source_database=source_database,
        output_path=f"s3://{bucket}/current",
        cdc_path=CDC_PATH,
        registry_prefix=f"s3://{bucket}/registry",
    )
    leases = S3LeaseStore(CDC_PATH, client=s3_client)

    def plan(event: dict[str, Any], owner_ended: Any = None) -> dict[str, Any]:
        return plan_task(
            event,
            settings,
            catalog=GlueCatalog(source_database, client=glue_client, s3_client=s3_client),
            registry_source=S3RegistrySource(settings.registry_prefix, client=s3_client),
            state_store=S3StateStore(CDC_PATH, client=s3_client),
            storage=S3Storage(client=s3_client),
            lease_store=leases,
            owner_ended=owner_ended,
        )

    def commit(event: dict[str, Any]) -> dict[str, Any]:
        return commit_task(
            event,
            CommitSettings(settings.output_path, CDC_PATH, output_database, retained_snapshots=2),
            state_store=S3StateStore(CDC_PATH, client=s3_client),
            storage=S3Storage(client=s3_client),
            output_catalog=GlueOutputCatalog(output_database, client=glue_client),
            lease_store=leases,
        )

    def run_folders() -> list[str]:
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="state/runs/").get("Contents", [])
        return sorted({entry["Key"].split("/")[2] for entry in listed})

    return {"plan": plan, "commit": commit, "leases": leases, "s3": s3_client, "run_folders": run_folders}


def _event(owner: str = EXECUTION, run_timeout_s: int = 86400) -> dict[str, Any]:
    return {"load_type": "incremental", "lease": {"owner": owner, "run_timeout_s": run_timeout_s}}


def test_the_plan_takes_the_lease_for_the_executions_timeout_plus_the_margin(tasks) -> None:
    planned = tasks["plan"](_event(run_timeout_s=7200))

    lease = tasks["leases"].read()[0]
    assert (lease.run_id, lease.owner) == (planned["run_id"], EXECUTION)
    lasts = datetime.fromisoformat(lease.expires_at) - datetime.fromisoformat(lease.started_at)
    assert lasts.total_seconds() == 7200 + AWS_TTL_MARGIN_S


def test_a_plan_refused_by_a_held_lease_reads_and_writes_nothing(tasks) -> None:
    acquire(tasks["leases"], "run-0", "arn:aws:states:eu-west-1:123456789012:execution:cdc-pipeline:m", 3600)
    tasks["s3"].delete_object(Bucket=BUCKET, Key="registry/tables.csv")  # a plan would fail on it

    with pytest.raises(RunInProgressError) as refused:
        tasks["plan"](_event(), owner_ended=lambda lease: False)

    assert refused.value.run_id == "run-0"
    assert str(refused.value).endswith(
        "this execution started no Glue run. Let that run finish (a schedule's next run goes ahead once "
        "it has), or stop its execution: a stopped execution's lease is taken over at once"
    )
    assert tasks["run_folders"]() == []
    assert tasks["leases"].read()[0].run_id == "run-0"


def test_a_plan_that_fails_gives_the_lease_back(tasks) -> None:
    tasks["s3"].delete_object(Bucket=BUCKET, Key="registry/tables.csv")

    with pytest.raises(RegistryError):
        tasks["plan"](_event())

    assert tasks["leases"].read() == (None, None)


def test_a_plan_event_without_the_lease_terms_is_refused_with_the_fix(tasks) -> None:
    fix = r"names no run lease .* start runs through the state machine"
    with pytest.raises(ConfigurationError, match=fix):
        tasks["plan"]({"load_type": "incremental"})

    assert tasks["leases"].read() == (None, None)


def test_the_commit_gives_the_lease_back_once_published(tasks) -> None:
    planned = tasks["plan"](_event())
    storage = S3Storage(client=tasks["s3"])
    for entry in storage.read_json(f"s3://{planned['items_bucket']}/{planned['items_key']}"):
        for item in work_items_at(storage, entry["work_item_location"]):
            ingest_succeeded(storage, item)
    assert tasks["leases"].read()[0] is not None

    committed = tasks["commit"]({"plan": planned, "map_result": {}})

    assert (committed["run_id"], committed["succeeded_count"]) == (planned["run_id"], 1)
    assert tasks["leases"].read() == (None, None)


def test_the_failure_path_releases_only_the_runs_own_lease(tasks) -> None:
    planned = tasks["plan"](_event())
    other = {"release_lease": {"run_id": "someone-else"}}
    own = {"release_lease": {"run_id": planned["run_id"]}}

    assert release_task(other, lease_store=tasks["leases"]) == {"run_id": "someone-else", "released": False}
    assert tasks["leases"].read()[0] is not None
    assert release_task(own, lease_store=tasks["leases"]) == {"run_id": planned["run_id"], "released": True}
    assert tasks["leases"].read() == (None, None)


def test_cdc_pipeline_start_exits_75_when_its_execution_found_a_run_in_progress(boto_session, capsys) -> None:
    sfn = boto_session.client("stepfunctions")
    machine = "arn:aws:states:eu-west-1:123456789012:stateMachine:cdc-pipeline-cdc-pipeline"
    refused = "run run-1 has been in progress since 2026-05-01T12:00:00.000+00:00 (owner …)"
    args = argparse.Namespace(
        state_machine_arn=machine,
        load_type="incremental",
        tables=None,
        no_follow=False,
        poll_seconds=0.0,
        accept_registry_change=None,
    )
    with Stubber(sfn) as stub:
        stub.add_response("start_execution", {"executionArn": EXECUTION, "startDate": datetime.now(UTC)})
        stub.add_response(
            "describe_execution",
            {
                "executionArn": EXECUTION,
                "stateMachineArn": machine,
                "status": "FAILED",
                "startDate": datetime.now(UTC),
                "error": "RunInProgress",
                "cause": refused,
            },
        )
        stub.add_response("list_map_runs", {"mapRuns": []})

        assert cli._start(args, sfn=sfn) == cli.EXIT_RUN_IN_PROGRESS

    assert capsys.readouterr().err == f"RunInProgress: {refused}\n"
