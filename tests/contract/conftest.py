"""Each port's implementations behind one test-facing shape, so one contract suite runs against all.

Every ``*_case`` fixture is parametrised over the local implementation and the S3 one (moto).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from cdc_pipeline.aws.s3 import S3LeaseStore, S3RegistrySource, S3StateStore, S3Storage
from cdc_pipeline.lease import LeaseStore, LocalLeaseStore
from cdc_pipeline.registry import LocalRegistrySource, RegistrySource
from cdc_pipeline.state import HISTORY_DIR, LocalStateStore, StateStore
from cdc_pipeline.storage import LocalStorage, Storage

# The AWS fixtures (fake credentials for every test, the moto bucket) are shared with tests/aws.
from tests.aws.conftest import aws, boto_session, bucket, fake_aws_environment, glue_client, s3_client

__all__ = ["aws", "boto_session", "bucket", "fake_aws_environment", "glue_client", "s3_client"]

IMPLEMENTATIONS = ["local", "s3"]


def _s3_objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object below ``prefix``, by key relative to it."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            found[entry["Key"][len(prefix) :]] = body
    return found


def _local_files(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


# ----------------------------------------------------------------------------------------------
# StateStore
# ----------------------------------------------------------------------------------------------


@dataclass
class StateStoreCase:
    """A state store and raw access to what it stores, the same way for every implementation."""

    make: Callable[[], StateStore]
    document_name: str  # how the store names its document in messages
    put_raw: Callable[[bytes], None]
    get_raw: Callable[[], bytes | None]
    remove: Callable[[], None]
    history: Callable[[], dict[str, bytes]]


def _local_state_store(directory: Path) -> StateStoreCase:
    store = LocalStateStore(directory)

    def put_raw(content: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        store.path.write_bytes(content)

    return StateStoreCase(
        make=lambda: LocalStateStore(directory),
        document_name=str(store.path),
        put_raw=put_raw,
        get_raw=lambda: store.path.read_bytes() if store.path.exists() else None,
        remove=store.path.unlink,
        history=lambda: _local_files(directory / HISTORY_DIR),
    )


def _s3_state_store(client: Any, bucket: str) -> StateStoreCase:
    store = S3StateStore(f"s3://{bucket}/cdc", client=client)

    def get_raw() -> bytes | None:
        return _s3_objects(client, bucket, store.key).get("")

    return StateStoreCase(
        make=lambda: S3StateStore(f"s3://{bucket}/cdc", client=client),
        document_name=store.uri,
        put_raw=lambda content: client.put_object(Bucket=bucket, Key=store.key, Body=content),
        get_raw=get_raw,
        remove=lambda: client.delete_object(Bucket=bucket, Key=store.key),
        history=lambda: _s3_objects(client, bucket, f"cdc/{HISTORY_DIR}/"),
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def state_store_case(request: pytest.FixtureRequest, tmp_path: Path) -> StateStoreCase:
    if request.param == "local":
        return _local_state_store(tmp_path / "cdc")
    return _s3_state_store(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))


# ----------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------


@dataclass
class StorageCase:
    """A storage, how it spells a location, and raw access to the files or objects below its root."""

    storage: Storage
    location: Callable[[str], str]  # a relative path as this storage's location
    put_file: Callable[[str, bytes], None]
    files: Callable[[], dict[str, bytes]]


def _local_storage(root: Path) -> StorageCase:
    def put_file(relative: str, content: bytes) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    return StorageCase(
        storage=LocalStorage(),
        location=lambda relative: str(root / relative),
        put_file=put_file,
        files=lambda: _local_files(root),
    )


def _s3_storage(client: Any, bucket: str) -> StorageCase:
    return StorageCase(
        storage=S3Storage(client=client),
        location=lambda relative: f"s3://{bucket}/lake/{relative}",
        put_file=lambda relative, content: client.put_object(
            Bucket=bucket, Key=f"lake/{relative}", Body=content
        ),
        files=lambda: _s3_objects(client, bucket, "lake/"),
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def storage_case(request: pytest.FixtureRequest, tmp_path: Path) -> StorageCase:
    if request.param == "local":
        return _local_storage(tmp_path / "lake")
    return _s3_storage(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))


# ----------------------------------------------------------------------------------------------
# RegistrySource
# ----------------------------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class RegistryCase:
    """A registry source over an initially empty folder, and a way to add files aged at will."""

    source: RegistrySource
    missing_source: RegistrySource  # over a folder that does not exist
    location: str  # how errors name the folder
    add: Callable[[str, bytes, datetime], None]  # relative name, content, modification time
    name_of: Callable[[str], str]  # the name ``newest`` returns for a relative name


def _local_registry(root: Path) -> RegistryCase:
    directory = root / "registry"
    directory.mkdir()

    def add(relative: str, content: bytes, modified: datetime) -> None:
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (modified.timestamp(), modified.timestamp()))

    return RegistryCase(
        source=LocalRegistrySource(directory),
        missing_source=LocalRegistrySource(root / "no-such-registry"),
        location=str(directory),
        add=add,
        name_of=lambda relative: str(directory / relative),
    )


def _s3_registry(client: Any, bucket: str) -> RegistryCase:
    def add(relative: str, content: bytes, modified: datetime) -> None:
        # S3 sets LastModified itself (to the second); moto takes it from this clock, so tests can
        # age objects without sleeping.
        naive_utc = modified.astimezone(UTC).replace(tzinfo=None)
        with mock.patch("moto.s3.models.utcnow", return_value=naive_utc):
            client.put_object(Bucket=bucket, Key=f"config/registry/{relative}", Body=content)

    return RegistryCase(
        source=S3RegistrySource(f"s3://{bucket}/config/registry/", client=client),
        missing_source=S3RegistrySource(f"s3://{bucket}/config/no-such-registry", client=client),
        location=f"s3://{bucket}/config/registry/",
        add=add,
        name_of=lambda relative: f"s3://{bucket}/config/registry/{relative}",
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def registry_case(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryCase:
    if request.param == "local":
        return _local_registry(tmp_path)
    return _s3_registry(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))


# ----------------------------------------------------------------------------------------------
# LeaseStore
# ----------------------------------------------------------------------------------------------


@dataclass
class LeaseStoreCase:
    """A lease store (a fresh instance each ``make``) and raw access to the lease it keeps."""

    make: Callable[[], LeaseStore]
    location: str  # how the store names the lease in messages
    put_raw: Callable[[bytes], None]
    get_raw: Callable[[], bytes | None]


def _local_lease_store(directory: Path) -> LeaseStoreCase:
    store = LocalLeaseStore(directory)

    def put_raw(content: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        store.path.write_bytes(content)

    return LeaseStoreCase(
        make=lambda: LocalLeaseStore(directory),
        location=store.location,
        put_raw=put_raw,
        get_raw=lambda: store.path.read_bytes() if store.path.exists() else None,
    )


def _s3_lease_store(client: Any, bucket: str) -> LeaseStoreCase:
    store = S3LeaseStore(f"s3://{bucket}/cdc", client=client)
    return LeaseStoreCase(
        make=lambda: S3LeaseStore(f"s3://{bucket}/cdc", client=client),
        location=store.location,
        put_raw=lambda content: client.put_object(Bucket=bucket, Key=store.key, Body=content),
        get_raw=lambda: _s3_objects(client, bucket, store.key).get(""),
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def lease_store_case(request: pytest.FixtureRequest, tmp_path: Path) -> LeaseStoreCase:
    if request.param == "local":
        return _local_lease_store(tmp_path / "cdc")
    return _s3_lease_store(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))
