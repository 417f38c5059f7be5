"""Deploying the stack so that no run ever sees half an install or two code versions at once.

``make deploy`` calls this module in two steps around its template checks and ``sam build``:

``preflight``
    Before anything slow: the stack name fits every name derived from it, the region is known, and
    the credentials work in it (``sts get-caller-identity``). Each failure says what to do.
``release``
    The ordered deploy. The Glue script and the zipped ``cdc_pipeline`` package are content
    addressed: both live under ``glue/<version>/`` in the artifacts bucket, ``<version>`` being a
    hash of their bytes, and a key is never overwritten. On an update they are uploaded *before*
    ``sam deploy``, which then passes ``GlueArtifactsVersion`` to the stack, so the Glue job and the
    Lambdas move to the new code in the same stack update, and a run started before it keeps
    reading the old version's files, which stay where they were. (What remains is the seconds
    inside one stack update in which the Plan Lambda and the Glue job may differ: the work item's
    ``format_version`` makes a Glue job given an item it cannot read fail that table, saying so.)
    On a first deploy the artifacts bucket does not exist yet: the stack is created with its
    schedule DISABLED, then the artifacts are uploaded; nothing runs in between unless started by
    hand. An update is refused, before anything is uploaded, while executions of the stack's state
    machine run: they would finish on the new code (``--force`` deploys anyway), and so is one of a
    stack CloudFormation cannot update now (rolled back, a change set never executed, busy), each
    saying how to get it out of that state.
``enable-schedule``
    Turns the schedule on through the stack's ``ScheduleState`` parameter (so the next deploy keeps
    it on), once the deploy is complete.

Plain ``python3`` (3.11 or later, which the Makefile checks first) with boto3 runs it: deploying
needs neither the dev virtualenv nor Java. Every AWS call goes to the deploy's region, with its
profile.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The longest stack name every name the template derives from it fits: the state machine
# "<stack>-cdc-pipeline" must stay within Step Functions' 80 characters. scripts/check_templates.sh
# checks this figure against every such name in template.yaml and its service's limit.
MAX_STACK_NAME = 67
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
GLUE_PREFIX = "glue"
SCRIPT = Path("glue_jobs/ingest_table.py")
PACKAGE = Path("cdc_pipeline")
VERSION_CHARS = 16  # GlueArtifactsVersion's AllowedPattern in template.yaml
# A fixed timestamp for every zip entry: the same sources give the same bytes, hence the same version.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND")
SAMCONFIG = Path("samconfig.toml")
SAMCONFIG_ENV = "default"
BUSY_STATUS = re.compile(r"_IN_PROGRESS$")
# What to do with a stack CloudFormation will not update; {stack} and {where} are filled in.
STUCK_STATUS = {
    "ROLLBACK_COMPLETE": (
        "its creation failed and was rolled back, and CloudFormation cannot update such a stack. See why in "
        "its events (aws cloudformation describe-stack-events --stack-name {stack} {where}), delete it "
        "(aws cloudformation delete-stack --stack-name {stack} {where}), then run make deploy again"
    ),
    "ROLLBACK_FAILED": (
        "its creation failed and so did the rollback. See why in its events (aws cloudformation "
        "describe-stack-events --stack-name {stack} {where}), delete it (aws cloudformation delete-stack "
        "--stack-name {stack} {where}), then run make deploy again"
    ),
    "REVIEW_IN_PROGRESS": (
        "a change set created it and was never executed (a first sam deploy answered no to 'Deploy this "
        "changeset?', or was stopped). Execute that change set (aws cloudformation list-change-sets "
        "--stack-name {stack} {where}, then aws cloudformation execute-change-set --change-set-name <name> "
        "--stack-name {stack} {where}) or delete the stack (aws cloudformation delete-stack --stack-name "
        "{stack} {where}), then run make deploy again"
    ),
    "UPDATE_ROLLBACK_FAILED": (
        "an update failed and so did its rollback. Finish the rollback (aws cloudformation "
        "continue-update-rollback --stack-name {stack} {where}), then run make deploy again"
    ),
    "DELETE_FAILED": (
        "deleting it failed. See why in its events (aws cloudformation describe-stack-events --stack-name "
        "{stack} {where}), delete it again, then run make deploy"
    ),
}
# The deploy refuses to update a stack while executions run (they would finish on the new code);
# --force (make deploy FORCE=1) deploys anyway.
RUNNING = "RUNNING"

DESCRIPTION = "Deploy the cdc-pipeline stack: checks first, Glue artifacts before the stack update."
Say = Callable[[str], None]
SamRunner = Callable[[list[str]], None]


class DeployError(Exception):
    """The deploy cannot go on; the message names what is missing and what to do."""


# ---------------------------------------------------------------- where it deploys


@dataclass(frozen=True)
class Target:
    """The stack a deploy works on: its name, region and (optional) AWS CLI profile."""

    stack: str
    region: str
    profile: str | None = None

    def __post_init__(self) -> None:
        check_stack_name(self.stack)
        if not self.region:
            raise DeployError(no_region_message(self.profile))

    def session(self) -> Any:
        import boto3

        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def cli_options(self) -> list[str]:
        """The options that point an AWS or SAM CLI call at this target."""
        return ["--region", self.region, *(["--profile", self.profile] if self.profile else [])]


def check_stack_name(stack: str) -> None:
    """Refuse a stack name CloudFormation refuses, or one whose derived names pass a service's limit.

    Raises
    ------
    DeployError
        Naming the rule broken and the fix.
    """
    if not STACK_NAME.match(stack):
        raise DeployError(
            f"stack name {stack!r} is not valid: start with a letter and use only letters, digits and "
            "hyphens (STACK=...)"
        )
    if len(stack) > MAX_STACK_NAME:
        raise DeployError(
            f"stack name {stack!r} has {len(stack)} characters; at most {MAX_STACK_NAME} keep the names "
            f"derived from it within their services' limits (the state machine {stack}-cdc-pipeline "
            "must fit Step Functions' 80). Choose a shorter STACK"
        )


def check_output_database_name(stack: str, output_database: str) -> None:
    """Refuse a stack name with capitals when the output database is named after it.

    Raises
    ------
    DeployError
        Saying to choose a lowercase stack name or give OutputDatabase.
    """
    if not output_database and stack != stack.lower():
        raise DeployError(
            f"stack name {stack!r} has capital letters, but the output Glue database is named after it "
            "and Athena reads only lowercase database names: choose a lowercase STACK, or give the "
            "OutputDatabase parameter"
        )


def no_region_message(profile: str | None) -> str:
    where = f"profile {profile!r}" if profile else "the default profile"
    return (
        f"no AWS region for the deploy: {where} names none and AWS_REGION is not set. Give one: "
        "make deploy REGION=eu-west-1 (it is then saved in samconfig.toml)"
    )


def resolve_target(
    stack: str,
    region: str | None,
    profile: str | None,
    samconfig: Mapping[str, Any],
    default_region: Callable[[str | None], str | None] | None = None,
) -> Target:
    """The deploy's target: the region given, else samconfig.toml's, else the profile's or AWS_REGION.

    The profile likewise: given, else samconfig.toml's. ``default_region`` is how boto3 would pick a
    region for the profile (injected by tests).
    """
    saved = deploy_parameters(samconfig)
    profile = profile or saved.get("profile") or None
    if default_region is None:
        default_region = _boto3_region
    region = region or saved.get("region") or default_region(profile)
    if not region:
        raise DeployError(no_region_message(profile))
    return Target(stack=stack, region=region, profile=profile)


def _boto3_region(profile: str | None) -> str | None:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(profile_name=profile).region_name
    except ProfileNotFound as exc:
        raise DeployError(
            f"AWS profile {profile!r} is not configured: run aws configure --profile {profile}"
        ) from exc


def check_credentials(target: Target, session: Any = None) -> str:
    """The account the credentials act in (``sts get-caller-identity`` in the target's region).

    Raises
    ------
    DeployError
        When there are no credentials, or they are expired or refused, saying how to get some.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    session = session or target.session()
    login = (
        f"aws sso login --profile {target.profile}" if target.profile else "aws configure (or aws sso login)"
    )
    try:
        identity = session.client("sts", region_name=target.region).get_caller_identity()
    except NoCredentialsError as exc:
        raise DeployError(
            f"no AWS credentials found{' for profile ' + repr(target.profile) if target.profile else ''}: "
            f"run {login}, or give PROFILE=<profile> to make deploy"
        ) from exc
    except ClientError as exc:
        raise DeployError(
            f"the AWS credentials were refused in {target.region} ({exc.response['Error'].get('Code')}): "
            f"they may have expired; run {login}"
        ) from exc
    except BotoCoreError as exc:
        raise DeployError(
            f"cannot reach AWS STS in {target.region} ({exc}): check the region and network"
        ) from exc
    return str(identity["Account"])


# ---------------------------------------------------------------- samconfig.toml and sam deploy


def read_samconfig(path: Path = SAMCONFIG) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        return tomllib.load(handle)


def deploy_parameters(samconfig: Mapping[str, Any], env: str = SAMCONFIG_ENV) -> dict[str, Any]:
    """The ``[<env>.deploy.parameters]`` table of samconfig.toml (empty when there is none)."""
    return dict(samconfig.get(env, {}).get("deploy", {}).get("parameters", {}))


def parse_overrides(value: str | Sequence[str] | None) -> dict[str, str]:
    """``Key=Value Key2="a b"`` (or a list of such items, SAM's other form) as a dict."""
    if not value:
        return {}
    items = (
        shlex.split(value)
        if isinstance(value, str)
        else [part for item in value for part in shlex.split(item)]
    )
    overrides: dict[str, str] = {}
    for item in items:
        key, equals, rest = item.partition("=")
        if not equals:
            raise DeployError(f"samconfig.toml parameter_overrides item {item!r} is not Key=Value")
        overrides[key] = rest
    return overrides


def format_overrides(overrides: Mapping[str, str]) -> str:
    """The ``--parameter-overrides`` text SAM parses: values with spaces or quotes in double quotes."""
    parts = []
    for key, value in overrides.items():
        text = value
        if text == "" or re.search(r'[\s"\\]', text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def sam_deploy_command(
    sam: str, target: Target, overrides: Mapping[str, str], samconfig: Mapping[str, Any]
) -> list[str]:
    """``sam deploy`` for the target, guided the first time (no samconfig.toml yet).

    The overrides given on the command line replace samconfig.toml's as a whole, so samconfig's are
    merged in first: ours win for the keys this deploy owns (the artifacts version, the schedule).
    """
    saved = deploy_parameters(samconfig)
    merged = {**parse_overrides(saved.get("parameter_overrides")), **overrides}
    command = [
        sam,
        "deploy",
        "--stack-name",
        target.stack,
        *target.cli_options(),
        "--no-fail-on-empty-changeset",
    ]
    if not saved:
        command.append("--guided")
    command += ["--parameter-overrides", format_overrides(merged)]
    return command


def run_sam(command: list[str]) -> None:
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise DeployError(f"sam deploy failed (exit code {done.returncode}); its output above says why")


# ---------------------------------------------------------------- the Glue artifacts


@dataclass(frozen=True)
class GlueArtifacts:
    """The Glue script and the zipped package of one code version, and where they live."""

    script: bytes
    package: bytes

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for part in (self.script, self.package):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()[:VERSION_CHARS]

    @property
    def script_key(self) -> str:
        return f"{GLUE_PREFIX}/{self.version}/{SCRIPT.name}"

    @property
    def package_key(self) -> str:
        return f"{GLUE_PREFIX}/{self.version}/{PACKAGE.name}.zip"

    def objects(self) -> dict[str, bytes]:
        # The package first: the script imports it, and neither is used before the stack points at both.
        return {self.package_key: self.package, self.script_key: self.script}


def zip_package(root: Path) -> bytes:
    """``root/cdc_pipeline`` as a zip whose bytes depend only on the files' paths and contents."""
    buffer = io.BytesIO()
    files = sorted(
        path
        for path in (root / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=ZIP_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


def glue_artifacts(root: Path) -> GlueArtifacts:
    return GlueArtifacts(script=(root / SCRIPT).read_bytes(), package=zip_package(root))


def upload_glue_artifacts(s3: Any, bucket: str, artifacts: GlueArtifacts, say: Say = print) -> None:
    """Put each artifact under its content-addressed key unless it is there already; never overwrite."""
    from botocore.exceptions import ClientError

    for key, body in artifacts.objects().items():
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:
            say(f"s3://{bucket}/{key} is already there")
            continue
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            # Another deploy of the same version won the race: the same bytes are there.
            if exc.response.get("Error", {}).get("Code") not in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                raise
        say(f"uploaded s3://{bucket}/{key}")


# ---------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Stack:
    status: str
    parameters: dict[str, str]
    outputs: dict[str, str]


def describe_stack(cloudformation: Any, stack: str) -> Stack | None:
    from botocore.exceptions import ClientError

    try:
        found = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return Stack(
        status=found["StackStatus"],
        parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])},
        outputs={o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])},
    )


def _require_idle(stack: Stack | None, target: Target) -> None:
    """Refuse a stack CloudFormation cannot update now: stuck (say how to free it) or busy (wait).

    Raises
    ------
    DeployError
        Naming the stack's status and the commands that get it out of it.
    """
    if stack is None:
        return
    where = " ".join(target.cli_options())
    if stack.status in STUCK_STATUS:
        raise DeployError(
            f"stack {target.stack} is {stack.status} in {target.region}: "
            + STUCK_STATUS[stack.status].format(stack=target.stack, where=where)
        )
    if BUSY_STATUS.search(stack.status):
        waiter = {"CREATE": "stack-create-complete", "DELETE": "stack-delete-complete"}.get(
            stack.status.split("_", 1)[0], "stack-update-complete"
        )
        raise DeployError(
            f"stack {target.stack} is {stack.status} in {target.region}: wait for it to finish (aws "
            f"cloudformation wait {waiter} --stack-name {target.stack} {where}) and run make deploy again"
        )


def running_executions(sfn: Any, state_machine_arn: str) -> int:
    """How many executions of the state machine are RUNNING (child executions of a Distributed Map
    are not listed: their parent runs as long as they do)."""
    pages = sfn.get_paginator("list_executions").paginate(
        stateMachineArn=state_machine_arn, statusFilter=RUNNING
    )
    return sum(len(page["executions"]) for page in pages)


def _require_no_running_executions(session: Any, target: Target, stack: Stack) -> None:
    """Refuse to update the code under running executions: one planned at this version would ingest
    and commit at the next (the Plan Lambda, the Glue job and the Commit Lambda move together).

    Raises
    ------
    DeployError
        Saying how many run, how to wait for or stop them, and how to deploy anyway.
    """
    state_machine_arn = stack.outputs.get("StateMachineArn")
    if not state_machine_arn:
        return
    sfn = session.client("stepfunctions", region_name=target.region)
    count = running_executions(sfn, state_machine_arn)
    if not count:
        return
    where = " ".join(target.cli_options())
    raise DeployError(
        f"{count} execution(s) of {state_machine_arn} are RUNNING: updating the stack now would let them "
        "finish on the new code (planned by one version, ingested and committed by the next). Wait for "
        f"them to end (aws stepfunctions list-executions --state-machine-arn {state_machine_arn} "
        f"--status-filter RUNNING {where}) or stop them (aws stepfunctions stop-execution "
        f"--execution-arn <arn> {where}; a stopped run commits nothing and the next run ingests its "
        "tables), then run make deploy again; make deploy FORCE=1 deploys anyway"
    )


def release(
    target: Target,
    artifacts: GlueArtifacts,
    *,
    session: Any,
    samconfig: Mapping[str, Any],
    sam: str,
    run: SamRunner = run_sam,
    enable: bool = False,
    force: bool = False,
    say: Say = print,
) -> Stack:
    """Upload the Glue artifacts and update the stack in the order that never mixes versions.

    Parameters
    ----------
    force
        Update the stack even while executions run (they may then finish on the new code).

    Returns
    -------
    Stack
        The stack as the deploy left it.

    Raises
    ------
    DeployError
        Before anything is uploaded or deployed when the stack cannot be updated now (stuck, busy,
        executions running, not a cdc-pipeline stack); after, when the update did not apply.
    """
    cloudformation = session.client("cloudformation", region_name=target.region)
    s3 = session.client("s3", region_name=target.region)
    before = describe_stack(cloudformation, target.stack)
    _require_idle(before, target)
    version = artifacts.version
    if before is not None:
        bucket = before.outputs.get("ArtifactsBucketName")
        if not bucket:
            raise DeployError(
                f"stack {target.stack} ({before.status}) in {target.region} has no ArtifactsBucketName "
                "output: is it a cdc-pipeline stack? Choose another STACK"
            )
        if force:
            say("--force: not checking for running executions")
        else:
            _require_no_running_executions(session, target, before)
        say(f"updating stack {target.stack} in {target.region}; Glue artifacts version {version}")
        upload_glue_artifacts(s3, bucket, artifacts, say)
        schedule = "ENABLED" if enable else before.parameters.get("ScheduleState", "DISABLED")
        run(
            sam_deploy_command(
                sam, target, {"GlueArtifactsVersion": version, "ScheduleState": schedule}, samconfig
            )
        )
    else:
        say(f"creating stack {target.stack} in {target.region} with its schedule DISABLED")
        run(
            sam_deploy_command(
                sam, target, {"GlueArtifactsVersion": version, "ScheduleState": "DISABLED"}, samconfig
            )
        )
        created = describe_stack(cloudformation, target.stack)
        if created is None:
            raise DeployError(
                f"sam deploy ended but stack {target.stack} is not in {target.region}: was another region "
                "chosen in the guided prompts? Run make deploy REGION=<that region>"
            )
        upload_glue_artifacts(s3, created.outputs["ArtifactsBucketName"], artifacts, say)
        if enable:
            enable_schedule(target, session=session, say=say)
    after = describe_stack(cloudformation, target.stack)
    if after is None or after.outputs.get("GlueArtifactsVersion") != version:
        raise DeployError(
            f"stack {target.stack} runs Glue artifacts version "
            f"{after.outputs.get('GlueArtifactsVersion') if after else None}, not {version}: the update did "
            "not apply; see the stack's events in the CloudFormation console"
        )
    say(schedule_advice(target, after))
    return after


def enable_schedule(target: Target, *, session: Any, say: Say = print, wait: bool = True) -> None:
    """Set the stack's ScheduleState to ENABLED, keeping its template and every other parameter."""
    cloudformation = session.client("cloudformation", region_name=target.region)
    stack = describe_stack(cloudformation, target.stack)
    if stack is None:
        raise DeployError(f"stack {target.stack} does not exist in {target.region}: run make deploy first")
    _require_idle(stack, target)
    if stack.parameters.get("ScheduleState") == "ENABLED":
        say(f"the schedule of {target.stack} is already ENABLED")
        return
    if not stack.parameters.get("GlueArtifactsVersion"):
        raise DeployError(f"stack {target.stack} has no GlueArtifactsVersion: run make deploy first")
    cloudformation.update_stack(
        StackName=target.stack,
        UsePreviousTemplate=True,
        Parameters=[
            {"ParameterKey": key, "ParameterValue": "ENABLED"}
            if key == "ScheduleState"
            else {"ParameterKey": key, "UsePreviousValue": True}
            for key in stack.parameters
        ],
        Capabilities=list(CAPABILITIES),
    )
    if wait:
        cloudformation.get_waiter("stack_update_complete").wait(StackName=target.stack)
    say(f"the schedule of {target.stack} is ENABLED")


def schedule_advice(target: Target, stack: Stack) -> str:
    where = " ".join(target.cli_options())
    if stack.parameters.get("ScheduleState") == "ENABLED":
        return f"deployed; the schedule is ENABLED ({stack.outputs.get('ScheduleName', 'RunSchedule')})"
    return (
        "deployed; the schedule is DISABLED, so no run starts by itself. Prove the deploy with "
        f"make smoke STACK={target.stack} {_make_vars(target)}, then enable it with "
        f"make deploy ENABLE_SCHEDULE=1 STACK={target.stack} {_make_vars(target)} "
        f"(or python3 -m cdc_pipeline.aws.deploy enable-schedule --stack {target.stack} {where})"
    ).replace("  ", " ")


def _make_vars(target: Target) -> str:
    return f"REGION={target.region}" + (f" PROFILE={target.profile}" if target.profile else "")


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None, root: Path = Path()) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cdc_pipeline.aws.deploy", description=DESCRIPTION)
    parser.add_argument("verb", choices=["preflight", "release", "enable-schedule", "version"])
    parser.add_argument("--stack", default="cdc-pipeline")
    parser.add_argument("--region", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--sam", default="sam", help="the SAM CLI to run")
    parser.add_argument("--enable-schedule", action="store_true", help="enable the schedule once deployed")
    parser.add_argument(
        "--force", action="store_true", help="update the stack even while executions of it run"
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("boto3") is None:
        print(
            "deploy: boto3 is missing from this python3: python3 -m pip install --user boto3", file=sys.stderr
        )
        return 2
    try:
        if args.verb == "version":
            print(glue_artifacts(root).version)
            return 0
        samconfig = read_samconfig(root / SAMCONFIG)
        target = resolve_target(args.stack, args.region, args.profile, samconfig)
        overrides = parse_overrides(deploy_parameters(samconfig).get("parameter_overrides"))
        check_output_database_name(target.stack, overrides.get("OutputDatabase", ""))
        session = target.session()
        account = check_credentials(target, session)
        if args.verb == "preflight":
            print(f"deploying stack {target.stack} to account {account} in {target.region}")
        elif args.verb == "release":
            release(
                target,
                glue_artifacts(root),
                session=session,
                samconfig=samconfig,
                sam=args.sam,
                enable=args.enable_schedule,
                force=args.force,
            )
        else:
            enable_schedule(target, session=session)
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
