"""A smoke test of a deployed stack: two tiny generated tables, one execution, the output read back.

``make smoke`` (``python3 -m cdc_pipeline.aws.smoke``) proves a deploy end to end on a real account:

1. lands two small CSV tables, ``cdc_smoke_<token>_a`` (three rows) and ``cdc_smoke_<token>_b``
   (two), under the stack's ``SourceDataLocation`` and describes them in its ``SourceDatabase``
   (and, only when the registry holds no CSV yet, writes a registry file naming them). Two small
   tables share one Glue run (a pack) unless the stack's ``PackMiB`` is 0, so a pack's work-item
   file, its Glue run and its per-table manifests are proved too;
2. runs one execution of the state machine for those tables alone (``load_type`` full) and waits
   for it, printing each Glue run's outcome;
3. checks the commit result and counts each output table's rows with Athena;
4. removes everything it made: the landed files and the source tables, the registry file it wrote,
   the output tables and snapshot files, the Athena results, and the tables' entries in the state
   (one more compare-and-swap revision, so the state's history records it).

It exits 0 when every check passed. Plain ``python3`` (3.11 or later) with boto3 runs it, like the
deploy.
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
    STUCK_STATUS,
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
# The smoke tables by suffix and their rows: two, of different counts, so that a pack of small
# tables is exercised and each table's count is its own.
SMOKE_TABLES = (("a", SMOKE_ROWS), ("b", SMOKE_ROWS[:2]))
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
        if stack.status in STUCK_STATUS:
            raise DeployError(
                f"stack {name} is {stack.status}: there is no deployed pipeline to test; make deploy says "
                f"how to get the stack out of {stack.status}"
            )
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


def smoke_csv(rows: Sequence[tuple[str, str, str]] = SMOKE_ROWS) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in COLUMNS])
    writer.writerows(rows)
    return buffer.getvalue().encode()


@dataclass
class Made:
    """What the smoke test created, so that cleaning up removes exactly that."""

    token: str
    source_keys: list[tuple[str, str]] = field(default_factory=list)
    source_tables: list[str] = field(default_factory=list)
    registry_key: tuple[str, str] | None = None

    @property
    def rows(self) -> dict[str, int]:
        """Each smoke table, by name, with the rows it lands."""
        return {f"{SMOKE_PREFIX}{self.token}_{suffix}": len(rows) for suffix, rows in SMOKE_TABLES}

    @property
    def tables(self) -> list[str]:
        return list(self.rows)


def land(s3: Any, glue: Any, stack: DeployedStack, made: Made) -> None:
    """Land each smoke table's CSV file, describe it in the source database, name them in the registry."""
    bucket, prefix = _split(stack.source_location)
    for table, (_, rows) in zip(made.tables, SMOKE_TABLES, strict=True):
        folder = f"{prefix}{table}/"
        s3.put_object(Bucket=bucket, Key=f"{folder}part-00000.csv", Body=smoke_csv(rows))
        made.source_keys.append((bucket, f"{folder}part-00000.csv"))
        glue.create_table(
            DatabaseName=stack.source_database,
            TableInput={
                "Name": table,
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
        made.source_tables.append(table)
    registry_bucket, registry_prefix = _split(stack.registry_prefix)
    listing = s3.list_objects_v2(Bucket=registry_bucket, Prefix=registry_prefix)
    if not any(item["Key"].endswith(".csv") for item in listing.get("Contents", [])):
        # Without any registry file every run stops; with one, an unnamed table is appended as is,
        # so the smoke test never writes a newer registry file over the operator's.
        key = f"{registry_prefix}{SMOKE_PREFIX}{made.token}.csv"
        body = "table_name,primary_key\n" + "".join(f"{table},id\n" for table in made.tables)
        s3.put_object(Bucket=registry_bucket, Key=key, Body=body.encode())
        made.registry_key = (registry_bucket, key)


def run_execution(sfn: Any, state_machine_arn: str, run_input: dict[str, Any]) -> dict[str, Any]:
    """Start the execution and follow it table by table, as ``cdc-pipeline start`` does."""
    from cdc_pipeline.aws.executions import follow_run, start_run

    arn = start_run(sfn, state_machine_arn, run_input["load_type"], run_input["tables"])
    print(f"started {arn}", flush=True)
    return follow_run(sfn, arn, lambda table, message: print(f"[{table}] {message}", flush=True))


def check_execution(execution: dict[str, Any], tables: Sequence[str]) -> dict[str, Any]:
    """The output (plan and commit results) of a successful execution that ingested ``tables``."""
    if execution.get("status") != "SUCCEEDED":
        raise SmokeFailed(
            f"execution {execution.get('executionArn')} ended {execution.get('status')}: "
            f"{execution.get('error', '')} {execution.get('cause', '')}".strip()
            + " (open it in the Step Functions console; the Glue job's logs are in the GlueLogGroups output)"
        )
    output = dict(json.loads(execution.get("output") or "{}"))
    commit = output.get("commit", {})
    failed = [table for table in tables if table in commit.get("failed_tables", [])]
    if commit.get("succeeded_count", 0) < len(tables) or failed:
        raise SmokeFailed(f"the run did not commit {', '.join(failed or tables)}: {json.dumps(commit)}")
    return output


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

    for bucket, key in [*made.source_keys, *([made.registry_key] if made.registry_key else [])]:
        attempt(f"s3://{bucket}/{key}", partial(s3.delete_object, Bucket=bucket, Key=key))
    for table in made.source_tables:
        attempt(
            f"{stack.source_database}.{table}",
            partial(glue.delete_table, DatabaseName=stack.source_database, Name=table),
        )
    for table in made.tables:
        if _table_exists(glue, stack.output_database, table):
            attempt(
                f"{stack.output_database}.{table}",
                partial(glue.delete_table, DatabaseName=stack.output_database, Name=table),
            )
    for location in [*(f"{stack.output_location}/{table}/" for table in made.tables), results_location]:
        attempt(location, partial(_delete_prefix, s3, location))
    attempt(
        f"{', '.join(made.tables)} in the state",
        lambda: _forget_tables(s3, stack, made.tables, f"smoke-cleanup-{made.token}"),
    )
    if failures:
        raise SmokeFailed("cleaning up left " + "; ".join(failures))
    say(f"removed the smoke tables {', '.join(made.tables)}, their output and their state entries")


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


def _forget_tables(s3: Any, stack: DeployedStack, tables: Sequence[str], run_id: str) -> None:
    """Drop the tables' trackers in one compare-and-swap revision (retried once on a race)."""
    from cdc_pipeline.aws.s3 import S3StateStore
    from cdc_pipeline.errors import CommitConflictError

    store = S3StateStore(stack.state_location, client=s3)
    for attempt in range(2):
        document, version = store.read()
        if not set(tables) & set(document.tables):
            return
        forgotten = replace(
            document,
            revision=document.revision + 1,
            run_id=run_id,
            committed_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            tables={name: state for name, state in document.tables.items() if name not in tables},
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
) -> dict[str, int]:
    """Land, run, check and clean up; the rows Athena counted in each output table, by table."""
    stack = DeployedStack.describe(session.client("cloudformation"), target.stack)
    made = Made(token=token or uuid.uuid4().hex[:8])
    left_out = [table for table in made.tables if not stack.selects(table)]
    if left_out:
        raise DeployError(
            f"the stack's TableInclude/TableExclude leave out {', '.join(left_out)}: "
            f"include {SMOKE_PREFIX}* to smoke-test it"
        )
    results_location = f"{stack.state_location}/smoke/{SMOKE_PREFIX}{made.token}/athena/"
    try:
        landed = ", ".join(f"{table} ({rows} rows)" for table, rows in made.rows.items())
        say(f"landing {landed} under {stack.source_location}")
        land(session.client("s3"), session.client("glue"), stack, made)
        execution = run(
            session.client("stepfunctions"),
            stack.state_machine_arn,
            {"load_type": "full", "tables": made.tables},
        )
        output = check_execution(execution, made.tables)
        commit, glue_runs = output["commit"], output.get("plan", {}).get("item_count")
        say(
            f"committed revision {commit.get('revision')}: {len(made.tables)} tables in {glue_runs} Glue "
            f"run(s){' (a pack)' if glue_runs == 1 else ''}, {commit.get('rows_written')} rows written"
        )
        counted: dict[str, int] = {}
        for table, expected in made.rows.items():
            counted[table] = count_rows(
                session.client("athena"),
                stack,
                table,
                workgroup=workgroup,
                results_location=results_location,
                timeout_s=athena_timeout_s,
            )
            if counted[table] != expected:
                raise SmokeFailed(
                    f"Athena counts {counted[table]} rows in {stack.output_database}.{table}, "
                    f"expected {expected}"
                )
        read = ", ".join(
            f"{rows} rows from {stack.output_database}.{table}" for table, rows in counted.items()
        )
        say(f"Athena reads {read}: the deploy works end to end")
        return counted
    finally:
        if keep:
            say(f"kept {', '.join(made.tables)} and their output (--keep)")
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
