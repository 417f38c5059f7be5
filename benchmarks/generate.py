"""Generate a synthetic raw change table (a DMS-style landing zone) for the benchmarks.

Everything is vectorised with numpy and pyarrow compute and seeded, so the same arguments give
the same files byte for byte and a million rows take a second or two, not minutes.

Table layout (every column the pipeline cares about, plus a few payloads of each common type):

    Op          string     I (first version of a key or re-insert after a delete), U, D
    id          int64      the primary key; ~``keys`` distinct values, several versions each
    name        string     payload
    status      string     payload, low cardinality
    quantity    int32      payload
    amount      float64    payload
    updated_at  timestamp[us, UTC]  strictly increasing over the whole table: unique stamps, so
                                    "the latest version of a key" is never a tie
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TABLE = "bench_changes"
SCHEMA = pa.schema(
    [
        ("Op", pa.string()),
        ("id", pa.int64()),
        ("name", pa.string()),
        ("status", pa.string()),
        ("quantity", pa.int32()),
        ("amount", pa.float64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
STATUSES = pa.array(["new", "active", "suspended", "closed", "pending_review"])
START = datetime(2026, 1, 1, tzinfo=UTC)
START_MICROS = int(START.timestamp()) * 1_000_000
# Mean gap between two consecutive change stamps: 1M rows span ~29 days, like a month of DMS files.
MEAN_GAP_MICROS = 2_500_000
DELETE_SHARE = 0.02  # of the versions after a key's first
FULL_PREFIX = "load"
CHANGE_PREFIX = "cdc"


@dataclass(frozen=True)
class Landed:
    """What one write put in the landing zone."""

    rows: int
    files: list[Path]
    inserts: int
    updates: int
    deletes: int
    first_stamp_micros: int
    last_stamp_micros: int


def _stamps(rng: np.random.Generator, count: int, after_micros: int) -> np.ndarray:
    # Cumulative positive gaps: strictly increasing, so every stamp is unique and files cut as
    # contiguous slices cover disjoint time ranges, as successive landing files do.
    gaps = rng.integers(1, 2 * MEAN_GAP_MICROS, size=count, dtype=np.int64)
    return after_micros + np.cumsum(gaps)


def _payload(rng: np.random.Generator, ids: np.ndarray, ops: np.ndarray, stamps: np.ndarray) -> pa.Table:
    count = len(ids)
    id_array = pa.array(ids, type=pa.int64())
    # "cust-<id>-<version tag>": a string that differs between versions of one key.
    name = pc.binary_join_element_wise(
        "cust-",
        pc.cast(id_array, pa.string()),
        "-",
        pc.cast(pa.array(rng.integers(0, 1000, count)), pa.string()),
        "",
    )
    status = STATUSES.take(pa.array(rng.integers(0, len(STATUSES), count)))
    quantity = pa.array(rng.integers(0, 10_000, count, dtype=np.int32), type=pa.int32())
    amount = pa.array(np.round(rng.random(count) * 10_000, 2), type=pa.float64())
    updated_at = pa.array(stamps, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.Table.from_arrays(
        [pa.array(ops, type=pa.string()), id_array, name, status, quantity, amount, updated_at], schema=SCHEMA
    )


def _write_slices(table: pa.Table, folder: Path, prefix: str, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(np.int64)
    paths = []
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        path = folder / f"{prefix}-{index:05d}.parquet"
        # Row groups of ~64k rows: the watermark filter can then skip row groups by their min/max
        # statistics even inside a file, as it would with DMS output.
        pq.write_table(table.slice(int(start), int(stop - start)), path, row_group_size=65_536)
        paths.append(path)
    return paths


def _counts(ops: np.ndarray) -> dict[str, int]:
    return {
        name: int(np.count_nonzero(ops == code))
        for name, code in (("inserts", "I"), ("updates", "U"), ("deletes", "D"))
    }


def generate_full(
    source: Path, rows: int = 1_000_000, keys: int = 200_000, files: int = 8, seed: int = 42
) -> Landed:
    """Write the initial change history of ``rows`` rows over ``keys`` keys as ``files`` Parquet files.

    Every key 0..keys-1 appears at least once (when rows >= keys); the rest of the rows are
    further versions of uniformly drawn keys, so a key has rows/keys versions on average.
    """
    if rows < 1 or keys < 1:
        raise ValueError("rows and keys must be positive")
    rng = np.random.default_rng(seed)
    keys = min(keys, rows)
    ids = np.concatenate(
        [np.arange(keys, dtype=np.int64), rng.integers(0, keys, rows - keys, dtype=np.int64)]
    )
    rng.shuffle(ids)
    stamps = _stamps(rng, rows, START_MICROS)  # row i lands at stamp i: time order = landing order

    # A key's first version is an insert; later ones are updates, a few deletes, and the version
    # after a delete is a re-insert. Computed on the rows sorted by (key, stamp), then put back.
    by_key = np.lexsort((stamps, ids))
    sorted_ids = ids[by_key]
    first = np.ones(rows, dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    is_delete = (rng.random(rows) < DELETE_SHARE) & ~first
    after_delete = np.zeros(rows, dtype=bool)
    after_delete[1:] = is_delete[:-1] & ~first[1:]
    sorted_ops = np.where(first | after_delete, "I", np.where(is_delete, "D", "U"))
    ops = np.empty(rows, dtype=sorted_ops.dtype)
    ops[by_key] = sorted_ops

    table = _payload(rng, ids, ops, stamps)
    # A regenerated table must not keep files (or batches) of an earlier, different generation.
    for stale in [*full_files(source), *change_files(source)]:
        stale.unlink()
    paths = _write_slices(table, source / TABLE, FULL_PREFIX, files)
    return Landed(
        rows, paths, **_counts(ops), first_stamp_micros=int(stamps[0]), last_stamp_micros=int(stamps[-1])
    )


def append_changes(
    source: Path,
    batch: int,
    rows: int = 10_000,
    seed: int = 7,
    insert_share: float = 0.10,
    delete_share: float = 0.05,
) -> Landed:
    """Land one incremental batch of ``rows`` change rows, newer than everything already landed.

    Updates and deletes touch distinct existing keys; inserts use new keys above the largest id.
    Only the key and stamp columns of the table are read, to find those bounds.
    """
    folder = source / TABLE
    landed = pq.read_table(folder, columns=["id", "updated_at"])
    max_id = int(pc.max(landed["id"]).as_py())
    last_micros = int(pc.max(landed["updated_at"].cast(pa.int64())).as_py())

    rng = np.random.default_rng([seed, batch])
    inserts = round(rows * insert_share)
    deletes = round(rows * delete_share)
    touched = rows - inserts
    existing = rng.choice(max_id + 1, size=min(touched, max_id + 1), replace=False).astype(np.int64)
    new_ids = np.arange(max_id + 1, max_id + 1 + inserts, dtype=np.int64)
    ids = np.concatenate([existing, new_ids])
    ops = np.repeat(np.array(["D", "U", "I"]), [deletes, len(existing) - deletes, inserts])
    order = rng.permutation(len(ids))  # mixed in time, as a real batch is
    ids, ops = ids[order], ops[order]
    stamps = _stamps(rng, len(ids), last_micros)

    table = _payload(rng, ids, ops, stamps)
    paths = _write_slices(table, folder, f"{CHANGE_PREFIX}-{batch:04d}", 1)
    return Landed(
        len(ids), paths, **_counts(ops), first_stamp_micros=int(stamps[0]), last_stamp_micros=int(stamps[-1])
    )


def change_files(source: Path) -> list[Path]:
    """The incremental batch files landed so far (not the initial load)."""
    return sorted((source / TABLE).glob(f"{CHANGE_PREFIX}-*.parquet"))


def full_files(source: Path) -> list[Path]:
    """The initial load's files."""
    return sorted((source / TABLE).glob(f"{FULL_PREFIX}-*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="landing zone; the table is a folder in it"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=None, help="distinct keys (default rows / 5)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--batches", type=int, default=0, help="incremental 1%% batches to land after")
    args = parser.parse_args()
    full = generate_full(args.source, args.rows, args.keys or max(1, args.rows // 5), args.files)
    print(f"full load: {full.rows} rows in {len(full.files)} files under {args.source / TABLE}")
    for batch in range(1, args.batches + 1):
        landed = append_changes(args.source, batch, rows=max(1, args.rows // 100))
        print(
            f"batch {batch}: {landed.rows} rows ({landed.updates} U, {landed.inserts} I, {landed.deletes} D)"
        )


if __name__ == "__main__":
    main()
