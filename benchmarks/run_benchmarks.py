"""Benchmark the pipeline on one SparkSession: full load vs 1% incremental, and the two dedup strategies.

Run from the repository root: ``make bench`` or ``.venv/bin/python -m benchmarks.run_benchmarks``.
The machine this runs on is usually shared, so the figures to compare are the RATIOS measured
within one run (both sides under the same noise); absolute seconds are printed for information.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.generate import TABLE, append_changes, change_files, full_files, generate_full
from cdc_pipeline.commit import CommitReport, TableOutcome
from cdc_pipeline.runner import RunSettings, run_local
from cdc_pipeline.spark import local_session
from cdc_pipeline.transform import DedupStrategy, latest_per_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "latest.json"
REGISTRY = (
    "table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values\n"
    f"{TABLE},id,updated_at,,Op,D\n"
)


class BenchmarkError(RuntimeError):
    """A run failed or two results disagree: the figures would be meaningless."""


MARKER = ".cdc-benchmark-workdir"


@dataclass
class Workdir:
    """The benchmark's folders under --workdir; it deletes them between rounds, so they are its own."""

    root: Path
    source: Path = field(init=False)
    registry: Path = field(init=False)
    output: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.source = self.root / "source"
        self.registry = self.root / "registry"
        self.output = self.root / "output"
        self.state = self.root / "state"

    def reset_pipeline(self) -> None:
        """Forget every run: no snapshot, no state, no incremental batch; the full load's files stay."""
        # Only the folders this script creates are removed, never --workdir itself.
        for folder in (self.output, self.state):
            shutil.rmtree(folder, ignore_errors=True)
        for path in change_files(self.source):
            path.unlink()

    def reset_all(self) -> None:
        # A mistyped --workdir (a home directory, say) must never lose its source/ or state/: only
        # an empty folder, or one this script marked as its own, is used.
        marker = self.root / MARKER
        if self.root.is_dir() and any(self.root.iterdir()) and not marker.is_file():
            raise BenchmarkError(
                f"--workdir {self.root} is not empty and was not created by this benchmark; "
                "give an empty or new directory"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        marker.touch()
        for folder in (self.source, self.registry, self.output, self.state):
            shutil.rmtree(folder, ignore_errors=True)
        self.registry.mkdir(parents=True)
        (self.registry / "registry.csv").write_text(REGISTRY, encoding="utf-8")


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------------------------
# a. Full load vs incremental, end to end through run_local
# ---------------------------------------------------------------------------------------------


def run_pipeline(spark: Any, work: Workdir, expected_load_type: str) -> tuple[float, TableOutcome]:
    settings = RunSettings(source=work.source, output=work.output, state=work.state, registry=work.registry)
    seconds, report = timed(lambda: run_local(settings, spark=spark))
    return seconds, _outcome(report, expected_load_type)


def _outcome(report: CommitReport, expected_load_type: str) -> TableOutcome:
    outcomes = [outcome for outcome in report.outcomes if outcome.table == TABLE]
    if len(outcomes) != 1 or outcomes[0].status != "succeeded":
        raise BenchmarkError(f"run {report.run_id} did not ingest {TABLE}: {report.to_json()}")
    outcome = outcomes[0]
    if outcome.load_type != expected_load_type:
        raise BenchmarkError(
            f"run {report.run_id} made a {outcome.load_type} load of {TABLE}, expected {expected_load_type}"
        )
    return outcome


def check_snapshot(work: Workdir, outcome: TableOutcome) -> None:
    """Compare the committed snapshot with DuckDB's own latest-version-per-key of every landed file.

    An incremental run that skipped rows would look fast; this independent oracle (no Spark) makes
    sure the timed runs did the whole job. Stamps are unique, so the latest version is unambiguous.
    """
    connection = duckdb.connect()
    oracle = connection.execute(
        f"""
        SELECT count(*), sum(id), sum(quantity)
        FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) AS rn
              FROM read_parquet('{work.source / TABLE}/*.parquet'))
        WHERE rn = 1 AND Op <> 'D'
        """
    ).fetchone()
    snapshot = connection.execute(
        f"SELECT count(*), sum(id), sum(quantity) FROM read_parquet('{outcome.location}/*.parquet')"
    ).fetchone()
    connection.close()
    if oracle != snapshot or outcome.rows_written != (snapshot or (None,))[0]:
        raise BenchmarkError(
            f"snapshot {outcome.location} disagrees with DuckDB: (rows, sum id, sum quantity) = {snapshot}, "
            f"expected {oracle}; report says {outcome.rows_written} rows written"
        )


def bench_pipeline(spark: Any, work: Workdir, rows: int, repeat: int) -> dict[str, Any]:
    """Per round, from a fresh state: time a full load, land 1% of changes, time the incremental run.

    Round 0 is a warm-up (JIT, class loading, Parquet reader caches) and is not counted. Every
    round lands the same batch, so the timed rounds repeat the same work.
    """
    batch_rows = max(1, rows // 100)
    rounds: list[dict[str, Any]] = []
    cold: dict[str, float] = {}
    for round_index in range(repeat + 1):
        work.reset_pipeline()
        full_s, full = run_pipeline(spark, work, "full")
        check_snapshot(work, full)
        landed = append_changes(work.source, batch=1, rows=batch_rows)
        incremental_s, incremental = run_pipeline(spark, work, "incremental")
        check_snapshot(work, incremental)
        label = "warm-up" if round_index == 0 else f"round {round_index}/{repeat}"
        print(
            f"  {label:>11}: full {full_s:6.1f} s ({full.rows_read:,} read) | incremental "
            f"{incremental_s:6.1f} s ({incremental.rows_read:,} read) | ratio {incremental_s / full_s:.3f}",
            flush=True,
        )
        if round_index == 0:
            # Kept apart, not in the medians: a Glue job starts a fresh JVM every run, so this is
            # closer to what one production run pays than the warm medians are.
            cold = {"full_s": full_s, "incremental_s": incremental_s}
            continue
        rounds.append(
            {
                "full_s": full_s,
                "incremental_s": incremental_s,
                "ratio": incremental_s / full_s,
                "full": {**_outcome_figures(full), "snapshot_rows_read": 0},
                # rows_read counts the source rows only; the merge also reads the whole previous
                # snapshot, which the full load of this round wrote.
                "incremental": {**_outcome_figures(incremental), "snapshot_rows_read": full.rows_written},
                "landed": {
                    "rows": landed.rows,
                    "updates": landed.updates,
                    "inserts": landed.inserts,
                    "deletes": landed.deletes,
                },
            }
        )
    full_median = statistics.median(r["full_s"] for r in rounds)
    incremental_median = statistics.median(r["incremental_s"] for r in rounds)
    return {
        "full_s": full_median,
        "incremental_s": incremental_median,
        "ratio_incremental_over_full": incremental_median / full_median,
        "ratio_per_round_median": statistics.median(r["ratio"] for r in rounds),
        "cold_warm_up": cold,
        "batch_rows": batch_rows,
        "rounds": rounds,
    }


def _outcome_figures(outcome: TableOutcome) -> dict[str, Any]:
    return {
        "rows_read": outcome.rows_read,
        "rows_written": outcome.rows_written,
        "ingest_duration_s": outcome.duration_s,  # the ingest alone, as the manifest records it
        "watermark_before": outcome.watermark_before,
        "watermark_after": outcome.watermark_after,
    }


# ---------------------------------------------------------------------------------------------
# b. Dedup strategies
# ---------------------------------------------------------------------------------------------


def bench_dedup(spark: Any, work: Workdir, repeat: int) -> dict[str, Any]:
    """latest_per_key AGGREGATE vs WINDOW on the full load's rows, each run to completion.

    The input is cached first, as ingest caches its batch before deduplicating, so the figures
    are the dedup's cost and not the Parquet scan's. Runs alternate between the strategies so a
    burst of noise on the shared machine hits both alike.
    """
    from pyspark.sql import functions as F

    source = spark.read.parquet(*(str(path) for path in full_files(work.source))).persist()
    try:
        input_rows = source.count()
        distinct_keys = source.select("id").distinct().count()
        results = {
            strategy: latest_per_key(source, primary_key=["id"], ordering=["updated_at"], strategy=strategy)
            for strategy in DedupStrategy
        }
        operators = {strategy: _operators(result) for strategy, result in results.items()}

        fingerprints = {}
        for strategy, result in results.items():
            row = result.agg(
                F.count(F.lit(1)).alias("rows"),
                # decimal(38,0): a sum of 200k 64-bit hashes would overflow a long.
                F.sum(F.xxhash64(*result.columns).cast("decimal(38,0)")).alias("hash_sum"),
            ).first()
            assert row is not None  # an aggregate without grouping always returns one row
            fingerprints[strategy] = (row["rows"], row["hash_sum"])
        if len(set(fingerprints.values())) != 1 or fingerprints[DedupStrategy.AGGREGATE][0] != distinct_keys:
            raise BenchmarkError(
                f"dedup strategies disagree: {fingerprints} (rows, sum of xxhash64); input has "
                f"{distinct_keys} distinct keys"
            )

        def run(strategy: DedupStrategy) -> float:
            seconds, _ = timed(lambda: results[strategy].write.format("noop").mode("overwrite").save())
            return seconds

        for strategy in DedupStrategy:  # warm-up, not counted
            run(strategy)
        samples: dict[DedupStrategy, list[float]] = {strategy: [] for strategy in DedupStrategy}
        for round_index in range(repeat):
            for strategy in DedupStrategy:
                samples[strategy].append(run(strategy))
            print(
                f"  round {round_index + 1}/{repeat}: "
                + " | ".join(f"{s.value} {samples[s][-1]:5.2f} s" for s in DedupStrategy),
                flush=True,
            )
    finally:
        source.unpersist()

    aggregate_s = statistics.median(samples[DedupStrategy.AGGREGATE])
    window_s = statistics.median(samples[DedupStrategy.WINDOW])
    return {
        "input_rows": input_rows,
        "distinct_keys": distinct_keys,
        "result_rows": fingerprints[DedupStrategy.AGGREGATE][0],
        "hash_sum": str(fingerprints[DedupStrategy.AGGREGATE][1]),
        "aggregate_s": aggregate_s,
        "window_s": window_s,
        "ratio_window_over_aggregate": window_s / aggregate_s,
        "samples": {strategy.value: values for strategy, values in samples.items()},
        "physical_operators": {strategy.value: names for strategy, names in operators.items()},
    }


# The operators that decide a dedup's cost: which aggregation Spark picked, and whether the window
# got the Spark 3.5 per-partition top-1 (WindowGroupLimit) before its shuffle.
_OPERATORS = (
    "HashAggregate",
    "ObjectHashAggregate",
    "SortAggregate",
    "WindowGroupLimit",
    "Window",
    "Sort",
    "Exchange",
)


def _operators(df: Any) -> list[str]:
    """Physical operator names of ``df``'s plan, outermost first, e.g. for the summary line."""
    plan = df._jdf.queryExecution().executedPlan().toString()
    names = []
    for line in plan.splitlines():
        token = line.lstrip(" +-:").split(" ", 1)[0].split("(", 1)[0]
        if token in _OPERATORS:
            names.append(token)
    return names


# ---------------------------------------------------------------------------------------------
# Environment and report
# ---------------------------------------------------------------------------------------------


def environment(spark: Any) -> dict[str, Any]:
    import pyarrow

    memory_gib = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            memory_gib = round(int(meminfo.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    conf = spark.sparkContext.getConf()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "spark": spark.version,
        "master": spark.sparkContext.master,
        "default_parallelism": spark.sparkContext.defaultParallelism,
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        "driver_memory": conf.get("spark.driver.memory", None),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
        "git": _git_revision(),
    }


def _git_revision() -> str | None:
    # The code under test is edited concurrently: record which revision (and whether it was dirty).
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cdc_pipeline"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}{' (cdc_pipeline modified)' if dirty else ''}"


def print_summary(results: dict[str, Any]) -> None:
    env, data = results["environment"], results["data"]
    print()
    print(
        f"Environment: Spark {env['spark']} {env['master']} ({env['default_parallelism']} task slots, "
        f"{env['shuffle_partitions']} shuffle partitions), {env['cores']} cores, {env['memory_gib']} GiB, "
        f"Python {env['python']}, code {env['git']}"
    )
    print(f"Load average: start {_load(env['load_average_start'])}, end {_load(env['load_average_end'])}")
    print(
        f"Data: {data['rows']:,} change rows over {data['keys']:,} keys in {data['files']} files, "
        f"generated in {data['generate_s']:.1f} s; incremental batch {data['batch_rows']:,} rows"
    )
    repeat = results["repeat"]
    pipeline = results.get("pipeline")
    if pipeline:
        last = pipeline["rounds"][-1]
        print()
        print(f"a. Pipeline end to end (run_local: plan, ingest, commit), median of {repeat}")
        print(
            f"   {'':<26}{'seconds':>9}{'source rows read':>18}{'snapshot rows read':>20}{'rows written':>14}"
        )
        for label, seconds, figures in (
            ("full load", pipeline["full_s"], last["full"]),
            ("incremental (1% landed)", pipeline["incremental_s"], last["incremental"]),
        ):
            print(
                f"   {label:<26}{seconds:>9.2f}{figures['rows_read']:>18,}"
                f"{figures['snapshot_rows_read']:>20,}{figures['rows_written']:>14,}"
            )
        print(f"   {'ratio incremental / full':<26}{pipeline['ratio_incremental_over_full']:>9.3f}")
        cold = pipeline["cold_warm_up"]
        print(
            f"   (cold first run in a fresh JVM, not in the medians: full {cold['full_s']:.2f} s, "
            f"incremental {cold['incremental_s']:.2f} s)"
        )
    dedup = results.get("dedup")
    if dedup:
        print()
        print(
            f"b. Dedup latest_per_key on {dedup['input_rows']:,} cached rows -> "
            f"{dedup['result_rows']:,} keys (noop sink), median of {repeat}"
        )
        print(f"   {'aggregate':<32}{dedup['aggregate_s']:>9.2f}")
        print(f"   {'window':<32}{dedup['window_s']:>9.2f}")
        print(f"   {'ratio window / aggregate':<32}{dedup['ratio_window_over_aggregate']:>9.3f}")
        for strategy, names in dedup["physical_operators"].items():
            print(f"   plan {strategy}: {' <- '.join(names)}")
    print(f"\nTotal wall time {results['total_s']:.0f} s")


def _load(values: list[float] | tuple[float, ...]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="change rows of the full load (default 1M)"
    )
    parser.add_argument("--keys", type=int, default=None, help="distinct keys (default rows / 5)")
    parser.add_argument("--files", type=int, default=8, help="Parquet files of the full load (default 8)")
    parser.add_argument("--workdir", type=Path, default=HERE / "data", help="default benchmarks/data")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the median is kept")
    parser.add_argument("--only", choices=["pipeline", "dedup"], help="run one of the two benchmarks")
    parser.add_argument(
        "--json", action="store_true", help=f"also write the results to {RESULTS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    if args.rows < 100 or args.repeat < 1:
        parser.error("--rows must be at least 100 and --repeat at least 1")
    keys = args.keys or args.rows // 5

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The plan warns "no committed tracker: full load" on every full run: expected here.
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)
    logging.getLogger("py4j").setLevel(logging.ERROR)

    started = time.perf_counter()
    work = Workdir(args.workdir)
    try:
        work.reset_all()
    except BenchmarkError as exc:
        parser.error(str(exc))
    generate_s, landed = timed(lambda: generate_full(work.source, args.rows, keys, args.files))
    print(
        f"Generated {landed.rows:,} rows in {len(landed.files)} files under {work.source / TABLE} "
        f"in {generate_s:.1f} s",
        flush=True,
    )

    # Spark's console progress bar would garble the table; it can only be turned off before the
    # JVM starts, and local_session() leaves it on. A user's own PYSPARK_SUBMIT_ARGS wins.
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell")
    spark = local_session()
    results: dict[str, Any] = {
        "environment": environment(spark),
        "repeat": args.repeat,
        "data": {
            "rows": args.rows,
            "keys": keys,
            "files": args.files,
            "generate_s": generate_s,
            "batch_rows": max(1, args.rows // 100),
            "ops": {"inserts": landed.inserts, "updates": landed.updates, "deletes": landed.deletes},
        },
    }
    try:
        if args.only in (None, "pipeline"):
            print("\na. Pipeline: full load vs incremental (1% changed), one warm-up round first", flush=True)
            results["pipeline"] = bench_pipeline(spark, work, args.rows, args.repeat)
        if args.only in (None, "dedup"):
            print("\nb. Dedup: AGGREGATE vs WINDOW, one warm-up run each first", flush=True)
            results["dedup"] = bench_dedup(spark, work, args.repeat)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    results["environment"]["load_average_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - started
    print_summary(results)
    if args.json:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"Results written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
