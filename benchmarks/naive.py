"""The naive baseline: the original single Glue script's logic, re-implemented for benchmarks only.

What the original Glue script's documentation describes, for one table, as one PySpark
process per run (each Glue run is a fresh JVM):

1. read the tracker (a small JSON file: the last processed ``updated_at`` and where the previous
   output is); no tracker, or ``--load-type full``, means a full load;
2. read the whole table; on an incremental run keep the rows with ``updated_at`` strictly after the
   last processed timestamp;
3. deduplicate: ``row_number() over (partition by key order by updated_at desc) = 1``;
4. on an incremental run, union the result with the previous output and deduplicate again;
5. rewrite the whole output, to a new folder (Spark cannot overwrite the folder it reads);
6. update the tracker with the greatest ``updated_at`` read (a second pass over the new rows).

Faithful on purpose, including what the product fixes: no delete handling (a key whose latest
version is a delete stays in the output as that row), and a row landing late with a stamp at or
before the tracker is never read. Locally it runs on the product's own Spark settings
(``cdc_pipeline.spark.local_session``), so a comparison measures the logic, not the configuration.
Never import this from ``cdc_pipeline``.

Run: ``python -m benchmarks.naive --table PATH --output DIR --tracker FILE [--load-type full]``; it
prints what it did as one JSON object. As an AWS Glue job script, pass ``s3://`` locations and
``--session glue`` (Glue's own session; the tracker is read and written with boto3).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

TIMESTAMP_FORMAT = "yyyy-MM-dd HH:mm:ss.SSSSSS"  # in the session time zone, UTC


def latest_per_key(df: Any, key: list[str], ordering: str) -> Any:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy(*key).orderBy(F.col(ordering).desc())
    return df.withColumn("_rn", F.row_number().over(window)).filter(F.col("_rn") == 1).drop("_rn")


def session(kind: str) -> Any:
    if kind == "local":
        from cdc_pipeline.spark import local_session

        return local_session()
    from pyspark.sql import SparkSession

    from cdc_pipeline.spark import configure

    spark = SparkSession.builder.getOrCreate()
    configure(spark)  # UTC and microsecond timestamps, as the product's Glue job sets them
    return spark


def run(
    table: str,
    output: str,
    tracker_location: str,
    key: list[str],
    ordering: str,
    *,
    full: bool,
    session_kind: str,
) -> dict[str, Any]:
    """One run of the original script's logic for one table; what it did, as JSON-ready figures."""
    from pyspark.sql import functions as F

    from cdc_pipeline.glue_job import storage_for

    started = time.perf_counter()
    storage = storage_for(tracker_location)
    tracker = None if full else storage.read_json(tracker_location)
    source = session(session_kind).read.parquet(table)
    if ordering not in source.columns:
        raise SystemExit(f"{table} has no column {ordering!r}: the original script skips CDC for it")
    if tracker is None:
        batch = source
        latest = latest_per_key(batch, key, ordering)
    else:
        # A string literal cast in the session time zone: Spark folds it to a constant and pushes
        # the comparison down to the Parquet reader, as the original's filter on the catalog table.
        since = F.lit(tracker["last_processed"]).cast("timestamp")
        batch = source.filter(F.col(ordering) > since)
        previous = source.sparkSession.read.parquet(tracker["output"])
        latest = latest_per_key(latest_per_key(batch, key, ordering).unionByName(previous), key, ordering)

    runs = (tracker or {}).get("runs", 0) + 1
    target = f"{output.rstrip('/')}/run-{runs:04d}"
    latest.write.mode("overwrite").parquet(target)
    newest = batch.agg(F.date_format(F.max(ordering), TIMESTAMP_FORMAT).alias("newest")).first()
    last_processed = (newest and newest["newest"]) or (tracker or {}).get("last_processed")
    state = {"last_processed": last_processed, "output": target, "runs": runs}
    storage.write_json(tracker_location, state)
    return {
        "load_type": "full" if tracker is None else "incremental",
        "previous_output": tracker["output"] if tracker else None,
        **state,
        "seconds_in_script": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="the table's folder of Parquet files (or s3:// URI)")
    parser.add_argument("--output", required=True, help="each run writes a new folder in it")
    parser.add_argument("--tracker", required=True, help="the tracker JSON file (or s3:// URI)")
    parser.add_argument("--primary-key", default="id", help="comma-separated key columns (default id)")
    parser.add_argument("--ordering", default="updated_at", help="the timestamp column (default updated_at)")
    parser.add_argument("--load-type", choices=["full", "incremental"], default="incremental")
    parser.add_argument("--session", choices=["local", "glue"], default="local", help="default local[*]")
    # Glue adds arguments of its own (--JOB_ID, --JOB_RUN_ID, ...): ignored.
    args, _glue_arguments = parser.parse_known_args(argv)
    key = [column.strip() for column in args.primary_key.split(",") if column.strip()]
    full = args.load_type == "full"
    result = run(
        args.table, args.output, args.tracker, key, args.ordering, full=full, session_kind=args.session
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
