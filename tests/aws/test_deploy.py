"""The deploy's checks and its upload-then-update order (``cdc_pipeline.aws.deploy``), on moto.

The order test runs ``release`` against moto: a stack holding the artifacts bucket and the
template's two deploy-owned parameters, a Glue job, and a fake ``sam deploy`` that does what one
stack update does to the code (the Glue job's script and package locations and the Lambdas' code
switch together). After every S3 upload and around the stack update it asks what an execution
started at that moment would run, and fails on any mix. The order ``make deploy`` had before
(update the stack, then overwrite fixed keys) goes through the same probe and is caught.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdc_pipeline.aws import deploy
from cdc_pipeline.aws.deploy import (
    MAX_STACK_NAME,
    DeployError,
    GlueArtifacts,
    Target,
    check_credentials,
    check_output_database_name,
    check_stack_name,
    enable_schedule,
    format_overrides,
    glue_artifacts,
    parse_overrides,
    release,
    resolve_target,
    sam_deploy_command,
    zip_package,
)

from .conftest import REGION

ROOT = Path(__file__).resolve().parents[2]
STACK = "cdc-dev"
JOB = f"{STACK}-ingest-table"
STATE_MACHINE = f"arn:aws:states:{REGION}:123456789012:stateMachine:{STACK}-cdc-pipeline"
TARGET = Target(stack=STACK, region=REGION)
GUIDED_SAMCONFIG: dict[str, Any] = {}
SAVED_SAMCONFIG = {
    "version": 0.1,
    "default": {
        "deploy": {
            "parameters": {
                "stack_name": STACK,
                "region": REGION,
                "capabilities": "CAPABILITY_IAM CAPABILITY_AUTO_EXPAND",
                "parameter_overrides": 'SourceDatabase="raw" GlueArtifactsVersion="0000000000000000" '
                'TableExclude="tmp_*,scratch"',
            }
        }
    },
}

# ---------------------------------------------------------------- names, region, credentials


def test_a_stack_name_whose_state_machine_name_would_pass_80_characters_is_refused() -> None:
    check_stack_name("a" * MAX_STACK_NAME)
    assert len(f"{'a' * MAX_STACK_NAME}-cdc-pipeline") <= 80
    with pytest.raises(DeployError, match=r"68 characters; at most 67 .*shorter STACK"):
        check_stack_name("a" * (MAX_STACK_NAME + 1))


@pytest.mark.parametrize("name", ["1cdc", "cdc_pipeline", "cdc pipeline", ""])
def test_a_stack_name_cloudformation_refuses_is_refused_before_anything_runs(name: str) -> None:
    with pytest.raises(DeployError, match="start with a letter"):
        Target(stack=name, region=REGION)


def test_a_capitalised_stack_name_needs_an_explicit_output_database() -> None:
    with pytest.raises(DeployError, match="lowercase STACK, or give the OutputDatabase parameter"):
        check_output_database_name("CdcProd", "")
    check_output_database_name("CdcProd", "cdc_prod_current")
    check_output_database_name("cdc-prod", "")


def test_the_region_given_wins_over_samconfig_which_wins_over_the_cli_default() -> None:
    def cli_default(profile: str | None) -> str:
        return "us-west-2"

    assert resolve_target(STACK, "ap-south-1", None, SAVED_SAMCONFIG, cli_default).region == "ap-south-1"
    assert resolve_target(STACK, None, None, SAVED_SAMCONFIG, cli_default).region == REGION
    assert resolve_target(STACK, None, None, {}, cli_default).region == "us-west-2"
    saved_profile = {"default": {"deploy": {"parameters": {"profile": "prod"}}}}
    assert resolve_target(STACK, None, None, saved_profile, cli_default).profile == "prod"


def test_no_region_anywhere_is_refused_saying_how_to_give_one() -> None:
    with pytest.raises(DeployError, match=r"no AWS region .*make deploy REGION="):
        resolve_target(STACK, None, None, {}, lambda profile: None)


def test_missing_credentials_are_reported_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata look-up
    with pytest.raises(DeployError, match=r"no AWS credentials found: run aws configure"):
        check_credentials(TARGET, boto3.session.Session(region_name=REGION))


def test_working_credentials_give_the_account_they_act_in() -> None:
    with mock_aws():
        assert check_credentials(TARGET, boto3.session.Session(region_name=REGION)) == "123456789012"


def test_make_deploy_checks_credentials_first_and_passes_region_and_profile_to_every_step() -> None:
    done = subprocess.run(
        ["make", "-n", "deploy", "smoke", "enable-schedule", "REGION=eu-central-1", "PROFILE=prod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("make")]
    assert "sys.version_info >= (3, 11)" in lines[0]  # the Python check, then the credentials
    assert "cdc_pipeline.aws.deploy preflight" in lines[1]
    assert lines.index(next(line for line in lines if "check_templates.sh" in line)) > 0
    release_line = next(line for line in lines if "cdc_pipeline.aws.deploy release" in line)
    assert lines.index(release_line) > lines.index(next(line for line in lines if " build" in line))
    aws_steps = [line for line in lines if "cdc_pipeline.aws." in line]
    assert len(aws_steps) == 4  # preflight, release, smoke, enable-schedule
    for line in aws_steps:
        assert "--region eu-central-1 --profile prod" in line, line


FAKE_PYTHON = """#!{executable}
import sys
if sys.argv[1] == "-c":  # the Makefile's version check, run as the Python being faked would
    sys.version_info = {version}
    sys.version = "{dotted} (fake)"
    exec(sys.argv[2])
else:
    print("ran", *sys.argv[1:])
"""


@pytest.mark.parametrize("verb", ["deploy", "smoke", "enable-schedule"])
def test_make_refuses_a_python_older_than_3_11_before_any_step_saying_how_to_give_one(
    tmp_path: Path, verb: str
) -> None:
    def make_with(version: tuple[int, int, int]) -> subprocess.CompletedProcess[str]:
        dotted = ".".join(map(str, version))
        python = tmp_path / f"python{dotted}"
        python.write_text(FAKE_PYTHON.format(executable=sys.executable, version=version, dotted=dotted))
        python.chmod(0o755)
        return subprocess.run(
            ["make", verb, f"PYTHON3={python}", "REGION=eu-central-1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    old = make_with((3, 10, 13))
    assert old.returncode != 0
    assert f"make {verb}: " in old.stderr
    assert (
        "is Python 3.10.13; the deploy tools need Python 3.11 or later: give one with PYTHON3=python3.11"
        in (old.stderr)
    )
    assert "ran" not in old.stdout  # no step ran

    if verb != "deploy":  # deploy's next steps would build for real
        current = make_with((3, 11, 7))
        assert current.returncode == 0, current.stderr
        assert "ran -m cdc_pipeline.aws." in current.stdout


# ---------------------------------------------------------------- artifacts and sam deploy


def test_the_glue_artifacts_version_depends_only_on_their_contents(tmp_path: Path) -> None:
    package = tmp_path / "cdc_pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    first = zip_package(tmp_path)
    (package / "__pycache__" / "y.pyc").write_bytes(b"other compiled")
    assert zip_package(tmp_path) == first  # same sources, same bytes
    (package / "__init__.py").write_text("VALUE = 2\n")
    assert zip_package(tmp_path) != first

    old, new = GlueArtifacts(b"script", first), GlueArtifacts(b"script", zip_package(tmp_path))
    assert old.version != new.version
    assert old.script_key == f"glue/{old.version}/ingest_table.py"
    assert old.package_key == f"glue/{old.version}/cdc_pipeline.zip"
    assert len(old.version) == 16  # the template's AllowedPattern for GlueArtifactsVersion


def test_the_repository_glue_artifacts_hold_the_script_and_the_whole_package() -> None:
    import io
    import zipfile

    artifacts = glue_artifacts(ROOT)
    assert artifacts.script == (ROOT / "glue_jobs" / "ingest_table.py").read_bytes()
    names = zipfile.ZipFile(io.BytesIO(artifacts.package)).namelist()
    assert "cdc_pipeline/glue_job.py" in names
    assert "cdc_pipeline/aws/s3.py" in names
    assert not [name for name in names if "__pycache__" in name]


def test_parameter_overrides_survive_a_round_trip_through_sam_text() -> None:
    overrides = {"A": "plain", "B": "with space", "C": "", "D": 'quote"d', "E": "tmp_*,x"}
    assert parse_overrides(format_overrides(overrides)) == overrides


def test_sam_deploy_is_guided_the_first_time_and_keeps_samconfig_parameters_after() -> None:
    first = sam_deploy_command("sam", TARGET, {"GlueArtifactsVersion": "ab" * 8}, GUIDED_SAMCONFIG)
    assert "--guided" in first
    assert first[first.index("--region") + 1] == REGION

    target = Target(stack=STACK, region=REGION, profile="prod")
    later = sam_deploy_command("sam", target, {"GlueArtifactsVersion": "ab" * 8}, SAVED_SAMCONFIG)
    assert "--guided" not in later
    assert later[later.index("--profile") + 1] == "prod"
    overrides = parse_overrides(later[later.index("--parameter-overrides") + 1])
    assert overrides == {
        "SourceDatabase": "raw",
        "GlueArtifactsVersion": "ab" * 8,  # this deploy's, not samconfig's
        "TableExclude": "tmp_*,scratch",
    }


# ---------------------------------------------------------------- the order, on moto

# The stack as far as the deploy sees it: the artifacts bucket, the parameters the deploy owns.
STACK_TEMPLATE = {
    "Parameters": {
        "GlueArtifactsVersion": {"Type": "String"},
        "ScheduleState": {"Type": "String", "Default": "DISABLED"},
        "SourceDatabase": {"Type": "String", "Default": "raw"},
    },
    "Resources": {"ArtifactsBucket": {"Type": "AWS::S3::Bucket"}},
    "Outputs": {
        "ArtifactsBucketName": {"Value": {"Ref": "ArtifactsBucket"}},
        "GlueArtifactsVersion": {"Value": {"Ref": "GlueArtifactsVersion"}},
        "ScheduleName": {"Value": "run-schedule"},
        "StateMachineArn": {"Value": STATE_MACHINE},
    },
}
V1 = GlueArtifacts(script=b"script of release 1", package=b"package of release 1")
V2 = GlueArtifacts(script=b"script of release 2", package=b"package of release 2")
RELEASE_OF = {V1.script: 1, V1.package: 1, V2.script: 2, V2.package: 2}


@dataclass
class World:
    """moto's stack, bucket and Glue job, the Lambdas' code, and what the probe saw."""

    session: Any
    lambdas_release: int | None = None
    seen: list[str] = field(default_factory=list)
    mixes: list[str] = field(default_factory=list)

    @property
    def cloudformation(self) -> Any:
        return self.session.client("cloudformation")

    @property
    def glue(self) -> Any:
        return self.session.client("glue")

    @property
    def s3(self) -> Any:
        return self.session.client("s3")

    def schedule(self) -> str | None:
        found = deploy.describe_stack(self.cloudformation, STACK)
        return found.parameters.get("ScheduleState") if found else None

    def probe(self, moment: str) -> None:
        """What an execution started now would run: the Lambdas' release and the Glue job's files."""
        try:
            job = self.glue.get_job(JobName=JOB)["Job"]
        except self.glue.exceptions.EntityNotFoundException:
            self.seen.append(f"{moment}: no job yet")
            return
        releases = {"lambdas": self.lambdas_release}
        for name, uri in (
            ("script", job["Command"]["ScriptLocation"]),
            ("package", job["DefaultArguments"]["--extra-py-files"]),
        ):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            try:
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                releases[name] = None
            else:
                releases[name] = RELEASE_OF[body]
        self.seen.append(f"{moment}: {releases}")
        if len(set(releases.values())) != 1 and self.schedule() != "DISABLED":
            self.mixes.append(f"{moment}: an execution would run {releases}")

    def stack_update(self, release_number: int, script_key: str, package_key: str) -> Callable[..., None]:
        """A fake ``sam deploy``: one stack update switches the job's files and the Lambdas' code."""

        def sam(command: list[str]) -> None:
            self.probe("before the stack update")
            overrides = parse_overrides(command[command.index("--parameter-overrides") + 1])
            parameters = [{"ParameterKey": key, "ParameterValue": value} for key, value in overrides.items()]
            if deploy.describe_stack(self.cloudformation, STACK) is None:
                self.cloudformation.create_stack(
                    StackName=STACK, TemplateBody=json.dumps(STACK_TEMPLATE), Parameters=parameters
                )
            else:
                self.cloudformation.update_stack(
                    StackName=STACK, TemplateBody=json.dumps(STACK_TEMPLATE), Parameters=parameters
                )
            bucket = deploy.describe_stack(self.cloudformation, STACK).outputs["ArtifactsBucketName"]
            self.glue.delete_job(JobName=JOB)
            self.glue.create_job(
                Name=JOB,
                Role="arn:aws:iam::123456789012:role/glue",
                Command={
                    "Name": "glueetl",
                    "ScriptLocation": f"s3://{bucket}/{script_key.format(**overrides)}",
                },
                DefaultArguments={"--extra-py-files": f"s3://{bucket}/{package_key.format(**overrides)}"},
            )
            self.lambdas_release = release_number
            self.probe("after the stack update")

        return sam


@pytest.fixture
def world(boto_session: Any) -> Any:
    with mock_aws():
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        found = World(session)
        session.events.register("after-call.s3.PutObject", lambda **_: found.probe("after an upload"))
        session.client("stepfunctions").create_state_machine(
            name=STATE_MACHINE.rsplit(":", 1)[1],
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )
        yield found


VERSIONED_SCRIPT = "glue/{GlueArtifactsVersion}/ingest_table.py"
VERSIONED_PACKAGE = "glue/{GlueArtifactsVersion}/cdc_pipeline.zip"


def _release(
    world: World, artifacts: GlueArtifacts, number: int, *, enable: bool = False, force: bool = False
) -> deploy.Stack:
    return release(
        TARGET,
        artifacts,
        session=world.session,
        samconfig=SAVED_SAMCONFIG,
        sam="sam",
        run=world.stack_update(number, VERSIONED_SCRIPT, VERSIONED_PACKAGE),
        enable=enable,
        force=force,
        say=lambda message: None,
    )


def test_a_first_deploy_cannot_run_before_its_glue_artifacts_are_uploaded(world: World) -> None:
    stack = _release(world, V1, 1)

    assert world.mixes == []
    assert any("'script': None" in seen for seen in world.seen)  # the window exists...
    assert stack.parameters["ScheduleState"] == "DISABLED"  # ...and no run starts by itself in it
    assert stack.outputs["GlueArtifactsVersion"] == V1.version
    world.probe("end")
    assert world.seen[-1] == "end: {'lambdas': 1, 'script': 1, 'package': 1}"


def test_an_update_uploads_first_so_no_execution_ever_sees_two_releases(world: World) -> None:
    _release(world, V1, 1)
    world.cloudformation.update_stack(  # the operator enabled the schedule: runs may start any time
        StackName=STACK,
        UsePreviousTemplate=True,
        Parameters=[
            {"ParameterKey": "GlueArtifactsVersion", "UsePreviousValue": True},
            {"ParameterKey": "ScheduleState", "ParameterValue": "ENABLED"},
            {"ParameterKey": "SourceDatabase", "UsePreviousValue": True},
        ],
    )
    world.seen.clear()

    stack = _release(world, V2, 2)

    assert world.mixes == []
    assert world.seen[0] == "after an upload: {'lambdas': 1, 'script': 1, 'package': 1}"
    assert world.seen[-1] == "after the stack update: {'lambdas': 2, 'script': 2, 'package': 2}"
    assert stack.parameters["ScheduleState"] == "ENABLED"  # an update keeps the schedule as it was
    bucket = stack.outputs["ArtifactsBucketName"]
    for key in (V1.script_key, V1.package_key):  # a run started before the update still finds release 1
        assert world.s3.get_object(Bucket=bucket, Key=key)["Body"].read() in (V1.script, V1.package)


def test_the_previous_order_update_then_overwrite_is_caught_mixing_releases(world: World) -> None:
    _release(world, V1, 1)
    stack = deploy.describe_stack(world.cloudformation, STACK)
    bucket = stack.outputs["ArtifactsBucketName"]
    fixed_script, fixed_package = "glue/ingest_table.py", "glue/cdc_pipeline.zip"
    for key, body in ((fixed_script, V1.script), (fixed_package, V1.package)):
        world.s3.put_object(Bucket=bucket, Key=key, Body=body)
    old_sam = ["sam", "--parameter-overrides", f"GlueArtifactsVersion={V1.version} ScheduleState=ENABLED"]
    world.stack_update(1, fixed_script, fixed_package)(old_sam)
    world.mixes.clear()

    # What make deploy did: sam deploy (the Lambdas move to release 2), then aws s3 cp over fixed keys.
    world.stack_update(2, fixed_script, fixed_package)(old_sam)
    world.s3.put_object(Bucket=bucket, Key=fixed_package, Body=V2.package)
    world.s3.put_object(Bucket=bucket, Key=fixed_script, Body=V2.script)

    assert world.mixes == [
        "after the stack update: an execution would run {'lambdas': 2, 'script': 1, 'package': 1}",
        "after an upload: an execution would run {'lambdas': 2, 'script': 1, 'package': 2}",
    ]


def test_a_redeploy_of_the_same_code_uploads_nothing(world: World) -> None:
    _release(world, V1, 1)
    uploads: list[str] = []
    world.session.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: uploads.append(params["Key"])
    )

    _release(world, V1, 1)

    assert uploads == []


def test_enabling_the_schedule_keeps_every_other_parameter(world: World) -> None:
    _release(world, V1, 1)

    enable_schedule(TARGET, session=world.session, say=lambda message: None, wait=False)

    stack = deploy.describe_stack(world.cloudformation, STACK)
    assert stack.parameters == {
        "GlueArtifactsVersion": V1.version,
        "ScheduleState": "ENABLED",
        "SourceDatabase": "raw",
    }


def test_a_first_deploy_asked_to_enable_the_schedule_does_so_only_after_the_upload(world: World) -> None:
    stack = _release(world, V1, 1, enable=True)

    assert world.mixes == []
    assert stack.parameters["ScheduleState"] == "ENABLED"


def test_a_stack_that_did_not_move_to_the_new_version_fails_the_deploy(world: World) -> None:
    _release(world, V1, 1)

    with pytest.raises(DeployError, match=rf"runs Glue artifacts version {V1.version}, not {V2.version}"):
        release(
            TARGET,
            V2,
            session=world.session,
            samconfig=SAVED_SAMCONFIG,
            sam="sam",
            run=lambda command: None,  # sam deploy "succeeded" without changing the stack
            say=lambda message: None,
        )


# ---------------------------------------------------------------- what the deploy refuses


def test_a_deploy_is_refused_while_executions_run_before_anything_is_uploaded(world: World) -> None:
    _release(world, V1, 1)
    sfn = world.session.client("stepfunctions")
    running = [sfn.start_execution(stateMachineArn=STATE_MACHINE)["executionArn"] for _ in range(2)]
    uploads: list[str] = []
    world.session.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: uploads.append(params["Key"])
    )

    with pytest.raises(DeployError) as refused:
        _release(world, V2, 2)

    message = str(refused.value)
    assert f"2 execution(s) of {STATE_MACHINE} are RUNNING" in message
    assert f"list-executions --state-machine-arn {STATE_MACHINE} --status-filter RUNNING" in message
    assert "stop-execution" in message
    assert "make deploy FORCE=1" in message
    assert (uploads, world.lambdas_release) == ([], 1)  # nothing uploaded, the stack not updated

    for arn in running:
        sfn.stop_execution(executionArn=arn)
    assert _release(world, V2, 2).outputs["GlueArtifactsVersion"] == V2.version


def test_a_forced_deploy_updates_the_stack_under_running_executions(world: World) -> None:
    _release(world, V1, 1)
    world.session.client("stepfunctions").start_execution(stateMachineArn=STATE_MACHINE)

    stack = _release(world, V2, 2, force=True)

    assert stack.outputs["GlueArtifactsVersion"] == V2.version
    assert world.lambdas_release == 2


def test_make_deploy_forces_only_when_asked() -> None:
    def release_line(*variables: str) -> str:
        done = subprocess.run(
            ["make", "-n", "deploy", *variables], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return next(line for line in done.stdout.splitlines() if "cdc_pipeline.aws.deploy release" in line)

    assert "--force" not in release_line()
    assert release_line("FORCE=1").endswith("--force")


def test_a_stack_whose_first_change_set_was_never_executed_is_refused_saying_what_to_do(world: World) -> None:
    # A first sam deploy that was answered "n" at "Deploy this changeset?": the stack exists, empty.
    world.cloudformation.create_change_set(
        StackName=STACK,
        ChangeSetName="samcli-deploy-1",
        TemplateBody=json.dumps(STACK_TEMPLATE),
        ChangeSetType="CREATE",
        Parameters=[{"ParameterKey": "GlueArtifactsVersion", "ParameterValue": V1.version}],
    )
    ran: list[list[str]] = []

    with pytest.raises(DeployError) as refused:
        release(TARGET, V1, session=world.session, samconfig=SAVED_SAMCONFIG, sam="sam", run=ran.append)

    message = str(refused.value)
    assert message.startswith(f"stack {STACK} is REVIEW_IN_PROGRESS in {REGION}: a change set created it")
    assert f"execute-change-set --change-set-name <name> --stack-name {STACK} --region {REGION}" in message
    assert f"delete-stack --stack-name {STACK} --region {REGION}" in message
    assert ran == []


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        ("ROLLBACK_COMPLETE", f"delete-stack --stack-name {STACK} --region {REGION} --profile prod"),
        ("ROLLBACK_FAILED", f"delete-stack --stack-name {STACK} --region {REGION} --profile prod"),
        ("UPDATE_ROLLBACK_FAILED", f"continue-update-rollback --stack-name {STACK} --region {REGION}"),
        ("CREATE_IN_PROGRESS", f"wait stack-create-complete --stack-name {STACK} --region {REGION}"),
        ("UPDATE_IN_PROGRESS", f"wait stack-update-complete --stack-name {STACK} --region {REGION}"),
    ],
)
def test_a_stack_cloudformation_cannot_update_now_is_refused_naming_the_way_out(
    world: World, monkeypatch: pytest.MonkeyPatch, status: str, advice: str
) -> None:
    # A failed creation leaves no outputs: the deploy must say what to do, not fail on a missing key.
    monkeypatch.setattr(deploy, "describe_stack", lambda cloudformation, stack: deploy.Stack(status, {}, {}))
    ran: list[list[str]] = []
    target = Target(stack=STACK, region=REGION, profile="prod")

    with pytest.raises(DeployError) as refused:
        release(target, V1, session=world.session, samconfig=SAVED_SAMCONFIG, sam="sam", run=ran.append)

    assert str(refused.value).startswith(f"stack {STACK} is {status} in {REGION}: ")
    assert advice in str(refused.value)
    assert ran == []


def test_a_stack_that_is_not_a_cdc_pipeline_stack_is_refused_before_anything_is_uploaded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        deploy, "describe_stack", lambda cloudformation, stack: deploy.Stack("UPDATE_COMPLETE", {}, {})
    )
    ran: list[list[str]] = []

    with pytest.raises(DeployError, match=r"has no ArtifactsBucketName output: is it a cdc-pipeline stack"):
        release(TARGET, V1, session=world.session, samconfig=SAVED_SAMCONFIG, sam="sam", run=ran.append)

    assert ran == []
