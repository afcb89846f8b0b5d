"""How every report table writes a number and an interval, so that they read alike: three decimals, and a
missing value (None, or NaN) as an en dash."""

from __future__ import annotations

import math

MISSING = "–"


def number(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def interval(bounds) -> str:
    """``[low, high]`` to three decimals; the dash when there is none."""
    return MISSING if not bounds else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"
