"""The local runner and CLI end to end on small tables: errors, quarantine, exit codes, status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline.cli import main
from cdc_pipeline.errors import JavaNotFoundError
from cdc_pipeline.spark import ensure_java

pytestmark = pytest.mark.spark

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))])


class Lake:
    """A raw zone, registry, output and state under one temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        for name in ("raw", "registry", "out", "state"):
            (root / name).mkdir()
        self.registry("table_name,primary_key,lookback\npeople,id,PT1M\n")

    def registry(self, text: str) -> None:
        (self.root / "registry" / "tables.csv").write_text(text)

    def land(self, table: str, rows: list[dict], schema: pa.Schema = SCHEMA) -> Path:
        self.files += 1
        path = self.root / "raw" / table / f"part-{self.files:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        return path

    def run(self, *extra: str) -> int:
        r = self.root
        return main(
            [
                "run",
                "--source",
                str(r / "raw"),
                "--output",
                str(r / "out"),
                "--state",
                str(r / "state"),
                "--registry",
                str(r / "registry"),
                *extra,
            ]
        )

    def status(self, capsys) -> dict:
        capsys.readouterr()
        assert main(["status", "--state", str(self.root / "state"), "--json"]) == 0
        return json.loads(capsys.readouterr().out)["tables"]


def person(id_: int | None, name: str, seconds: float | None) -> dict:
    return {
        "id": id_,
        "name": name,
        "updated_at": None if seconds is None else T0 + timedelta(seconds=seconds),
    }


def rows_at(location: str) -> list[tuple]:
    table = pq.read_table(location)
    return sorted(zip(table["id"].to_pylist(), table["name"].to_pylist(), strict=True))


@pytest.fixture
def lake(tmp_path, spark) -> Lake:
    return Lake(tmp_path)


def test_rows_with_a_null_key_are_set_aside_in_quarantine_not_dropped(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1), person(None, "nobody", 2), person(None, "nemo", 3)])

    assert lake.run() == 0

    out = capsys.readouterr().out
    assert "2 row(s) set aside" in out
    assert "2 with a null primary key" in out
    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "ada")]
    quarantined = pq.read_table(lake.root / "out" / "people" / "quarantine" / status["run_id"])
    assert sorted(quarantined["name"].to_pylist()) == ["nemo", "nobody"]
    assert set(quarantined["_cdc_set_aside_reason"].to_pylist()) == {"null primary key"}


@pytest.mark.parametrize("incremental_by", ["arrival", "watermark"])
def test_a_row_set_aside_never_moves_the_watermark(lake, capsys, incremental_by) -> None:
    lake.registry(f"table_name,primary_key,incremental_by\npeople,id,{incremental_by}\n")
    lake.land("people", [person(1, "ada", 1), person(None, "from the future", 10**9)])
    assert lake.run() == 0
    lake.land("people", [person(1, "ada v2", 2), person(None, "from further on", 10**10)])

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    assert datetime.fromisoformat(status["watermark"]) == T0 + timedelta(seconds=2)
    assert rows_at(status["location"]) == [(1, "ada v2")]


def test_one_unreadable_table_fails_alone_and_the_run_exits_1(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    lake.land("broken", [person(1, "x", 1)])
    (lake.root / "raw" / "broken" / "garbage.parquet").write_bytes(b"this is not parquet")

    assert lake.run() == 1

    out = capsys.readouterr().out
    assert "garbage.parquet" in out
    status = lake.status(capsys)
    assert set(status) == {"people"}
    assert rows_at(status["people"]["location"]) == [(1, "ada")]
    run_id = status["people"]["run_id"]
    report = json.loads((lake.root / "state" / "runs" / run_id / "report.json").read_text())
    statuses = {table["table"]: table["status"] for table in report["tables"]}
    assert statuses == {"people": "succeeded", "broken": "failed"}


def test_failed_table_keeps_its_previous_watermark_and_snapshot(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    assert lake.run() == 0
    before = lake.status(capsys)["people"]
    bad = lake.land("people", [person(2, "bob", 5)])
    bad.write_bytes(b"truncated upload")

    assert lake.run() == 1

    after = lake.status(capsys)["people"]
    assert (after["watermark"], after["location"], after["run_id"]) == (
        before["watermark"],
        before["location"],
        before["run_id"],
    )
    assert rows_at(after["location"]) == [(1, "ada")]


def test_incremental_run_with_nothing_new_keeps_watermark_and_rows(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    lake.land("events", [person(7, "click", 1)])  # not in the registry: appended
    assert lake.run() == 0
    before = lake.status(capsys)

    assert lake.run() == 0

    after = lake.status(capsys)
    for table in ("people", "events"):
        assert (after[table]["watermark"], after[table]["rows"]) == (before[table]["watermark"], 1)
        assert len(rows_at(after[table]["location"])) == 1
    # An append reads strictly newer rows: nothing new, so its snapshot is not even rewritten.
    assert after["events"]["location"] == before["events"]["location"]


def test_late_row_within_the_lookback_is_merged_when_read_by_watermark(lake, capsys) -> None:
    lake.registry("table_name,primary_key,lookback,incremental_by\npeople,id,PT1M,watermark\n")
    lake.land("people", [person(1, "ada", 100)])
    assert lake.run() == 0
    lake.land("people", [person(2, "late-but-in-window", 100 - 30), person(3, "too-late", 100 - 120)])

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    # 30 s late is inside the 1-minute lookback; 2 minutes late is not (see docs/semantics.md).
    assert rows_at(status["location"]) == [(1, "ada"), (2, "late-but-in-window")]
    assert status["watermark"] == (T0 + timedelta(seconds=100)).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


def test_rows_landing_late_are_merged_whatever_their_stamp_when_read_by_arrival(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 100)])
    assert lake.run() == 0
    lake.land(
        "people", [person(2, "late", 100 - 30), person(3, "very late", 100 - 10**6), person(1, "old", 50)]
    )

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "ada"), (2, "late"), (3, "very late")]


def test_null_watermarks_are_loaded_by_a_full_load_and_never_move_the_watermark(lake, capsys) -> None:
    lake.land("people", [person(1, "stamped", 10), person(2, "unstamped", None)])

    assert lake.run() == 0

    assert "1 row(s) with a null 'updated_at' loaded" in capsys.readouterr().out
    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "stamped"), (2, "unstamped")]
    assert datetime.fromisoformat(status["watermark"]) == T0 + timedelta(seconds=10)


def test_incremental_runs_by_watermark_report_null_watermarks_and_never_resurrect_a_deleted_key(
    lake, capsys
) -> None:
    lake.registry(
        "table_name,primary_key,delete_column,delete_values,incremental_by\npeople,id,name,gone,watermark\n"
    )
    lake.land(
        "people", [person(1, "unstamped insert", None), person(1, "gone", 3600), person(2, "bob", 7200)]
    )
    assert lake.run() == 0
    lake.land("people", [person(3, "cy", 9000), person(4, "late unstamped", None)])
    capsys.readouterr()

    assert lake.run() == 0

    assert "2 row(s) of the table have a null 'updated_at': incremental runs by watermark do not read" in (
        capsys.readouterr().out
    )
    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(2, "bob"), (3, "cy")]


def test_a_late_unstamped_row_read_by_arrival_never_resurrects_a_deleted_key(lake, capsys) -> None:
    lake.registry("table_name,primary_key,delete_column,delete_values\npeople,id,name,gone\n")
    lake.land("people", [person(1, "gone", 3600), person(2, "bob", 7200)])
    assert lake.run() == 0
    lake.land("people", [person(1, "late unstamped update", None), person(3, "late unstamped", None)])

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(2, "bob"), (3, "late unstamped")]


def test_output_timestamps_are_int64_micros_readable_by_athena_duckdb_and_pyarrow(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 0.000001)])
    assert lake.run() == 0
    location = Path(lake.status(capsys)["people"]["location"])

    files = sorted(location.glob("*.parquet"))
    assert files
    assert not list(location.glob("_SUCCESS"))
    schema = pq.ParquetFile(files[0]).schema
    column = schema.column(schema.names.index("updated_at"))
    assert column.physical_type == "INT64"
    assert pq.read_table(files[0]).schema.field("updated_at").type == pa.timestamp("us", tz="UTC")


def test_source_column_with_the_reserved_prefix_fails_the_table_with_the_fix(lake, capsys) -> None:
    schema = pa.schema([("id", pa.int64()), ("_cdc_flag", pa.string()), ("updated_at", pa.timestamp("us"))])
    lake.land("people", [{"id": 1, "_cdc_flag": "x", "updated_at": datetime(2026, 1, 1)}], schema)

    assert lake.run() == 1

    assert "_cdc_flag use the prefix _cdc_" in capsys.readouterr().out


def test_corrupt_state_is_a_configuration_error_not_a_silent_full_reload(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    (lake.root / "state" / "state.json").write_text("{not json")

    assert lake.run() == 2

    err = capsys.readouterr().err
    assert "state.json is corrupt" in err
    assert "history/" in err
    assert (lake.root / "state" / "state.json").read_text() == "{not json"


def test_malformed_registry_exits_2_naming_the_file(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    lake.registry("table_name,primary_key\npeople,id,extra\n")

    assert lake.run() == 2

    assert "tables.csv line 2" in capsys.readouterr().err


def test_unknown_table_filter_and_bad_arguments_exit_2(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])

    assert lake.run("--tables", "nope") == 2
    assert "--tables names 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        lake.run("--load-type", "sideways")
    assert usage.value.code == 2


def test_missing_java_is_reported_with_the_install_hint(monkeypatch) -> None:
    monkeypatch.setattr("cdc_pipeline.spark.shutil.which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(JavaNotFoundError, match="apt-get install openjdk-17-jre-headless"):
        ensure_java()


def test_a_java_home_without_java_is_reported_too(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk-here"))

    with pytest.raises(JavaNotFoundError, match="holds no bin/java"):
        ensure_java()


def test_partition_folder_values_are_kept_as_the_strings_they_are(lake, capsys) -> None:
    folder = lake.root / "raw" / "codes" / "code=007"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([person(1, "ada", 1)], schema=SCHEMA), folder / "part-0.parquet")
    lake.registry("table_name,primary_key\ncodes,id\n")

    assert lake.run() == 0

    location = lake.status(capsys)["codes"]["location"]
    assert pq.read_table(location)["code"].to_pylist() == ["007"]
    assert sorted(p.name for p in Path(location).iterdir() if not p.name.endswith(".parquet")) == []


def test_every_warning_of_a_run_is_logged_in_its_run_log(lake, capsys) -> None:
    lake.land("events", [person(1, "click", 1)])  # not in the registry: a fallback warning

    assert lake.run() == 0

    run_id = lake.status(capsys)["events"]["run_id"]
    log = (lake.root / "state" / "runs" / run_id / "run.log").read_text()
    assert "WARNING" in log
    assert "not in the registry" in log


def test_status_of_a_state_directory_that_does_not_exist_is_an_error(tmp_path, capsys) -> None:
    assert main(["status", "--state", str(tmp_path / "typo")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Landing-zone realities: DMS full-load files, column-name case, widening, ordering types
# ----------------------------------------------------------------------------------------------

DMS = pa.schema(
    [
        ("Op", pa.string()),
        ("id", pa.int64()),
        ("name", pa.string()),
        ("updated_at", SCHEMA.field("updated_at").type),
    ]
)
FULL_LOAD = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("updated_at", SCHEMA.field("updated_at").type)]
)


def test_dms_full_load_files_without_the_op_column_are_inserts_not_a_failure(lake, capsys) -> None:
    lake.registry("table_name,primary_key,delete_column,delete_values\npeople,id,Op,D\n")
    lake.land("people", [person(1, "ada", 1), person(2, "bob", 1)], FULL_LOAD)
    assert lake.run() == 0
    assert rows_at(lake.status(capsys)["people"]["location"]) == [(1, "ada"), (2, "bob")]
    lake.land("people", [{"Op": "D", **person(2, "bob", 5)}, {"Op": "U", **person(1, "ada v2", 5)}], DMS)

    assert lake.run() == 0

    assert rows_at(lake.status(capsys)["people"]["location"]) == [(1, "ada v2")]


def test_column_names_match_ignoring_case_and_the_output_keeps_the_files_spelling(lake, capsys) -> None:
    lake.registry(
        "table_name,primary_key,watermark_column,delete_column,delete_values\npeople,ID,Updated_At,op,D\n"
    )
    upper = pa.schema(
        [("OP", pa.string()), ("ID", pa.int64()), ("NAME", pa.string()), ("UPDATED_AT", pa.timestamp("us"))]
    )
    lake.land("people", [{"OP": "I", "ID": 1, "NAME": "ada", "UPDATED_AT": datetime(2026, 1, 1)}], upper)
    assert lake.run() == 0
    lake.land("people", [{"OP": "U", "ID": 1, "NAME": "ada v2", "UPDATED_AT": datetime(2026, 1, 2)}], upper)

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    table = pq.read_table(status["location"])
    assert table.column_names == ["OP", "ID", "NAME", "UPDATED_AT"]
    assert table["NAME"].to_pylist() == ["ada v2"]
    assert status["primary_key"] == ["ID"]


def test_two_columns_equal_ignoring_case_in_one_file_fail_the_table_naming_both(lake, capsys) -> None:
    clash = pa.schema([("id", pa.int64()), ("tier", pa.string()), ("Tier", pa.string())])
    lake.land("people", [{"id": 1, "tier": "a", "Tier": "b"}], clash)

    assert lake.run() == 1

    out = capsys.readouterr().out
    assert "'tier' and 'Tier', which differ only by case" in out


def test_a_column_widened_between_files_and_against_the_snapshot_is_read_as_the_wider_type(
    lake, capsys
) -> None:
    narrow = pa.schema(
        [
            ("id", pa.int32()),
            ("name", pa.string()),
            ("score", pa.float32()),
            ("updated_at", SCHEMA.field("updated_at").type),
        ]
    )
    wide = pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("score", pa.float64()),
            ("updated_at", SCHEMA.field("updated_at").type),
        ]
    )
    lake.land("people", [{**person(1, "ada", 1), "score": 1.5}], narrow)
    assert lake.run() == 0
    lake.land("people", [{**person(2, "bob", 2), "score": 2.25}], narrow)
    lake.land(
        "people", [{**person(1, "ada v2", 3), "score": 3.0}, {**person(3, "cy", 3), "score": None}], wide
    )

    assert lake.run() == 0

    location = lake.status(capsys)["people"]["location"]
    assert rows_at(location) == [(1, "ada v2"), (2, "bob"), (3, "cy")]
    schema = pq.read_schema(next(Path(location).glob("*.parquet")))
    assert (schema.field("id").type, schema.field("score").type) == (pa.int64(), pa.float64())


def test_an_incompatible_type_change_fails_the_table_naming_the_column_types_and_files(lake, capsys) -> None:
    lake.land("people", [person(1, "ada", 1)])
    assert lake.run() == 0
    before = lake.status(capsys)["people"]
    texty = pa.schema(
        [("id", pa.string()), ("name", pa.string()), ("updated_at", SCHEMA.field("updated_at").type)]
    )
    bad = lake.land("people", [{**person(2, "bob", 2), "id": "two"}], texty)

    assert lake.run() == 1

    out = capsys.readouterr().out
    assert "column 'id' changed type incompatibly: bigint in the current snapshot" in out
    assert f"string in file {bad}" in out
    assert lake.status(capsys)["people"] == before


def test_iso_8601_strings_with_mixed_offsets_order_versions_by_instant(lake, capsys) -> None:
    lake.registry("table_name,primary_key,watermark_column\npeople,id,changed\n")
    iso = pa.schema([("id", pa.int64()), ("name", pa.string()), ("changed", pa.string())])
    lake.land(
        "people",
        [
            # 10:30+02:00 is 08:30Z: earlier than 09:00Z although its text sorts later.
            {"id": 1, "name": "at 08:30Z", "changed": "2026-01-01T10:30:00+02:00"},
            {"id": 1, "name": "at 09:00Z", "changed": "2026-01-01T09:00:00Z"},
            {"id": 2, "name": "microsecond later", "changed": "2026-01-01T09:00:00.000001Z"},
            {"id": 2, "name": "microsecond earlier", "changed": "2026-01-01T09:00:00Z"},
            {"id": 3, "name": "unreadable", "changed": "next tuesday"},
        ],
        iso,
    )

    assert lake.run() == 0

    out = capsys.readouterr().out
    assert "1 row(s) set aside" in out
    assert "1 whose 'changed' is not a readable time" in out
    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "at 09:00Z"), (2, "microsecond later")]
    assert status["watermark"] == "2026-01-01T09:00:00.000001Z"


@pytest.mark.parametrize(("unit", "scale"), [("seconds", 1), ("milliseconds", 1_000), ("us", 1_000_000)])
def test_integer_epochs_order_versions_in_the_unit_the_registry_names(lake, capsys, unit, scale) -> None:
    lake.registry(f"table_name,primary_key,watermark_column,watermark_unit\npeople,id,ts,{unit}\n")
    epoch = pa.schema([("id", pa.int64()), ("name", pa.string()), ("ts", pa.int64())])
    lake.land(
        "people",
        [{"id": 1, "name": "old", "ts": 100 * scale}, {"id": 1, "name": "new", "ts": 101 * scale}],
        epoch,
    )
    assert lake.run() == 0
    lake.land("people", [{"id": 1, "name": "late and older", "ts": 99 * scale}], epoch)

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "new")]
    assert status["watermark"] == "1970-01-01T00:01:41.000000Z"


def test_a_small_tables_snapshot_and_tombstones_are_one_zstd_file_each_run(lake, capsys) -> None:
    lake.registry("table_name,primary_key,delete_column,delete_values\npeople,id,name,gone\n")
    lake.land("people", [person(n, f"p{n}", n) for n in range(50)] + [person(7, "gone", 99)])
    assert lake.run() == 0
    lake.land("people", [person(1, "p1 v2", 100), person(8, "gone", 100), person(60, "new", 100)])
    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    snapshot_files = list(Path(status["location"]).glob("*.parquet"))
    tombstone_files = list(Path(status["tombstones"]).glob("*.parquet"))
    assert (len(snapshot_files), len(tombstone_files)) == (1, 1)
    column = pq.ParquetFile(snapshot_files[0]).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert len(rows_at(status["location"])) == 49


# ----------------------------------------------------------------------------------------------
# Regressions found by review: each was reproduced before its fix
# ----------------------------------------------------------------------------------------------


def test_a_string_sequence_arriving_after_full_load_files_without_it_is_read(lake, capsys) -> None:
    lake.registry("table_name,primary_key,sequence_column,delete_column,delete_values\npeople,id,seq,Op,D\n")
    lake.land("people", [person(1, "a", 1), person(2, "b", 1)], FULL_LOAD)
    assert lake.run() == 0
    dms_seq = pa.schema([*DMS, ("seq", pa.string())])
    lake.land(
        "people",
        [
            {"Op": "U", **person(1, "a2", 2), "seq": "00000002"},
            {"Op": "D", **person(2, "b", 2), "seq": "00000003"},
        ],
        dms_seq,
    )

    assert lake.run() == 0

    assert rows_at(lake.status(capsys)["people"]["location"]) == [(1, "a2")]


def test_unreadable_ordering_values_are_set_aside_when_read_by_watermark_too(lake, capsys) -> None:
    lake.registry("table_name,primary_key,watermark_column,incremental_by\npeople,id,ts,watermark\n")
    texty = pa.schema([("id", pa.int64()), ("name", pa.string()), ("ts", pa.string())])
    lake.land("people", [{"id": 1, "name": "a", "ts": "2026-01-01T00:00:00Z"}], texty)
    assert lake.run() == 0
    lake.land("people", [{"id": 2, "name": "b", "ts": "next tuesday"}], texty)

    assert lake.run() == 0

    assert "1 whose 'ts' is not a readable time" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "unit"),
    [("10:00:00", None), ("2026", None), ("9999-12-31T23:00:00-05:00", None), (10**12, "seconds")],
)
def test_ordering_values_that_are_no_instant_in_years_1_to_9999_are_set_aside(
    lake, capsys, value, unit
) -> None:
    kind = pa.string() if unit is None else pa.int64()
    lake.registry(f"table_name,primary_key,watermark_column,watermark_unit\npeople,id,ts,{unit or ''}\n")
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("ts", kind)])
    good = "2026-01-01T00:00:00Z" if unit is None else 1_767_225_600
    lake.land("people", [{"id": 1, "name": "a", "ts": good}, {"id": 2, "name": "b", "ts": value}], schema)

    assert lake.run() == 0

    status = lake.status(capsys)["people"]
    assert rows_at(status["location"]) == [(1, "a")]
    assert status["watermark"] == "2026-01-01T00:00:00.000000Z"


def test_a_key_spelled_in_another_case_by_newer_files_stays_incremental(lake, capsys) -> None:
    lake.registry("table_name,primary_key,sequence_column\npeople,id,seq\n")
    lower = pa.schema([("id", pa.int64()), ("name", pa.string()), ("seq", pa.int64())])
    upper = pa.schema([("ID", pa.int64()), ("name", pa.string()), ("SEQ", pa.int64())])
    lake.land("people", [{"id": 1, "name": "a", "seq": 1}], lower)
    assert lake.run() == 0
    lake.land("people", [{"ID": 1, "name": "a2", "SEQ": 2}], upper)

    capsys.readouterr()
    assert lake.run("--json") == 0

    (people,) = json.loads(capsys.readouterr().out)["tables"]
    assert (people["status"], people["load_type"]) == ("succeeded", "incremental")
    assert not [w for w in people["warnings"] if "registry changed" in w]
    table = pq.read_table(lake.status(capsys)["people"]["location"])
    assert table.column_names == ["id", "name", "seq"]
    assert table.to_pylist() == [{"id": 1, "name": "a2", "seq": 2}]


def test_a_registry_change_fails_until_accepted_then_reloads_in_full_even_with_no_new_file(
    lake, capsys
) -> None:
    lake.land("people", [person(1, "a", 1), person(1, "b", 2)])
    assert lake.run() == 0
    before = lake.status(capsys)["people"]
    lake.registry("table_name,primary_key\npeople,\n")
    capsys.readouterr()

    assert lake.run("--json") == 1
    (refused,) = json.loads(capsys.readouterr().out)["tables"]
    assert refused["status"] == "failed"
    assert lake.status(capsys)["people"] == before

    assert lake.run("--json", "--accept-registry-change", "people") == 0
    (people,) = json.loads(capsys.readouterr().out)["tables"]
    assert (people["status"], people["load_type"]) == ("succeeded", "full")
    assert len(rows_at(lake.status(capsys)["people"]["location"])) == 2


def test_a_key_less_table_with_ignored_delete_settings_is_unchanged_when_nothing_lands(lake, capsys) -> None:
    lake.registry("table_name,primary_key,delete_column,delete_values\npeople,,name,gone\n")
    lake.land("people", [person(1, "a", 1)])
    assert lake.run() == 0
    capsys.readouterr()

    assert lake.run("--json") == 0

    (people,) = json.loads(capsys.readouterr().out)["tables"]
    assert people["status"] == "unchanged"


def test_an_all_null_column_takes_the_type_the_other_files_give_it(lake, capsys) -> None:
    lake.land("people", [{**person(1, "a", 1), "note": "x"}], pa.schema([*SCHEMA, ("note", pa.string())]))
    assert lake.run() == 0
    lake.land("people", [{**person(2, "b", 2), "note": None}], pa.schema([*SCHEMA, ("note", pa.null())]))

    assert lake.run() == 0

    table = pq.read_table(lake.status(capsys)["people"]["location"])
    assert table.schema.field("note").type == pa.string()
    assert sorted(table["note"].to_pylist(), key=str) == [None, "x"]


def test_an_incompatible_change_names_a_file_that_holds_the_new_type(lake, capsys) -> None:
    lake.land("people", [{**person(1, "a", 1), "x": 1}], pa.schema([*SCHEMA, ("x", pa.int64())]))
    assert lake.run() == 0
    lake.land("people", [person(2, "b", 2)])
    holder = lake.land(
        "people", [{**person(3, "c", 3), "x": "three"}], pa.schema([*SCHEMA, ("x", pa.string())])
    )

    assert lake.run() == 1

    assert f"string in file {holder}" in capsys.readouterr().out
