"""Watermarks keep every microsecond and every kind through their text form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_pipeline.watermark import Watermark, WatermarkKind, parse_lookback

_instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))


@given(_instants, st.sampled_from([WatermarkKind.TIMESTAMP, WatermarkKind.TIMESTAMP_NTZ]))
def test_timestamp_watermarks_round_trip_exactly_through_iso_text(instant: datetime, kind) -> None:
    micros = (instant - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    watermark = Watermark.from_micros(micros, kind)

    assert Watermark.parse(watermark.iso()) == watermark


def test_iso_forms_say_their_kind() -> None:
    assert Watermark.parse("2024-05-01T12:00:00.000001Z").kind is WatermarkKind.TIMESTAMP
    assert Watermark.parse("2024-05-01T12:00:00.000001").kind is WatermarkKind.TIMESTAMP_NTZ
    assert Watermark.parse("2024-05-01").kind is WatermarkKind.DATE
    assert Watermark.parse("2024-05-01").iso() == "2024-05-01"


def test_an_offset_other_than_utc_is_read_as_the_same_instant() -> None:
    assert Watermark.parse("2024-05-01T14:00:00+02:00") == Watermark.parse("2024-05-01T12:00:00Z")


def test_iso_text_keeps_six_fractional_digits() -> None:
    instant = datetime(2024, 5, 1, 12, 0, 0, 10, tzinfo=UTC)
    micros = (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    assert Watermark.from_micros(micros, WatermarkKind.TIMESTAMP).iso() == "2024-05-01T12:00:00.000010Z"


def test_lookback_moves_a_date_watermark_back_in_whole_days() -> None:
    watermark = Watermark.parse("2024-05-10")

    assert watermark.minus(parse_lookback("PT1H")).iso() == "2024-05-09"
    assert watermark.minus(parse_lookback("P2D")).iso() == "2024-05-08"


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("PT15M", 900_000_000),
        ("PT1H30M", 5_400_000_000),
        ("P1D", 86_400_000_000),
        ("P1W", 7 * 86_400_000_000),
        ("PT0.000001S", 1),
        ("pt2s", 2_000_000),
    ],
)
def test_lookback_durations_parse_to_exact_microseconds(text: str, micros: int) -> None:
    assert parse_lookback(text) == micros


@pytest.mark.parametrize("text", ["P1M", "P1Y", "15m", "P", "PT", "P1DT", "-PT1M"])
def test_ambiguous_or_malformed_lookbacks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601 duration"):
        parse_lookback(text)


def test_garbage_watermark_text_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 watermark"):
        Watermark.parse("yesterday")
