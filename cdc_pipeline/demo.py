"""The demo: a small, realistic raw zone, a full load and several incremental rounds.

``python -m cdc_pipeline.demo --workdir DIR`` (``make demo``) writes DMS-style change files for
four tables, runs the pipeline after each batch lands, and prints the reports. It needs no AWS
account: everything lives under DIR. What to watch for: the full-load file of ``customers`` has no
``Op`` column (as DMS writes it); each later batch also lands an update stamped *before* the
previous run's watermark (replica lag), which is still applied because files are read by arrival;
``countries`` is reported ``unchanged`` in the rounds where nothing lands for it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cdc_pipeline.cli import main as cli_main
from cdc_pipeline.state import LocalStateStore

REGISTRY = """table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values
customers,customer_id,updated_at,,Op,D
order_lines,"order_id,line_no",updated_at,change_seq,,
countries,country_code,,,,
"""

CUSTOMERS_FULL_LOAD = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("name", pa.string()),
        ("email", pa.string()),
        ("tier", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
# DMS adds the Op column to change files only (unless told to add it to full-load files too).
CUSTOMERS = pa.schema([("Op", pa.string()), *CUSTOMERS_FULL_LOAD])
ORDER_LINES = pa.schema(
    [
        ("order_id", pa.int64()),
        ("line_no", pa.int32()),
        ("sku", pa.string()),
        ("quantity", pa.int32()),
        ("unit_price", pa.decimal128(10, 2)),
        ("change_seq", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
PAGE_VIEWS = pa.schema(
    [("session_id", pa.string()), ("path", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))]
)
COUNTRIES = pa.schema([("country_code", pa.string()), ("name", pa.string())])

TIERS = ["free", "pro", "enterprise"]
SKUS = [f"SKU-{n:04d}" for n in range(1, 60)]


class RawZone:
    """Writes each batch as new files, the way DMS lands change files in dated folders."""

    def __init__(self, root: Path, seed: int = 7) -> None:
        self.root = root
        self.random = random.Random(seed)
        self.clock = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
        self.customers: dict[int, dict[str, object]] = {}
        self.changed_at: dict[int, datetime] = {}
        self.order_lines: dict[tuple[int, int], dict[str, object]] = {}
        self.sequence = 0

    def _tick(self) -> datetime:
        self.clock += timedelta(
            seconds=self.random.randint(1, 90), microseconds=self.random.randint(0, 999_999)
        )
        return self.clock

    def _write(self, table: str, batch: int, schema: pa.Schema, rows: list[dict[str, object]]) -> None:
        folder = self.root / table / f"{self.clock:%Y/%m/%d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"batch-{batch:03d}.parquet")

    def land(self, batch: int) -> None:
        rnd = self.random
        customers: list[dict[str, object]] = []
        new_ids = range(len(self.customers) + 1, len(self.customers) + (40 if batch == 0 else 8) + 1)
        for customer_id in new_ids:
            row = {
                "customer_id": customer_id,
                "name": f"Customer {customer_id}",
                "email": f"c{customer_id}@example.com",
                "tier": rnd.choice(TIERS),
            }
            self.customers[customer_id] = row
            self.changed_at[customer_id] = self._tick()
            customers.append(
                {**({"Op": "I"} if batch else {}), **row, "updated_at": self.changed_at[customer_id]}
            )
        if batch:
            # Replica lag: a change committed late, stamped before the last run's watermark (but
            # after the customer's previous version, so it is the newest and must be applied).
            stamp = self.clock - timedelta(minutes=30)
            lagging = rnd.choice(sorted(c for c in self.customers if self.changed_at[c] < stamp))
            self.customers[lagging] = {**self.customers[lagging], "email": f"late-{batch}@example.com"}
            customers.append({"Op": "U", **self.customers[lagging], "updated_at": stamp})
            self.changed_at[lagging] = stamp
            for customer_id in rnd.sample(sorted(self.customers), 6):
                self.customers[customer_id] = {**self.customers[customer_id], "tier": rnd.choice(TIERS)}
                self.changed_at[customer_id] = self._tick()
                customers.append(
                    {"Op": "U", **self.customers[customer_id], "updated_at": self.changed_at[customer_id]}
                )
            victim = rnd.choice(sorted(self.customers))
            customers.append({"Op": "D", **self.customers.pop(victim), "updated_at": self._tick()})
        self._write("customers", batch, CUSTOMERS if batch else CUSTOMERS_FULL_LOAD, customers)

        lines: list[dict[str, object]] = []
        for order_id in range(batch * 100 + 1, batch * 100 + 16):
            for line_no in range(1, rnd.randint(1, 4) + 1):
                self.order_lines[(order_id, line_no)] = {
                    "order_id": order_id,
                    "line_no": line_no,
                    "sku": rnd.choice(SKUS),
                    "quantity": rnd.randint(1, 5),
                    "unit_price": Decimal(rnd.randint(199, 9999)) / 100,
                }
        changed = rnd.sample(sorted(self.order_lines), 10)
        stamp = self._tick()
        for key in sorted(self.order_lines):
            self.sequence += 1
            if key in changed or key[0] > batch * 100:
                lines.append({**self.order_lines[key], "change_seq": self.sequence, "updated_at": stamp})
        for key in changed[:3]:  # a second change in the same batch, same instant: change_seq decides
            self.sequence += 1
            self.order_lines[key] = {**self.order_lines[key], "quantity": rnd.randint(6, 9)}
            lines.append({**self.order_lines[key], "change_seq": self.sequence, "updated_at": stamp})
        self._write("order_lines", batch, ORDER_LINES, lines)

        views = [
            {
                "session_id": f"s{rnd.randint(1, 30)}",
                "path": rnd.choice(["/", "/pricing", "/docs", "/signup"]),
                "updated_at": self._tick(),
            }
            for _ in range(25)
        ]
        self._write("page_views", batch, PAGE_VIEWS, views)

        if batch == 0:
            countries: list[dict[str, object]] = [
                {"country_code": c, "name": n}
                for c, n in [("DE", "Germany"), ("FR", "France"), ("JP", "Japan"), ("US", "United States")]
            ]
            self._write("countries", batch, COUNTRIES, countries)
        elif batch == 2:
            self._write("countries", batch, COUNTRIES, [{"country_code": "BR", "name": "Brazil"}])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdc_pipeline.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo-data"))
    parser.add_argument("--rounds", type=int, default=3, help="incremental rounds after the full load")
    args = parser.parse_args(argv)

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    raw, registry = args.workdir / "raw", args.workdir / "registry"
    registry.mkdir(parents=True)
    (registry / "tables-2026-11-01.csv").write_text(REGISTRY)
    zone = RawZone(raw)
    common = [
        "--source",
        str(raw),
        "--output",
        str(args.workdir / "current"),
        "--state",
        str(args.workdir / "state"),
        "--registry",
        str(registry),
    ]

    worst = 0
    for batch in range(args.rounds + 1):
        zone.land(batch)
        title = "full load" if batch == 0 else f"incremental round {batch}"
        print(f"\n=== batch {batch} landed; {title} ===", flush=True)
        worst = max(worst, cli_main(["run", *common]))
    print("\n=== committed state ===", flush=True)
    cli_main(["status", "--state", str(args.workdir / "state")])
    state, _ = LocalStateStore(args.workdir / "state").read()
    query = f"select * from read_parquet('{state.tables['customers'].location}/*.parquet') limit 5"
    command = f'.venv/bin/python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"'
    print(f"\nQuery a snapshot with DuckDB:\n  {command}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
