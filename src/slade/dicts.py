"""Nested dicts as flat ``{dotted.key: value}`` maps, the form configs and fingerprints are compared in."""

from __future__ import annotations

from typing import Any


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}``: an empty dict is a value."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any], shared_only: bool = False) -> list[str]:
    """Dotted keys whose values differ between ``a`` and ``b``, sorted.

    With ``shared_only`` only keys present in both count; otherwise a key missing from one side
    reads as None there.
    """
    flat_a, flat_b = flatten(a), flatten(b)
    keys = flat_a.keys() & flat_b.keys() if shared_only else flat_a.keys() | flat_b.keys()
    return sorted(k for k in keys if flat_a.get(k) != flat_b.get(k))
