"""The Glue Data Catalog on both ends: the source catalog a run plans from, and where snapshots are published.

:class:`GlueCatalog` implements the core's ``Catalog`` port over a source database (what the
crawler or DMS registered); :class:`GlueOutputCatalog` points one Parquet table per source table at
its newest committed snapshot, so Athena reads what the state document says is current.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import boto3
from botocore.exceptions import ClientError

from cdc_pipeline.arrivals import FileListing
from cdc_pipeline.aws.s3 import list_data_files
from cdc_pipeline.catalog import CatalogTable, Column, PublishedTable
from cdc_pipeline.errors import ConfigurationError, TableError

PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
TEXT_INPUT_FORMAT = "org.apache.hadoop.mapred.TextInputFormat"
LAZY_SIMPLE_SERDE = "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe"
OPEN_CSV_SERDE = "org.apache.hadoop.hive.serde2.OpenCSVSerde"
JSON_SERDES = frozenset(
    {
        "org.openx.data.jsonserde.JsonSerDe",
        "org.apache.hive.hcatalog.data.JsonSerDe",
        "org.apache.hadoop.hive.serde2.JsonSerDe",
    }
)
# Hive's own defaults when a SerDe names no separator: Ctrl-A for LazySimpleSerDe, a comma for OpenCSV.
_LAZY_SIMPLE_DEFAULT_SEPARATOR = "\x01"
_OPEN_CSV_DEFAULT_SEPARATOR = ","
_SCHEME = re.compile(r"^s3[an]?://")

PUBLISH_THREADS = 16  # boto3 clients are thread-safe; Glue's UpdateTable rate limit is the bound


class GlueCatalog:
    """The tables of one Glue database, as the core's ``Catalog`` (a ``PagedCatalog``).

    The database is listed once (``get_tables``, every page) and kept, so describing each table
    costs no further listing; only partitioned tables cost one ``get_partitions`` listing each.
    ``table_name_pages`` hands each page on as it arrives: on AWS a page holds 100 tables and takes
    a few hundred milliseconds, so a plan that waited for the last page of 10,000 tables would wait
    100 pages before listing the first table's files.

    Parameters
    ----------
    database
        The Glue database holding the raw tables.
    client
        A boto3 Glue client; one is created when omitted.
    include
        ``fnmatch`` patterns (``orders_*``); when given, only matching tables are listed.
    exclude
        ``fnmatch`` patterns of tables never listed, even when included.
    s3_client
        A boto3 S3 client, to list the tables' files; one is created when omitted.
    """

    def __init__(
        self,
        database: str,
        client: Any = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        s3_client: Any = None,
    ) -> None:
        self.database = database
        self.client = client or boto3.client("glue")
        self.s3_client = s3_client
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        # Every table, once the listing is complete; and the tables of the pages read so far by
        # table_name_pages, which other threads describe while it reads the next page.
        self._definitions: dict[str, dict[str, Any]] | None = None
        self._listed: dict[str, dict[str, Any]] = {}

    def table_names(self) -> list[str]:
        """The database's tables that the include and exclude patterns select, sorted."""
        return sorted(name for name in self._tables() if self._selected(name))

    def table_name_pages(self) -> Iterator[list[str]]:
        """The tables ``table_names`` lists, a ``get_tables`` page at a time as Glue returns it;
        each can be described (and its files listed) as soon as its page is out. Once the last
        page is read the database is kept as ``table_names`` keeps it."""
        if self._definitions is not None:
            yield self.table_names()
            return
        listed = self._listed
        for page in self._pages("get_tables", "glue:GetTables", DatabaseName=self.database):
            names = []
            for table in page.get("TableList", []):
                listed[table["Name"]] = table
                if self._selected(table["Name"]):
                    names.append(table["Name"])
            yield names
        self._definitions = listed

    def list_files(self, name: str, start_after: str | None = None) -> FileListing | None:
        """The table's data files under its S3 location; None for a location that is not in S3."""
        location = self._location(name)
        if not _SCHEME.match(location):
            return None
        if self.s3_client is None:
            self.s3_client = boto3.client("s3")
        return list_data_files(self.s3_client, location, start_after)

    def describe(self, name: str, files: Sequence[str] | None = None) -> CatalogTable:
        """The table's location, format, reader options, columns and partition keys (the catalog's
        columns: ``files`` is not needed).

        Raises
        ------
        TableError
            When the table is unknown, has no location, is in a format the pipeline does not read,
            or has partitions outside its location.
        """
        definition = self._definition(name)
        descriptor = definition.get("StorageDescriptor") or {}
        location = self._location(name)
        data_format, options = _format(name, self.database, descriptor, definition.get("Parameters") or {})
        columns = []
        for column in descriptor.get("Columns") or []:
            if not column.get("Type"):
                raise TableError(
                    name, f"column {column.get('Name')!r} has no type in Glue; give it one (or re-crawl)"
                )
            columns.append(Column(column["Name"], column["Type"]))
        partition_keys = tuple(key["Name"] for key in definition.get("PartitionKeys") or [])
        if partition_keys:
            self._check_partitions(name, location, partition_keys)
        return CatalogTable(
            name=name,
            location=location,
            format=data_format,
            columns=tuple(columns),
            partition_keys=partition_keys,
            # The catalog cannot tell cheaply whether files exist; ingest finds empty tables.
            has_data=True,
            options=options,
        )

    def _definition(self, name: str) -> dict[str, Any]:
        # A table of a page already handed on is known without waiting for the rest of the listing.
        definition = self._listed.get(name) or self._tables().get(name)
        if definition is None:
            raise TableError(
                name,
                f"Glue database {self.database!r} holds no such table; check the name (Glue lowercases "
                "table names)",
            )
        return definition

    def _location(self, name: str) -> str:
        location = (self._definition(name).get("StorageDescriptor") or {}).get("Location")
        if not location:
            raise TableError(
                name,
                f"Glue table {self.database}.{name} has no location (a view, or a table defined without "
                "one); set its location to the folder holding its files, or leave it out with an "
                "exclude pattern",
            )
        return str(location)

    def _selected(self, name: str) -> bool:
        # Glue lowercases table names, so patterns match regardless of how they are typed.
        def matches(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(name.lower(), pattern.lower()) for pattern in patterns)

        return (not self.include or matches(self.include)) and not matches(self.exclude)

    def _tables(self) -> dict[str, dict[str, Any]]:
        if self._definitions is None:
            self._definitions = {
                table["Name"]: table
                for page in self._pages("get_tables", "glue:GetTables", DatabaseName=self.database)
                for table in page.get("TableList", [])
            }
        return self._definitions

    def _check_partitions(self, name: str, location: str, keys: tuple[str, ...]) -> None:
        root = _folder(location)
        outside: list[tuple[list[str], str]] = []
        unnamed: list[tuple[list[str], str]] = []
        pages = self._pages(
            "get_partitions",
            "glue:GetPartitions",
            table=name,
            DatabaseName=self.database,
            TableName=name,
            ExcludeColumnSchema=True,
        )
        for page in pages:
            for partition in page.get("Partitions", []):
                partition_location = (partition.get("StorageDescriptor") or {}).get("Location")
                if not partition_location:
                    continue
                values = partition.get("Values", [])
                folder = _folder(partition_location)
                if not folder.startswith(root):
                    outside.append((values, partition_location))
                elif not _is_key_value_path(folder[len(root) :], keys):
                    unnamed.append((values, partition_location))
        if outside:
            values, example = outside[0]
            raise TableError(
                name,
                f"{len(outside)} of its partitions live outside the table location {location} (e.g. "
                f"values {values} at {example}); partitions outside the table location are not "
                "supported, because the table is read from its location and their rows would be "
                "missed. Move their files under the table location (and update the partitions), or "
                "create a table whose location holds them all and point the pipeline at that",
            )
        if unnamed:
            values, example = unnamed[0]
            raise TableError(
                name,
                f"{len(unnamed)} of its partitions sit in folders not named "
                f"{'/'.join(key + '=...' for key in keys)} (e.g. values {values} at {example}); the "
                "table is read by partition discovery, which takes partition values from key=value "
                "folder names only. Rename the folders, or re-crawl the files as an unpartitioned table",
            )

    def _pages(
        self, operation: str, permission: str, table: str | None = None, **arguments: Any
    ) -> Iterator[dict[str, Any]]:
        """Every page of a Glue listing, following NextToken (moto ignores MaxResults; AWS does not)."""
        while True:
            try:
                page = getattr(self.client, operation)(**arguments)
            except ClientError as exc:
                _raise_for(exc, self.database, permission, table)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            arguments["NextToken"] = token


def _raise_for(exc: ClientError, database: str, permission: str, table: str | None) -> NoReturn:
    code = exc.response.get("Error", {}).get("Code")
    if code == "EntityNotFoundException" and table is not None:
        raise TableError(
            table, f"it was dropped from Glue database {database!r} while the run was planning; run again"
        ) from exc
    if code == "EntityNotFoundException":
        raise ConfigurationError(
            f"Glue database {database!r} does not exist in this account and region "
            f"({exc.response.get('Error', {}).get('Message')}); pass the database the crawler writes to"
        ) from exc
    if code == "AccessDeniedException":
        raise ConfigurationError(
            f"access to Glue database {database!r} denied; grant the role {permission} on the catalog, "
            "the database and its tables"
        ) from exc
    raise exc


def _folder(location: str) -> str:
    """A location as a folder prefix: one scheme for s3/s3a/s3n, one trailing slash."""
    return _SCHEME.sub("s3://", location).rstrip("/") + "/"


def _is_key_value_path(relative: str, keys: tuple[str, ...]) -> bool:
    folders = [folder for folder in relative.split("/") if folder]
    return len(folders) == len(keys) and all(
        folder.lower().startswith(key.lower() + "=") for folder, key in zip(folders, keys, strict=True)
    )


def _format(
    table: str, database: str, descriptor: dict[str, Any], parameters: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """The Spark reader format and options a Glue table definition stands for."""
    serde = descriptor.get("SerdeInfo") or {}
    library = serde.get("SerializationLibrary") or ""
    serde_parameters: dict[str, str] = serde.get("Parameters") or {}
    input_format = descriptor.get("InputFormat") or ""
    if input_format == PARQUET_INPUT_FORMAT or library == PARQUET_SERDE:
        return "parquet", {}
    if input_format in ("", TEXT_INPUT_FORMAT):
        if library in JSON_SERDES:
            return "json", {}
        if library == OPEN_CSV_SERDE:
            separator = serde_parameters.get("separatorChar") or _OPEN_CSV_DEFAULT_SEPARATOR
            return "csv", _csv_options(
                table,
                parameters,
                separator,
                quote=serde_parameters.get("quoteChar"),
                escape=serde_parameters.get("escapeChar"),
                null_value=None,
            )
        if library == LAZY_SIMPLE_SERDE:
            # Hive's rule: field.delim, else serialization.format, else Ctrl-A.
            delimiter = serde_parameters.get("field.delim") or serde_parameters.get("serialization.format")
            return "csv", _csv_options(
                table,
                parameters,
                _hive_delimiter(delimiter) if delimiter else _LAZY_SIMPLE_DEFAULT_SEPARATOR,
                # Hive's LazySimpleSerDe knows no quoting; Spark's default quote would split a field
                # that starts with '"' and holds the separator differently from Athena.
                quote="",
                escape=serde_parameters.get("escape.delim"),
                null_value=serde_parameters.get("serialization.null.format"),
            )
    raise TableError(
        table,
        f"Glue table {database}.{table} is stored as InputFormat {input_format or '(none)'!r}, SerDe "
        f"{library or '(none)'!r} (classification {parameters.get('classification')!r}); the pipeline "
        "reads Parquet, CSV (LazySimpleSerDe or OpenCSVSerde) and JSON tables only. Convert it (e.g. "
        "an Athena CTAS to Parquet) or leave it out with an exclude pattern",
    )


def _csv_options(
    table: str,
    parameters: dict[str, str],
    separator: str,
    *,
    quote: str | None,
    escape: str | None,
    null_value: str | None,
) -> dict[str, str]:
    skipped = parameters.get("skip.header.line.count", "0").strip() or "0"
    if skipped not in ("0", "1"):
        raise TableError(
            table,
            f"its Glue definition skips {skipped} header lines (skip.header.line.count); Spark's CSV "
            "reader skips one at most. Drop the extra lines from the files or set it to 1",
        )
    options = {"sep": separator, "header": "true" if skipped == "1" else "false"}
    if quote is not None:
        options["quote"] = quote
    if escape:
        options["escape"] = escape
    if null_value is not None:
        options["nullValue"] = null_value
    return options


def _hive_delimiter(value: str) -> str:
    """Hive reads a numeric delimiter as a character code (``"1"`` is Ctrl-A, ``"44"`` a comma)."""
    if value.lstrip("-").isdigit() and -128 <= int(value) <= 127:
        return chr(int(value) % 256)
    return value


# ----------------------------------------------------------------------------------------------
# Publishing snapshots
# ----------------------------------------------------------------------------------------------

# Spark's type names that Hive (and Athena) spell differently; the rest are the same in both.
_SPARK_TO_HIVE = {
    "timestamp_ntz": "timestamp",
    "long": "bigint",
    "integer": "int",
    "short": "smallint",
    "byte": "tinyint",
}
_HIVE_SIMPLE_TYPES = frozenset(
    {"string", "double", "float", "boolean", "date", "binary", "timestamp"}
    | {"bigint", "int", "smallint", "tinyint"}
)
_HIVE_PARAMETERISED_TYPES = frozenset({"decimal", "char", "varchar"})
_TYPE_WORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_TYPE_PARAMETERS = re.compile(r"\(\s*\d+\s*(,\s*\d+\s*)?\)")


class GlueOutputCatalog:
    """Output tables in one Glue database, each an external Parquet table over its current snapshot.

    Parameters
    ----------
    database
        The Glue database Athena users query (it must exist).
    client
        A boto3 Glue client; one is created when omitted.
    """

    def __init__(self, database: str, client: Any = None) -> None:
        self.database = database
        self.client = client or boto3.client("glue")

    def publish(self, tables: list[PublishedTable]) -> None:
        """Create or update each table so that it reads its new snapshot.

        Every table is attempted, so one failure does not keep the others on their old snapshots.

        Raises
        ------
        TableError
            Naming the first table that could not be published (and listing any others).
        """

        def publish_one(table: PublishedTable) -> TableError | None:
            try:
                check_table_name(table.name)
                self._publish(table)
            except TableError as exc:
                return exc
            return None

        # One UpdateTable per table: in parallel, or 10,000 tables outlast a Lambda's 15 minutes.
        with ThreadPoolExecutor(max_workers=PUBLISH_THREADS) as pool:
            failures = [failure for failure in pool.map(publish_one, tables) if failure is not None]
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise TableError(
                failures[0].table,
                f"it and {len(failures) - 1} other table(s) could not be published: "
                + "; ".join(str(failure) for failure in failures),
            )

    def table_input(self, table: PublishedTable) -> dict[str, Any]:
        """The Glue ``TableInput`` for ``table``: an external Parquet table at its snapshot folder,
        partitioned by its partition columns when it has them."""
        keys = {name.lower() for name in table.partition_by}

        def glue_column(column: dict[str, str]) -> dict[str, str]:
            return {"Name": column["name"], "Type": hive_type(table.name, column["name"], column["type"])}

        return {
            "Name": table.name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {
                "classification": "parquet",
                "EXTERNAL": "TRUE",
                "cdc_pipeline.run_id": table.run_id,
            },
            "StorageDescriptor": {
                "Columns": [
                    glue_column(column) for column in table.columns if column["name"].lower() not in keys
                ],
                # Athena reads a table's location as a folder only when it ends with a slash.
                "Location": table.location.rstrip("/") + "/",
                "InputFormat": PARQUET_INPUT_FORMAT,
                "OutputFormat": PARQUET_OUTPUT_FORMAT,
                "SerdeInfo": {
                    "SerializationLibrary": PARQUET_SERDE,
                    "Parameters": {"serialization.format": "1"},
                },
            },
            # Partition keys in the registry's order (the partitions' values follow it); the files
            # hold these columns too, and Athena takes them from the partition.
            "PartitionKeys": [
                glue_column(column)
                for name in table.partition_by
                for column in table.columns
                if column["name"].lower() == name.lower()
            ],
        }

    def _publish(self, table: PublishedTable) -> None:
        self._publish_table(table)
        if table.partitions is not None:
            self._publish_partitions(table)

    def _publish_partitions(self, table: PublishedTable) -> None:
        """Point the table's Glue partitions at the snapshot's: new ones created, moved ones
        updated, then the ones the snapshot no longer has deleted. Each partition switches on its
        own (Glue has no multi-partition transaction); every folder named stays complete."""
        wanted = {
            tuple(p["values"]): p["location"].rstrip("/") + "/" for p in (table.partitions or {}).values()
        }
        storage = self.table_input(table)["StorageDescriptor"]
        try:
            existing = {
                tuple(partition["Values"]): partition["StorageDescriptor"]["Location"]
                for page in self.client.get_paginator("get_partitions").paginate(
                    DatabaseName=self.database, TableName=table.name
                )
                for partition in page["Partitions"]
            }

            def partition_input(values: tuple[str, ...]) -> dict[str, Any]:
                return {"Values": list(values), "StorageDescriptor": {**storage, "Location": wanted[values]}}

            created = [values for values in wanted if values not in existing]
            for batch in _batches(created, GLUE_PARTITION_BATCH):
                self._check(
                    table,
                    self.client.batch_create_partition(
                        DatabaseName=self.database,
                        TableName=table.name,
                        PartitionInputList=[partition_input(values) for values in batch],
                    ),
                    "glue:BatchCreatePartition",
                )
            moved = [values for values in wanted if values in existing and existing[values] != wanted[values]]
            for batch in _batches(moved, GLUE_PARTITION_BATCH):
                self._check(
                    table,
                    self.client.batch_update_partition(
                        DatabaseName=self.database,
                        TableName=table.name,
                        Entries=[
                            {"PartitionValueList": list(values), "PartitionInput": partition_input(values)}
                            for values in batch
                        ],
                    ),
                    "glue:BatchUpdatePartition",
                )
            gone = [values for values in existing if values not in wanted]
            for batch in _batches(gone, GLUE_PARTITION_DELETE_BATCH):
                self._check(
                    table,
                    self.client.batch_delete_partition(
                        DatabaseName=self.database,
                        TableName=table.name,
                        PartitionsToDelete=[{"Values": list(values)} for values in batch],
                    ),
                    "glue:BatchDeletePartition",
                )
        except ClientError as exc:
            raise self._error(table, exc, "glue:GetPartitions and Batch*Partition") from exc

    def _check(self, table: PublishedTable, response: dict[str, Any], permission: str) -> None:
        errors = response.get("Errors") or []
        if errors:
            first = errors[0].get("ErrorDetail", {})
            raise TableError(
                table.name,
                f"{len(errors)} partition(s) of Glue table {self.database}.{table.name} could not be "
                f"published ({first.get('ErrorCode')}: {first.get('ErrorMessage')}); grant the role "
                f"{permission} on it, then publish again (the committed state is not affected)",
            )

    def _publish_table(self, table: PublishedTable) -> None:
        table_input = self.table_input(table)
        try:
            # SkipArchive: a version per table per run would reach Glue's account-wide limit of
            # table versions within months at 10,000 tables a day.
            self.client.update_table(DatabaseName=self.database, TableInput=table_input, SkipArchive=True)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "EntityNotFoundException":
                raise self._error(table, exc, "glue:UpdateTable") from exc
        try:
            self.client.create_table(DatabaseName=self.database, TableInput=table_input)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "AlreadyExistsException":
                raise self._error(table, exc, "glue:CreateTable") from exc
            # Another publisher created it in between: update theirs to this snapshot.
            try:
                self.client.update_table(DatabaseName=self.database, TableInput=table_input, SkipArchive=True)
            except ClientError as again:
                raise self._error(table, again, "glue:UpdateTable") from again

    def _error(self, table: PublishedTable, exc: ClientError, permission: str) -> TableError:
        error = exc.response.get("Error", {})
        code, message = error.get("Code"), error.get("Message")
        if code == "EntityNotFoundException":
            fix = f"create the output database {self.database!r} (or pass the right one)"
        elif code == "AccessDeniedException":
            fix = f"grant the role {permission} on output database {self.database!r} and its tables"
        else:
            fix = "publish again; the committed state is not affected"
        return TableError(
            table.name,
            f"cannot publish snapshot {table.location} to Glue table {self.database}.{table.name} "
            f"({code}: {message}); {fix}",
        )


# Glue's limits per call: BatchCreatePartition and BatchUpdatePartition take 100, BatchDeletePartition 25.
GLUE_PARTITION_BATCH = 100
GLUE_PARTITION_DELETE_BATCH = 25


def _batches(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# Glue's limits on a table name (TableInput.Name): 1 to 255 characters of this set; Glue folds it to
# lowercase when it stores it.
GLUE_NAME_LENGTH = 255
_GLUE_NAME = re.compile("^[\t\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+$")


def check_table_name(name: str) -> None:
    """Refuse a name the output table cannot have as it is: Glue would refuse it, or store it
    folded to lowercase, where another table of that name would point Athena at this snapshot.

    Raises
    ------
    TableError
        Naming the table and why.
    """
    if not 1 <= len(name) <= GLUE_NAME_LENGTH or not _GLUE_NAME.match(name):
        if not name or len(name) > GLUE_NAME_LENGTH:
            why = f"it is {len(name)} characters long; Glue takes 1 to {GLUE_NAME_LENGTH}"
        else:
            why = "it holds characters Glue refuses in a table name (line breaks, control characters)"
    elif name != name.lower():
        why = f"Glue stores table names in lowercase, so it would be published as {name.lower()!r}"
    else:
        return
    raise TableError(
        name,
        f"its snapshot cannot be published as a Glue table of that name: {why}. Rename the source "
        "table (or leave it out with an exclude pattern); its committed state is not affected",
    )


def hive_type(table: str, column: str, spark_type: str) -> str:
    """A Spark type string (``simpleString`` or ``typeName``) as Hive/Athena spell it.

    Parameters
    ----------
    table, column
        Named in the error.
    spark_type
        E.g. ``long``, ``timestamp_ntz``, ``decimal(12,2)``, ``array<struct<id:bigint>>``.

    Raises
    ------
    TableError
        When the type has no Hive/Athena counterpart.
    """
    try:
        hive, end = _parse_type(spark_type.strip(), 0)
        if end != len(spark_type.strip()):
            raise ValueError(f"unexpected {spark_type.strip()[end:]!r}")
    except ValueError as exc:
        raise TableError(
            table,
            f"column {column!r} has type {spark_type!r}, which Athena cannot read from Parquet ({exc}); "
            "cast it at the source to a string, number, boolean, date, timestamp, binary or a "
            "struct/array/map of those",
        ) from exc
    return hive


def _parse_type(text: str, position: int) -> tuple[str, int]:
    """One (possibly nested) type from ``text`` at ``position``: its Hive spelling and where it ends."""
    word = _TYPE_WORD.match(text, position)
    if word is None:
        raise ValueError(f"no type name at {text[position:]!r}")
    name, position = word.group(1).lower(), word.end()
    if name in ("array", "map"):
        position = _expect(text, position, "<")
        element, position = _parse_type(text, position)
        parts = [element]
        if name == "map":
            position = _expect(text, position, ",")
            value, position = _parse_type(text, position)
            parts.append(value)
        position = _expect(text, position, ">")
        return f"{name}<{','.join(parts)}>", position
    if name == "struct":
        position = _expect(text, position, "<")
        fields = []
        while not text.startswith(">", position):
            colon = text.find(":", position)
            if colon < 0:
                raise ValueError(f"struct field without a type at {text[position:]!r}")
            field_name = text[position:colon].strip()
            kind, position = _parse_type(text, colon + 1)
            fields.append(f"{field_name}:{kind}")
            if text.startswith(",", position):
                position += 1
        return f"struct<{','.join(fields)}>", position + 1
    if name in _HIVE_PARAMETERISED_TYPES:
        parameters = _TYPE_PARAMETERS.match(text, position)
        if parameters is None:
            return name, position
        return name + re.sub(r"\s+", "", parameters.group(0)), parameters.end()
    hive = _SPARK_TO_HIVE.get(name, name)
    if hive not in _HIVE_SIMPLE_TYPES:
        raise ValueError(f"{name!r} has no Hive type")
    return hive, position


def _expect(text: str, position: int, token: str) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    if not text.startswith(token, position):
        raise ValueError(f"expected {token!r} at {text[position:]!r}")
    return position + len(token)
