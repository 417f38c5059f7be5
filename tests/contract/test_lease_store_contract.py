"""The LeaseStore contract: the local lease file and the S3 lease object take, renew, release and
refuse alike, and the lease rules (``cdc_pipeline.lease``) hold on both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cdc_pipeline.errors import LeaseLostError, RunInProgressError
from cdc_pipeline.lease import (
    Lease,
    LeaseConflictError,
    LeaseStore,
    acquire,
    check_held,
    release,
    renew,
)
from tests.contract.conftest import LeaseStoreCase

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
TTL_S = 600.0
OTHER = "arn:aws:states:eu-west-1:123456789012:execution:cdc-pipeline:manual-1"


def at(seconds: float):
    return lambda: T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------- the store's own operations


def test_no_lease_reads_as_none_without_a_version(lease_store_case: LeaseStoreCase) -> None:
    assert lease_store_case.make().read() == (None, None)


def test_a_created_lease_reads_back_equal_with_the_version_create_returned(lease_store_case) -> None:
    lease = Lease.new("run-1", "host/1", T0, TTL_S)

    version = lease_store_case.make().create(lease)

    assert lease_store_case.make().read() == (lease, version)


def test_create_refuses_when_a_lease_exists_and_leaves_it(lease_store_case) -> None:
    store = lease_store_case.make()
    store.create(Lease.new("run-1", "host/1", T0, TTL_S))
    before = lease_store_case.get_raw()

    with pytest.raises(LeaseConflictError):
        store.create(Lease.new("run-2", "host/2", T0, TTL_S))

    assert lease_store_case.get_raw() == before


def test_replace_and_delete_need_the_current_version(lease_store_case) -> None:
    store = lease_store_case.make()
    first = store.create(Lease.new("run-1", "host/1", T0, TTL_S))
    second = store.replace(Lease.new("run-2", "host/2", T0, TTL_S), first)
    assert second != first
    before = lease_store_case.get_raw()

    with pytest.raises(LeaseConflictError):
        store.replace(Lease.new("run-3", "host/3", T0, TTL_S), first)
    with pytest.raises(LeaseConflictError):
        store.delete(first)
    assert lease_store_case.get_raw() == before

    store.delete(second)
    assert store.read() == (None, None)
    with pytest.raises(LeaseConflictError):
        store.replace(Lease.new("run-3", "host/3", T0, TTL_S), second)  # nothing left to replace


# ---------------------------------------------------------------- the rules on each store


def test_a_free_lease_is_taken_and_a_second_run_is_refused_naming_the_first(lease_store_case) -> None:
    store = lease_store_case.make()
    taken = acquire(store, "run-1", OTHER, TTL_S, now=at(0))

    with pytest.raises(RunInProgressError) as refused:
        acquire(store, "run-2", "host/2", TTL_S, now=at(60))

    assert str(refused.value) == (
        f"run run-1 has been in progress since 2026-05-01T12:00:00.000+00:00 (owner {OTHER}; its lease "
        "expires at 2026-05-01T12:10:00.000+00:00): this run did nothing; wait for it, or pass "
        "--wait-for-lease"
    )
    assert (refused.value.run_id, refused.value.owner) == ("run-1", OTHER)
    assert store.read()[0] == taken


def test_an_expired_lease_is_taken_over(lease_store_case) -> None:
    store = lease_store_case.make()
    expired = acquire(store, "run-1", "host/1", TTL_S, now=at(0))
    told: list[tuple[Lease, str]] = []

    def taking_over(lease: Lease, why: str) -> None:
        told.append((lease, why))

    taken = acquire(store, "run-2", "host/2", TTL_S, now=at(TTL_S), taking_over=taking_over)

    assert store.read()[0] == taken
    assert (taken.run_id, taken.started_at) == ("run-2", "2026-05-01T12:10:00.000+00:00")
    assert told == [(expired, "its lease expired at 2026-05-01T12:10:00.000+00:00")]


def test_the_lease_of_an_owner_that_ended_is_taken_over_before_it_expires(lease_store_case) -> None:
    store = lease_store_case.make()
    acquire(store, "run-1", "host/1", TTL_S, now=at(0))
    asked: list[Lease] = []

    def ended(lease: Lease) -> bool:
        asked.append(lease)
        return lease.owner == "host/1"

    taken = acquire(store, "run-2", "host/2", TTL_S, owner_ended=ended, now=at(1))

    assert taken.run_id == "run-2"
    assert [lease.run_id for lease in asked] == ["run-1"]
    with pytest.raises(RunInProgressError):  # run-2's owner has not ended
        acquire(store, "run-3", "host/3", TTL_S, owner_ended=ended, now=at(2))


def test_the_same_owner_takes_its_lease_again_as_a_retried_plan_does(lease_store_case) -> None:
    store = lease_store_case.make()
    acquire(store, "run-1", OTHER, TTL_S, now=at(0))

    again = acquire(store, "run-1", OTHER, TTL_S, now=at(30), owner_retakes=True)
    retried = acquire(store, "run-2", OTHER, TTL_S, now=at(40), owner_retakes=True)

    assert again.started_at == "2026-05-01T12:00:00.000+00:00"  # the same run keeps its start
    assert store.read()[0] == retried
    assert retried.run_id == "run-2"


def test_a_second_run_of_the_same_process_is_refused_like_any_other(lease_store_case) -> None:
    store = lease_store_case.make()
    first = acquire(store, "run-1", "host/1", TTL_S, now=at(0))

    with pytest.raises(RunInProgressError):
        acquire(store, "run-2", "host/1", TTL_S, owner_ended=lambda lease: False, now=at(1))

    assert store.read()[0] == first


class _RivalTakesOverFirst:
    """A store on which another run takes the expired lease between this run's read and its write."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.location = store.location
        self.rival_done = False

    def read(self) -> tuple[Lease | None, str | None]:
        return self.store.read()

    def create(self, lease: Lease) -> str:
        return self.store.create(lease)

    def replace(self, lease: Lease, version: str) -> str:
        if not self.rival_done:
            self.rival_done = True
            acquire(self.store, "run-rival", "host/rival", TTL_S, now=at(TTL_S + 1))
        return self.store.replace(lease, version)

    def delete(self, version: str) -> None:
        self.store.delete(version)


def test_of_two_runs_taking_over_one_expired_lease_exactly_one_wins(lease_store_case) -> None:
    store = lease_store_case.make()
    acquire(store, "run-1", "host/1", TTL_S, now=at(0))

    with pytest.raises(RunInProgressError) as refused:
        acquire(_RivalTakesOverFirst(store), "run-2", "host/2", TTL_S, now=at(TTL_S + 1))

    assert refused.value.run_id == "run-rival"
    assert store.read()[0].run_id == "run-rival"


def test_renewal_moves_the_expiry_and_fails_once_another_run_took_over(lease_store_case) -> None:
    store = lease_store_case.make()
    taken = acquire(store, "run-1", "host/1", TTL_S, now=at(0))

    renewed = renew(store, taken, TTL_S, now=at(200))

    assert renewed.expires_at == "2026-05-01T12:13:20.000+00:00"
    assert renewed.started_at == taken.started_at
    assert store.read()[0] == renewed
    acquire(store, "run-2", "host/2", TTL_S, now=at(200 + TTL_S))
    with pytest.raises(LeaseLostError) as lost:
        renew(store, renewed, TTL_S, now=at(200 + TTL_S + 1))
    assert lost.value.competing_run_id == "run-2"
    assert store.read()[0].run_id == "run-2"


def test_a_lease_removed_by_hand_is_taken_again_by_its_runs_renewal(lease_store_case) -> None:
    store = lease_store_case.make()
    taken = acquire(store, "run-1", "host/1", TTL_S, now=at(0))
    release(store, "run-1")

    renewed = renew(store, taken, TTL_S, now=at(10))

    assert store.read()[0] == renewed


def test_release_removes_only_the_runs_own_lease(lease_store_case) -> None:
    store = lease_store_case.make()
    acquire(store, "run-1", "host/1", TTL_S, now=at(0))

    assert release(store, "run-2") is False
    assert store.read()[0].run_id == "run-1"
    assert release(store, "run-1") is True
    assert store.read() == (None, None)
    assert release(store, "run-1") is False


def test_a_run_holds_the_lease_while_it_names_it_or_nobody_holds_it(lease_store_case) -> None:
    store = lease_store_case.make()
    check_held(store, "run-1")  # no lease: not lost
    acquire(store, "run-1", "host/1", TTL_S, now=at(0))
    check_held(store, "run-1")
    acquire(store, "run-2", "host/2", TTL_S, now=at(TTL_S))

    with pytest.raises(LeaseLostError) as lost:
        check_held(store, "run-1")

    assert f"run run-1 lost its run lease {lease_store_case.location} to run run-2" in str(lost.value)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"run_id": "r"}',
        b'{"run_id": 1, "owner": "o", "started_at": "x", "renewed_at": "x", "expires_at": "never"}',
    ],
)
def test_an_unreadable_lease_counts_as_expired_and_is_taken_over(lease_store_case, content) -> None:
    lease_store_case.put_raw(content)

    taken = acquire(lease_store_case.make(), "run-1", "host/1", TTL_S, now=at(0))

    assert lease_store_case.make().read()[0] == taken
