"""The source catalog: which tables the landing zone holds, where, in what format, with what columns.

Locally each subdirectory of the source directory is one table of Parquet files (nested folders
allowed; ``key=value`` folders are read as partitions). On AWS the Glue Data Catalog plays this
part behind the same :class:`Catalog` protocol.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cdc_pipeline.errors import ConfigurationError, TableError

_PARTITION_DIR = re.compile(r"^([^=/]+)=([^/]*)$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


@dataclass(frozen=True)
class CatalogTable:
    """A source table as the catalog describes it."""

    name: str
    location: str
    format: str
    columns: tuple[Column, ...]
    partition_keys: tuple[str, ...] = ()
    has_data: bool = True
    # Reader options a format needs (e.g. a CSV table's delimiter and header), as Spark names them.
    options: dict[str, str] = field(default_factory=dict)

    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns) + self.partition_keys

    def column_type(self, name: str) -> str | None:
        return next((column.type for column in self.columns if column.name == name), None)


class Catalog(Protocol):
    """Lists and describes the tables of the source database."""

    def table_names(self) -> list[str]: ...

    def describe(self, name: str) -> CatalogTable:
        """The table's location, format and columns; raises TableError when it cannot be read."""
        ...


@dataclass(frozen=True)
class PublishedTable:
    """A committed snapshot, as the output catalog (Glue, for Athena) should show it."""

    name: str
    location: str
    columns: list[dict[str, str]]
    run_id: str


class OutputCatalog(Protocol):
    """Points each output table at its newly committed snapshot."""

    def publish(self, tables: list[PublishedTable]) -> None: ...


class NoOutputCatalog:
    """Local runs: the snapshot locations in the state document are the catalog."""

    def publish(self, tables: list[PublishedTable]) -> None:
        return None


def _is_hidden(name: str) -> bool:
    # Spark and Hive skip these too: _SUCCESS markers, .crc checksums, _temporary folders.
    return name.startswith((".", "_"))


class LocalCatalog:
    """Tables as subdirectories of a local directory, holding Parquet files."""

    def __init__(self, source_dir: str | Path) -> None:
        self.source_dir = Path(source_dir)
        if not self.source_dir.is_dir():
            raise ConfigurationError(
                f"source directory {self.source_dir} does not exist; pass --source the directory whose "
                "subdirectories are the raw tables"
            )

    def table_names(self) -> list[str]:
        return sorted(
            path.name for path in self.source_dir.iterdir() if path.is_dir() and not _is_hidden(path.name)
        )

    def describe(self, name: str) -> CatalogTable:
        import pyarrow as pa
        import pyarrow.parquet as pq

        location = self.source_dir / name
        if not location.is_dir():
            raise TableError(name, f"no table folder {location}; the source holds {self.table_names()}")
        files = self.data_files(location)
        partition_keys = _partition_keys(name, location, files)
        if not files:
            return CatalogTable(name, str(location.resolve()), "parquet", (), partition_keys, has_data=False)
        schemas = []
        for path in files:
            try:
                schemas.append(pq.read_schema(path))
            except (OSError, pa.ArrowException) as exc:
                raise TableError(
                    name, f"file {path} is not readable Parquet ({exc}); remove or replace it"
                ) from exc
        try:
            schema = pa.unify_schemas(schemas)
        except pa.ArrowException as exc:
            raise TableError(name, f"its files disagree on column types: {exc}") from exc
        for arrow_field in schema:
            if pa.types.is_timestamp(arrow_field.type) and arrow_field.type.unit == "ns":
                raise TableError(
                    name,
                    f"column {arrow_field.name!r} holds nanosecond timestamps, which Spark 3.5 (and Glue) "
                    "cannot read; write the files with microseconds (pyarrow: coerce_timestamps='us')",
                )
        columns = tuple(
            Column(arrow_field.name, _spark_type_name(arrow_field.type))
            for arrow_field in schema
            if arrow_field.name not in partition_keys
        )
        return CatalogTable(name, str(location.resolve()), "parquet", columns, partition_keys)

    @staticmethod
    def data_files(location: Path) -> list[Path]:
        def unreadable(error: OSError) -> None:
            raise TableError(
                location.name,
                f"folder {error.filename} cannot be read ({error.strerror}); fix its permissions",
            )

        files = []
        for folder, subfolders, names in os.walk(location, onerror=unreadable):
            subfolders[:] = [name for name in subfolders if not _is_hidden(name)]
            files += [Path(folder) / name for name in names if not _is_hidden(name)]
        return sorted(files)


def _partition_keys(table: str, location: Path, files: list[Path]) -> tuple[str, ...]:
    layouts = set()
    for path in files:
        folders = path.relative_to(location).parts[:-1]
        keys = tuple(match.group(1) for part in folders if (match := _PARTITION_DIR.match(part)))
        if keys and len(keys) != len(folders):
            raise TableError(
                table,
                f"file {path} mixes key=value partition folders with other folders; Spark cannot read "
                "that layout: use key=value folders throughout or none at all",
            )
        layouts.add(keys)
    if len(layouts) > 1 and any(layouts):
        raise TableError(
            table,
            f"its files sit under different partition layouts {sorted(layouts)}; every file must sit "
            "under the same key=value folders",
        )
    return next(iter(layouts), ())


def _spark_type_name(arrow_type: object) -> str:
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz is not None else "timestamp_ntz"  # type: ignore[attr-defined]
    simple = {
        pa.types.is_boolean: "boolean",
        pa.types.is_int8: "tinyint",
        pa.types.is_int16: "smallint",
        pa.types.is_int32: "int",
        pa.types.is_int64: "bigint",
        pa.types.is_float32: "float",
        pa.types.is_float64: "double",
        pa.types.is_date: "date",
        pa.types.is_string: "string",
        pa.types.is_large_string: "string",
        pa.types.is_binary: "binary",
    }
    for check, name in simple.items():
        if check(t):
            return name
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"  # type: ignore[attr-defined]
    return str(t)
