"""A plain reference evaluator of API.md's filter semantics, used as a test oracle.

It reads the raw JSON filter and one document's metadata dict, and shares no code with akidb. It assumes a
valid filter. Numbers compare as Python numbers (exact), so tests keep integers within 2**53.
"""

from __future__ import annotations

import operator
from typing import Any

_MISSING = object()
_RANGE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _get(metadata: dict[str, Any], path: str) -> Any:
    value: Any = metadata
    for segment in path.split("."):
        if not isinstance(value, dict) or segment not in value:
            return _MISSING
        value = value[segment]
    return value


def _equal(a: Any, b: Any) -> bool:
    """Typed equality of a field value and a scalar: no coercion, 1 == 1.0, an array never equals."""
    return _kind(a) == _kind(b) and _kind(a) in ("null", "bool", "number", "string") and a == b


def _condition(op: str, operand: Any, value: Any) -> bool:
    if op == "$eq":
        return _equal(value, operand)
    if op == "$ne":
        return not _equal(value, operand)
    if op in _RANGE:
        return _kind(value) == _kind(operand) and _kind(value) in ("number", "string") and _RANGE[op](value, operand)
    if op == "$in":
        return any(_equal(value, x) for x in operand)
    if op == "$nin":
        return not any(_equal(value, x) for x in operand)
    if op == "$exists":
        return (value is not _MISSING) == operand
    if op == "$contains":
        return isinstance(value, list) and any(_equal(e, operand) for e in value)
    raise AssertionError(op)


def matches(raw_filter: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Whether a document with this metadata passes the filter (several keys ANDed)."""
    for key, spec in raw_filter.items():
        if key == "$and":
            ok = all(matches(f, metadata) for f in spec)
        elif key == "$or":
            ok = any(matches(f, metadata) for f in spec)
        elif key == "$not":
            ok = not matches(spec, metadata)
        else:
            value = _get(metadata, key)
            ops = spec if isinstance(spec, dict) else {"$eq": spec}
            ok = all(_condition(op, operand, value) for op, operand in ops.items())
        if not ok:
            return False
    return True
