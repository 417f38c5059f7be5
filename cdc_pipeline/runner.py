"""The local runner: plan, ingest every table on one SparkSession, commit. No AWS account needed.

It calls the same plan, ingest and commit functions that the Plan Lambda, the Glue job and the
Commit Lambda call on AWS; only the adapters (local directories) differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cdc_pipeline.arrivals import DEFAULT_SETTLE_WINDOW, settle_micros
from cdc_pipeline.catalog import LocalCatalog, NoOutputCatalog
from cdc_pipeline.commit import DEFAULT_RETAINED_SNAPSHOTS, CommitReport
from cdc_pipeline.errors import ConfigurationError
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
from cdc_pipeline.state import LocalStateStore
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


Progress = Callable[[str, str], None]


def run_local(
    settings: RunSettings,
    spark: SparkSession | None = None,
    progress: Progress | None = None,
) -> CommitReport:
    """Plan, ingest and commit one run on local directories; returns the run report.

    The run holds the run lease throughout, released however it ends; RunInProgressError (before
    anything is written) when another run holds it.
    """
    layout = Layout(output_path=str(settings.output.resolve()), cdc_path=str(settings.state.resolve()))
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
    with lease, _run_log(Path(layout.run_dir(settings.run_id)) / "run.log"):
        return _run(settings, layout, spark, say, lease_store)


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


def _run(
    settings: RunSettings,
    layout: Layout,
    spark: SparkSession | None,
    say: Progress,
    lease_store: LocalLeaseStore,
) -> CommitReport:
    storage = LocalStorage()
    state_store = LocalStateStore(settings.state)
    plan = plan_stage(
        catalog=LocalCatalog(settings.source),
        registry_source=LocalRegistrySource(settings.registry),
        state_store=state_store,
        storage=storage,
        layout=layout,
        run_id=settings.run_id,
        load_type=settings.load_type,
        tables=list(settings.tables) or None,
        settle_window=settings.settle_window,
        pack_bytes=settings.pack_bytes,
    )
    for table in plan.unchanged:
        say(table, "unchanged: no new file since its last commit")
    for table, reason in plan.skipped.items():
        say(table, f"skipped: {reason}")
    for table, error in plan.failed.items():
        say(table, f"FAILED in plan: {error}")

    failures = _ingest_all(plan, settings, storage, spark, say) if plan.items else {}
    return commit_stage(
        plan=plan,
        state_store=state_store,
        storage=storage,
        output_catalog=NoOutputCatalog(),
        layout=layout,
        failures=failures,
        retained_snapshots=settings.retained_snapshots,
        lease_store=lease_store,
    )


def _ingest_all(
    plan: Plan, settings: RunSettings, storage: LocalStorage, spark: SparkSession | None, say: Progress
) -> dict[str, str]:
    from cdc_pipeline.ingest import ingest_items
    from cdc_pipeline.spark import local_session

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

    return ingest_items(
        spark or local_session(),
        plan.items,
        storage,
        parallelism=settings.parallelism,
        started=started,
        done=done,
    ).failures
