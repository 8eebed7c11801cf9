"""Checks of numeric arguments shared by the public functions, with one message style."""

from __future__ import annotations

import math

__all__ = ["non_negative_finite", "non_negative_int", "positive_finite", "positive_int"]


def positive_int(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` >= 1 (not a ``bool``), else raise ``ValueError``."""
    return _integer(owner, name, value, minimum=1, expected="a positive integer")


def non_negative_int(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` >= 0 (not a ``bool``), else raise ``ValueError``."""
    return _integer(owner, name, value, minimum=0, expected="a non-negative integer")


def positive_finite(owner: str, name: str, value: object) -> float:
    """Return ``float(value)`` for a finite ``int`` or ``float`` > 0 (not a ``bool``), else raise ``ValueError``."""
    return _number(owner, name, value, allow_zero=False, expected="a finite positive number")


def non_negative_finite(owner: str, name: str, value: object) -> float:
    """Return ``float(value)`` for a finite ``int`` or ``float`` >= 0 (not a ``bool``), else raise ``ValueError``."""
    return _number(owner, name, value, allow_zero=True, expected="a finite non-negative number")


def _integer(owner: str, name: str, value: object, *, minimum: int, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}.")
    return value


def _number(owner: str, name: str, value: object, *, allow_zero: bool, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    ):
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}.")
    return float(value)
