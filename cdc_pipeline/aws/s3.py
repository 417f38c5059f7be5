"""The core's storage, state-store and registry ports over Amazon S3 (``s3://bucket/key`` locations).

Each class behaves like its local counterpart (see ``storage``, ``state`` and ``registry``), so one
contract suite holds both to the same behaviour. The state document's compare-and-swap is S3's own
conditional ``PutObject``: create-only for a first commit, match-the-ETag for every later one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import boto3
from botocore.exceptions import ClientError

from cdc_pipeline.arrivals import DataFile, FileListing, is_hidden
from cdc_pipeline.errors import (
    CommitConflictError,
    ConfigurationError,
    PipelineError,
    RegistryError,
)
from cdc_pipeline.lease import LEASE_FILE, Lease, LeaseConflictError, parse_lease
from cdc_pipeline.registry import is_registry_file
from cdc_pipeline.state import HISTORY_DIR, STATE_FILE, Revision, StateDocument, parse_state_document

SCHEME = "s3://"
# The most keys one DeleteObjects request accepts.
DELETE_BATCH = 1000
# A condition S3 did not meet: 412 on a mismatch, 409 when a concurrent conditional write to the same
# key was in flight. Both mean "another writer got there", which for the state is a commit conflict.
_CONDITION_FAILED = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_ACCESS_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled"})


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/key`` into its bucket and key.

    Parameters
    ----------
    uri
        An ``s3://`` URI. The key may be empty (``s3://bucket`` or ``s3://bucket/``).

    Returns
    -------
    tuple[str, str]
        The bucket name and the key, without the leading slash.

    Raises
    ------
    ConfigurationError
        When ``uri`` is not an ``s3://`` URI or names no bucket.
    """
    if not uri.startswith(SCHEME):
        raise ConfigurationError(
            f"{uri!r} is not an S3 location; on AWS every location (state path, output path, registry "
            "prefix) must be written s3://bucket/prefix"
        )
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{uri!r} names no bucket; write it s3://bucket/prefix")
    return bucket, key


def _uri(bucket: str, key: str) -> str:
    return f"{SCHEME}{bucket}/{key}"


def _join(prefix: str, *parts: str) -> str:
    return "/".join(part for part in (prefix.strip("/"), *parts) if part)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _raise_for(
    exc: ClientError,
    *,
    doing: str,
    uri: str,
    permission: str,
    error: type[ConfigurationError] = ConfigurationError,
) -> NoReturn:
    """Turn the S3 errors an operator can fix into a message saying how; re-raise any other."""
    code = _error_code(exc)
    bucket = uri[len(SCHEME) :].partition("/")[0]
    if code == "NoSuchBucket":
        raise error(
            f"cannot {doing} {uri}: bucket {bucket!r} does not exist; create it or correct the location"
        ) from exc
    if code in _ACCESS_DENIED:
        # Without s3:ListBucket, S3 answers a read of a missing object with AccessDenied, not NoSuchKey.
        listing = "" if permission == "s3:ListBucket" else f" and s3:ListBucket on bucket {bucket!r}"
        raise error(
            f"cannot {doing} {uri}: access denied; grant the role {permission} on it{listing}"
        ) from exc
    raise exc


class S3Storage:
    """Small JSON documents and run folders in S3; a ``PutObject`` is atomic, so no temporary object.

    Parameters
    ----------
    client
        A boto3 S3 client; one is created when omitted.
    """

    def __init__(self, client: Any = None) -> None:
        self.client = client or boto3.client("s3")

    def write_json(self, location: str, data: Any) -> None:
        """Write any JSON value (an object, or an array such as a Map's item list) at ``location``."""
        bucket, key = _object_key(location)
        # Compact: a 10,000-table plan is tens of MB, and the Plan Lambda holds it in memory.
        body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        except ClientError as exc:
            _raise_for(exc, doing="write", uri=location, permission="s3:PutObject")

    def read_json(self, location: str) -> Any:
        """The JSON value at ``location``, or None when there is no object there.

        Raises
        ------
        ValueError
            When the object is not valid JSON, naming ``location``.
        """
        bucket, key = _object_key(location)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                return None
            _raise_for(exc, doing="read", uri=location, permission="s3:GetObject")
        try:
            return json.loads(response["Body"].read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{location} is not valid JSON: {exc}") from exc

    def delete_tree(self, location: str) -> bool:
        """Delete the object at ``location`` and every object below ``location/``.

        Only whole path segments count: deleting ``snap/r1`` leaves ``snap/r10`` alone.

        Returns
        -------
        bool
            Whether there was anything to delete.

        Raises
        ------
        ConfigurationError
            When ``location`` names a whole bucket (never deleted from here).
        PipelineError
            When S3 refused to delete some of the objects.
        """
        bucket, key = parse_s3_uri(location)
        key = key.rstrip("/")
        if not key:
            raise ConfigurationError(
                f"refusing to delete {location}: it names a whole bucket; delete_tree removes one "
                "run's folder, so pass the folder's location"
            )
        batch: list[str] = []
        deleted_any = False
        for object_key in self._keys_below(bucket, key + "/", location):
            batch.append(object_key)
            if len(batch) == DELETE_BATCH:
                self._delete(bucket, batch, location)
                batch, deleted_any = [], True
        if self._exists(bucket, key, location):
            batch.append(key)
        if batch:
            self._delete(bucket, batch, location)
            deleted_any = True
        return deleted_any

    def file_sizes(self, location: str) -> dict[str, int]:
        """The bytes of every object below ``location/``, by key relative to it."""
        bucket, key = parse_s3_uri(location)
        prefix = key.rstrip("/") + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            return {
                entry["Key"][len(prefix) :]: entry["Size"]
                for page in pages
                for entry in page.get("Contents", [])
            }
        except ClientError as exc:
            _raise_for(exc, doing="list", uri=location, permission="s3:ListBucket")

    def list_folders(self, location: str) -> list[str]:
        """The names of the folders directly below ``location/`` (S3's common prefixes), sorted."""
        bucket, key = parse_s3_uri(location)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        try:
            return sorted(
                entry["Prefix"][len(prefix) :].rstrip("/")
                for page in pages
                for entry in page.get("CommonPrefixes", [])
            )
        except ClientError as exc:
            _raise_for(exc, doing="list", uri=location, permission="s3:ListBucket")

    def _keys_below(self, bucket: str, prefix: str, location: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                yield from (entry["Key"] for entry in page.get("Contents", []))
        except ClientError as exc:
            _raise_for(exc, doing="list", uri=location, permission="s3:ListBucket")

    def _exists(self, bucket: str, key: str, location: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            _raise_for(exc, doing="look up", uri=location, permission="s3:GetObject")
        return True

    def _delete(self, bucket: str, keys: list[str], location: str) -> None:
        try:
            response = self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )
        except ClientError as exc:
            _raise_for(exc, doing="delete objects under", uri=location, permission="s3:DeleteObject")
        # DeleteObjects answers 200 even when some keys were not deleted; only Errors tells.
        errors = response.get("Errors", [])
        if errors:
            sample = "; ".join(
                f"{error.get('Key')}: {error.get('Code')} ({error.get('Message')})" for error in errors[:3]
            )
            raise PipelineError(
                f"S3 did not delete {len(errors)} of {len(keys)} object(s) under {location} in bucket "
                f"{bucket!r}, e.g. {sample}. Grant the role s3:DeleteObject on that prefix (and check "
                "for object lock), then delete the folder by hand; the committed state does not "
                "reference it"
            )


def list_data_files(client: Any, location: str, start_after: str | None = None) -> FileListing:
    """Every data file below ``location`` (one paginated listing), stamped with ``LastModified``;
    with ``start_after`` (a path relative to ``location``), only the keys that sort after it.

    The listing's reference time is S3's own clock (the ``Date`` header of the first page), the
    clock ``LastModified`` is on. Folder markers and hidden files (``_SUCCESS``, ``.crc``) are not
    data files.
    """
    bucket, prefix = parse_s3_uri(_folder_uri(location))
    files: list[DataFile] = []
    reference: int | None = None
    fallback = _now_micros()
    arguments = {"Bucket": bucket, "Prefix": prefix}
    if start_after is not None:
        arguments["StartAfter"] = prefix + start_after
    pages = client.get_paginator("list_objects_v2").paginate(**arguments)
    try:
        for page in pages:
            if reference is None:
                reference = _server_time(page)
            for entry in page.get("Contents", []):
                relative = entry["Key"][len(prefix) :]
                if not relative or relative.endswith("/") or any(map(is_hidden, relative.split("/"))):
                    continue
                modified = entry["LastModified"]
                files.append(DataFile(relative, int(entry["Size"]), _epoch_micros(modified)))
    except ClientError as exc:
        _raise_for(exc, doing="list", uri=location, permission="s3:ListBucket")
    return FileListing(location, tuple(files), reference if reference is not None else fallback)


def _folder_uri(location: str) -> str:
    for scheme in ("s3a://", "s3n://"):
        if location.startswith(scheme):
            location = SCHEME + location[len(scheme) :]
    return location.rstrip("/") + "/"


def _server_time(page: dict[str, Any]) -> int | None:
    """S3's clock when the listing began. The header counts whole seconds and is stamped when the
    response is sent, so one second back is at or before the moment the listing started."""
    date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return _epoch_micros(parsedate_to_datetime(date)) - 1_000_000 if date else None


def _epoch_micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _now_micros() -> int:
    return time.time_ns() // 1000


def _object_key(location: str) -> tuple[str, str]:
    bucket, key = parse_s3_uri(location)
    if not key or key.endswith("/"):
        raise ConfigurationError(
            f"{location!r} names a folder, not an object; a JSON document needs a key such as "
            f"{_uri(bucket, _join(key, 'document.json'))}"
        )
    return bucket, key


class S3StateStore:
    """The state document at ``<cdc_path>/state.json``; compare-and-swap by S3 conditional writes.

    The version token is the document's ETag. Every committed revision is also copied, create-only,
    to ``<cdc_path>/history/<revision>-<run_id>.json``.

    Parameters
    ----------
    cdc_path
        The ``s3://`` folder holding the state (the pipeline's ``cdc_path``).
    client
        A boto3 S3 client; one is created when omitted.
    """

    def __init__(self, cdc_path: str, client: Any = None) -> None:
        self.bucket, prefix = parse_s3_uri(cdc_path)
        self.prefix = prefix.strip("/")
        self.key = _join(self.prefix, STATE_FILE)
        self.uri = _uri(self.bucket, self.key)
        self.client = client or boto3.client("s3")

    def history_key(self, document: StateDocument) -> str:
        """Where ``document``'s history copy goes (named by revision and run, like the local store)."""
        return _join(
            self.prefix, HISTORY_DIR, f"{document.revision:010d}-{document.run_id or 'unknown'}.json"
        )

    def read(self) -> tuple[StateDocument, str | None]:
        """The committed document and its ETag, or an empty revision 0 and None when there is none.

        Raises
        ------
        StateCorruptError
            When the object is not a state document; it is never read as "no state".
        """
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                return StateDocument(), None
            _raise_for(exc, doing="read the state document", uri=self.uri, permission="s3:GetObject")
        return parse_state_document(response["Body"].read(), self.uri), str(response["ETag"])

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        """Replace the document if its ETag is still ``expected_version`` (None: if there is none).

        Parameters
        ----------
        document
            The new revision.
        expected_version
            The ETag :meth:`read` returned when the run planned, or None when it planned from no state.

        Returns
        -------
        str
            The new document's ETag.

        Raises
        ------
        CommitConflictError
            When another run committed (or deleted the document) since; nothing is written then.
        StateCorruptError
            When the current document is corrupt; it is never replaced.
        """
        payload = json.dumps(document.to_json(), indent=2, sort_keys=True).encode()
        condition = {"IfNoneMatch": "*"} if expected_version is None else {"IfMatch": expected_version}
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=payload, ContentType="application/json", **condition
            )
            version = str(response["ETag"])
        except ClientError as exc:
            if not self._lost_the_race(exc, expected_version):
                _raise_for(exc, doing="write the state document", uri=self.uri, permission="s3:PutObject")
            current, current_version = self.read()
            if current_version is None or current != document:
                raise self._conflict(exc, current, current_version, expected_version) from exc
            # Our own write landed and its response was lost: botocore's retry then failed the condition.
            version = current_version
        self._write_history(document, payload)
        return version

    def history(self) -> list[Revision]:
        """Every history copy below ``<cdc_path>/history/``, oldest revision first."""
        prefix = _join(self.prefix, HISTORY_DIR) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        try:
            names = [entry["Key"][len(prefix) :] for page in pages for entry in page.get("Contents", [])]
        except ClientError as exc:
            _raise_for(exc, doing="list the history of", uri=self.uri, permission="s3:ListBucket")
        return sorted(revision for name in names if (revision := Revision.from_name(name)) is not None)

    def read_revision(self, revision: Revision) -> StateDocument:
        """The document of one history copy.

        Raises
        ------
        StateCorruptError
            When the copy is not a state document.
        """
        key = _join(self.prefix, HISTORY_DIR, revision.name)
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            _raise_for(exc, doing="read", uri=_uri(self.bucket, key), permission="s3:GetObject")
        return parse_state_document(raw, _uri(self.bucket, key))

    def _lost_the_race(self, exc: ClientError, expected_version: str | None) -> bool:
        if _error_code(exc) in _CONDITION_FAILED or _http_status(exc) in (409, 412):
            return True
        # IfMatch on a document deleted since planning: S3 answers 404, not 412.
        return expected_version is not None and _error_code(exc) == "NoSuchKey"

    def _conflict(
        self,
        exc: ClientError,
        current: StateDocument,
        current_version: str | None,
        expected_version: str | None,
    ) -> CommitConflictError:
        planned = "no state" if expected_version is None else f"version {expected_version}"
        if current_version == expected_version:
            # A 409: another conditional write was in flight and has not landed (or failed), so the
            # document still shows what this run planned from and cannot name the competitor.
            return CommitConflictError(
                f"state {self.uri} was being written by another run at the same moment (S3 "
                f"{_error_code(exc) or _http_status(exc)}); this run published nothing, start it again",
                competing_run_id=None,
            )
        if current_version is None:
            return CommitConflictError(
                f"state {self.uri} was deleted since this run planned from {planned}; this run published "
                "nothing. If it was removed on purpose, start the run again to begin with full loads",
                competing_run_id=None,
            )
        return CommitConflictError(
            f"state {self.uri} moved on since this run planned: run {current.run_id!r} committed "
            f"revision {current.revision} (this run planned from {planned}); this run published "
            "nothing, start it again",
            competing_run_id=current.run_id,
        )

    def _write_history(self, document: StateDocument, payload: bytes) -> None:
        key = self.history_key(document)
        try:
            # Create-only: a state started over must never overwrite an earlier lineage's history.
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=payload, ContentType="application/json", IfNoneMatch="*"
            )
        except ClientError as exc:
            if _error_code(exc) not in _CONDITION_FAILED:
                _raise_for(
                    exc, doing="write the history copy", uri=_uri(self.bucket, key), permission="s3:PutObject"
                )
            existing = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            if existing != payload:
                raise PipelineError(
                    f"state {self.uri} is committed as revision {document.revision}, but its history copy "
                    f"{_uri(self.bucket, key)} already exists with other content (run id "
                    f"{document.run_id!r} used twice?). The commit stands; move the older copy aside to "
                    "keep it, then copy the state document there"
                ) from exc


class S3LeaseStore:
    """The run lease at ``<cdc_path>/lease.json`` (see ``cdc_pipeline.lease``), written with S3's
    conditional requests: ``PutObject(IfNoneMatch='*')`` takes a free lease, ``PutObject(IfMatch=
    <ETag>)`` renews or takes over one, ``DeleteObject(IfMatch=<ETag>)`` releases it. The version
    token is the ETag.

    Parameters
    ----------
    cdc_path
        The ``s3://`` folder holding the state (the pipeline's ``cdc_path``).
    client
        A boto3 S3 client; one is created when omitted.
    """

    def __init__(self, cdc_path: str, client: Any = None) -> None:
        self.bucket, prefix = parse_s3_uri(cdc_path)
        self.key = _join(prefix.strip("/"), LEASE_FILE)
        self.location = _uri(self.bucket, self.key)
        self.client = client or boto3.client("s3")

    def read(self) -> tuple[Lease | None, str | None]:
        """The lease and its ETag, or (None, None) when no run holds it."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                return None, None
            _raise_for(exc, doing="read the run lease", uri=self.location, permission="s3:GetObject")
        return parse_lease(response["Body"].read(), self.location), str(response["ETag"])

    def create(self, lease: Lease) -> str:
        """Write ``lease`` if there is none; LeaseConflictError when another run wrote one first."""
        return self._put(lease, IfNoneMatch="*")

    def replace(self, lease: Lease, version: str) -> str:
        """Replace the lease if its ETag is still ``version``; LeaseConflictError otherwise."""
        return self._put(lease, IfMatch=version)

    def delete(self, version: str) -> None:
        """Remove the lease if its ETag is still ``version``; LeaseConflictError otherwise."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except ClientError as exc:
            self._conflict_or_raise(exc, doing="release the run lease", permission="s3:DeleteObject")

    def _put(self, lease: Lease, **condition: str) -> str:
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=lease.to_bytes(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            self._conflict_or_raise(exc, doing="write the run lease", permission="s3:PutObject")
        return str(response["ETag"])

    def _conflict_or_raise(self, exc: ClientError, *, doing: str, permission: str) -> NoReturn:
        # 412: another version; 409: a conditional write racing this one; 404: removed meanwhile.
        if _error_code(exc) in (*_CONDITION_FAILED, "NoSuchKey") or _http_status(exc) in (404, 409, 412):
            raise LeaseConflictError(f"{self.location} changed ({_error_code(exc)})") from exc
        _raise_for(exc, doing=doing, uri=self.location, permission=permission)


class S3RegistrySource:
    """Registry CSV files directly under an S3 prefix; the newest by LastModified wins.

    Like the local registry directory, only the prefix's own objects count, not those in sub-folders
    (an ``archive/`` folder stays out of the way), nor hidden ones (``.`` or ``_`` first). Ties go to
    the greatest key.

    Parameters
    ----------
    prefix_uri
        The ``s3://`` folder of registry files.
    client
        A boto3 S3 client; one is created when omitted.
    """

    def __init__(self, prefix_uri: str, client: Any = None) -> None:
        self.bucket, prefix = parse_s3_uri(prefix_uri)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = _uri(self.bucket, self.prefix)
        self.client = client or boto3.client("s3")

    def newest(self) -> tuple[str, str]:
        """The newest registry file as (its ``s3://`` URI, its text).

        Raises
        ------
        RegistryError
            When the prefix holds no ``.csv`` object, or the newest cannot be read as UTF-8.
        """
        newest: tuple[datetime, str] | None = None
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for entry in page.get("Contents", []):
                    if not is_registry_file(entry["Key"][len(self.prefix) :]):
                        continue
                    candidate = (entry["LastModified"], entry["Key"])
                    if newest is None or candidate > newest:
                        newest = candidate
        except ClientError as exc:
            _raise_for(
                exc, doing="list the registry", uri=self.uri, permission="s3:ListBucket", error=RegistryError
            )
        if newest is None:
            raise RegistryError(
                f"registry prefix {self.uri} holds no .csv file (or does not exist; names starting with . "
                "or _ are hidden); upload one there with the header table_name,primary_key (see "
                "docs/registry.md)"
            )
        key = newest[1]
        uri = _uri(self.bucket, key)
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                raise RegistryError(
                    f"registry file {uri} was deleted while it was being read; start the run again"
                ) from exc
            _raise_for(exc, doing="read", uri=uri, permission="s3:GetObject", error=RegistryError)
        try:
            return uri, raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RegistryError(f"registry file {uri} cannot be read as UTF-8 text: {exc}") from exc
