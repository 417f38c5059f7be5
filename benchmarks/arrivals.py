"""Benchmark reading by arrival: runs where few tables changed, and plans of a table of many files.

Run from the repository root: ``.venv/bin/python -m benchmarks.arrivals [--quick] [--json PATH]``.

1. **Many small tables** (100 tables of 50 rows, one Parquet file each). Each run is a whole
   ``cdc-pipeline run`` process timed from outside, so it pays what a Glue run pays: a fresh
   interpreter and, when a table has work, a fresh JVM. Three runs: a full load, a no-op run
   (nothing new: every table is unchanged and Spark never starts) and a run after 5 tables got one
   new file each. The same three runs again through ``run_local`` on one warm SparkSession.
   The figures to compare are the ratios no-op / full and 5 changed / full; the product's target
   is no-op < 0.25 x full.
2. **One table of many files** (100,000 tiny Parquet files): the local listing alone, the footer
   reads alone, a full plan, and an incremental plan after 10 new files landed, each in a fresh
   process so its peak RSS is its own; then ``list_data_files`` over as many keys in moto's S3.

``--quick`` is 20 tables and 10,000 files. The machine is shared and noisy: compare the ratios
measured within one run, never absolute seconds, and never turn these figures into timed tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Only the core, which needs the standard library alone: the fresh processes that measure a plan
# must not carry numpy, moto or Spark in their peak RSS. The rest is imported where it is used.
from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW, FileCursor, settle_micros
from cdc_pipeline.catalog import LocalCatalog
from cdc_pipeline.plan import Layout
from cdc_pipeline.registry import LocalRegistrySource
from cdc_pipeline.runner import RunSettings, run_local
from cdc_pipeline.stages import plan_stage
from cdc_pipeline.state import LocalStateStore, TableState
from cdc_pipeline.storage import LocalStorage

ROOT = Path(__file__).resolve().parent.parent
NOOP_TARGET = 0.25  # the product's target: a no-op run costs less than this share of a full load
CHANGED_TABLES = 5
CHANGE_ROWS = 10  # rows of each new file: half updates of existing keys, half new keys
NEW_FILES = 10  # files landed in the big table before the incremental plan
BIG_TABLE = "big_table"
FILES_PER_FOLDER = 100
# ext4 allows 65,000 links to one inode: a fresh prototype file every this many links.
LINKS_PER_PROTOTYPE = 10_000
S3_BUCKET = "cdc-arrivals-benchmark"
S3_REGION = "eu-west-1"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    tables: int
    rows: int
    files: int
    s3_keys: int


FULL = Scale(tables=100, rows=50, files=100_000, s3_keys=100_000)
QUICK = Scale(tables=20, rows=50, files=10_000, s3_keys=10_000)


class BenchmarkError(RuntimeError):
    """A run failed or reported something else than it should: its timing would be meaningless."""


@dataclass(frozen=True)
class Folders:
    """One pipeline's landing zone, registry, snapshots and state, side by side under ``root``."""

    source: Path
    registry: Path
    output: Path
    state: Path

    @classmethod
    def under(cls, root: Path) -> Folders:
        folders = cls(root / "source", root / "registry", root / "output", root / "state")
        folders.source.mkdir(parents=True)
        folders.registry.mkdir(parents=True)
        return folders

    def layout(self) -> Layout:
        return Layout(output_path=str(self.output), cdc_path=str(self.state))


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------------------------
# 1. Many small tables: full load, no-op, 5 changed
# ---------------------------------------------------------------------------------------------


def land_tables(folders: Folders, count: int, rows: int) -> list[str]:
    """``count`` tables of ``rows`` inserts (ids 0..rows-1) in one file each, and their registry."""
    import numpy as np
    import pyarrow.parquet as pq

    from benchmarks.generate import START_MICROS, _payload, _stamps

    names = [f"table_{index:03d}" for index in range(count)]
    for index, name in enumerate(names):
        rng = np.random.default_rng([11, index])
        ids = np.arange(rows, dtype=np.int64)
        table = _payload(rng, ids, np.full(rows, "I"), _stamps(rng, rows, START_MICROS))
        (folders.source / name).mkdir()
        pq.write_table(table, folders.source / name / "part-00000.parquet")
    registry = "table_name,primary_key\n" + "".join(f"{name},id\n" for name in names)
    (folders.registry / "registry.csv").write_text(registry, encoding="utf-8")
    return names


def land_change(folders: Folders, name: str, index: int, rows: int) -> None:
    """One new file in table ``name``: updates of existing keys and as many new keys, stamped later."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from benchmarks.generate import _payload, _stamps

    folder = folders.source / name
    last = pc.max(pq.read_table(folder, columns=["updated_at"])["updated_at"].cast(pa.int64())).as_py()
    rng = np.random.default_rng([13, index])
    updates = CHANGE_ROWS // 2
    ids = np.concatenate(
        [rng.choice(rows, updates, replace=False), np.arange(rows, rows + CHANGE_ROWS - updates)]
    ).astype(np.int64)
    ops = np.repeat(np.array(["U", "I"]), [updates, CHANGE_ROWS - updates])
    pq.write_table(_payload(rng, ids, ops, _stamps(rng, CHANGE_ROWS, last)), folder / "part-00001.parquet")


Runner = Callable[[Folders], tuple[float, dict[str, Any]]]


def process_runner(folders: Folders) -> tuple[float, dict[str, Any]]:
    """A whole ``cdc-pipeline run --json`` process, timed from outside; its report as JSON."""
    command = [sys.executable, "-m", "cdc_pipeline", "run", "--json"]
    for option, path in asdict(folders).items():
        command += [f"--{option}", str(path)]
    seconds, completed = timed(
        lambda: subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    )
    if completed.returncode != 0:
        raise BenchmarkError(
            f"`{' '.join(command)}` exited {completed.returncode}: {completed.stderr[-2000:]}"
        )
    return seconds, json.loads(completed.stdout)


def warm_runner(spark: Any) -> Runner:
    """``run_local`` on one SparkSession that earlier runs have warmed up."""

    def run(folders: Folders) -> tuple[float, dict[str, Any]]:
        settings = RunSettings(
            source=folders.source, output=folders.output, state=folders.state, registry=folders.registry
        )
        seconds, report = timed(lambda: run_local(settings, spark=spark))
        return seconds, report.to_json()

    return run


def snapshot_folders(folders: Folders, names: list[str]) -> dict[str, set[str]]:
    snapshots = {name: folders.output / name / "snapshots" for name in names}
    return {
        name: {child.name for child in path.iterdir() if child.is_dir()} if path.is_dir() else set()
        for name, path in snapshots.items()
    }


def check_run(
    what: str,
    report: dict[str, Any],
    expected: dict[str, str],
    before: dict[str, set[str]],
    after: dict[str, set[str]],
) -> dict[str, int]:
    """The report gives every table the expected status, and exactly the succeeded tables have one
    new snapshot folder (an unchanged table gets none). Returns the count of each status."""
    statuses = {outcome["table"]: outcome["status"] for outcome in report["tables"]}
    if statuses != expected:
        wrong = {name: statuses.get(name) for name in expected if statuses.get(name) != expected[name]}
        raise BenchmarkError(
            f"{what}: {len(wrong)} table(s) with another status than expected, e.g. "
            f"{dict(list(wrong.items())[:5])}; expected {Counter(expected.values())}"
        )
    for name, status in expected.items():
        new = after[name] - before[name]
        if len(new) != (1 if status == "succeeded" else 0):
            raise BenchmarkError(f"{what}: table {name} is {status} but has new snapshot folder(s) {new}")
    return dict(Counter(statuses.values()))


def bench_tables(root: Path, scale: Scale, run: Runner) -> dict[str, Any]:
    """Full load, no-op run, then a run after ``CHANGED_TABLES`` tables got one new file each."""
    folders = Folders.under(root)
    names = land_tables(folders, scale.tables, scale.rows)
    changed = names[:: max(1, len(names) // CHANGED_TABLES)][:CHANGED_TABLES]

    before = snapshot_folders(folders, names)
    full_s, full = run(folders)
    after_full = snapshot_folders(folders, names)
    full_counts = check_run("full load", full, dict.fromkeys(names, "succeeded"), before, after_full)

    noop_s, noop = run(folders)
    after_noop = snapshot_folders(folders, names)
    noop_counts = check_run("no-op run", noop, dict.fromkeys(names, "unchanged"), after_full, after_noop)
    if noop["revision"] != full["revision"]:
        raise BenchmarkError(
            f"no-op run committed state revision {noop['revision']} after {full['revision']}"
        )

    for index, name in enumerate(changed):
        land_change(folders, name, index, scale.rows)
    changed_s, changed_report = run(folders)
    expected = {name: "succeeded" if name in changed else "unchanged" for name in names}
    changed_counts = check_run(
        f"{len(changed)} changed", changed_report, expected, after_noop, snapshot_folders(folders, names)
    )
    for outcome in changed_report["tables"]:
        if outcome["status"] == "succeeded" and (
            outcome["load_type"],
            outcome["files_read"],
            outcome["rows_written"],
        ) != ("incremental", 1, scale.rows + CHANGE_ROWS // 2):
            raise BenchmarkError(
                f"{len(changed)} changed: table {outcome['table']} was a {outcome['load_type']} load of "
                f"{outcome['files_read']} file(s) giving {outcome['rows_written']} rows; expected an "
                f"incremental load of 1 file giving {scale.rows + CHANGE_ROWS // 2}"
            )
    return {
        "full_s": full_s,
        "noop_s": noop_s,
        "changed_s": changed_s,
        "statuses": {"full": full_counts, "noop": noop_counts, "changed": changed_counts},
        # Each table's ingest alone, as its manifest records it: summed over the run's tables, and the
        # slowest (in a fresh JVM, the first ingests pay for class loading and code generation).
        "ingest_s": {"full": _ingest_s(full), "noop": _ingest_s(noop), "changed": _ingest_s(changed_report)},
        "changed_tables": changed,
    }


def _ingest_s(report: dict[str, Any]) -> dict[str, float]:
    durations = [outcome["duration_s"] or 0.0 for outcome in report["tables"]]
    return {"sum": sum(durations), "slowest": max(durations, default=0.0)}


def spark_start_s() -> float:
    """A fresh process that only starts and stops the local SparkSession: the floor of any run
    that has a table to ingest."""
    code = "from cdc_pipeline.spark import local_session; local_session().stop()"
    seconds, completed = timed(
        lambda: subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=False)
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"Spark did not start: {completed.stderr.decode()[-2000:]}")
    return seconds


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    full_s = statistics.median(r["full_s"] for r in rounds)
    noop_s = statistics.median(r["noop_s"] for r in rounds)
    changed_s = statistics.median(r["changed_s"] for r in rounds)
    return {
        "full_s": full_s,
        "noop_s": noop_s,
        "changed_s": changed_s,
        "ratio_noop_over_full": noop_s / full_s,
        "ratio_changed_over_full": changed_s / full_s,
        "rounds": rounds,
    }


def bench_all_tables(work: Path, scale: Scale, repeat: int, warm: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rounds = []
    for index in range(repeat):
        rounds.append(bench_tables(work / f"process-{index}", scale, process_runner))
        print(f"  fresh process per run, round {index + 1}/{repeat}: {_round_line(rounds[-1])}", flush=True)
    results["process"] = summarise_rounds(rounds)
    results["process"]["spark_start_s"] = statistics.median(spark_start_s() for _ in range(repeat))
    print(f"  Spark start alone in a fresh process: {results['process']['spark_start_s']:.2f} s", flush=True)
    if not warm:
        return results

    from cdc_pipeline.spark import local_session

    # Spark's console progress bar would garble the output; it can only be turned off before the JVM
    # starts. A user's own PYSPARK_SUBMIT_ARGS wins.
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell")
    spark = local_session()
    runner = warm_runner(spark)
    # Warm-up, not counted: the session's first runs load classes and compile the hot paths.
    warm_up_s, _ = timed(
        lambda: bench_tables(work / "warm-up", Scale(CHANGED_TABLES, scale.rows, 0, 0), runner)
    )
    print(f"  warm session: warm-up on {CHANGED_TABLES} tables took {warm_up_s:.1f} s", flush=True)
    rounds = []
    for index in range(repeat):
        rounds.append(bench_tables(work / f"warm-{index}", scale, runner))
        print(f"  warm session, round {index + 1}/{repeat}: {_round_line(rounds[-1])}", flush=True)
    results["warm"] = summarise_rounds(rounds)
    results["spark"] = spark.version
    spark.stop()  # its JVM would otherwise sit beside the plan measurements that follow
    return results


def _round_line(figures: dict[str, Any]) -> str:
    return (
        f"full {figures['full_s']:.2f} s, no-op {figures['noop_s']:.2f} s, "
        f"{CHANGED_TABLES} changed {figures['changed_s']:.2f} s"
    )


# ---------------------------------------------------------------------------------------------
# 2. One table of many files: listing, footers, full and incremental plans, S3 listing
# ---------------------------------------------------------------------------------------------


def land_files(table: Path, count: int) -> None:
    """``count`` one-row Parquet files under year/month/day/hour folders, as DMS lands them.

    One file is written per ``LINKS_PER_PROTOTYPE`` and the others are hard links to it, which
    takes seconds for 100,000 files. The links of one file share its inode and so its change time,
    which the local catalog reads as the arrival: every link counts as arrived when the last link
    to its inode was made. That is harmless here because all of them land before the full plan,
    and the files landed later are written fresh, never linked.
    """
    prototypes = table.parent / f".{table.name}-prototypes"
    prototypes.mkdir()
    prototype = prototypes / "none"
    for index in range(count):
        if index % LINKS_PER_PROTOTYPE == 0:
            prototype = prototypes / f"{index:08d}.parquet"
            write_tiny_parquet(prototype, index)
        path = table / landed_path(index)
        if index % FILES_PER_FOLDER == 0:
            path.parent.mkdir(parents=True)
        os.link(prototype, path)


def landed_path(index: int) -> str:
    """The ``index``-th file's path in its table: ``FILES_PER_FOLDER`` files an hour from 2026-01-01."""
    hour = index // FILES_PER_FOLDER
    month, day = hour // (24 * 28) % 12 + 1, hour // 24 % 28 + 1
    return f"2026/{month:02d}/{day:02d}/{hour % 24:02d}/LOAD{index:08d}.parquet"


def write_tiny_parquet(path: Path, key: int) -> None:
    """A valid one-row Parquet file with the benchmark table's columns."""
    import numpy as np
    import pyarrow.parquet as pq

    from benchmarks.generate import START_MICROS, _payload, _stamps

    rng = np.random.default_rng(key)
    ids = np.array([key], dtype=np.int64)
    pq.write_table(_payload(rng, ids, np.array(["I"]), _stamps(rng, 1, START_MICROS)), path)


def in_fresh_process(step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``step`` in a new interpreter (spawned, not forked) and add that process's peak RSS."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_measure, step, *args).result()


def _measure(step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    # The plan's warnings (every full load: "no committed tracker") are expected here.
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)
    # The peak read once before the step too, so the interpreter's own footprint shows apart.
    before = peak_rss_mib()
    figures = step(*args)
    return {**figures, "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set size: VmHWM, not ``getrusage``'s ru_maxrss, which Linux
    carries across exec, so a spawned process would report its parent's peak if that was higher."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: ru_maxrss is then the only figure (bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak / 1024


def _stopwatch(action: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Wall and CPU seconds of ``action``; CPU time is the steadier figure on a busy machine."""
    cpu = time.process_time()
    seconds, result = timed(action)
    return {"seconds": seconds, "cpu_s": time.process_time() - cpu}, result


def step_list(source: Path, table: str) -> dict[str, Any]:
    clock, listing = _stopwatch(lambda: LocalCatalog(source).list_files(table))
    return {**clock, "files": len(listing.files)}


def step_describe(source: Path, table: str) -> dict[str, Any]:
    """What the plan's describe costs over every file: it reads each file's Parquet footer."""
    catalog = LocalCatalog(source)
    paths = [data_file.path for data_file in catalog.list_files(table).files]
    clock, described = _stopwatch(lambda: catalog.describe(table, paths))
    return {**clock, "files": len(paths), "columns": len(described.columns)}


def step_plan(folders: Folders, run_id: str) -> dict[str, Any]:
    """The whole plan stage (registry, state, listing, describe, plan, plan and item files)."""
    layout = folders.layout()
    clock, plan = _stopwatch(
        lambda: plan_stage(
            catalog=LocalCatalog(folders.source),
            registry_source=LocalRegistrySource(folders.registry),
            state_store=LocalStateStore(folders.state),
            storage=LocalStorage(),
            layout=layout,
            run_id=run_id,
        )
    )
    state = folders.state / "state.json"
    return {
        **clock,
        "items": [(item.table, item.load_type, len(item.files or [])) for item in plan.items],
        "unchanged": plan.unchanged,
        "plan_bytes": Path(layout.plan(run_id)).stat().st_size,
        "item_bytes": [Path(layout.item(item.table, run_id)).stat().st_size for item in plan.items],
        "state_bytes": state.stat().st_size if state.exists() else 0,
    }


def step_s3_listing(keys: int) -> dict[str, Any]:
    """``list_data_files`` over ``keys`` objects in moto's S3 (one paginated ListObjectsV2)."""
    # This process is the benchmark's own: fake credentials and no profile can reach no account.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=S3_REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    import boto3
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from cdc_pipeline.aws.s3 import list_data_files

    with mock_aws():
        client = boto3.client("s3", region_name=S3_REGION)
        client.create_bucket(Bucket=S3_BUCKET, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        # Straight into moto's backend: 100,000 PutObject calls through boto3 take ~2 ms each here
        # (minutes), and only the listing is measured.
        populate_s, _ = timed(
            lambda: [
                backend.put_object(S3_BUCKET, f"raw/{BIG_TABLE}/{landed_path(index)}", b"")
                for index in range(keys)
            ]
        )
        clock, listing = _stopwatch(lambda: list_data_files(client, f"s3://{S3_BUCKET}/raw/{BIG_TABLE}"))
    return {**clock, "keys": len(listing.files), "populate_s": populate_s}


def commit_by_hand(folders: Folders, item: dict[str, Any], cursor: FileCursor, run_id: str) -> None:
    """Record the table as the Commit stage would after ingesting ``item``, without running Spark
    (no watermark: a table read by arrival plans from its cursor)."""
    tracker = TableState(
        watermark=None,
        location=item["output_location"],
        rows=1,
        run_id=run_id,
        committed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        load_type=item["load_type"],
        mode=item["mode"],
        watermark_column=item["watermark_column"],
        primary_key=tuple(item["primary_key"]),
        sequence_column=item["sequence_column"],
        delete_column=item["delete_column"],
        delete_values=tuple(item["delete_values"]),
        incremental_by=item["incremental_by"],
        cursor=cursor.to_json(),
        watermark_unit=item["watermark_unit"],
    )
    store = LocalStateStore(folders.state)
    document, version = store.read()
    store.write(document.with_tables({item["table"]: tracker}, run_id, tracker.committed_at), version)


def bench_plan(work: Path, scale: Scale, repeat: int) -> dict[str, Any]:
    folders = Folders.under(work / "plan")
    (folders.registry / "registry.csv").write_text(f"table_name,primary_key\n{BIG_TABLE},id\n", "utf-8")
    land_s, _ = timed(lambda: land_files(folders.source / BIG_TABLE, scale.files))
    print(f"  landed {scale.files:,} files in {land_s:.1f} s", flush=True)
    results: dict[str, Any] = {"files": scale.files, "land_s": land_s}

    results["list"] = _median([in_fresh_process(step_list, folders.source, BIG_TABLE) for _ in range(repeat)])
    results["describe"] = _median(
        [in_fresh_process(step_describe, folders.source, BIG_TABLE) for _ in range(repeat)]
    )
    print(f"  listing {results['list']['seconds']:.2f} s, footers {results['describe']['seconds']:.2f} s")
    full = [in_fresh_process(step_plan, folders, f"full-{index}") for index in range(repeat)]
    for figures in full:
        if figures["items"] != [(BIG_TABLE, "full", scale.files)]:
            raise BenchmarkError(
                f"full plan planned {figures['items']}, expected one full load of every file"
            )
    results["full"] = _median(full)
    print(f"  full plan {results['full']['seconds']:.2f} s", flush=True)

    # Committed as the Commit stage would right after that plan: the cursor its item carries. The
    # files landed within the settle window, so its `recent` names every one of them.
    layout = folders.layout()
    item = LocalStorage().read_json(layout.item(BIG_TABLE, "full-0"))
    just_committed = FileCursor.from_json(item["next_cursor"])
    commit_by_hand(folders, item, just_committed, "full-0")
    for index in range(NEW_FILES):
        folder = folders.source / BIG_TABLE / "2026" / "12" / "31" / "23"
        folder.mkdir(parents=True, exist_ok=True)
        write_tiny_parquet(folder / f"cdc-{index:05d}.parquet", scale.files + index)

    def incremental(label: str) -> dict[str, Any]:
        runs = [in_fresh_process(step_plan, folders, f"{label}-{index}") for index in range(repeat)]
        for figures in runs:
            if figures["items"] != [(BIG_TABLE, "incremental", NEW_FILES)]:
                raise BenchmarkError(
                    f"{label} plan planned {figures['items']}, expected an incremental load of "
                    f"{NEW_FILES} files"
                )
        return _median(runs)

    results["incremental_in_settle_window"] = incremental("incremental-recent")
    # The same state as a commit made once the files were older than the settle window leaves it:
    # the mark past every file, `recent` empty. Any run later than that sees this state.
    settle = settle_micros(DEFAULT_SETTLE_WINDOW)
    last_arrival = max(just_committed.recent.values(), default=just_committed.mark or 0)
    settled = just_committed.advance([], last_arrival + settle, settle)
    commit_by_hand(folders, item, settled, "settled")
    results["incremental"] = incremental("incremental")
    results["cursor_recent"] = {
        "in_settle_window": len(just_committed.recent),
        "settled": len(settled.recent),
    }
    print(f"  incremental plan {results['incremental']['seconds']:.2f} s", flush=True)

    results["s3"] = in_fresh_process(step_s3_listing, scale.s3_keys)
    if results["s3"]["keys"] != scale.s3_keys:
        raise BenchmarkError(f"list_data_files found {results['s3']['keys']} of {scale.s3_keys} keys")
    print(f"  S3 listing (moto) {results['s3']['seconds']:.2f} s", flush=True)
    full_s = results["full"]["seconds"]
    results["ratios"] = {
        "incremental_over_full": results["incremental"]["seconds"] / full_s,
        "incremental_in_settle_window_over_full": results["incremental_in_settle_window"]["seconds"] / full_s,
        "list_over_full": results["list"]["seconds"] / full_s,
        "describe_over_full": results["describe"]["seconds"] / full_s,
    }
    return results


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the run with the median wall time, and every run's wall time."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "samples_s": [run["seconds"] for run in ordered]}


# ---------------------------------------------------------------------------------------------
# Environment and report
# ---------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import moto
    import pyarrow

    from benchmarks.run_benchmarks import _git_revision

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "moto": moto.__version__,
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
        "git": _git_revision(),
    }


Row = tuple[str, str, str, str, str, str]
HEADERS: Row = ("figure", "seconds", "ratio", "CPU s", "peak RSS MiB", "")


def _row(
    label: str,
    seconds: float | None = None,
    ratio: float | None = None,
    cpu: float | None = None,
    rss_mib: float | None = None,
    note: str = "",
) -> Row:
    return (label, _number(seconds, 2), _number(ratio, 3), _number(cpu, 2), _number(rss_mib, 0), note)


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(results: dict[str, Any]) -> list[Row]:
    """One row per figure; the ratios are to the full load (1.) or to the full plan (2.)."""
    scale = Scale(**results["scale"])
    rows: list[Row] = []
    titles = {"process": "a fresh process per run", "warm": "one warm SparkSession (run_local)"}
    for mode, title in titles.items():
        figures = results.get("tables", {}).get(mode)
        if figures is None:
            continue
        statuses, ingest = figures["rounds"][-1]["statuses"], figures["rounds"][-1]["ingest_s"]
        ratio = figures["ratio_noop_over_full"]
        verdict = "met" if ratio < NOOP_TARGET else "MISSED"
        rows += [
            _row(f"1. {scale.tables} tables x {scale.rows} rows, {title}"),
            _row(
                "   full load",
                figures["full_s"],
                1.0,
                note=f"{_statuses(statuses['full'])}; {_ingests(ingest['full'])}",
            ),
            _row(
                "   no-op (nothing new)",
                figures["noop_s"],
                ratio,
                note=f"{_statuses(statuses['noop'])}; target < {NOOP_TARGET}: {verdict}",
            ),
            _row(
                f"   {CHANGED_TABLES} tables got a new file",
                figures["changed_s"],
                figures["ratio_changed_over_full"],
                note=f"{_statuses(statuses['changed'])}; {_ingests(ingest['changed'])}",
            ),
        ]
        if "spark_start_s" in figures:
            rows.append(
                _row(
                    "   Spark start alone (no table)",
                    figures["spark_start_s"],
                    figures["spark_start_s"] / figures["full_s"],
                    note="python -c 'local_session().stop()'",
                )
            )
    plan = results.get("plan")
    if plan is None:
        return rows
    files, full_s = plan["files"], plan["full"]["seconds"]
    recent_files = plan["cursor_recent"]["in_settle_window"]

    def measured(label: str, figures: dict[str, Any], note: str) -> Row:
        ratio = figures["seconds"] / full_s
        return _row(label, figures["seconds"], ratio, figures["cpu_s"], figures["peak_rss_mib"], note)

    full, incremental, recent, s3 = (
        plan["full"],
        plan["incremental"],
        plan["incremental_in_settle_window"],
        plan["s3"],
    )
    rows += [
        _row(f"2. one table of {files:,} files, each figure a fresh process"),
        measured("   LocalCatalog.list_files", plan["list"], _per_file(plan["list"], files)),
        measured(
            "   LocalCatalog.describe, every footer", plan["describe"], _per_file(plan["describe"], files)
        ),
        measured(
            "   full plan (plan_stage)",
            full,
            f"plan.json {_size(full['plan_bytes'])}, work item {_size(full['item_bytes'][0])}",
        ),
        measured(
            f"   incremental plan, {NEW_FILES} new files",
            incremental,
            f"plan.json {_size(incremental['plan_bytes'])}, work item {_size(incremental['item_bytes'][0])}, "
            f"state {_size(incremental['state_bytes'])}",
        ),
        measured(
            "   same, last commit within settle window",
            recent,
            f"plan.json {_size(recent['plan_bytes'])}, work item {_size(recent['item_bytes'][0])}, "
            f"state {_size(recent['state_bytes'])}, its cursor names {recent_files:,} files",
        ),
        _row(
            f"   S3 list_data_files on moto, {s3['keys']:,} keys",
            s3["seconds"],
            None,
            s3["cpu_s"],
            s3["peak_rss_mib"],
            f"{_per_file(s3, s3['keys'], 'key')}; RSS holds moto's bucket too",
        ),
    ]
    return rows


def print_table(results: dict[str, Any]) -> None:
    env = results["environment"]
    spark = results.get("tables", {}).get("spark")
    print()
    print(
        f"Arrivals benchmark{' --quick' if results['quick'] else ''}: {env['cores']} cores, "
        f"Python {env['python']}, pyarrow {env['pyarrow']}, moto {env['moto']}"
        f"{f', Spark {spark}' if spark else ''}, code {env['git']}; median of {results['repeat']}"
    )
    print(f"Load average: start {_load(env['load_average_start'])}, end {_load(env['load_average_end'])}")
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        print(
            "  ".join(
                cell.ljust(w) if column in (0, 5) else cell.rjust(w) for column, (cell, w) in enumerate(cells)
            ).rstrip()
        )
    print("ratio: to the full load (1.) or to the full plan (2.); peak RSS: of the fresh process measured")
    print(f"Total wall time {results['total_s']:.0f} s")


def _statuses(counts: dict[str, int]) -> str:
    return " + ".join(f"{count} {status}" for status, count in sorted(counts.items(), key=lambda kv: -kv[1]))


def _ingests(ingest: dict[str, float]) -> str:
    return f"ingests {ingest['sum']:.1f} s summed, slowest {ingest['slowest']:.1f} s"


def _per_file(figures: dict[str, Any], count: int, unit: str = "file") -> str:
    return f"{figures['seconds'] / count * 1e6:.0f} us/{unit}"


def _size(size: int) -> str:
    return f"{size:,} B"


def _load(values: list[float] | tuple[float, ...]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="20 tables and 10,000 files (default 100 and 100,000)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--only", choices=["tables", "plan"], help="run one of the two benchmarks")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per figure; the median is kept (default 1)"
    )
    parser.add_argument("--s3-keys", type=int, help="keys listed in moto's S3 (default: as many as files)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-SparkSession runs of 1.")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the data goes, kept afterwards (default: a temporary directory, removed)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.s3_keys:
        scale = Scale(scale.tables, scale.rows, scale.files, args.s3_keys)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty; give a new or empty directory")
    work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="cdc-arrivals-"))
    work.mkdir(parents=True, exist_ok=True)
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)
    logging.getLogger("py4j").setLevel(logging.ERROR)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "environment": environment(),
        "quick": args.quick,
        "repeat": args.repeat,
        "scale": asdict(scale),
    }
    try:
        if args.only in (None, "tables"):
            print(f"1. {scale.tables} small tables: full load, no-op, {CHANGED_TABLES} changed", flush=True)
            results["tables"] = bench_all_tables(work / "tables", scale, args.repeat, warm=not args.no_warm)
        if args.only in (None, "plan"):
            print(f"2. plan of one table of {scale.files:,} files", flush=True)
            results["plan"] = bench_plan(work, scale, args.repeat)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["environment"]["load_average_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - started
    tables = results.get("tables")
    results["target"] = {
        "noop_over_full_below": NOOP_TARGET,
        "met": None if not tables else tables["process"]["ratio_noop_over_full"] < NOOP_TARGET,
    }
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"Results written to {args.json}")
    if results["target"]["met"] is False:
        print(f"\nTARGET MISSED: a no-op run cost more than {NOOP_TARGET} x a full load", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
