"""The file cursor applies each file of a table exactly once, however late it becomes visible within
the settle window; and only then."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipeline.arrivals import DataFile, FileCursor, is_hidden, settle_micros

# 2024-05-01T12:00:00Z: simulated times are offsets from a real instant, so cursors survive JSON.
T0 = 1_714_564_800_000_000
SETTLE = 900_000_000  # PT15M


def _file(path: str, arrived: int, size: int = 1) -> DataFile:
    return DataFile(path, size, arrived)


# ----------------------------------------------------------------------------------------------
# new_files and advance
# ----------------------------------------------------------------------------------------------


def test_with_no_cursor_every_listed_file_is_new_in_arrival_then_path_order() -> None:
    files = [_file("b", T0 + 2), _file("c", T0 + 1), _file("a", T0 + 2)]

    assert FileCursor().new_files(files) == [_file("c", T0 + 1), _file("a", T0 + 2), _file("b", T0 + 2)]


def test_a_file_is_new_only_when_it_arrived_after_the_mark_and_is_not_in_recent() -> None:
    cursor = FileCursor(mark=T0, recent={"applied": T0 + 5})
    files = [
        _file("before", T0 - 1),
        _file("at_mark", T0),
        _file("applied", T0 + 5),
        _file("after", T0 + 1),
    ]

    assert cursor.new_files(files) == [_file("after", T0 + 1)]


def test_advance_moves_the_mark_to_settle_before_the_reference() -> None:
    reference = T0 + 10 * SETTLE

    cursor = FileCursor().advance([], reference, SETTLE)

    assert cursor.mark == reference - SETTLE
    assert cursor.recent == {}


def test_advance_keeps_in_recent_only_applied_files_that_arrived_after_the_new_mark() -> None:
    reference = T0 + SETTLE
    old = FileCursor(mark=T0 - SETTLE, recent={"old_early": T0 - 1, "old_late": T0 + 7})
    applied = [_file("early", T0 - 5), _file("at_new_mark", T0), _file("late", T0 + 3)]

    cursor = old.advance(applied, reference, SETTLE)

    assert cursor.mark == T0
    assert cursor.recent == {"late": T0 + 3, "old_late": T0 + 7}


def test_the_mark_never_moves_back_when_a_later_reference_is_older() -> None:
    cursor = FileCursor(mark=T0, recent={"late": T0 + 1})

    advanced = cursor.advance([_file("early", T0 - 3)], T0 + SETTLE - 1, SETTLE)

    assert advanced.mark == T0
    assert advanced.recent == {"late": T0 + 1}


def test_a_multipart_upload_stamped_with_its_start_is_applied_when_it_completes_within_settle() -> None:
    # The big file started first but completed after a small file that a run has already applied.
    big, small = _file("big.parquet", T0, size=5 << 30), _file("small.parquet", T0 + 60_000_000)
    first_run = T0 + 120_000_000
    cursor = FileCursor().advance(FileCursor().new_files([small]), first_run, SETTLE)

    second = cursor.new_files([big, small])

    assert second == [big]


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------

_MICROS = st.integers(min_value=0, max_value=253_402_300_799_999_999)  # up to 9999-12-31, to the µs


@given(
    mark=st.none() | _MICROS,
    recent=st.dictionaries(st.text(min_size=1, max_size=20), _MICROS, max_size=5),
)
def test_a_cursor_round_trips_exactly_through_json_text(mark: int | None, recent: dict[str, int]) -> None:
    cursor = FileCursor(mark=mark, recent=recent)

    assert FileCursor.from_json(json.loads(json.dumps(cursor.to_json()))) == cursor


def test_cursor_json_names_times_in_iso_utc() -> None:
    cursor = FileCursor(mark=T0, recent={"p/a.parquet": T0 + 1})

    assert cursor.to_json() == {
        "mark": "2024-05-01T12:00:00.000000Z",
        "recent": {"p/a.parquet": "2024-05-01T12:00:00.000001Z"},
    }


@pytest.mark.parametrize(
    "data",
    [
        None,
        "2024-05-01T12:00:00Z",
        [],
        {},
        {"mark": None},
        {"mark": None, "recent": []},
        {"mark": T0, "recent": {}},
        {"mark": "yesterday", "recent": {}},
        {"mark": "2024-05-01", "recent": {}},
        {"mark": "2024-05-01T12:00:00", "recent": {}},
        {"mark": None, "recent": {"a.parquet": T0}},
        {"mark": None, "recent": {"a.parquet": None}},
    ],
    ids=[
        "null",
        "a string",
        "a list",
        "no recent",
        "recent missing",
        "recent a list",
        "mark a number",
        "mark not a time",
        "mark a date",
        "mark without zone",
        "recent time a number",
        "recent time null",
    ],
)
def test_anything_but_a_cursor_is_refused_when_read_from_json(data: object) -> None:
    with pytest.raises(ValueError, match=r"not a file cursor|not an ISO-8601|not a UTC time"):
        FileCursor.from_json(data)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Hidden names and the settle window
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "_SUCCESS",
        "_temporary",
        "_metadata",
        ".part-00000.snappy.parquet.crc",
        "._SUCCESS.crc",
        ".hidden",
        "part-00000.parquet._COPYING_",
        "data_$folder$",
    ],
)
def test_markers_checksums_temporary_folders_and_files_being_copied_are_hidden(name: str) -> None:
    assert is_hidden(name)


@pytest.mark.parametrize(
    "name", ["part-00000.snappy.parquet", "_col=1", "part=1", "dt=2024-05-01", "pv[1] é.parquet", "x_"]
)
def test_data_files_and_partition_folders_are_not_hidden(name: str) -> None:
    assert not is_hidden(name)


def test_the_settle_window_is_an_iso_duration_in_microseconds() -> None:
    assert settle_micros("PT15M") == SETTLE


def test_a_malformed_settle_window_is_refused_by_its_own_name() -> None:
    with pytest.raises(ValueError, match="settle window"):
        settle_micros("15 minutes")


# ----------------------------------------------------------------------------------------------
# Exactly once, simulated: a landing zone, runs at random times, some of which fail
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """A file stamped ``arrived`` that becomes listable ``lag`` later."""

    file: DataFile
    lag: int

    @property
    def visible(self) -> int:
        return self.file.arrived + self.lag


@dataclass(frozen=True)
class Run:
    """A run whose reference is ``at``, listing ``listing_delay`` later; it commits or fails."""

    at: int
    listing_delay: int
    commits: bool


@st.composite
def landing_zones(draw: st.DrawFn) -> tuple[int, list[Landed], list[Run]]:
    # Small numbers make ties (equal arrivals, runs at a file's arrival or visibility) common.
    settle = draw(st.integers(min_value=1, max_value=40))
    arrivals = draw(st.lists(st.integers(min_value=0, max_value=200), max_size=25))
    landed = [
        Landed(_file(f"f{i:02d}.parquet", T0 + arrived), draw(st.integers(min_value=0, max_value=settle)))
        for i, arrived in enumerate(arrivals)
    ]
    runs = draw(
        st.lists(
            st.builds(
                Run,
                at=st.integers(min_value=0, max_value=260).map(lambda t: T0 + t),
                listing_delay=st.integers(min_value=0, max_value=settle),
                commits=st.booleans(),
            ),
            max_size=15,
        )
    )
    return settle, landed, sorted(runs, key=lambda run: run.at)


def _simulate(settle: int, landed: list[Landed], runs: list[Run]) -> tuple[FileCursor, list[str]]:
    """Each run lists what is visible when it lists, takes its new files, and commits or fails; the
    cursor goes through its JSON form between runs, as it does through the state document.

    Returns the final cursor and every path applied by a committed run, once per application."""
    cursor, applied = FileCursor(), []
    for run in runs:
        listed = [f.file for f in landed if f.visible <= run.at + run.listing_delay]
        new = cursor.new_files(listed)
        if run.commits:
            cursor = FileCursor.from_json(
                json.loads(json.dumps(cursor.advance(new, run.at, settle).to_json()))
            )
            applied += [f.path for f in new]
    return cursor, applied


def _final_run(landed: list[Landed], runs: list[Run]) -> Run:
    """A committing run later than every earlier run and every file's visibility."""
    latest = max([T0, *(f.visible for f in landed), *(r.at + r.listing_delay for r in runs)])
    return Run(at=latest, listing_delay=0, commits=True)


@settings(max_examples=200, deadline=None)
@given(landing_zones())
def test_every_file_visible_within_settle_of_its_arrival_is_applied_exactly_once(
    zone: tuple[int, list[Landed], list[Run]],
) -> None:
    settle, landed, runs = zone

    _, applied = _simulate(settle, landed, [*runs, _final_run(landed, runs)])

    assert sorted(applied) == sorted(f.file.path for f in landed)


@settings(max_examples=200, deadline=None)
@given(landing_zones())
def test_a_committed_cursor_remembers_only_files_that_arrived_within_settle_of_its_reference(
    zone: tuple[int, list[Landed], list[Run]],
) -> None:
    settle, landed, runs = zone
    cursor = FileCursor()

    for run in runs:
        listed = [f.file for f in landed if f.visible <= run.at + run.listing_delay]
        cursor = cursor.advance(cursor.new_files(listed), run.at, settle)

        assert all(arrived > run.at - settle for arrived in cursor.recent.values())


@pytest.mark.parametrize(("lag", "lost"), [(SETTLE, False), (SETTLE + 1, True)])
def test_a_file_visible_later_than_settle_after_its_arrival_can_be_lost(lag: int, lost: bool) -> None:
    # The documented limit, at its exact boundary: a run commits the moment the settle window after
    # the file's arrival has passed; the file becomes visible at that moment, or one µs later.
    late = Landed(_file("late.parquet", T0), lag)
    runs = [Run(at=T0 + SETTLE, listing_delay=0, commits=True)]

    _, applied = _simulate(SETTLE, [late], [*runs, _final_run([late], runs)])

    assert applied == ([] if lost else ["late.parquet"])


# ----------------------------------------------------------------------------------------------
# Time-ordered names: listings start after the last settled name
# ----------------------------------------------------------------------------------------------


def test_start_after_is_the_greatest_name_settled_a_window_before_the_mark() -> None:
    listed = [DataFile("a", 1, 0), DataFile("b", 1, 100 * SETTLE), DataFile("c", 1, 3 * SETTLE)]

    cursor = FileCursor().advance(listed, reference=5 * SETTLE, settle_micros=SETTLE, listed=listed)

    # mark = 4 windows; names of files that arrived by 3 windows are settled: a and c, not b.
    assert cursor.start_after == "c"


def test_start_after_never_moves_back_and_survives_json() -> None:
    cursor = FileCursor(mark=10 * SETTLE, start_after="2026/01/05/x.parquet")

    later = cursor.advance(
        [], reference=20 * SETTLE, settle_micros=SETTLE, listed=[DataFile("2026/01/01/y", 1, 0)]
    )

    assert later.start_after == "2026/01/05/x.parquet"
    assert FileCursor.from_json(json.loads(json.dumps(later.to_json()))) == later


def test_start_after_is_kept_when_the_listing_is_not_time_ordered() -> None:
    cursor = FileCursor(mark=SETTLE, start_after="k")

    assert cursor.advance([], reference=9 * SETTLE, settle_micros=SETTLE).start_after == "k"
    assert "start_after" not in FileCursor(mark=1).to_json()
