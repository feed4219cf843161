"""Checks of run parameters that need no numpy: the engine and the ops side apply the same rules."""

from __future__ import annotations

import math

from opsrg.core.errors import InputError


def check_grid(nbins: int, zmax: float) -> None:
    """The histogram grid's rule: an even number of bins >= 2 on [-zmax, zmax), zmax positive and finite."""
    if int(nbins) < 2 or nbins % 2:
        raise InputError(f"nbins must be an even integer >= 2 (got {nbins})")
    if not (math.isfinite(zmax) and zmax > 0):
        raise InputError(f"zmax must be positive and finite (got {zmax})")
