"""Plumbing for the end-to-end tests: driving the CLI and asking DuckDB for the truth.

Everything that decides what the *right* answer is lives here as DuckDB SQL over the raw source
Parquet files, so the oracle never shares code (or an engine) with the pipeline under test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cdc_pipeline.cli import main

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
CDC_PREFIX = "_cdc_"


# ----------------------------------------------------------------------------------------------
# Driving the CLI
# ----------------------------------------------------------------------------------------------


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pipeline must never see a half-written file, and a new file must not replace an old one:
    # the contract says change rows only ever arrive as new files.
    assert not path.exists(), f"test data bug: {path} would be rewritten"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def run_cli(argv: Sequence[str]) -> int:
    """Exit code of `main(argv)`; an argparse-style SystemExit counts as the code it carries,
    because that is the status a shell would see from the console script."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # usage errors raised by argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    return rc


def run_pipeline(source: Path, output: Path, state: Path, registry: Path, *extra: str) -> int:
    argv = [
        "run",
        "--source",
        str(source),
        "--output",
        str(output),
        "--state",
        str(state),
        "--registry",
        str(registry),
        *extra,
    ]
    return run_cli(argv)


def read_status(state: Path) -> dict[str, Any]:
    # redirect_stdout rather than capsys: the scenario fixture is module-scoped and capsys is not.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["status", "--state", str(state), "--json"])
    assert rc == 0, f"status exited {rc}; stdout was {buf.getvalue()!r}"
    doc = json.loads(buf.getvalue())
    assert isinstance(doc.get("tables"), dict), doc
    return doc


def instant_us(value: str | dt.datetime | None) -> int | None:
    """Microseconds since the epoch; a naive value is read as UTC (timestamp_ntz columns)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // dt.timedelta(microseconds=1)


# ----------------------------------------------------------------------------------------------
# DuckDB: the oracle and the reader of the actual output
# ----------------------------------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def raw_relation(source: Path, table: str) -> str:
    # ** also matches zero directories, so top-level and nested files are both read.
    return (
        f"read_parquet({_lit(str(source / table) + '/**/*.parquet')}, "
        "hive_partitioning=false, union_by_name=true)"
    )


def snapshot_relation(location: str) -> str:
    # The *.parquet glob skips marker files (_SUCCESS and the like) that may sit beside the data.
    return f"read_parquet({_lit(location.rstrip('/') + '/*.parquet')}, hive_partitioning=false)"


def columns_of(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _canonical_select_list(types: dict[str, str], columns: Sequence[str]) -> str:
    # Instants compare as integers so that tz-aware vs naive-UTC vs INT96 encodings of the same
    # value are equal, while any change of the value itself (shift, truncation) is not.
    parts = []
    for c in columns:
        t = types[c].upper()
        parts.append(f"epoch_us({_q(c)})" if t.startswith("TIMESTAMP") else _q(c))
    return ", ".join(parts)


def _sort_key(row: tuple) -> tuple:
    return tuple((1, 0) if v is None else (0, v) for v in row)


def sorted_rows(rows: Iterable[tuple]) -> list[tuple]:
    return sorted(rows, key=_sort_key)


def canonical_rows(
    con: duckdb.DuckDBPyConnection, relation: str, columns: Sequence[str], where: str = "TRUE"
) -> list[tuple]:
    types = dict(columns_of(con, relation))
    sql = f"SELECT {_canonical_select_list(types, columns)} FROM {relation} WHERE {where}"
    return sorted_rows(con.execute(sql).fetchall())


def source_columns(con: duckdb.DuckDBPyConnection, source: Path, table: str) -> list[str]:
    return [name for name, _ in columns_of(con, raw_relation(source, table))]


def expected_latest_per_key(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    table: str,
    keys: Sequence[str],
    watermark: str,
    sequence: str | None = None,
    delete_column: str | None = None,
    delete_values: Sequence[str] = (),
) -> list[tuple]:
    """Current state of a keyed table: the newest version per key, deleted keys dropped."""
    columns = source_columns(con, source, table)
    rel = raw_relation(source, table)
    order = f"{_q(watermark)} DESC" + (f", {_q(sequence)} DESC" if sequence else "")
    not_null_keys = " AND ".join(f"{_q(k)} IS NOT NULL" for k in keys)
    latest = (
        f"(SELECT * FROM {rel} WHERE {not_null_keys} "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(map(_q, keys))} ORDER BY {order}) = 1)"
    )
    where = "TRUE"
    if delete_column:
        values = ", ".join(_lit(v) for v in delete_values)
        where = f"{_q(delete_column)} IS NULL OR CAST({_q(delete_column)} AS VARCHAR) NOT IN ({values})"
    return canonical_rows(con, latest, columns, where)


def expected_all_rows(con: duckdb.DuckDBPyConnection, source: Path, table: str) -> list[tuple]:
    return canonical_rows(con, raw_relation(source, table), source_columns(con, source, table))


def expected_distinct_keys(
    con: duckdb.DuckDBPyConnection, source: Path, table: str, keys: Sequence[str]
) -> list[tuple]:
    """Keyed table without a watermark: raw keys are unique by construction, so one row per key."""
    columns = source_columns(con, source, table)
    rel = raw_relation(source, table)
    key_list = ", ".join(map(_q, keys))
    dup = con.execute(
        f"SELECT count(*) FROM (SELECT {key_list} FROM {rel} GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    assert dup == 0, f"test data bug: {table} has repeated keys but no watermark to order them"
    return canonical_rows(con, rel, columns, " AND ".join(f"{_q(k)} IS NOT NULL" for k in keys))


def max_watermark_us(con: duckdb.DuckDBPyConnection, source: Path, table: str, column: str) -> int:
    return con.execute(f"SELECT epoch_us(max({_q(column)})) FROM {raw_relation(source, table)}").fetchone()[0]


def actual_snapshot(
    con: duckdb.DuckDBPyConnection, location: str, columns: Sequence[str]
) -> tuple[list[str], list[tuple], int]:
    """(all output column names, rows of the given source columns in canonical form, row count)."""
    rel = snapshot_relation(location)
    names = [name for name, _ in columns_of(con, rel)]
    present = [c for c in columns if c in names]
    rows = canonical_rows(con, rel, present) if present == list(columns) else []
    count = con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
    return names, rows, count


def non_cdc(names: Iterable[str]) -> list[str]:
    return [n for n in names if not n.startswith(CDC_PREFIX)]
