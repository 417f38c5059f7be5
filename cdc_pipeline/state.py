"""The committed state: one document holding every table's tracker, replaced atomically.

Everything a run publishes (each table's watermark and current snapshot location) lives in ONE
document, so a commit is one atomic write: readers see the whole previous run or the whole new
one. Writes are compare-and-swap against the version the run planned from; a competing commit is
refused with :class:`CommitConflictError`, never overwritten. Locally a lock file plus an atomic
rename give that; on S3 a conditional ``PutObject`` does.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cdc_pipeline.arrivals import FileCursor
from cdc_pipeline.errors import CommitConflictError, NewerFormatError, StateCorruptError
from cdc_pipeline.watermark import Watermark

# 2 added the file cursor, the read mode, the epoch unit and the tombstones of each table; 3 the
# snapshot's bytes and partitions; 4 the registry file a tracker was committed under. Older
# documents are read as they are (their tables have none of those yet).
FORMAT_VERSION = 4
READABLE_FORMATS = frozenset({1, 2, 3, 4})
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
HISTORY_DIR = "history"
# A history copy's name: the revision (10 digits, zero-padded) and the run id that committed it.
_HISTORY_NAME = re.compile(r"(?P<revision>[0-9]+)-(?P<run_id>.+)\.json")


@dataclass(frozen=True)
class TableState:
    """One table's tracker: what its current snapshot is and how far it has read."""

    watermark: str | None
    location: str
    rows: int
    run_id: str
    committed_at: str
    load_type: str
    mode: str
    watermark_column: str | None = None
    previous_locations: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    sequence_column: str | None = None
    delete_column: str | None = None
    delete_values: tuple[str, ...] = ()
    incremental_by: str | None = None
    # What the snapshot has applied, for tables read by arrival (arrivals.FileCursor as JSON).
    cursor: dict[str, Any] | None = None
    watermark_unit: str | None = None
    # The keys deleted within the table's tombstone retention, beside the snapshot (never in it).
    tombstones: str | None = None
    previous_tombstones: tuple[str, ...] = ()
    bytes: int | None = None  # the current snapshot's size on storage (None: committed before format 3)
    # A partitioned snapshot (registry partition_by): its partitions by id, each a folder that may
    # belong to an earlier run (carried by reference), and the partitions of the retained earlier
    # snapshots, whose folders are kept as long as any of them names them.
    partition_by: tuple[str, ...] = ()
    partitions: dict[str, dict[str, Any]] | None = None
    retained_partitions: tuple[dict[str, dict[str, Any]], ...] = ()
    # The registry file the tracker was committed under (None: committed by an earlier version).
    registry_file: str | None = None

    def __post_init__(self) -> None:
        if self.watermark is not None:
            Watermark.parse(self.watermark)  # raises ValueError on anything but a watermark
        if not isinstance(self.location, str) or not self.location:
            raise ValueError(f"location {self.location!r} is not a location")
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 0:
            raise ValueError(f"rows {self.rows!r} is not a row count")
        if self.cursor is not None:
            FileCursor.from_json(self.cursor)  # raises ValueError on anything but a cursor

    def dedup_settings(self) -> tuple[object, ...]:
        """What decides a key's current version, column names as Glue and Spark match them (ignoring
        case); a change invalidates the snapshot."""
        return (
            self.mode,
            tuple(column.lower() for column in self.primary_key),
            self.sequence_column.lower() if self.sequence_column else None,
            self.delete_column.lower() if self.delete_column else None,
            self.delete_values,
            self.watermark_unit,
        )

    def locations(self) -> set[str]:
        """Every folder this tracker keeps: snapshots and tombstones, current and retained, and
        every partition folder a current or retained snapshot names, with its run's folder."""
        kept = {
            self.location,
            *self.previous_locations,
            *([self.tombstones] if self.tombstones else []),
            *self.previous_tombstones,
        }
        for partitions in (self.partitions or {}, *self.retained_partitions):
            for partition in partitions.values():
                kept |= {partition["location"], partition["location"].rsplit("/", 1)[0]}
        return kept

    def partition_locations(self) -> list[str]:
        """The folders of the current snapshot's partitions, what a reader of it reads."""
        return sorted(partition["location"] for partition in (self.partitions or {}).values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _TUPLES:
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableState:
        return cls(**{**data, **{name: tuple(data.get(name, ())) for name in _TUPLES}})


_TUPLES = (
    "previous_locations",
    "primary_key",
    "delete_values",
    "previous_tombstones",
    "partition_by",
    "retained_partitions",
)


@dataclass(frozen=True)
class StateDocument:
    """Every table's tracker, at one revision."""

    revision: int = 0
    run_id: str | None = None
    committed_at: str | None = None
    tables: dict[str, TableState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "revision": self.revision,
            "run_id": self.run_id,
            "committed_at": self.committed_at,
            "tables": {name: self.tables[name].to_json() for name in sorted(self.tables)},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> StateDocument:
        try:
            # A newer version's document is not corrupt: restoring or deleting it would roll back runs.
            NewerFormatError.check(f"state document {source}", data.get("format_version"), FORMAT_VERSION)
            if data.get("format_version") not in READABLE_FORMATS:
                raise ValueError(
                    f"format_version {data.get('format_version')!r}, expected one of "
                    f"{sorted(READABLE_FORMATS)}"
                )
            return cls(
                revision=int(data["revision"]),
                run_id=data.get("run_id"),
                committed_at=data.get("committed_at"),
                tables={name: TableState.from_json(value) for name, value in data["tables"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateCorruptError(_corrupt_message(source, f"unexpected content ({exc!r})")) from exc

    def with_tables(self, tables: dict[str, TableState], run_id: str, committed_at: str) -> StateDocument:
        return replace(
            self, revision=self.revision + 1, run_id=run_id, committed_at=committed_at, tables=tables
        )


def _corrupt_message(source: str, detail: str) -> str:
    return (
        f"state document {source} is corrupt: {detail}. It is not treated as empty (that would force "
        f"full reloads of every table); restore the last good revision from the {HISTORY_DIR}/ folder "
        "beside it, or delete it deliberately to start over with full loads"
    )


def parse_state_document(raw: bytes, source: str) -> StateDocument:
    """The document in ``raw``; StateCorruptError (naming ``source``) for anything else."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateCorruptError(_corrupt_message(source, f"not valid JSON ({exc})")) from exc
    if not isinstance(data, dict):
        raise StateCorruptError(_corrupt_message(source, "not a JSON object"))
    return StateDocument.from_json(data, source)


class StateStore(Protocol):
    """Reads and compare-and-swap writes the state document."""

    def read(self) -> tuple[StateDocument, str | None]:
        """The current document and its version token (None when no document exists yet)."""
        ...

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        """Replace the document if it is still at ``expected_version``; return the new version.

        Raises CommitConflictError when another commit came first.
        """
        ...


@dataclass(frozen=True, order=True)
class Revision:
    """One history copy of a committed revision: its number, the run that committed it, its file name.

    A state started over begins again at revision 1, so a number may have several copies (one per
    lineage); the file name tells them apart.
    """

    revision: int
    run_id: str
    name: str

    @classmethod
    def from_name(cls, name: str) -> Revision | None:
        """The revision a history file name stands for; None for any other name (a temporary file)."""
        match = _HISTORY_NAME.fullmatch(name)
        if match is None:
            return None
        return cls(int(match["revision"]), match["run_id"], name)


class RevisionHistory(StateStore, Protocol):
    """A state store that also reads back the history copies of every committed revision."""

    def history(self) -> list[Revision]:
        """Every history copy, oldest revision first (none yet: [])."""
        ...

    def read_revision(self, revision: Revision) -> StateDocument:
        """The document of one history copy; StateCorruptError when it is not a state document."""
        ...


class LocalStateStore:
    """The state document in a local directory: lock file, compare, write-then-rename."""

    def __init__(self, directory: str | Path, lock_timeout_s: float = 10.0) -> None:
        self.directory = Path(directory)
        self.lock_timeout_s = lock_timeout_s

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def read(self) -> tuple[StateDocument, str | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return StateDocument(), None
        document = parse_state_document(raw, str(self.path))
        return document, str(document.revision)

    def write(self, document: StateDocument, expected_version: str | None) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        run_id = document.run_id or "unknown"
        with _LockFile(self.directory / LOCK_FILE, run_id, self.lock_timeout_s):
            current, version = self.read()
            if version != expected_version:
                raise CommitConflictError(
                    f"state {self.path} moved on since this run planned: run {current.run_id!r} committed "
                    f"revision {current.revision} (this run planned from "
                    f"{'no state' if expected_version is None else 'revision ' + expected_version}); "
                    "nothing was published by this run, start it again",
                    competing_run_id=current.run_id,
                )
            payload = json.dumps(document.to_json(), indent=2, sort_keys=True).encode()
            _atomic_write(self.path, payload, run_id)
            history = self.directory / HISTORY_DIR
            history.mkdir(exist_ok=True)
            # Create-only, named by revision and run: a state started over never overwrites history.
            _atomic_write(
                history / f"{document.revision:010d}-{run_id}.json", payload, run_id, create_only=True
            )
        return str(document.revision)

    def history(self) -> list[Revision]:
        try:
            names = os.listdir(self.directory / HISTORY_DIR)
        except FileNotFoundError:
            return []
        return sorted(revision for name in names if (revision := Revision.from_name(name)) is not None)

    def read_revision(self, revision: Revision) -> StateDocument:
        path = self.directory / HISTORY_DIR / revision.name
        return parse_state_document(path.read_bytes(), str(path))


def _atomic_write(path: Path, payload: bytes, run_id: str, *, create_only: bool = False) -> None:
    """Write a temporary file, flush it, then rename it into place (or link: refuses to replace)."""
    temporary = path.with_name(f".{path.name}.{run_id}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    if create_only:
        try:
            os.link(temporary, path)
        finally:
            temporary.unlink()
    else:
        try:
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)  # a refused write leaves nothing behind
            raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class _LockFile:
    """An exclusive ``flock`` on the lock file, naming its holder while held.

    The kernel releases the lock when its holder exits, crashed or not, so no lock is ever left
    stale and none has to be guessed dead. The file itself stays; only its content names a holder.
    """

    def __init__(self, path: Path, run_id: str, timeout_s: float) -> None:
        self.path = path
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.fd: int | None = None

    def __enter__(self) -> _LockFile:
        deadline = time.monotonic() + self.timeout_s
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(fd)
                    raise CommitConflictError(
                        f"state lock {self.path} is held by run {holder.get('run_id')!r} (pid "
                        f"{holder.get('pid')} on {holder.get('host')}): another commit is in progress; "
                        "this run published nothing, start it again when that one has finished",
                        competing_run_id=holder.get("run_id"),
                    ) from None
                time.sleep(0.02)
        holder_text = json.dumps({"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text.encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
