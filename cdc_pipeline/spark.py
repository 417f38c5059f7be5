"""The SparkSession settings every ingest relies on, in one place for local runs, tests and Glue."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

from cdc_pipeline.errors import ConfigurationError, JavaNotFoundError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession

# Watermark literals and maxima are computed on the UTC wall clock (see transform.py), and Parquet
# timestamps are written as INT64 microseconds, which Athena, DuckDB and pyarrow all read (Spark's
# INT96 default is deprecated and read inconsistently).
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
    # Partition folder values (code=007) stay the strings they are, not guessed numbers or dates.
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    # ZSTD: files 2.6x smaller than Snappy's at the same write and scan time (benchmarks/README.md);
    # Athena bills by bytes scanned. Athena, DuckDB and pyarrow read it.
    "spark.sql.parquet.compression.codec": "zstd",
    # Shuffle output coalesced towards ~128 MiB partitions, so output files of about that size.
    "spark.sql.adaptive.advisoryPartitionSizeInBytes": "128m",
}
LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    # A snapshot folder holds exactly its Parquet files: no _SUCCESS marker, no .crc checksum files.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.hadoop.fs.file.impl.disable.cache": "true",
    "spark.hadoop.parquet.enable.summary-metadata": "false",
    "spark.driver.memory": "4g",
}
# Spark's console output, off unless asked for (--verbose): its progress bars and its log4j lines,
# Java traces included, would bury the run's progress and report. The log4j configuration must be
# given to the JVM as it starts: setLogLevel comes too late for the start-up lines.
QUIET_LOG4J = Path(__file__).with_name("log4j2-quiet.properties")
QUIET_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}",
}


def ensure_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={java_home} holds no bin/java" if java_home else "no java on PATH"
        raise JavaNotFoundError(
            f"PySpark needs Java 17 and none was found ({where}). Install it, e.g. "
            "`sudo apt-get install openjdk-17-jre-headless` or `brew install openjdk@17`, or fix JAVA_HOME"
        )


def local_session(verbose: bool = False) -> SparkSession:
    """A ``local[*]`` session for the local runner and the tests; reuses an active session.

    Spark prints nothing on the console unless ``verbose`` (which takes effect when this call starts
    the session). Starting it leaves the process's SIGINT handler as it was: SparkContext would put
    its own in place, which raises KeyboardInterrupt wherever the main thread is.
    """
    ensure_java()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        configure(active)
        return active
    builder = SparkSession.builder.master("local[*]").appName("cdc-pipeline")
    for key, value in {**LOCAL_CONF, **({} if verbose else QUIET_CONF), **REQUIRED_CONF}.items():
        builder = builder.config(key, value)
    try:
        with _sigint_handler_kept():
            session = builder.getOrCreate()
    except PySparkRuntimeError as exc:
        raise ConfigurationError(
            f"Spark could not start ({exc}); check that Java 17 runs: `java -version`"
        ) from exc
    session.sparkContext.setLogLevel("WARN" if verbose else "OFF")
    return session


@contextmanager
def _sigint_handler_kept() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread sets handlers, SparkContext's included
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def configure(session: SparkSession) -> None:
    """Apply the settings ingest relies on to a session built elsewhere (e.g. by Glue)."""
    for key, value in REQUIRED_CONF.items():
        session.conf.set(key, value)
    session.sparkContext._jsc.hadoopConfiguration().set(
        "mapreduce.fileoutputcommitter.marksuccessfuljobs", "false"
    )


def check_session(session: SparkSession) -> None:
    zone = session.conf.get("spark.sql.session.timeZone")
    if zone != "UTC":
        raise ConfigurationError(
            f"Spark session time zone is {zone!r}; ingest needs UTC to keep watermarks exact. Build the "
            "session with cdc_pipeline.spark.local_session() or call cdc_pipeline.spark.configure()"
        )


# Spark globs every path it reads that holds one of these (Hadoop's glob syntax); a table named
# pv[1] would otherwise be read from pv1's folder.
GLOB_CHARACTERS = frozenset("\\*?[]{}")
# Spark's own reader option (DataSource.GLOB_PATHS_KEY, Spark 3.1 and later) to take paths literally.
NO_GLOBBING = {"__globPaths__": "false"}
_SCHEME_AND_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")


def escape_glob(path: str) -> str:
    """``path`` as a glob pattern that matches exactly itself (Hadoop's ``\\`` escapes)."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


def reads_alone(path: str) -> bool:
    """Whether Spark must read ``path`` in a read of its own, with globbing off.

    A path holding a glob character is otherwise escaped and globbed; but Hadoop's globber builds
    each segment below the scheme as a path of its own, and a segment holding a colon (``a:b``)
    then parses as a URI scheme: "Relative path in absolute URI". With globbing off, Spark 3.5
    reads every path of the read once for each unglobbed path in it
    (``DataSource.checkAndGlobPathIfNecessary``): such a path is safe only alone.
    """
    return any(c in GLOB_CHARACTERS for c in path) and ":" in _SCHEME_AND_AUTHORITY.sub("", path, count=1)


def literal_groups(paths: Sequence[str]) -> list[list[str]]:
    """``paths`` in groups that :func:`load_literally` reads each in one read: every path that can
    share a read, then each path that must be read alone (:func:`reads_alone`)."""
    shared = [path for path in paths if not reads_alone(path)]
    return ([shared] if shared else []) + [[path] for path in paths if reads_alone(path)]


def load_literally(reader: DataFrameReader, paths: Sequence[str]) -> DataFrame:
    """``reader.load`` of exactly these files or folders (one of :func:`literal_groups`' groups),
    never taken as glob patterns, whatever characters they hold."""
    if len(paths) == 1 and reads_alone(paths[0]):
        return reader.options(**NO_GLOBBING).load(paths[0])
    if any(reads_alone(path) for path in paths):
        raise ValueError(f"these paths cannot share one read: {list(paths)}; read literal_groups(paths)")
    return reader.load([escape_glob(path) for path in paths])


def read_parquet(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """The Parquet files or folders ``paths`` (snapshots, tombstones: what the pipeline wrote),
    read literally; several reads are united by column name."""
    if not paths:
        raise ValueError("no path to read")
    frames = [load_literally(spark.read.format("parquet"), group) for group in literal_groups(paths)]
    return reduce(lambda left, right: left.unionByName(right, allowMissingColumns=True), frames)
