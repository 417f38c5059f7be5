"""The local runner: plan, ingest every table on one SparkSession, commit. No AWS account needed.

It calls the same plan, ingest and commit functions that the Plan Lambda, the Glue job and the
Commit Lambda call on AWS; only the adapters (local directories) differ.

A run that cannot finish leaves nothing half done: its locations are checked before any work
(``check_locations``); an interrupt (SIGINT, SIGTERM: ``Interrupts``) or an unexpected error stops
its ingests and removes the folders it wrote for tables it did not publish, and the commit, one
compare-and-swap of the state document, is never interrupted halfway: a signal waits for its end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW, settle_micros
from cdc_pipeline.catalog import LocalCatalog, NoOutputCatalog
from cdc_pipeline.commit import DEFAULT_RETAINED_SNAPSHOTS, CommitReport, TableOutcome
from cdc_pipeline.errors import (
    ConfigurationError,
    PipelineError,
    RunInterrupted,
    UnexpectedError,
)
from cdc_pipeline.lease import (
    DEFAULT_LOCAL_TTL_S,
    LocalLeaseStore,
    holding,
    local_owner,
    local_owner_ended,
    waiting_for,
)
from cdc_pipeline.manifest import Manifest
from cdc_pipeline.packs import DEFAULT_PACK_BYTES, MIB
from cdc_pipeline.plan import Layout, LoadType, Plan, WorkItem, new_run_id
from cdc_pipeline.registry import LocalRegistrySource
from cdc_pipeline.stages import commit_stage, plan_stage
from cdc_pipeline.state import HISTORY_DIR, LocalStateStore
from cdc_pipeline.storage import LocalStorage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 2  # tables ingested at once on one SparkSession


@dataclass(frozen=True)
class RunSettings:
    """The local run's settings, validated once."""

    source: Path
    output: Path
    state: Path
    registry: Path
    load_type: LoadType | None = None
    tables: tuple[str, ...] = ()
    parallelism: int = DEFAULT_PARALLELISM
    retained_snapshots: int = DEFAULT_RETAINED_SNAPSHOTS
    settle_window: str = DEFAULT_SETTLE_WINDOW
    pack_bytes: int = DEFAULT_PACK_BYTES
    run_id: str = field(default_factory=new_run_id)
    # The run lease (lease.py): how long to wait for another run's (math.inf: until it is free), and
    # its time to live, renewed every third of it while this run lives.
    lease_wait_s: float = 0.0
    lease_ttl_s: float = DEFAULT_LOCAL_TTL_S
    # Tables whose registry change is accepted: rebuilt with the new settings instead of failing.
    accept_registry_change: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ConfigurationError(f"--parallelism must be at least 1, got {self.parallelism}")
        try:
            settle_micros(self.settle_window)
        except ValueError as exc:
            raise ConfigurationError(f"--settle-window: {exc}") from exc
        if self.pack_bytes < 0:
            raise ConfigurationError(
                f"--pack-mib must be 0 (no packing) or more, got {self.pack_bytes // MIB}"
            )
        if not self.lease_wait_s >= 0:  # NaN too
            raise ConfigurationError(f"--wait-for-lease must be 0 seconds or more, got {self.lease_wait_s:g}")
        if self.retained_snapshots < 1:
            raise ConfigurationError(
                f"--retain-snapshots must be at least 1 (the current snapshot), got {self.retained_snapshots}"
            )
        roots = {"--source": self.source, "--output": self.output, "--state": self.state}
        for name, path in roots.items():
            for other, other_path in roots.items():
                if name < other and _overlaps(path, other_path):
                    raise ConfigurationError(
                        f"{name} {path} and {other} {other_path} overlap; give each its own directory"
                    )


def _overlaps(first: Path, second: Path) -> bool:
    a, b = first.resolve(), second.resolve()
    return a == b or a in b.parents or b in a.parents


def check_locations(settings: RunSettings) -> None:
    """Before any work: ``--source`` and ``--registry`` are directories; ``--output`` and ``--state``
    are directories, created when missing, that this process can write (a probe file is created
    and removed in each, and in the state's ``runs/`` and ``history/`` where they exist).

    Raises
    ------
    ConfigurationError
        Naming the option, the path and what is wrong with it.
    """
    hints = {
        "--source": "pass the directory whose subdirectories are the raw tables",
        "--registry": "pass the directory of table-settings CSV files (see docs/registry.md)",
    }
    for option, path in (("--source", settings.source), ("--registry", settings.registry)):
        if not path.exists():
            raise ConfigurationError(f"{option} {path} does not exist; {hints[option]}")
        if not path.is_dir():
            raise ConfigurationError(f"{option} {path} is a file, not a directory; {hints[option]}")
    _writable_directory("--output", settings.output, create=True)
    _writable_directory("--state", settings.state, create=True)
    for folder in ("runs", HISTORY_DIR):
        if (settings.state / folder).exists() or (settings.state / folder).is_symlink():
            _writable_directory("--state", settings.state / folder, create=False)


def _writable_directory(option: str, path: Path, *, create: bool) -> None:
    fix = "give the user running cdc-pipeline write access to it, or pass another directory"
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"{option} {path} is a file, not a directory; pass a directory")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            file = next((parent for parent in path.parents if parent.exists()), path)
            raise ConfigurationError(
                f"{option} {path} cannot be created: {file} is a file, not a directory; pass another path"
            ) from exc
        except OSError as exc:
            raise ConfigurationError(f"{option} {path} cannot be created ({exc.strerror}); {fix}") from exc
    elif not path.is_dir():
        raise ConfigurationError(f"{option}: {path} is not a directory; move it away, the runs need it")
    probe = path / f".cdc-pipeline-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ConfigurationError(f"{option} {path} is not writable ({exc.strerror}); {fix}") from exc


Progress = Callable[[str, str], None]


class Interrupts:
    """SIGINT and SIGTERM while a run is on (installed in the main thread by ``with``).

    The first signal raises RunInterrupted in the main thread, wherever it is, unless the commit is
    being written (``deferred``): then it is only recorded (``received``), and the commit ends
    before the caller looks. A second signal while the run is being stopped ends the process at
    once, without removing the run's folders.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and not self._deferring:
            os.write(2, f"\n{signal.Signals(signum).name} again: stopped at once, folders left\n".encode())
            os._exit(128 + signum)
        self.received = self.received or signum
        if not self._deferring:
            raise RunInterrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals arriving meanwhile are recorded, not raised: for the commit's write."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False


def run_local(
    settings: RunSettings,
    spark: SparkSession | None = None,
    progress: Progress | None = None,
    interrupts: Interrupts | None = None,
    verbose: bool = False,
) -> CommitReport:
    """Plan, ingest and commit one run on local directories; returns the run report.

    The run holds the run lease throughout, released however it ends; RunInProgressError (before
    anything is written) when another run holds it.

    ``interrupts`` (installed by the caller) makes SIGINT and SIGTERM stop the run; a signal during
    the commit lets it finish (the caller sees ``interrupts.received``). ``verbose`` shows Spark's
    own console output when this run starts the session.

    Raises
    ------
    ConfigurationError
        Before any work, for a location that is wrong (``check_locations``); or from the plan.
    RunInProgressError
        When another run holds the lease (after ``lease_wait_s``); nothing was written.
    CommitConflictError
        When another run committed first; this run's outputs are removed.
    RunInterrupted
        When a signal stopped the run before its commit: its ingests are stopped, the folders it
        wrote are removed, nothing of it is published, and its run folder has an "interrupted"
        report. The exception carries that report.
    UnexpectedError
        For an error nothing foresaw (its trace is in the run's run.log); the folders of the tables
        the run did not publish are removed.
    """
    check_locations(settings)
    layout = Layout(output_path=str(settings.output.resolve()), cdc_path=str(settings.state.resolve()))
    log = Path(layout.run_dir(settings.run_id)) / "run.log"
    say = progress or (lambda table, message: None)
    lease_store = LocalLeaseStore(settings.state)
    lease = holding(
        lease_store,
        settings.run_id,
        local_owner(),
        settings.lease_ttl_s,
        wait_s=settings.lease_wait_s,
        owner_ended=local_owner_ended,
        waiting=lambda refused: say("lease", waiting_for(refused)),
        taking_over=lambda held, why: say("lease", f"took over the lease of run {held.run_id}: {why}"),
    )
    run = _LocalRun(settings, layout, spark, say, verbose=verbose, lease_store=lease_store)
    with lease, _run_log(log):
        try:
            return run.run(interrupts or Interrupts())
        except RunInterrupted as stop:
            removed, _ = run.discard_unpublished()
            report = run.interrupted_report(stop, removed)
            logger.warning("run %s %s; removed %s", settings.run_id, stop, removed or "nothing")
            raise RunInterrupted(
                stop.signum,
                f"{stop} before the commit: run {settings.run_id} published nothing ({len(removed)} "
                "folder(s) it had written removed); the next run starts from the committed state. Report: "
                f"{layout.report(settings.run_id)}",
                report.to_json(),
            ) from None
        except PipelineError:
            raise
        except Exception as exc:
            logger.exception("run %s failed unexpectedly", settings.run_id)
            removed, committed = run.discard_unpublished()
            detail = (
                f" (after run {settings.run_id} committed revision {committed})"
                if committed is not None
                else f" (run {settings.run_id} published nothing; {len(removed)} of its folders removed)"
            )
            raise UnexpectedError(exc, str(log), detail) from exc


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Everything the pipeline logs during the run, warnings included, kept beside its report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    package = logging.getLogger("cdc_pipeline")
    previous_level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous_level)
        handler.close()


class _LocalRun:
    """One run's steps and what it has done so far, for cleaning up after it when it stops."""

    def __init__(
        self,
        settings: RunSettings,
        layout: Layout,
        spark: SparkSession | None,
        say: Progress,
        *,
        verbose: bool,
        lease_store: LocalLeaseStore,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.spark = spark
        self.say = say
        self.verbose = verbose
        self.lease_store = lease_store
        self.storage = LocalStorage()
        self.state_store = LocalStateStore(settings.state)
        self.plan: Plan | None = None
        self.own_session = False  # the session was started for this run: stopping the run stops it

    def run(self, interrupts: Interrupts) -> CommitReport:
        settings = self.settings
        self.plan = plan = plan_stage(
            catalog=LocalCatalog(settings.source),
            registry_source=LocalRegistrySource(settings.registry),
            state_store=self.state_store,
            storage=self.storage,
            layout=self.layout,
            run_id=settings.run_id,
            load_type=settings.load_type,
            tables=list(settings.tables) or None,
            settle_window=settings.settle_window,
            pack_bytes=settings.pack_bytes,
            accept_registry_change=list(settings.accept_registry_change),
        )
        for table in plan.unchanged:
            self.say(table, "unchanged: no new file since its last commit")
        for table, reason in plan.skipped.items():
            self.say(table, f"skipped: {reason}")
        for table, error in plan.failed.items():
            self.say(table, f"FAILED in plan: {error}")

        failures = self._ingest_all(plan) if plan.items else {}
        # One compare-and-swap of the state document: a signal now waits for it to be done.
        with interrupts.deferred():
            return commit_stage(
                plan=plan,
                state_store=self.state_store,
                storage=self.storage,
                output_catalog=NoOutputCatalog(),
                layout=self.layout,
                failures=failures,
                retained_snapshots=settings.retained_snapshots,
                lease_store=self.lease_store,
            )

    def _ingest_all(self, plan: Plan) -> dict[str, str]:
        from cdc_pipeline.ingest import ingest_items
        from cdc_pipeline.spark import local_session

        say = self.say

        def done(item: WorkItem, manifest: Manifest | None, error: str | None) -> None:
            if manifest is None:
                say(item.table, f"FAILED: {error}")
                return
            files = "" if manifest.files_read is None else f"{manifest.files_read} file(s), "
            say(
                item.table,
                f"ingested in {manifest.duration_s:.1f}s: {files}{manifest.rows_read} rows read, "
                f"{manifest.rows_written} in snapshot",
            )

        def started(item: WorkItem) -> None:
            say(item.table, f"started ({item.load_type}, {item.mode})")

        if self.spark is None:
            from pyspark.sql import SparkSession

            self.own_session = SparkSession.getActiveSession() is None
            self.spark = local_session(verbose=self.verbose)
        return ingest_items(
            self.spark,
            plan.items,
            self.storage,
            parallelism=self.settings.parallelism,
            started=started,
            done=done,
        ).failures

    def discard_unpublished(self) -> tuple[list[str], int | None]:
        """Remove the folders this run wrote (snapshots, tombstones, quarantine) for the tables it did
        not publish; never one the committed state names. Returns them, and the revision this run
        committed (None: it committed nothing)."""
        if self.plan is None:
            return [], None
        if self.spark is not None:
            _stop_spark_work(self.spark, self.own_session)
        try:
            current, _ = self.state_store.read()
        except PipelineError:
            logger.exception("the state cannot be read: run %s's folders are left", self.settings.run_id)
            return [], None
        run_id = self.settings.run_id
        published = {name for name, tracker in current.tables.items() if tracker.run_id == run_id}
        referenced = {location for tracker in current.tables.values() for location in tracker.locations()}
        doomed = [
            location
            for item in self.plan.items
            if item.table not in published
            for location in (item.output_location, item.tombstones_location, item.quarantine_location)
            if location and location not in referenced
        ]
        removed = [location for location in doomed if self.storage.delete_tree(location)]
        logger.info("run %s: of its unpublished folders %s, removed %s", run_id, doomed, removed)
        return removed, current.revision if current.run_id == run_id else None

    def interrupted_report(self, stop: RunInterrupted, removed: list[str]) -> CommitReport:
        """The report of a run stopped before its commit, in its run folder as any run's is."""
        plan = self.plan
        message = f"{stop} before the commit: nothing of it was published"
        outcomes = []
        if plan is not None:
            outcomes += [
                TableOutcome(item.table, "failed", load_type=item.load_type, message=message)
                for item in plan.items
            ]
            outcomes += [TableOutcome(t, "failed", message=m) for t, m in plan.failed.items()]
            outcomes += [TableOutcome(t, "skipped", message=m) for t, m in plan.skipped.items()]
            outcomes += [TableOutcome(t, "unchanged") for t in plan.unchanged]
        report = CommitReport(
            run_id=self.settings.run_id,
            # The local store's version token is the revision the run planned from.
            revision=int(plan.state_version or 0) if plan is not None else 0,
            committed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            outcomes=sorted(outcomes, key=lambda outcome: outcome.table),
            warnings=[f"run {message}; its unpublished folders were removed"],
            deleted_locations=removed,
        )
        self.storage.write_json(self.layout.report(self.settings.run_id), report.to_json())
        return report


def _stop_spark_work(spark: SparkSession, own_session: bool, timeout_s: float = 30.0) -> None:
    """Make sure no Spark job of the run is left to write: a cancelled job's tasks are killed
    asynchronously, and its driver may still set up or abort its output, which would bring back a
    folder deleted under it. A session of the run's own is stopped (the process ends after it);
    on a session of the caller's, the run's jobs are cancelled until no task runs."""
    from py4j.protocol import Py4JError

    try:
        if own_session:
            spark.stop()
            return
        # The Java tracker: only it counts the tasks still running on the executors.
        tracker = spark.sparkContext._jsc.sc().statusTracker()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spark.sparkContext.cancelAllJobs()
            if not any(executor.numRunningTasks() for executor in tracker.getExecutorInfos()):
                return
            time.sleep(0.1)
    except Py4JError:
        logger.warning("could not reach Spark to stop the run's jobs", exc_info=True)
