"""Black-box end-to-end check of the `cdc-pipeline run` / `status` contract.

One module-scoped scenario drives five tables through a full load, incremental rounds, a
`--tables` subset run and a forced full reload; after every run it records the CLI's status, the
snapshot as read by DuckDB from the status `location`, and DuckDB's own answer computed from all
raw source files. The tests then judge those recordings. Expected data never comes from the code
under test.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from .helpers import (
    UTC,
    actual_snapshot,
    expected_all_rows,
    expected_distinct_keys,
    expected_latest_per_key,
    instant_us,
    max_watermark_us,
    non_cdc,
    read_status,
    run_pipeline,
    sorted_rows,
    source_columns,
    write_parquet,
)

pytestmark = pytest.mark.spark

BASE = dt.datetime(2024, 1, 1, tzinfo=UTC)
TIE_KEYS = range(7, 13)

# Keyed tables and how DuckDB must resolve them; mirrors the registry written below.
KEYED = {
    "customers": dict(
        keys=["customer_id"],
        watermark="updated_at",
        sequence="seq",
        delete_column="status",
        delete_values=["DELETED", "PURGED"],
    ),
    "order_lines": dict(keys=["order_id", "line_no"], watermark="updated_at"),
    "accounts": dict(
        keys=["account_id"],
        watermark="changed_at",
        delete_column="Op",
        delete_values=["D"],
    ),
}
UNREGISTERED = "events"
NO_WATERMARK = "countries"
ALL_TABLES = [*KEYED, UNREGISTERED, NO_WATERMARK]

REGISTRY_CSV = """\
table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,lookback
customers,customer_id,,seq,status,DELETED|PURGED,
order_lines,"order_id,line_no",,,,,
accounts,account_id,changed_at,,Op,D,PT15M
countries,country_code,,,,,
"""

CUSTOMERS = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("name", pa.string()),
        ("email", pa.string()),
        ("status", pa.string()),
        ("seq", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Naive timestamps: the timestamp_ntz path must keep working end to end.
ORDER_LINES = pa.schema(
    [
        ("order_id", pa.int64()),
        ("line_no", pa.int32()),
        ("sku", pa.string()),
        ("qty", pa.int32()),
        ("amount", pa.decimal128(10, 2)),
        ("updated_at", pa.timestamp("us")),
    ]
)
ACCOUNTS = pa.schema(
    [
        ("Op", pa.string()),
        ("account_id", pa.string()),
        ("balance", pa.int64()),
        ("changed_at", pa.timestamp("us", tz="UTC")),
    ]
)
EVENTS = pa.schema(
    [
        ("event_id", pa.int64()),
        ("kind", pa.string()),
        ("payload", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
COUNTRIES = pa.schema([("country_code", pa.string()), ("name", pa.string()), ("population", pa.int64())])


class Clock:
    """Strictly increasing microsecond-precision stamps, one window of ten minutes per round, so
    versions of a key never tie unless a test makes them tie on purpose."""

    def __init__(self, rng: random.Random, round_no: int):
        self.rng, self.start, self.i = rng, BASE + dt.timedelta(minutes=10 * round_no), 0

    def __call__(self) -> dt.datetime:
        stamp = self.start + dt.timedelta(milliseconds=20 * self.i, microseconds=self.rng.randint(1, 19_999))
        self.i += 1
        return stamp


@dataclass
class Generator:
    """Change rows per table per round; remembers what it emitted so boundary rows can be stamped
    with exactly the previous round's maximum."""

    rng: random.Random = field(default_factory=lambda: random.Random(20240101))
    seq: int = 0
    customer_ids: set[int] = field(default_factory=set)
    line_keys: set[tuple[int, int]] = field(default_factory=set)
    account_ids: set[str] = field(default_factory=set)
    next_event: int = 1
    next_country: int = 0
    max_stamp: dict[str, dt.datetime] = field(default_factory=dict)
    boundary: dict[int, dict[str, Any]] = field(default_factory=dict)

    def _seq(self) -> int:
        self.seq += 1
        return self.seq

    def _track(self, table: str, rows: list[dict], column: str) -> list[dict]:
        stamps = [r[column] for r in rows]
        self.max_stamp[table] = max([*stamps, self.max_stamp.get(table, min(stamps))])
        self.rng.shuffle(rows)  # file order must not be what decides the latest version
        return rows

    # -- customers: sequence tie-break, two delete values, a NULL key ---------------------------
    def customer(self, cid: int | None, stamp: dt.datetime, status: str | None = "ACTIVE", **kw) -> dict:
        return dict(
            customer_id=cid,
            name=kw.get("name", f"cust-{cid}-{self.rng.randint(0, 9999)}"),
            email=kw.get("email", self.rng.choice([None, f"c{cid}@example.com"])),
            status=status,
            seq=kw.get("seq") or self._seq(),
            updated_at=stamp,
        )

    def customers(self, round_no: int) -> list[dict]:
        clock, rows = Clock(self.rng, round_no), []
        if round_no == 0:
            for cid in range(1, 151):
                rows.append(self.customer(cid, clock(), self.rng.choice(["ACTIVE", "INACTIVE", None])))
            # Intra-batch versions inside the full load: some end deleted, some end alive.
            for cid in self.rng.sample(range(2, 151), 24):
                status = self.rng.choice(["ACTIVE", "DELETED", "PURGED", "INACTIVE"])
                rows.append(self.customer(cid, clock(), status))
            # The newest row of the full load belongs to customer 1, so the next round can stamp a
            # newer-sequence version of it with exactly this instant.
            rows.append(self.customer(1, clock(), "ACTIVE", name="before-boundary"))
            self.customer_ids.update(range(1, 151))
            return self._track("customers", rows, "updated_at")

        previous_max = self.max_stamp["customers"]
        # The NULL-key row is stamped early in the round so it is never the round's maximum.
        rows.append(self.customer(None, clock(), "ACTIVE", name="no-key"))
        new_key = 1000 + round_no
        rows.append(self.customer(new_key, previous_max, "ACTIVE", name=f"boundary-new-{round_no}"))
        self.boundary.setdefault(round_no, {})["customers"] = dict(new_key=new_key, stamp=previous_max)
        if round_no == 1:
            rows.append(self.customer(1, previous_max, "ACTIVE", name="boundary-update"))
            # Same stamp, sequence decides. Several keys, and the file is shuffled, so an
            # implementation that ignores the sequence column cannot pass by a lucky pick.
            for cid in TIE_KEYS:
                tie = clock()
                lo, hi = self._seq(), self._seq()
                rows.append(self.customer(cid, tie, "INACTIVE", name="seq-wins", seq=hi))
                rows.append(self.customer(cid, tie, "ACTIVE", name="seq-loses", seq=lo))
        # Boundary and tie-break keys stay untouched afterwards so their checks have one answer.
        existing = sorted(c for c in self.customer_ids - {1, *TIE_KEYS} if c < 1000)
        for cid in self.rng.sample(existing, 40):
            rows.append(self.customer(cid, clock(), self.rng.choice(["ACTIVE", "INACTIVE", None])))
        for cid in self.rng.sample(existing, 10):  # several versions in one new file
            for status in [self.rng.choice(["ACTIVE", "INACTIVE"]) for _ in range(2)] + [
                self.rng.choice(["ACTIVE", "DELETED", "PURGED"])
            ]:
                rows.append(self.customer(cid, clock(), status))
        for cid in self.rng.sample(existing, 6):  # plain deletes
            rows.append(self.customer(cid, clock(), self.rng.choice(["DELETED", "PURGED"])))
        for cid in self.rng.sample(existing, 3):  # deleted and re-created within one batch
            rows.append(self.customer(cid, clock(), "DELETED"))
            rows.append(self.customer(cid, clock(), "ACTIVE", name="re-created"))
        fresh = range(200 + 30 * round_no, 220 + 30 * round_no)
        for cid in fresh:
            rows.append(self.customer(cid, clock(), "ACTIVE"))
        self.customer_ids.update(fresh)
        self.customer_ids.add(new_key)
        return self._track("customers", rows, "updated_at")

    # -- order_lines: composite key, naive timestamps, decimals ---------------------------------
    def line(self, order_id: int, line_no: int, stamp: dt.datetime) -> dict:
        return dict(
            order_id=order_id,
            line_no=line_no,
            sku=f"SKU-{self.rng.randint(1, 50):03d}",
            qty=self.rng.randint(1, 9),
            amount=Decimal(self.rng.randint(100, 99_999)) / 100,
            updated_at=stamp.replace(tzinfo=None),
        )

    def order_lines(self, round_no: int) -> list[dict]:
        clock, rows = Clock(self.rng, round_no), []
        if round_no == 0:
            # Every order has lines 1..3, so a key of line_no alone or order_id alone would collapse rows.
            keys = [(o, n) for o in range(1, 41) for n in range(1, 4)]
            rows += [self.line(o, n, clock()) for o, n in keys]
            rows += [self.line(o, n, clock()) for o, n in self.rng.sample(keys, 15)]
            self.line_keys.update(keys)
            return self._track("order_lines", rows, "updated_at")
        previous_max = self.max_stamp["order_lines"]
        boundary_key = (1, 100 + round_no)
        rows.append(self.line(*boundary_key, previous_max))
        self.boundary.setdefault(round_no, {})["order_lines"] = dict(
            new_key=boundary_key, stamp=previous_max.replace(tzinfo=None)
        )
        existing = sorted(self.line_keys)
        for o, n in self.rng.sample(existing, 25):
            rows.append(self.line(o, n, clock()))
        for o, n in self.rng.sample(existing, 5):
            rows += [self.line(o, n, clock()) for _ in range(3)]
        fresh = [(o, n) for o in range(40 + 5 * round_no, 45 + 5 * round_no) for n in (1, 2)]
        rows += [self.line(o, n, clock()) for o, n in fresh]
        self.line_keys.update(fresh)
        self.line_keys.add(boundary_key)
        return self._track("order_lines", rows, "updated_at")

    # -- accounts: DMS-style Op column, custom watermark column, lookback ----------------------
    def account(self, op: str, aid: str, stamp: dt.datetime) -> dict:
        return dict(Op=op, account_id=aid, balance=self.rng.randint(-500, 50_000), changed_at=stamp)

    def accounts(self, round_no: int) -> list[dict]:
        clock, rows = Clock(self.rng, round_no), []
        if round_no == 0:
            ids = [f"A{i:04d}" for i in range(1, 121)]
            rows += [self.account("I", a, clock()) for a in ids]
            rows += [self.account("U", a, clock()) for a in self.rng.sample(ids, 15)]
            rows += [self.account("D", a, clock()) for a in self.rng.sample(ids, 8)]
            self.account_ids.update(ids)
            return self._track("accounts", rows, "changed_at")
        previous_max = self.max_stamp["accounts"]
        boundary_key = f"B{round_no:04d}"
        rows.append(self.account("I", boundary_key, previous_max))
        self.boundary.setdefault(round_no, {})["accounts"] = dict(new_key=boundary_key, stamp=previous_max)
        existing = sorted(a for a in self.account_ids if not a.startswith("B"))
        rows += [self.account("U", a, clock()) for a in self.rng.sample(existing, 30)]
        rows += [self.account("D", a, clock()) for a in self.rng.sample(existing, 10)]
        # Re-insert after delete (newer stamp) is legal: a key comes back.
        rows += [self.account("I", a, clock()) for a in self.rng.sample(existing, 5)]
        for i in range(3):  # born, changed and deleted inside one file: must not appear
            aid = f"T{round_no}{i:03d}"
            rows += [self.account(op, aid, clock()) for op in ("I", "U", "D")]
        fresh = [f"N{round_no}{i:03d}" for i in range(10)]
        rows += [self.account("I", a, clock()) for a in fresh]
        self.account_ids.update([*fresh, boundary_key])
        return self._track("accounts", rows, "changed_at")

    # -- events: no registry entry, append-only with exact duplicates ---------------------------
    def events(self, round_no: int) -> list[dict]:
        clock, rows = Clock(self.rng, round_no), []
        for _ in range(100 if round_no == 0 else 25):
            rows.append(
                dict(
                    event_id=self.next_event,
                    kind=self.rng.choice(["click", "view", "buy"]),
                    payload=self.rng.choice([None, f"p{self.rng.randint(0, 99)}"]),
                    updated_at=clock(),
                )
            )
            self.next_event += 1
        # Exact duplicate rows must survive as duplicates: the table has no key to collapse them.
        rows += [dict(r) for r in self.rng.sample(rows, 4)]
        return self._track("events", rows, "updated_at")

    # -- countries: no updated_at column at all --------------------------------------------------
    def countries(self, round_no: int) -> list[dict]:
        rows = []
        for _ in range(40 if round_no == 0 else 5):
            code = f"C{self.next_country:03d}"
            self.next_country += 1
            population = self.rng.randint(1, 10**9)
            rows.append(dict(country_code=code, name=f"Country {code}", population=population))
        return rows


def write_round(source: Path, gen: Generator, round_no: int) -> None:
    r = round_no
    if r == 0:
        cust = gen.customers(0)
        write_parquet(source / "customers" / "init-a.parquet", cust[: len(cust) // 2], CUSTOMERS)
        write_parquet(
            source / "customers" / "2023" / "12" / "init-b.parquet", cust[len(cust) // 2 :], CUSTOMERS
        )
        lines = gen.order_lines(0)
        write_parquet(source / "order_lines" / "2024" / "01" / "part-1.parquet", lines[:60], ORDER_LINES)
        write_parquet(source / "order_lines" / "2024" / "01" / "part-2.parquet", lines[60:], ORDER_LINES)
    else:
        write_parquet(
            source / "customers" / "2024" / f"{r:02d}" / f"batch-{r}.parquet", gen.customers(r), CUSTOMERS
        )
        write_parquet(
            source / "order_lines" / "2024" / f"{r + 1:02d}" / "part-1.parquet",
            gen.order_lines(r),
            ORDER_LINES,
        )
    write_parquet(source / "accounts" / f"LOAD{r:08d}.parquet", gen.accounts(r), ACCOUNTS)
    write_parquet(source / "events" / "2024" / f"r{r}" / "events.parquet", gen.events(r), EVENTS)
    write_parquet(
        source / "countries" / ("base" if r == 0 else f"extra-{r}") / "countries.parquet",
        gen.countries(r),
        COUNTRIES,
    )


@dataclass
class RunRecord:
    label: str
    round_no: int | None
    ran: list[str]
    rc: int
    status: dict[str, Any]
    output_columns: dict[str, list[str]]
    source_columns: dict[str, list[str]]
    actual: dict[str, list[tuple]]
    location_counts: dict[str, int]
    expected: dict[str, list[tuple]]
    expected_watermark_us: dict[str, int]


@dataclass
class Scenario:
    runs: list[RunRecord]
    # round -> table -> {"new_key", "stamp"}: rows stamped with the max stamp emitted before that round
    boundary: dict[int, dict[str, dict[str, Any]]]


def expected_for(con: duckdb.DuckDBPyConnection, source: Path, table: str) -> list[tuple]:
    if table in KEYED:
        return expected_latest_per_key(con, source, table, **KEYED[table])
    if table == NO_WATERMARK:
        return expected_distinct_keys(con, source, table, ["country_code"])
    return expected_all_rows(con, source, table)


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory) -> Scenario:
    root = tmp_path_factory.mktemp("cdc_e2e")
    source, output, state, registry = (root / d for d in ("source", "output", "state", "registry"))
    registry.mkdir()
    (registry / "registry.csv").write_text(REGISTRY_CSV)
    gen = Generator()
    con = duckdb.connect()
    plan = [
        # (label, round of new files, extra CLI args, tables expected to run)
        ("full load (no tracker yet)", 0, [], ALL_TABLES),
        ("incremental 1 (implicit)", 1, [], ALL_TABLES),
        (
            "incremental 2 (--tables customers,events)",
            2,
            ["--load-type", "incremental", "--tables", "customers,events"],
            ["customers", "events"],
        ),
        ("incremental 3 (catch-up, --parallelism 2)", 3, ["--parallelism", "2"], ALL_TABLES),
        ("forced full reload", None, ["--load-type", "full"], ALL_TABLES),
    ]
    records: list[RunRecord] = []
    for label, round_no, extra, ran in plan:
        if round_no is not None:
            write_round(source, gen, round_no)
        rc = run_pipeline(source, output, state, registry, *extra)
        status = read_status(state)
        rec = RunRecord(label, round_no, ran, rc, status, {}, {}, {}, {}, {}, {})
        for table in ALL_TABLES:
            cols = source_columns(con, source, table)
            rec.source_columns[table] = cols
            entry = status["tables"].get(table)
            if entry and entry.get("location"):
                names, rows, count = actual_snapshot(con, entry["location"], cols)
                rec.output_columns[table], rec.actual[table], rec.location_counts[table] = names, rows, count
            if table in ran:
                rec.expected[table] = expected_for(con, source, table)
                if table in KEYED:
                    rec.expected_watermark_us[table] = max_watermark_us(
                        con, source, table, KEYED[table]["watermark"]
                    )
        records.append(rec)
    return Scenario(records, gen.boundary)


def _entry(rec: RunRecord, table: str) -> dict[str, Any]:
    entry = rec.status["tables"].get(table)
    assert entry is not None, f"[{rec.label}] status has no entry for {table}: {sorted(rec.status['tables'])}"
    return entry


def _assert_snapshot(rec: RunRecord, table: str) -> None:
    assert rec.rc == 0, f"[{rec.label}] exit code {rec.rc}"
    assert table in rec.output_columns, f"[{rec.label}] {table} has no committed snapshot"
    assert sorted(non_cdc(rec.output_columns[table])) == sorted(rec.source_columns[table]), (
        f"[{rec.label}] {table} output columns {rec.output_columns[table]} "
        f"vs source {rec.source_columns[table]}"
    )
    actual, expected = rec.actual[table], rec.expected[table]
    assert actual == expected, f"[{rec.label}] {table}: " + _diff(actual, expected)


def _diff(actual: list[tuple], expected: list[tuple]) -> str:
    a, e = Counter(actual), Counter(expected)
    missing, extra = sorted_rows((e - a).elements()), sorted_rows((a - e).elements())
    return f"{len(actual)} rows vs {len(expected)} expected; missing {missing[:5]}; unexpected {extra[:5]}"


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_every_run_exits_zero_and_status_rows_equal_rows_in_location(scenario):
    for rec in scenario.runs:
        assert rec.rc == 0, f"[{rec.label}] exit code {rec.rc}"
        for table in ALL_TABLES:
            entry = _entry(rec, table)
            assert entry.get("location"), f"[{rec.label}] {table} has no location: {entry}"
            assert entry["rows"] == rec.location_counts[table], (
                f"[{rec.label}] {table}: status rows {entry['rows']} "
                f"!= {rec.location_counts[table]} in location"
            )


def test_output_keeps_source_columns_unchanged_and_adds_only_cdc_prefixed_ones(scenario):
    for rec in scenario.runs:
        for table in ALL_TABLES:
            assert sorted(non_cdc(rec.output_columns[table])) == sorted(rec.source_columns[table]), (
                f"[{rec.label}] {table} columns {rec.output_columns[table]}"
            )


@pytest.mark.parametrize("table", list(KEYED))
def test_keyed_snapshot_matches_duckdb_latest_version_per_key_after_every_run(scenario, table):
    checked = 0
    for rec in scenario.runs:
        if table not in rec.ran:
            continue
        _assert_snapshot(rec, table)
        checked += 1
    assert checked == sum(table in rec.ran for rec in scenario.runs) >= 4


@pytest.mark.parametrize("table", list(KEYED))
def test_keyed_status_watermark_is_duckdb_max_over_raw_rows(scenario, table):
    for rec in scenario.runs:
        if table not in rec.ran:
            continue
        got = instant_us(_entry(rec, table)["watermark"])
        assert got == rec.expected_watermark_us[table], (
            f"[{rec.label}] {table}: status watermark {_entry(rec, table)['watermark']!r} "
            f"({got}) != DuckDB max ({rec.expected_watermark_us[table]})"
        )


@pytest.mark.parametrize("table", list(KEYED))
def test_row_stamped_exactly_at_previous_watermark_is_applied(scenario, table):
    true_boundaries = 0
    for round_no, rows in sorted(scenario.boundary.items()):
        if table not in rows:
            continue
        b = rows[table]
        # The committed watermark the boundary row meets is the one of the last run of this table
        # before the row's file was written; the row is read by the first run of the table after.
        runs = scenario.runs
        written_at = next(i for i, rec in enumerate(runs) if rec.round_no == round_no)
        prev = [rec for rec in runs[:written_at] if table in rec.ran][-1]
        applying = next(rec for rec in runs[written_at:] if table in rec.ran)
        if instant_us(_entry(prev, table)["watermark"]) != instant_us(b["stamp"]):
            # Only a real boundary when the table's previous run committed exactly this stamp; with
            # a skipped run in between, the row is just one more row of a larger batch.
            skipped_a_run = prev is not runs[written_at - 1]
            assert skipped_a_run, (
                f"round {round_no}: {table} ran right before, yet its committed watermark "
                f"{_entry(prev, table)['watermark']!r} is not the max stamp {b['stamp']} it had read"
            )
            continue
        true_boundaries += 1
        idx = [applying.source_columns[table].index(k) for k in KEYED[table]["keys"]]
        key = b["new_key"] if isinstance(b["new_key"], tuple) else (b["new_key"],)
        present = [r for r in applying.actual[table] if tuple(r[i] for i in idx) == key]
        assert len(present) == 1, (
            f"[{applying.label}] {table}: row with key {key} stamped at the previous watermark "
            f"{b['stamp']} was not applied"
        )
    assert true_boundaries >= 2, f"{table}: only {true_boundaries} boundary rows met a committed watermark"
    if table == "customers":
        rec1 = next(r for r in scenario.runs if r.label.startswith("incremental 1"))
        cols = rec1.source_columns[table]
        names = [r[cols.index("name")] for r in rec1.actual[table] if r[cols.index("customer_id")] == 1]
        # A higher sequence for an existing key at the boundary instant must replace the old version.
        assert names == ["boundary-update"], names


def test_sequence_column_breaks_watermark_ties(scenario):
    rec1 = next(r for r in scenario.runs if r.label.startswith("incremental 1"))
    cols = rec1.source_columns["customers"]
    i_id, i_name = cols.index("customer_id"), cols.index("name")
    names = {r[i_id]: r[i_name] for r in rec1.actual["customers"] if r[i_id] in TIE_KEYS}
    assert names == dict.fromkeys(TIE_KEYS, "seq-wins"), names


def test_null_primary_key_row_is_quarantined_without_failing_the_run(scenario):
    for rec in scenario.runs[1:]:
        if "customers" not in rec.ran:
            continue
        assert rec.rc == 0, f"[{rec.label}] exit code {rec.rc}"
        cols = rec.source_columns["customers"]
        leaked = [
            r
            for r in rec.actual["customers"]
            if r[cols.index("customer_id")] is None or r[cols.index("name")] == "no-key"
        ]
        assert leaked == [], f"[{rec.label}] NULL-key rows reached the snapshot: {leaked}"


def test_unregistered_table_holds_every_raw_row_as_a_multiset(scenario):
    for rec in scenario.runs:
        expected = rec.expected[UNREGISTERED]
        # Premise: the data really has exact duplicates, so a dedup would be caught.
        assert len(set(expected)) < len(expected)
        _assert_snapshot(rec, UNREGISTERED)


def test_table_without_watermark_column_is_reloaded_with_null_watermark(scenario):
    sizes = []
    for rec in scenario.runs:
        if NO_WATERMARK not in rec.ran:
            continue
        entry = _entry(rec, NO_WATERMARK)
        assert entry["watermark"] is None, f"[{rec.label}] countries watermark {entry['watermark']!r}"
        _assert_snapshot(rec, NO_WATERMARK)
        sizes.append(len(rec.actual[NO_WATERMARK]))
    # The new files of every round (including those the --tables run skipped) are picked up.
    assert sizes == [40, 45, 55, 55], sizes


def test_forced_full_reload_reproduces_the_incremental_snapshot(scenario):
    incremental, full = scenario.runs[-2], scenario.runs[-1]
    assert full.rc == 0
    for table in ALL_TABLES:
        assert full.actual[table] == incremental.actual[table], f"{table}: " + _diff(
            full.actual[table], incremental.actual[table]
        )
    for table in KEYED:
        full_wm, incremental_wm = _entry(full, table)["watermark"], _entry(incremental, table)["watermark"]
        assert instant_us(full_wm) == instant_us(incremental_wm), (table, full_wm, incremental_wm)


def test_tables_option_runs_only_the_named_tables(scenario):
    before, subset = scenario.runs[1], scenario.runs[2]
    assert subset.rc == 0
    for table in ALL_TABLES:
        old, new = _entry(before, table), _entry(subset, table)
        if table in subset.ran:
            assert new["run_id"] != old["run_id"], f"{table} was named in --tables but did not run"
        else:
            for field_name in ("run_id", "watermark", "location", "rows"):
                assert new[field_name] == old[field_name], (
                    f"{table} was not named in --tables but its {field_name} moved: "
                    f"{old[field_name]!r} -> {new[field_name]!r}"
                )
            # New source files landed for it too; they must stay unread until it runs again.
            assert subset.actual[table] == before.actual[table]


# ----------------------------------------------------------------------------------------------
# Smaller, self-contained scenarios
# ----------------------------------------------------------------------------------------------


PEOPLE = pa.schema([("id", pa.int64()), ("grp", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))])


def _people_rows() -> list[dict]:
    stamp = BASE
    rows = []
    for i in range(40):
        stamp += dt.timedelta(seconds=1, microseconds=7)
        rows.append(dict(id=i % 12, grp="ab"[i % 2], updated_at=stamp))
    return rows


def test_newest_registry_file_by_modification_time_is_authoritative(spark, tmp_path):
    source, registry = tmp_path / "source", tmp_path / "registry"
    write_parquet(source / "people" / "p.parquet", _people_rows(), PEOPLE)
    registry.mkdir()
    # Alphabetical order points at the stale file; only modification time points at the right one.
    stale, current = registry / "z-registry.csv", registry / "a-registry.csv"
    stale.write_text("table_name,primary_key\npeople,grp\n")
    current.write_text("table_name,primary_key\npeople,id\n")
    now = dt.datetime.now().timestamp()
    os.utime(stale, (now - 3600, now - 3600))
    os.utime(current, (now, now))

    rc = run_pipeline(source, tmp_path / "out", tmp_path / "state", registry)
    assert rc == 0
    con = duckdb.connect()
    entry = read_status(tmp_path / "state")["tables"]["people"]
    cols = source_columns(con, source, "people")
    _, actual, _ = actual_snapshot(con, entry["location"], cols)
    expected = expected_latest_per_key(con, source, "people", ["id"], "updated_at")
    assert len(expected) == 12
    assert actual == expected, _diff(actual, expected)


def test_failing_table_keeps_its_last_snapshot_while_others_commit_with_exit_one(spark, tmp_path):
    source, registry, state = tmp_path / "source", tmp_path / "registry", tmp_path / "state"
    registry.mkdir()
    (registry / "r.csv").write_text("table_name,primary_key\ngood,id\nbroken,id\n")
    rows = _people_rows()
    write_parquet(source / "good" / "0.parquet", rows[:20], PEOPLE)
    write_parquet(source / "broken" / "0.parquet", rows[:20], PEOPLE)
    assert run_pipeline(source, tmp_path / "out", state, registry) == 0
    before = read_status(state)["tables"]
    con = duckdb.connect()
    cols = source_columns(con, source, "good")
    _, broken_before, _ = actual_snapshot(con, before["broken"]["location"], cols)

    write_parquet(source / "good" / "1.parquet", rows[20:], PEOPLE)
    # Not Parquet at all: reading this table has to fail, and only this table.
    (source / "broken" / "1.parquet").write_bytes(b"this is not a parquet file" * 40)
    rc = run_pipeline(source, tmp_path / "out", state, registry)
    after = read_status(state)["tables"]

    assert rc == 1
    _, good_rows, _ = actual_snapshot(con, after["good"]["location"], cols)
    expected = expected_latest_per_key(con, source, "good", ["id"], "updated_at")
    assert good_rows == expected, _diff(good_rows, expected)
    assert instant_us(after["good"]["watermark"]) == max_watermark_us(con, source, "good", "updated_at")
    for field_name in ("run_id", "watermark", "location", "rows"):
        assert after["broken"][field_name] == before["broken"][field_name], field_name
    _, broken_after, count = actual_snapshot(con, after["broken"]["location"], cols)
    assert count == before["broken"]["rows"] == 12
    assert broken_after == broken_before


@pytest.mark.parametrize(
    "registry_csv",
    [
        pytest.param("table_name,watermark_column\npeople,updated_at\n", id="missing-primary_key-header"),
        pytest.param("table_name,primary_key,lookback\npeople,id,fifteen minutes\n", id="bad-lookback"),
    ],
)
def test_bad_registry_is_a_configuration_error(spark, tmp_path, registry_csv):
    source, registry = tmp_path / "source", tmp_path / "registry"
    write_parquet(source / "people" / "p.parquet", _people_rows(), PEOPLE)
    registry.mkdir()
    (registry / "r.csv").write_text(registry_csv)
    assert run_pipeline(source, tmp_path / "out", tmp_path / "state", registry) == 2


def test_unknown_load_type_is_a_usage_error(spark, tmp_path):
    source, registry = tmp_path / "source", tmp_path / "registry"
    write_parquet(source / "people" / "p.parquet", _people_rows(), PEOPLE)
    registry.mkdir()
    (registry / "r.csv").write_text("table_name,primary_key\npeople,id\n")
    assert run_pipeline(source, tmp_path / "out", tmp_path / "state", registry, "--load-type", "partial") == 2
