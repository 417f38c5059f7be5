"""The state machine definition EXECUTED by moto's Step Functions interpreter.

The Plan and Commit tasks are the real Lambda handlers (``lambdas/*/app.py``), dispatched from
moto's Lambda backend; the Distributed Map reads the plan's items from S3 and writes its results
to S3; each Glue job run's outcome is decided by the test (a successful run leaves the manifest an
ingest would). What runs is the ASL file as deployed, with its placeholders filled the way
``DefinitionSubstitutions`` fills them.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.glue.exceptions import ConcurrentRunsExceededException
from moto.glue.models import FakeJob, FakeJobRun
from moto.stepfunctions.parser import models as stepfunctions_models
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_callback,
)

from cdc_pipeline.aws.s3 import S3LeaseStore, S3StateStore, S3Storage
from cdc_pipeline.lease import AWS_TTL_MARGIN_S, Lease
from cdc_pipeline.packs import PACK_MAX_TABLES
from cdc_pipeline.plan import WorkItem
from cdc_pipeline.state import StateDocument

from .conftest import BUCKET, OUTPUT_DATABASE, REGION, SOURCE_DATABASE
from .fakes import (
    create_source_tables,
    ingest_failed,
    ingest_succeeded,
    land_files,
    registry_csv,
    run_to_end,
    work_items_at,
)

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "state_machine" / "cdc_pipeline.asl.json"
ACCOUNT = "123456789012"
JOB_NAME = "cdc-pipeline-ingest"
PLAN_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:cdc-pipeline-plan"
COMMIT_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:cdc-pipeline-commit"
SUBSTITUTIONS = {
    "Partition": "aws",
    "PlanFunctionArn": PLAN_ARN,
    "CommitFunctionArn": COMMIT_ARN,
    "IngestJobName": JOB_NAME,
    "StateBucketName": BUCKET,
    "MapResultsPrefix": "state/map-results",
    "MaxConcurrency": 20,
    "RunTimeoutSeconds": 86400,
}


def render_definition() -> str:
    """The ASL with every ``${Placeholder}`` replaced as text, as DefinitionSubstitutions does.

    Retry intervals are cut to one second: the test proves that a retry happens, not how long
    the deployed backoff waits.
    """
    text = DEFINITION.read_text()
    for name, value in SUBSTITUTIONS.items():
        text = text.replace("${" + name + "}", str(value))
    assert "${" not in text, "a placeholder without a substitution"
    definition = json.loads(text)

    def shorten(node: Any) -> None:
        if isinstance(node, dict):
            for retrier in node.get("Retry", []):
                retrier["IntervalSeconds"] = 1
                retrier.pop("MaxDelaySeconds", None)
            for value in node.values():
                shorten(value)
        elif isinstance(node, list):
            for value in node:
                shorten(value)

    shorten(definition)
    return json.dumps(definition)


def _fix_moto_interrupt_all() -> None:
    """moto 5.2: every ``glue:startJobRun.sync`` task fails on ``None.interrupt_all()`` (TOOLCHAIN.md)."""
    cls = state_task_service_callback.StateTaskServiceCallback
    source = textwrap.dedent(inspect.getsource(cls._eval_integration_pattern))
    broken = "callback_endpoint.interrupt_all()"
    if broken not in source or "callback_endpoint is not None" in source:
        return
    fixed = source.replace(broken, "if callback_endpoint is not None:\n                " + broken)
    namespace: dict[str, Any] = {}
    exec(
        compile(fixed, state_task_service_callback.__file__, "exec"),
        vars(state_task_service_callback),
        namespace,
    )
    cls._eval_integration_pattern = namespace["_eval_integration_pattern"]


class _CopySharingExecutions:
    """moto 5.2 deep-copies a state machine on every start, and with it the earlier executions
    (its own, and the backend's), whose locks cannot be copied: a second execution fails. The
    copy shares them instead."""

    @staticmethod
    def deepcopy(obj: Any, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        for name in ("backend", "executions"):
            shared = getattr(obj, name, None)
            if shared is not None:
                memo[id(shared)] = shared
        return copy.deepcopy(obj, memo)


@dataclass
class FakeContext:
    function_name: str
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = ""
    aws_request_id: str = "req-1"


def load_handler(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GlueOutcome = Callable[[WorkItem, int], str]
GLUE_ERROR = "file x.parquet is not readable Parquet"


class Pipeline:
    """The deployed pipeline in moto: buckets, catalogs, the job, both Lambdas, the state machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, boto_session: Any) -> None:
        self.s3 = boto_session.client("s3")
        self.glue = boto_session.client("glue")
        self.sfn = boto_session.client("stepfunctions")
        self.storage = S3Storage(client=self.s3)
        self.state = S3StateStore(f"s3://{BUCKET}/state", client=self.s3)
        self.outcome: GlueOutcome = lambda item, attempt: "SUCCEEDED"
        self.attempts: dict[str, int] = {}
        self.job_run_outcomes: dict[str, str] = {}
        for name, value in {
            "SOURCE_DATABASE": SOURCE_DATABASE,
            "OUTPUT_DATABASE": OUTPUT_DATABASE,
            "OUTPUT_PATH": f"s3://{BUCKET}/current",
            "CDC_PATH": f"s3://{BUCKET}/state",
            "REGISTRY_PREFIX": f"s3://{BUCKET}/registry",
            "RETAINED_SNAPSHOTS": "2",
            "POWERTOOLS_SERVICE_NAME": "cdc-pipeline",
            "POWERTOOLS_METRICS_NAMESPACE": "CdcPipeline",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }.items():
            monkeypatch.setenv(name, value)
        self.handlers = {
            PLAN_ARN: load_handler(ROOT / "lambdas" / "plan" / "app.py", "plan_app").lambda_handler,
            COMMIT_ARN: load_handler(ROOT / "lambdas" / "commit" / "app.py", "commit_app").lambda_handler,
        }
        monkeypatch.setattr(LambdaSimpleBackend, "invoke", self._invoke_lambda)
        original_start = FakeJob.start_job_run
        original_as_dict = FakeJobRun.as_dict

        def start_job_run(job: FakeJob, *args: Any, **kwargs: Any) -> str:
            # Like the Glue job: each table of the run (one, or a pack's) on its own; the run fails
            # when any of its tables did.
            items = work_items_at(self.storage, kwargs["arguments"]["--work_item_location"])
            outcomes = []
            for item in items:
                attempt = self.attempts[item.table] = self.attempts.get(item.table, 0) + 1
                outcomes.append(self.outcome(item, attempt))
            if "THROTTLED" in outcomes:
                raise ConcurrentRunsExceededException(f"Job with name {job.name} already running")
            for item, outcome in zip(items, outcomes, strict=True):
                if outcome == "SUCCEEDED":
                    ingest_succeeded(self.storage, item)
                else:
                    ingest_failed(self.storage, item, f"table {item.table!r}: {GLUE_ERROR}")
            run_id = original_start(job, *args, **kwargs)
            self.job_run_outcomes[run_id] = "FAILED" if "FAILED" in outcomes else "SUCCEEDED"
            return run_id

        def as_dict(run: FakeJobRun) -> dict[str, Any]:
            described = original_as_dict(run)
            described["JobRunState"] = self.job_run_outcomes.get(run.job_run_id, described["JobRunState"])
            if described["JobRunState"] == "FAILED":
                described["ErrorMessage"] = GLUE_ERROR
            return described

        monkeypatch.setattr(FakeJob, "start_job_run", start_job_run)
        monkeypatch.setattr(FakeJobRun, "as_dict", as_dict)

        self.state_machine_arn = self.sfn.create_state_machine(
            name="cdc-pipeline", definition=render_definition(), roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn"
        )["stateMachineArn"]
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        self.glue.create_database(DatabaseInput={"Name": SOURCE_DATABASE})
        self.glue.create_database(DatabaseInput={"Name": OUTPUT_DATABASE})
        self.glue.create_job(
            Name=JOB_NAME,
            Role="arn:aws:iam::123456789012:role/glue",
            Command={"Name": "glueetl"},
            ExecutionProperty={"MaxConcurrentRuns": 1000},
        )

    def _invoke_lambda(self, function_name, qualifier, body, headers, response_headers) -> bytes:
        handler = self.handlers[function_name]
        try:
            result = handler(json.loads(body or "{}"), FakeContext(function_name=function_name))
        except Exception as exc:  # a Lambda's unhandled error: the state machine's Retry/Catch see it
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result).encode()

    def land(self, tables: list[str]) -> None:
        create_source_tables(self.glue, SOURCE_DATABASE, tables, bucket=BUCKET, s3=self.s3)
        self.s3.put_object(Bucket=BUCKET, Key="registry/tables.csv", Body=registry_csv(tables).encode())

    def run(self, run_input: dict[str, Any], timeout_s: float = 240) -> dict[str, Any]:
        return run_to_end(self.sfn, self.state_machine_arn, run_input, timeout_s)


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, boto_session: Any) -> Iterator[Pipeline]:
    _fix_moto_interrupt_all()
    monkeypatch.setattr(stepfunctions_models, "copy", _CopySharingExecutions)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield Pipeline(monkeypatch, boto_session)


def test_every_table_succeeds_and_is_committed_in_one_revision(pipeline) -> None:
    tables = ["customers", "orders", "payments"]
    pipeline.land(tables)

    execution = pipeline.run({"load_type": "incremental"})

    assert execution["status"] == "SUCCEEDED", execution
    state, _ = pipeline.state.read()
    assert state.revision == 1
    assert sorted(state.tables) == tables
    commit = json.loads(execution["output"])["commit"]
    assert (commit["succeeded_count"], commit["failed_count"]) == (3, 0)
    # The run's figures reach the execution's output (each fake ingest read 10 rows and wrote 7).
    assert (commit["rows_read"], commit["rows_written"]) == (30, 21)
    assert commit["run_duration_s"] >= 0
    for table in tables:
        location = pipeline.glue.get_table(DatabaseName=OUTPUT_DATABASE, Name=table)["Table"][
            "StorageDescriptor"
        ]
        assert location["Location"].rstrip("/") == state.tables[table].location


def test_a_failed_glue_run_fails_the_execution_after_committing_the_others(pipeline) -> None:
    tables = ["customers", "orders", "payments"]
    pipeline.land(tables)
    assert pipeline.run({})["status"] == "SUCCEEDED"
    before, _ = pipeline.state.read()
    land_files(pipeline.s3, BUCKET, tables, "CDC-2.parquet")
    pipeline.outcome = lambda item, attempt: "FAILED" if item.table == "orders" else "SUCCEEDED"

    execution = pipeline.run({"load_type": "incremental"})

    assert execution["status"] == "FAILED"
    assert execution.get("error") == "TablesFailed"
    after, _ = pipeline.state.read()
    assert after.revision == before.revision + 1
    assert after.tables["orders"] == before.tables["orders"]
    for table in ("customers", "payments"):
        assert after.tables[table].run_id == after.run_id != before.tables[table].run_id
    # The three tables shared one Glue run; its failure fails only the table that failed in it.
    report = pipeline.storage.read_json(f"s3://{BUCKET}/state/runs/{after.run_id}/report.json")
    failed = {
        outcome["table"]: outcome["message"] for outcome in report["tables"] if outcome["status"] == "failed"
    }
    assert failed == {"orders": f"table 'orders': {GLUE_ERROR}"}


def test_glue_throttling_is_retried_and_the_table_still_succeeds(pipeline) -> None:
    pipeline.land(["customers", "orders"])
    pipeline.outcome = lambda item, attempt: (
        "THROTTLED" if item.table == "orders" and attempt < 3 else "SUCCEEDED"
    )

    execution = pipeline.run({})

    assert execution["status"] == "SUCCEEDED", execution
    assert pipeline.attempts["orders"] == 3
    assert sorted(pipeline.state.read()[0].tables) == ["customers", "orders"]


def test_a_run_with_nothing_to_ingest_skips_the_map_and_succeeds(pipeline) -> None:
    pipeline.s3.put_object(
        Bucket=BUCKET, Key="registry/tables.csv", Body=b"table_name,primary_key\nnone,id\n"
    )

    execution = pipeline.run({})

    assert execution["status"] == "SUCCEEDED", execution
    assert json.loads(execution["output"])["commit"]["succeeded_count"] == 0


def test_a_plan_of_a_thousand_tables_goes_through_the_distributed_map(pipeline) -> None:
    tables = [f"table_{n:04d}" for n in range(1000)]
    pipeline.land(tables)

    execution = pipeline.run({}, timeout_s=600)

    assert execution["status"] == "SUCCEEDED", execution
    assert len(pipeline.state.read()[0].tables) == 1000
    plan = json.loads(execution["output"])["plan"]
    # A thousand small tables share ten Glue runs (packs of at most 100 tables).
    assert plan["item_count"] == 1000 // PACK_MAX_TABLES
    # The items went to the Map through S3, never through the execution's payload.
    assert len(json.dumps(plan)) < 1_000


# ---------------------------------------------------------------- the run lease


def _lease(pipeline: Pipeline) -> Lease | None:
    return S3LeaseStore(f"s3://{BUCKET}/state", client=pipeline.s3).read()[0]


def _plant_lease(pipeline: Pipeline, run_id: str, owner: str, ttl_s: float = 3600) -> None:
    """A lease as another run would have left it."""
    store = S3LeaseStore(f"s3://{BUCKET}/state", client=pipeline.s3)
    _, version = store.read()
    lease = Lease.new(run_id, owner, datetime.now(UTC), ttl_s)
    if version is None:
        store.create(lease)
    else:
        store.replace(lease, version)


def _start(pipeline: Pipeline, run_input: dict[str, Any]) -> str:
    started = pipeline.sfn.start_execution(
        stateMachineArn=pipeline.state_machine_arn,
        name=f"test-{uuid.uuid4().hex}",
        input=json.dumps(run_input),
    )
    return str(started["executionArn"])


def _wait(pipeline: Pipeline, execution_arn: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        execution = pipeline.sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] != "RUNNING":
            return dict(execution)
        time.sleep(0.1)
    raise AssertionError(f"execution {execution_arn} still running after {timeout_s} s")


def test_a_run_holds_the_lease_for_its_execution_and_gives_it_back_once_committed(pipeline) -> None:
    pipeline.land(["customers"])
    seen: list[Lease | None] = []

    def outcome(item: WorkItem, attempt: int) -> str:
        seen.append(_lease(pipeline))
        return "SUCCEEDED"

    pipeline.outcome = outcome

    execution = pipeline.run({})

    assert execution["status"] == "SUCCEEDED", execution
    held = seen[0]
    assert held is not None
    assert held.owner == execution["executionArn"]
    assert held.run_id == pipeline.state.read()[0].run_id
    # The execution's timeout plus the margin for a Commit Lambda outliving it.
    lasts = datetime.fromisoformat(held.expires_at) - datetime.fromisoformat(held.started_at)
    assert lasts.total_seconds() == SUBSTITUTIONS["RunTimeoutSeconds"] + AWS_TTL_MARGIN_S
    assert _lease(pipeline) is None


def test_an_execution_started_during_a_run_fails_at_once_with_run_in_progress_and_no_glue_run(
    pipeline,
) -> None:
    pipeline.land(["customers", "orders"])
    ingesting, finish = threading.Event(), threading.Event()
    ingested_runs: list[str] = []

    def outcome(item: WorkItem, attempt: int) -> str:
        ingested_runs.append(item.run_id)
        ingesting.set()
        assert finish.wait(60), "the test never let the first run finish"
        return "SUCCEEDED"

    pipeline.outcome = outcome
    first = _start(pipeline, {"load_type": "full"})
    assert ingesting.wait(60), "the first run never reached its Glue run"

    second = pipeline.run({"load_type": "incremental"})

    finish.set()
    assert second["status"] == "FAILED"
    assert second["error"] == "RunInProgress"
    first_run = _lease_run_id_of(pipeline, first)
    assert second["cause"].startswith(f"run {first_run} has been in progress since ")
    assert f"(owner {first}; its lease expires at " in second["cause"]
    assert "this execution started no Glue run" in second["cause"]
    assert _wait(pipeline, first)["status"] == "SUCCEEDED"
    assert set(ingested_runs) == {first_run}  # the refused run never reached Glue
    assert pipeline.state.read()[0].run_id == first_run
    # The lease was given back: the schedule's next run goes ahead.
    land_files(pipeline.s3, BUCKET, ["customers"], "CDC-2.parquet")
    assert pipeline.run({})["status"] == "SUCCEEDED"


def _lease_run_id_of(pipeline: Pipeline, execution_arn: str) -> str:
    lease = _lease(pipeline)
    assert lease is not None
    assert lease.owner == execution_arn
    return lease.run_id


def test_the_lease_left_by_an_execution_that_ended_without_giving_it_back_is_taken_over(pipeline) -> None:
    pipeline.land(["customers"])
    ended = pipeline.run({})
    assert ended["status"] == "SUCCEEDED"
    # As a stopped or timed-out execution leaves it: unexpired, naming an execution no longer running.
    _plant_lease(pipeline, "20260101T000000Z-deadbeef", ended["executionArn"], ttl_s=86400)
    land_files(pipeline.s3, BUCKET, ["customers"], "CDC-2.parquet")

    execution = pipeline.run({})

    assert execution["status"] == "SUCCEEDED", execution
    assert _lease(pipeline) is None


def test_a_failed_commit_gives_the_lease_back_and_fails_the_execution_with_its_error(pipeline) -> None:
    pipeline.land(["customers"])

    def outcome(item: WorkItem, attempt: int) -> str:
        # Another run commits while this one ingests.
        state, version = pipeline.state.read()
        pipeline.state.write(state.with_tables({}, "rival-run", "2026-01-01T00:00:00+00:00"), version)
        return "SUCCEEDED"

    pipeline.outcome = outcome

    execution = pipeline.run({})

    assert execution["status"] == "FAILED"
    assert execution["error"] == "CommitConflictError"
    assert "rival-run" in execution["cause"]
    assert _lease(pipeline) is None


def test_a_run_whose_lease_was_taken_over_publishes_nothing_and_keeps_off_the_new_lease(pipeline) -> None:
    pipeline.land(["customers"])
    taker = "arn:aws:states:eu-west-1:123456789012:execution:cdc-pipeline:taker"

    def outcome(item: WorkItem, attempt: int) -> str:
        _plant_lease(pipeline, "20260101T000000Z-0taker0", taker)
        return "SUCCEEDED"

    pipeline.outcome = outcome

    execution = pipeline.run({})

    assert execution["status"] == "FAILED"
    assert execution["error"] == "LeaseLostError"
    assert "lost its run lease" in execution["cause"]
    assert "to run 20260101T000000Z-0taker0" in execution["cause"]
    assert pipeline.state.read() == (StateDocument(), None)
    lease = _lease(pipeline)
    assert lease is not None
    assert (lease.run_id, lease.owner) == ("20260101T000000Z-0taker0", taker)
