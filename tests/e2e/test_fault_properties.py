"""Property: a fault at a random point of a random run of a random history never loses or doubles a
row; the run after it converges to what DuckDB computes from every file landed.

Hypothesis draws histories for the fault lake's three tables (helpers.FAULT_TABLES: keyed read by
arrival with deletes and late older versions, key-less, keyed read by watermark), cut into files
landing over 2-3 rounds, and one fault (helpers.FAULT_KINDS: a crash at one of eight points, a
table failure, a file vanishing, a table's output folder unwritable, a lost race, a retried commit,
two runs at once; the kinds in turn, FAULT_KIND pins one) striking the run of one round, on one of
the tables landing files then for per-table faults.
After the faulted run the state must hold each table's previous tracker or one that read every
file landed; then a clean run, and after every clean run each table must equal DuckDB's answer.

In CI it tries a couple of histories. ``make soak`` sets SOAK_EXAMPLES (histories) and SOAK_SECONDS
(a time budget, after which the remaining examples are skipped) and prints what it tried.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .helpers import (
    FAULT_KINDS,
    PER_TABLE,
    UTC,
    Fault,
    Lake,
    all_or_nothing_problems,
    converged_problems,
    run_faulted,
    statuses,
)

pytestmark = [pytest.mark.spark, pytest.mark.soak]

SOAK_EXAMPLES = int(os.environ.get("SOAK_EXAMPLES") or 0)
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS") or 0)
CI_EXAMPLES = 2
T0 = dt.datetime(2024, 9, 1, tzinfo=UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _output_can_be_made_unwritable() -> bool:
    """Read-only modes stop anyone but root; root needs the immutable attribute (chattr)."""
    return os.geteuid() != 0 or (
        shutil.which("chattr") is not None
        and subprocess.run(["lsattr", "-d", "/tmp"], check=False, capture_output=True).returncode == 0
    )


KINDS = [k for k in FAULT_KINDS if k != "unwritable-output" or _output_can_be_made_unwritable()]
FIRST_KIND = random.randrange(len(KINDS))


@dataclass(frozen=True)
class Landing:
    round_no: int
    table: str
    name: str
    rows: list[dict[str, Any]]


@dataclass
class History:
    rounds: int
    landings: list[Landing]
    fault_round: int
    table_choice: int  # which of the tables landing files in the fault's round a per-table fault strikes

    def __repr__(self) -> str:
        files = Counter(landing.round_no for landing in self.landings)
        return (
            f"History(rounds={self.rounds}, files per round={dict(sorted(files.items()))}, "
            f"fault in round {self.fault_round})"
        )

    def fault(self, kind: str) -> Fault:
        if kind not in PER_TABLE:
            return Fault(kind)
        landing = sorted({f.table for f in self.landings if f.round_no == self.fault_round})
        return Fault(kind, landing[self.table_choice % len(landing)] if landing else "orders")

    def describe(self) -> str:
        lines = [repr(self)]
        for landing in self.landings:
            lines.append(f"  round {landing.round_no} {landing.table}/{landing.name}")
            lines += [f"    {row}" for row in landing.rows]
        return "\n".join(lines)


def _files(draw: st.DrawFn, table: str, rows_by_round: dict[int, list[dict[str, Any]]]) -> list[Landing]:
    """Each round's rows of a table in one or two files."""
    landings = []
    for round_no, rows in sorted(rows_by_round.items()):
        cut = draw(st.integers(1, len(rows))) if len(rows) > 1 else len(rows)
        for index, part in enumerate(p for p in (rows[:cut], rows[cut:]) if p):
            landings.append(Landing(round_no, table, f"{round_no:02d}/r{round_no}-f{index}.parquet", part))
    return landings


@st.composite
def histories(draw: st.DrawFn) -> History:
    rounds = draw(st.integers(2, 3))
    any_round = st.integers(0, rounds - 1)

    # orders: few keys, so that a key gets several versions, deletes and re-inserts; every version
    # its own stamp, landing in any round (a late older version must not win).
    count = draw(st.integers(2, 12))
    stamps = draw(st.lists(st.integers(0, 500), min_size=count, max_size=count, unique=True))
    orders: dict[int, list[dict[str, Any]]] = {}
    for stamp in stamps:
        op = draw(st.sampled_from("IUUD"))
        row = dict(
            Op=op,
            order_id=draw(st.integers(1, 5)),
            status="gone" if op == "D" else draw(st.sampled_from(["new", "paid"])),
            amount=draw(st.integers(0, 9)),
            seq=draw(st.integers(0, 3)),
            updated_at=at(stamp),
        )
        orders.setdefault(draw(any_round), []).append(row)

    # events: appended as landed, exact duplicates included.
    events: dict[int, list[dict[str, Any]]] = {}
    pool = [
        dict(event_id=draw(st.integers(1, 4)), kind=draw(st.sampled_from(["view", "buy"])), updated_at=at(s))
        for s in draw(st.lists(st.integers(0, 500), min_size=1, max_size=6))
    ]
    for _ in range(draw(st.integers(1, 8))):
        events.setdefault(draw(any_round), []).append(dict(draw(st.sampled_from(pool))))

    # readings (read by watermark): each round's rows stamped after every earlier round's, so that
    # every row is read; a late row would be lost by design (test_merge_paths pins the lookback).
    readings: dict[int, list[dict[str, Any]]] = {}
    for round_no in range(rounds):
        seconds = draw(st.lists(st.integers(0, 999), max_size=4, unique=True))
        rows = [
            dict(sensor=draw(st.integers(1, 4)), value=s, read_at=at(1000 * (round_no + 1) + s))
            for s in seconds
        ]
        if rows:
            readings[round_no] = rows

    landings = (
        _files(draw, "orders", orders) + _files(draw, "events", events) + _files(draw, "readings", readings)
    )
    landings.sort(key=lambda landing: landing.round_no)
    return History(rounds, landings, draw(any_round), draw(st.integers(0, 2)))


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    histories: int = 0
    skipped: int = 0
    runs: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    not_reached: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def out_of_time(self) -> bool:
        return bool(SOAK_SECONDS) and time.monotonic() - self.started > SOAK_SECONDS

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.injected.items()))
        missed = ", ".join(f"{kind} {n}" for kind, n in sorted(self.not_reached.items())) or "none"
        skipped = f"; {self.skipped} skipped past the {SOAK_SECONDS:.0f} s budget" if self.skipped else ""
        return (
            f"fault soak: {self.histories} histories, {sum(self.injected.values())} faults injected "
            f"({kinds}), "
            f"not reached (nothing to do there): {missed}; runs {self.runs}, outcomes "
            f"{dict(self.outcomes)}, {time.monotonic() - self.started:.0f} s{skipped}"
        )


@settings(
    max_examples=SOAK_EXAMPLES or CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    # An example is 3-5 Spark runs; shrinking would rerun them for many minutes. The failure message
    # lists the history's files and the fault, and the printed blob replays the example.
    phases=[Phase.explicit, Phase.generate],
    database=None,
    print_blob=True,
)
@given(history=histories())
def replay(spark: Any, root: Path, tally: Tally, history: History) -> None:
    if tally.out_of_time():
        tally.skipped += 1
        return
    tally.histories += 1
    lake = Lake.create(root / f"history-{tally.histories}")
    con = duckdb.connect()
    # Every kind in turn, from a random one: Hypothesis leans towards the first of a choice, so
    # drawing the kind would try a few kinds over and over. FAULT_KIND pins one (to replay a failure).
    kind = os.environ.get("FAULT_KIND") or KINDS[(FIRST_KIND + tally.histories) % len(KINDS)]
    fault = history.fault(kind)
    for round_no in range(history.rounds):
        for landing in history.landings:
            if landing.round_no == round_no:
                lake.land(landing.table, landing.name, landing.rows)
        if round_no == history.fault_round:
            before = lake.document()
            outcome = run_faulted(lake, spark, fault)
            tally.runs += 1
            (tally.injected if fault.fired else tally.not_reached)[fault.kind] += 1
            tally.outcomes[outcome] += 1
            problems = all_or_nothing_problems(con, lake, before, lake.document())
            assert not problems, (
                f"after {fault} ({outcome}):\n" + "\n".join(problems) + "\n" + history.describe()
            )
        report = lake.run(spark)
        tally.runs += 1
        assert not report.failed, [(o.table, o.message) for o in report.failed]
        problems = converged_problems(con, lake)
        assert not problems, (
            f"round {round_no}, fault {fault}:\n" + "\n".join(problems) + "\n" + history.describe()
        )

    revision = lake.document().revision
    final = statuses(lake.run(spark))
    # A table whose only file vanished has nothing to load: skipped, never failed or reloaded.
    empty = {table for table, status in final.items() if status == "skipped"}
    assert not [table for table in empty if any((lake.source / table).rglob("*.parquet"))], final
    assert set(final.values()) <= {"unchanged", "skipped"}, "a run with no new file"
    tally.runs += 1
    assert lake.document().revision == revision


def test_a_fault_anywhere_in_a_random_history_loses_and_doubles_nothing(spark, tmp_path, capsys) -> None:
    tally = Tally()
    try:
        replay(spark, tmp_path, tally)
    finally:
        if SOAK_EXAMPLES:
            with capsys.disabled():
                print(f"\n{tally.summary()}")
        else:
            print(f"\n{tally.summary()}")
    assert tally.histories > 0
