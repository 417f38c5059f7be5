"""Plumbing for the end-to-end tests: driving the CLI and asking DuckDB for the truth.

Everything that decides what the *right* answer is lives here as DuckDB SQL over the raw source
Parquet files, so the oracle never shares code (or an engine) with the pipeline under test. The
fault tests also find here their lake, the faults they inject and the checks they make after each.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline import ingest, runner
from cdc_pipeline import state as state_module
from cdc_pipeline.catalog import LocalCatalog, NoOutputCatalog
from cdc_pipeline.cli import main
from cdc_pipeline.commit import CommitReport
from cdc_pipeline.errors import CommitConflictError, PipelineError, TableError
from cdc_pipeline.plan import Layout, Plan, WorkItem, new_run_id
from cdc_pipeline.registry import LocalRegistrySource
from cdc_pipeline.runner import RunSettings, run_local
from cdc_pipeline.stages import commit_stage, plan_stage
from cdc_pipeline.state import STATE_FILE, LocalStateStore, StateDocument, TableState
from cdc_pipeline.storage import LocalStorage

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


# ----------------------------------------------------------------------------------------------
# Faults: a small lake to run on, faults injected at the pipeline's seams, and the checks after
# ----------------------------------------------------------------------------------------------
#
# A fault is installed by monkeypatching a port or a function the runner calls (ingest, the
# state store, the commit stage, the output catalog), never by a hook in the pipeline's code. A
# crash is an exception no handler of the pipeline catches (it derives from BaseException), so
# it aborts the run at that point as a dying process would, with whatever was written so far.


class Crash(BaseException):
    """The process dying at an injection point."""


@dataclass(frozen=True)
class TableSpec:
    """How DuckDB resolves one table of the fault lake; mirrors FAULT_REGISTRY_CSV."""

    keys: tuple[str, ...] = ()  # none: every landed row is appended
    ordering: str | None = None
    sequence: str | None = None
    delete_column: str | None = None
    delete_values: tuple[str, ...] = ()


# orders: keyed, DMS-like (Op, a sequence), read by arrival; events: no key, appended; readings:
# keyed, read by watermark. The data of the tests gives a key's versions distinct stamps, so
# DuckDB's "newest per key" has one answer.
FAULT_TABLES = {
    "orders": TableSpec(("order_id",), "updated_at", "seq", "Op", ("D",)),
    "events": TableSpec(ordering="updated_at"),
    "readings": TableSpec(("sensor",), "read_at"),
}
FAULT_REGISTRY_CSV = """\
table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,incremental_by
orders,order_id,updated_at,seq,Op,D,
readings,sensor,read_at,,,,watermark
"""
FAULT_SCHEMAS = {
    "orders": pa.schema(
        [
            ("Op", pa.string()),
            ("order_id", pa.int64()),
            ("status", pa.string()),
            ("amount", pa.int64()),
            ("seq", pa.int64()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    "events": pa.schema(
        [("event_id", pa.int64()), ("kind", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))]
    ),
    "readings": pa.schema(
        [("sensor", pa.int64()), ("value", pa.int64()), ("read_at", pa.timestamp("us", tz="UTC"))]
    ),
}


@dataclass(frozen=True)
class Lake:
    """Source, output, state and registry folders of one test, and the local runner over them."""

    root: Path

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @classmethod
    def create(cls, root: Path) -> Lake:
        lake = cls(root)
        lake.registry.mkdir(parents=True)
        (lake.registry / "registry.csv").write_text(FAULT_REGISTRY_CSV)
        lake.source.mkdir()
        return lake

    def settings(self, **overrides: Any) -> RunSettings:
        """A new run's settings (each has a run id of its own)."""
        return RunSettings(
            source=self.source, output=self.output, state=self.state, registry=self.registry, **overrides
        )

    def run(self, spark: Any, **overrides: Any) -> CommitReport:
        return run_local(self.settings(**overrides), spark)

    def layout(self) -> Layout:
        return Layout(output_path=str(self.output.resolve()), cdc_path=str(self.state.resolve()))

    def document(self) -> StateDocument:
        """The committed state; StateCorruptError when it cannot be read."""
        return LocalStateStore(self.state).read()[0]

    def state_bytes(self) -> bytes | None:
        path = self.state / STATE_FILE
        return path.read_bytes() if path.exists() else None

    def land(self, table: str, name: str, rows: list[dict[str, Any]]) -> Path:
        return write_parquet(self.source / table / name, rows, FAULT_SCHEMAS[table])

    def tables_landed(self) -> list[str]:
        return sorted(p.name for p in self.source.iterdir() if any(p.rglob("*.parquet")))


def statuses(report: CommitReport) -> dict[str, str]:
    return {outcome.table: outcome.status for outcome in report.outcomes}


def plan_only(lake: Lake, **plan_options: Any) -> Plan:
    """A new run's plan through the stages, as the Plan Lambda makes it (no run lease)."""
    return plan_stage(
        catalog=LocalCatalog(lake.source),
        registry_source=LocalRegistrySource(lake.registry),
        state_store=LocalStateStore(lake.state),
        storage=LocalStorage(),
        layout=lake.layout(),
        run_id=new_run_id(),
        **plan_options,
    )


def plan_and_ingest(lake: Lake, spark: Any, **plan_options: Any) -> Plan:
    """A new run's plan and ingests, as the Plan Lambda and the Glue job runs make them; committed
    by ``commit_plan``."""
    plan = plan_only(lake, **plan_options)
    ingest.ingest_items(spark, plan.items, LocalStorage(), parallelism=2)
    return plan


def commit_plan(
    lake: Lake,
    plan: Plan,
    *,
    catalog: Any = None,
    failures: dict[str, str] | None = None,
    run_failures: dict[str, str] | None = None,
) -> CommitReport:
    return commit_stage(
        plan=plan,
        state_store=LocalStateStore(lake.state),
        storage=LocalStorage(),
        output_catalog=catalog or NoOutputCatalog(),
        layout=lake.layout(),
        failures=failures or {},
        run_failures=run_failures,
        retained_snapshots=2,
    )


def expected_rows(con: duckdb.DuckDBPyConnection, lake: Lake, table: str) -> list[tuple]:
    """DuckDB's current state of ``table`` from every source file landed now."""
    spec = FAULT_TABLES[table]
    if not spec.keys:
        return expected_all_rows(con, lake.source, table)
    assert spec.ordering is not None
    return expected_latest_per_key(
        con,
        lake.source,
        table,
        spec.keys,
        spec.ordering,
        spec.sequence,
        spec.delete_column,
        spec.delete_values,
    )


def tracker_problems(
    con: duckdb.DuckDBPyConnection, lake: Lake, table: str, tracker: TableState
) -> list[str]:
    """What is wrong with a published table against DuckDB's answer from every file landed now:
    rows lost, added or duplicated, a duplicated key, a row count or a watermark that disagree."""
    spec = FAULT_TABLES[table]
    columns = source_columns(con, lake.source, table)
    if not Path(tracker.location).is_dir():
        return [f"{table}: the state names {tracker.location}, which does not exist"]
    names, actual, count = actual_snapshot(con, tracker.location, columns)
    if sorted(non_cdc(names)) != sorted(columns):
        return [f"{table}: snapshot columns {names} != source columns {columns}"]
    problems = []
    expected = expected_rows(con, lake, table)
    missing, extra = Counter(expected) - Counter(actual), Counter(actual) - Counter(expected)
    problems += [f"{table}: lost {n}x {row}" for row, n in missing.items()]
    problems += [f"{table}: unexpected {n}x {row}" for row, n in extra.items()]
    if spec.keys:
        key_at = [columns.index(k) for k in spec.keys]
        keys = Counter(tuple(row[i] for i in key_at) for row in actual)
        problems += [f"{table}: key {key} published {n} times" for key, n in keys.items() if n > 1]
    if tracker.rows != count:
        problems.append(f"{table}: the tracker says {tracker.rows} rows, its snapshot holds {count}")
    if spec.ordering:
        newest = max_watermark_us(con, lake.source, table, spec.ordering)
        if instant_us(tracker.watermark) != newest:
            problems.append(
                f"{table}: watermark {tracker.watermark}, but the newest row landed is stamped "
                f"{EPOCH + dt.timedelta(microseconds=newest)}"
            )
    return problems


def converged_problems(con: duckdb.DuckDBPyConnection, lake: Lake) -> list[str]:
    """Every table with a landed file is published and equals DuckDB's answer over all of them."""
    document = lake.document()
    problems = []
    for table in lake.tables_landed():
        tracker = document.tables.get(table)
        if tracker is None:
            problems.append(f"{table}: files landed but nothing is published")
        else:
            problems += tracker_problems(con, lake, table, tracker)
    return problems


def all_or_nothing_problems(
    con: duckdb.DuckDBPyConnection, lake: Lake, before: StateDocument, after: StateDocument
) -> list[str]:
    """After a faulted run: each table still has its tracker of before (snapshot still readable),
    or a new one that read every file landed so far; never a half-applied table, never a revision
    more than one past the one planned from."""
    problems = []
    if after.revision not in (before.revision, before.revision + 1):
        problems.append(f"state went from revision {before.revision} to {after.revision}")
    for table in sorted(set(before.tables) | set(after.tables)):
        old, new = before.tables.get(table), after.tables.get(table)
        if new is None:
            problems.append(f"{table}: its tracker disappeared")
        elif new == old:
            if not Path(new.location).is_dir():
                problems.append(f"{table}: its unchanged tracker names {new.location}, which is gone")
        else:
            problems += tracker_problems(con, lake, table, new)
    return problems


# Where a fault strikes, in the order a run meets them. A crash aborts the run there; a failure
# fails tables and lets the run commit the others; a refusal is a lost compare-and-swap.
CRASHES = (
    "after-plan",  # plan and work items written, nothing ingested
    "before-ingest",  # one table's ingest dies before writing anything
    "mid-write",  # one table's snapshot folder written with a Parquet file cut in half, then death
    "after-manifest",  # one table's snapshot and success manifest written, then death
    "before-commit",  # every ingest done (manifests written), the commit never starts
    "mid-state-write",  # the state document's new bytes half written, then death
    "after-state-write",  # the new state written; no cleanup, no report, no catalog update
    "in-catalog-update",  # state, cleanup and report done; the output catalog update dies
)
FAILURES = (
    "table-error",  # one table's ingest fails (TableError), the others go on
    "file-vanishes",  # a file the plan named is deleted before the ingest reads it
    "unwritable-output",  # nothing can be created under one table's output folder during the run
)
REFUSALS = (
    "lost-race",  # another run commits between this run's plan and its commit
    "lost-race-at-write",  # another run commits inside this run's compare-and-swap write
)
REPEATS = (
    "commit-retried",  # the commit runs again after it succeeded (a retried Commit Lambda)
    "overlapping-runs",  # a second run plans and ingests at the same time, both try to commit
)
FAULT_KINDS = CRASHES + FAILURES + REFUSALS + REPEATS
PER_TABLE = (
    "before-ingest",
    "mid-write",
    "after-manifest",
    "table-error",
    "file-vanishes",
    "unwritable-output",
)


@dataclass
class Fault:
    """One fault to inject: its kind, the table it strikes (per-table kinds), and whether the run
    reached it (a run with nothing to ingest never reaches an ingest fault)."""

    kind: str
    table: str | None = None
    fired: bool = False
    detail: str = ""

    def __str__(self) -> str:
        where = f" on {self.table}" if self.table else ""
        return f"{self.kind}{where}{f' ({self.detail})' if self.detail else ''}"


def cut_in_half(folder: str) -> Path:
    """Truncate the largest Parquet file of ``folder`` to half its bytes (a write cut short)."""
    victim = max(Path(folder).rglob("*.parquet"), key=lambda p: p.stat().st_size)
    os.truncate(victim, victim.stat().st_size // 2)
    return victim


class _HalfWritten(io.RawIOBase):
    """A file the process dies writing: half of the first write lands, then the crash."""

    def __init__(self, handle: Any, crash: Callable[[], Crash]) -> None:
        self.handle = handle
        self.crash = crash

    def write(self, data: Any) -> int:
        self.handle.write(bytes(data)[: len(data) // 2])
        self.handle.flush()
        raise self.crash()

    def close(self) -> None:
        self.handle.close()
        super().close()

    def writable(self) -> bool:
        return True


def inject(mp: pytest.MonkeyPatch, fault: Fault, lake: Lake, spark: Any) -> None:
    """Install ``fault`` for the next run on ``lake`` (undone when ``mp`` is)."""
    kind = fault.kind
    real_ingest_table = ingest.ingest_table
    real_write = ingest._write
    real_commit_stage = runner.commit_stage
    real_ingest_all = runner._LocalRun._ingest_all
    real_state_write = LocalStateStore.write

    def crash(where: str) -> Crash:
        fault.fired = True
        return Crash(f"{fault}: {where}")

    def ingest_table(spark_: Any, item: WorkItem, storage: Any, *args: Any, **kwargs: Any) -> Any:
        if item.table != fault.table:
            return real_ingest_table(spark_, item, storage, *args, **kwargs)
        if kind == "before-ingest":
            raise crash("before its ingest wrote anything")
        if kind == "table-error":
            fault.fired = True
            raise TableError(item.table, "injected failure")
        real_ingest_table(spark_, item, storage, *args, **kwargs)
        raise crash(f"after writing {item.manifest_location}")

    def write(df: Any, location: str, name: str) -> int:
        rows = real_write(df, location, name)
        if f"/{fault.table}/snapshots/" in location:
            raise crash(f"with {cut_in_half(location)} cut in half")
        return rows

    def ingest_all(local_run: Any, plan: Plan) -> dict[str, str]:
        if kind == "after-plan":
            raise crash("after the plan was written")
        item = next((i for i in plan.items if i.table == fault.table and i.files), None)
        if item is not None:
            # The newest: one that landed for this run (a table read by watermark names every file,
            # and deleting one it applied long ago would not take its rows out of the snapshot).
            files = [Path(item.location) / name for name in item.files or []]
            gone = max(files, key=lambda path: path.stat().st_mtime_ns)
            gone.unlink()
            fault.fired, fault.detail = True, f"{gone.name} deleted"
        return real_ingest_all(local_run, plan)

    def compete(plan_items: Sequence[str]) -> None:
        """Another run commits the first of these tables now. Through the stages, as on AWS: the
        local run lease (which this run holds) would refuse a second local run before its plan."""
        if fault.fired or not plan_items:
            return
        fault.fired = True
        revision = lake.document().revision
        table = sorted(plan_items)[0]
        commit_plan(lake, plan_and_ingest(lake, spark, tables=[table]))
        assert lake.document().revision == revision + 1, "the competing run committed nothing"
        fault.detail = f"a run of {table} committed first"

    def commit_stage(**kwargs: Any) -> CommitReport:
        if kind == "before-commit":
            raise crash("before the commit")
        if kind == "lost-race":
            compete([item.table for item in kwargs["plan"].items])
            return real_commit_stage(**kwargs)
        # commit-retried: a Step Functions retry of the Commit Lambda, after it had succeeded.
        first = real_commit_stage(**kwargs)
        committed = lake.state_bytes()
        again = real_commit_stage(**kwargs)
        fault.fired = True
        assert lake.state_bytes() == committed, "the retried commit wrote the state again"
        assert (again.revision, statuses(again)) == (first.revision, statuses(first)), (first, again)
        return again

    def state_write(store: LocalStateStore, document: StateDocument, expected_version: str | None) -> str:
        if kind == "lost-race-at-write":
            mine = [name for name, t in document.tables.items() if t.run_id == document.run_id]
            if document.run_id is not None and not fault.fired:
                compete(mine)
            return real_state_write(store, document, expected_version)
        real_state_write(store, document, expected_version)
        raise crash(f"after writing revision {document.revision}")

    def state_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # Returned open, as open() returns it: the state store's own `with` closes it.
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115
        if "w" in mode and STATE_FILE in Path(file).name:
            return _HalfWritten(handle, lambda: crash(f"halfway through writing {file}"))
        return handle

    class CrashingCatalog:
        def publish(self, tables: list[Any]) -> None:
            raise crash(f"updating the output catalog with {len(tables)} table(s)")

    if kind in ("before-ingest", "after-manifest", "table-error"):
        mp.setattr(ingest, "ingest_table", ingest_table)
    elif kind == "mid-write":
        mp.setattr(ingest, "_write", write)
    elif kind in ("after-plan", "file-vanishes"):
        mp.setattr(runner._LocalRun, "_ingest_all", ingest_all)
    elif kind in ("before-commit", "lost-race", "commit-retried"):
        mp.setattr(runner, "commit_stage", commit_stage)
    elif kind in ("after-state-write", "lost-race-at-write"):
        mp.setattr(LocalStateStore, "write", state_write)
    elif kind == "mid-state-write":
        mp.setattr(state_module, "open", state_open, raising=False)
    elif kind == "in-catalog-update":
        mp.setattr(runner, "NoOutputCatalog", CrashingCatalog)
    elif kind not in ("unwritable-output", "overlapping-runs"):
        raise ValueError(f"unknown fault kind {kind!r}")


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Nothing can be created or removed below ``folder``: read-only modes, or, for root (whom
    modes do not stop), the immutable attribute. Skips the test where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in folders}
        for path in folders:
            path.chmod(modes[path] & ~0o222)
        try:
            yield
        finally:
            for path in reversed(folders):
                path.chmod(modes[path])
        return
    chattr = shutil.which("chattr")
    if (
        chattr is None
        or subprocess.run([chattr, "+i", str(folder)], check=False, capture_output=True).returncode
    ):
        pytest.skip("running as root, and the immutable attribute is not available here")
    try:
        subprocess.run([chattr, "-R", "+i", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run([chattr, "-R", "-i", str(folder)], check=True, capture_output=True)


def _overlapping(lake: Lake, spark: Any, fault: Fault) -> list[str]:
    """Two runs planned from the same state, both ingesting, then both committing: the outcome of
    each ("committed" or the name of the error that refused it)."""
    real_commit_stage = runner.commit_stage
    both_ingested = threading.Barrier(2)

    def commit_stage(**kwargs: Any) -> CommitReport:
        with contextlib.suppress(threading.BrokenBarrierError):
            # A run refused before it got here (a run lease) never arrives: go on alone.
            both_ingested.wait(timeout=120)
        return real_commit_stage(**kwargs)

    outcomes: list[str] = ["", ""]

    def one(index: int) -> None:
        try:
            lake.run(spark)
        except PipelineError as exc:
            outcomes[index] = type(exc).__name__
            both_ingested.abort()
        else:
            outcomes[index] = "committed"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "commit_stage", commit_stage)
        threads = [threading.Thread(target=one, args=(i,), name=f"overlap-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    fault.fired = True
    fault.detail = " and ".join(outcomes)
    return outcomes


def run_faulted(lake: Lake, spark: Any, fault: Fault) -> str:
    """One run with ``fault`` injected; what became of it: crashed, refused, failed (some table
    failed, the others committed) or completed. Checks that the fault did what its kind says."""
    if fault.kind == "overlapping-runs":
        outcomes = _overlapping(lake, spark, fault)
        assert outcomes.count("committed") <= 1, f"both overlapping runs committed: {outcomes}"
        return "completed" if "committed" in outcomes else "refused"
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        if fault.kind == "unwritable-output":
            assert fault.table is not None
            stack.enter_context(unwritable(lake.output / fault.table))
        inject(mp, fault, lake, spark)
        try:
            report = lake.run(spark)
        except Crash:
            assert fault.kind in CRASHES, f"{fault}: crashed"
            assert fault.fired, f"{fault}: crashed before the fault was injected"
            return "crashed"
        except CommitConflictError:
            assert fault.kind in REFUSALS, f"{fault}: commit refused"
            assert fault.fired, f"{fault}: commit refused before the fault was injected"
            return "refused"
    assert fault.kind not in CRASHES + REFUSALS or not fault.fired, f"{fault} fired, yet the run finished"
    failed = {outcome.table for outcome in report.failed}
    if fault.kind == "unwritable-output":
        fault.fired = fault.table in failed  # it had something to write
    if fault.kind in FAILURES and fault.fired:
        assert failed == {fault.table}, f"{fault}: {statuses(report)}"
    else:
        assert not failed, f"{fault}: {[(o.table, o.message) for o in report.failed]}"
    return "failed" if failed else "completed"


def lake_folders(root: Path, registry_csv: str) -> dict[str, Path]:
    """Empty source, output and state folders below ``root``, and a registry folder holding
    ``registry_csv`` as registry.csv: what ``cdc-pipeline run`` needs."""
    folders = {name: root / name for name in ("source", "output", "state", "registry")}
    for folder in folders.values():
        folder.mkdir()
    (folders["registry"] / "registry.csv").write_text(registry_csv)
    return folders
