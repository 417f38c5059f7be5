"""The smoke test's steps (``cdc_pipeline.aws.smoke``) against a stack on moto.

The execution itself cannot run here (no Glue): a fake run does what a successful one leaves
behind for the smoke tables (each output Glue table over a snapshot folder, each table's tracker
in the state, Athena's answer to each count), from the rows landed for each. What is tested is the
smoke test's own logic: what it lands, what it checks, and that it removes what it made and
nothing else, whether the checks pass or fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.athena.models import QueryResults, athena_backends

from cdc_pipeline.aws.deploy import DeployError, Target
from cdc_pipeline.aws.s3 import S3StateStore
from cdc_pipeline.aws.smoke import SMOKE_ROWS, SmokeFailed, run_smoke
from cdc_pipeline.state import StateDocument, TableState

from .conftest import REGION

STACK = "cdc-smoke"
LANDING, STATE, OUTPUT = "landing", "pipeline-state", "pipeline-output"
SOURCE_DATABASE, OUTPUT_DATABASE = "raw", "cdc_smoke_current"
TOKEN = "0a1b2c3d"
TABLES = {f"cdc_smoke_{TOKEN}_a": 3, f"cdc_smoke_{TOKEN}_b": 2}  # each smoke table and its rows
OPERATORS_REGISTRY = "registry/tables-2026-01-01.csv"


def _stack_template(state_machine_arn: str, include: str, exclude: str) -> dict[str, Any]:
    return {
        "Parameters": {
            name: {"Type": "String", "Default": value}
            for name, value in {
                "SourceDatabase": SOURCE_DATABASE,
                "SourceDataLocation": f"s3://{LANDING}/raw/",
                "RegistryPrefix": f"s3://{LANDING}/registry/",
                "TableInclude": include,
                "TableExclude": exclude,
            }.items()
        },
        "Resources": {"Placeholder": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {
            "StateMachineArn": {"Value": state_machine_arn},
            "OutputDatabaseName": {"Value": OUTPUT_DATABASE},
            "StateLocation": {"Value": f"s3://{STATE}/state"},
            "OutputLocation": {"Value": f"s3://{OUTPUT}/current"},
        },
    }


class Account:
    """The deployed stack's surroundings in moto, and a fake of one successful run."""

    def __init__(self, session: Any, include: str = "", exclude: str = "") -> None:
        self.session = session
        self.s3 = session.client("s3")
        self.glue = session.client("glue")
        self.runs: list[dict[str, Any]] = []
        for bucket in (LANDING, STATE, OUTPUT):
            self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        for database in (SOURCE_DATABASE, OUTPUT_DATABASE):
            self.glue.create_database(DatabaseInput={"Name": database})
        self.state = S3StateStore(f"s3://{STATE}/state", client=self.s3)
        self.state.write(
            StateDocument(revision=1, run_id="r0", tables={"orders": _tracker("orders", 5)}), None
        )
        machine = session.client("stepfunctions").create_state_machine(
            name=f"{STACK}-cdc-pipeline",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        session.client("cloudformation").create_stack(
            StackName=STACK, TemplateBody=json.dumps(_stack_template(machine, include, exclude))
        )

    def objects(self, bucket: str) -> list[str]:
        return sorted(item["Key"] for item in self.s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    def pipeline(
        self, rows_athena_counts: dict[str, int] | None = None, status: str = "SUCCEEDED"
    ) -> Callable[..., Any]:
        """A run that ingests what was landed for the tables it is given, in one Glue run (a pack);
        Athena then counts ``rows_athena_counts`` (by default: the rows landed)."""

        def run(sfn: Any, state_machine_arn: str, run_input: dict[str, Any]) -> dict[str, Any]:
            self.runs.append(run_input)
            if status != "SUCCEEDED":
                return {
                    "executionArn": "arn:exec:1",
                    "status": status,
                    "error": "TablesFailed",
                    "cause": ", ".join(run_input["tables"]),
                }
            landed = {table: self._landed_rows(table) for table in run_input["tables"]}
            document, version = self.state.read()
            tables = dict(document.tables)
            for table, rows in landed.items():
                snapshot = f"current/{table}/snapshots/r1/"
                self.s3.put_object(Bucket=OUTPUT, Key=f"{snapshot}part-0.parquet", Body=b"PAR1")
                self.glue.create_table(
                    DatabaseName=OUTPUT_DATABASE,
                    TableInput={
                        "Name": table,
                        "StorageDescriptor": {"Location": f"s3://{OUTPUT}/{snapshot}"},
                    },
                )
                tables[table] = _tracker(table, rows)
                count = rows if rows_athena_counts is None else rows_athena_counts[table]
                athena_backends["123456789012"][REGION].query_results_queue.append(
                    QueryResults(
                        rows=[
                            {"Data": [{"VarCharValue": "_col0"}]},
                            {"Data": [{"VarCharValue": str(count)}]},
                        ],
                        column_info=[{"Name": "_col0", "Type": "bigint"}],
                    )
                )
            self.state.write(
                StateDocument(revision=document.revision + 1, run_id="r1", tables=tables), version
            )
            commit = {
                "revision": 2,
                "succeeded_count": len(landed),
                "failed_tables": [],
                "rows_written": sum(landed.values()),
            }
            plan = {"item_count": 1, "unchanged_count": 0}
            return {
                "executionArn": "arn:exec:1",
                "status": "SUCCEEDED",
                "output": json.dumps({"plan": plan, "commit": commit}),
            }

        return run

    def _landed_rows(self, table: str) -> int:
        """The data rows of the files under the source table's location (the header line left out)."""
        source = self.glue.get_table(DatabaseName=SOURCE_DATABASE, Name=table)["Table"]
        bucket, _, prefix = source["StorageDescriptor"]["Location"].removeprefix("s3://").partition("/")
        return sum(
            len(self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().splitlines()) - 1
            for item in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        )


def _tracker(table: str, rows: int) -> TableState:
    return TableState(
        watermark=None,
        location=f"s3://{OUTPUT}/current/{table}/snapshots/r1",
        rows=rows,
        run_id="r1",
        committed_at="2026-01-01T00:00:00Z",
        load_type="full",
        mode="append",
    )


@pytest.fixture
def session() -> Iterator[Any]:
    with mock_aws():
        yield boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )


def _smoke(account: Account, run: Callable[..., Any], messages: list[str] | None = None) -> dict[str, int]:
    return run_smoke(
        Target(stack=STACK, region=REGION),
        account.session,
        run=run,
        token=TOKEN,
        say=(messages.append if messages is not None else lambda message: None),
    )


def _assert_only_what_was_there_before_remains(account: Account, revision_at_least: int) -> None:
    assert account.objects(LANDING) == [OPERATORS_REGISTRY]
    assert account.objects(OUTPUT) == []
    leftovers = [key for key in account.objects(STATE) if "smoke" in key and "/history/" not in key]
    assert leftovers == []  # the Athena results; history/ keeps every revision, the cleanup's too
    assert [
        table["Name"] for table in account.glue.get_tables(DatabaseName=SOURCE_DATABASE)["TableList"]
    ] == []
    assert [
        table["Name"] for table in account.glue.get_tables(DatabaseName=OUTPUT_DATABASE)["TableList"]
    ] == []
    document, _ = account.state.read()
    assert sorted(document.tables) == ["orders"]
    assert document.revision >= revision_at_least


def test_the_smoke_test_runs_two_tables_counts_each_ones_rows_and_removes_everything_it_made(
    session: Any,
) -> None:
    account = Account(session)
    account.s3.put_object(Bucket=LANDING, Key=OPERATORS_REGISTRY, Body=b"table_name,primary_key\norders,id\n")
    messages: list[str] = []

    counted = _smoke(account, account.pipeline(), messages)

    assert counted == TABLES
    assert [len(SMOKE_ROWS), len(SMOKE_ROWS[:2])] == list(TABLES.values())
    assert account.runs == [{"load_type": "full", "tables": list(TABLES)}]
    assert any("2 tables in 1 Glue run(s) (a pack), 5 rows written" in message for message in messages)
    assert any("works end to end" in message for message in messages)
    # The run committed revision 2; forgetting the smoke tables is revision 3, in the history too.
    _assert_only_what_was_there_before_remains(account, revision_at_least=3)
    assert account.state.read()[0].run_id == f"smoke-cleanup-{TOKEN}"
    assert f"state/history/0000000003-smoke-cleanup-{TOKEN}.json" in account.objects(STATE)
    assert account.s3.get_object(Bucket=LANDING, Key=OPERATORS_REGISTRY)["Body"].read() == (
        b"table_name,primary_key\norders,id\n"
    )


def test_the_smoke_test_writes_a_registry_file_only_when_there_is_none_and_removes_it(session: Any) -> None:
    account = Account(session)
    seen: list[list[str]] = []
    pipeline = account.pipeline()

    def run(*args: Any) -> dict[str, Any]:
        seen.append(account.objects(LANDING))
        return pipeline(*args)

    _smoke(account, run)

    registry = f"registry/cdc_smoke_{TOKEN}.csv"
    assert registry in seen[0]
    assert account.runs[0]["tables"] == list(TABLES)
    assert account.objects(LANDING) == []


def test_a_row_lost_on_the_way_fails_the_smoke_test_and_it_still_cleans_up(session: Any) -> None:
    account = Account(session)
    account.s3.put_object(Bucket=LANDING, Key=OPERATORS_REGISTRY, Body=b"table_name,primary_key\n")
    first, second = TABLES
    lost = {first: 3, second: 1}

    with pytest.raises(SmokeFailed, match=rf"Athena counts 1 rows in {OUTPUT_DATABASE}.{second}, expected 2"):
        _smoke(account, account.pipeline(rows_athena_counts=lost))

    _assert_only_what_was_there_before_remains(account, revision_at_least=3)


def test_a_failed_execution_fails_the_smoke_test_naming_it_and_it_still_cleans_up(session: Any) -> None:
    account = Account(session)
    account.s3.put_object(Bucket=LANDING, Key=OPERATORS_REGISTRY, Body=b"table_name,primary_key\n")

    with pytest.raises(SmokeFailed, match=r"execution arn:exec:1 ended FAILED: TablesFailed"):
        _smoke(account, account.pipeline(status="FAILED"))

    _assert_only_what_was_there_before_remains(account, revision_at_least=1)


def test_a_stack_whose_table_patterns_leave_the_smoke_table_out_is_refused_before_landing(
    session: Any,
) -> None:
    account = Account(session, include="orders,customers")

    with pytest.raises(
        DeployError, match=r"leave out cdc_smoke_0a1b2c3d_a, cdc_smoke_0a1b2c3d_b: include cdc_smoke_\*"
    ):
        _smoke(account, account.pipeline())

    assert account.runs == []
    assert account.objects(LANDING) == []


def test_a_stack_never_deployed_past_its_first_change_set_is_refused_before_landing(session: Any) -> None:
    account = Account(session)
    session.client("cloudformation").delete_stack(StackName=STACK)
    session.client("cloudformation").create_change_set(
        StackName=STACK,
        ChangeSetName="never-executed",
        TemplateBody=json.dumps(_stack_template("arn:none", "", "")),
        ChangeSetType="CREATE",
    )

    with pytest.raises(
        DeployError, match=r"stack cdc-smoke is REVIEW_IN_PROGRESS: there is no deployed pipeline"
    ):
        _smoke(account, account.pipeline())

    assert account.runs == []
    assert account.objects(LANDING) == []
