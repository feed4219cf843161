"""Random-stream design: one independent stream per (run seed, step, shard, purpose).

The old code reused one seed for every launder batch of a step (RG_SPEC section 1, defect 2).
Here every key comes from ``numpy.random.SeedSequence`` with the run seed as entropy and
(step, shard, purpose code) as spawn key, so no two shards, steps or purposes share a stream.
EXP runs reuse the same keys for every shift: that is what makes them common random numbers.
"""

from __future__ import annotations

import zlib

import numpy as np

from opsrg.core.errors import InputError


def purpose_code(purpose: str) -> int:
    """Stable 32-bit code of a purpose name (CRC-32 of its UTF-8 bytes)."""
    if not purpose:
        raise InputError("stream purpose must be a non-empty string")
    return zlib.crc32(purpose.encode("utf-8")) & 0xFFFFFFFF


def stream_key(run_seed: int, step: int, shard: int, purpose: str) -> int:
    """Unsigned 64-bit key for one stream; distinct inputs give independent keys."""
    for name, v in (("run_seed", run_seed), ("step", step), ("shard", shard)):
        if int(v) < 0:
            raise InputError(f"{name} must be non-negative (got {v})")
    ss = np.random.SeedSequence(entropy=int(run_seed),
                                spawn_key=(int(step), int(shard), purpose_code(purpose)))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def numpy_generator(key: int) -> np.random.Generator:
    """PCG64 generator seeded by a stream key."""
    return np.random.Generator(np.random.PCG64(int(key)))
