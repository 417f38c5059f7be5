"""The table-settings registry: which columns key, order and delete each table's rows.

The registry is a directory (an S3 prefix on AWS) of CSV files; the newest file is authoritative,
so a change is published by adding a file, never by editing one in place. See docs/registry.md.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cdc_pipeline.arrivals import is_hidden
from cdc_pipeline.errors import RegistryError
from cdc_pipeline.watermark import parse_lookback

DEFAULT_WATERMARK_COLUMN = "updated_at"
REQUIRED_COLUMNS = ("table_name", "primary_key")
OPTIONAL_COLUMNS = (
    "watermark_column",
    "sequence_column",
    "delete_column",
    "delete_values",
    "lookback",
    "incremental_by",
    "watermark_unit",
    "tombstone_retention",
    "time_ordered_keys",
    "partition_by",
)
DEFAULT_TOMBSTONE_RETENTION = "P30D"


class IncrementalBy(StrEnum):
    """What an incremental run reads: the files that arrived since the last commit (the default
    wherever the table's files can be listed), or the rows stamped at or after the watermark."""

    ARRIVAL = "arrival"
    WATERMARK = "watermark"


# An integer watermark column counts time since the epoch in this unit (named in the registry).
EPOCH_UNITS = {"seconds": 1_000_000, "milliseconds": 1_000, "microseconds": 1}
_UNIT_ALIASES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}


@dataclass(frozen=True)
class TableSettings:
    """One table's registry entry, validated."""

    table_name: str
    primary_key: tuple[str, ...] = ()
    watermark_column: str = DEFAULT_WATERMARK_COLUMN
    watermark_column_explicit: bool = False
    sequence_column: str | None = None
    delete_column: str | None = None
    delete_values: tuple[str, ...] = ()
    lookback: str | None = None
    lookback_micros: int = 0
    incremental_by: IncrementalBy | None = None
    watermark_unit: str | None = None
    tombstone_retention: str = DEFAULT_TOMBSTONE_RETENTION
    # File names sort in the order the files land: listings start after the last settled name.
    time_ordered_keys: bool = False
    # Output partition columns: an incremental run rewrites only the partitions its changes touch.
    partition_by: tuple[str, ...] = ()
    tombstone_retention_micros: int = field(
        default_factory=lambda: parse_lookback(DEFAULT_TOMBSTONE_RETENTION)
    )

    @classmethod
    def default(cls, table_name: str) -> TableSettings:
        """The settings of a table the registry does not name."""
        return cls(table_name=table_name)

    def named_columns(self) -> dict[str, str]:
        """Every column this entry names explicitly, by the registry field that names it."""
        named = {f"primary_key ({column})": column for column in self.primary_key}
        if self.watermark_column_explicit:
            named["watermark_column"] = self.watermark_column
        if self.sequence_column:
            named["sequence_column"] = self.sequence_column
        if self.delete_column:
            named["delete_column"] = self.delete_column
        named |= {f"partition_by ({column})": column for column in self.partition_by}
        return named


@dataclass(frozen=True)
class Registry:
    """The authoritative registry file, parsed."""

    source: str
    tables: dict[str, TableSettings] = field(default_factory=dict)

    def settings_for(self, table_name: str) -> TableSettings | None:
        return self.tables.get(table_name.lower())


class RegistrySource(Protocol):
    """Where registry files live: a local directory or an S3 prefix."""

    def newest(self) -> tuple[str, str]:
        """The newest registry file as (name for messages, CSV text)."""
        ...


def is_registry_file(name: str) -> bool:
    """A ``.csv`` file name that is not hidden: names starting with ``.`` (editor locks, macOS's
    ``._`` resource forks) or ``_`` (Spark's and Hive's markers) are never read as the registry."""
    return name.lower().endswith(".csv") and not is_hidden(name)


class LocalRegistrySource:
    """Registry CSV files in a local directory; the newest by modification time wins."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def newest(self) -> tuple[str, str]:
        if not self.directory.is_dir():
            raise RegistryError(
                f"registry directory {self.directory} does not exist; create it and add a CSV file "
                "with the header table_name,primary_key (see docs/registry.md)"
            )
        files = [path for path in self.directory.iterdir() if is_registry_file(path.name) and path.is_file()]
        if not files:
            raise RegistryError(
                f"registry directory {self.directory} holds no .csv file (names starting with . or _ are "
                "hidden); add one with the header table_name,primary_key (see docs/registry.md)"
            )
        newest = max(files, key=lambda path: (path.stat().st_mtime_ns, path.name))
        try:
            return str(newest), newest.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"registry file {newest} cannot be read as UTF-8 text: {exc}") from exc


def load_registry(source: RegistrySource) -> Registry:
    name, text = source.newest()
    return parse_registry(text, name)


def parse_registry(text: str, source: str) -> Registry:
    """Parse and validate registry CSV text; ``source`` names the file in every error."""
    reader = csv.reader(io.StringIO(text))
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise RegistryError(
            f"registry file {source} is empty; it needs the header table_name,primary_key and one row "
            "per table"
        )
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise RegistryError(
            f"registry file {source} lacks the column(s) {', '.join(missing)} in its header "
            f"{rows[0]!r}; the first line must name at least table_name,primary_key"
            + _delimiter_hint(rows[0])
        )
    unknown = [column for column in header if column not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise RegistryError(
            f"registry file {source} has unknown column(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    if len(set(header)) != len(header):
        raise RegistryError(f"registry file {source} names a column twice in its header {rows[0]!r}")
    if len(rows) == 1:
        raise RegistryError(f"registry file {source} has a header but no table rows")

    tables: dict[str, TableSettings] = {}
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RegistryError(
                f"registry file {source} line {line_number}: expected {len(header)} fields "
                f"({','.join(header)}), found {len(row)}; quote a composite key, e.g. "
                'order_lines,"order_id,line_no"' + _delimiter_hint(row)
            )
        entry = _parse_row(
            dict(zip(header, (cell.strip() for cell in row), strict=True)), source, line_number
        )
        key = entry.table_name.lower()
        if key in tables:
            raise RegistryError(
                f"registry file {source} line {line_number}: table {entry.table_name!r} is listed twice; "
                "keep one row per table"
            )
        tables[key] = entry
    return Registry(source=source, tables=tables)


# Delimiters spreadsheet programs write instead of commas (by locale, or when saving as text).
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _delimiter_hint(cells: list[str]) -> str:
    """Why a line parsed into one field, when it is another delimiter's: registry files are CSV."""
    if len(cells) != 1:
        return ""
    found = [name for delimiter, name in _OTHER_DELIMITERS.items() if delimiter in cells[0]]
    if not found:
        return ""
    return (
        f". The line looks {found[0]}-delimited ({cells[0]!r} is one field); registry files are "
        "comma-separated: save it as CSV with commas (a spreadsheet's 'CSV UTF-8 (comma delimited)')"
    )


def _parse_row(row: dict[str, str], source: str, line_number: int) -> TableSettings:
    where = f"registry file {source} line {line_number}"
    table_name = row["table_name"]
    if not table_name:
        raise RegistryError(f"{where}: table_name is blank")
    primary_key = tuple(column.strip() for column in row["primary_key"].split(",") if column.strip())
    if len(set(primary_key)) != len(primary_key):
        raise RegistryError(f"{where}: primary_key of {table_name!r} names a column twice")
    watermark_column = row.get("watermark_column", "")
    sequence_column = row.get("sequence_column", "") or None
    delete_column = row.get("delete_column", "") or None
    delete_values = tuple(value for value in row.get("delete_values", "").split("|") if value != "")
    if delete_column and not delete_values:
        raise RegistryError(
            f"{where}: table {table_name!r} names delete_column {delete_column!r} but no delete_values; "
            "list the values that mark a delete, pipe-separated (e.g. D)"
        )
    if delete_values and not delete_column:
        raise RegistryError(
            f"{where}: table {table_name!r} has delete_values but no delete_column; name the column "
            "that holds them (e.g. Op)"
        )
    lookback = row.get("lookback", "") or None
    try:
        lookback_micros = parse_lookback(lookback) if lookback else 0
    except ValueError as exc:
        raise RegistryError(f"{where}: table {table_name!r}: {exc}") from exc
    incremental_by = row.get("incremental_by", "").lower() or None
    if incremental_by is not None and incremental_by not in set(IncrementalBy):
        raise RegistryError(
            f"{where}: table {table_name!r} has incremental_by {row['incremental_by']!r}; write "
            "arrival (read the files that arrived since the last run, the default) or watermark (read "
            "the rows stamped at or after the last watermark)"
        )
    unit = row.get("watermark_unit", "").lower() or None
    unit = _UNIT_ALIASES.get(unit, unit) if unit else None
    if unit is not None and unit not in EPOCH_UNITS:
        raise RegistryError(
            f"{where}: table {table_name!r} has watermark_unit {row['watermark_unit']!r}; an integer "
            f"watermark column counts {', '.join(EPOCH_UNITS)} (or s, ms, us) since 1970-01-01 UTC"
        )
    retention = row.get("tombstone_retention", "") or DEFAULT_TOMBSTONE_RETENTION
    try:
        retention_micros = parse_lookback(retention)
    except ValueError as exc:
        raise RegistryError(
            f"{where}: table {table_name!r}: tombstone_retention {retention!r} is not an ISO-8601 duration "
            "in weeks, days, hours, minutes or seconds (e.g. P30D)"
        ) from exc
    ordered = row.get("time_ordered_keys", "").lower()
    if ordered not in ("", "true", "false"):
        raise RegistryError(
            f"{where}: table {table_name!r} has time_ordered_keys {row['time_ordered_keys']!r}; write true "
            "(its file names sort in the order the files land, e.g. DMS date folders) or false"
        )
    partition_by = tuple(
        column.strip() for column in row.get("partition_by", "").split(",") if column.strip()
    )
    if len({column.lower() for column in partition_by}) != len(partition_by):
        raise RegistryError(f"{where}: partition_by of {table_name!r} names a column twice")
    if partition_by and not primary_key:
        raise RegistryError(
            f"{where}: table {table_name!r} has partition_by but no primary_key; output partitions are "
            "rewritten where keys changed, so name the primary key (or leave partition_by empty)"
        )
    return TableSettings(
        table_name=table_name,
        primary_key=primary_key,
        partition_by=partition_by,
        watermark_column=watermark_column or DEFAULT_WATERMARK_COLUMN,
        watermark_column_explicit=bool(watermark_column),
        sequence_column=sequence_column,
        delete_column=delete_column,
        delete_values=delete_values,
        lookback=lookback,
        lookback_micros=lookback_micros,
        incremental_by=IncrementalBy(incremental_by) if incremental_by else None,
        watermark_unit=unit,
        tombstone_retention=retention,
        tombstone_retention_micros=retention_micros,
        time_ordered_keys=ordered == "true",
    )
