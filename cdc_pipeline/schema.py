"""Column names and types as the catalog, the files and the snapshot each give them, reconciled.

Names match case-insensitively everywhere (registry, catalog, files), as Glue, Athena and Spark
treat them; only two names equal ignoring case *in one place* are an ambiguity. Types are Spark's
type names (``int``, ``bigint``, ``decimal(10,2)``, ``timestamp``...). When two places disagree on
a column's type, the column is widened when that loses nothing, and is otherwise incompatible:

* ``tinyint`` / ``smallint`` / ``int`` -> ``bigint`` (to the wider of the two)
* ``float`` -> ``double``
* ``date`` -> ``timestamp`` or ``timestamp_ntz`` (midnight UTC)
* ``decimal(p, s)`` -> a decimal holding both (more precision, or more scale and digits), up to 38
* a column of no type (all null) takes the other's type
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
_ALIASES = {
    "integer": "int",
    "long": "bigint",
    "short": "smallint",
    "byte": "tinyint",
    "real": "float",
    "null": "void",
}
_DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")
_MAX_DECIMAL_PRECISION = 38


def normalise_type(type_name: str) -> str:
    """One spelling per type: Hive/Glue and Spark names alike (``varchar(20)`` is ``string``)."""
    name = re.sub(r"\s+", "", type_name.strip().lower())
    name = re.sub(r"\b(?:var)?char\(\d+\)", "string", name)
    if name == "decimal":
        return "decimal(10,0)"
    return _ALIASES.get(name, name)


def widen(first: str, second: str) -> str | None:
    """The type both columns fit in without loss, or None when they are incompatible."""
    a, b = normalise_type(first), normalise_type(second)
    if a == b:
        return a
    if "void" in (a, b):
        return b if a == "void" else a
    if a in _INTEGRAL and b in _INTEGRAL:
        return max(a, b, key=_INTEGRAL.index)
    if {a, b} == {"float", "double"}:
        return "double"
    if "date" in (a, b) and {a, b} - {"date"} <= {"timestamp", "timestamp_ntz"}:
        return b if a == "date" else a
    return _widen_decimal(a, b)


def _widen_decimal(a: str, b: str) -> str | None:
    da, db = _DECIMAL.fullmatch(a), _DECIMAL.fullmatch(b)
    if not (da and db):
        return None
    (pa, sa), (pb, sb) = (int(x) for x in da.groups()), (int(x) for x in db.groups())
    scale = max(sa, sb)
    precision = max(pa - sa, pb - sb) + scale
    return f"decimal({precision},{scale})" if precision <= _MAX_DECIMAL_PRECISION else None


class AmbiguousColumnError(ValueError):
    """Two columns of one place are equal ignoring case."""


def by_lower_name(names: Iterable[str], where: str) -> dict[str, str]:
    """``{lowercased: name}``; raises AmbiguousColumnError naming both spellings and ``where``."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise AmbiguousColumnError(
                f"{where} has columns {other!r} and {name!r}, which differ only by case; Glue, Athena "
                "and Spark treat them as one column. Rename one at the source"
            )
    return seen


def resolve(name: str, columns: Mapping[str, str]) -> str | None:
    """The spelling of ``name`` among ``columns`` (a :func:`by_lower_name` map), or None."""
    return columns.get(name.lower())
