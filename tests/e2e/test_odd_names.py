"""Table, folder and file names holding glob characters, colons, spaces, backslashes and unicode.

Spark globs every path it reads that holds one of ``\\ * ? [ ] { }``: unescaped, a table named
``pv[1]`` reads ``pv1``'s folder, and ``b{a,b}`` reads ``ba``'s. Escaped, Hadoop's globber still
cannot take a segment holding a colon (``x:y[1]``, ``t:1``). Each odd table sits here next to the
lookalike its name would match as a pattern, and every snapshot is compared with DuckDB's answer
over the table's own files, listed by Python and read one by one (tests/e2e/literal_files.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from cdc_pipeline import ingest
from cdc_pipeline.catalog import CatalogTable, Column, LocalCatalog
from cdc_pipeline.ingest import ingest_table
from cdc_pipeline.plan import Layout, plan_run
from cdc_pipeline.registry import parse_registry
from cdc_pipeline.spark import literal_groups, read_parquet, reads_alone
from cdc_pipeline.state import StateDocument
from cdc_pipeline.storage import LocalStorage

from .helpers import UTC, read_status, run_pipeline, write_parquet
from .literal_files import actual_rows, expected_current, parquet_files, register

pytestmark = pytest.mark.spark

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("grp", pa.string()),
        ("name", pa.string()),
        ("Op", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
BASE = dt.datetime(2024, 1, 1, tzinfo=UTC)
COLUMNS = ["id", "grp", "name", "op", "updated_at"]

# Each odd name next to the table its name matches as a glob pattern (or shares a prefix with), and
# where its files sit: key=value partition folders (read with the table root as basePath), folders
# holding a colon, file names holding a colon.
LAYOUTS = {
    "pv1": "d=1/{n}.parquet",
    "pv[1]": "d=1/{n}.parquet",
    "ba": "{n}.parquet",
    "b{a,b}": "{n}.parquet",
    "x:y1": "t:1/{n}.parquet",
    "x:y[1]": "t:1/{n}.parquet",
    "qa x": "{n}.parquet",
    "q? *": "2024-01-01T00:0{n}:00.parquet",
    "ü:n ï\\é": "{n}.parquet",
}
# Output partitioned by grp: each partition folder of a colon-and-bracket table is read alone.
PARTITIONED = {"x:y[1]", "pv[1]"}


def registry_csv() -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table_name", "primary_key", "delete_column", "delete_values", "partition_by"])
    for name in LAYOUTS:
        writer.writerow([name, "id", "Op", "D", "grp" if name in PARTITIONED else ""])
    return out.getvalue()


def land(source: Path, round_no: int) -> None:
    """Round 0 inserts each table's keys (a different count per table, so rows read from a
    lookalike show); round 1 updates some, deletes key 0, inserts one."""
    for index, (name, layout) in enumerate(LAYOUTS.items()):
        keys = range(3 + index)
        stamp = BASE + dt.timedelta(minutes=round_no, microseconds=index)
        if round_no == 0:
            rows = [dict(id=k, grp=f"g{k % 2}", name=f"{name}#{k}", Op="I", updated_at=stamp) for k in keys]
        else:
            rows = [dict(id=0, grp="g0", name=f"{name}#0", Op="D", updated_at=stamp)]
            rows += [
                dict(id=k, grp=f"g{(k + 1) % 2}", name=f"{name}#{k}'", Op="U", updated_at=stamp)
                for k in (1, 2)
            ]
            rows += [dict(id=100, grp="g1", name=f"{name}#new", Op="I", updated_at=stamp)]
        write_parquet(source / name / layout.format(n=round_no), rows, SCHEMA)


def snapshot_files(entry: dict) -> list[Path]:
    return [path for folder in entry["locations"] for path in parquet_files(folder)]


def test_odd_table_names_next_to_their_lookalikes_each_load_exactly_their_own_rows(tmp_path: Path) -> None:
    source, output, state, registry = (tmp_path / part for part in ("raw", "out", "state", "registry"))
    registry.mkdir()
    (registry / "tables.csv").write_text(registry_csv(), encoding="utf-8")

    for round_no in range(2):
        land(source, round_no)

        assert run_pipeline(source, output, state, registry) == 0

        tables = read_status(state)["tables"]
        assert sorted(tables) == sorted(LAYOUTS)
        con = duckdb.connect()
        for index, name in enumerate(LAYOUTS):
            entry = tables[name]
            assert entry["location"].startswith(str(output.resolve() / name / "snapshots")), entry
            raw = register(con, f"raw_{index}", parquet_files(source / name))
            assert raw == COLUMNS
            expected = expected_current(
                con,
                f"raw_{index}",
                COLUMNS,
                key="id",
                ordering="updated_at",
                delete_column="op",
                delete_values=["D"],
            )
            register(con, f"out_{index}", snapshot_files(entry))
            assert actual_rows(con, f"out_{index}", COLUMNS) == expected, name
            assert entry["rows"] == len(expected) == 3 + index  # round 1 deletes one key, adds one


def test_a_delete_column_spelled_in_another_case_by_newer_files_still_deletes(tmp_path: Path) -> None:
    source, output, state, registry = (tmp_path / part for part in ("raw", "out", "state", "registry"))
    registry.mkdir()
    (registry / "tables.csv").write_text(
        "table_name,primary_key,delete_column,delete_values\norders,id,op,D\n"
    )
    upper = pa.schema([field.with_name("OP") if field.name == "Op" else field for field in SCHEMA])
    rows = [dict(id=k, grp="g", name=f"v{k}", Op="I", updated_at=BASE) for k in range(3)]
    write_parquet(source / "orders" / "0.parquet", rows, SCHEMA)
    assert run_pipeline(source, output, state, registry) == 0
    later = BASE + dt.timedelta(minutes=1)
    write_parquet(
        source / "orders" / "1.parquet", [dict(id=0, grp="g", name="v0", OP="D", updated_at=later)], upper
    )

    assert run_pipeline(source, output, state, registry) == 0

    con = duckdb.connect()
    register(con, "raw", parquet_files(source / "orders"))
    expected = expected_current(
        con, "raw", COLUMNS, key="id", ordering="updated_at", delete_column="op", delete_values=["D"]
    )
    register(con, "out", snapshot_files(read_status(state)["tables"]["orders"]))
    assert actual_rows(con, "out", COLUMNS) == expected
    assert [row[0] for row in expected] == [1, 2]


class LowercasingCatalog(LocalCatalog):
    """The local tables as the Glue catalog describes them: column names lowercased."""

    def describe(self, name: str, files: list[str] | None = None) -> CatalogTable:
        table = super().describe(name, files)
        return CatalogTable(
            table.name,
            table.location,
            table.format,
            tuple(Column(column.name.lower(), column.type) for column in table.columns),
            table.partition_keys,
            table.has_data,
        )


@pytest.mark.parametrize("work_bytes", [1_000, 10**9], ids=["small", "large"])
def test_a_catalog_that_lowercases_column_names_over_files_spelling_op_still_deletes(
    spark, tmp_path: Path, work_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Glue lowercases column names; DMS writes Op. The plan resolves the registry's Op to the
    # catalog's op; the files, and so the rows read, say Op.
    rows = [dict(id=k, grp="g", name=f"v{k}", Op="D" if k == 0 else "I", updated_at=BASE) for k in range(4)]
    write_parquet(tmp_path / "raw" / "orders" / "0.parquet", rows, SCHEMA)
    plan = plan_run(
        catalog=LowercasingCatalog(tmp_path / "raw"),
        registry=parse_registry(
            "table_name,primary_key,delete_column,delete_values\norders,id,Op,D\n", "r.csv"
        ),
        state=StateDocument(),
        state_version=None,
        layout=Layout(str(tmp_path / "out"), str(tmp_path / "state")),
        run_id="r1",
    )
    (item,) = plan.items
    assert item.delete_column == "op"

    full_loads_after_write: list[str] = []
    original = ingest.full_load_tombstones

    def spy(*args, **kwargs):
        full_loads_after_write.append(kwargs["delete_column"])
        return original(*args, **kwargs)

    monkeypatch.setattr(ingest, "full_load_tombstones", spy)

    ingest_table(spark, replace(item, input_bytes=work_bytes), LocalStorage())

    con = duckdb.connect()
    register(con, "raw", parquet_files(tmp_path / "raw" / "orders"))
    register(con, "out", parquet_files(item.output_location))
    expected = expected_current(
        con, "raw", COLUMNS, key="id", ordering="updated_at", delete_column="op", delete_values=["D"]
    )
    assert actual_rows(con, "out", COLUMNS) == expected
    assert [row[0] for row in expected] == [1, 2, 3]
    # A large full load takes its tombstones from the written snapshot (the faster way), by the
    # files' spelling.
    assert full_loads_after_write == (["Op"] if work_bytes > 16 * 2**20 else [])


# ----------------------------------------------------------------------------------------------
# Reading paths literally (cdc_pipeline.spark)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "alone"),
    [
        ("/lake/raw/pv1/a.parquet", False),
        ("/lake/raw/x:y/t:1/a.parquet", False),  # no glob character: Spark globs nothing
        ("/lake/raw/pv[1]/a.parquet", False),  # escaped, globbed
        ("/lake/raw/x:y[1]/a.parquet", True),
        ("/lake/raw/pv[1]/t:1/a.parquet", True),
        ("s3://bucket/raw/q? */2024-01-01T00:00:00.parquet", True),
        ("s3://bucket/raw/q? */a.parquet", False),  # the scheme's colon is not a segment's
        ("s3a://bucket:9000/raw/pv[1]/a.parquet", False),
    ],
)
def test_a_path_is_read_alone_only_when_it_holds_a_glob_character_and_a_colon_below_its_scheme(
    path: str, alone: bool
) -> None:
    assert reads_alone(path) is alone


def test_paths_that_must_be_read_alone_get_a_read_each_and_the_others_share_one() -> None:
    paths = ["/r/a/1.parquet", "/r/x:y[1]/1.parquet", "/r/pv[1]/1.parquet", "/r/x:y[1]/2.parquet"]

    assert literal_groups(paths) == [
        ["/r/a/1.parquet", "/r/pv[1]/1.parquet"],
        ["/r/x:y[1]/1.parquet"],
        ["/r/x:y[1]/2.parquet"],
    ]


@pytest.fixture
def lookalikes(tmp_path: Path) -> Path:
    """Folders whose names match each other as glob patterns, two files each, values telling them apart."""
    values = {
        "pv1": 1,
        "pv[1]": 2,
        "x:y1/t:1": 3,
        "x:y[1]/t:1": 4,
        "ba": 5,
        "b{a,b}": 6,
        "q? *": 7,
        "qa x": 8,
    }
    for folder, value in values.items():
        for n in range(2):
            write_parquet(
                tmp_path / folder / f"{n}.parquet", [{"v": value * 10 + n}], pa.schema([("v", pa.int64())])
            )
    return tmp_path


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("pv[1]", [20, 21]), ("x:y[1]/t:1", [40, 41]), ("b{a,b}", [60, 61]), ("q? *", [70, 71])],
)
def test_read_parquet_reads_a_folder_as_named_never_its_lookalikes(
    spark, lookalikes: Path, folder, expected
) -> None:
    df = read_parquet(spark, [str(lookalikes / folder)])

    assert sorted(row.v for row in df.collect()) == expected


def test_read_parquet_reads_each_of_several_files_exactly_once_whatever_their_names(
    spark, lookalikes: Path
) -> None:
    files = [
        lookalikes / "x:y[1]/t:1/0.parquet",
        lookalikes / "x:y[1]/t:1/1.parquet",
        lookalikes / "pv[1]/0.parquet",
    ]
    files += [lookalikes / "pv1/1.parquet", lookalikes / "q? */1.parquet"]

    df = read_parquet(spark, [str(path) for path in files])

    assert sorted(row.v for row in df.collect()) == [11, 20, 40, 41, 71]
