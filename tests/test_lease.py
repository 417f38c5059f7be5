"""The run lease locally: the CLI refuses or waits, the runner holds, renews and releases the lease,
a crashed run's lease is taken over, and a run that lost its lease publishes nothing."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc_pipeline import runner
from cdc_pipeline.catalog import NoOutputCatalog
from cdc_pipeline.cli import EXIT_RUN_IN_PROGRESS, build_parser, main
from cdc_pipeline.errors import LeaseLostError, RunInProgressError
from cdc_pipeline.lease import (
    LEASE_FILE,
    Lease,
    LocalLeaseStore,
    acquire,
    holding,
    local_owner,
    local_owner_ended,
    wait_and_acquire,
)
from cdc_pipeline.runner import RunSettings, run_local
from cdc_pipeline.stages import commit_stage
from tests.test_commit import Env, env, ingest_succeeded, plan_from_state, run

__all__ = ["env"]

ELSEWHERE = "build-host-7/4242"  # a run on another host: alive until its lease expires


class Dirs:
    """A raw zone with no table, a registry, an output and a state directory: a run that needs no Spark."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("raw", "registry", "out", "state"):
            (root / name).mkdir()
        (root / "registry" / "tables.csv").write_text("table_name,primary_key\npeople,id\n")
        self.leases = LocalLeaseStore(root / "state")

    def args(self, *extra: str) -> list[str]:
        r = self.root
        return [
            "run",
            *("--source", str(r / "raw"), "--output", str(r / "out")),
            *("--state", str(r / "state"), "--registry", str(r / "registry")),
            *extra,
        ]

    def settings(self, **overrides: object) -> RunSettings:
        r = self.root
        return RunSettings(
            source=r / "raw", output=r / "out", state=r / "state", registry=r / "registry", **overrides
        )

    def held_by(self, owner: str = ELSEWHERE, run_id: str = "20260501T120000Z-0ther000") -> Lease:
        return acquire(self.leases, run_id, owner, 600)


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


# ---------------------------------------------------------------- refusing and waiting


def test_a_run_while_another_holds_the_lease_exits_75_having_done_nothing(dirs, capsys) -> None:
    held = dirs.held_by()

    assert main(dirs.args()) == EXIT_RUN_IN_PROGRESS == 75

    error = capsys.readouterr().err
    assert error == (
        f"error: run {held.run_id} has been in progress since {held.started_at} (owner {ELSEWHERE}; its "
        f"lease expires at {held.expires_at}): this run did nothing; wait for it, or pass --wait-for-lease\n"
    )
    assert not (dirs.root / "state" / "runs").exists()
    assert dirs.leases.read()[0] == held


def test_wait_for_lease_gives_up_after_the_seconds_given_saying_so(dirs, capsys) -> None:
    held = dirs.held_by()
    started = time.monotonic()

    assert main(dirs.args("--wait-for-lease=0.3")) == EXIT_RUN_IN_PROGRESS

    assert time.monotonic() - started >= 0.3
    out, error = capsys.readouterr()
    assert out == (
        f"[lease] waiting for run {held.run_id}, in progress since {held.started_at} (owner {ELSEWHERE}; "
        f"its lease expires at {held.expires_at})\n"
    )
    assert (
        "this run did nothing; waited 0.3 s for it; wait longer, or start this run once it has finished"
        in error
    )


def test_wait_for_lease_without_seconds_waits_until_the_lease_is_free(dirs) -> None:
    assert build_parser().parse_args(dirs.args("--wait-for-lease")).wait_for_lease == math.inf
    assert build_parser().parse_args(dirs.args()).wait_for_lease == 0
    held = dirs.held_by()
    waited: list[RunInProgressError] = []
    threading.Timer(0.3, lambda: dirs.leases.delete(dirs.leases.read()[1])).start()

    lease = wait_and_acquire(
        dirs.leases, "run-2", "host/2", 600, wait_s=math.inf, poll_s=0.05, waiting=waited.append
    )

    assert dirs.leases.read()[0] == lease
    assert [refused.run_id for refused in waited] == [held.run_id]  # said once


def test_a_negative_wait_is_a_usage_error(dirs, capsys) -> None:
    assert main(dirs.args("--wait-for-lease=-1")) == 2
    assert "--wait-for-lease must be 0 seconds or more, got -1" in capsys.readouterr().err


# ---------------------------------------------------------------- holding, renewing, releasing


def test_a_run_leaves_no_lease_behind_whether_it_succeeds_or_fails(dirs) -> None:
    assert main(dirs.args()) == 0
    assert dirs.leases.read() == (None, None)

    (dirs.root / "state" / "state.json").write_text("{not json")
    assert main(dirs.args()) == 2  # a corrupt state stops the run after it took the lease
    assert dirs.leases.read() == (None, None)


def test_an_interrupted_run_releases_its_lease(dirs, monkeypatch) -> None:
    seen: list[Lease | None] = []

    def interrupted_plan(**_: object) -> None:
        seen.append(dirs.leases.read()[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "plan_stage", interrupted_plan)
    settings = dirs.settings()

    with pytest.raises(KeyboardInterrupt):
        run_local(settings)

    assert seen[0] is not None
    assert (seen[0].run_id, seen[0].owner) == (settings.run_id, local_owner())
    assert dirs.leases.read() == (None, None)


def test_the_lease_is_renewed_while_the_run_lives(dirs) -> None:
    with holding(dirs.leases, "run-1", local_owner(), ttl_s=0.3) as taken:
        time.sleep(0.5)
        during = dirs.leases.read()[0]

    assert during is not None
    assert during.expires_at > taken.expires_at
    assert during.renewed_at > during.started_at == taken.started_at
    assert dirs.leases.read() == (None, None)


def test_a_run_that_lost_its_lease_stops_renewing_and_leaves_the_new_holders_lease(dirs, caplog) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="cdc_pipeline.lease"),
        holding(dirs.leases, "run-1", local_owner(), ttl_s=0.3),
    ):
        taker = Lease.new("run-2", ELSEWHERE, datetime.now(UTC), 600)
        dirs.leases.replace(taker, dirs.leases.read()[1])
        time.sleep(0.25)

    assert dirs.leases.read()[0] == taker
    assert f"run run-1 lost its run lease {dirs.leases.location} to run run-2" in caplog.text


def test_the_lease_of_a_crashed_run_on_this_host_is_taken_over_at_once_saying_so(dirs, capsys) -> None:
    crashed = subprocess.Popen([sys.executable, "-c", "pass"])
    crashed.wait()
    owner = f"{socket.gethostname()}/{crashed.pid}"
    held = dirs.held_by(owner=owner)

    assert main(dirs.args()) == 0

    out = capsys.readouterr().out
    assert (
        f"[lease] took over the lease of run {held.run_id}: its owner {owner} is no longer running\n" in out
    )
    assert dirs.leases.read() == (None, None)


def test_only_a_missing_process_of_this_host_counts_as_ended() -> None:
    now = datetime.now(UTC)
    alive = Lease.new("r", local_owner(), now, 60)
    elsewhere = Lease.new("r", f"another-{socket.gethostname()}/{1 << 22}", now, 60)
    not_a_process = Lease.new("r", "arn:aws:states:eu-west-1:1:execution:m:e", now, 60)

    assert local_owner_ended(alive) is False
    assert local_owner_ended(elsewhere) is False
    assert local_owner_ended(not_a_process) is False


# ---------------------------------------------------------------- losing the lease


def test_a_commit_whose_lease_was_taken_over_publishes_nothing_and_removes_its_output(env: Env) -> None:
    run(env, "run-1", {"orders": "2024-04-01T00:00:00"})
    before = env.state_bytes()
    plan = plan_from_state(env, "run-2", ["orders"])
    ingest_succeeded(env, plan.items[0], "2024-04-02T00:00:00")
    leases = LocalLeaseStore(env.store.directory)
    expired = datetime.now(UTC) - timedelta(hours=1)
    acquire(leases, "run-2", "host/2", 60, now=lambda: expired)
    acquire(leases, "run-3", ELSEWHERE, 600)  # took run-2's expired lease over

    with pytest.raises(LeaseLostError) as lost:
        commit_stage(
            plan=plan,
            state_store=env.store,
            storage=env.storage,
            output_catalog=NoOutputCatalog(),
            layout=env.layout,
            failures={},
            retained_snapshots=2,
            lease_store=leases,
        )

    assert lost.value.competing_run_id == "run-3"
    assert env.state_bytes() == before
    assert not Path(plan.items[0].output_location).exists()


@pytest.mark.spark
def test_a_run_whose_lease_is_taken_over_while_it_ingests_is_refused_publishing_nothing(
    dirs, spark, capsys
) -> None:
    table = pa.Table.from_pylist(
        [{"id": 1, "name": "ada"}], schema=pa.schema([("id", pa.int64()), ("name", pa.string())])
    )
    (dirs.root / "raw" / "people").mkdir()
    pq.write_table(table, dirs.root / "raw" / "people" / "part-001.parquet")
    settings = dirs.settings()

    def progress(name: str, message: str) -> None:
        if message.startswith("started"):  # as if this run's lease had expired and run-2 took it over
            dirs.leases.replace(Lease.new("run-2", ELSEWHERE, datetime.now(UTC), 600), dirs.leases.read()[1])

    with pytest.raises(LeaseLostError, match=f"run {settings.run_id} lost its run lease"):
        run_local(settings, spark=spark, progress=progress)

    assert not (dirs.root / "state" / "state.json").exists()
    assert not (dirs.root / "out" / "people" / "snapshots" / settings.run_id).exists()
    assert dirs.leases.read()[0].run_id == "run-2"
    assert (dirs.root / "state" / LEASE_FILE).exists()
