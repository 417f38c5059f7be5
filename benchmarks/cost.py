"""Benchmark what runs cost: this product against the naive Glue script and DuckDB, on the same files.

Run from the repository root: ``.venv/bin/python -m benchmarks.cost [--quick] [--json PATH]``.

1. **One big change table** (10M rows over 2M keys in 16 Parquet files; ``--quick``: 200k over
   40k, the full load and the 1% batch only) in two layouts: *random*, where each incremental
   batch updates random keys, and *partitioned*, where an ``event_date`` column (100 days, fixed
   per key) is the registry's ``partition_by`` (when the product has that column) and every batch
   falls in the last 5 days.
   Each layout gets a full load, then batches of 0.1%, 1% and 10% of the rows (half updates of
   existing keys, half new keys), each landing as a new file and followed by a run of:
   the product as a whole ``cdc-pipeline run`` process (a fresh JVM, as each Glue run is); the
   naive script (``benchmarks/naive.py``, the original Glue script's logic) as a whole process;
   DuckDB doing the same dedup and merge in its own process; and the product's ``run_local`` on
   one warm SparkSession (a worker process kept across runs).
2. **Small tables** (100 tables of 50 rows; ``--quick``: 10): a full load, a run with nothing new,
   a run after 5 tables got a new file, and one after every table did, each a whole process.

Every figure has its wall time, CPU time and peak memory (VmHWM of each process of the run, read
from /proc while it runs), and for Spark the jobs it ran (from Spark's event log). After each
step, the product's snapshots (fresh process and warm session) must equal DuckDB's result in
rows, keys and versions, and DuckDB's result must equal a recomputation from every landed file;
a mismatch fails the benchmark (exit 1). The naive output is compared and reported, never failed:
it has no delete handling. Targets are ratios within one run, printed met or missed; a missed
target does not fail the run, since the machine is shared and noisy. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.arrivals import CHANGE_ROWS, Folders, check_run, land_tables, snapshot_folders
from benchmarks.generate import (
    CHANGE_PREFIX,
    TABLE,
    _payload,
    _stamps,
    _write_slices,
    append_changes,
    change_files,
    full_files,
    generate_full,
)
from cdc_pipeline.packs import DEFAULT_GLUE_DPU, MIB, PACK_MAX_TABLES, estimate_dpu_minutes
from cdc_pipeline.state import LocalStateStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scale:
    rows: int  # change rows of the big table's full load
    keys: int
    files: int
    small_tables: int
    small_rows: int
    warm_up_rows: int  # the warm session's untimed warm-up table
    steps: tuple[tuple[str, float], ...]  # the full load, then each batch as a share of ``rows``


STEPS = (("full", 0.0), ("0.1%", 0.001), ("1%", 0.01), ("10%", 0.1))
FULL = Scale(
    rows=10_000_000,
    keys=2_000_000,
    files=16,
    small_tables=100,
    small_rows=50,
    warm_up_rows=200_000,
    steps=STEPS,
)
# A few minutes on 2 cores: the figures the targets name (full load, 1%), at a fiftieth of the size.
QUICK = Scale(
    rows=200_000, keys=40_000, files=16, small_tables=10, small_rows=50, warm_up_rows=20_000, steps=STEPS[::2]
)

LAYOUTS = {
    "random": "(a) random keys, unpartitioned",
    "partitioned": "(b) partitioned by event_date, changes in the last 5 of 100 days",
}
DAYS = 100
RECENT_DAYS = 5  # the partitioned layout's batches touch these last days only: 5% of the partitions
FIRST_DAY = date(2026, 1, 1)
PARTITION_COLUMN = "event_date"
ROW_GROUP_ROWS = 65_536  # as generate.py writes them
BATCH_SEED = 29
SMALL_CHANGED = 5

# Run order within a step. Labels as printed.
APPROACHES = {
    "product": "product, fresh process",
    "naive": "naive script, fresh process",
    "duckdb": "DuckDB, fresh process",
    "warm": "product, warm session",
}

# The targets: ratios within one run.
INCREMENTAL_RANDOM_MAX = 0.5  # 1% incremental / full load, random keys
INCREMENTAL_PARTITIONED_MAX = 0.2  # same, changes in <= 5% of the partitions
NAIVE_FULL_MIN = 1.3  # naive / product, full loads
NAIVE_INCREMENTAL_MIN = 2.0  # naive / product, incrementals
DUCKDB_MAX = 4.0  # product / DuckDB
SMALL_FULL_MAX_S = 15.0  # 100 small tables, full load, seconds
SMALL_TARGET_TABLES = 100
DPU_PROJECTION_TABLES, DPU_PROJECTION_CHANGED = 1_000, 50  # 5% of a 1,000-table catalog changed
DPU_PER_TICK_MAX = 10.0

# DuckDB's own process: runs the statement given, prints the seconds it took. No progress bar: it
# would print into the output.
DUCKDB_CHILD = (
    "import sys, time, duckdb\n"
    "connection = duckdb.connect()\n"
    "connection.execute('SET enable_progress_bar = false')\n"
    "start = time.perf_counter()\n"
    "connection.execute(sys.argv[1])\n"
    "print(time.perf_counter() - start)\n"
)


class BenchmarkError(RuntimeError):
    """A run failed or did something else than asked: its figures would be meaningless."""


def partition_by_supported() -> bool:
    """Whether the registry has an output-partitioning column yet (it is being built)."""
    from cdc_pipeline.registry import OPTIONAL_COLUMNS

    return "partition_by" in OPTIONAL_COLUMNS


# ---------------------------------------------------------------------------------------------
# Data: the big table's history and batches, per layout
# ---------------------------------------------------------------------------------------------

_FIRST_EPOCH_DAY = (FIRST_DAY - date(1970, 1, 1)).days


def _event_dates(days: np.ndarray) -> pa.Array:
    return pa.array((days + _FIRST_EPOCH_DAY).astype(np.int32)).cast(pa.date32())


def _key_days(ids: np.ndarray, keys: int) -> np.ndarray:
    """A key's event_date (e.g. the day an order was placed), fixed for the key: the initial keys
    spread evenly over the DAYS days in id order."""
    return ids * DAYS // keys


def generate_history(source: Path, scale: Scale) -> dict[str, Any]:
    """generate.py's full change history, plus the ``event_date`` of each row's key."""
    landed = generate_full(source, scale.rows, scale.keys, scale.files)
    for path in landed.files:
        table = pq.read_table(path)
        days = _key_days(table["id"].to_numpy(), scale.keys)
        pq.write_table(
            table.append_column(PARTITION_COLUMN, _event_dates(days)), path, row_group_size=ROW_GROUP_ROWS
        )
    return {
        "rows": landed.rows,
        "keys": scale.keys,
        "files": len(landed.files),
        "inserts": landed.inserts,
        "updates": landed.updates,
        "deletes": landed.deletes,
        "last_stamp_micros": landed.last_stamp_micros,
    }


@dataclass
class History:
    """What one layout's table holds so far, to draw the next batch from."""

    keys: int
    recent_only: bool
    next_id: int
    last_micros: int

    def first_recent_id(self) -> int:
        """The first initial key whose event_date is among the last RECENT_DAYS days."""
        return -(-(DAYS - RECENT_DAYS) * self.keys // DAYS)


def land_batch(history: History, folder: Path, batch: int, rows: int) -> dict[str, Any]:
    """One new file in ``folder``: ``rows`` change rows stamped after everything landed, half updates
    of existing keys (random ones; with ``recent_only``, keys of the last RECENT_DAYS days), half new
    keys (dated any day; with ``recent_only``, among the last RECENT_DAYS days)."""
    rng = np.random.default_rng([BATCH_SEED, batch, int(history.recent_only)])
    updates = rows // 2
    inserts = rows - updates
    first = history.first_recent_id() if history.recent_only else 0
    pool = history.keys - first
    existing = first + rng.choice(pool, size=updates, replace=updates > pool).astype(np.int64)
    new_ids = np.arange(history.next_id, history.next_id + inserts, dtype=np.int64)
    low_day = DAYS - RECENT_DAYS if history.recent_only else 0
    days = np.concatenate([_key_days(existing, history.keys), rng.integers(low_day, DAYS, inserts)])
    ids = np.concatenate([existing, new_ids])
    ops = np.repeat(np.array(["U", "I"]), [updates, inserts])
    order = rng.permutation(rows)  # mixed in time, as a real batch is
    ids, ops, days = ids[order], ops[order], days[order]
    stamps = _stamps(rng, rows, history.last_micros)
    table = _payload(rng, ids, ops, stamps).append_column(PARTITION_COLUMN, _event_dates(days))
    paths = _write_slices(table, folder, f"{CHANGE_PREFIX}-{batch:04d}", 1)
    history.next_id += inserts
    history.last_micros = int(stamps[-1])
    return {
        "rows": rows,
        "updates": updates,
        "inserts": inserts,
        "updated_keys": len(np.unique(existing)),
        "days_touched": len(np.unique(days)),
        "files": [str(path) for path in paths],
    }


def batch_rows(scale: Scale, share: float) -> int:
    return max(1, round(scale.rows * share))


def new_history(layout: str, scale: Scale, generated: dict[str, Any]) -> History:
    return History(scale.keys, layout == "partitioned", scale.keys, generated["last_stamp_micros"])


def write_registry(folder: Path, partition_by: str | None) -> None:
    header = "table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values"
    row = f"{TABLE},id,updated_at,,Op,D"
    if partition_by:
        header, row = f"{header},partition_by", f'{row},"{partition_by}"'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Measuring a process tree: wall time, CPU time, peak RSS of each process
# ---------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessUsage:
    pid: int
    name: str
    peak_kib: int = 0
    cpu_ticks: int = 0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, CPU ticks) from /proc/<pid>/stat, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    name = text[text.find("(") + 1 : text.rfind(")")]
    fields = text[text.rfind(")") + 2 :].split()
    return name, int(fields[1]), int(fields[11]) + int(fields[12])


def _peak_kib(pid: int) -> int | None:
    """VmHWM: the process's peak resident set (absent once it is a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def process_tree(root: int) -> dict[int, tuple[str, int]]:
    """``root`` and its descendants: pid -> (name, CPU ticks)."""
    parents: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = (stat[0], stat[2])
            parents.setdefault(stat[1], []).append(int(entry.name))
    tree, queue = {}, [root]
    while queue:
        pid = queue.pop()
        if pid in stats:
            tree[pid] = stats[pid]
            queue.extend(parents.get(pid, []))
    return tree


class TreeMonitor(threading.Thread):
    """Samples a process tree until stopped; keeps, per process, the last VmHWM and CPU ticks read.

    VmHWM only grows, so the last reading before a process exits is its peak (to within one
    interval); ``ru_maxrss`` cannot be used: Linux carries it across exec (see arrivals.py). The
    processes known are read every ``interval``; the whole of /proc is scanned for new descendants
    every ``SCAN_EVERY`` intervals, which costs more (about 2 ms of CPU).
    """

    SCAN_EVERY = 5

    def __init__(self, root: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.usage: dict[int, ProcessUsage] = {}
        self._stop_event = threading.Event()
        self.scan()

    def scan(self) -> None:
        for pid, (name, ticks) in process_tree(self.root).items():
            self._record(self.usage.setdefault(pid, ProcessUsage(pid, name)), name, ticks)

    def sample_known(self) -> None:
        for usage in self.usage.values():
            stat = _stat(usage.pid)
            if stat is not None:
                self._record(usage, stat[0], stat[2])

    @staticmethod
    def _record(usage: ProcessUsage, name: str, ticks: int) -> None:
        usage.name, usage.cpu_ticks = name, max(usage.cpu_ticks, ticks)
        usage.peak_kib = max(usage.peak_kib, _peak_kib(usage.pid) or 0)

    def run(self) -> None:
        tick = 0
        while not self._stop_event.wait(self.interval):
            tick += 1
            if tick % self.SCAN_EVERY == 0:
                self.scan()
            else:
                self.sample_known()

    def stop(self) -> list[ProcessUsage]:
        self._stop_event.set()
        self.join()
        return list(self.usage.values())


def usage_figures(processes: Iterable[ProcessUsage], root: int) -> dict[str, Any]:
    processes = list(processes)
    java = [p.peak_kib for p in processes if p.name == "java"]
    root_peak = next((p.peak_kib for p in processes if p.pid == root), 0)
    return {
        "cpu_s": sum(p.cpu_ticks for p in processes) / CLOCK_TICKS,
        "peak_mib": {
            "python": root_peak / 1024,
            "jvm": max(java) / 1024 if java else None,
            "sum": sum(p.peak_kib for p in processes) / 1024,
        },
        "processes": [asdict(p) for p in processes],
    }


@dataclass
class Measured:
    seconds: float
    started_epoch: float
    stdout: str
    usage: dict[str, Any]


def measure_process(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` to completion (its JVM included: the pipes close when every process of the
    tree has exited), timed from outside, its process tree sampled."""
    started_epoch, start = time.time(), time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    monitor = TreeMonitor(process.pid)
    monitor.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    processes = monitor.stop()
    if process.returncode != 0:
        raise BenchmarkError(f"`{shlex.join(command)}` exited {process.returncode}: {stderr[-3000:]}")
    return Measured(seconds, started_epoch, stdout, usage_figures(processes, process.pid))


# ---------------------------------------------------------------------------------------------
# Spark's event log: the jobs a run ran, what they read and wrote, and the plans
# ---------------------------------------------------------------------------------------------


def spark_submit_args(event_dir: Path | None) -> str:
    confs = ["spark.ui.showConsoleProgress=false"]  # the progress bar would garble the output
    if event_dir is not None:
        event_dir.mkdir(parents=True, exist_ok=True)
        confs += ["spark.eventLog.enabled=true", f"spark.eventLog.dir={event_dir.as_uri()}"]
    return " ".join(f"--conf {shlex.quote(conf)}" for conf in confs) + " pyspark-shell"


def event_log(event_dir: Path) -> Path | None:
    logs = sorted(event_dir.glob("*")) if event_dir.is_dir() else []
    return logs[-1] if logs else None


PLAN_CHARS = 20_000
_TOTALS = (
    *("stages", "tasks", "task_s", "task_cpu_s", "gc_s", "input_rows", "input_mb"),
    *("shuffle_write_mb", "shuffle_read_mb", "output_rows", "output_mb"),
)


def spark_profile(log: Path | None, offset: int = 0, started_epoch: float | None = None) -> dict | None:
    """What the events of ``log`` after byte ``offset`` say: jobs, stages, tasks, task time, rows
    and bytes read, shuffled and written, the union of the jobs' wall time, and each SQL
    execution's final (adaptive) physical plan. Times ``*_at_s`` count from ``started_epoch``."""
    if log is None:
        return None
    jobs: dict[int, dict[str, Any]] = {}
    sql: dict[int, dict[str, Any]] = {}
    totals = dict.fromkeys(_TOTALS, 0.0)
    app_start = None
    with log.open("rb") as events:
        events.seek(offset)
        for line in events:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the line being written right now
                break
            kind = event["Event"].rsplit(".", 1)[-1]
            if kind == "SparkListenerApplicationStart":
                app_start = event["Timestamp"] / 1000
            elif kind == "SparkListenerJobStart":
                jobs[event["Job ID"]] = {
                    "start": event["Submission Time"] / 1000,
                    "stages": [(s["Stage Name"], s["Number of Tasks"]) for s in event["Stage Infos"]],
                    "sql": (event.get("Properties") or {}).get("spark.sql.execution.id"),
                }
            elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
                jobs[event["Job ID"]]["end"] = event["Completion Time"] / 1000
            elif kind == "SparkListenerStageCompleted":
                totals["stages"] += 1
            elif kind == "SparkListenerTaskEnd":
                _add_task(totals, event.get("Task Metrics") or {})
            elif kind == "SparkListenerSQLExecutionStart":
                sql[event["executionId"]] = {
                    "start": event["time"] / 1000,
                    "description": event.get("description"),
                    "plan": event.get("physicalPlanDescription", "")[:PLAN_CHARS],
                }
            elif kind == "SparkListenerSQLAdaptiveExecutionUpdate" and event["executionId"] in sql:
                sql[event["executionId"]]["plan"] = event.get("physicalPlanDescription", "")[:PLAN_CHARS]
            elif kind == "SparkListenerSQLExecutionEnd" and event["executionId"] in sql:
                sql[event["executionId"]]["end"] = event["time"] / 1000
    origin = (
        started_epoch if started_epoch is not None else min((j["start"] for j in jobs.values()), default=0)
    )
    intervals = sorted((j["start"], j.get("end", j["start"])) for j in jobs.values())
    return {
        "jobs": len(jobs),
        **{name: round(value, 3) for name, value in totals.items()},
        "jobs_s": _union_seconds(intervals),
        "spark_up_at_s": None if app_start is None or started_epoch is None else app_start - started_epoch,
        "first_job_at_s": intervals[0][0] - origin if intervals else None,
        "last_job_end_at_s": max(end for _, end in intervals) - origin if intervals else None,
        "job_list": [
            {
                "id": job_id,
                "seconds": round(job.get("end", job["start"]) - job["start"], 3),
                "sql": job["sql"],
                "stages": job["stages"],
            }
            for job_id, job in sorted(jobs.items())
        ],
        "sql": [
            {"id": sql_id, "seconds": round(s.get("end", s["start"]) - s["start"], 3), **s}
            for sql_id, s in sorted(sql.items())
        ],
    }


def _add_task(totals: dict[str, float], metrics: dict[str, Any]) -> None:
    totals["tasks"] += 1
    totals["task_s"] += metrics.get("Executor Run Time", 0) / 1000
    totals["task_cpu_s"] += metrics.get("Executor CPU Time", 0) / 1e9
    totals["gc_s"] += metrics.get("JVM GC Time", 0) / 1000
    read = metrics.get("Input Metrics") or {}
    totals["input_rows"] += read.get("Records Read", 0)
    totals["input_mb"] += read.get("Bytes Read", 0) / MIB
    totals["shuffle_write_mb"] += (metrics.get("Shuffle Write Metrics") or {}).get(
        "Shuffle Bytes Written", 0
    ) / MIB
    shuffle_read = metrics.get("Shuffle Read Metrics") or {}
    totals["shuffle_read_mb"] += (
        shuffle_read.get("Remote Bytes Read", 0) + shuffle_read.get("Local Bytes Read", 0)
    ) / MIB
    written = metrics.get("Output Metrics") or {}
    totals["output_rows"] += written.get("Records Written", 0)
    totals["output_mb"] += written.get("Bytes Written", 0) / MIB


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in intervals:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return round(total, 3)


# ---------------------------------------------------------------------------------------------
# The four ways to run a step
# ---------------------------------------------------------------------------------------------


def _env(event_dir: Path | None) -> dict[str, str]:
    return {**os.environ, "PYSPARK_SUBMIT_ARGS": spark_submit_args(event_dir)}


def _outcome(report: dict[str, Any], load_type: str, what: str) -> dict[str, Any]:
    outcomes = [o for o in report["tables"] if o["table"] == TABLE]
    if len(outcomes) != 1 or outcomes[0]["status"] != "succeeded":
        raise BenchmarkError(f"{what}: run {report['run_id']} did not ingest {TABLE}: {json.dumps(report)}")
    if outcomes[0]["load_type"] != load_type:
        raise BenchmarkError(f"{what}: a {outcomes[0]['load_type']} load, expected {load_type}")
    return outcomes[0]


def _product_figures(outcome: dict[str, Any], folders: Folders) -> dict[str, Any]:
    # A partitioned snapshot is its partition folders, some written by earlier runs: the state names them.
    tracker = LocalStateStore(folders.state).read()[0].tables[outcome["table"]]
    return {
        "rows_read": outcome["rows_read"],
        "rows_written": outcome["rows_written"],
        "files_read": outcome["files_read"],
        "ingest_s": outcome["duration_s"],
        "output": outcome["location"] if tracker.partitions is None else tracker.partition_locations(),
        "partitions_rewritten": None
        if tracker.partitions is None
        else sum(
            1 for p in tracker.partitions.values() if p["location"].startswith(outcome["location"] + "/")
        ),
        "partitions": None if tracker.partitions is None else len(tracker.partitions),
    }


def product_command(folders: Folders) -> list[str]:
    """``cdc-pipeline run --json`` on these folders, as a whole process."""
    command = [sys.executable, "-m", "cdc_pipeline", "run", "--json"]
    for option, path in asdict(folders).items():
        command += [f"--{option}", str(path)]
    return command


def run_product(folders: Folders, load_type: str, event_dir: Path | None, what: str) -> dict[str, Any]:
    measured = measure_process(product_command(folders), _env(event_dir))
    outcome = _outcome(json.loads(measured.stdout), load_type, what)
    return {
        "seconds": measured.seconds,
        **measured.usage,
        **_product_figures(outcome, folders),
        "profile": spark_profile(event_log(event_dir) if event_dir else None, 0, measured.started_epoch),
    }


def run_naive(table: Path, folder: Path, load_type: str, event_dir: Path | None, what: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.naive", "--table", str(table)]
    command += ["--output", str(folder / "output"), "--tracker", str(folder / "tracker.json")]
    measured = measure_process(command, _env(event_dir))
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    if result["load_type"] != load_type:
        raise BenchmarkError(
            f"{what}: the naive script made a {result['load_type']} load, expected {load_type}"
        )
    return {
        "seconds": measured.seconds,
        **measured.usage,
        "output": result["output"],
        "seconds_in_script": result["seconds_in_script"],
        "profile": spark_profile(event_log(event_dir) if event_dir else None, 0, measured.started_epoch),
    }


def _sql_text(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def duckdb_merge_sql(inputs: list[Path], previous: str | None, target: Path) -> str:
    """The product's dedup and merge in DuckDB: the latest version per key of the files read,
    merged with the previous result, keys whose latest version is a delete dropped."""
    latest = "QUALIFY row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) = 1"
    files = "[" + ", ".join(_sql_text(path) for path in inputs) + "]"
    rows = f"SELECT * FROM read_parquet({files}) {latest}"
    if previous is not None:
        merged = f"{rows} UNION ALL BY NAME SELECT * FROM read_parquet({_sql_text(previous)})"
        rows = f"SELECT * FROM ({merged}) {latest}"
    return (
        f"COPY (SELECT * FROM ({rows}) WHERE Op IS DISTINCT FROM 'D') TO {_sql_text(target)} (FORMAT parquet)"
    )


def run_duckdb(inputs: list[Path], previous: str | None, target: Path) -> dict[str, Any]:
    target.parent.mkdir(parents=True, exist_ok=True)
    measured = measure_process(
        [sys.executable, "-c", DUCKDB_CHILD, duckdb_merge_sql(inputs, previous, target)]
    )
    return {
        "seconds": measured.seconds,
        **measured.usage,
        "output": str(target),
        "seconds_in_sql": float(measured.stdout.split()[-1]),
    }


# The warm session lives in a worker process of its own: its JVM's memory and CPU are measured
# apart from this script's, and it keeps one SparkSession across runs.
_WORKER: dict[str, Any] = {}


def _warm_init(submit_args: str, log: Path) -> None:
    # Spark's own console output (its JVM inherits these descriptors) goes to a file, not the table.
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.environ["PYSPARK_SUBMIT_ARGS"] = submit_args
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)
    logging.getLogger("py4j").setLevel(logging.ERROR)
    from cdc_pipeline.spark import local_session

    _WORKER["spark"] = local_session()


def _warm_run(folders: Folders) -> dict[str, Any]:
    from cdc_pipeline.runner import RunSettings, run_local

    settings = RunSettings(
        source=folders.source, output=folders.output, state=folders.state, registry=folders.registry
    )
    start = time.perf_counter()
    report = run_local(settings, spark=_WORKER["spark"])
    return {"seconds": time.perf_counter() - start, "report": report.to_json()}


class WarmSession:
    """``run_local(settings, spark=session)`` on one SparkSession in a worker process.

    Before each run the peak RSS of the worker and its JVM is reset (``clear_refs``), so each run's
    VmHWM is that run's own peak.
    """

    def __init__(self, event_dir: Path | None, log: Path) -> None:
        self.event_dir = event_dir
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=get_context("spawn"),
            initializer=_warm_init,
            initargs=(spark_submit_args(event_dir), log),
        )
        self.pid = self._pool.submit(os.getpid).result()

    def run(self, folders: Folders, load_type: str, what: str) -> dict[str, Any]:
        before = process_tree(self.pid)
        for pid in before:
            _reset_peak(pid)
        log = event_log(self.event_dir) if self.event_dir else None
        offset = log.stat().st_size if log else 0
        started_epoch = time.time()
        result = self._pool.submit(_warm_run, folders).result()
        after = process_tree(self.pid)
        processes = [
            ProcessUsage(pid, name, _peak_kib(pid) or 0, ticks - before.get(pid, (name, 0))[1])
            for pid, (name, ticks) in after.items()
        ]
        outcome = _outcome(result["report"], load_type, what)
        return {
            "seconds": result["seconds"],
            **usage_figures(processes, self.pid),
            **_product_figures(outcome, folders),
            "profile": spark_profile(log, offset, started_epoch),
        }

    def close(self) -> None:
        self._pool.shutdown()


def _reset_peak(pid: int) -> None:
    # Not Linux, or not ours: the figure is then the process's lifetime peak.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")


def warm_up(warm: WarmSession, root: Path, rows: int) -> float:
    """A small full load and incremental run on the warm session, not measured: the first runs of
    a session load classes and compile the hot paths."""
    start = time.perf_counter()
    folders = Folders(root / "source", root / "registry", root / "output", root / "state")
    generate_full(folders.source, rows, max(1, rows // 5), 4)
    write_registry(folders.registry, None)
    warm.run(folders, "full", "warm-up")
    append_changes(folders.source, 1, max(1, rows // 100))
    warm.run(folders, "incremental", "warm-up")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Checks: DuckDB is the oracle
# ---------------------------------------------------------------------------------------------


def _duckdb() -> Any:
    connection = duckdb.connect()
    connection.execute("SET enable_progress_bar = false")  # it would print into the output
    return connection


def _relation(path: str | list[str]) -> str:
    """A snapshot folder (flat or partitioned), one Parquet file, or a partitioned snapshot's
    partition folders, as a DuckDB relation."""
    paths = path if isinstance(path, list) else [path]
    globs = [p if p.endswith(".parquet") else p.rstrip("/") + "/**/*.parquet" for p in paths]
    return f"read_parquet([{', '.join(_sql_text(glob) for glob in globs)}], hive_partitioning = false)"


def compare(connection: Any, candidate: str, oracle: str) -> dict[str, int]:
    """Rows of each, keys only in one of them, and keys whose version (updated_at) differs;
    ``extra_deletes``: keys only in the candidate whose row there is a delete."""
    row = connection.execute(
        f"""
        WITH c AS (SELECT id, updated_at, Op FROM {candidate}), o AS (SELECT id, updated_at FROM {oracle})
        SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM o),
               (SELECT count(*) FROM o ANTI JOIN c USING (id)),
               (SELECT count(*) FROM c ANTI JOIN o USING (id)),
               (SELECT count(*) FROM c ANTI JOIN o USING (id) WHERE c.Op = 'D'),
               (SELECT count(*) FROM c JOIN o USING (id) WHERE c.updated_at IS DISTINCT FROM o.updated_at)
        """
    ).fetchone()
    names = ("rows", "oracle_rows", "missing", "extra", "extra_deletes", "other_version")
    return dict(zip(names, row, strict=True))


def _equal(figures: dict[str, int]) -> bool:
    return figures["rows"] == figures["oracle_rows"] and not (
        figures["missing"] or figures["extra"] or figures["other_version"]
    )


def recomputed(table: Path) -> str:
    """The latest non-deleted version per key over every landed file, computed from scratch."""
    rows = (
        f"SELECT id, updated_at, Op FROM read_parquet({_sql_text(table / '*.parquet')}) "
        "QUALIFY row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) = 1"
    )
    return f"(SELECT * FROM ({rows}) WHERE Op IS DISTINCT FROM 'D')"


def check_step(table: Path, samples: dict[str, dict[str, Any]], what: str) -> tuple[dict, list[str]]:
    """Each approach's result against DuckDB's; DuckDB's against a recomputation. Returns the
    figures and the failures (the naive script is reported, never failed)."""
    connection = _duckdb()
    oracle = _relation(samples["duckdb"]["output"])
    figures = {"duckdb_vs_recomputed": compare(connection, oracle, recomputed(table))}
    failures = []
    if not _equal(figures["duckdb_vs_recomputed"]):
        failures.append(f"{what}: DuckDB's merged result differs from a recomputation: {figures}")
    for approach in ("product", "warm", "naive"):
        if approach not in samples:
            continue
        result = compare(connection, _relation(samples[approach]["output"]), oracle)
        figures[approach] = result
        samples[approach]["rows_out"] = result["rows"]
        if approach == "naive":
            continue
        if not _equal(result) or samples[approach]["rows_written"] != result["rows"]:
            failures.append(
                f"{what}: {APPROACHES[approach]} snapshot differs from DuckDB's result: {result}; "
                f"report says {samples[approach]['rows_written']} rows written"
            )
    samples["duckdb"]["rows_out"] = figures["duckdb_vs_recomputed"]["rows"]
    connection.close()
    return figures, failures


# ---------------------------------------------------------------------------------------------
# 1. The big table, per layout
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    work: Path
    scale: Scale
    repeat: int
    profile: bool
    warm: WarmSession | None = None
    failures: list[str] = field(default_factory=list)

    def event_dir(self, *parts: str) -> Path | None:
        return self.work.joinpath("eventlogs", *parts) if self.profile else None


def bench_layout(context: Context, layout: str, history_figures: dict[str, Any]) -> dict[str, Any]:
    scale, root = context.scale, context.work / layout
    source, registry = root / "source", root / "registry"
    table = source / TABLE
    partitioned = layout == "partitioned" and partition_by_supported()
    write_registry(registry, PARTITION_COLUMN if partitioned else None)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {a: [] for a in APPROACHES} for s, _ in scale.steps
    }
    rounds = []
    for round_index in range(1, context.repeat + 1):
        for stale in change_files(source):
            stale.unlink()  # each round lands the same batches again, after its own full load
        history = new_history(layout, scale, history_figures)
        here = root / f"round-{round_index}"
        folders = {
            approach: Folders(source, registry, here / approach / "output", here / approach / "state")
            for approach in ("product", "warm")
        }
        previous_duckdb: str | None = None
        steps = []
        for batch, (step, share) in enumerate(scale.steps):
            load_type = "full" if batch == 0 else "incremental"
            landed = land_batch(history, table, batch, batch_rows(scale, share)) if batch else None
            inputs = full_files(source) if batch == 0 else [Path(p) for p in landed["files"]]
            what = f"{layout} round {round_index} {step}"
            label = (layout, f"round-{round_index}", step.replace("%", "pct"))
            sample = {
                "product": run_product(
                    folders["product"], load_type, context.event_dir(*label, "product"), what
                ),
                "naive": run_naive(
                    table, here / "naive", load_type, context.event_dir(*label, "naive"), what
                ),
                "duckdb": run_duckdb(inputs, previous_duckdb, here / "duckdb" / f"{batch}-{step}.parquet"),
            }
            if context.warm is not None:
                sample["warm"] = context.warm.run(folders["warm"], load_type, what)
            previous_duckdb = sample["duckdb"]["output"]
            figures, failures = check_step(table, sample, what)
            context.failures += failures
            for approach, figures_of in sample.items():
                samples[step][approach].append(figures_of)
            steps.append(
                {
                    "step": step,
                    "landed": landed,
                    "check": figures,
                    "failures": failures,
                    "code": code_version(),
                }
            )
            print(f"  {what}: {_step_line(sample)}{' CHECK FAILED' if failures else ''}", flush=True)
        rounds.append(steps)
    return {
        "title": LAYOUTS[layout],
        "partition_by": PARTITION_COLUMN if partitioned else None,
        "history": history_figures,
        "rounds": rounds,
        "samples": samples,
        "medians": {
            step: {a: _median_sample(runs) for a, runs in by_approach.items() if runs}
            for step, by_approach in samples.items()
        },
    }


def _step_line(sample: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{approach} {figures['seconds']:.1f} s" for approach, figures in sample.items())


def _median_sample(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (its other figures with it), and every run's seconds."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "samples_s": [run["seconds"] for run in runs]}


# ---------------------------------------------------------------------------------------------
# 2. Small tables
# ---------------------------------------------------------------------------------------------


def land_small_change(folders: Folders, name: str, seed: int, part: int) -> None:
    """A new file ``part`` in table ``name``: CHANGE_ROWS rows stamped after the table's latest,
    half updates of existing keys, half new keys."""
    folder = folders.source / name
    landed = pq.read_table(folder, columns=["id", "updated_at"])
    max_id = int(pc.max(landed["id"]).as_py())
    last = int(pc.max(landed["updated_at"].cast(pa.int64())).as_py())
    rng = np.random.default_rng([31, seed, part])
    updates = CHANGE_ROWS // 2
    ids = np.concatenate(
        [
            rng.choice(max_id + 1, updates, replace=False),
            np.arange(max_id + 1, max_id + 1 + CHANGE_ROWS - updates),
        ]
    ).astype(np.int64)
    ops = np.repeat(np.array(["U", "I"]), [updates, CHANGE_ROWS - updates])
    table = _payload(rng, ids, ops, _stamps(rng, CHANGE_ROWS, last))
    pq.write_table(table, folder / f"part-{part:05d}.parquet")


def _small_rows_check(folders: Folders, report: dict[str, Any], what: str) -> list[str]:
    """Every ingested table wrote as many rows as DuckDB counts keys in its files (no deletes)."""
    connection = _duckdb()
    failures = []
    for outcome in report["tables"]:
        if outcome["status"] != "succeeded":
            continue
        files = _sql_text(folders.source / outcome["table"] / "*.parquet")
        keys = connection.execute(f"SELECT count(DISTINCT id) FROM read_parquet({files})").fetchone()[0]
        if outcome["rows_written"] != keys:
            failures.append(
                f"{what}: {outcome['table']} wrote {outcome['rows_written']} rows, DuckDB counts {keys} keys"
            )
    connection.close()
    return failures


def bench_small(context: Context) -> dict[str, Any]:
    scale = context.scale
    samples: dict[str, list[dict[str, Any]]] = {"full": [], "noop": [], "changed": [], "all_changed": []}
    for round_index in range(1, context.repeat + 1):
        folders = Folders.under(context.work / "small" / f"round-{round_index}")
        names = land_tables(folders, scale.small_tables, scale.small_rows)
        changed = names[:: max(1, len(names) // SMALL_CHANGED)][:SMALL_CHANGED]
        # (step, tables getting a new file and its part number, expected statuses, load type)
        plan = [
            ("full", [], 0, dict.fromkeys(names, "succeeded"), "full"),
            ("noop", [], 0, dict.fromkeys(names, "unchanged"), None),
            (
                "changed",
                changed,
                1,
                {n: "succeeded" if n in changed else "unchanged" for n in names},
                "incremental",
            ),
            ("all_changed", names, 2, dict.fromkeys(names, "succeeded"), "incremental"),
        ]
        for step, landing, part, expected, load_type in plan:
            for index, name in enumerate(landing):
                land_small_change(folders, name, index, part)
            before = snapshot_folders(folders, names)
            what = f"small tables round {round_index} {step}"
            event_dir = context.event_dir("small", f"round-{round_index}", step)
            measured = measure_process(product_command(folders), _env(event_dir))
            report = json.loads(measured.stdout)
            statuses = check_run(what, report, expected, before, snapshot_folders(folders, names))
            wrong_load = [
                o["table"]
                for o in report["tables"]
                if o["status"] == "succeeded" and o["load_type"] != load_type
            ]
            if wrong_load:
                raise BenchmarkError(
                    f"{what}: {len(wrong_load)} table(s) not a {load_type} load: {wrong_load[:5]}"
                )
            context.failures += _small_rows_check(folders, report, what)
            samples[step].append(
                {
                    "seconds": measured.seconds,
                    "glue_estimate": report.get("glue_estimate"),
                    "table_seconds": [
                        o["duration_s"] for o in report["tables"] if o["status"] == "succeeded"
                    ],
                    **measured.usage,
                    "statuses": statuses,
                    "rows_read": sum(o["rows_read"] or 0 for o in report["tables"]),
                    "rows_written": sum(
                        o["rows_written"] or 0 for o in report["tables"] if o["status"] == "succeeded"
                    ),
                    "profile": spark_profile(
                        event_log(event_dir) if event_dir else None, 0, measured.started_epoch
                    ),
                }
            )
            print(f"  {what}: {measured.seconds:.1f} s ({_statuses(statuses)})", flush=True)
    return {
        "tables": scale.small_tables,
        "rows": scale.small_rows,
        "changed_tables": SMALL_CHANGED,
        "samples": samples,
        "medians": {step: _median_sample(runs) for step, runs in samples.items()},
        "dpu_projection": dpu_projection(samples["changed"]),
    }


def dpu_projection(changed_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a tick of 1,000 small tables with 5% changed bills on Glue (the default 2-DPU job),
    packed as the plan packs them and one run per table: 50 tables, each taking the seconds the
    changed tables' incremental ingests took here (cycled), packed by their planned sizes."""
    seconds = [s for run in changed_runs for s in run["table_seconds"]]
    names = [f"table_{n:04d}" for n in range(DPU_PROJECTION_CHANGED)]
    per_table = {name: seconds[n % len(seconds)] for n, name in enumerate(names)}
    # Every changed small table weighs well under the pack limit: packs are bounded by table count.
    runs = [names[start : start + PACK_MAX_TABLES] for start in range(0, len(names), PACK_MAX_TABLES)]
    estimate = estimate_dpu_minutes(runs, per_table, DEFAULT_GLUE_DPU)
    return {
        "tables": DPU_PROJECTION_TABLES,
        "changed": DPU_PROJECTION_CHANGED,
        "seconds_per_table_median": statistics.median(seconds),
        **estimate.to_json(),
    }


def _statuses(counts: dict[str, int]) -> str:
    return " + ".join(f"{count} {status}" for status, count in sorted(counts.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Targets, table, environment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: a ratio of two figures measured in this run."""

    name: str
    ratio: float | None  # of wall times, the product as a fresh process
    bound: float
    at_most: bool  # the ratio must be at most the bound (else at least)
    cpu_ratio: float | None = None  # the same ratio of CPU times: steadier on a busy machine
    warm_ratio: float | None = None  # the same with the product on its warm session
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio <= self.bound if self.at_most else self.ratio >= self.bound

    def verdict(self) -> str:
        sign = "<=" if self.at_most else ">="
        parts = [f"target {sign} {self.bound:g}: {({True: 'met', False: 'MISSED', None: 'n/a'})[self.met]}"]
        if self.cpu_ratio is not None:
            parts.append(f"CPU time {self.cpu_ratio:.3f}")
        if self.warm_ratio is not None:
            parts.append(f"warm session {self.warm_ratio:.3f}")
        return "; ".join([*parts, *([self.note] if self.note else [])])


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def layout_targets(layout: str, figures: dict[str, Any]) -> list[Target]:
    medians = figures["medians"]

    def ratio(top: tuple[str, str], bottom: tuple[str, str], key: str = "seconds") -> float | None:
        numerator, denominator = medians[top[0]].get(top[1]), medians[bottom[0]].get(bottom[1])
        return _ratio(numerator and numerator[key], denominator and denominator[key])

    def target(
        name: str, top: tuple[str, str], bottom: tuple[str, str], bound: float, at_most: bool, note: str = ""
    ) -> Target:
        # The same ratio with the warm session in the product's place; not against the naive script,
        # which has no warm session to compare with.
        warm_top, warm_bottom = (
            (step, "warm" if approach == "product" else approach) for step, approach in (top, bottom)
        )
        warm = "naive" not in (top[1], bottom[1])
        return Target(
            f"{'(a)' if layout == 'random' else '(b)'} {name}",
            ratio(top, bottom),
            bound,
            at_most,
            cpu_ratio=ratio(top, bottom, "cpu_s"),
            warm_ratio=ratio(warm_top, warm_bottom) if warm else None,
            note=note,
        )

    unpartitioned = layout == "partitioned" and not figures["partition_by"]
    bound = INCREMENTAL_PARTITIONED_MAX if layout == "partitioned" else INCREMENTAL_RANDOM_MAX
    found = [
        target(
            "incremental 1% / full load",
            ("1%", "product"),
            ("full", "product"),
            bound,
            True,
            note="(product has no output partitioning yet)" if unpartitioned else "",
        )
    ]
    for step in medians:
        name = "full load" if step == "full" else f"incremental {step}"
        minimum = NAIVE_FULL_MIN if step == "full" else NAIVE_INCREMENTAL_MIN
        found.append(target(f"naive / product, {name}", (step, "naive"), (step, "product"), minimum, False))
    for step in medians:
        name = "full load" if step == "full" else f"incremental {step}"
        found.append(
            target(f"product / DuckDB, {name}", (step, "product"), (step, "duckdb"), DUCKDB_MAX, True)
        )
    return found


def targets(results: dict[str, Any]) -> list[Target]:
    found = [t for layout, figures in results["layouts"].items() for t in layout_targets(layout, figures)]
    small = results.get("small")
    if small:
        full = small["medians"]["full"]
        scaled = small["tables"] == SMALL_TARGET_TABLES
        note = "" if scaled else f"--quick: {small['tables']} tables, the target is for {SMALL_TARGET_TABLES}"
        found.append(
            Target(
                f"{small['tables']} small tables, full load, seconds",
                full["seconds"] if scaled else None,
                SMALL_FULL_MAX_S,
                at_most=True,
                note=note,
            )
        )
        projection = small["dpu_projection"]
        found.append(
            Target(
                f"{projection['tables']:,} small tables, {projection['changed']} changed: "
                "Glue DPU-minutes a tick",
                projection["dpu_minutes"],
                DPU_PER_TICK_MAX,
                at_most=True,
                note=(
                    f"{projection['glue_runs']} packed run(s); one run per table: "
                    f"{projection['dpu_minutes_unpacked']:g} DPU-minutes; "
                    f"{projection['seconds_per_table_median']:.2f} s per table measured"
                ),
            )
        )
    return found


HEADERS = (
    "figure",
    "seconds",
    "ratio",
    "CPU s",
    "peak MiB",
    "Spark up s",
    "jobs",
    "jobs s",
    "rows read",
    "rows out",
    "note",
)


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _peak(figures: dict[str, Any]) -> str:
    peak = figures["peak_mib"]
    return f"{peak['python']:.0f}+{peak['jvm']:.0f}" if peak["jvm"] is not None else f"{peak['python']:.0f}"


def _measured_row(
    label: str, figures: dict[str, Any], ratio: float | None, note: str = ""
) -> tuple[str, ...]:
    profile = figures.get("profile") or {}
    return (
        label,
        _number(figures["seconds"], 2),
        _number(ratio, 3),
        _number(figures["cpu_s"], 1),
        _peak(figures),
        _number(profile.get("spark_up_at_s"), 1),
        _number(profile.get("jobs"), 0),
        _number(profile.get("jobs_s"), 1),
        _number(figures.get("rows_read"), 0),
        _number(figures.get("rows_out", figures.get("rows_written")), 0),
        note,
    )


def _title_row(title: str) -> tuple[str, ...]:
    return (title, *[""] * (len(HEADERS) - 1))


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for layout, figures in results.get("layouts", {}).items():
        history = figures["history"]
        title = f"{figures['title']}: {history['rows']:,} change rows over {history['keys']:,} keys"
        if layout == "partitioned":
            title += (
                f", partition_by {figures['partition_by']}"
                if figures["partition_by"]
                else " (product has no output partitioning yet: run unpartitioned)"
            )
        rows.append(_title_row(title))
        last_round = figures["rounds"][-1]
        for step_figures in last_round:
            step = step_figures["step"]
            landed = step_figures["landed"]
            heading = "full load" if step == "full" else f"+{step} ({landed['rows']:,} rows landed)"
            for index, approach in enumerate(APPROACHES):
                median = figures["medians"][step].get(approach)
                if median is None:
                    continue
                full = figures["medians"]["full"][approach]["seconds"]
                label = f"  {heading if index == 0 else '':<26} {APPROACHES[approach]}"
                rows.append(
                    _measured_row(
                        label, median, median["seconds"] / full, _check_note(approach, step_figures)
                    )
                )
    small = results.get("small")
    if small:
        rows.append(
            _title_row(f"(c) {small['tables']} small tables x {small['rows']} rows, fresh process per run")
        )
        full_s = small["medians"]["full"]["seconds"]
        labels = {
            "full": "full load",
            "noop": "no-op (nothing new)",
            "changed": f"{small['changed_tables']} tables got a new file",
            "all_changed": f"all {small['tables']} tables got a new file",
        }
        for step, label in labels.items():
            median = small["medians"][step]
            rows.append(
                _measured_row(f"  {label}", median, median["seconds"] / full_s, _statuses(median["statuses"]))
            )
    rows.append(_title_row("targets (ratios of the medians above; the product as a fresh process)"))
    for target in results["targets"]:
        rows.append((f"  {target['name']}", "", _number(target["ratio"], 3), *[""] * 7, target["verdict"]))
    return rows


def _check_note(approach: str, step_figures: dict[str, Any]) -> str:
    check = step_figures["check"].get(approach if approach != "duckdb" else "duckdb_vs_recomputed")
    if check is None:
        return ""
    if approach == "duckdb":
        return "oracle; = recomputed from all files" if _equal(check) else "ORACLE DIFFERS from recomputation"
    if approach != "naive":
        return "= DuckDB (rows, keys, versions)" if _equal(check) else "DIFFERS from DuckDB"
    if _equal(check):
        return "= DuckDB"
    parts = []
    if check["extra_deletes"]:
        parts.append(f"+{check['extra_deletes']:,} deleted keys kept as Op=D rows (no delete handling)")
    if check["extra"] - check["extra_deletes"]:
        parts.append(f"+{check['extra'] - check['extra_deletes']:,} other extra keys")
    if check["missing"]:
        parts.append(f"-{check['missing']:,} keys lost")
    if check["other_version"]:
        parts.append(f"{check['other_version']:,} keys at another version")
    return "vs DuckDB: " + ", ".join(parts)


def print_table(results: dict[str, Any]) -> None:
    env = results["environment"]
    print()
    print(
        f"Cost benchmark{' --quick' if results['quick'] else ''}: {env['cores']} cores, "
        f"{env['memory_gib']} GiB, "
        f"Spark {env['spark']} local[*], DuckDB {env['duckdb']}, Python {env['python']}, code {env['git']}; "
        f"median of {results['repeat']}"
    )
    print(f"Load average: start {_load(env['load_average_start'])}, end {_load(env['load_average_end'])}")
    if env["git_end"] != env["git"]:
        print(
            f"THE CODE CHANGED DURING THE RUN, to {env['git_end']}: fresh processes ran the code on disk "
            "when they started, the warm session the code of the start (each step's is in the JSON)"
        )
    rows = [HEADERS, *table_rows(results)]
    measured = [row for row in rows if any(row[1:])]
    widths = [max(len(row[column]) for row in measured) for column in range(len(HEADERS))]
    for row in rows:
        if not any(row[1:]):  # a section title
            print(row[0])
            continue
        cells = zip(row, widths, strict=True)
        print(
            "  ".join(
                cell.ljust(width) if column in (0, len(HEADERS) - 1) else cell.rjust(width)
                for column, (cell, width) in enumerate(cells)
            ).rstrip()
        )
    print(
        "ratio: to the same approach's full load (targets: as named); peak MiB: VmHWM of the python process"
        "+its JVM;\nSpark up s: from process start to SparkContext up; jobs s: wall time with a Spark job "
        "running; rows read: the product's report"
    )
    print(f"Total wall time {results['total_s']:.0f} s")


def _load(values: Iterable[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def environment() -> dict[str, Any]:
    import pyspark

    from benchmarks.arrivals import environment as arrivals_environment
    from cdc_pipeline.spark import LOCAL_CONF, REQUIRED_CONF

    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        memory_gib = round(int(meminfo.readline().split()[1]) / 1024**2, 1)
    return {
        **arrivals_environment(),
        "git": code_version(),
        "memory_gib": memory_gib,
        "spark": pyspark.__version__,
        "spark_conf": {**LOCAL_CONF, **REQUIRED_CONF},
        "java": java.splitlines()[0] if java else None,
        "duckdb": duckdb.__version__,
        "uptime_start": _uptime(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200k rows and 20 small tables (default 10M and 100)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every sample to PATH")
    parser.add_argument(
        "--only", nargs="+", choices=[*LAYOUTS, "small"], help="run only these parts (default: all three)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every figure; medians kept (default 1)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the data goes, kept afterwards (default: a temporary directory, removed)",
    )
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-session runs")
    parser.add_argument("--no-profile", action="store_true", help="no Spark event logs (no jobs columns)")
    parser.add_argument(
        "--land-only",
        action="store_true",
        help="only write the data (history, batches, registry) under --workdir, e.g. for AWS Glue",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty; give a new or empty directory")
    if args.land_only and not args.workdir:
        parser.error("--land-only needs --workdir: where to leave the data")
    work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="cdc-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = args.only or [*LAYOUTS, "small"]
    scale = QUICK if args.quick else FULL
    if args.land_only:
        land_only(work, scale, [layout for layout in LAYOUTS if layout in parts])
        return 0
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "environment": environment(),
        "quick": args.quick,
        "repeat": args.repeat,
        "scale": asdict(scale),
        "partition_by_supported": partition_by_supported(),
        "layouts": {},
    }
    context = Context(work, scale, args.repeat, profile=not args.no_profile)
    print(f"Working in {work}; load average {_load(os.getloadavg())}", flush=True)
    try:
        layouts = [layout for layout in LAYOUTS if layout in parts]
        if layouts:
            generate_s, history = _timed(lambda: _land_histories(work, scale, layouts))
            print(f"Generated {scale.rows:,} rows in {scale.files} files in {generate_s:.1f} s", flush=True)
            if not args.no_warm:
                context.warm = WarmSession(context.event_dir("warm"), work / "warm-session.log")
                warm_up_s = warm_up(context.warm, work / "warm-up", scale.warm_up_rows)
                print(f"Warm session up and warmed up in {warm_up_s:.1f} s", flush=True)
            for layout in layouts:
                print(f"{LAYOUTS[layout]}", flush=True)
                results["layouts"][layout] = bench_layout(context, layout, history)
        if context.warm is not None:
            context.warm.close()
            context.warm = None
        if "small" in parts:
            print(f"(c) {scale.small_tables} small tables", flush=True)
            results["small"] = bench_small(context)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if context.warm is not None:
            context.warm.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    results["environment"].update(
        load_average_end=os.getloadavg(),
        uptime_end=_uptime(),
        git_end=code_version(),
        date_end=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    results["total_s"] = time.perf_counter() - started
    results["targets"] = [{**asdict(t), "met": t.met, "verdict": t.verdict()} for t in targets(results)]
    results["failures"] = context.failures
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"Results written to {args.json}")
    if context.failures:
        print("\nCORRECTNESS CHECK FAILED:\n  " + "\n  ".join(context.failures), file=sys.stderr)
        return 1
    return 0


def land_only(work: Path, scale: Scale, layouts: list[str]) -> None:
    """The data of a run, without running anything: to upload to S3 and run on AWS Glue. Each
    layout's landing zone gets the full history; its batches go to a folder each, to be uploaded
    one at a time between runs; its registry beside them."""
    generated = _land_histories(work, scale, layouts)
    for layout in layouts:
        root = work / layout
        partitioned = layout == "partitioned" and partition_by_supported()
        write_registry(root / "registry", PARTITION_COLUMN if partitioned else None)
        history = new_history(layout, scale, generated)
        for batch, (step, share) in enumerate(scale.steps[1:], start=1):
            folder = root / "batches" / f"{batch}-{step.replace('%', 'pct')}" / TABLE
            landed = land_batch(history, folder, batch, batch_rows(scale, share))
            print(f"{layout} batch {step}: {landed['rows']:,} rows in {landed['files'][0]}")
        print(f"{layout}: history in {root / 'source' / TABLE}, registry in {root / 'registry'}")


def _timed(action: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def _land_histories(work: Path, scale: Scale, layouts: list[str]) -> dict[str, Any]:
    """One generated history, hard-linked into each layout's landing zone (same bytes for both)."""
    first = work / layouts[0] / "source"
    history = generate_history(first, scale)
    for layout in layouts[1:]:
        folder = work / layout / "source" / TABLE
        folder.mkdir(parents=True)
        for path in full_files(first):
            os.link(path, folder / path.name)
    return history


def code_version() -> str | None:
    """The git revision, and when cdc_pipeline differs from it a hash of the difference: the code
    under test is edited concurrently, and two different dirty trees must not look alike."""
    from benchmarks.run_benchmarks import _git_revision

    revision = _git_revision()
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--", "cdc_pipeline"], cwd=ROOT, capture_output=True, check=False
    ).stdout
    return f"{revision}, diff {hashlib.sha256(diff).hexdigest()[:10]}" if diff else revision


if __name__ == "__main__":
    sys.exit(main())
