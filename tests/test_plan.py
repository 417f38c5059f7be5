"""Plan: one work item per table, with every fallback of the original script explained."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from cdc_pipeline.arrivals import DataFile, FileCursor, FileListing
from cdc_pipeline.catalog import CatalogTable, Column
from cdc_pipeline.errors import ConfigurationError, NewerFormatError, TableError
from cdc_pipeline.packs import Pack
from cdc_pipeline.plan import PLAN_FORMAT, Layout, LoadType, Plan, WorkItem, plan_run
from cdc_pipeline.registry import LocalRegistrySource, parse_registry
from cdc_pipeline.stages import plan_stage
from cdc_pipeline.state import LocalStateStore, StateDocument, TableState
from cdc_pipeline.storage import LocalStorage

REGISTRY_CSV = (
    "table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,lookback\n"
    "orders,order_id,,,Op,D,PT10M\n"
    'order_lines,"order_id,line_no",changed_at,seq,,,\n'
    "countries,code,,,,,\n"
    "gone,id,,,,,\n"
)
REGISTRY = parse_registry(REGISTRY_CSV, "registry.csv")
LAYOUT = Layout(output_path="/lake/current", cdc_path="/lake/state")


class FakeCatalog:
    """Tables described as given; without listings (the default) they have no files to list, as a
    source read by watermark."""

    def __init__(self, *tables: CatalogTable, listings: dict[str, FileListing] | None = None) -> None:
        self.tables = {table.name: table for table in tables}
        self.listings = listings or {}
        self.described: list[tuple[str, list[str] | None]] = []
        self.listed: list[tuple[str, str | None]] = []

    def table_names(self) -> list[str]:
        return sorted(self.tables)

    def list_files(self, name: str, start_after: str | None = None) -> FileListing | None:
        self.listed.append((name, start_after))
        listing = self.listings.get(name)
        if listing is None or start_after is None:
            return listing
        return replace(listing, files=tuple(f for f in listing.files if f.path > start_after))

    def describe(self, name: str, files=None) -> CatalogTable:
        self.described.append((name, None if files is None else list(files)))
        table = self.tables[name]
        if table.format == "broken":
            raise TableError(name, "file x.parquet is not readable Parquet")
        return table


class PagedFakeCatalog(FakeCatalog):
    """The same tables, listed in ``pages`` of names in the order given (as Glue's GetTables pages)."""

    def __init__(self, pages: list[list[str]], *tables: CatalogTable, **kwargs) -> None:
        super().__init__(*tables, **kwargs)
        self.pages = pages

    def table_name_pages(self) -> Iterator[list[str]]:
        yield from self.pages


def table(name: str, *columns: tuple[str, str], has_data: bool = True, fmt: str = "parquet") -> CatalogTable:
    return CatalogTable(name, f"/raw/{name}", fmt, tuple(Column(n, t) for n, t in columns), has_data=has_data)


ORDERS = table("orders", ("order_id", "bigint"), ("Op", "string"), ("updated_at", "timestamp"))
LINES = table(
    "order_lines", ("order_id", "bigint"), ("line_no", "int"), ("seq", "bigint"), ("changed_at", "date")
)
COUNTRIES = table("countries", ("code", "string"), ("name", "string"))
EVENTS = table("events", ("payload", "string"), ("updated_at", "timestamp_ntz"))


def tracker(watermark: str | None, column: str | None = "updated_at", **settings) -> TableState:
    """The tracker a previous run of ``orders`` (as the registry above describes it) committed."""
    orders = {"primary_key": ("order_id",), "delete_column": "Op", "delete_values": ("D",)}
    return TableState(
        watermark=watermark,
        location="/lake/current/x/snapshots/r0",
        rows=10,
        run_id="r0",
        committed_at="2026-01-01T00:00:00+00:00",
        load_type="full",
        mode="dedup",
        watermark_column=column,
        **{**orders, **settings},
    )


def make_plan(catalog: FakeCatalog, state: StateDocument | None = None, **kwargs) -> Plan:
    return plan_run(
        catalog=catalog,
        registry=REGISTRY,
        state=state or StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
        **kwargs,
    )


def items_by_table(plan: Plan) -> dict:
    return {item.table: item for item in plan.items}


def test_first_run_plans_a_full_load_of_every_table_with_its_settings() -> None:
    plan = make_plan(FakeCatalog(ORDERS, LINES, COUNTRIES, EVENTS))

    items = items_by_table(plan)
    assert sorted(items) == ["countries", "events", "order_lines", "orders"]
    assert all(item.load_type == "full" for item in plan.items)
    orders = items["orders"]
    assert (orders.mode, orders.primary_key, orders.watermark_column) == ("dedup", ["order_id"], "updated_at")
    assert (orders.delete_column, orders.delete_values, orders.lookback_micros) == ("Op", ["D"], 600_000_000)
    assert orders.output_location == "/lake/current/orders/snapshots/r1"
    assert orders.manifest_location == "/lake/state/runs/r1/manifests/orders.json"
    assert "no committed tracker: full load" in orders.warnings
    assert items["order_lines"].primary_key == ["order_id", "line_no"]
    assert items["order_lines"].sequence_column == "seq"


def test_committed_tracker_gives_an_incremental_load_from_its_watermark_and_snapshot() -> None:
    state = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00.000001Z")})

    orders = items_by_table(make_plan(FakeCatalog(ORDERS), state))["orders"]

    assert orders.load_type == "incremental"
    assert orders.last_watermark == "2026-01-01T00:00:00.000001Z"
    assert orders.current_snapshot == "/lake/current/x/snapshots/r0"


def test_requested_full_load_ignores_the_tracker() -> None:
    state = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00Z")})

    orders = items_by_table(make_plan(FakeCatalog(ORDERS), state, load_type=LoadType.FULL))["orders"]

    assert (orders.load_type, orders.last_watermark, orders.current_snapshot) == ("full", None, None)


# How the committed tracker of ``orders`` differed from what REGISTRY now says (key order_id,
# default ordering, delete column Op with values D), and how the failure names the change.
REGISTRY_CHANGES = {
    "key": ({"primary_key": ("order_id", "line_no")}, "primary key (order_id, line_no) -> (order_id)"),
    "mode": (
        {"primary_key": (), "mode": "append", "delete_column": None, "delete_values": ()},
        "primary key none (rows appended without deduplication) -> (order_id)",
    ),
    "sequence": ({"sequence_column": "seq"}, "sequence column 'seq' -> none"),
    "delete-column": ({"delete_column": "Status"}, "delete column 'Status' -> 'Op'"),
    "delete-values": ({"delete_values": ("D", "X")}, "delete values D|X -> D"),
    "watermark-unit": ({"watermark_unit": "seconds"}, "watermark unit 'seconds' -> none"),
}


def changed_orders(previous: dict, registry_file: str | None = "/registry/tables-1.csv") -> StateDocument:
    previous = dict(previous)
    mode = previous.pop("mode", "dedup")
    old = replace(tracker("2026-01-01T00:00:00Z", **previous), mode=mode, registry_file=registry_file)
    return StateDocument(revision=3, tables={"orders": old})


@pytest.mark.parametrize(("previous", "shown"), REGISTRY_CHANGES.values(), ids=REGISTRY_CHANGES.keys())
def test_a_registry_change_of_how_rows_are_keyed_ordered_or_deleted_fails_the_table_naming_both_files(
    previous, shown
) -> None:
    plan = make_plan(FakeCatalog(ORDERS, COUNTRIES), changed_orders(previous))

    assert [item.table for item in plan.items] == ["countries"]
    message = plan.failed["orders"]
    assert (
        "the newest registry file registry.csv changes how its rows are keyed, ordered or deleted" in message
    )
    assert "committed under registry file /registry/tables-1.csv" in message
    assert shown in message
    assert "tracker and snapshot are kept" in message
    assert "--accept-registry-change 'orders'" in message
    assert '"accept_registry_change": ["orders"]' in message


def test_a_delete_column_only_change_is_a_registry_change() -> None:
    # A change of the delete column alone must never let the old snapshot be merged into as it is.
    plan = make_plan(FakeCatalog(ORDERS), changed_orders({"delete_column": "Status"}))

    assert plan.items == []
    assert "delete column 'Status' -> 'Op'" in plan.failed["orders"]

    accepted = make_plan(
        FakeCatalog(ORDERS), changed_orders({"delete_column": "Status"}), accept_registry_change=["orders"]
    )

    (orders,) = accepted.items
    assert (orders.load_type, orders.current_snapshot, orders.delete_column) == ("full", None, "Op")


@pytest.mark.parametrize(("previous", "shown"), REGISTRY_CHANGES.values(), ids=REGISTRY_CHANGES.keys())
def test_an_accepted_registry_change_rebuilds_the_table_by_a_full_load_with_the_new_settings(
    previous, shown
) -> None:
    plan = make_plan(FakeCatalog(ORDERS), changed_orders(previous), accept_registry_change=["orders"])

    (orders,) = plan.items
    assert (orders.load_type, orders.last_watermark, orders.current_snapshot) == ("full", None, None)
    assert (orders.primary_key, orders.delete_column, orders.delete_values) == (["order_id"], "Op", ["D"])
    assert any(
        w.startswith("registry change accepted (since registry file /registry/tables-1.csv") and shown in w
        for w in orders.warnings
    )
    assert plan.failed == {}


def test_an_explicit_ordering_column_change_is_a_registry_change() -> None:
    registry = parse_registry(
        "table_name,primary_key,watermark_column\norders,order_id,created_at\n", "new.csv"
    )
    old = tracker("2026-01-01T00:00:00Z", delete_column=None, delete_values=())
    orders = table("orders", ("order_id", "bigint"), ("created_at", "timestamp"), ("updated_at", "timestamp"))

    plan = plan_run(
        catalog=FakeCatalog(orders),
        registry=registry,
        state=StateDocument(revision=3, tables={"orders": old}),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    assert "ordering (watermark) column 'updated_at' -> 'created_at'" in plan.failed["orders"]


def test_a_committed_table_the_newest_registry_file_no_longer_lists_fails_instead_of_being_appended() -> None:
    registry = parse_registry("table_name,primary_key\ncountries,code\n", "/registry/tables-2.csv")
    state = StateDocument(
        revision=3, tables={"orders": replace(tracker(None), registry_file="/registry/t1.csv")}
    )

    plan = plan_run(
        catalog=FakeCatalog(ORDERS, COUNTRIES),
        registry=registry,
        state=state,
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    assert [item.table for item in plan.items] == ["countries"]
    message = plan.failed["orders"]
    assert "the newest registry file /registry/tables-2.csv no longer lists it" in message
    assert "its rows would be appended as they land" in message
    assert "committed under registry file /registry/t1.csv" in message
    assert "primary key (order_id) -> none (rows appended without deduplication)" in message
    assert "delete column 'Op' -> none" in message
    assert "publish a registry file that lists it again" in message


def test_an_accepted_drop_from_the_registry_reloads_the_table_as_the_registry_then_says_appended() -> None:
    registry = parse_registry("table_name,primary_key\ncountries,code\n", "/registry/tables-2.csv")

    plan = plan_run(
        catalog=FakeCatalog(ORDERS),
        registry=registry,
        state=StateDocument(revision=3, tables={"orders": tracker(None)}),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
        accept_registry_change=["orders"],
    )

    (orders,) = plan.items
    assert (orders.mode, orders.load_type, orders.current_snapshot) == ("append", "full", None)


def test_a_key_less_table_the_registry_stops_listing_keeps_being_appended_without_failing() -> None:
    registry = parse_registry("table_name,primary_key\ncountries,code\n", "/registry/tables-2.csv")
    appended = tracker("2026-01-01T00:00:00Z", primary_key=(), delete_column=None, delete_values=())
    state = StateDocument(revision=3, tables={"events": replace(appended, mode="append")})

    plan = plan_run(
        catalog=FakeCatalog(EVENTS),
        registry=registry,
        state=state,
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    (events,) = plan.items
    assert (events.mode, events.load_type) == ("append", "incremental")


def test_a_registry_change_fails_the_table_even_when_a_full_load_is_requested() -> None:
    plan = make_plan(FakeCatalog(ORDERS), changed_orders({"sequence_column": "seq"}), load_type=LoadType.FULL)

    assert plan.items == []
    assert "sequence column 'seq' -> none" in plan.failed["orders"]


def test_a_tracker_from_before_registry_files_were_recorded_says_so() -> None:
    plan = make_plan(FakeCatalog(ORDERS), changed_orders({"sequence_column": "seq"}, registry_file=None))

    assert "an earlier registry file (not recorded" in plan.failed["orders"]


def test_a_registry_file_edited_in_place_is_named_as_such() -> None:
    plan = make_plan(
        FakeCatalog(ORDERS), changed_orders({"sequence_column": "seq"}, registry_file="registry.csv")
    )

    assert "the same file, edited in place since" in plan.failed["orders"]


def test_accepting_a_change_of_a_table_whose_settings_did_not_change_is_warned_and_plans_it_as_usual() -> (
    None
):
    state = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00.000001Z")})

    plan = make_plan(FakeCatalog(ORDERS), state, accept_registry_change=["orders"])

    (orders,) = plan.items
    assert orders.load_type == "incremental"
    assert any("nothing to accept" in warning for warning in plan.warnings)


def test_accepting_a_change_of_a_table_the_source_does_not_hold_is_a_usage_error_with_a_case_hint() -> None:
    with pytest.raises(
        ConfigurationError, match=r"--accept-registry-change names 'Orders', which the source"
    ) as e:
        make_plan(FakeCatalog(ORDERS), accept_registry_change=["Orders"])

    assert "'Orders' differs only in case from 'orders'" in str(e.value)


def test_the_plan_names_the_registry_file_it_used_and_keeps_it_through_json() -> None:
    plan = make_plan(FakeCatalog(ORDERS))

    assert plan.registry_file == "registry.csv"
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).registry_file == "registry.csv"


@pytest.mark.parametrize("name", ["a/b", "..", "."])
def test_a_table_whose_name_cannot_be_one_output_folder_fails_naming_why(name: str) -> None:
    plan = make_plan(FakeCatalog(table(name, ("id", "bigint")), ORDERS))

    assert [item.table for item in plan.items] == ["orders"]
    assert "cannot be a folder name in the output" in plan.failed[name]


def test_table_without_the_watermark_column_is_fully_reloaded_every_run_and_warned() -> None:
    countries = tracker(None, column=None, primary_key=("code",), delete_column=None, delete_values=())
    state = StateDocument(revision=3, tables={"countries": countries})

    countries = items_by_table(make_plan(FakeCatalog(COUNTRIES), state))["countries"]

    assert (countries.load_type, countries.watermark_column, countries.mode) == ("full", None, "dedup")
    assert any("fully reloaded every run" in warning for warning in countries.warnings)


def test_table_the_registry_does_not_know_is_appended_without_dedup_and_warned() -> None:
    events = items_by_table(make_plan(FakeCatalog(EVENTS)))["events"]

    assert (events.mode, events.primary_key) == ("append", [])
    assert any("not in the registry" in warning for warning in events.warnings)


def test_registry_naming_a_missing_column_fails_that_table_only() -> None:
    broken_lines = table("order_lines", ("order_id", "bigint"), ("changed_at", "date"), ("seq", "bigint"))

    plan = make_plan(FakeCatalog(ORDERS, broken_lines))

    assert [item.table for item in plan.items] == ["orders"]
    message = plan.failed["order_lines"]
    assert "primary_key (line_no) 'line_no'" in message
    assert "registry.csv" in message
    assert "Fix the registry row" in message


def test_watermark_column_of_an_unsupported_type_fails_the_table_with_the_fix() -> None:
    flagged = table("orders", ("order_id", "bigint"), ("Op", "string"), ("updated_at", "boolean"))

    plan = make_plan(FakeCatalog(flagged))

    assert "has type boolean" in plan.failed["orders"]
    assert "watermark_column" in plan.failed["orders"]


def test_iso_strings_and_integer_epochs_with_a_unit_are_ordering_columns() -> None:
    registry = parse_registry(
        "table_name,primary_key,watermark_column,watermark_unit\n"
        "iso,id,changed,\nmillis,id,changed,milliseconds\nbare,id,changed,\nwrong,id,changed,ms\n",
        "registry.csv",
    )
    catalog = FakeCatalog(
        table("iso", ("id", "bigint"), ("changed", "varchar(40)")),
        table("millis", ("id", "bigint"), ("changed", "bigint")),
        table("bare", ("id", "bigint"), ("changed", "bigint")),
        table("wrong", ("id", "bigint"), ("changed", "timestamp")),
    )

    plan = plan_run(
        catalog=catalog,
        registry=registry,
        state=StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    items = items_by_table(plan)
    assert sorted(items) == ["iso", "millis"]
    assert items["millis"].watermark_unit == "milliseconds"
    assert "say what they count with watermark_unit" in plan.failed["bare"]
    assert "not an integer epoch; leave watermark_unit blank" in plan.failed["wrong"]


def test_unreadable_table_fails_in_plan_without_blocking_the_others() -> None:
    plan = make_plan(FakeCatalog(ORDERS, table("events", fmt="broken")))

    assert [item.table for item in plan.items] == ["orders"]
    assert "not readable Parquet" in plan.failed["events"]


def test_table_without_data_files_is_skipped_and_its_state_left_alone() -> None:
    plan = make_plan(FakeCatalog(ORDERS, table("events", has_data=False)))

    assert "events" in plan.skipped
    assert [item.table for item in plan.items] == ["orders"]


def test_registry_entries_for_tables_the_source_lacks_are_warned() -> None:
    plan = make_plan(FakeCatalog(ORDERS))

    assert any("'gone'" in warning for warning in plan.warnings)


@pytest.mark.parametrize("paged", [False, True], ids=["listed-at-once", "listed-in-pages"])
def test_tables_filter_plans_only_those_and_rejects_unknown_names(paged: bool) -> None:
    def catalog(*tables: CatalogTable) -> FakeCatalog:
        if paged:
            return PagedFakeCatalog([[t.name] for t in reversed(tables)], *tables)
        return FakeCatalog(*tables)

    events_and_orders = catalog(ORDERS, COUNTRIES, EVENTS)
    plan = make_plan(events_and_orders, tables=["events", "orders"])
    assert [item.table for item in plan.items] == ["events", "orders"]
    assert {name for name, _ in events_and_orders.listed} == {"events", "orders"}

    with pytest.raises(
        ConfigurationError,
        match="--tables names 'nope', which the source does not hold; its tables are: 'countries', 'orders'",
    ):
        make_plan(catalog(ORDERS, COUNTRIES), tables=["nope", "orders"])


def test_the_plan_holds_its_tables_in_name_order_whatever_order_the_pages_list_them_in() -> None:
    tables = (ORDERS, LINES, COUNTRIES, table("unlisted", has_data=False), table("broken", fmt="broken"))
    pages = [["orders", "unlisted"], ["order_lines", "broken"], ["countries"]]
    now = datetime(2026, 1, 1, tzinfo=UTC)

    plan = make_plan(PagedFakeCatalog(pages, *tables), now=now)

    assert [item.table for item in plan.items] == ["countries", "order_lines", "orders"]
    assert (list(plan.failed), list(plan.skipped)) == (["broken"], ["unlisted"])
    assert plan == make_plan(FakeCatalog(*tables), now=now)  # as if listed at once, in name order


class WaitingCatalog(PagedFakeCatalog):
    """Hands on its second page only once a table of the first has had its files listed, or
    ``until`` is set (or after ``patience`` seconds, so that a plan that would wait for every page
    first fails rather than hangs)."""

    patience = 30.0

    def __init__(self, *args, until: threading.Event | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.until = until
        self.first_page_planned = until or threading.Event()
        self.planned_before_second_page: bool | None = None

    def list_files(self, name: str, start_after: str | None = None) -> FileListing | None:
        if name in self.pages[0] and self.until is None:
            self.first_page_planned.set()
        return super().list_files(name, start_after)

    def table_name_pages(self) -> Iterator[list[str]]:
        yield self.pages[0]
        self.planned_before_second_page = self.first_page_planned.wait(self.patience)
        yield from self.pages[1:]


def test_the_tables_of_a_page_are_planned_while_the_catalog_reads_its_next_page() -> None:
    catalog = WaitingCatalog([["orders"], ["countries"]], ORDERS, COUNTRIES)

    plan = make_plan(catalog)

    assert catalog.planned_before_second_page is True
    assert [item.table for item in plan.items] == ["countries", "orders"]


def test_a_catalog_failing_on_a_later_page_fails_the_plan() -> None:
    class FailingCatalog(PagedFakeCatalog):
        def table_name_pages(self) -> Iterator[list[str]]:
            yield ["orders"]
            raise ConfigurationError("access to Glue database 'raw' denied")

    with pytest.raises(ConfigurationError, match="denied"):
        make_plan(FailingCatalog([], ORDERS, COUNTRIES))


def test_a_plan_of_tables_read_by_watermark_survives_a_json_round_trip() -> None:
    state = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00Z")})
    plan = make_plan(FakeCatalog(ORDERS, LINES, COUNTRIES, EVENTS), state)

    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def plan_reading_files(count: int) -> Plan:
    """A first plan of ``orders`` read by arrival from ``count`` files, and of ``countries`` (no files)."""
    files = [(f"2026/01/01/{number:06d}.parquet", 10 * MINUTE) for number in range(count)]
    catalog = FakeCatalog(ORDERS, COUNTRIES, listings={"orders": listing(*files, reference=110 * MINUTE)})
    return make_plan(catalog)


def test_plan_json_holds_each_items_file_count_not_its_file_lists() -> None:
    plan = plan_reading_files(1_000)

    entries = {entry["table"]: entry for entry in plan.to_json()["items"]}

    assert plan.to_json()["format_version"] == PLAN_FORMAT
    assert {name: entry["file_count"] for name, entry in entries.items()} == {
        "orders": 1_000,
        "countries": None,
    }
    assert not any(name in entry for entry in entries.values() for name in ("files", "next_cursor"))
    # The item itself keeps them: the item and pack files are written from it.
    assert len(items_by_table(plan)["orders"].files or []) == 1_000


def test_plan_json_stays_the_same_size_however_many_files_a_table_has() -> None:
    def size(plan: Plan) -> int:
        return len(json.dumps(plan.to_json()))

    # 1,000 times the files: only the digits of the file count and of the bytes to read grow.
    assert size(plan_reading_files(10_000)) - size(plan_reading_files(10)) == 3 + 3


def test_a_plan_read_back_is_the_plan_without_its_items_file_lists() -> None:
    plan = plan_reading_files(3)

    read = Plan.from_json(json.loads(json.dumps(plan.to_json())))

    without_files = [replace(item, files=None, next_cursor=None) for item in plan.items]
    assert read == replace(plan, items=without_files)


def test_a_plan_written_before_plan_formats_holding_whole_items_is_read_as_one_of_this_format() -> None:
    plan = plan_reading_files(3)
    format_1 = {**plan.to_json(), "items": [item.to_json() for item in plan.items]}
    del format_1["format_version"]

    assert Plan.from_json(format_1) == Plan.from_json(plan.to_json())


@pytest.mark.parametrize("document", [{"format_version": 0, "run_id": "r9"}, ["not", "a", "plan"]])
def test_a_plan_of_an_unknown_format_is_refused_naming_the_fix(document) -> None:
    with pytest.raises(ConfigurationError, match="deploy one version of both") as refused:
        Plan.from_json(document)

    assert "plan formats 1 and 2" in str(refused.value)


def test_a_plan_of_a_newer_format_is_refused_as_written_by_a_newer_version() -> None:
    with pytest.raises(NewerFormatError, match="deploy one version of the Plan and the Commit") as refused:
        Plan.from_json({"format_version": PLAN_FORMAT + 1, "run_id": "r9"})

    assert (
        "plan of run 'r9' was written by a newer cdc-pipeline (format 3; this one reads up to format 2)"
        in str(refused.value)
    )


def test_watermark_column_that_is_a_partition_folder_key_fails_the_table_with_the_fix() -> None:
    partitioned = replace(ORDERS, partition_keys=("dt",))
    registry = parse_registry("table_name,primary_key,watermark_column\norders,order_id,dt\n", "r.csv")

    plan = plan_run(
        catalog=FakeCatalog(partitioned),
        registry=registry,
        state=StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    assert "is a partition folder key" in plan.failed["orders"]


def test_settings_a_table_without_key_cannot_use_are_warned_not_silently_ignored() -> None:
    registry = parse_registry("table_name,primary_key,sequence_column,lookback\nevents,,seq,PT5M\n", "r.csv")
    events = table("events", ("seq", "bigint"), ("updated_at", "timestamp"))

    plan = plan_run(
        catalog=FakeCatalog(events),
        registry=registry,
        state=StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    warnings = plan.items[0].warnings
    assert any("sequence_column 'seq' is ignored without a primary key" in w for w in warnings)
    assert any("lookback 'PT5M' is ignored without a primary key" in w for w in warnings)


def test_keyed_table_without_any_ordering_column_is_warned() -> None:
    countries = items_by_table(make_plan(FakeCatalog(COUNTRIES)))["countries"]

    assert any("chosen by content, not recency" in w for w in countries.warnings)


# ----------------------------------------------------------------------------------------------
# Reading by arrival
# ----------------------------------------------------------------------------------------------

MINUTE = 60_000_000
SETTLE = 15 * MINUTE


def listing(*files: tuple[str, int], reference: int) -> FileListing:
    return FileListing("/raw/orders", tuple(DataFile(path, 100, at) for path, at in files), reference)


def arrival_plan(catalog: FakeCatalog, state: StateDocument | None = None, **kwargs) -> Plan:
    registry = parse_registry(
        "table_name,primary_key,delete_column,delete_values,time_ordered_keys\norders,order_id,Op,D,"
        + kwargs.pop("ordered", "")
        + "\n",
        "registry.csv",
    )
    return plan_run(
        catalog=catalog,
        registry=registry,
        state=state or StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
        **kwargs,
    )


def committed(item) -> StateDocument:
    """The state once ``item`` is committed, as the commit builds it."""
    return StateDocument(
        revision=1,
        tables={
            "orders": TableState(
                watermark=None,
                location=item.output_location,
                rows=1,
                run_id=item.run_id,
                committed_at="2026-01-01T00:00:00+00:00",
                load_type=item.load_type,
                mode=item.mode,
                watermark_column=item.watermark_column,
                primary_key=tuple(item.primary_key),
                delete_column=item.delete_column,
                delete_values=tuple(item.delete_values),
                incremental_by=item.incremental_by,
                cursor=item.next_cursor,
            )
        },
    )


def test_a_first_arrival_plan_reads_every_file_and_records_them_in_its_next_cursor() -> None:
    files = [("2026/01/01/a.parquet", 10 * MINUTE), ("2026/01/02/b.parquet", 100 * MINUTE)]
    catalog = FakeCatalog(ORDERS, listings={"orders": listing(*files, reference=110 * MINUTE)})

    (item,) = arrival_plan(catalog).items

    assert (item.incremental_by, item.load_type) == ("arrival", "full")
    assert item.files == ["2026/01/01/a.parquet", "2026/01/02/b.parquet"]
    cursor = FileCursor.from_json(item.next_cursor)
    assert cursor.mark == 95 * MINUTE
    assert cursor.recent == {"2026/01/02/b.parquet": 100 * MINUTE}
    assert catalog.described == [("orders", item.files)]


def test_an_incremental_arrival_plan_reads_only_new_files_however_old_their_stamp() -> None:
    first = listing(("a.parquet", 10 * MINUTE), reference=110 * MINUTE)
    (item,) = arrival_plan(FakeCatalog(ORDERS, listings={"orders": first})).items
    late = listing(("a.parquet", 10 * MINUTE), ("late.parquet", 96 * MINUTE), reference=200 * MINUTE)

    (item,) = arrival_plan(FakeCatalog(ORDERS, listings={"orders": late}), committed(item)).items

    assert (item.load_type, item.files) == ("incremental", ["late.parquet"])


def test_a_table_with_no_new_file_is_unchanged_and_not_described() -> None:
    first = listing(("a.parquet", 10 * MINUTE), reference=110 * MINUTE)
    (item,) = arrival_plan(FakeCatalog(ORDERS, listings={"orders": first})).items
    catalog = FakeCatalog(ORDERS, listings={"orders": first})

    plan = arrival_plan(catalog, committed(item))

    assert (plan.items, plan.unchanged) == ([], ["orders"])
    assert catalog.described == []


def test_a_registry_change_fails_a_table_with_no_new_file_and_once_accepted_reads_every_file() -> None:
    first = listing(("a.parquet", 10 * MINUTE), reference=110 * MINUTE)
    (item,) = arrival_plan(FakeCatalog(ORDERS, listings={"orders": first})).items
    state = committed(item)
    state = replace(state, tables={"orders": replace(state.tables["orders"], delete_values=("X",))})

    refused = arrival_plan(FakeCatalog(ORDERS, listings={"orders": first}), state)
    (item,) = arrival_plan(
        FakeCatalog(ORDERS, listings={"orders": first}), state, accept_registry_change=["orders"]
    ).items

    assert (refused.items, refused.unchanged) == ([], [])
    assert "delete values X -> D" in refused.failed["orders"]
    assert (item.load_type, item.files) == ("full", ["a.parquet"])


def test_a_tracker_from_before_arrival_reads_gets_one_full_load_with_a_warning() -> None:
    legacy = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00Z")})
    catalog = FakeCatalog(ORDERS, listings={"orders": listing(("a.parquet", MINUTE), reference=9 * MINUTE)})

    (item,) = arrival_plan(catalog, legacy).items

    assert item.load_type == "full"
    assert "predates reading by arrival" in " ".join(item.warnings)


def test_time_ordered_keys_list_only_names_after_the_last_settled_one() -> None:
    files = [("2026/01/01/a.parquet", 10 * MINUTE), ("2026/01/02/b.parquet", 100 * MINUTE)]
    first = FakeCatalog(ORDERS, listings={"orders": listing(*files, reference=200 * MINUTE)})
    (item,) = arrival_plan(first, ordered="true").items
    # mark = 185 min; a settle window of margin: names of files that arrived by 170 min are settled.
    assert FileCursor.from_json(item.next_cursor).start_after == "2026/01/02/b.parquet"
    more = [*files, ("2026/01/03/c.parquet", 300 * MINUTE)]
    catalog = FakeCatalog(ORDERS, listings={"orders": listing(*more, reference=310 * MINUTE)})

    (item,) = arrival_plan(catalog, committed(item), ordered="true").items

    assert catalog.listed == [("orders", "2026/01/02/b.parquet")]
    assert item.files == ["2026/01/03/c.parquet"]


def test_time_ordered_keys_are_not_used_by_a_full_load() -> None:
    files = [("a.parquet", 10 * MINUTE), ("b.parquet", 100 * MINUTE)]
    (item,) = arrival_plan(
        FakeCatalog(ORDERS, listings={"orders": listing(*files, reference=200 * MINUTE)}), ordered="true"
    ).items
    catalog = FakeCatalog(ORDERS, listings={"orders": listing(*files, reference=300 * MINUTE)})

    (item,) = arrival_plan(catalog, committed(item), ordered="true", load_type=LoadType.FULL).items

    assert catalog.listed == [("orders", None)]
    assert item.files == ["a.parquet", "b.parquet"]


def test_an_unchanged_table_whose_cursor_can_forget_many_settled_files_gets_it_refreshed() -> None:
    bulk = [(f"load/{n:05d}.parquet", 100 * MINUTE) for n in range(1_200)]
    (item,) = arrival_plan(
        FakeCatalog(ORDERS, listings={"orders": listing(*bulk, reference=101 * MINUTE)})
    ).items
    assert len(FileCursor.from_json(item.next_cursor).recent) == 1_200
    state = committed(item)

    soon = arrival_plan(
        FakeCatalog(ORDERS, listings={"orders": listing(*bulk, reference=105 * MINUTE)}), state
    )
    later = arrival_plan(
        FakeCatalog(ORDERS, listings={"orders": listing(*bulk, reference=200 * MINUTE)}), state
    )

    assert (soon.unchanged, soon.refreshed_cursors) == (["orders"], {})
    assert later.unchanged == ["orders"]
    assert FileCursor.from_json(later.refreshed_cursors["orders"]) == FileCursor(mark=185 * MINUTE)


def plan_partitioned_orders(partition_by: str, state: StateDocument) -> Plan:
    registry = parse_registry(
        "table_name,primary_key,delete_column,delete_values,partition_by\n"
        f"orders,order_id,Op,D,{partition_by}\n",
        "tables.csv",
    )
    return plan_run(
        catalog=FakeCatalog(ORDERS),
        registry=registry,
        state=state,
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )


def test_a_change_of_output_partitioning_gives_one_full_load_in_the_new_layout() -> None:
    state = StateDocument(revision=3, tables={"orders": tracker("2026-01-01T00:00:00Z")})

    (orders,) = plan_partitioned_orders("Updated_At", state).items
    assert (orders.load_type, orders.current_snapshot, orders.current_partitions) == ("full", None, None)
    assert orders.partition_by == ["updated_at"]  # the table's spelling
    assert any("output partitioning changed from [] to ['Updated_At']" in w for w in orders.warnings)


def test_an_incremental_item_of_a_partitioned_table_carries_its_current_partitions() -> None:
    partitions = {"p1": {"location": "/lake/current/orders/snapshots/r0/cdc_partition=p1", "values": ["x"]}}
    old = tracker("2026-01-01T00:00:00Z", partition_by=("updated_at",), partitions=partitions)
    state = StateDocument(revision=3, tables={"orders": old})

    (orders,) = plan_partitioned_orders("updated_at", state).items

    assert (orders.load_type, orders.current_partitions) == ("incremental", partitions)


# ----------------------------------------------------------------------------------------------
# The plan stage: plan, item and pack files
# ----------------------------------------------------------------------------------------------


class RecordingStorage(LocalStorage):
    """Local files, and the order they were written in; ``item_written`` once a work item's is."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.item_written = threading.Event()

    def write_json(self, location: str, data) -> None:
        super().write_json(location, data)
        self.written.append(location)
        if "/items/" in location:
            self.item_written.set()


def stage(tmp_path, catalog: FakeCatalog, storage: RecordingStorage, pack_bytes: int) -> tuple[Plan, Layout]:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "tables.csv").write_text(REGISTRY_CSV)
    layout = Layout(output_path=str(tmp_path / "current"), cdc_path=str(tmp_path / "state"))
    plan = plan_stage(
        catalog=catalog,
        registry_source=LocalRegistrySource(registry),
        state_store=LocalStateStore(tmp_path / "state"),
        storage=storage,
        layout=layout,
        run_id="r1",
        pack_bytes=pack_bytes,
    )
    return plan, layout


def sized(*files: tuple[str, int]) -> FileListing:
    return FileListing("/raw/t", tuple(DataFile(path, size, MINUTE) for path, size in files), 60 * MINUTE)


def test_a_table_with_a_glue_run_of_its_own_has_its_work_item_written_while_the_catalog_is_still_listed(
    tmp_path,
) -> None:
    storage = RecordingStorage()
    catalog = WaitingCatalog(
        [["orders"], ["countries"]],
        ORDERS,
        COUNTRIES,
        listings={"orders": sized(("a.parquet", 10)), "countries": sized(("b.parquet", 10))},
        until=storage.item_written,
    )

    plan, layout = stage(tmp_path, catalog, storage, pack_bytes=0)  # no packing: every table alone

    assert catalog.planned_before_second_page is True
    assert [item.table for item in plan.items] == ["countries", "orders"]
    assert storage.written[0] == layout.item("orders", "r1")
    assert storage.written[-2:] == [layout.plan("r1"), layout.items("r1")]


def test_packed_tables_are_written_once_every_item_exists_and_the_map_lists_runs_in_pack_order(
    tmp_path,
) -> None:
    storage = RecordingStorage()
    listings = {
        "orders": sized(("big.parquet", 5_000)),  # over pack_bytes: a Glue run of its own, early
        "order_lines": sized(("a.parquet", 100)),
        "countries": sized(("b.parquet", 200)),
    }
    catalog = PagedFakeCatalog(
        [["orders", "order_lines"], ["countries"]], ORDERS, LINES, COUNTRIES, listings=listings
    )

    plan, layout = stage(tmp_path, catalog, storage, pack_bytes=1_000)

    pack_file = layout.pack(1, "r1")
    assert plan.packs == {pack_file: ["countries", "order_lines"]}
    assert LocalStorage().read_json(layout.items("r1")) == [
        {"table": "orders", "work_item_location": layout.item("orders", "r1")},
        {"table": "pack-0001 (2 tables)", "work_item_location": pack_file},
    ]
    assert storage.written == [layout.item("orders", "r1"), layout.plan("r1"), pack_file, layout.items("r1")]
    # Each file holds its items whole, file lists and all, as planned.
    by_table = items_by_table(plan)
    assert WorkItem.from_json(LocalStorage().read_json(layout.item("orders", "r1"))) == by_table["orders"]
    assert Pack.from_json(LocalStorage().read_json(pack_file)).items == [
        by_table["countries"],
        by_table["order_lines"],
    ]
    assert by_table["orders"].files == ["big.parquet"]


def plan_one(registry_csv: str, *tables: CatalogTable) -> Plan:
    return plan_run(
        catalog=FakeCatalog(*tables),
        registry=parse_registry(registry_csv, "registry.csv"),
        state=StateDocument(),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )


def test_registry_columns_in_another_case_are_the_tables_columns_in_its_spelling() -> None:
    plan = plan_one(
        "table_name,primary_key,watermark_column,sequence_column,delete_column,delete_values,partition_by\n"
        "orders,ORDER_ID,Updated_At,SEQ,op,D,REGION\n",
        table(
            "orders",
            ("order_id", "bigint"),
            ("Op", "string"),
            ("seq", "bigint"),
            ("region", "string"),
            ("updated_at", "timestamp"),
        ),
    )

    (orders,) = plan.items
    assert (orders.primary_key, orders.watermark_column) == (["order_id"], "updated_at")
    assert (orders.sequence_column, orders.delete_column, orders.partition_by) == ("seq", "Op", ["region"])


def test_a_key_column_that_differs_only_in_a_case_lowercasing_does_not_equal_is_named_as_such() -> None:
    # Lowercasing turns a final capital sigma into the final form: the two names differ only in case,
    # but not once lowercased.
    plan = plan_one("table_name,primary_key\nroads,ΟΔΟΣ\n", table("roads", ("οδοσ", "bigint")))

    message = plan.failed["roads"]
    assert "names primary_key (ΟΔΟΣ) 'ΟΔΟΣ', which the table lacks" in message
    assert "the table has 'οδοσ', which differs from it only in case" in message
    assert "write the column in the registry as the table spells it" in message


def test_a_column_that_differs_only_in_its_unicode_form_is_named_as_such() -> None:
    composed, decomposed = "caf\u00e9_id", "cafe\u0301_id"
    plan = plan_one(f"table_name,primary_key\ncafes,{composed}\n", table("cafes", (decomposed, "bigint")))

    assert "differs from it only in case or in its Unicode form (NFC, NFD)" in plan.failed["cafes"]


def test_a_missing_delete_column_with_a_lookalike_is_warned_naming_it() -> None:
    plan = plan_one(
        "table_name,primary_key,delete_column,delete_values\nroads,id,ΟΔΟΣ,D\n",
        table("roads", ("id", "bigint"), ("οδοσ", "string")),
    )

    (roads,) = plan.items
    assert any("delete_column 'ΟΔΟΣ' is in none of the files" in w and "'οδοσ'" in w for w in roads.warnings)


def test_a_registry_no_longer_naming_the_ordering_column_it_named_is_a_registry_change() -> None:
    registry = parse_registry("table_name,primary_key,watermark_column\norders,order_id,\n", "new.csv")
    old = tracker("2026-01-01T00:00:00Z", column="created_at", delete_column=None, delete_values=())
    orders = table("orders", ("order_id", "bigint"), ("created_at", "timestamp"), ("updated_at", "timestamp"))

    plan = plan_run(
        catalog=FakeCatalog(orders),
        registry=registry,
        state=StateDocument(revision=3, tables={"orders": old}),
        state_version=None,
        layout=LAYOUT,
        run_id="r1",
    )

    assert "ordering (watermark) column 'created_at' -> 'updated_at (the default)'" in plan.failed["orders"]


def test_files_that_no_longer_hold_the_default_ordering_column_force_a_full_load_not_a_failure() -> None:
    # The registry names no ordering column and did not change: the table's files did.
    first = listing(("a.parquet", 10 * MINUTE), reference=110 * MINUTE)
    (item,) = arrival_plan(FakeCatalog(ORDERS, listings={"orders": first})).items
    assert item.watermark_column == "updated_at"
    later = listing(("a.parquet", 10 * MINUTE), ("b.parquet", 120 * MINUTE), reference=200 * MINUTE)
    unstamped = table("orders", ("order_id", "bigint"), ("Op", "string"))

    plan = arrival_plan(FakeCatalog(unstamped, listings={"orders": later}), committed(item))

    (orders,) = plan.items
    assert orders.load_type == "full"
    assert any("ordered by 'updated_at', which the files read now lack" in w for w in orders.warnings)
