"""A smoke test of a deployed stack: one tiny generated table, one execution, the output read back.

``make smoke`` (``python3 -m cdc_pipeline.aws.smoke``) proves a deploy end to end on a real account:

1. lands a three-row CSV table ``cdc_smoke_<token>`` under the stack's ``SourceDataLocation`` and
   describes it in its ``SourceDatabase`` (and, only when the registry holds no CSV yet, writes a
   registry file naming it);
2. runs one execution of the state machine for that table alone (``load_type`` full) and waits
   for it, printing each table's outcome;
3. checks the commit result and counts the output table's rows with Athena;
4. removes everything it made: the landed file and the source table, the registry file it wrote,
   the output table and snapshot files, the Athena results, and the table's entry in the state
   (one more compare-and-swap revision, so the state's history records it).

It exits 0 when every check passed. Plain ``python3`` with boto3 runs it, like the deploy.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from cdc_pipeline.aws.deploy import (
    DeployError,
    Target,
    check_credentials,
    describe_stack,
    read_samconfig,
    resolve_target,
)

SMOKE_PREFIX = "cdc_smoke_"
SMOKE_ROWS = (
    ("1", "alpha", "2026-01-01T00:00:00Z"),
    ("2", "beta", "2026-01-01T00:00:01Z"),
    ("3", "gamma", "2026-01-01T00:00:02Z"),
)
COLUMNS = (("id", "bigint"), ("name", "string"), ("updated_at", "string"))
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
LAZY_SIMPLE = "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe"
ATHENA_POLL_SECONDS = 2.0

Say = Callable[[str], None]
RunExecution = Callable[[Any, str, dict[str, Any]], dict[str, Any]]


class SmokeFailed(Exception):
    """A check of the smoke test failed; the message says which and where to look."""


@dataclass(frozen=True)
class DeployedStack:
    """What the smoke test needs of the stack: its outputs and the source parameters."""

    name: str
    state_machine_arn: str
    source_database: str
    source_location: str
    registry_prefix: str
    output_database: str
    state_location: str
    output_location: str
    table_include: tuple[str, ...] = ()
    table_exclude: tuple[str, ...] = ()

    @classmethod
    def describe(cls, cloudformation: Any, name: str) -> DeployedStack:
        stack = describe_stack(cloudformation, name)
        if stack is None:
            raise DeployError(f"stack {name} does not exist here: run make deploy first (or give REGION=)")
        try:
            return cls(
                name=name,
                state_machine_arn=stack.outputs["StateMachineArn"],
                source_database=stack.parameters["SourceDatabase"],
                source_location=stack.parameters["SourceDataLocation"],
                registry_prefix=stack.parameters["RegistryPrefix"],
                output_database=stack.outputs["OutputDatabaseName"],
                state_location=stack.outputs["StateLocation"],
                output_location=stack.outputs["OutputLocation"],
                table_include=_patterns(stack.parameters.get("TableInclude", "")),
                table_exclude=_patterns(stack.parameters.get("TableExclude", "")),
            )
        except KeyError as exc:
            raise DeployError(f"stack {name} has no {exc.args[0]}: is it a cdc-pipeline stack?") from exc

    def selects(self, table: str) -> bool:
        """Whether the Plan would list ``table`` (the stack's TableInclude and TableExclude)."""
        included = not self.table_include or any(fnmatch.fnmatch(table, p) for p in self.table_include)
        return included and not any(fnmatch.fnmatch(table, p) for p in self.table_exclude)


def _patterns(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def smoke_csv() -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in COLUMNS])
    writer.writerows(SMOKE_ROWS)
    return buffer.getvalue().encode()


@dataclass
class Made:
    """What the smoke test created, so that cleaning up removes exactly that."""

    table: str
    source_keys: list[tuple[str, str]] = field(default_factory=list)
    source_table: bool = False
    registry_key: tuple[str, str] | None = None


def land(s3: Any, glue: Any, stack: DeployedStack, made: Made) -> None:
    """Land the smoke table's one CSV file, describe it in the source database, name it in the registry."""
    bucket, prefix = _split(stack.source_location)
    folder = f"{prefix}{made.table}/"
    s3.put_object(Bucket=bucket, Key=f"{folder}part-00000.csv", Body=smoke_csv())
    made.source_keys.append((bucket, f"{folder}part-00000.csv"))
    glue.create_table(
        DatabaseName=stack.source_database,
        TableInput={
            "Name": made.table,
            "Description": "cdc-pipeline smoke test table; make smoke removes it",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "csv", "skip.header.line.count": "1"},
            "StorageDescriptor": {
                "Columns": [{"Name": name, "Type": kind} for name, kind in COLUMNS],
                "Location": f"s3://{bucket}/{folder}",
                "InputFormat": TEXT_INPUT,
                "OutputFormat": TEXT_OUTPUT,
                "SerdeInfo": {"SerializationLibrary": LAZY_SIMPLE, "Parameters": {"field.delim": ","}},
            },
        },
    )
    made.source_table = True
    registry_bucket, registry_prefix = _split(stack.registry_prefix)
    listing = s3.list_objects_v2(Bucket=registry_bucket, Prefix=registry_prefix)
    if not any(item["Key"].endswith(".csv") for item in listing.get("Contents", [])):
        # Without any registry file every run stops; with one, an unnamed table is appended as is,
        # so the smoke test never writes a newer registry file over the operator's.
        key = f"{registry_prefix}{made.table}.csv"
        s3.put_object(
            Bucket=registry_bucket, Key=key, Body=f"table_name,primary_key\n{made.table},id\n".encode()
        )
        made.registry_key = (registry_bucket, key)


def run_execution(sfn: Any, state_machine_arn: str, run_input: dict[str, Any]) -> dict[str, Any]:
    """Start the execution and follow it table by table, as ``cdc-pipeline start`` does."""
    from cdc_pipeline.aws.executions import follow_run, start_run

    arn = start_run(sfn, state_machine_arn, run_input["load_type"], run_input["tables"])
    print(f"started {arn}", flush=True)
    return follow_run(sfn, arn, lambda table, message: print(f"[{table}] {message}", flush=True))


def check_execution(execution: dict[str, Any], table: str) -> dict[str, Any]:
    """The commit result of a successful execution that ingested ``table``."""
    if execution.get("status") != "SUCCEEDED":
        raise SmokeFailed(
            f"execution {execution.get('executionArn')} ended {execution.get('status')}: "
            f"{execution.get('error', '')} {execution.get('cause', '')}".strip()
            + " (open it in the Step Functions console; the Glue job's logs are in the GlueLogGroups output)"
        )
    commit = dict(json.loads(execution.get("output") or "{}").get("commit", {}))
    if commit.get("succeeded_count", 0) < 1 or table in commit.get("failed_tables", []):
        raise SmokeFailed(f"the run did not commit {table}: {json.dumps(commit)}")
    return commit


def count_rows(
    athena: Any,
    stack: DeployedStack,
    table: str,
    *,
    workgroup: str,
    results_location: str,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``count(*)`` of the output table, by Athena."""
    query = athena.start_query_execution(
        # Both names are the stack's own output and the generated cdc_smoke_<hex>: nothing user-typed.
        QueryString=f'SELECT count(*) FROM "{stack.output_database}"."{table}"',  # noqa: S608
        WorkGroup=workgroup,
        ResultConfiguration={"OutputLocation": results_location},
    )["QueryExecutionId"]
    deadline = time.monotonic() + timeout_s
    while True:
        status = athena.get_query_execution(QueryExecutionId=query)["QueryExecution"]["Status"]
        if status["State"] == "SUCCEEDED":
            break
        if status["State"] in ("FAILED", "CANCELLED"):
            raise SmokeFailed(
                f"Athena could not read {stack.output_database}.{table}: {status.get('StateChangeReason')} "
                "(with Lake Formation, grant yourself SELECT on it; see docs/aws.md)"
            )
        if time.monotonic() > deadline:
            raise SmokeFailed(f"Athena query {query} did not finish in {timeout_s:.0f} s")
        sleep(ATHENA_POLL_SECONDS)
    rows = athena.get_query_results(QueryExecutionId=query)["ResultSet"]["Rows"]
    return int(rows[1]["Data"][0]["VarCharValue"])  # rows[0] is the header


def clean_up(session: Any, stack: DeployedStack, made: Made, results_location: str, say: Say) -> None:
    """Remove what the smoke test made, its output and its state entry; report what could not go."""
    s3 = session.client("s3")
    glue = session.client("glue")
    failures: list[str] = []

    def attempt(what: str, action: Callable[[], Any]) -> None:
        from botocore.exceptions import ClientError

        try:
            action()
        except ClientError as exc:
            failures.append(f"{what}: {exc}")

    for bucket, key in made.source_keys:
        attempt(f"s3://{bucket}/{key}", partial(s3.delete_object, Bucket=bucket, Key=key))
    if made.registry_key:
        bucket, key = made.registry_key
        attempt(f"s3://{bucket}/{key}", lambda: s3.delete_object(Bucket=bucket, Key=key))
    if made.source_table:
        attempt(
            f"{stack.source_database}.{made.table}",
            lambda: glue.delete_table(DatabaseName=stack.source_database, Name=made.table),
        )
    if _table_exists(glue, stack.output_database, made.table):
        attempt(
            f"{stack.output_database}.{made.table}",
            lambda: glue.delete_table(DatabaseName=stack.output_database, Name=made.table),
        )
    for location in (f"{stack.output_location}/{made.table}/", results_location):
        attempt(location, partial(_delete_prefix, s3, location))
    attempt(f"{made.table} in the state", lambda: _forget_table(s3, stack, made.table))
    if failures:
        raise SmokeFailed("cleaning up left " + "; ".join(failures))
    say(f"removed the smoke table {made.table}, its output and its state entry")


def _table_exists(glue: Any, database: str, table: str) -> bool:
    try:
        glue.get_table(DatabaseName=database, Name=table)
    except glue.exceptions.EntityNotFoundException:
        return False
    return True


def _delete_prefix(s3: Any, location: str) -> None:
    bucket, prefix = _split(location)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _forget_table(s3: Any, stack: DeployedStack, table: str) -> None:
    """Drop the table's tracker in one compare-and-swap revision (retried once on a race)."""
    from cdc_pipeline.aws.s3 import S3StateStore
    from cdc_pipeline.errors import CommitConflictError

    store = S3StateStore(stack.state_location, client=s3)
    for attempt in range(2):
        document, version = store.read()
        if table not in document.tables:
            return
        forgotten = replace(
            document,
            revision=document.revision + 1,
            run_id=f"smoke-cleanup-{table}",
            committed_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            tables={name: state for name, state in document.tables.items() if name != table},
        )
        try:
            store.write(forgotten, version)
            return
        except CommitConflictError:
            if attempt == 1:
                raise


def run_smoke(
    target: Target,
    session: Any,
    *,
    run: RunExecution = run_execution,
    workgroup: str = "primary",
    token: str | None = None,
    keep: bool = False,
    athena_timeout_s: float = 300,
    say: Say = print,
) -> int:
    """Land, run, check and clean up; the number of rows Athena counted in the output table."""
    stack = DeployedStack.describe(session.client("cloudformation"), target.stack)
    made = Made(table=f"{SMOKE_PREFIX}{token or uuid.uuid4().hex[:8]}")
    if not stack.selects(made.table):
        raise DeployError(
            f"the stack's TableInclude/TableExclude leave out {made.table}: "
            f"include {SMOKE_PREFIX}* to smoke-test it"
        )
    results_location = f"{stack.state_location}/smoke/{made.table}/athena/"
    try:
        say(f"landing {made.table} ({len(SMOKE_ROWS)} rows) under {stack.source_location}")
        land(session.client("s3"), session.client("glue"), stack, made)
        execution = run(
            session.client("stepfunctions"),
            stack.state_machine_arn,
            {"load_type": "full", "tables": [made.table]},
        )
        commit = check_execution(execution, made.table)
        say(f"committed revision {commit.get('revision')}: {commit.get('rows_written')} rows written")
        rows = count_rows(
            session.client("athena"),
            stack,
            made.table,
            workgroup=workgroup,
            results_location=results_location,
            timeout_s=athena_timeout_s,
        )
        if rows != len(SMOKE_ROWS):
            raise SmokeFailed(
                f"Athena counts {rows} rows in {stack.output_database}.{made.table}, "
                f"expected {len(SMOKE_ROWS)}"
            )
        say(
            f"Athena reads {rows} rows from {stack.output_database}.{made.table}: the deploy works end to end"
        )
        return rows
    finally:
        if keep:
            say(f"kept {made.table} and its output (--keep)")
        else:
            clean_up(session, stack, made, results_location, say)


def main(argv: Sequence[str] | None = None, root: Path = Path()) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cdc_pipeline.aws.smoke", description=__doc__)
    parser.add_argument("--stack", default="cdc-pipeline")
    parser.add_argument("--region", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--workgroup", default="primary", help="Athena workgroup of the row count")
    parser.add_argument("--keep", action="store_true", help="leave the smoke table and its output in place")
    args = parser.parse_args(argv)
    try:
        target = resolve_target(
            args.stack, args.region, args.profile, read_samconfig(root / "samconfig.toml")
        )
        session = target.session()
        check_credentials(target, session)
        run_smoke(target, session, workgroup=args.workgroup, keep=args.keep)
    except (DeployError, SmokeFailed) as exc:
        print(f"smoke: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
