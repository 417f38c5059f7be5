"""Benchmark the Plan Lambda's task on a Glue database of 10,000 tables, in moto.

Run from the repository root: ``.venv/bin/python -m benchmarks.plan_scale [--tables N] [--json PATH]``.

The landing zone: N Glue tables (Parquet, ``s3://<raw bucket>/raw/<table>/``) of one S3 object
each, and a registry CSV keying every table on ``id``. Two plans are measured, each by the
``plan_task`` the Plan Lambda runs, on the clients the Lambda builds (``aws_client``):

1. **full**: the first run; every table gets a work item.
2. **incremental**: once the first run is committed (by ``commit_task``, over stand-in manifests)
   and 5% of the tables got a new object: those get a work item, the rest are listed unchanged.

Each plan runs up to four times. *Timed*: wall and CPU time (moto's apart), peak RSS (VmHWM, reset
before the plan), the S3 and Glue calls and how many were in flight at once. *Emulated latency*
(``--emulate-latency low|high``): the same with each moto answer held back as long as AWS would
take, so the threads wait as they would on AWS. *Memory*: the peak of Python's allocations
(tracemalloc), and what is held when plan.json is written. *Profile*: cProfile, with the plan's
thread pools run inline so that one profiler sees every call, to split the time between moto,
botocore and the pipeline's own code.

moto answers in-process, under the GIL, with costs of its own (each ListObjectsV2 scans the whole
bucket), so the wall times are moto's, not AWS's. Its GetTables is made to answer in pages of 100
tables with a NextToken, as AWS does (``--get-tables-page``; moto alone answers every table at once),
so the plan reads the catalog page by page as it would on AWS. What carries over to AWS is the
call counts, the sizes and the client's CPU time (the pipeline's plus botocore's); the projection
to AWS printed at the end combines them with the latencies assumed in ``AwsLatency``.

At 10,000 tables on 2 busy cores the whole benchmark takes about 25 minutes, mostly the traced and
profiled passes; ``--no-memory --no-profile`` takes about 5.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import sysconfig
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import boto3

import cdc_pipeline.plan
import cdc_pipeline.stages
from cdc_pipeline.aws.clients import (
    COMMIT_GLUE_THREADS,
    COMMIT_S3_THREADS,
    PLAN_GLUE_THREADS,
    PLAN_S3_THREADS,
    aws_client,
)
from cdc_pipeline.aws.glue import GlueCatalog, GlueOutputCatalog
from cdc_pipeline.aws.s3 import S3RegistrySource, S3StateStore, S3Storage, parse_s3_uri
from cdc_pipeline.commit import IO_THREADS
from cdc_pipeline.manifest import SUCCEEDED, Manifest
from cdc_pipeline.packs import DEFAULT_PACK_BYTES, MIB
from cdc_pipeline.packs import work_items as packs_work_items
from cdc_pipeline.plan import PLAN_THREADS, WorkItem
from cdc_pipeline.settings import CommitSettings, PlanSettings
from cdc_pipeline.stages import EARLY_WRITE_THREADS
from cdc_pipeline.tasks import commit_task, plan_task

REGION = "eu-west-1"
RAW_BUCKET = "cdc-plan-scale-raw"  # the landing zone: only the tables' files, as DMS writes them
PIPELINE_BUCKET = "cdc-plan-scale"  # registry, state, run folders, snapshots
SOURCE_DATABASE = "raw"
OUTPUT_DATABASE = "current"
FIRST_FILE = "LOAD00000001.parquet"
NEW_FILE = "20261231-235959000.parquet"
CHANGED_SHARE = 0.05
STEP_FUNCTIONS_PAYLOAD_LIMIT = 256 * 1024
LAMBDA_TIMEOUT_S = 900
LAMBDA_MEMORY_MIB = 2048
GLUE_GET_TABLES_PAGE = 100  # the most tables one GetTables page holds on AWS (moto: all of them)
COLUMNS = [
    {"Name": "id", "Type": "bigint"},
    {"Name": "name", "Type": "string"},
    {"Name": "updated_at", "Type": "timestamp"},
]
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
# Where the code that allocated or spent the time lives, by a fragment of its file's path.
STDLIB = sysconfig.get_paths()["stdlib"]
SDK_PACKAGES = ("/botocore/", "/boto3/", "/urllib3/", "/s3transfer/", "/dateutil/", "/jmespath/")


class BenchmarkError(RuntimeError):
    """A plan did something else than it should: its figures would be meaningless."""


@dataclass(frozen=True)
class AwsLatency:
    """What one call is assumed to take on AWS from a Lambda in the same region, low and high.

    S3 figures are typical first-byte latencies of small requests; a GetTables page of 100 full
    table definitions is larger, and Glue's control plane slower than S3's, hence its range.
    """

    s3_list_s: tuple[float, float] = (0.020, 0.050)
    s3_get_s: tuple[float, float] = (0.015, 0.040)
    s3_put_s: tuple[float, float] = (0.025, 0.080)
    glue_get_tables_page_s: tuple[float, float] = (0.150, 0.500)
    s3_throughput_mib_s: float = 50.0  # one PutObject/GetObject stream of a large document


# ---------------------------------------------------------------------------------------------
# The landing zone
# ---------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """The moto landing zone and the ports the Plan and Commit Lambdas build over it."""

    names: list[str]
    plan_s3: Any
    plan_glue: Any
    commit_s3: Any
    commit_glue: Any
    plan_settings: PlanSettings
    commit_settings: CommitSettings

    def plan(self, event: dict[str, Any]) -> dict[str, Any]:
        """What the Plan Lambda's handler does, on its clients."""
        settings = self.plan_settings
        return plan_task(
            event,
            settings,
            catalog=GlueCatalog(settings.source_database, client=self.plan_glue, s3_client=self.plan_s3),
            registry_source=S3RegistrySource(settings.registry_prefix, client=self.plan_s3),
            state_store=S3StateStore(settings.cdc_path, client=self.plan_s3),
            storage=S3Storage(client=self.plan_s3),
        )

    def commit(self, planned: dict[str, Any]) -> dict[str, Any]:
        """What the Commit Lambda's handler does, on its clients."""
        settings = self.commit_settings
        return commit_task(
            {"plan": planned, "map_result": {}},
            settings,
            state_store=S3StateStore(settings.cdc_path, client=self.commit_s3),
            storage=S3Storage(client=self.commit_s3),
            output_catalog=GlueOutputCatalog(settings.output_database, client=self.commit_glue),
        )


def table_names(count: int) -> list[str]:
    return [f"table_{index:05d}" for index in range(count)]


def changed_tables(names: list[str]) -> list[str]:
    """``CHANGED_SHARE`` of the tables, spread evenly over the listing."""
    step = max(1, round(1 / CHANGED_SHARE))
    return names[step // 2 :: step]


def _s3_backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _glue_backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.glue.models import glue_backends

    return glue_backends[DEFAULT_ACCOUNT_ID][REGION]


def land(count: int, session: boto3.session.Session, pack_bytes: int = DEFAULT_PACK_BYTES) -> Deployment:
    """``count`` Glue tables of one S3 object each, and the registry (inside ``mock_aws``).

    Tables and objects go straight into moto's backends: 10,000 CreateTable and PutObject calls
    through boto3 would take minutes, and only the plan is measured.
    """
    names = table_names(count)
    setup_s3 = session.client("s3")
    for bucket in (RAW_BUCKET, PIPELINE_BUCKET):
        setup_s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    setup_glue = session.client("glue")
    for database in (SOURCE_DATABASE, OUTPUT_DATABASE):
        setup_glue.create_database(DatabaseInput={"Name": database})
    s3, glue = _s3_backend(), _glue_backend()
    for name in names:
        glue.create_table(
            SOURCE_DATABASE,
            name,
            {
                "Name": name,
                "TableType": "EXTERNAL_TABLE",
                "Parameters": {"classification": "parquet"},
                "StorageDescriptor": {
                    "Columns": COLUMNS,
                    "Location": f"s3://{RAW_BUCKET}/raw/{name}/",
                    "InputFormat": PARQUET_INPUT,
                    "OutputFormat": PARQUET_OUTPUT,
                    "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE},
                },
            },
        )
        # The content is never read: the plan lists files, it does not open them.
        s3.put_object(RAW_BUCKET, f"raw/{name}/{FIRST_FILE}", b"PAR1")
    registry = "table_name,primary_key\n" + "".join(f"{name},id\n" for name in names)
    setup_s3.put_object(Bucket=PIPELINE_BUCKET, Key="registry/tables-1.csv", Body=registry.encode())
    plan_settings = PlanSettings(
        source_database=SOURCE_DATABASE,
        output_path=f"s3://{PIPELINE_BUCKET}/current",
        cdc_path=f"s3://{PIPELINE_BUCKET}/state",
        registry_prefix=f"s3://{PIPELINE_BUCKET}/registry",
        pack_bytes=pack_bytes,
    )
    return Deployment(
        names=names,
        plan_s3=aws_client("s3", threads=PLAN_S3_THREADS, session=session),
        plan_glue=aws_client("glue", threads=PLAN_GLUE_THREADS, session=session),
        commit_s3=aws_client("s3", threads=COMMIT_S3_THREADS, session=session),
        commit_glue=aws_client("glue", threads=COMMIT_GLUE_THREADS, session=session),
        plan_settings=plan_settings,
        commit_settings=CommitSettings(
            output_path=plan_settings.output_path,
            cdc_path=plan_settings.cdc_path,
            output_database=OUTPUT_DATABASE,
            retained_snapshots=2,
        ),
    )


@contextlib.contextmanager
def get_tables_in_pages(page: int) -> Iterator[None]:
    """moto's GetTables answering ``page`` tables at a time with a NextToken, as AWS does (moto
    ignores MaxResults and answers every table at once); ``page`` 0 leaves moto as it is."""
    if not page:
        yield
        return
    from moto.core.responses import ActionResult
    from moto.glue.responses import GlueResponse

    def paged(response: Any) -> Any:
        tables = response.glue_backend.get_tables(
            response.parameters.get("DatabaseName"), response.parameters.get("Expression")
        )
        start = int(response.parameters.get("NextToken") or 0)
        end = start + min(page, int(response.parameters.get("MaxResults") or page))
        result: dict[str, Any] = {"TableList": [table.as_dict() for table in tables[start:end]]}
        if end < len(tables):
            result["NextToken"] = str(end)
        return ActionResult(result)

    with mock.patch.object(GlueResponse, "get_tables", paged):
        yield


def land_new_files(names: list[str]) -> None:
    for name in names:
        _s3_backend().put_object(RAW_BUCKET, f"raw/{name}/{NEW_FILE}", b"PAR1")


def _object(location: str) -> Any:
    bucket, key = parse_s3_uri(location)
    return _s3_backend().get_object(bucket, key)


def work_items(planned: dict[str, Any]) -> list[WorkItem]:
    """The plan's work items, whole, as the Glue runs read them: from the item and pack files that
    items.json names (plan.json holds them without their file lists). Read from moto's backend, so
    no API call is counted."""
    runs = json.loads(_object(f"s3://{planned['items_bucket']}/{planned['items_key']}").value)
    items: list[WorkItem] = []
    for run in runs:
        items += packs_work_items(json.loads(_object(run["work_item_location"]).value))
    return items


def ingest_stand_in(items: list[WorkItem]) -> None:
    """What the Glue job leaves when a table's ingest succeeds: its manifest (the snapshot is not read)."""
    s3 = _s3_backend()
    for item in items:
        manifest = Manifest(
            run_id=item.run_id,
            table=item.table,
            status=SUCCEEDED,
            load_type=item.load_type,
            mode=item.mode,
            rows_read=1,
            rows_written=1,
            rows_set_aside=0,
            null_watermark_rows=0,
            watermark_column=item.watermark_column,
            watermark_before=item.last_watermark,
            watermark_after="2026-12-31T00:00:00.000001Z",
            schema=[{"name": c["Name"], "type": c["Type"]} for c in COLUMNS],
            output_location=item.output_location,
            quarantine_location=None,
            started_at="2026-12-31T00:00:00+00:00",
            duration_s=1.0,
            primary_key=item.primary_key,
            incremental_by=item.incremental_by,
            files_read=None if item.files is None else len(item.files),
            cursor=item.next_cursor,
            bytes_written=4096,
        )
        bucket, key = parse_s3_uri(item.manifest_location)
        s3.put_object(bucket, key, json.dumps(manifest.to_json()).encode())


# ---------------------------------------------------------------------------------------------
# Measuring one plan
# ---------------------------------------------------------------------------------------------


class ApiCalls:
    """Every S3 and Glue call of the clients it watches (botocore's before-call/after-call events):
    how many of each operation, from how many threads, and how many were in flight at once.

    A call is in flight from before-call to after-call, so on moto a thread waiting for the GIL
    inside a call counts too; the emulated-latency pass shows how far the threads overlap real waits.
    """

    def __init__(self, clients: list[Any]) -> None:
        self._lock = threading.Lock()
        self.reset()
        for client in clients:
            events = client.meta.events
            events.register("before-call", self._before, unique_id=f"plan-scale-before-{id(self)}")
            events.register("after-call", self._after, unique_id=f"plan-scale-after-{id(self)}")
            events.register("after-call-error", self._after, unique_id=f"plan-scale-error-{id(self)}")

    def reset(self) -> None:
        with self._lock:
            self.operations: Counter[str] = Counter()
            self.threads: set[int] = set()
            self.in_flight = 0
            self.peak_in_flight = 0
            # Per operation: seconds in flight summed over its calls, and the time during which at
            # least one of its calls was in flight; their ratio is its mean number in flight then.
            self.busy_s: defaultdict[str, float] = defaultdict(float)
            self.occupied_s: defaultdict[str, float] = defaultdict(float)
            self._in_flight_by_operation: Counter[str] = Counter()
            self._occupied_since: dict[str, float] = {}
            # ListObjectsV2 calls started when the last GetTables page was asked for: the tables
            # whose files were listed while the catalog was still being read. PutObject calls
            # started when the last ListObjectsV2 was: work items written while tables were listed.
            self.lists_before_last_page = 0
            self.puts_before_last_list = 0

    def _before(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        operation = f"{model.service_model.service_id.hyphenize()}:{model.name}"
        started = time.perf_counter()
        context["plan_scale_call"] = (operation, started)
        with self._lock:
            self.operations[operation] += 1
            if operation == "glue:GetTables":
                self.lists_before_last_page = self.operations["s3:ListObjectsV2"]
            if operation == "s3:ListObjectsV2":
                self.puts_before_last_list = self.operations["s3:PutObject"]
            self.threads.add(threading.get_ident())
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self._in_flight_by_operation[operation] == 0:
                self._occupied_since[operation] = started
            self._in_flight_by_operation[operation] += 1

    def _after(self, context: dict[str, Any], **_: Any) -> None:
        operation, started = context.pop("plan_scale_call")
        ended = time.perf_counter()
        with self._lock:
            self.in_flight -= 1
            self.busy_s[operation] += ended - started
            self._in_flight_by_operation[operation] -= 1
            if self._in_flight_by_operation[operation] == 0:
                self.occupied_s[operation] += ended - self._occupied_since.pop(operation)

    def figures(self, wall_s: float) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": sum(self.operations.values()),
                "operations": dict(sorted(self.operations.items())),
                "calling_threads": len(self.threads),
                "peak_in_flight": self.peak_in_flight,
                "lists_before_last_get_tables_page": self.lists_before_last_page,
                "puts_before_last_list": self.puts_before_last_list,
                "mean_in_flight": sum(self.busy_s.values()) / wall_s if wall_s else 0.0,
                "mean_in_flight_by_operation": {
                    operation: self.busy_s[operation] / occupied if occupied else 1.0
                    for operation, occupied in sorted(self.occupied_s.items())
                },
                "occupied_s_by_operation": dict(sorted(self.occupied_s.items())),
            }


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def _status_mib(field_name: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(f"{field_name}:"))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5), so the next peak is the plan's own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class _InlineExecutor:
    """Stands in for ThreadPoolExecutor in the profiled pass: maps in the calling thread, so the one
    cProfile enabled there sees every call (moto serialises the threads on the GIL anyway)."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def map(self, function: Callable[..., Any], *iterables: Any) -> Iterator[Any]:
        return map(function, *iterables)

    def submit(self, function: Callable[..., Any], *arguments: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(function(*arguments))
        except Exception as exc:  # handed to the caller by result(), as a pool's future does
            done.set_exception(exc)
        return done

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


def classify(filename: str) -> str:
    """Whose code a file is: moto (the fake AWS), the AWS SDK, the pipeline, or anything else."""
    if "/moto/" in filename:
        return "moto"
    if any(package in filename for package in SDK_PACKAGES):
        return "sdk"
    if "/cdc_pipeline/" in filename:
        return "pipeline"
    if filename.startswith(STDLIB):
        return "stdlib"
    return "other"


def run_files(planned: dict[str, Any]) -> dict[str, Any]:
    """Sizes of what the plan wrote: plan.json, items.json, each work item file and each pack file
    (the work items of small tables sharing a Glue run)."""
    run_dir = planned["plan_location"].rsplit("/", 1)[0]
    bucket, items_prefix = parse_s3_uri(f"{run_dir}/items/")
    _, packs_prefix = parse_s3_uri(f"{run_dir}/packs/")
    keys = _s3_backend().get_bucket(bucket).keys
    item_sizes = sorted(key.size for name, key in keys.items() if name.startswith(items_prefix))
    pack_sizes = sorted(key.size for name, key in keys.items() if name.startswith(packs_prefix))
    items_location = f"s3://{planned['items_bucket']}/{planned['items_key']}"
    return {
        "plan_bytes": _object(planned["plan_location"]).size,
        "items_bytes": _object(items_location).size,
        "pack_files": len(pack_sizes),
        "pack_bytes_max": pack_sizes[-1] if pack_sizes else 0,
        "pack_bytes_total": sum(pack_sizes),
        "item_files": len(item_sizes),
        "item_bytes_min": item_sizes[0] if item_sizes else 0,
        "item_bytes_median": int(statistics.median(item_sizes)) if item_sizes else 0,
        "item_bytes_max": item_sizes[-1] if item_sizes else 0,
        "item_bytes_total": sum(item_sizes),
        "payload_bytes": len(json.dumps(planned).encode()),
    }


class MotoClock:
    """The CPU time moto spends answering calls: each call's thread CPU time inside moto's botocore
    hook, summed. The process's CPU time less this is the client's own (the pipeline's and botocore's),
    the part that a Lambda spends too.

    With ``latency``, each answer is also held back as long as AWS would take (``bound`` 0 for the
    low end of :class:`AwsLatency`, 1 for the high end), sleeping, so that the threads wait on the
    network as they would on AWS while moto's CPU time still competes for the GIL.
    """

    def __init__(self, latency: AwsLatency | None = None, bound: int = 1, get_tables_pages: int = 1) -> None:
        self.cpu_s = 0.0
        self.slept_s = 0.0
        self._lock = threading.Lock()
        self._latency = latency
        self._bound = bound
        self._get_tables_pages = get_tables_pages

    def delay(self, event_name: str, request: Any) -> float:
        """How long AWS would take to answer the call ``event_name`` (``before-send.s3.PutObject``)."""
        latency, bound = self._latency, self._bound
        if latency is None:
            return 0.0
        operation = event_name.rsplit(".", 1)[-1]
        body = request.body if isinstance(request.body, bytes) else b""
        transfer = len(body) / MIB / latency.s3_throughput_mib_s
        delays = {
            "ListObjectsV2": latency.s3_list_s[bound],
            "GetObject": latency.s3_get_s[bound],
            "PutObject": latency.s3_put_s[bound] + transfer,
            # moto answers every table in one page; AWS in pages of 100, one after the other.
            "GetTables": latency.glue_get_tables_page_s[bound] * self._get_tables_pages,
        }
        return delays.get(operation, latency.s3_put_s[bound])

    @contextlib.contextmanager
    def running(self) -> Iterator[MotoClock]:
        from moto.core.botocore_stubber import BotocoreStubber

        answer = BotocoreStubber.__call__
        clock = self

        def timed_answer(stubber: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return answer(stubber, event_name, request, **kwargs)
            finally:
                spent = time.thread_time() - started
                delay = clock.delay(event_name, request)
                time.sleep(delay)
                with clock._lock:
                    clock.cpu_s += spent
                    clock.slept_s += delay

        with mock.patch.object(BotocoreStubber, "__call__", timed_answer):
            yield self


def timed_plan(
    deployment: Deployment, calls: ApiCalls, clock: MotoClock | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One plan with nothing attached but the call counter and moto's clock: wall and CPU time (the
    client's apart from moto's), peak RSS, calls, sizes."""
    gc.collect()
    calls.reset()
    rss_before = rss_mib()
    peak_reset = reset_peak_rss()
    with (clock or MotoClock()).running() as moto:
        cpu, started = time.process_time(), time.perf_counter()
        planned = deployment.plan({"load_type": "incremental"})
        wall_s = time.perf_counter() - started
        cpu_s = time.process_time() - cpu
    figures = {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "moto_cpu_s": moto.cpu_s,
        "client_cpu_s": cpu_s - moto.cpu_s,
        "emulated_latency_s": moto.slept_s,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib() if peak_reset else None,
        **calls.figures(wall_s),
        **run_files(planned),
        "item_count": planned["item_count"],
        "table_count": planned["table_count"],
        "unchanged_count": planned["unchanged_count"],
    }
    return figures, planned


def traced_plan(deployment: Deployment, frames: int = 1, top: int = 12) -> dict[str, Any]:
    """One plan under tracemalloc: the peak of Python allocations, and what is held at the moment
    plan.json is written (the whole plan is in memory then, as objects and as JSON).

    One frame per allocation by default: each frame kept multiplies tracemalloc's cost (25 frames
    made a plan 30 times slower than untraced), and the line that allocated names the owner well
    enough (botocore's parser: parsed responses; json's encoder: the plan's JSON text).
    """
    held: dict[str, Any] = {}

    def at_plan_write(params: dict[str, Any], **_: Any) -> None:
        if str(params.get("Key", "")).endswith("/plan.json") and not held:
            snapshot = tracemalloc.take_snapshot()
            owners: dict[str, int] = {}
            for trace in snapshot.traces:
                owner = _owner(trace.traceback)
                owners[owner] = owners.get(owner, 0) + trace.size
            held["by_owner_mib"] = {owner: size / MIB for owner, size in sorted(owners.items())}
            held["top_lines"] = [
                {"line": _short(str(stat.traceback[0])), "mib": stat.size / MIB, "blocks": stat.count}
                for stat in snapshot.statistics("lineno")[:top]
            ]

    events = deployment.plan_s3.meta.events
    events.register("before-parameter-build.s3.PutObject", at_plan_write, unique_id="plan-scale-tracemalloc")
    gc.collect()
    tracemalloc.start(frames)
    try:
        before, _ = tracemalloc.get_traced_memory()
        started = time.perf_counter()
        deployment.plan({"load_type": "incremental"})
        wall_s = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        events.unregister("before-parameter-build.s3.PutObject", unique_id="plan-scale-tracemalloc")
    return {
        "wall_s": wall_s,
        "frames": frames,
        "traced_peak_mib": (peak - before) / MIB,
        "held_at_plan_write": held,
    }


def _owner(traceback: tracemalloc.Traceback) -> str:
    """moto if moto allocated it in any frame kept, else the SDK, the pipeline, the standard library."""
    owners = {classify(frame.filename) for frame in traceback}
    return next((owner for owner in ("moto", "sdk", "pipeline", "stdlib") if owner in owners), "other")


REPOSITORY = str(Path(__file__).resolve().parent.parent)  # this checkout, cut from profiled file names


def _short(path: str) -> str:
    for root in ("site-packages/", f"{STDLIB}/", f"{REPOSITORY}/"):
        if root in path:
            return path.split(root, 1)[1]
    return path


def profiled_plan(deployment: Deployment, top: int = 15) -> dict[str, Any]:
    """One plan under cProfile, thread pools inline: where the time goes, moto's apart."""
    profiler = cProfile.Profile()
    with (
        mock.patch.object(cdc_pipeline.plan, "ThreadPoolExecutor", _InlineExecutor),
        mock.patch.object(cdc_pipeline.stages, "ThreadPoolExecutor", _InlineExecutor),
    ):
        gc.collect()
        started = time.perf_counter()
        profiler.enable()
        try:
            deployment.plan({"load_type": "incremental"})
        finally:
            profiler.disable()
        wall_s = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]

    def cumulative(path: str, function: str) -> float:
        return sum(
            entry[3] for (file, _, name), entry in entries.items() if file.endswith(path) and name == function
        )

    total = float(stats.total_tt)  # type: ignore[attr-defined]
    api = cumulative("botocore/client.py", "_make_api_call")
    moto_s = cumulative("moto/core/botocore_stubber.py", "__call__")
    self_time: dict[str, float] = {}
    for (file, _, _), entry in entries.items():
        self_time[classify(file)] = self_time.get(classify(file), 0.0) + entry[2]

    def line(key: tuple[str, int, str], entry: tuple[Any, ...]) -> dict[str, Any]:
        file, number, name = key
        short = file.split("site-packages/")[-1].split(f"{REPOSITORY}/")[-1]
        return {
            "function": f"{short}:{number}({name})",
            "calls": entry[1],
            "tottime": entry[2],
            "cumtime": entry[3],
        }

    by_self = sorted(entries.items(), key=lambda kv: -kv[1][2])
    pipeline = [kv for kv in entries.items() if classify(kv[0][0]) == "pipeline"]
    return {
        "wall_s": wall_s,
        "profiled_s": total,
        "split_s": {"moto": moto_s, "sdk": api - moto_s, "pipeline_and_rest": total - api},
        "self_time_s": dict(sorted(self_time.items())),
        "top_self": [line(key, entry) for key, entry in by_self[:top]],
        "top_pipeline_cumulative": [
            line(key, entry) for key, entry in sorted(pipeline, key=lambda kv: -kv[1][3])[:top]
        ],
        "top_pipeline_self": [
            line(key, entry) for key, entry in sorted(pipeline, key=lambda kv: -kv[1][2])[:top]
        ],
    }


def measure_plan(
    label: str,
    deployment: Deployment,
    calls: ApiCalls,
    *,
    memory: bool,
    profile: bool,
    emulate: tuple[AwsLatency, int] | None = None,
    get_tables_page: int = GLUE_GET_TABLES_PAGE,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timed pass, then (when asked) the emulated-latency, the traced and the profiled ones;
    the timed pass's plan."""
    figures, planned = timed_plan(deployment, calls)
    print(f"  {label}: timed {figures['wall_s']:.1f} s", flush=True)
    if emulate:
        latency, bound = emulate
        # When moto answers every table in one GetTables call, that call stands for all of AWS's pages.
        pages = 1 if get_tables_page else math.ceil(len(deployment.names) / GLUE_GET_TABLES_PAGE)
        figures["emulated"], _ = timed_plan(deployment, calls, MotoClock(latency, bound, pages))
        figures["emulated"]["bound"] = ("low", "high")[bound]
        print(f"  {label}: with AWS latency emulated {figures['emulated']['wall_s']:.1f} s", flush=True)
    if memory:
        figures["memory"] = traced_plan(deployment)
        print(f"  {label}: traced {figures['memory']['wall_s']:.1f} s", flush=True)
    if profile:
        figures["profile"] = profiled_plan(deployment)
        print(f"  {label}: profiled {figures['profile']['wall_s']:.1f} s", flush=True)
    return figures, planned


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------


def check_plan(
    label: str,
    planned: dict[str, Any],
    figures: dict[str, Any],
    items: list[WorkItem],
    expected: dict[str, Any],
) -> None:
    """The plan gave exactly the expected tables a work item of the expected kind, and stayed small."""
    tables = sorted(item.table for item in items)
    problems = []
    if tables != expected["tables"]:
        problems.append(f"{len(tables)} work items, expected {len(expected['tables'])}")
    if (planned["table_count"], planned["unchanged_count"]) != (
        len(expected["tables"]),
        expected["unchanged"],
    ):
        problems.append(
            f"table_count {planned['table_count']} and unchanged_count {planned['unchanged_count']}, "
            f"expected {len(expected['tables'])} and {expected['unchanged']}"
        )
    wrong = [item.table for item in items if (item.load_type, item.files) != expected["work"]]
    if wrong:
        problems.append(f"{len(wrong)} items are not {expected['work']}, e.g. {wrong[:3]}")
    if figures["item_files"] + figures["pack_files"] != planned["item_count"]:
        problems.append(
            f"{figures['item_files']} work item and {figures['pack_files']} pack files for "
            f"{planned['item_count']} Glue runs"
        )
    if figures["payload_bytes"] >= STEP_FUNCTIONS_PAYLOAD_LIMIT:
        problems.append(f"its payload is {figures['payload_bytes']:,} B, over Step Functions' 256 KiB")
    if problems:
        raise BenchmarkError(f"{label} plan: " + "; ".join(problems))


def run(
    tables: int,
    *,
    memory: bool = True,
    profile: bool = True,
    session: boto3.session.Session | None = None,
    latency: AwsLatency | None = None,
    emulate: str | None = None,
    pack_bytes: int = DEFAULT_PACK_BYTES,
    get_tables_page: int = GLUE_GET_TABLES_PAGE,
) -> dict[str, Any]:
    """The whole scenario in a fresh moto: land, full plan, commit, 5% new files, incremental plan.

    Parameters
    ----------
    tables
        How many Glue tables (at least 20, so that 5% is a whole number of tables).
    memory, profile
        Also run each plan under tracemalloc, and under cProfile.
    session
        The boto3 session to build the clients from (its credentials are never used: moto answers).
    latency
        The AWS latencies the projection (and the emulation) assumes.
    emulate
        ``"low"`` or ``"high"``: also time each plan with moto's answers held back by the low or high
        latencies, to see how far the threads overlap the waits.
    pack_bytes
        The plan's packing of small tables into shared Glue runs (0: one run, and one work item
        file, per table).
    get_tables_page
        How many tables moto's GetTables answers a page, as AWS does (0: every table in one page,
        moto's own way and this benchmark's before the plan read the catalog in pages).

    Raises
    ------
    BenchmarkError
        When a plan gives other tables a work item than expected, or its payload is too large.
    """
    from moto import mock_aws

    latency = latency or AwsLatency()
    emulation = (latency, ("low", "high").index(emulate)) if emulate else None
    session = session or boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        region_name=REGION,
    )
    results: dict[str, Any] = {
        "tables": tables,
        "plan_threads": PLAN_THREADS,
        "io_threads": IO_THREADS,
        "early_write_threads": EARLY_WRITE_THREADS,
        "get_tables_page": get_tables_page,
        "load_average_start": os.getloadavg(),
    }
    with mock_aws(), get_tables_in_pages(get_tables_page):
        started = time.perf_counter()
        deployment = land(tables, session, pack_bytes)
        results["land_s"] = time.perf_counter() - started
        print(f"  landed {tables:,} tables in {results['land_s']:.1f} s", flush=True)
        plan_calls = ApiCalls([deployment.plan_s3, deployment.plan_glue])

        full, planned = measure_plan(
            "full plan",
            deployment,
            plan_calls,
            memory=memory,
            profile=profile,
            emulate=emulation,
            get_tables_page=get_tables_page,
        )
        items = work_items(planned)
        check_plan(
            "full",
            planned,
            full,
            items,
            {"tables": deployment.names, "unchanged": 0, "work": ("full", [FIRST_FILE])},
        )
        results["full"] = full

        ingest_stand_in(items)
        commit_calls = ApiCalls([deployment.commit_s3, deployment.commit_glue])
        started = time.perf_counter()
        committed = deployment.commit(planned)
        commit_s = time.perf_counter() - started
        if committed["succeeded_count"] != tables:
            raise BenchmarkError(
                f"the first commit succeeded {committed['succeeded_count']} of {tables} tables"
            )
        state = _object(f"{deployment.plan_settings.cdc_path}/state.json")
        results["commit"] = {
            "wall_s": commit_s,
            **commit_calls.figures(commit_s),
            "state_bytes": state.size,
            "payload_bytes": len(json.dumps(committed).encode()),
        }
        print(f"  commit of {tables:,} tables: {commit_s:.1f} s", flush=True)

        changed = changed_tables(deployment.names)
        land_new_files(changed)
        incremental, planned = measure_plan(
            "incremental plan",
            deployment,
            plan_calls,
            memory=memory,
            profile=profile,
            emulate=emulation,
            get_tables_page=get_tables_page,
        )
        check_plan(
            "incremental",
            planned,
            incremental,
            work_items(planned),
            {"tables": changed, "unchanged": tables - len(changed), "work": ("incremental", [NEW_FILE])},
        )
        results["incremental"] = {**incremental, "changed_tables": len(changed)}
    results["aws_projection"] = {
        kind: project(results[kind], tables, latency) for kind in ("full", "incremental")
    }
    results["latency_assumed"] = asdict(latency)
    results["load_average_end"] = os.getloadavg()
    return results


def project(figures: dict[str, Any], tables: int, latency: AwsLatency) -> dict[str, Any]:
    """The plan's time on AWS, low and high, from its call counts and the client's CPU time.

    Sequential: the registry and state reads, plan.json and items.json. The ``ceil(tables / 100)``
    GetTables pages follow one another; one ListObjectsV2 per table runs on ``PLAN_THREADS``
    threads, either once the last page is in (as the plan did before it read the catalog in pages)
    or, when the pass measured listings started before the last page was asked for, as each page
    arrives: then whichever is longer, the pages or the listings, bounds it. One PutObject per work
    item or pack: those the pass measured begun while tables were still listed (work items of
    tables with a Glue run of their own) run on ``EARLY_WRITE_THREADS`` beside the listings, the
    rest on ``IO_THREADS`` after them. The client's CPU (the pipeline's and botocore's, which the
    GIL serialises) is the timed pass's CPU time less moto's (``MotoClock``). Low: the CPU overlaps
    the waits entirely; high: not at all.
    """
    operations = figures["operations"]
    pages = math.ceil(tables / GLUE_GET_TABLES_PAGE)
    lists = operations.get("s3:ListObjectsV2", 0) - 1  # one lists the registry
    puts = operations.get("s3:PutObject", 0) - 2  # plan.json and items.json are written alone
    early_puts = figures.get("puts_before_last_list", 0)
    documents_mib = (figures["plan_bytes"] + figures["items_bytes"]) / MIB
    # The registry's listing comes before the catalog's: more than that one means pipelining.
    pipelined = figures.get("lists_before_last_get_tables_page", 0) > 1

    def bound(index: int) -> float:
        page_s, list_s = latency.glue_get_tables_page_s[index], latency.s3_list_s[index]
        put_s = latency.s3_put_s[index]
        if pipelined:
            last_page = min(GLUE_GET_TABLES_PAGE, lists)
            catalog_and_files = max(
                pages * page_s + last_page * list_s / PLAN_THREADS,
                page_s + lists * list_s / PLAN_THREADS,
                early_puts * put_s / EARLY_WRITE_THREADS,
            )
        else:
            catalog_and_files = (
                pages * page_s + lists * list_s / PLAN_THREADS + early_puts * put_s / IO_THREADS
            )
        return (
            2 * latency.s3_get_s[index]  # registry, state
            + latency.s3_list_s[index]  # the registry's prefix
            + catalog_and_files
            + 2 * put_s
            + documents_mib / latency.s3_throughput_mib_s
            + (puts - early_puts) * put_s / IO_THREADS
        )

    low, high = bound(0), bound(1)
    cpu = figures["client_cpu_s"]
    return {
        "get_tables_pages": pages,
        "pipelined": pipelined,
        "network_low_s": low,
        "network_high_s": high,
        "client_cpu_s": cpu,
        "low_s": max(low, cpu),
        "high_s": high + cpu,
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import moto

    from benchmarks.run_benchmarks import _git_revision

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "moto": moto.__version__,
        "git": _git_revision(),
        "load_average": os.getloadavg(),
    }


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """(figure, full plan, incremental plan) rows."""
    full, incremental = results["full"], results["incremental"]
    aws = results["aws_projection"]

    def both(value: Callable[[dict[str, Any]], str]) -> tuple[str, str]:
        return value(full), value(incremental)

    def size(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda figures: f"{figures[key]:,} B"

    def optional(path: tuple[str, ...], text: Callable[[Any], str]) -> Callable[[dict[str, Any]], str]:
        def get(figures: dict[str, Any]) -> str:
            value: Any = figures
            for part in path:
                if not isinstance(value, dict) or part not in value:
                    return "-"
                value = value[part]
            return text(value)

        return get

    def calls(figures: dict[str, Any]) -> str:
        return ", ".join(f"{op} {count:,}" for op, count in figures["operations"].items())

    def held(value: dict[str, float]) -> str:
        return " ".join(f"{owner} {mib:.0f}" for owner, mib in value.items())

    def in_flight(value: dict[str, float]) -> str:
        return f"{value.get('s3:ListObjectsV2', 0):.1f} / {value.get('s3:PutObject', 0):.1f} (mean)"

    def split(value: dict[str, float]) -> str:
        moto, sdk, own = value["moto"], value["sdk"], value["pipeline_and_rest"]
        return f"moto {moto:.1f}, botocore {sdk:.1f}, pipeline {own:.1f}"

    rows = [
        ("work items / unchanged", *both(lambda f: f"{f['table_count']:,} / {f['unchanged_count']:,}")),
        ("Glue runs (Map items)", *both(lambda f: f"{f['item_count']:,}")),
        ("wall time on moto (s)", *both(lambda f: f"{f['wall_s']:.1f}")),
        (
            "CPU time: all / moto / client (s)",
            *both(lambda f: f"{f['cpu_s']:.1f} / {f['moto_cpu_s']:.1f} / {f['client_cpu_s']:.1f}"),
        ),
        ("peak RSS during plan (MiB)", *both(optional(("peak_rss_mib",), lambda v: f"{v:.0f}"))),
        ("RSS before plan (MiB)", *both(lambda f: f"{f['rss_before_mib']:.0f}")),
        ("tracemalloc peak (MiB)", *both(optional(("memory", "traced_peak_mib"), lambda v: f"{v:.0f}"))),
        (
            "held at plan.json write (MiB)",
            *both(optional(("memory", "held_at_plan_write", "by_owner_mib"), held)),
        ),
        ("plan.json", *both(size("plan_bytes"))),
        ("items.json", *both(size("items_bytes"))),
        ("work item / pack files", *both(lambda f: f"{f['item_files']:,} / {f['pack_files']:,}")),
        ("largest pack file", *both(size("pack_bytes_max"))),
        (
            "work item size min/median/max",
            *both(lambda f: f"{f['item_bytes_min']:,}/{f['item_bytes_median']:,}/{f['item_bytes_max']:,} B"),
        ),
        ("plan_task payload", *both(size("payload_bytes"))),
        ("API calls", *both(lambda f: f"{f['calls']:,}")),
        ("  by operation", *both(calls)),
        ("calling threads", *both(lambda f: str(f["calling_threads"]))),
        (
            "listings begun before the last GetTables page",
            *both(
                optional(
                    ("lists_before_last_get_tables_page",), lambda v: f"{v:,} (the registry's among them)"
                )
            ),
        ),
        (
            "work item writes begun before the last listing",
            *both(optional(("puts_before_last_list",), lambda v: f"{v:,}")),
        ),
        (
            "calls in flight: peak / mean",
            *both(lambda f: f"{f['peak_in_flight']} / {f['mean_in_flight']:.1f}"),
        ),
        (
            "  ListObjectsV2 / PutObject in flight",
            *both(lambda f: in_flight(f["mean_in_flight_by_operation"])),
        ),
        (
            "emulated AWS latency: wall (s)",
            *both(
                optional(
                    ("emulated",),
                    lambda e: (
                        f"{e['wall_s']:.1f} ({e['bound']}; slept {e['emulated_latency_s']:.0f} s in all)"
                    ),
                )
            ),
        ),
        (
            "  ListObjectsV2 / PutObject in flight",
            *both(optional(("emulated", "mean_in_flight_by_operation"), in_flight)),
        ),
        ("profiled wall, threads inline (s)", *both(optional(("profile", "wall_s"), lambda v: f"{v:.1f}"))),
        ("  of which, cumulative (s)", *both(optional(("profile", "split_s"), split))),
        (
            "AWS: GetTables pages",
            *(
                f"{aws[kind]['get_tables_pages']} "
                f"({'overlapping' if aws[kind].get('pipelined') else 'before'} the listings)"
                for kind in ("full", "incremental")
            ),
        ),
        (
            "AWS: network-bound time (s)",
            *(
                f"{aws[kind]['network_low_s']:.0f}-{aws[kind]['network_high_s']:.0f}"
                for kind in ("full", "incremental")
            ),
        ),
        (
            "AWS: projected wall (s)",
            *(f"{aws[kind]['low_s']:.0f}-{aws[kind]['high_s']:.0f}" for kind in ("full", "incremental")),
        ),
    ]
    return rows


def print_table(results: dict[str, Any]) -> None:
    env = results["environment"]
    print()
    print(
        f"Plan of {results['tables']:,} Glue tables on moto {env['moto']} ({env['cores']} cores, Python "
        f"{env['python']}, boto3 {env['boto3']}, code {env['git']}); PLAN_THREADS {results['plan_threads']}, "
        f"IO_THREADS {results['io_threads']}, EARLY_WRITE_THREADS {results.get('early_write_threads')}; "
        "GetTables pages of "
        f"{results.get('get_tables_page') or 'every table (moto)'}; load average at start "
        f"{', '.join(f'{load:.2f}' for load in results['load_average_start'])}, at end "
        f"{', '.join(f'{load:.2f}' for load in results['load_average_end'])}"
    )
    headers = ("figure", "full plan", f"incremental ({results['incremental']['changed_tables']:,} changed)")
    rows = [headers, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    commit = results["commit"]
    print(
        f"Commit of the full plan (setup for the incremental one): {commit['wall_s']:.1f} s on moto, "
        f"{commit['calls']:,} calls, state.json {commit['state_bytes']:,} B"
    )
    latency = results["latency_assumed"]
    print(
        "AWS projection assumes per call: "
        + ", ".join(f"{name} {value}" for name, value in latency.items())
        + f"; {GLUE_GET_TABLES_PAGE} tables per GetTables page. Lambda limits: {LAMBDA_TIMEOUT_S} s, "
        f"{LAMBDA_MEMORY_MIB} MiB"
    )
    print(f"Total wall time {results['total_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=10_000, help="Glue tables (default 10,000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc passes")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile passes")
    parser.add_argument(
        "--emulate-latency",
        choices=["low", "high"],
        help="also time each plan with moto's answers delayed by the low or high AWS latencies",
    )
    parser.add_argument(
        "--pack-mib",
        type=int,
        default=DEFAULT_PACK_BYTES // MIB,
        help="pack small tables into shared Glue runs up to this many MiB (0: one run per table)",
    )
    parser.add_argument(
        "--get-tables-page",
        type=int,
        default=GLUE_GET_TABLES_PAGE,
        help=f"tables per moto GetTables page (default {GLUE_GET_TABLES_PAGE}, as AWS; 0: all in one page, "
        "moto's own way)",
    )
    args = parser.parse_args(argv)
    if args.tables < 20:
        parser.error("--tables must be at least 20 (5% of them change)")
    # This process is the benchmark's own: fake credentials and no profile can reach no account.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    # Every table's first load warns that it has no committed tracker: expected, and 10,000 lines.
    logging.getLogger("cdc_pipeline").setLevel(logging.ERROR)
    print(f"Plan of {args.tables:,} tables on moto", flush=True)
    started = time.perf_counter()
    try:
        results = run(
            args.tables,
            memory=not args.no_memory,
            profile=not args.no_profile,
            emulate=args.emulate_latency,
            pack_bytes=args.pack_mib * MIB,
            get_tables_page=args.get_tables_page,
        )
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    results["total_s"] = time.perf_counter() - started
    results["environment"] = environment()
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"Results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
