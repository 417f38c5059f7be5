"""Each role of the deployed stack may make every AWS call its code makes, checked offline.

The stack is deployed in moto (``test_stack_deploy.Deployment``) and runs three times: a
partitioned and a plain table, the partitioned one's partitions created, then moved and dropped,
and the oldest snapshots expired. Every boto3 call the Plan and Commit handlers and the Glue job's
driver make is recorded with the role its code runs as; the state machine's own calls are read
from its deployed definition and what the executions left in S3 (moto's interpreter makes them
without a client). Each call is turned into the IAM actions and resources AWS authorizes it by
(plus the KMS use of an SSE-KMS bucket), and each must be allowed by the inline policy moto holds
for the role, with the stack's own values substituted. moto does not enforce IAM, so this is what
catches a role missing a permission its code needs before a real account does.

What is not recorded: Spark's own reads and writes in the Glue job (the stand-in writes one file
per folder with the job's client instead) and the calls AWS services make for the stack (log
delivery, X-Ray, Glue fetching its script).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdc_pipeline.aws.s3 import S3LeaseStore
from cdc_pipeline.lease import acquire

from .conftest import REGION, SOURCE_DATABASE
from .fakes import create_source_tables, land_files
from .test_stack_deploy import (
    EXISTING_BUCKETS_KMS_AND_FLEX,
    LANDING_BUCKET,
    ApiCall,
    Deployment,
    Packaged,
    deployed,
    package,
)

ACCOUNT = "123456789012"
PARTITION = "aws"
S3_VIA_SERVICE = (("kms:ViaService", f"s3.{REGION}.amazonaws.com"),)
# A bucket location's KMS key, by the parameter that names each: (location parameter or output, key).
KEYED_LOCATIONS = (
    ("SourceDataLocation", "SourceKmsKeyArn"),
    ("RegistryPrefix", "RegistryKmsKeyArn"),
    ("OutputLocation", "OutputKmsKeyArn"),
    ("StateLocation", "StateKmsKeyArn"),
)


@dataclass(frozen=True)
class Need:
    """One IAM authorization a call needs: ``action`` on ``resource`` with the request's context."""

    role: str
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    why: str = ""

    def __str__(self) -> str:
        where = f" ({dict(self.context)})" if self.context else ""
        return f"{self.role}: {self.action} on {self.resource}{where}, for {self.why}"


# ---------------------------------------------------------------- calls -> IAM


S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",  # authorized as s3:GetObject
    "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
}
S3_BUCKET_ACTIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket"}
GLUE_TABLE_OPERATIONS = {
    "GetTable",
    "CreateTable",
    "UpdateTable",
    "GetPartitions",
    "BatchCreatePartition",
    "BatchUpdatePartition",
    "BatchDeletePartition",
}


def _glue(resource: str) -> str:
    return f"arn:{PARTITION}:glue:{REGION}:{ACCOUNT}:{resource}"


def needs_of(call: ApiCall, keys: dict[str, str]) -> list[Need]:
    """The IAM authorizations one recorded call needs; ``keys`` maps s3:// locations to KMS keys.

    Raises
    ------
    AssertionError
        For a call this test does not know how AWS authorizes: add it here.
    """
    p, why = call.params, f"{call.service}:{call.operation}"
    if call.service == "s3" and call.operation in S3_BUCKET_ACTIONS:
        return [
            Need(call.role, S3_BUCKET_ACTIONS[call.operation], f"arn:{PARTITION}:s3:::{p['Bucket']}", why=why)
        ]
    if call.service == "s3" and call.operation in (*S3_OBJECT_ACTIONS, "DeleteObjects"):
        keys_named = (
            [entry["Key"] for entry in p["Delete"]["Objects"]]
            if call.operation == "DeleteObjects"
            else [p["Key"]]
        )
        action = S3_OBJECT_ACTIONS.get(call.operation, "s3:DeleteObject")  # DeleteObjects: per object
        needs = [
            Need(call.role, action, f"arn:{PARTITION}:s3:::{p['Bucket']}/{key}", why=why)
            for key in keys_named
        ]
        if call.operation == "DeleteObject" and "IfMatch" in p:
            # A delete conditional on an ETag needs s3:GetObject too (S3 user guide, conditional deletes).
            needs.append(
                Need(call.role, "s3:GetObject", f"arn:{PARTITION}:s3:::{p['Bucket']}/{p['Key']}", why=why)
            )
        return needs + _kms_needs(call.role, call.operation, p["Bucket"], keys_named, keys, why)
    if call.service == "stepfunctions" and call.operation == "DescribeExecution":
        return [Need(call.role, "states:DescribeExecution", p["executionArn"], why=why)]
    if call.service == "glue" and call.operation == "GetTables":
        database = p["DatabaseName"]
        resources = ["catalog", f"database/{database}", f"table/{database}/*"]
        return [Need(call.role, "glue:GetTables", _glue(resource), why=why) for resource in resources]
    if call.service == "glue" and call.operation in GLUE_TABLE_OPERATIONS:
        database = p["DatabaseName"]
        table = p.get("TableName") or p.get("Name") or p["TableInput"]["Name"]
        resources = ["catalog", f"database/{database}", f"table/{database}/{table}"]
        return [Need(call.role, f"glue:{call.operation}", _glue(resource), why=why) for resource in resources]
    raise AssertionError(
        f"{call.role} called {why}, which this test cannot map to IAM actions: add it to needs_of"
    )


def _kms_needs(
    role: str, operation: str, bucket: str, object_keys: list[str], keys: dict[str, str], why: str
) -> list[Need]:
    """SSE-KMS: reading an object decrypts its data key, writing one generates a data key."""
    action = {"GetObject": "kms:Decrypt", "PutObject": "kms:GenerateDataKey"}.get(operation)
    if action is None:  # HeadObject and deletes never use the key
        return []
    needs = []
    for object_key in object_keys:
        key = _key_of(f"s3://{bucket}/{object_key}", keys)
        if key:
            needs.append(
                Need(role, action, key, S3_VIA_SERVICE, why=f"{why} of SSE-KMS s3://{bucket}/{object_key}")
            )
    return needs


def _key_of(uri: str, keys: dict[str, str]) -> str | None:
    """The KMS key of the longest keyed location holding ``uri``."""
    holding = [location for location in keys if uri.startswith(location.rstrip("/") + "/")]
    return keys[max(holding, key=len)] if holding else None


def state_machine_needs(deployment: Deployment, role: str, keys: dict[str, str]) -> list[Need]:
    """What the state machine's integrations call for it: from its deployed definition (Lambda and
    Glue tasks, the Distributed Map) and from what its executions read and wrote in S3."""
    arn = deployment.outputs["StateMachineArn"]
    definition = json.loads(deployment.sfn.describe_state_machine(stateMachineArn=arn)["definition"])
    needs: list[Need] = []
    for name, state in _states(definition["States"]):
        resource = str(state.get("Resource", ""))
        if resource.endswith(":states:::lambda:invoke"):
            needs.append(Need(role, "lambda:InvokeFunction", state["Parameters"]["FunctionName"], why=name))
        elif resource.endswith(":states:::glue:startJobRun.sync"):
            job = _glue(f"job/{state['Parameters']['JobName']}")
            # What the .sync integration pattern calls to start the run, wait for it and stop it.
            for action in ("glue:StartJobRun", "glue:GetJobRun", "glue:GetJobRuns", "glue:BatchStopJobRun"):
                needs.append(Need(role, action, job, why=name))
        elif resource:
            raise AssertionError(f"state {name} calls {resource}: add its IAM actions to this test")
        processor = state.get("ItemProcessor", {}).get("ProcessorConfig", {})
        if processor.get("Mode") == "DISTRIBUTED":
            needs.append(Need(role, "states:StartExecution", arn, why=f"{name} starts child executions"))
            children = arn.replace(":stateMachine:", ":execution:") + f"/{state.get('Label', name)}:child"
            for action in ("states:DescribeExecution", "states:StopExecution"):
                needs.append(Need(role, action, children, why=f"{name} follows its child executions"))
    for execution in deployment.executions:
        plan = json.loads(execution["output"])["plan"]
        needs += needs_of(
            ApiCall(role, "s3", "GetObject", {"Bucket": plan["items_bucket"], "Key": plan["items_key"]}),
            keys,
        )
    writer = next(
        state["ResultWriter"]["Parameters"]
        for _, state in _states(definition["States"])
        if "ResultWriter" in state
    )
    written = deployment.s3.list_objects_v2(Bucket=writer["Bucket"], Prefix=writer["Prefix"]).get(
        "Contents", []
    )
    assert written, "the Map wrote no results: the ResultWriter's needs would go unchecked"
    for item in written:
        put = ApiCall(role, "s3", "PutObject", {"Bucket": writer["Bucket"], "Key": item["Key"]})
        needs += needs_of(put, keys)
        # A multipart upload of results reads its parts back: Decrypt too, with an SSE-KMS bucket.
        key = _key_of(f"s3://{writer['Bucket']}/{item['Key']}", keys)
        if key:
            needs.append(Need(role, "kms:Decrypt", key, S3_VIA_SERVICE, why="ResultWriter multipart upload"))
    return needs


def _states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        yield name, state
        for nested in ("ItemProcessor", "Iterator"):
            if nested in state:
                yield from _states(state[nested]["States"])
        for branch in state.get("Branches", []):
            yield from _states(branch["States"])


# ---------------------------------------------------------------- policy evaluation


def allowed(statements: Iterable[dict[str, Any]], need: Need) -> bool:
    """Whether an Allow statement grants ``need`` (Action, Resource with IAM wildcards, and the
    StringEquals/StringLike/ArnLike conditions these policies use, against the need's context)."""
    return any(
        statement.get("Effect") == "Allow"
        and _matches(statement.get("Action", []), need.action, case_sensitive=False)
        and _matches(statement.get("Resource", []), need.resource, case_sensitive=True)
        and _conditions_hold(statement.get("Condition", {}), dict(need.context))
        for statement in statements
    )


def _matches(patterns: str | list[str | None], value: str, *, case_sensitive: bool) -> bool:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    for given in patterns:
        if given is None:  # moto keeps an !If's AWS::NoValue in a list as None
            continue
        # IAM wildcards are * and ? only; fnmatch's [...] must not apply.
        pattern = given.replace("[", "[[]")
        if case_sensitive and fnmatch.fnmatchcase(value, pattern):
            return True
        if not case_sensitive and fnmatch.fnmatchcase(value.lower(), pattern.lower()):
            return True
    return False


def _conditions_hold(conditions: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, value in tests.items():
            expected = [value] if isinstance(value, str) else value
            if key not in context or operator not in ("StringEquals", "StringLike", "ArnLike"):
                return False
            if operator == "StringEquals" and context[key] not in expected:
                return False
            if operator != "StringEquals" and not _matches(expected, context[key], case_sensitive=True):
                return False
    return True


def denied(deployment: Deployment, needs: Iterable[Need]) -> list[str]:
    """Each need its role's inline policy does not grant, once (as text naming role, call and resource)."""
    statements: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for need in dict.fromkeys(needs):
        if need.role not in statements:
            statements[need.role] = list(deployment.role_statements(need.role).values())
        if not allowed(statements[need.role], need):
            missing.append(str(need))
    return missing


# ---------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def packaged() -> Packaged:
    return package()


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, boto_session: Any, packaged: Packaged
) -> Iterator[Deployment]:
    """The stack deployed as ``test_stack_deploy`` deploys it, with a test's parameters."""
    yield from deployed(monkeypatch, boto_session, packaged, getattr(request, "param", None))


def _keyed_locations(deployment: Deployment) -> dict[str, str]:
    values = {**deployment.parameters, **deployment.outputs}
    return {values[location]: values[key] for location, key in KEYED_LOCATIONS if values.get(key)}


def _run_three_times(deployment: Deployment) -> None:
    """A partitioned and a plain table: created, then changed twice (partitions moved and dropped,
    the oldest snapshots expired with RetainedSnapshots 2)."""
    tables = ["customers", "orders"]
    create_source_tables(deployment.glue, SOURCE_DATABASE, tables, bucket=LANDING_BUCKET, s3=deployment.s3)
    deployment.s3.put_object(
        Bucket=LANDING_BUCKET,
        Key="registry/tables.csv",
        Body=b"table_name,primary_key,partition_by\ncustomers,id,name\norders,id,\n",
    )
    for run in range(3):
        if run:
            land_files(deployment.s3, LANDING_BUCKET, tables, f"CDC-{run}.parquet")
        if run == 1:
            # The lease as an execution that was stopped leaves it: the next Plan asks whether that
            # execution still runs, then takes the lease over.
            leases = S3LeaseStore(deployment.outputs["StateLocation"], client=deployment.s3)
            acquire(leases, "run-stopped", deployment.executions[0]["executionArn"], 3600)
        execution = deployment.run(deployment.packaged.schedule_input)
        assert execution["status"] == "SUCCEEDED", execution
        deployment.executions.append(execution)


@pytest.mark.parametrize(
    "deployment",
    [None, EXISTING_BUCKETS_KMS_AND_FLEX],
    indirect=True,
    ids=["buckets of the stack", "existing buckets and KMS keys"],
)
def test_every_aws_call_of_the_pipeline_is_allowed_to_the_role_its_code_runs_as(deployment) -> None:
    _run_three_times(deployment)
    keys = _keyed_locations(deployment)
    roles = {call.role for call in deployment.calls}
    assert roles == {"PlanFunctionRole", "CommitFunctionRole", "GlueJobRole"}
    operations = {(call.role, call.operation) for call in deployment.calls}
    # The paths that matter were taken: partitions published, a manifest replaced, snapshots expired.
    for expected in (
        ("CommitFunctionRole", "BatchCreatePartition"),
        ("CommitFunctionRole", "BatchUpdatePartition"),
        ("CommitFunctionRole", "BatchDeletePartition"),
        ("CommitFunctionRole", "DeleteObjects"),
        ("GlueJobRole", "DeleteObjects"),
        # The run lease: taken, asked about, taken over, released.
        ("PlanFunctionRole", "PutObject"),
        ("PlanFunctionRole", "DescribeExecution"),
        ("CommitFunctionRole", "DeleteObject"),
    ):
        assert expected in operations, f"the runs never made {expected}: the check would be vacuous"

    needs = [need for call in deployment.calls for need in needs_of(call, keys)]
    needs += state_machine_needs(deployment, _state_machine_role(deployment), keys)

    missing = denied(deployment, needs)
    assert not missing, "calls their role may not make:\n" + "\n".join(missing)


def _state_machine_role(deployment: Deployment) -> str:
    role = deployment.template["Resources"]["CdcStateMachine"]["Properties"]["RoleArn"]
    return str(role["Fn::GetAtt"][0])


def test_a_call_the_policy_does_not_grant_is_reported_naming_role_action_and_resource() -> None:
    statements = [
        {
            "Effect": "Allow",
            "Action": ["glue:CreateTable", "glue:UpdateTable"],
            "Resource": _glue("table/out/*"),
        },
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": "arn:aws:kms:eu-west-1:123456789012:key/1",
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}},
        },
    ]
    call = ApiCall(
        "CommitFunctionRole", "glue", "BatchCreatePartition", {"DatabaseName": "out", "TableName": "t"}
    )
    table_need = needs_of(call, {})[2]

    assert table_need == Need(
        "CommitFunctionRole",
        "glue:BatchCreatePartition",
        _glue("table/out/t"),
        why="glue:BatchCreatePartition",
    )
    assert not allowed(statements, table_need)
    assert allowed(statements, Need("r", "glue:UpdateTable", _glue("table/out/t")))
    key = "arn:aws:kms:eu-west-1:123456789012:key/1"
    assert allowed(statements, Need("r", "kms:Decrypt", key, S3_VIA_SERVICE))
    assert not allowed(statements, Need("r", "kms:Decrypt", key))  # not through S3
    assert not allowed(statements, Need("r", "kms:Decrypt", key, (("kms:ViaService", "sqs.x"),)))


def test_a_call_this_check_cannot_map_fails_it_instead_of_passing_unchecked() -> None:
    with pytest.raises(AssertionError, match=r"glue:DeleteTable, which this test cannot map"):
        needs_of(ApiCall("CommitFunctionRole", "glue", "DeleteTable", {}), {})
