"""``--method numerical``: solve the cell's linear scattering equations, sample by sample.

An independent check of the closed form (RG_SPEC 2.2, "Independent check"). Edge states run
clockwise round the hills; node i joins hills P, Q (P first in the saddle's name: 1 = A-X,
2 = A-Y, 3 = X-Y, 4 = Y-B, 5 = X-B) with

    P_out = r P_in - t Q_in,    Q_out = t P_in + r Q_in.

The 8 internal links i->j (amplitude a_ij leaving node i, phase theta_ij picked up on the way)
are, in the row order of ``theta``: 1->5, 5->3, 3->1 (round hill X), 2->3, 3->4, 4->2 (round
hill Y), 1->2 (along A), 4->5 (along B). A unit wave enters node 1 along A, nothing enters
node 4 along B; t' leaves node 5 along B and r' leaves node 2 along A. The loop phases are

    Phi1 = th15 + th53 + th31, Phi2 = th23 + th34 + th42,
    Phi3 = th31 + th12 + th23, Phi4 = th53 + th34 + th45 + pi.

The 8x8 complex systems are solved with batched ``np.linalg.solve`` in chunks, so any N works.
"""

from __future__ import annotations

import numpy as np

from opsrg.core.errors import InputError
from opsrg.rg.kernel import t_r_from_z

LINKS = ("15", "53", "31", "23", "34", "42", "12", "45")
_IDX = {name: i for i, name in enumerate(LINKS)}
CHUNK = 1 << 15


def loop_phases(theta: np.ndarray) -> np.ndarray:
    """Loop phases Phi1..Phi4 (shape (4, N)) from the 8 link phases (shape (8, N))."""
    th = {name: theta[i] for i, name in enumerate(LINKS)}
    return np.stack([
        th["15"] + th["53"] + th["31"],
        th["23"] + th["34"] + th["42"],
        th["31"] + th["12"] + th["23"],
        th["53"] + th["34"] + th["45"] + np.pi,
    ])


def solve_cell(t: np.ndarray, r: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Complex (t', r') of the cell for amplitudes t, r (shape (5, N)) and link phases (8, N)."""
    t = np.asarray(t, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    if t.shape[0] != 5 or r.shape != t.shape or theta.shape != (8, t.shape[1]):
        raise InputError(f"need t, r of shape (5, N) and theta of shape (8, N); got {t.shape}, {theta.shape}")
    n = t.shape[1]
    tp = np.empty(n, dtype=np.complex128)
    rp = np.empty(n, dtype=np.complex128)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        tp[lo:hi], rp[lo:hi] = _solve_chunk(t[:, lo:hi], r[:, lo:hi], theta[:, lo:hi])
    return tp, rp


def _solve_chunk(t: np.ndarray, r: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = t.shape[1]
    ph = np.exp(1j * theta)  # arrival factor of each link
    w = {name: ph[i] for i, name in enumerate(LINKS)}
    t1, t2, t3, t4, t5 = t
    r1, r2, r3, r4, r5 = r
    a = np.zeros((m, 8, 8), dtype=np.complex128)
    rhs = np.zeros((m, 8), dtype=np.complex128)
    a[:, np.arange(8), np.arange(8)] = 1.0

    def put(out: str, coef: np.ndarray, src: str) -> None:
        # equation row "out": a_out - coef * w_src * a_src = rhs
        a[:, _IDX[out], _IDX[src]] -= coef * w[src]

    # node 1 (P = A: external in, out 1->2; Q = X: in 3->1, out 1->5)
    put("12", -t1, "31")
    rhs[:, _IDX["12"]] = r1
    put("15", r1, "31")
    rhs[:, _IDX["15"]] = t1
    # node 2 (P = A: in 1->2, out external r'; Q = Y: in 4->2, out 2->3)
    put("23", t2, "12")
    put("23", r2, "42")
    # node 3 (P = X: in 5->3, out 3->1; Q = Y: in 2->3, out 3->4)
    put("31", r3, "53")
    put("31", -t3, "23")
    put("34", t3, "53")
    put("34", r3, "23")
    # node 4 (P = Y: in 3->4, out 4->2; Q = B: nothing in, out 4->5)
    put("42", r4, "34")
    put("45", t4, "34")
    # node 5 (P = X: in 1->5, out 5->3; Q = B: in 4->5, out external t')
    put("53", r5, "15")
    put("53", -t5, "45")
    x = np.linalg.solve(a, rhs[..., None])[..., 0]
    arr = {name: x[:, i] * w[name] for i, name in enumerate(LINKS)}
    t_out = t5 * arr["15"] + r5 * arr["45"]
    r_out = r2 * arr["12"] - t2 * arr["42"]
    return t_out, r_out


def solve_cell_z(z: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """z' = ln(|r'|^2 / |t'|^2) from input z (5, N) and link phases (8, N), float64."""
    t, r = t_r_from_z(np.asarray(z, dtype=np.float64))
    tp, rp = solve_cell(t, r, theta)
    with np.errstate(divide="ignore"):
        return np.log(np.abs(rp) ** 2) - np.log(np.abs(tp) ** 2)
