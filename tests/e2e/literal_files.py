"""The DuckDB oracle over files named one by one, for tables whose names hold glob characters.

``helpers.raw_relation`` hands DuckDB a glob (``<table>/**/*.parquet``): for a table named ``pv[1]``
that glob reads ``pv1``'s files, exactly the mistake under test. Here Python lists the files and
pyarrow reads each through an open file object, so no name is ever a pattern; DuckDB then
computes the expected state with its own SQL. Column names are compared lowercased: the pipeline
matches them ignoring case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .helpers import _lit, _q, canonical_rows


def parquet_files(folder: Path | str) -> list[Path]:
    """The Parquet files below ``folder``, hidden ones (``.``/``_`` first) left out, as Spark does."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith((".", "_")))
        found += [Path(parent) / name for name in names if name.endswith(".parquet") and name[0] not in "._"]
    return sorted(found)


def register(con: duckdb.DuckDBPyConnection, relation: str, files: Sequence[Path]) -> list[str]:
    """The files' rows as the DuckDB view ``relation`` (columns lowercased); its column names."""
    tables = []
    for path in files:
        with open(path, "rb") as handle:
            table = pq.read_table(handle)
        tables.append(table.rename_columns([name.lower() for name in table.column_names]))
    united = pa.concat_tables(tables, promote_options="default")
    con.register(relation, united)
    return list(united.column_names)


def expected_current(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    columns: Sequence[str],
    *,
    key: str,
    ordering: str,
    delete_column: str | None = None,
    delete_values: Sequence[str] = (),
) -> list[tuple]:
    """Per key the version with the greatest ordering value, keys whose newest version is a delete
    left out (the source rows are built without ties)."""
    latest = (
        f"(SELECT * FROM {relation} WHERE {_q(key)} IS NOT NULL "
        f"QUALIFY row_number() OVER (PARTITION BY {_q(key)} ORDER BY {_q(ordering)} DESC) = 1)"
    )
    where = "TRUE"
    if delete_column:
        values = ", ".join(_lit(value) for value in delete_values)
        where = f"{_q(delete_column)} IS NULL OR CAST({_q(delete_column)} AS VARCHAR) NOT IN ({values})"
    return canonical_rows(con, latest, columns, where)


def actual_rows(con: duckdb.DuckDBPyConnection, relation: str, columns: Sequence[str]) -> list[tuple]:
    return canonical_rows(con, relation, columns)
