"""The SAM template DEPLOYED as a stack in moto's CloudFormation, then a run of the state machine it made.

``template.yaml`` goes through the SAM transform offline (samtranslator, dummy credentials), the
way ``sam deploy`` does after ``sam package``: CodeUri and ContentUri point at dummy zips and
DefinitionUri at an untouched copy of ``state_machine/cdc_pipeline.asl.json``, all in a packaging
bucket. The plain CloudFormation template is created with ``create_stack`` in moto, and an
execution of the state machine the stack created runs through: the Plan and Commit tasks are the
real handlers (dispatched as in ``test_state_machine.py``), each configured with the environment
moto's Lambda holds for the stack's function; each Glue job run runs the job's real driver
(``cdc_pipeline.glue_job.run_job``) with only its Spark work replaced, and leaves the manifest an
ingest would. Every AWS call of that code is recorded with its role, for
``test_role_permissions.py``.

What moto 5.2.1 cannot do, and what this test does about it:

* Resources DROPPED from the transformed template before ``create_stack`` (exactly these):

  - ``AccessLogsBucketPolicy``, ``StateBucketPolicy``, ``OutputBucketPolicy``,
    ``ArtifactsBucketPolicy`` (AWS::S3::BucketPolicy), ``RunSchedule`` (AWS::Scheduler::Schedule),
    ``ExecutionsFailedAlarm`` (AWS::CloudWatch::Alarm) and ``AlarmEmailSubscription``
    (AWS::SNS::Subscription; its condition HasAlarmEmail is false here anyway): moto has no
    CloudFormation model for these types. It would skip them ("No Moto CloudFormation support for
    AWS::S3::BucketPolicy") but then lists each as a blank row in ListStackResources, and
    DescribeStackResources fails on them (KeyError 'LogicalResourceId'). Nothing the run needs
    refers to them; the schedule's target Input is read from the template and used as the
    execution's input instead.
  - ``Dashboard`` (AWS::CloudWatch::Dashboard) and the ``DashboardUrl`` output: moto has a model
    for dashboards, but the body's ``${ExecutionsFailedAlarm.Arn}`` makes CreateStack fail ("Template
    error: instance of Fn::GetAtt references undefined resource ExecutionsFailedAlarm"), as the
    alarm cannot exist in moto; the output refers to the dashboard.

* Types moto cannot create either but the run NEEDS are created by three small CloudFormation
  models this test registers for its duration (only while moto lacks them): AWS::Glue::Database,
  AWS::Glue::Job and AWS::Glue::SecurityConfiguration, each made in moto's Glue from the template's
  own properties. Without them moto skips them and ``Ref IngestJob`` resolves to None, so the
  definition would name a job "None" and the Commit Lambda an output database "None".

* AWS::StepFunctions::StateMachine: moto reads only ``DefinitionString`` (the transform writes
  ``DefinitionS3Location``), ignores ``DefinitionSubstitutions`` (so the machine gets an empty
  definition) and puts the machine in the classic backend, which the Step Functions API does not
  read once ``execute_state_machine`` is on (DescribeStateMachine: StateMachineDoesNotExist). The
  test replaces that model's create with what CloudFormation does: it reads the definition from
  S3 and replaces each ``${Name}`` with its substitution as text (so the unquoted
  ``${MaxConcurrency}`` becomes a JSON number), with the values moto's CloudFormation resolved
  from the stack (function ARNs, job name, bucket, parameters), and creates the machine where the
  executing API finds it, after moto's ASL parser accepted it.

* AWS::Lambda::Function: moto's CloudFormation creates functions only in Lambda's default (Docker)
  backend, never in the simple one ``{"lambda": {"use_docker": False}}`` selects (GetFunction:
  "Function not found"), and it ignores Layers, LoggingConfig and TracingConfig. So this test keeps
  the default backend and replaces ``LambdaBackend.invoke`` (no container ever starts).

Needs moto's CloudFormation (the ``moto[cloudformation]`` extra) and the SAM translator
(``aws-sam-translator``) in the test environment; without the translator the transform falls
back to ``.venv-tools/sam`` (``scripts/check_templates.sh`` creates it).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

try:
    from moto.cloudformation import parsing as cfn_parsing
except ImportError as exc:  # the extra's dependencies (openapi-spec-validator, cfn-lint, ...) are missing
    pytest.skip(
        f"moto's CloudFormation cannot be imported ({exc}): the dev dependencies need "
        "moto[s3,glue,stepfunctions,cloudformation]==5.2.1",
        allow_module_level=True,
    )

from botocore.client import BaseClient
from moto import mock_aws
from moto.awslambda.models import LambdaBackend
from moto.glue.models import FakeJob, glue_backends
from moto.s3.models import s3_backends
from moto.stepfunctions.models import StateMachine
from moto.stepfunctions.parser import models as stepfunctions_models
from moto.stepfunctions.parser.models import stepfunctions_parser_backends

from cdc_pipeline import glue_job, ingest
from cdc_pipeline.aws import clients
from cdc_pipeline.aws.deploy import MAX_STACK_NAME, glue_artifacts, upload_glue_artifacts
from cdc_pipeline.aws.s3 import S3StateStore, S3Storage
from cdc_pipeline.errors import PipelineError, TableError
from cdc_pipeline.manifest import Manifest
from cdc_pipeline.plan import WorkItem

from .conftest import REGION, SOURCE_DATABASE
from .fakes import create_source_tables, ingest_succeeded, registry_csv, run_to_end, work_items_at
from .test_state_machine import FakeContext, _CopySharingExecutions, _fix_moto_interrupt_all, load_handler

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
TOOLS_PYTHON = ROOT / ".venv-tools" / "sam" / "bin" / "python"
STACK = "cdc-pipeline"
PACKAGING_BUCKET = "sam-packaging-test"
LANDING_BUCKET = "landing"
MAX_CONCURRENCY = 7  # not the default (20): the definition must carry the parameter's value
ARTIFACTS = glue_artifacts(ROOT)
REQUIRED_PARAMETERS = {
    "SourceDatabase": SOURCE_DATABASE,
    "SourceDataLocation": f"s3://{LANDING_BUCKET}/raw/",
    "RegistryPrefix": f"s3://{LANDING_BUCKET}/registry/",
    "MaxConcurrency": str(MAX_CONCURRENCY),
    "GlueArtifactsVersion": ARTIFACTS.version,
}
KEY = "arn:aws:kms:eu-west-1:123456789012:key/{}"
SOURCE_KEY, REGISTRY_KEY, OUTPUT_KEY, STATE_KEY = (KEY.format(n * 4) for n in "1234")

# Logical id -> why it is removed before create_stack (see the module docstring).
NO_MOTO_MODEL = "moto 5.2.1 has no CloudFormation model for this type"
DROPPED_RESOURCES = {
    "AccessLogsBucketPolicy": NO_MOTO_MODEL,
    "StateBucketPolicy": NO_MOTO_MODEL,
    "OutputBucketPolicy": NO_MOTO_MODEL,
    "ArtifactsBucketPolicy": NO_MOTO_MODEL,
    "RunSchedule": NO_MOTO_MODEL,
    "ExecutionsFailedAlarm": NO_MOTO_MODEL,
    "AlarmEmailSubscription": NO_MOTO_MODEL,
    # AWS::LakeFormation::PrincipalPermissions, only with LakeFormationGrants=CREATE: checked on the
    # template by test_lake_formation_grants_exist_only_when_asked_for.
    "PlanDescribesSourceDatabase": NO_MOTO_MODEL,
    "PlanReadsSourceTables": NO_MOTO_MODEL,
    "CommitCreatesOutputTables": NO_MOTO_MODEL,
    "CommitUpdatesOutputTables": NO_MOTO_MODEL,
    "CommitPublishesOutputPartitions": NO_MOTO_MODEL,
    "Dashboard": "its body GetAtt's ExecutionsFailedAlarm.Arn, which moto cannot create",
}
DROPPED_OUTPUTS = {
    "DashboardUrl": "refers to the dropped Dashboard",
    "ScheduleName": "refers to the dropped RunSchedule",
}


# ---------------------------------------------------------------- the SAM transform, offline


class _CfnYamlLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (!Ref, !Sub, !GetAtt a.b, ...)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnYamlLoader.add_multi_constructor("!", _intrinsic)

_TRANSLATE = """
import json, sys
import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

session = boto3.session.Session(region_name=sys.argv[1])
translator = Translator(None, Parser(), plugins=[], boto_session=session)
cloudformation = translator.translate(json.load(sys.stdin), parameter_values={}, get_managed_policy_map=dict)
json.dump(cloudformation, sys.stdout)
"""


def sam_transform(sam_template: dict[str, Any]) -> dict[str, Any]:
    """AWS::Serverless-2016-10-31 -> plain CloudFormation, offline (what ``sam validate`` runs).

    In this interpreter when samtranslator is installed; else with the tools environment's Python.
    No managed policy is named by the template, so the policy map (an IAM call) is never needed.
    """
    if importlib.util.find_spec("samtranslator") is not None:
        import boto3
        from samtranslator.parser.parser import Parser
        from samtranslator.translator.translator import Translator

        session = boto3.session.Session(region_name=REGION)
        translator = Translator(None, Parser(), plugins=[], boto_session=session)
        return translator.translate(
            copy.deepcopy(sam_template), parameter_values={}, get_managed_policy_map=dict
        )
    if not TOOLS_PYTHON.exists():
        pytest.skip(
            "the SAM transform needs samtranslator: add aws-sam-translator==1.115.0 (the version "
            "aws-sam-cli 1.170.0 pins) to the dev dependencies, or run scripts/check_templates.sh "
            "first to create .venv-tools/sam"
        )
    done = subprocess.run(
        [str(TOOLS_PYTHON), "-c", _TRANSLATE, REGION],
        input=json.dumps(sam_template),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Packaged:
    """What ``sam package`` leaves: the CloudFormation template and the artifacts it points at."""

    template: dict[str, Any]
    artifacts: dict[str, bytes]  # key in PACKAGING_BUCKET -> body
    handlers: dict[str, Path]  # logical id of each function -> its handler's source file
    schedule_input: dict[str, Any]  # what the dropped RunSchedule would start each run with


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in files.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def package() -> Packaged:
    sam = yaml.load(TEMPLATE.read_text(), Loader=_CfnYamlLoader)  # a SafeLoader subclass
    default_handler = sam.get("Globals", {}).get("Function", {}).get("Handler")
    artifacts: dict[str, bytes] = {}
    handlers: dict[str, Path] = {}
    for name, resource in sam["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            module = str(properties.get("Handler", default_handler)).rsplit(".", 1)[0]
            source = ROOT / properties["CodeUri"] / f"{module}.py"
            handlers[name] = source
            artifacts[f"{name}.zip"] = _zip({source.name: source.read_bytes()})
            properties["CodeUri"] = f"s3://{PACKAGING_BUCKET}/{name}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            artifacts[f"{name}.zip"] = _zip({"python/README": b"dummy layer"})
            properties["ContentUri"] = f"s3://{PACKAGING_BUCKET}/{name}.zip"
        elif resource["Type"] == "AWS::Serverless::StateMachine":
            key = Path(properties["DefinitionUri"]).name
            artifacts[key] = (ROOT / properties["DefinitionUri"]).read_bytes()  # uploaded as is
            properties["DefinitionUri"] = f"s3://{PACKAGING_BUCKET}/{key}"
    schedule_input = json.loads(sam["Resources"]["RunSchedule"]["Properties"]["Target"]["Input"])
    return Packaged(sam_transform(sam), artifacts, handlers, schedule_input)


# ---------------------------------------------------------------- what moto's CloudFormation lacks


@dataclass
class _CreatedByTest:
    """A resource made by one of this test's models: Ref gives its name, as in CloudFormation."""

    physical_resource_id: str

    def is_created(self) -> bool:
        return True

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        raise NotImplementedError(f"GetAtt {attribute_name} of a test-created resource")


class _GlueDatabaseModel:
    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::Glue::Database"

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
    ):
        database_input = dict(cloudformation_json["Properties"]["DatabaseInput"])
        name = database_input.setdefault("Name", resource_name)
        glue_backends[account_id][region_name].create_database(name, database_input)
        return _CreatedByTest(name)


class _GlueSecurityConfigurationModel:
    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::Glue::SecurityConfiguration"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
    ):
        configuration = dict(cloudformation_json["Properties"]["EncryptionConfiguration"])
        # CloudFormation's property is S3Encryptions; the Glue API's field is S3Encryption.
        configuration["S3Encryption"] = configuration.pop("S3Encryptions", [])
        glue_backends[account_id][region_name].create_security_configuration(resource_name, configuration)
        return _CreatedByTest(resource_name)


class _GlueJobModel:
    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::Glue::Job"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
    ):
        p = cloudformation_json["Properties"]
        glue_backends[account_id][region_name].create_job(
            name=resource_name,
            role=p["Role"],
            command=p["Command"],
            description=p.get("Description"),
            log_uri=p.get("LogUri"),
            execution_property=p.get("ExecutionProperty", {"MaxConcurrentRuns": 1}),
            default_arguments=p.get("DefaultArguments", {}),
            non_overridable_arguments=p.get("NonOverridableArguments", {}),
            connections=p.get("Connections", {}),
            max_retries=p.get("MaxRetries"),
            allocated_capacity=p.get("AllocatedCapacity"),
            timeout=p.get("Timeout"),
            max_capacity=p.get("MaxCapacity"),
            security_configuration=p.get("SecurityConfiguration"),
            tags={},
            notification_property=p.get("NotificationProperty"),
            glue_version=p.get("GlueVersion"),
            number_of_workers=p.get("NumberOfWorkers"),
            worker_type=p.get("WorkerType"),
            code_gen_configuration_nodes={},
            execution_class=p.get("ExecutionClass"),
            source_control_details={},
        )
        return _CreatedByTest(resource_name)


TEST_MODELS = (_GlueDatabaseModel, _GlueSecurityConfigurationModel, _GlueJobModel)


def _create_state_machine_as_cloudformation_does(
    cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
):
    """AWS::StepFunctions::StateMachine with DefinitionS3Location and DefinitionSubstitutions."""
    properties = cloudformation_json["Properties"]
    if "DefinitionString" in properties:
        text = properties["DefinitionString"]
    elif "Definition" in properties:
        text = json.dumps(properties["Definition"])
    else:
        location = properties["DefinitionS3Location"]
        s3_object = s3_backends[account_id]["aws"].get_object(
            location["Bucket"], location["Key"], version_id=location.get("Version")
        )
        text = s3_object.value.decode()
    for name, value in properties.get("DefinitionSubstitutions", {}).items():
        text = text.replace("${" + name + "}", str(value).lower() if isinstance(value, bool) else str(value))
    return stepfunctions_parser_backends[account_id][region_name].create_state_machine(
        name=properties.get("StateMachineName", resource_name),
        definition=text,
        roleArn=properties["RoleArn"],
        tags=[{"key": tag["Key"], "value": tag["Value"]} for tag in properties.get("Tags", [])],
    )


def _teach_moto_cloudformation(monkeypatch: pytest.MonkeyPatch) -> None:
    models = cfn_parsing.get_model_map()
    missing = {
        model.cloudformation_type(): model
        for model in TEST_MODELS
        if model.cloudformation_type() not in models
    }
    names = cfn_parsing.get_name_type_map()
    monkeypatch.setattr(cfn_parsing, "get_model_map", lambda: {**models, **missing})
    monkeypatch.setattr(
        cfn_parsing,
        "get_name_type_map",
        lambda: {**names, **{kind: model.cloudformation_name_type() for kind, model in missing.items()}},
    )
    monkeypatch.setattr(
        StateMachine,
        "create_from_cloudformation_json",
        classmethod(_create_state_machine_as_cloudformation_does),
    )


# ---------------------------------------------------------------- the deployed stack


@dataclass(frozen=True)
class ApiCall:
    """One AWS call the pipeline's code made, under the role its code runs as (logical id)."""

    role: str
    service: str
    operation: str
    params: dict[str, Any]


def _role_of(reference: Any) -> str:
    """The logical id of the role a resource's ``Role: !GetAtt X.Arn`` names."""
    assert isinstance(reference, dict), reference
    assert "Fn::GetAtt" in reference, reference
    return str(reference["Fn::GetAtt"][0])


def _succeeded_manifest(item: WorkItem) -> Manifest:
    """The manifest :func:`fakes.ingest_succeeded` writes, as the value an ingest returns."""
    written: dict[str, Any] = {}

    class Capture:
        def write_json(self, location: str, data: Any) -> None:
            written[location] = data

    ingest_succeeded(Capture(), item)  # type: ignore[arg-type]
    return Manifest.from_json(written[item.manifest_location])


class Deployment:
    """The stack in moto, its outputs, and the real handlers behind its two functions."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        boto_session: Any,
        packaged: Packaged,
        parameters: dict[str, str] | None = None,
    ) -> None:
        self.s3 = boto_session.client("s3")
        self.iam = boto_session.client("iam")
        self.logs = boto_session.client("logs")
        self.glue = boto_session.client("glue")
        self.sfn = boto_session.client("stepfunctions")
        self.cloudformation = boto_session.client("cloudformation")
        self.awslambda = boto_session.client("lambda")
        self.packaged = packaged
        self.job_runs: list[tuple[str, dict[str, str]]] = []
        self.calls: list[ApiCall] = []  # every AWS call of the pipeline's code, by role
        self.executions: list[dict[str, Any]] = []  # the runs a test kept (their outputs)
        self.returned: dict[str, Any] = {}  # what each handler returned last, by its module's name

        for bucket in (PACKAGING_BUCKET, LANDING_BUCKET):
            self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        for key, body in packaged.artifacts.items():
            self.s3.put_object(Bucket=PACKAGING_BUCKET, Key=key, Body=body)
        # The source catalog is not the stack's: it exists before the deployment.
        self.glue.create_database(DatabaseInput={"Name": SOURCE_DATABASE})

        template = copy.deepcopy(packaged.template)
        for name in DROPPED_RESOURCES:
            del template["Resources"][name]
        for name in DROPPED_OUTPUTS:
            del template["Outputs"][name]
        self.template = template
        self.parameters = {**REQUIRED_PARAMETERS, **(parameters or {})}
        # Buckets named as existing ones exist before the stack, as they would in a landing zone.
        for name in ("ExistingOutputBucket", "ExistingStateBucket"):
            if self.parameters.get(name):
                self.s3.create_bucket(
                    Bucket=self.parameters[name], CreateBucketConfiguration={"LocationConstraint": REGION}
                )
        self.status, self.outputs, self.resources = self.create_stack(STACK, self.parameters)
        # What make deploy does next on a first deploy: the Glue artifacts under their version's keys.
        upload_glue_artifacts(self.s3, self.outputs["ArtifactsBucketName"], ARTIFACTS, say=lambda _: None)
        self.storage = S3Storage(client=self.s3)
        self.state = S3StateStore(self.outputs["StateLocation"], client=self.s3)

        # Each function's real handler, loaded and invoked with the environment moto holds for it.
        self.functions: dict[str, tuple[Callable[..., Any], dict[str, str]]] = {}
        for logical_id, source in packaged.handlers.items():
            configuration = self.awslambda.get_function_configuration(
                FunctionName=self.resources[logical_id]["PhysicalResourceId"]
            )
            environment = {
                key: str(value) for key, value in configuration["Environment"]["Variables"].items()
            }
            environment["POWERTOOLS_TRACE_DISABLED"] = "true"  # no X-Ray daemon here
            with mock.patch.dict(os.environ, environment):
                module = load_handler(source, f"stack_{logical_id}")
            role = _role_of(template["Resources"][logical_id]["Properties"]["Role"])
            for client in vars(module).values():
                if isinstance(client, BaseClient):
                    self._record_calls(client, role)
            for key in (configuration["FunctionArn"], configuration["FunctionName"]):
                self.functions[key] = (module.lambda_handler, environment)
        monkeypatch.setattr(LambdaBackend, "invoke", self._invoke_lambda)
        self._run_the_glue_job_driver(
            monkeypatch, _role_of(template["Resources"]["IngestJob"]["Properties"]["Role"])
        )

    def _record_calls(self, client: BaseClient, role: str) -> None:
        """Record every API call ``client`` makes as a call of ``role`` (its parameters as given)."""

        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            self.calls.append(ApiCall(role, client.meta.service_model.service_name, model.name, dict(params)))

        client.meta.events.register("before-parameter-build", record)

    def _run_the_glue_job_driver(self, monkeypatch: pytest.MonkeyPatch, role: str) -> None:
        """Each Glue job run runs the job's real driver (``cdc_pipeline.glue_job.run_job``), its S3
        client recorded as the job role's; only the Spark work is replaced: it writes one file per
        snapshot (or partition) with the same client, lists them as ingest does, and returns the
        manifest of a success. A table's first attempt in a run fails (a failure record), and the
        run is started again by hand, as an operator would: the second attempt replaces the record."""
        original_start = FakeJob.start_job_run
        original_client = clients.aws_client  # the handlers built theirs above: every later one is the job's
        attempts: dict[tuple[str, str], int] = {}

        def job_client(service: str, *, threads: int, session: Any = None) -> Any:
            client = original_client(service, threads=threads, session=session)
            self._record_calls(client, role)
            return client

        def spark_work(spark: Any, item: WorkItem, storage: Any, **_: Any) -> Manifest:
            attempt = attempts[(item.run_id, item.table)] = attempts.get((item.run_id, item.table), 0) + 1
            if attempt == 1:
                raise TableError(item.table, "Spark failed reading or writing it (a first attempt)")
            folders = {"": item.output_location}
            partitions = None
            if item.partition_by:
                values = ("alpha", "beta") if item.current_partitions is None else ("alpha", "gamma")
                partitions = {
                    value[0]: {
                        "location": f"{item.output_location}/cdc_partition={value[0]}",
                        "values": [value],
                        "rows": 1,
                        "bytes": 4,
                    }
                    for value in values
                }
                folders = {pid: partition["location"] for pid, partition in partitions.items()}
            for folder in folders.values():
                bucket, key = folder.removeprefix("s3://").split("/", 1)
                storage.client.put_object(Bucket=bucket, Key=f"{key}/part-00000.parquet", Body=b"PAR1")
            storage.file_sizes(item.output_location)
            return replace(_succeeded_manifest(item), partition_by=item.partition_by, partitions=partitions)

        def start_job_run(job: FakeJob, *args: Any, **kwargs: Any) -> str:
            arguments = kwargs["arguments"]
            self.job_runs.append((job.name, arguments))
            argv = [f"--work_item_location={arguments['--work_item_location']}", "--JOB_ID=j"]
            try:
                glue_job.run_job(argv, spark=object())
            except PipelineError:
                glue_job.run_job(argv, spark=object())
            return original_start(job, *args, **kwargs)

        monkeypatch.setattr(clients, "aws_client", job_client)
        monkeypatch.setattr(glue_job, "configure", lambda spark: None)
        monkeypatch.setattr(ingest, "check_session", lambda spark: None)
        monkeypatch.setattr(ingest, "_ingest", spark_work)
        monkeypatch.setattr(FakeJob, "start_job_run", start_job_run)

    def create_stack(
        self, name: str, parameters: dict[str, str]
    ) -> tuple[str, dict[str, str], dict[str, dict[str, Any]]]:
        """Create a stack of the template; its status, outputs and resources by logical id."""
        self.cloudformation.create_stack(
            StackName=name,
            TemplateBody=json.dumps(self.template),
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        stack = self.cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
        # moto lists a resource whose condition is false as a row without a logical id: not created.
        resources = {
            resource["LogicalResourceId"]: resource
            for resource in self.cloudformation.describe_stack_resources(StackName=name)["StackResources"]
            if "LogicalResourceId" in resource
        }
        return stack["StackStatus"], outputs, resources

    def role_statements(self, logical_id: str) -> dict[str, dict[str, Any]]:
        """The inline policy statements of a role the stack created, by Sid."""
        role = self.resources[logical_id]["PhysicalResourceId"]
        statements: dict[str, dict[str, Any]] = {}
        for policy in self.iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = self.iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
            if isinstance(document, str):  # moto keeps a CloudFormation role's policy as Python's repr
                document = ast.literal_eval(document)
            for statement in document["Statement"]:
                if statement is not None:  # moto leaves an !If's AWS::NoValue in a list as None
                    statements[statement.get("Sid", "")] = statement
        return statements

    def _invoke_lambda(self, function_name, qualifier, body, headers, response_headers) -> bytes:
        handler, environment = self.functions[function_name]
        with mock.patch.dict(os.environ, environment):
            try:
                result = handler(json.loads(body or "{}"), FakeContext(function_name=function_name))
            except Exception as exc:  # an unhandled error: the state machine's Retry/Catch see it
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        self.returned[handler.__module__] = result
        return json.dumps(result).encode()

    def land(self, tables: list[str]) -> None:
        create_source_tables(self.glue, SOURCE_DATABASE, tables, bucket=LANDING_BUCKET, s3=self.s3)
        self.s3.put_object(
            Bucket=LANDING_BUCKET, Key="registry/tables.csv", Body=registry_csv(tables).encode()
        )

    def run(self, run_input: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        return run_to_end(self.sfn, self.outputs["StateMachineArn"], run_input, timeout_s)


@pytest.fixture(scope="module")
def packaged() -> Packaged:
    return package()


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, boto_session: Any, packaged: Packaged
) -> Iterator[Deployment]:
    """The stack deployed with the required parameters, and any a test gives (indirect parametrize)."""
    yield from deployed(monkeypatch, boto_session, packaged, getattr(request, "param", None))


def deployed(
    monkeypatch: pytest.MonkeyPatch, boto_session: Any, packaged: Packaged, parameters: dict[str, str] | None
) -> Iterator[Deployment]:
    """The body of the ``deployment`` fixture, for other modules' fixtures."""
    _fix_moto_interrupt_all()
    monkeypatch.setattr(stepfunctions_models, "copy", _CopySharingExecutions)
    _teach_moto_cloudformation(monkeypatch)
    # Lambda's default (Docker) backend: moto's CloudFormation creates functions only there, never in
    # the simple backend that {"lambda": {"use_docker": False}} selects. No container ever starts:
    # LambdaBackend.invoke is replaced by the dispatch to the real handlers.
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield Deployment(monkeypatch, boto_session, packaged, parameters)


def test_only_the_documented_resources_are_dropped(packaged: Packaged) -> None:
    resources = packaged.template["Resources"]
    moto_models = cfn_parsing.get_model_map()
    for name, reason in DROPPED_RESOURCES.items():
        assert name in resources, f"{name} is no longer in the template: stop dropping it"
        if reason == NO_MOTO_MODEL:
            assert resources[name]["Type"] not in moto_models, (
                f"moto now has a CloudFormation model for {resources[name]['Type']}: stop dropping {name}"
            )
    assert set(DROPPED_OUTPUTS) <= set(packaged.template["Outputs"])


def test_the_stack_is_created_with_the_state_machine_its_substitutions_describe(deployment) -> None:
    assert deployment.status == "CREATE_COMPLETE"
    expected = set(deployment.template["Resources"]) - {
        name
        for name, resource in deployment.template["Resources"].items()
        if resource.get("Condition") == "HasAlarmEmail"
    }
    assert set(deployment.resources) == expected
    assert {resource["ResourceStatus"] for resource in deployment.resources.values()} == {"CREATE_COMPLETE"}
    outputs = deployment.outputs
    assert set(outputs) == set(deployment.template["Outputs"])
    assert outputs["IngestJobName"] == f"{STACK}-ingest-table"
    assert outputs["OutputDatabaseName"] == "cdc_pipeline_current"  # named after the stack

    definition_text = deployment.sfn.describe_state_machine(stateMachineArn=outputs["StateMachineArn"])[
        "definition"
    ]
    assert "${" not in definition_text
    definition = json.loads(definition_text)
    states = definition["States"]
    plan_arn = deployment.awslambda.get_function(
        FunctionName=deployment.resources["PlanFunction"]["PhysicalResourceId"]
    )["Configuration"]["FunctionArn"]
    commit_arn = deployment.awslambda.get_function(
        FunctionName=deployment.resources["CommitFunction"]["PhysicalResourceId"]
    )["Configuration"]["FunctionArn"]
    assert states["PlanRun"]["Parameters"]["FunctionName"] == plan_arn
    assert states["CommitRun"]["Parameters"]["FunctionName"] == commit_arn
    ingest = states["IngestTables"]
    assert ingest["MaxConcurrency"] == MAX_CONCURRENCY  # the unquoted placeholder became a number
    assert (
        ingest["ItemProcessor"]["States"]["IngestTable"]["Parameters"]["JobName"] == outputs["IngestJobName"]
    )
    assert ingest["ResultWriter"]["Parameters"] == {
        "Bucket": outputs["StateBucketName"],
        "Prefix": "state/map-results",
    }
    job = deployment.glue.get_job(JobName=outputs["IngestJobName"])["Job"]
    assert job["ExecutionProperty"]["MaxConcurrentRuns"] == MAX_CONCURRENCY
    assert job["SecurityConfiguration"] == f"{STACK}-ingest"
    assert job["DefaultArguments"]["--extra-py-files"] == outputs["GlueExtraPyFilesLocation"]


def test_the_glue_job_runs_the_artifacts_of_the_version_the_deploy_passed(deployment) -> None:
    outputs = deployment.outputs
    job = deployment.glue.get_job(JobName=outputs["IngestJobName"])["Job"]
    prefix = f"s3://{outputs['ArtifactsBucketName']}/glue/{ARTIFACTS.version}/"
    assert job["Command"]["ScriptLocation"] == prefix + "ingest_table.py"
    assert job["DefaultArguments"]["--extra-py-files"] == prefix + "cdc_pipeline.zip"
    for location, body in (
        (job["Command"]["ScriptLocation"], ARTIFACTS.script),
        (job["DefaultArguments"]["--extra-py-files"], ARTIFACTS.package),
    ):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        assert deployment.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert outputs["GlueArtifactsVersion"] == ARTIFACTS.version


def test_the_glue_job_logs_to_log_groups_the_stack_owns_with_their_retention(deployment) -> None:
    job = deployment.glue.get_job(JobName=deployment.outputs["IngestJobName"])["Job"]
    arguments = job["DefaultArguments"]
    assert arguments["--custom-logGroup-prefix"] == f"/aws-glue/{STACK}"
    assert "--enable-continuous-cloudwatch-log" not in arguments  # Glue 5.x ignores it
    groups = deployment.logs.describe_log_groups(logGroupNamePrefix=f"/aws-glue/{STACK}/")["logGroups"]
    assert {group["logGroupName"]: group.get("retentionInDays") for group in groups} == {
        f"/aws-glue/{STACK}/error": 90,
        f"/aws-glue/{STACK}/output": 90,
    }
    assert deployment.outputs["GlueLogGroups"] == f"/aws-glue/{STACK}/error, /aws-glue/{STACK}/output"
    assert job["ExecutionClass"] == "STANDARD"


def test_glue_assumes_its_role_without_an_undocumented_condition(deployment) -> None:
    role = deployment.resources["GlueJobRole"]["PhysicalResourceId"]
    trust = deployment.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "glue.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_without_kms_keys_no_role_may_use_any_key_but_the_pipeline_key(deployment) -> None:
    pipeline_key = deployment.resources["PipelineKey"]["PhysicalResourceId"]
    for role in ("GlueJobRole", "PlanFunctionRole", "CommitFunctionRole", "CdcStateMachineRole"):
        for sid, statement in deployment.role_statements(role).items():
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            if any(action.startswith("kms:") for action in actions):
                assert sid == "EncryptBookmarks", (role, sid)
                assert pipeline_key in statement["Resource"]


def test_two_stacks_in_one_account_and_region_get_names_of_their_own(deployment) -> None:
    second = "cdc-pipeline-prod"
    status, outputs, _ = deployment.create_stack(second, REQUIRED_PARAMETERS)

    assert status == "CREATE_COMPLETE"
    first = deployment.outputs
    assert outputs["OutputDatabaseName"] == "cdc_pipeline_prod_current"
    for name in ("OutputDatabaseName", "StateMachineArn", "IngestJobName", "GlueLogGroups", "StateLocation"):
        assert outputs[name] != first[name], name
    assert outputs["StateMachineArn"].endswith(f":stateMachine:{second}-cdc-pipeline")


def test_the_longest_stack_name_the_deploy_accepts_fits_the_state_machine_name(deployment) -> None:
    longest = "c" * MAX_STACK_NAME
    status, outputs, _ = deployment.create_stack(longest, REQUIRED_PARAMETERS)

    assert status == "CREATE_COMPLETE"
    name = outputs["StateMachineArn"].rsplit(":", 1)[1]
    assert len(name) == 80  # Step Functions' limit, exactly


EXISTING_BUCKETS_KMS_AND_FLEX = {
    "ExistingOutputBucket": "corp-curated",
    "ExistingStateBucket": "corp-pipeline-state",
    "SourceKmsKeyArn": SOURCE_KEY,
    "RegistryKmsKeyArn": REGISTRY_KEY,
    "OutputKmsKeyArn": OUTPUT_KEY,
    "StateKmsKeyArn": STATE_KEY,
    "GlueExecutionClass": "FLEX",
}


@pytest.mark.parametrize("deployment", [EXISTING_BUCKETS_KMS_AND_FLEX], indirect=True)
def test_a_run_publishes_into_existing_buckets_instead_of_creating_them(deployment) -> None:
    assert not {"StateBucket", "OutputBucket", "StateBucketPolicy", "OutputBucketPolicy"} & set(
        deployment.resources
    )
    assert deployment.outputs["StateLocation"] == "s3://corp-pipeline-state/state"
    assert deployment.outputs["OutputLocation"] == "s3://corp-curated/current"
    deployment.land(["customers", "orders"])

    execution = deployment.run(deployment.packaged.schedule_input)

    assert execution["status"] == "SUCCEEDED", execution
    state, _ = deployment.state.read()
    assert sorted(state.tables) == ["customers", "orders"]
    assert all(table.location.startswith("s3://corp-curated/current/") for table in state.tables.values())


@pytest.mark.parametrize("deployment", [EXISTING_BUCKETS_KMS_AND_FLEX], indirect=True)
def test_each_role_may_use_exactly_the_kms_keys_of_the_data_it_touches(deployment) -> None:
    pipeline_key = deployment.resources["PipelineKey"]["PhysicalResourceId"]
    expected = {
        "GlueJobRole": {
            "DecryptSourceFiles": (["kms:Decrypt"], SOURCE_KEY),
            "WriteAndReadEncryptedSnapshots": (["kms:Decrypt", "kms:GenerateDataKey"], OUTPUT_KEY),
            "ReadWorkItemsAndWriteManifests": (["kms:Decrypt", "kms:GenerateDataKey"], STATE_KEY),
        },
        "PlanFunctionRole": {
            "DecryptRegistry": (["kms:Decrypt"], REGISTRY_KEY),
            "ReadAndWriteEncryptedState": (["kms:Decrypt", "kms:GenerateDataKey"], STATE_KEY),
        },
        "CommitFunctionRole": {
            "ReadAndWriteEncryptedState": (["kms:Decrypt", "kms:GenerateDataKey"], STATE_KEY),
            "ReadEncryptedSnapshots": (["kms:Decrypt"], OUTPUT_KEY),
        },
        # The Distributed Map's ItemReader and ResultWriter, in the state bucket.
        "CdcStateMachineRole": {
            "ReadItemsAndWriteResultsEncrypted": (["kms:Decrypt", "kms:GenerateDataKey"], STATE_KEY),
        },
    }
    for role, grants in expected.items():
        found = {
            sid: (sorted([s["Action"]] if isinstance(s["Action"], str) else s["Action"]), s["Resource"])
            for sid, s in deployment.role_statements(role).items()
            if "kms:" in json.dumps(s["Action"]) and pipeline_key not in json.dumps(s["Resource"])
        }
        assert found == grants, role
        for sid in grants:
            condition = deployment.role_statements(role)[sid]["Condition"]
            assert condition == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    configuration = deployment.glue.get_security_configuration(Name=f"{STACK}-ingest")[
        "SecurityConfiguration"
    ]
    assert configuration["EncryptionConfiguration"]["S3Encryption"] == [
        {"S3EncryptionMode": "SSE-KMS", "KmsKeyArn": OUTPUT_KEY}
    ]
    job = deployment.glue.get_job(JobName=deployment.outputs["IngestJobName"])["Job"]
    assert job["ExecutionClass"] == "FLEX"


# ---------------------------------------------------------------- what moto cannot create: the template


def test_the_schedule_is_created_disabled_so_a_first_deploy_runs_nothing_half_installed(packaged) -> None:
    template = packaged.template
    assert template["Parameters"]["ScheduleState"]["Default"] == "DISABLED"
    assert template["Resources"]["RunSchedule"]["Properties"]["State"] == {"Ref": "ScheduleState"}


POWERTOOLS_SSM = "{{resolve:ssm:/aws/service/powertools/python/x86_64/python3.11/${PowertoolsVersion}}}"


def _evaluate(node: Any, template: dict[str, Any], parameters: dict[str, str]) -> Any:
    """``node`` with the template's conditions, Fn::If and parameter Refs decided for ``parameters``
    (other intrinsics are kept as they are)."""

    def condition(name: str) -> bool:
        return bool(_evaluate(template["Conditions"][name], template, parameters))

    if isinstance(node, list):
        return [_evaluate(item, template, parameters) for item in node]
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((function, value),) = node.items()
    if function == "Fn::If":
        name, when_true, when_false = value
        return _evaluate(when_true if condition(name) else when_false, template, parameters)
    if function == "Fn::Not":
        return not _evaluate(value[0], template, parameters)
    if function == "Fn::Equals":
        left, right = (_evaluate(item, template, parameters) for item in value)
        return left == right
    if function == "Condition":
        return condition(value)
    if function == "Ref" and value in template["Parameters"]:
        return parameters.get(value, template["Parameters"][value].get("Default"))
    return node


def test_the_powertools_layer_is_read_from_the_public_ssm_parameter_unless_a_layer_is_given(packaged) -> None:
    template = packaged.template
    given = "arn:aws-cn:lambda:cn-north-1:123456789012:layer:powertools-python:3"
    for name in ("PlanFunction", "CommitFunction"):
        layers = template["Resources"][name]["Properties"]["Layers"]
        assert {"Fn::Sub": POWERTOOLS_SSM} in _evaluate(layers, template, {})
        assert given in _evaluate(layers, template, {"PowertoolsLayerArn": given})
        assert POWERTOOLS_SSM not in json.dumps(_evaluate(layers, template, {"PowertoolsLayerArn": given}))
        assert len(_evaluate(layers, template, {"PowertoolsLayerArn": given})) == 2  # and the shared layer
        assert "017000801446" not in json.dumps(layers)


def test_lake_formation_grants_exist_only_when_asked_for_and_name_the_two_lambda_roles(packaged) -> None:
    resources = packaged.template["Resources"]
    grants = {
        name: resource
        for name, resource in resources.items()
        if resource["Type"] == "AWS::LakeFormation::PrincipalPermissions"
    }
    assert {resource["Condition"] for resource in grants.values()} == {"GrantsLakeFormation"}
    assert packaged.template["Conditions"]["GrantsLakeFormation"] == {
        "Fn::Equals": [{"Ref": "LakeFormationGrants"}, "CREATE"]
    }
    principals = {
        json.dumps(resource["Properties"]["Principal"]["DataLakePrincipalIdentifier"])
        for resource in grants.values()
    }
    assert principals == {
        json.dumps({"Fn::GetAtt": ["PlanFunctionRole", "Arn"]}),
        json.dumps({"Fn::GetAtt": ["CommitFunctionRole", "Arn"]}),
    }
    assert all(resource in resources for resource in ("PlanFunctionRole", "CommitFunctionRole"))
    # The Commit role's grants on the output tables cover updating them and their partitions.
    commit_role = {"Fn::GetAtt": ["CommitFunctionRole", "Arn"]}
    on_output_tables = {
        permission
        for resource in grants.values()
        if resource["Properties"]["Principal"]["DataLakePrincipalIdentifier"] == commit_role
        and "Table" in resource["Properties"]["Resource"]
        for permission in resource["Properties"]["Permissions"]
    }
    assert on_output_tables == {"DESCRIBE", "ALTER", "SELECT", "INSERT", "DELETE"}


def test_a_scheduled_run_of_the_deployed_state_machine_commits_every_table(deployment) -> None:
    tables = ["customers", "orders", "payments"]
    deployment.land(tables)

    execution = deployment.run(deployment.packaged.schedule_input)

    assert execution["status"] == "SUCCEEDED", execution
    commit = json.loads(execution["output"])["commit"]
    assert (commit["succeeded_count"], commit["failed_count"]) == (3, 0)
    # CommitRun's ResultSelector passes on every figure the Commit Lambda returns (docs/aws.md).
    assert commit == deployment.returned["stack_CommitFunction"]
    assert (commit["rows_read"], commit["rows_written"]) == (30, 21)
    ingested = sorted(
        item.table
        for _, arguments in deployment.job_runs
        for item in work_items_at(deployment.storage, arguments["--work_item_location"])
    )
    assert ingested == tables
    assert {job for job, _ in deployment.job_runs} == {deployment.outputs["IngestJobName"]}
    state, _ = deployment.state.read()
    assert state.revision == 1
    assert sorted(state.tables) == tables
    for table in tables:
        assert state.tables[table].location.startswith(deployment.outputs["OutputLocation"] + "/")
        registered = deployment.glue.get_table(
            DatabaseName=deployment.outputs["OutputDatabaseName"], Name=table
        )
        assert (
            registered["Table"]["StorageDescriptor"]["Location"].rstrip("/") == state.tables[table].location
        )
