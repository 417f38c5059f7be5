"""Faults: whatever breaks during a run, the state holds the whole previous run or the whole new
one, and a fresh rerun converges to what DuckDB computes from every landed file.

Every test starts from the same lake: three tables (keyed read by arrival, key-less, keyed read by
watermark) fully loaded once, then a second round of files landed (updates, deletes, a re-insert,
late older versions, duplicate rows). A fault strikes the run that reads that round (helpers.py
injects it at one of the pipeline's seams); the test checks what the faulted run left, then runs
again without the fault and compares every published table with DuckDB's answer: nothing lost,
nothing applied twice, no key twice, watermarks at the newest row landed.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cdc_pipeline.catalog import PublishedTable
from cdc_pipeline.errors import ConfigurationError
from cdc_pipeline.ingest import ingest_items
from cdc_pipeline.manifest import SUCCEEDED
from cdc_pipeline.packs import DEFAULT_PACK_BYTES
from cdc_pipeline.settings import CommitSettings
from cdc_pipeline.state import STATE_FILE, LocalStateStore
from cdc_pipeline.storage import LocalStorage
from cdc_pipeline.tasks import commit_task, table_failures

from .helpers import (
    PER_TABLE,
    REFUSALS,
    UTC,
    Crash,
    Fault,
    Lake,
    all_or_nothing_problems,
    commit_plan,
    converged_problems,
    inject,
    plan_and_ingest,
    plan_only,
    run_faulted,
    statuses,
    unwritable,
)

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 30  # how long a signalled run may take to end before it is killed
T0 = dt.datetime(2024, 3, 1, tzinfo=UTC)
TABLES = ("events", "orders", "readings")


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def order(op: str, order_id: int, status: str, seconds: int, seq: int) -> dict[str, Any]:
    return dict(
        Op=op, order_id=order_id, status=status, amount=order_id * 10 + seq, seq=seq, updated_at=at(seconds)
    )


def land_round(lake: Lake, round_no: int) -> None:
    """Round 0: the first files of each table. Round 1: two files each for orders and events, one
    for readings. Versions of a key never share a stamp, so the newest is always one row."""
    if round_no == 0:
        lake.land(
            "orders",
            "r0-f0.parquet",
            [order("I", i, "new", i, 1) for i in range(1, 31)]
            + [order("U", i, "paid", 100 + i, 2) for i in range(1, 11)],
        )
        lake.land(
            "events", "r0-f0.parquet", [dict(event_id=i, kind="view", updated_at=at(i)) for i in range(20)]
        )
        lake.land(
            "readings",
            "r0-f0.parquet",
            [dict(sensor=s, value=v, read_at=at(10 * s + v)) for s in range(1, 9) for v in range(2)],
        )
        return
    lake.land(
        "orders",
        "2024/03/r1-f0.parquet",
        [order("U", i, "shipped", 1000 + i, 3) for i in range(11, 21)]
        + [order("D", i, "gone", 1000 + i, 3) for i in range(21, 25)]
        # Older than the versions committed in round 0: they must not win.
        + [order("U", i, "late-older", 50 + i, 9) for i in range(1, 6)]
        + [order("I", i, "new", 1000 + i, 1) for i in range(31, 36)],
    )
    lake.land(
        "orders",
        "2024/03/r1-f1.parquet",
        [order("U", i, "refunded", 1100 + i, 4) for i in range(6, 11)]
        # Deleted, then back; and a late older update of a key deleted in the other file.
        + [order("D", 25, "gone", 1100, 3), order("I", 25, "back", 1101, 4), order("U", 21, "late", 900, 9)],
    )
    fresh = [dict(event_id=i, kind="click", updated_at=at(1000 + i)) for i in range(20, 30)]
    lake.land("events", "2024/03/r1-f0.parquet", fresh)
    # Exact duplicates of rows landed in the other file: a key-less table keeps both copies.
    lake.land(
        "events", "2024/03/r1-f1.parquet", [*fresh[:2], dict(event_id=30, kind="buy", updated_at=at(1040))]
    )
    lake.land(
        "readings",
        "r1-f0.parquet",
        [dict(sensor=s, value=10 + s, read_at=at(2000 + s)) for s in (1, 2, 3, 4, 9, 10)],
    )


def clone(lake: Lake, root: Path) -> Lake:
    """A copy of ``lake`` at ``root``. The state names its snapshot folders by absolute path, so its
    document is rewritten to name the copies. Copied source files keep their names, which the file
    cursors hold: they are not new arrivals."""
    shutil.copytree(lake.root, root, symlinks=True)
    document = root / "state" / STATE_FILE
    document.write_text(document.read_text().replace(f"{lake.root.resolve()}/", f"{root.resolve()}/"))
    return Lake(root)


@pytest.fixture(scope="module")
def baseline(spark, tmp_path_factory) -> Lake:
    lake = Lake.create(tmp_path_factory.mktemp("faults") / "baseline")
    land_round(lake, 0)
    assert set(statuses(lake.run(spark)).values()) == {"succeeded"}
    return lake


@pytest.fixture
def lake(baseline, tmp_path) -> Lake:
    """The baseline (round 0 committed) with round 1 landed, not yet run."""
    lake = clone(baseline, tmp_path / "lake")
    land_round(lake, 1)
    return lake


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def assert_rerun_converges(spark, con, lake: Lake) -> dict[str, str]:
    """Run again without any fault: no table fails and every table equals DuckDB's answer."""
    report = lake.run(spark)
    assert not report.failed, [(o.table, o.message) for o in report.failed]
    problems = converged_problems(con, lake)
    assert not problems, "\n".join(problems)
    return statuses(report)


def snapshot_folders(lake: Lake, table: str) -> set[str]:
    return {str(p) for p in (lake.output.resolve() / table / "snapshots").iterdir()}


# ----------------------------------------------------------------------------------------------
# Crashes: the run dies at one point; a fresh run goes on from whatever the state says
# ----------------------------------------------------------------------------------------------

# The crash points CI runs each time; the property test (test_fault_properties.py) draws from all
# of helpers.CRASHES, on any table.
CRASH_POINTS = ("before-commit", "mid-write", "mid-state-write", "after-state-write")
PUBLISHED_BEFORE_THE_CRASH = ("after-state-write", "in-catalog-update")


@pytest.mark.parametrize("kind", CRASH_POINTS)
def test_a_crash_publishes_all_or_nothing_and_a_fresh_run_converges(spark, con, lake, kind) -> None:
    before, before_bytes = lake.document(), lake.state_bytes()
    fault = Fault(kind, "orders" if kind in PER_TABLE else None)

    assert run_faulted(lake, spark, fault) == "crashed"

    after = lake.document()
    problems = all_or_nothing_problems(con, lake, before, after)
    assert not problems, f"{fault}:\n" + "\n".join(problems)
    if kind in PUBLISHED_BEFORE_THE_CRASH:
        assert after.revision == before.revision + 1
        assert all(after.tables[t].run_id == after.run_id for t in TABLES), after
    else:
        assert lake.state_bytes() == before_bytes, f"{fault} changed the state"
    rerun = assert_rerun_converges(spark, con, lake)
    expected = "unchanged" if kind in PUBLISHED_BEFORE_THE_CRASH else "succeeded"
    assert rerun == dict.fromkeys(TABLES, expected)


def test_a_glue_retry_of_a_run_that_died_mid_write_replaces_the_cut_files(spark, con, lake) -> None:
    # On AWS a Glue job run that died is retried with the same work items: the same run id, so the
    # same output folder, which still holds the first attempt's half-written file.
    plan, fault = plan_only(lake), Fault("mid-write", "orders")
    with pytest.MonkeyPatch.context() as mp:
        inject(mp, fault, lake, spark)
        with pytest.raises(Crash):
            ingest_items(spark, plan.items, LocalStorage(), parallelism=2)
    cut = Path(next(item.output_location for item in plan.items if item.table == "orders"))
    assert fault.fired
    assert cut.is_dir()

    ingest_items(spark, plan.items, LocalStorage(), parallelism=2)
    commit_lambda(lake, plan.run_id, RecordingCatalog())

    problems = converged_problems(con, lake)
    assert not problems, "\n".join(problems)
    assert lake.document().tables["orders"].location == str(cut)


# ----------------------------------------------------------------------------------------------
# Failures: some tables fail, the run commits the others
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file-vanishes", "unwritable-output"])
def test_a_failed_table_keeps_its_tracker_the_others_commit_and_a_fresh_run_converges(
    spark, con, lake, kind
) -> None:
    before = lake.document()
    fault = Fault(kind, "orders")

    assert run_faulted(lake, spark, fault) == "failed"

    after = lake.document()
    assert after.tables["orders"] == before.tables["orders"], f"{fault}: orders moved on"
    kept = {before.tables["orders"].location, *before.tables["orders"].previous_locations}
    assert snapshot_folders(lake, "orders") == kept, f"{fault}: its unpublished output was left"
    for name in ("events", "readings"):
        assert after.tables[name].run_id == after.run_id != before.run_id, f"{fault}: {name} not committed"
    problems = all_or_nothing_problems(con, lake, before, after)
    assert not problems, f"{fault}:\n" + "\n".join(problems)
    rerun = assert_rerun_converges(spark, con, lake)
    assert {t for t, status in rerun.items() if status == "succeeded"} == {"orders"}


def test_an_unwritable_output_folder_stops_the_run_publishing_nothing_and_a_fresh_run_converges(
    spark, con, lake
) -> None:
    before = lake.state_bytes()

    with unwritable(lake.output), pytest.raises(ConfigurationError, match="--output"):
        lake.run(spark)

    assert lake.state_bytes() == before
    assert all(snapshot_folders(lake, t) == {lake.document().tables[t].location} for t in TABLES)
    assert assert_rerun_converges(spark, con, lake) == dict.fromkeys(TABLES, "succeeded")


# ----------------------------------------------------------------------------------------------
# Races: another run commits first
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_run_that_lost_the_compare_and_swap_publishes_nothing_and_a_fresh_run_converges(
    spark, con, lake, kind
) -> None:
    before = lake.document()
    fault = Fault(kind)

    assert run_faulted(lake, spark, fault) == "refused"

    after = lake.document()
    assert after.revision == before.revision + 1, "only the competing run may have committed"
    moved = {t for t in TABLES if after.tables[t] != before.tables[t]}
    assert len(moved) == 1, f"{fault}: {moved}"
    assert all(after.tables[t].run_id == after.run_id for t in moved)
    for name in TABLES:
        # The refused run's own snapshot folders are removed; the competitor's are the state's.
        assert snapshot_folders(lake, name) == {
            after.tables[name].location,
            *after.tables[name].previous_locations,
        }
    problems = all_or_nothing_problems(con, lake, before, after)
    assert not problems, f"{fault}:\n" + "\n".join(problems)
    rerun = assert_rerun_converges(spark, con, lake)
    assert {t for t, status in rerun.items() if status == "succeeded"} == set(TABLES) - moved


def test_two_overlapping_runs_commit_at_most_once_and_a_fresh_run_converges(spark, con, lake) -> None:
    before = lake.document()
    fault = Fault("overlapping-runs")

    run_faulted(lake, spark, fault)

    after = lake.document()
    assert after.revision <= before.revision + 1, f"{fault}: both planned revision {before.revision}"
    problems = all_or_nothing_problems(con, lake, before, after)
    assert not problems, f"{fault}:\n" + "\n".join(problems)
    assert_rerun_converges(spark, con, lake)
    assert lake.document().revision == before.revision + 1


# ----------------------------------------------------------------------------------------------
# Commits retried, as Step Functions retries the Commit Lambda
# ----------------------------------------------------------------------------------------------


class RecordingCatalog:
    """The output catalog (Glue, on AWS): where each output table points."""

    def __init__(self) -> None:
        self.locations: dict[str, str] = {}

    def publish(self, tables: list[PublishedTable]) -> None:
        self.locations.update({table.name: table.location for table in tables})


def commit_lambda(lake: Lake, run_id: str, catalog: RecordingCatalog) -> dict[str, Any]:
    """The Commit Lambda's task on the local ports, with the event the state machine gives it."""
    settings = CommitSettings(
        output_path=str(lake.output.resolve()),
        cdc_path=str(lake.state.resolve()),
        output_database="current",
        retained_snapshots=2,
    )
    return commit_task(
        {"plan": {"run_id": run_id}},
        settings,
        state_store=LocalStateStore(lake.state),
        storage=LocalStorage(),
        output_catalog=catalog,
    )


def test_a_commit_retried_after_it_succeeded_writes_nothing_and_applies_nothing_twice(
    spark, con, lake
) -> None:
    before = lake.document()

    # The injected commit stage runs the commit twice and checks the second wrote nothing.
    assert run_faulted(lake, spark, Fault("commit-retried")) == "completed"

    assert lake.document().revision == before.revision + 1
    assert len(list((lake.state / "history").iterdir())) == before.revision + 1
    problems = converged_problems(con, lake)
    assert not problems, "\n".join(problems)
    assert assert_rerun_converges(spark, con, lake) == dict.fromkeys(TABLES, "unchanged")


def test_a_commit_lambda_retried_after_dying_past_the_state_write_points_the_catalog_at_the_state(
    spark, con, lake
) -> None:
    plan = plan_and_ingest(lake, spark)
    catalog = RecordingCatalog()
    with pytest.MonkeyPatch.context() as mp:
        inject(mp, Fault("after-state-write"), lake, spark)
        with pytest.raises(Crash):
            commit_lambda(lake, plan.run_id, catalog)
    committed = lake.state_bytes()
    assert lake.document().run_id == plan.run_id
    assert catalog.locations == {}

    retried = commit_lambda(lake, plan.run_id, catalog)

    assert lake.state_bytes() == committed
    assert retried["succeeded_count"] == len(TABLES)
    document = lake.document()
    assert catalog.locations == {t: document.tables[t].location for t in TABLES}
    problems = converged_problems(con, lake)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# A table listed as failed whose success manifest exists (the Map's failures meet the manifests)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failed_glue_run", ["its-own", "its-pack"])
def test_a_success_manifest_is_published_when_its_pack_failed_but_not_when_its_own_glue_run_did(
    spark, con, lake, failed_glue_run
) -> None:
    own = failed_glue_run == "its-own"
    plan = plan_and_ingest(lake, spark, pack_bytes=0 if own else DEFAULT_PACK_BYTES)
    storage, layout = LocalStorage(), lake.layout()
    assert all(storage.read_json(i.manifest_location)["status"] == SUCCEEDED for i in plan.items)
    if own:
        # Its Glue run failed after the ingest had written the manifest (a timeout, a crash at exit).
        by_location = {layout.item("orders", plan.run_id): "States.TaskFailed: job run failed"}
    else:
        # A pack's Glue run fails whenever one of its tables did, after the others had finished.
        assert [sorted(tables) for tables in plan.packs.values()] == [list(TABLES)], plan.packs
        by_location = dict.fromkeys(plan.packs, "States.TaskFailed: 1 of the 3 tables of this run failed")
    failures, run_failures = table_failures(plan, layout, by_location)
    before = lake.document()

    commit_plan(lake, plan, catalog=RecordingCatalog(), failures=failures, run_failures=run_failures)

    after = lake.document()
    if own:
        assert after.tables["orders"] == before.tables["orders"]
        assert not Path(layout.snapshot("orders", plan.run_id)).exists()
        assert all(after.tables[t].run_id == plan.run_id for t in ("events", "readings"))
        problems = all_or_nothing_problems(con, lake, before, after)
        assert not problems, "\n".join(problems)
        assert assert_rerun_converges(spark, con, lake)["orders"] == "succeeded"
    else:
        assert all(after.tables[t].run_id == plan.run_id for t in TABLES)
        problems = converged_problems(con, lake)
        assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# Signals: the CLI interrupted (Ctrl-C) or terminated at a random moment
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_signalled_at_a_random_moment_leaves_the_old_or_the_new_state_and_a_fresh_run_converges(
    spark, con, lake, tmp_path, signum
) -> None:
    seed = int(os.environ.get("FAULT_SEED") or time.time_ns() % 1_000_000)
    delay = random.Random(seed).uniform(0.0, 3.0)
    before = lake.document()
    stderr = tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "cdc_pipeline", "run"]
    argv += [f"--{name}={getattr(lake, name)}" for name in ("source", "output", "state", "registry")]
    with stderr.open("w") as errors:
        # A session of its own: whatever the run starts (its JVM) can be found and ended afterwards.
        child = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
        try:
            progress = _lines(child)
            while True:
                line = progress.get(timeout=300)
                assert line is not None, f"the run ended before any ingest started; stderr in {stderr}"
                if "started" in line:  # planned: the ingest begins
                    break
            time.sleep(delay)
            with suppress(ProcessLookupError):
                child.send_signal(signum)
            try:
                code = child.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                # Not gone within its grace period: killed, as a supervisor would (Kubernetes: 30 s).
                child.kill()
                code = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    context = f"{signum.name} {delay:.2f} s after ingest started (FAULT_SEED={seed}), exit code {code}"

    after = lake.document()  # raises if the document is not a valid state
    problems = all_or_nothing_problems(con, lake, before, after)
    assert not problems, f"{context}; stderr in {stderr}:\n" + "\n".join(problems)
    assert_rerun_converges(spark, con, lake)


def _lines(child: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The child's stdout lines as they come, then None."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines
