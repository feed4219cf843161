"""The RG map of the Wheatstone-bridge cell (RG_SPEC 2.2), per sample.

``rg_step_z`` is the float64 complex reference; ``map_z_fast`` is the same map in real
arithmetic for float32 or float64, used by the numpy backend. Both evaluate
z' = ln(|N_r|^2 / |N_t|^2): no D and no cancellation in either tail, and t, r come from z via
e = exp(-|z|), exact at both ends (the naive ln(1/t'^2 - 1) loses float32 accuracy as t' -> 1).

Conventions: z has shape (5, N) for saddles 1 = A-X, 2 = A-Y, 3 = X-Y (bridge), 4 = Y-B,
5 = X-B; phases has shape (4, N) holding the loop phases Phi1..Phi4 of RG_SPEC 2.2.
"""

from __future__ import annotations

import numpy as np

from opsrg.core.errors import InputError


def t_r_from_z(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes (t, r) with t^2 = 1/(1+e^z), r^2 = 1 - t^2, accurate at both tails."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    small = e / (1 + e)  # the smaller of t^2, r^2
    large = 1 / (1 + e)
    pos = z >= 0
    t2 = np.where(pos, small, large)
    r2 = np.where(pos, large, small)
    return np.sqrt(t2), np.sqrt(r2)


def z_from_t(t: np.ndarray) -> np.ndarray:
    """z = ln(1/t^2 - 1) = ln(r^2/t^2); reference only (loses accuracy as t -> 1)."""
    t2 = np.asarray(t, dtype=np.float64) ** 2
    with np.errstate(divide="ignore"):
        return np.log1p(-t2) - np.log(t2)


def _check(z: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z)
    phases = np.asarray(phases)
    if z.ndim != 2 or z.shape[0] != 5 or phases.shape != (4, z.shape[1]):
        raise InputError(f"need z of shape (5, N) and phases of shape (4, N); got {z.shape}, {phases.shape}")
    return z, phases


def numerators(t: np.ndarray, r: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_t, N_r, D) as complex arrays from amplitudes t, r (shape (5, N)) and loop phases."""
    t1, t2, t3, t4, t5 = t
    r1, r2, r3, r4, r5 = r
    e1, e2, e3, e4 = np.exp(1j * np.asarray(phases))
    n_t = (t1 * t5 * (r2 * r3 * r4 * e2 - 1) + t2 * t4 * e3 * e4 * (r1 * r3 * r5 * np.conj(e1) - 1)
           + t3 * (t2 * t5 * e3 + t1 * t4 * e4))
    n_r = (r1 * r2 * (t3 * t4 * t5 * e4 - 1) + r4 * r5 * e1 * e2 * (t1 * t2 * t3 * np.conj(e3) - 1)
           + r3 * (r2 * r5 * e1 + r1 * r4 * e2))
    d = (r3 - r2 * r4 * e2) * (r3 - r1 * r5 * e1) + (t3 - t4 * t5 * e4) * (t3 - t1 * t2 * e3)
    return n_t, n_r, d


def t_prime(t: np.ndarray, r: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Complex t' = N_t / D."""
    n_t, _, d = numerators(t, r, phases)
    return n_t / d


def rg_step_z(z: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Float64 reference map: z' = ln|N_r|^2 - ln|N_t|^2 for every column."""
    z, phases = _check(z, phases)
    t, r = t_r_from_z(z.astype(np.float64))
    n_t, n_r, _ = numerators(t, r, phases.astype(np.float64))
    with np.errstate(divide="ignore"):
        return np.log(np.abs(n_r) ** 2) - np.log(np.abs(n_t) ** 2)


def map_z_fast(z: np.ndarray, cos_ph: np.ndarray, sin_ph: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The same map in real arithmetic of ``dtype``; cos/sin of the 4 phases given (shape (4, N))."""
    ft = np.dtype(dtype)
    z = np.asarray(z, dtype=ft)
    e = np.exp(-np.abs(z))
    inv = np.reciprocal(1 + e)
    small = np.sqrt(e * inv)
    large = np.sqrt(inv)
    pos = z >= 0
    t1, t2, t3, t4, t5 = np.where(pos, small, large)
    r1, r2, r3, r4, r5 = np.where(pos, large, small)
    c1, c2, c3, c4 = cos_ph
    s1, s2, s3, s4 = sin_ph
    c34 = c3 * c4 - s3 * s4
    s34 = s3 * c4 + c3 * s4
    c12 = c1 * c2 - s1 * s2
    s12 = s1 * c2 + c1 * s2

    # N_t = t1 t5 (a E2 - 1) + t2 t4 E3 E4 (b conj(E1) - 1) + t3 (t2 t5 E3 + t1 t4 E4)
    r3r = r3
    a = r2 * r3r * r4
    b = r1 * r3r * r5
    t15 = t1 * t5
    t24 = t2 * t4
    x = b * c1 - 1
    y = -b * s1
    nt_re = t15 * (a * c2 - 1) + t24 * (c34 * x - s34 * y) + t3 * (t2 * t5 * c3 + t1 * t4 * c4)
    nt_im = t15 * (a * s2) + t24 * (s34 * x + c34 * y) + t3 * (t2 * t5 * s3 + t1 * t4 * s4)

    # N_r = r1 r2 (c E4 - 1) + r4 r5 E1 E2 (d conj(E3) - 1) + r3 (r2 r5 E1 + r1 r4 E2)
    c_ = t3 * t4 * t5
    d_ = t1 * t2 * t3
    r12 = r1 * r2
    r45 = r4 * r5
    x = d_ * c3 - 1
    y = -d_ * s3
    nr_re = r12 * (c_ * c4 - 1) + r45 * (c12 * x - s12 * y) + r3r * (r2 * r5 * c1 + r1 * r4 * c2)
    nr_im = r12 * (c_ * s4) + r45 * (s12 * x + c12 * y) + r3r * (r2 * r5 * s1 + r1 * r4 * s2)

    with np.errstate(divide="ignore", over="ignore"):
        return np.log(nr_re * nr_re + nr_im * nr_im) - np.log(nt_re * nt_re + nt_im * nt_im)


def bridge_connectivity(t_bits: tuple[int, int, int, int, int]) -> int:
    """Classical A-B connectivity of the bridge with open saddles t_i = 1 (for tests)."""
    t1, t2, t3, t4, t5 = t_bits
    # paths A-X-B (1,5), A-Y-B (2,4), A-X-Y-B (1,3,4), A-Y-X-B (2,3,5)
    return int(bool((t1 and t5) or (t2 and t4) or (t1 and t3 and t4) or (t2 and t3 and t5)))
