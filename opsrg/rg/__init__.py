"""Real-space RG of the Chalker-Coddington network (Wheatstone-bridge cell, b = 2).

Nothing heavy is imported here, so ``import opsrg.rg`` stays cheap; import the submodules
(``kernel``, ``histogram``, ``pipeline``...) where they are needed. See docs/rg.md.
"""

from __future__ import annotations

__all__ = ["analysis", "backends", "histogram", "kernel", "numerical", "pipeline", "streams"]
