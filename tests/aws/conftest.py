"""AWS fixtures: fake credentials for every test, moto-backed S3 and Glue clients, a bucket, databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "eu-west-1"
BUCKET = "cdc-pipeline-test"
SOURCE_DATABASE = "raw"
OUTPUT_DATABASE = "current"


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Credentials and region that cannot reach a real account, and no profile or config to find one."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One session for every test: it loads each service model once (a tenth of a second per client
    otherwise, as moto resets boto3's default session on every start). Its credentials are fake."""
    return boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        region_name=REGION,
    )


@pytest.fixture
def aws() -> Iterator[None]:
    """Every AWS call inside the test goes to moto's in-memory backends."""
    with mock_aws():
        yield


@pytest.fixture
def s3_client(aws: None, boto_session: boto3.session.Session) -> Any:
    return boto_session.client("s3")


@pytest.fixture
def bucket(s3_client: Any) -> str:
    s3_client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return BUCKET


@pytest.fixture
def glue_client(aws: None, boto_session: boto3.session.Session) -> Any:
    return boto_session.client("glue")


@pytest.fixture
def source_database(glue_client: Any) -> str:
    glue_client.create_database(DatabaseInput={"Name": SOURCE_DATABASE})
    return SOURCE_DATABASE


@pytest.fixture
def output_database(glue_client: Any) -> str:
    glue_client.create_database(DatabaseInput={"Name": OUTPUT_DATABASE})
    return OUTPUT_DATABASE


@pytest.fixture
def offline_s3_client(boto_session: boto3.session.Session) -> Any:
    """A real S3 client for botocore's Stubber: answers are scripted, nothing leaves the process."""
    return boto_session.client("s3")


@pytest.fixture
def offline_glue_client(boto_session: boto3.session.Session) -> Any:
    """A real Glue client for botocore's Stubber."""
    return boto_session.client("glue")
