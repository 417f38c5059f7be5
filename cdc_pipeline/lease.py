"""The run lease: which run is in progress on a state, so that a second run stops before it works.

The committed state is protected by its compare-and-swap write: of two overlapping runs only one
commits. The lease does not change that; it makes the second run stop at once instead of ingesting
everything and being refused at commit. It is one small document beside the state (``lease.json``)
naming the run that holds it, its owner (``host/pid`` locally, the execution ARN on AWS), when the
run started and when the lease expires; every change to it is a conditional write against the
version read, so of two runs taking it at once exactly one wins.

The rules, written once here for every store (a :class:`LeaseStore` only reads and conditionally
writes):

- a run **takes** the lease when there is none, when it has expired, when its owner has ended
  (a crashed local process, an execution no longer running), or, on AWS, when its owner is this
  run's own execution (a retried Plan Lambda); otherwise it raises :class:`RunInProgressError`;
- the holder **renews** it (locally every third of its time to live, while ingesting); on AWS the
  time to live outlasts the execution's timeout instead, as no process lives through a whole run;
- the holder **releases** it once the run has committed or failed, only while it still names the
  run;
- a run **keeps** it as long as the lease names its run id; a run whose lease was taken over by
  another run (after it expired) has lost it, and its commit is refused (:func:`check_held`).

Expiry is by wall clock: a run's host stamps ``expires_at`` and another host compares it with its
own clock, so the time to live is minutes to a day, far beyond any skew of synchronised clocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from cdc_pipeline.errors import CommitConflictError, LeaseLostError, PipelineError, RunInProgressError
from cdc_pipeline.state import StateDocument, StateStore, _atomic_write, _LockFile

logger = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
LEASE_LOCK = "lease.lock"
FORMAT_VERSION = 1
# Locally the lease is renewed every third of this while the run lives: a crashed run on another
# host (or a stopped process) holds it at most this long; on this host it is taken over at once.
DEFAULT_LOCAL_TTL_S = 600.0
# On AWS nothing renews the lease: it lives the execution's timeout plus this, as the Commit Lambda,
# invoked just before the timeout, may run its own 15 minutes past it; 5 more for clock skew.
AWS_TTL_MARGIN_S = 20 * 60
DEFAULT_POLL_S = 5.0
LOCAL_ADVICE = "wait for it, or pass --wait-for-lease"
# Tries at a decision when the lease changes between the read and the conditional write.
ATTEMPTS = 5

Clock = Callable[[], datetime]
OwnerEnded = Callable[["Lease"], bool]
# Hears of a lease taken over: the lease as it was, and why it could be.
TakingOver = Callable[["Lease", str], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Lease:
    """Who runs on the state: ``run_id`` of ``owner``, since ``started_at``, until ``expires_at``."""

    run_id: str
    owner: str
    started_at: str
    renewed_at: str
    expires_at: str

    @classmethod
    def new(cls, run_id: str, owner: str, now: datetime, ttl_s: float) -> Lease:
        return cls(run_id, owner, _stamp(now), _stamp(now), _stamp(now + timedelta(seconds=ttl_s)))

    def expired(self, now: datetime) -> bool:
        return now >= datetime.fromisoformat(self.expires_at)

    def extended(self, now: datetime, ttl_s: float) -> Lease:
        return replace(self, renewed_at=_stamp(now), expires_at=_stamp(now + timedelta(seconds=ttl_s)))

    def to_bytes(self) -> bytes:
        data = {"format_version": FORMAT_VERSION, **self.__dict__}
        return json.dumps(data, indent=2, sort_keys=True).encode()


def parse_lease(raw: bytes, source: str) -> Lease:
    """The lease in ``raw``; an unreadable one is an expired lease, which the next run takes over.

    Unlike the state document, nothing is lost by replacing a lease: the commit stays guarded by
    the state's own compare-and-swap whatever the lease says.
    """
    try:
        data = json.loads(raw)
        lease = Lease(**{field.name: str(data[field.name]) for field in fields(Lease)})
        lease.expired(utc_now())  # raises ValueError on a time that is not one
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        logger.warning("the run lease %s is unreadable (%r): it is treated as expired", source, exc)
        epoch = _stamp(datetime(1970, 1, 1, tzinfo=UTC))
        return Lease("unknown", f"an unreadable lease at {source}", epoch, epoch, epoch)
    return lease


class LeaseConflictError(PipelineError):
    """The lease changed between the read and a conditional write: decide again on what is there."""


class LeaseStore(Protocol):
    """Reads the lease and writes it conditionally; the rules are this module's functions."""

    location: str  # how messages name the lease

    def read(self) -> tuple[Lease | None, str | None]:
        """The lease and its version token, or (None, None) when no run holds it."""
        ...

    def create(self, lease: Lease) -> str:
        """Write ``lease`` if there is none; return its version. LeaseConflictError otherwise."""
        ...

    def replace(self, lease: Lease, version: str) -> str:
        """Replace the lease if it is still at ``version``; return the new version.
        LeaseConflictError otherwise (also when it was removed)."""
        ...

    def delete(self, version: str) -> None:
        """Remove the lease if it is still at ``version``; LeaseConflictError otherwise."""
        ...


# ---------------------------------------------------------------- the rules


def acquire(
    store: LeaseStore,
    run_id: str,
    owner: str,
    ttl_s: float,
    *,
    owner_ended: OwnerEnded | None = None,
    now: Clock = utc_now,
    advice: str = LOCAL_ADVICE,
    taking_over: TakingOver | None = None,
    owner_retakes: bool = False,
) -> Lease:
    """Take the lease for ``run_id`` of ``owner`` for ``ttl_s`` seconds; ``taking_over`` hears of
    another run's lease taken over (it is logged as a warning too).

    With ``owner_retakes``, a lease of the same owner is taken again whatever its run: an execution
    runs one plan at a time, so that is its own retried Plan Lambda. A local process has no such
    retry: another run of the same process is refused like any other.

    Raises
    ------
    RunInProgressError
        When another run holds a lease that has not expired and whose owner has not ended
        (``owner_ended``, when given, tells); its message names that run and ends with ``advice``.
    """
    for _ in range(ATTEMPTS):
        current, version = store.read()
        moment = now()
        lease = Lease.new(run_id, owner, moment, ttl_s)
        try:
            if current is None or version is None:
                store.create(lease)
                return lease
            if owner_retakes and current.owner == owner:
                # The same owner again: a retried Plan Lambda of one execution; a run id seen again
                # keeps its start.
                if current.run_id == run_id:
                    lease = replace(lease, started_at=current.started_at)
                why = None
            elif (why := free_because(current, moment, owner_ended)) is None:
                raise in_progress(current, advice)
            store.replace(lease, version)
            if why is not None:
                logger.warning("run %s took over the run lease of run %s: %s", run_id, current.run_id, why)
                if taking_over is not None:
                    taking_over(current, why)
            return lease
        except LeaseConflictError:
            continue  # another run wrote it in between: decide again on what it wrote
    raise PipelineError(
        f"the run lease {store.location} changed {ATTEMPTS} times while run {run_id} tried to take it; "
        "start the run again"
    )


def free_because(lease: Lease, now: datetime, owner_ended: OwnerEnded | None = None) -> str | None:
    """Why ``lease`` no longer holds the state (it expired, or ``owner_ended`` says its owner has
    ended); None while its run is in progress."""
    if lease.expired(now):
        return f"its lease expired at {lease.expires_at}"
    if owner_ended is not None and owner_ended(lease):
        return f"its owner {lease.owner} is no longer running"
    return None


def in_progress(lease: Lease, advice: str) -> RunInProgressError:
    """The refusal of a run that found ``lease`` held, ending with ``advice``."""
    return RunInProgressError(
        f"run {lease.run_id} has been in progress since {lease.started_at} (owner {lease.owner}; its "
        f"lease expires at {lease.expires_at}): this run did nothing; {advice}",
        run_id=lease.run_id,
        owner=lease.owner,
        since=lease.started_at,
        expires_at=lease.expires_at,
    )


def renew(store: LeaseStore, lease: Lease, ttl_s: float, *, now: Clock = utc_now) -> Lease:
    """Extend the lease of ``lease.run_id`` by ``ttl_s`` from now; take it again if it was removed.

    Raises
    ------
    LeaseLostError
        When the lease names another run (it expired and was taken over).
    """
    for _ in range(ATTEMPTS):
        current, version = store.read()
        moment = now()
        try:
            if current is None or version is None:
                renewed = lease.extended(moment, ttl_s)
                store.create(renewed)
                return renewed
            if current.run_id != lease.run_id:
                raise _lost(store, lease.run_id, current)
            renewed = current.extended(moment, ttl_s)
            store.replace(renewed, version)
            return renewed
        except LeaseConflictError:
            continue
    raise PipelineError(f"the run lease {store.location} changed {ATTEMPTS} times while it was renewed")


def release(store: LeaseStore, run_id: str) -> bool:
    """Remove the lease if it still names ``run_id``; whether it did."""
    for _ in range(ATTEMPTS):
        current, version = store.read()
        if current is None or version is None or current.run_id != run_id:
            return False
        try:
            store.delete(version)
            return True
        except LeaseConflictError:
            continue
    raise PipelineError(f"the run lease {store.location} changed {ATTEMPTS} times while it was released")


def check_held(store: LeaseStore, run_id: str) -> None:
    """Raise LeaseLostError when the lease names a run other than ``run_id``.

    No lease at all is not a loss: it was cleared by hand, or a run that took it over has finished
    and committed, which the state's compare-and-swap then refuses this run for.
    """
    current, _ = store.read()
    if current is not None and current.run_id != run_id:
        raise _lost(store, run_id, current)


def _lost(store: LeaseStore, run_id: str, current: Lease) -> LeaseLostError:
    return LeaseLostError(
        f"run {run_id} lost its run lease {store.location} to run {current.run_id} (owner "
        f"{current.owner}, in progress since {current.started_at}), which took it over once this run's "
        f"lease had expired or its owner looked ended; this run published nothing: run "
        f"{current.run_id} is the one in progress",
        competing_run_id=current.run_id,
    )


class LeaseGuardedStateStore:
    """A state store whose ``write`` first checks that ``run_id`` still holds the lease, and refuses
    (LeaseLostError, a CommitConflictError) once it is another run's: the commit's own refusal path
    then removes the run's unpublished output. The state's compare-and-swap still decides the rest."""

    def __init__(self, state_store: StateStore, lease_store: LeaseStore, run_id: str) -> None:
        self.state_store = state_store
        self.lease_store = lease_store
        self.run_id = run_id

    def read(self) -> tuple[StateDocument, str | None]:
        return self.state_store.read()

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        check_held(self.lease_store, self.run_id)
        return self.state_store.write(document, expected_version)


# ---------------------------------------------------------------- holding it through a local run


def wait_and_acquire(
    store: LeaseStore,
    run_id: str,
    owner: str,
    ttl_s: float,
    *,
    wait_s: float = 0.0,
    poll_s: float = DEFAULT_POLL_S,
    owner_ended: OwnerEnded | None = None,
    waiting: Callable[[RunInProgressError], None] = lambda refused: None,
    taking_over: TakingOver | None = None,
    now: Clock = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Lease:
    """:func:`acquire`, trying again every ``poll_s`` for up to ``wait_s`` seconds (``math.inf``:
    until the lease is free); ``waiting`` hears of the run waited for, once."""
    deadline = monotonic() + wait_s
    told = False
    while True:
        try:
            return acquire(
                store, run_id, owner, ttl_s, owner_ended=owner_ended, now=now, taking_over=taking_over
            )
        except RunInProgressError as refused:
            remaining = deadline - monotonic()
            if remaining <= 0:
                if wait_s <= 0:
                    raise
                held = Lease(refused.run_id, refused.owner, refused.since, refused.since, refused.expires_at)
                advice = f"waited {wait_s:g} s for it; wait longer, or start this run once it has finished"
                raise in_progress(held, advice) from None
            if not told:
                waiting(refused)
                told = True
            sleep(min(poll_s, remaining))


def waiting_for(refused: RunInProgressError) -> str:
    """What a run waiting for the lease says once."""
    return (
        f"waiting for run {refused.run_id}, in progress since {refused.since} (owner {refused.owner}; "
        f"its lease expires at {refused.expires_at})"
    )


@contextmanager
def holding(
    store: LeaseStore,
    run_id: str,
    owner: str,
    ttl_s: float = DEFAULT_LOCAL_TTL_S,
    *,
    wait_s: float = 0.0,
    poll_s: float = DEFAULT_POLL_S,
    owner_ended: OwnerEnded | None = None,
    waiting: Callable[[RunInProgressError], None] = lambda refused: None,
    taking_over: TakingOver | None = None,
) -> Iterator[Lease]:
    """Hold the lease for the ``with`` block: take it (waiting up to ``wait_s``), renew it every
    third of ``ttl_s`` on a background thread, release it when the block ends, however it ends
    (an error, an interrupt)."""
    lease = wait_and_acquire(
        store,
        run_id,
        owner,
        ttl_s,
        wait_s=wait_s,
        poll_s=poll_s,
        owner_ended=owner_ended,
        waiting=waiting,
        taking_over=taking_over,
    )
    renewer = _Renewer(store, lease, ttl_s)
    renewer.start()
    try:
        yield lease
    finally:
        renewer.stop()
        try:
            release(store, run_id)
        except (OSError, PipelineError) as exc:
            # The run's outcome is its commit, decided by now: a lease left behind is taken over by
            # the next run once it expires (on this host at once, this process having exited).
            logger.error(
                "run %s could not release its run lease %s (%s): it expires at %s",
                run_id,
                store.location,
                exc,
                renewer.lease.expires_at,
            )


class _Renewer:
    """Renews the lease every third of its time to live until stopped or the lease is lost."""

    def __init__(self, store: LeaseStore, lease: Lease, ttl_s: float) -> None:
        self.store = store
        self.lease = lease
        self.ttl_s = ttl_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.ttl_s / 3):
            try:
                self.lease = renew(self.store, self.lease, self.ttl_s)
            except LeaseLostError as exc:
                # The commit checks the lease again and refuses; nothing more to renew.
                logger.error("%s", exc)
                return
            except (OSError, PipelineError) as exc:
                logger.warning(
                    "run %s could not renew its run lease %s (%s); trying again in %.0f s",
                    self.lease.run_id,
                    self.store.location,
                    exc,
                    self.ttl_s / 3,
                )


# ---------------------------------------------------------------- the local store


def local_owner() -> str:
    """This process as a lease owner: ``host/pid``."""
    return f"{socket.gethostname()}/{os.getpid()}"


def local_owner_ended(lease: Lease) -> bool:
    """Whether ``lease``'s owner is a process of this host that no longer exists.

    A lease of another host, or one whose pid now belongs to another process, counts as alive: it
    is then taken over only once it expires.
    """
    host, _, pid = lease.owner.rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process of another user: it exists
    return False


class LocalLeaseStore:
    """``lease.json`` in the state directory; each conditional write is a compare under ``flock``
    on ``lease.lock`` (held for milliseconds), then a write-and-rename. The version is a hash of
    the file's bytes."""

    def __init__(self, directory: str | Path, lock_timeout_s: float = 10.0) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LEASE_FILE
        self.location = str(self.path)
        self.lock_timeout_s = lock_timeout_s

    def read(self) -> tuple[Lease | None, str | None]:
        raw = self._raw()
        if raw is None:
            return None, None
        return parse_lease(raw, self.location), _version(raw)

    def create(self, lease: Lease) -> str:
        with self._locked(lease.run_id):
            if self._raw() is not None:
                raise LeaseConflictError(f"{self.location} exists")
            return self._write(lease)

    def replace(self, lease: Lease, version: str) -> str:
        with self._locked(lease.run_id):
            self._expect(version)
            return self._write(lease)

    def delete(self, version: str) -> None:
        with self._locked("release"):
            self._expect(version)
            self.path.unlink()

    def _raw(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _expect(self, version: str) -> None:
        raw = self._raw()
        if raw is None or _version(raw) != version:
            raise LeaseConflictError(f"{self.location} changed")

    def _write(self, lease: Lease) -> str:
        payload = lease.to_bytes()
        _atomic_write(self.path, payload, lease.run_id)
        return _version(payload)

    @contextmanager
    def _locked(self, holder: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            with _LockFile(self.directory / LEASE_LOCK, holder, self.lock_timeout_s):
                yield
        except CommitConflictError as exc:
            # The lock is held for milliseconds at a time: a holder this long is a stopped process.
            raise PipelineError(f"cannot change the run lease {self.location}: {exc}") from exc


def _version(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:32]
