"""Watermarks: the per-table high-water mark of the ordering column, exact to the microsecond.

A watermark is held as an integer count of microseconds since the Unix epoch on the UTC wall
clock, whatever the column's type, so that no float or time-zone conversion ever rounds it. It
travels between stages as an ISO-8601 string whose form says its kind:

* ``timestamp``      (an instant):               ``2024-05-01T12:00:00.000001Z``
* ``timestamp_ntz``  (a wall-clock time):         ``2024-05-01T12:00:00.000001``
* ``date``                                        ``2024-05-01``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

_EPOCH = datetime(1970, 1, 1)
_MICROS_PER_DAY = 86_400_000_000


class WatermarkKind(StrEnum):
    TIMESTAMP = "timestamp"
    TIMESTAMP_NTZ = "timestamp_ntz"
    DATE = "date"


@dataclass(frozen=True, order=True)
class Watermark:
    """A point on a table's ordering column, comparable across timestamp kinds."""

    micros: int
    kind: WatermarkKind

    @classmethod
    def parse(cls, text: str) -> Watermark:
        """Read the ISO-8601 form written by :meth:`iso`; the form decides the kind."""
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            days = (date.fromisoformat(text) - _EPOCH.date()).days
            return cls(days * _MICROS_PER_DAY, WatermarkKind.DATE)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 watermark: {text!r}") from exc
        if parsed.tzinfo is None:
            return cls(_micros_between(_EPOCH, parsed), WatermarkKind.TIMESTAMP_NTZ)
        naive_utc = parsed.astimezone(UTC).replace(tzinfo=None)
        return cls(_micros_between(_EPOCH, naive_utc), WatermarkKind.TIMESTAMP)

    @classmethod
    def from_micros(cls, micros: int, kind: WatermarkKind) -> Watermark:
        return cls(int(micros), kind)

    def iso(self) -> str:
        """The ISO-8601 text of this watermark, with all six fractional digits."""
        wall = _EPOCH + timedelta(microseconds=self.micros)
        if self.kind is WatermarkKind.DATE:
            return wall.date().isoformat()
        text = wall.isoformat(timespec="microseconds")
        return text + "Z" if self.kind is WatermarkKind.TIMESTAMP else text

    def minus(self, lookback_micros: int) -> Watermark:
        """The watermark moved back by a lookback window (whole days for dates)."""
        micros = self.micros - lookback_micros
        if self.kind is WatermarkKind.DATE:
            micros -= micros % _MICROS_PER_DAY
        return Watermark(micros, self.kind)

    def as_kind(self, kind: WatermarkKind) -> Watermark:
        """The same point read as another kind (a column's type may change between runs)."""
        return Watermark(self.micros, kind)


def _micros_between(start: datetime, end: datetime) -> int:
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d{1,6})?)S)?)?"
)


def parse_lookback(text: str) -> int:
    """Microseconds in an ISO-8601 duration such as ``PT15M``, ``P1D`` or ``PT0.5S``.

    Years and months are refused: their length depends on the date, so a lookback given in them
    would not be one fixed window.
    """
    match = _DURATION.fullmatch(text.strip().upper())
    if not match or text.strip().upper() in {"P", "PT"} or text.strip().upper().endswith("T"):
        raise ValueError(
            f"lookback {text!r} is not an ISO-8601 duration in weeks, days, hours, minutes or "
            "seconds (e.g. PT15M, PT1H, P1D)"
        )
    parts = {name: value or "0" for name, value in match.groupdict().items()}
    whole_seconds, _, fraction = parts["seconds"].partition(".")
    micros = int((fraction or "0").ljust(6, "0"))
    seconds = (
        int(parts["weeks"]) * 7 * 86_400
        + int(parts["days"]) * 86_400
        + int(parts["hours"]) * 3_600
        + int(parts["minutes"]) * 60
        + int(whole_seconds)
    )
    return seconds * 1_000_000 + micros
