"""Arrivals: which of a table's files are new since its last commit, each applied exactly once.

A table read *by arrival* is read file by file: the plan lists the table's data files, and an
ingest reads exactly the files that arrived since the table's last commit, whatever the rows in
them are stamped with. What the committed snapshot has applied is recorded in the table's
*file cursor*, kept bounded rather than as a list of every file ever landed:

* ``mark``: every file that arrived at or before the mark has been applied;
* ``recent``: the files applied that arrived after the mark (path -> arrival time).

A listed file is *new* when it arrived after the mark and is not in ``recent``. When a run commits
a table, its cursor advances to ``mark' = max(mark, reference - settle)``, and ``recent`` keeps
only the applied files that arrived after ``mark'``. ``reference`` is "now" on the storage's own
clock, taken before the listing (S3's ``Date`` header; locally the system clock), and ``settle`` is
the settle window: the longest a file may take to become visible after the time it is stamped
with. S3 stamps a multipart upload with the time the upload *started*, so a large file can appear
with an older time than small files already applied; it is still read as long as it completes
within the settle window. ``recent`` then holds only files that arrived within the last settle
window, however many files the table has.

A table whose file names sort in the order the files land (DMS's date folders and timestamped
file names) may say so in the registry (``time_ordered_keys``). Its cursor then also keeps
``start_after``: the greatest name among files that arrived a settle window before the mark, and
its listings start after that name (S3 ``StartAfter``), so listing costs in proportion to the
files of the last two settle windows rather than to every file the table holds.

Times are integer microseconds since the epoch (UTC), as watermarks are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_pipeline.watermark import Watermark, WatermarkKind, parse_lookback

DEFAULT_SETTLE_WINDOW = "PT15M"


@dataclass(frozen=True)
class DataFile:
    """One data file of a table: its path relative to the table's location, size and arrival time."""

    path: str
    size: int
    arrived: int


@dataclass(frozen=True)
class FileListing:
    """A table's data files, and ``reference``: "now" on the storage's clock, taken before listing."""

    location: str
    files: tuple[DataFile, ...]
    reference: int


@dataclass(frozen=True)
class FileCursor:
    """What a table's committed snapshot has applied; see the module docstring."""

    mark: int | None = None
    recent: dict[str, int] = field(default_factory=dict)
    start_after: str | None = None

    def new_files(self, files: Iterable[DataFile]) -> list[DataFile]:
        """The files not applied yet, in arrival order (then by path)."""
        fresh = [
            f for f in files if (self.mark is None or f.arrived > self.mark) and f.path not in self.recent
        ]
        return sorted(fresh, key=lambda f: (f.arrived, f.path))

    def advance(
        self,
        applied: Sequence[DataFile],
        reference: int,
        settle_micros: int,
        listed: Sequence[DataFile] | None = None,
    ) -> FileCursor:
        """The cursor once ``applied`` (every new file of a listing taken at ``reference``) is
        committed; ``listed`` (every file of that listing) moves ``start_after`` for a table whose
        names sort in arrival order."""
        floor = reference - settle_micros
        mark = floor if self.mark is None else max(self.mark, floor)
        recent = {path: at for path, at in self.recent.items() if at > mark}
        recent.update({f.path: f.arrived for f in applied if f.arrived > mark})
        start_after = self.start_after
        if listed is not None:
            # A settle window of margin: names come from the writer's clock, arrival from storage's.
            settled = [f.path for f in listed if f.arrived <= mark - settle_micros]
            start_after = max([*settled, *([start_after] if start_after else [])], default=None)
        return FileCursor(mark=mark, recent=dict(sorted(recent.items())), start_after=start_after)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mark": None if self.mark is None else _iso(self.mark),
            "recent": {path: _iso(at) for path, at in self.recent.items()},
        }
        if self.start_after is not None:
            data["start_after"] = self.start_after
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileCursor:
        """Raises ValueError on anything but a cursor written by :meth:`to_json`."""
        if not isinstance(data, dict) or not isinstance(data.get("recent"), dict):
            raise ValueError(f"not a file cursor: {data!r}")
        mark = data.get("mark")
        start_after = data.get("start_after")
        if start_after is not None and not isinstance(start_after, str):
            raise ValueError(f"not a file name: {start_after!r}")
        return cls(
            mark=None if mark is None else _micros(mark),
            recent={str(path): _micros(at) for path, at in data["recent"].items()},
            start_after=start_after,
        )


def is_hidden(name: str) -> bool:
    """A file or folder name that is no table data, by Spark's and Hive's rule: ``_SUCCESS``
    markers, ``.crc`` checksums, ``_temporary`` folders, files still being copied."""
    return (
        name.startswith(".")
        or (name.startswith("_") and "=" not in name)
        or name.endswith(("._COPYING_", "_$folder$"))
    )


def settle_micros(text: str) -> int:
    """The settle window (an ISO-8601 duration such as ``PT15M``) in microseconds."""
    try:
        return parse_lookback(text)
    except ValueError as exc:
        raise ValueError(str(exc).replace("lookback", "settle window")) from exc


def _iso(micros: int) -> str:
    return Watermark(micros, WatermarkKind.TIMESTAMP).iso()


def _micros(text: object) -> int:
    if not isinstance(text, str):
        raise ValueError(f"not an ISO-8601 time: {text!r}")
    watermark = Watermark.parse(text)
    if watermark.kind is not WatermarkKind.TIMESTAMP:
        raise ValueError(f"not a UTC time (ending in Z): {text!r}")
    return watermark.micros
