"""The source catalog: which tables the landing zone holds, where, in what format, with what columns.

Locally each subdirectory of the source directory is one table of Parquet files (nested folders
allowed; ``key=value`` folders are read as partitions). On AWS the Glue Data Catalog plays this
part behind the same :class:`Catalog` protocol, and S3 lists the files.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cdc_pipeline.arrivals import DataFile, FileListing, is_hidden
from cdc_pipeline.errors import ConfigurationError, TableError
from cdc_pipeline.schema import AmbiguousColumnError, by_lower_name, widen

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

    def list_files(self, name: str, start_after: str | None = None) -> FileListing | None:
        """The table's data files with their arrival times (only those whose relative path sorts
        after ``start_after``, when given); None when its source has no files to list (the table
        is then read by watermark)."""
        ...

    def describe(self, name: str, files: Sequence[str] | None = None) -> CatalogTable:
        """The table's location, format and columns; raises TableError when it cannot be read.

        ``files`` (paths relative to the location) are the files a run will read; a catalog that
        learns columns from the files themselves reads only those.
        """
        ...


@runtime_checkable
class PagedCatalog(Catalog, Protocol):
    """A catalog that lists its tables in pages (Glue's GetTables) and can hand each page on as it
    arrives, so that planning the first tables overlaps fetching the next pages."""

    def table_name_pages(self) -> Iterator[list[str]]:
        """The tables ``table_names`` lists, page by page in the catalog's own order; each table can
        be listed and described as soon as its page is out, before the last page is read."""
        ...


def table_name_pages(catalog: Catalog) -> Iterator[list[str]]:
    """The catalog's tables in pages as it lists them; one page for a catalog that lists at once.

    The order of the names is the catalog's: sort them where order matters (the plan does).
    """
    if isinstance(catalog, PagedCatalog):
        yield from catalog.table_name_pages()
    else:
        yield catalog.table_names()


@dataclass(frozen=True)
class PublishedTable:
    """A committed snapshot, as the output catalog (Glue, for Athena) should show it."""

    name: str
    location: str
    columns: list[dict[str, str]]
    run_id: str
    # A partitioned snapshot: its partition columns, and its partitions (state.TableState.partitions).
    partition_by: list[str] = field(default_factory=list)
    partitions: dict[str, dict[str, Any]] | None = None


class OutputCatalog(Protocol):
    """Points each output table at its newly committed snapshot."""

    def publish(self, tables: list[PublishedTable]) -> None: ...


class NoOutputCatalog:
    """Local runs: the snapshot locations in the state document are the catalog."""

    def publish(self, tables: list[PublishedTable]) -> None:
        return None


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
            path.name for path in self.source_dir.iterdir() if path.is_dir() and not is_hidden(path.name)
        )

    def list_files(self, name: str, start_after: str | None = None) -> FileListing:
        """Every data file below the table's folder; a file's arrival is when it was written or
        moved here (the later of its modification and change times: a copy that kept an old
        modification time still arrives now)."""
        location = self._location(name)
        reference = time.time_ns() // 1000
        files = []
        # Plain strings and os.stat: at 100,000 files, Path objects cost four times the system calls.
        for relative in _relative_files(location):
            if start_after is not None and relative <= start_after:
                continue
            try:
                stat = os.stat(os.path.join(location, relative))
            except FileNotFoundError:
                continue  # removed while listing: not a file of this listing
            arrived = max(stat.st_mtime_ns, stat.st_ctime_ns) // 1000
            files.append(DataFile(relative, stat.st_size, arrived))
        return FileListing(str(location.resolve()), tuple(files), reference)

    def describe(self, name: str, files: Sequence[str] | None = None) -> CatalogTable:
        """The table as ``files`` hold it (every file when None): their columns reconciled by
        name (ignoring case) and widened type, see :mod:`cdc_pipeline.schema`."""
        location = self._location(name)
        paths = self.data_files(location) if files is None else [location / f for f in files]
        partition_keys = _partition_keys(name, location, paths)
        if not paths:
            return CatalogTable(name, str(location.resolve()), "parquet", (), partition_keys, has_data=False)
        columns = _file_columns(name, paths, partition_keys)
        return CatalogTable(name, str(location.resolve()), "parquet", columns, partition_keys)

    def _location(self, name: str) -> Path:
        location = self.source_dir / name
        if not location.is_dir():
            raise TableError(name, f"no table folder {location}; the source holds {self.table_names()}")
        return location

    @staticmethod
    def data_files(location: Path) -> list[Path]:
        return sorted(location / relative for relative in _relative_files(location))


def _relative_files(location: Path) -> list[str]:
    """The data files below ``location`` as sorted '/'-separated relative paths (hidden ones skipped)."""

    def unreadable(error: OSError) -> None:
        raise TableError(
            location.name,
            f"folder {error.filename} cannot be read ({error.strerror}); fix its permissions",
        )

    root = str(location)
    files = []
    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        subfolders[:] = [name for name in subfolders if not is_hidden(name)]
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        files += [prefix + name for name in names if not is_hidden(name)]
    return sorted(files)


def _file_columns(table: str, paths: Sequence[Path], partition_keys: tuple[str, ...]) -> tuple[Column, ...]:
    """The files' columns in first-seen order; a type two files disagree on is widened or refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Column] = {}
    # For each column, a file holding each type seen: an error names a file that really holds it.
    holders: dict[str, dict[str, Path]] = {}
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise TableError(
                table, f"file {path} is not readable Parquet ({exc}); remove or replace it"
            ) from exc
        try:
            by_lower_name(schema.names, f"file {path}")
        except AmbiguousColumnError as exc:
            raise TableError(table, str(exc)) from exc
        for arrow_field in schema:
            if arrow_field.name in partition_keys:
                continue
            if pa.types.is_timestamp(arrow_field.type) and arrow_field.type.unit == "ns":
                raise TableError(
                    table,
                    f"column {arrow_field.name!r} of file {path} holds nanosecond timestamps, which Spark "
                    "3.5 (and Glue) cannot read; write the files with microseconds (pyarrow: "
                    "coerce_timestamps='us')",
                )
            key = arrow_field.name.lower()
            type_name = _spark_type_name(arrow_field.type)
            holders.setdefault(key, {}).setdefault(type_name, path)
            known = columns.get(key)
            if known is None:
                columns[key] = Column(arrow_field.name, type_name)
                continue
            widened = widen(known.type, type_name)
            if widened is None:
                clash = next(t for t in holders[key] if widen(t, type_name) is None)
                raise TableError(
                    table,
                    f"column {known.name!r} changed type incompatibly: {clash} in file "
                    f"{holders[key][clash]}, {type_name} in file {path}. Only widening (int to bigint, "
                    "float to double, date to timestamp, more decimal digits) is applied; rewrite the "
                    "files with one type",
                )
            columns[key] = Column(known.name, widened)
    return tuple(columns.values())


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
    if pa.types.is_null(t):
        return "void"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"  # type: ignore[attr-defined]
    return str(t)
